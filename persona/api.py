"""The Python API: ``persona.open(location)`` and the records of a dataset.

::

    import persona

    ds = persona.open("/data/agd/yeast")          # a directory, store URL or manifest path
    len(ds)                                        # number of records (reads)
    ds.columns                                     # ['base', 'qual', 'metadata', 'results']
    for rec in ds:                                 # one Record per read, in dataset order
        print(rec.name, rec.seq, rec.qual, rec.flag, rec.pos)
    for chunk in ds.chunks():                      # chunk by chunk: numpy arrays, one chunk in memory
        chunk.ordinals                             # (first, last)
        chunk["base"]                              # RaggedArray: .data (uint8) and .offsets (uint64)
        chunk["results"].fields["position"]        # numpy structured array of the alignments
    ds.column("qual")                              # one column of every chunk, concatenated
    ds[12345]                                      # one record by ordinal

Reads are decoded lazily, a chunk at a time, with the checksums in the manifest
checked on every read. Positions are 0-based (as in AGD and pysam); ``pos`` is
-1 for unmapped reads.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from persona.agd import Dataset as _Dataset
from persona.agd.ragged import RaggedArray
from persona.agd.records import Alignments
from persona.storage import Store


@dataclass(frozen=True)
class Record:
    """One read: name, bases and qualities as sequenced, and its primary alignment if aligned."""

    ordinal: int
    name: str
    seq: str
    qual: str
    flag: int | None = None
    ref_index: int | None = None
    contig: str | None = None
    pos: int | None = None
    mapq: int | None = None
    cigar: str | None = None
    mate_ref_index: int | None = None
    mate_pos: int | None = None
    template_length: int | None = None

    @property
    def mapped(self) -> bool:
        return self.flag is not None and not self.flag & 0x4


class Chunk:
    """One chunk's columns, decoded: ``chunk["base"]`` etc.; numpy arrays underneath."""

    def __init__(self, ordinals: tuple[int, int], columns: dict[str, Any]) -> None:
        self.ordinals = ordinals
        self._columns = columns

    def __getitem__(self, column: str) -> Any:
        return self._columns[column]

    def __len__(self) -> int:
        return self.ordinals[1] - self.ordinals[0]

    def keys(self) -> list[str]:
        return list(self._columns)


class DatasetView:
    """A dataset opened for reading (see the module docstring)."""

    def __init__(self, ds: _Dataset) -> None:
        self._ds = ds
        self._contigs = [c.name for c in sorted(ds.manifest.reference_contigs, key=lambda c: c.index)]

    @property
    def name(self) -> str:
        return self._ds.name

    @property
    def columns(self) -> list[str]:
        return list(self._ds.columns)

    @property
    def paired(self) -> bool:
        return self._ds.paired

    @property
    def manifest(self) -> Any:
        return self._ds.manifest

    @property
    def dataset(self) -> _Dataset:
        """The underlying :class:`persona.agd.Dataset` (chunk-level access, appending columns)."""
        return self._ds

    def __len__(self) -> int:
        return self._ds.num_records

    def __repr__(self) -> str:
        return f"<persona dataset {self.name!r}: {len(self)} records, columns {self.columns}>"

    def chunks(self, columns: Sequence[str] | None = None) -> Iterator[Chunk]:
        """Every chunk in order, decoded (one in memory at a time)."""
        cols = list(columns) if columns is not None else self.columns
        for i, ref in enumerate(self._ds.chunks):
            yield Chunk((ref.first, ref.last), self._ds.read_chunk(i, cols))

    def column(self, name: str) -> RaggedArray | Alignments:
        """One whole column, concatenated (memory grows with the dataset: prefer :meth:`chunks`)."""
        parts = [self._ds.read_column(i, name) for i in range(len(self._ds.chunks))]
        if not parts:
            return RaggedArray.from_list([])
        if isinstance(parts[0], Alignments):
            fields = np.concatenate([p.fields for p in parts])
            cigars = RaggedArray.concat([p.cigars for p in parts])
            present = np.concatenate([p.present for p in parts])
            return Alignments(fields, cigars, present)
        return RaggedArray.concat(parts)

    def __iter__(self) -> Iterator[Record]:
        cols = [c for c in ("metadata", "base", "qual", "results") if c in self.columns]
        for chunk in self.chunks(cols):
            yield from self._records(chunk, 0, len(chunk))

    def __getitem__(self, ordinal: int) -> Record:
        if ordinal < 0:
            ordinal += len(self)
        i = self._ds.chunk_of(ordinal)
        ref = self._ds.chunks[i]
        cols = [c for c in ("metadata", "base", "qual", "results") if c in self.columns]
        chunk = Chunk((ref.first, ref.last), self._ds.read_chunk(i, cols))
        k = ordinal - ref.first
        return next(self._records(chunk, k, k + 1))

    def _records(self, chunk: Chunk, lo: int, hi: int) -> Iterator[Record]:
        names = chunk["metadata"] if "metadata" in chunk.keys() else None
        bases = chunk["base"] if "base" in chunk.keys() else None
        quals = chunk["qual"] if "qual" in chunk.keys() else None
        results: Alignments | None = chunk["results"] if "results" in chunk.keys() else None
        for k in range(lo, hi):
            kw: dict[str, Any] = {}
            if results is not None:
                row = results.fields[k]
                ref_index = int(row["ref_index"])
                kw = {"flag": int(row["flag"]), "ref_index": ref_index, "pos": int(row["position"]),
                      "mapq": int(row["mapq"]), "cigar": bytes(results.cigars[k]).decode() or None,
                      "contig": self._contigs[ref_index] if 0 <= ref_index < len(self._contigs) else None,
                      "mate_ref_index": int(row["next_ref_index"]), "mate_pos": int(row["next_position"]),
                      "template_length": int(row["template_length"])}
            yield Record(
                ordinal=chunk.ordinals[0] + k,
                name=bytes(names[k]).decode(errors="replace") if names is not None else "",
                seq=bytes(bases[k]).decode() if bases is not None else "",
                qual=bytes(quals[k]).decode(errors="replace") if quals is not None else "",
                **kw,
            )


def open(location: str | os.PathLike[str] | Store, name: str | None = None) -> DatasetView:  # noqa: A001
    """Open the dataset at ``location`` (a directory, store URL or manifest path; ``name`` where
    the location holds several) for reading."""
    return DatasetView(_Dataset.open(location, name))
