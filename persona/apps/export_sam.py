"""Export an AGD dataset to SAM or BAM.

Header: ``@HD VN:1.6 SO:<sort>``, ``@SQ`` per reference contig, one ``@RG``
(ID and SM default to the dataset name; LB/PL on request), ``@PG ID:persona``.
Every record carries ``RG:Z:<id>``. Records follow dataset order; bases and
qualities are stored as sequenced, so records with flag 0x10 get SEQ
reverse-complemented and QUAL reversed on the way out.

* Aligned datasets (with ``results``) export their primary results; secondary
  columns are not exported. Optional tags other than RG are not written
  (AGD has no tag column).
* Unaligned datasets export unmapped records: flags 77/141 (paired, interleaved)
  or 4, RNAME ``*``, POS 0, MAPQ 0, CIGAR ``*``.
* ``SO`` is the manifest's sort order, except that ``queryname`` is checked
  against the names first (one extra pass over the ``metadata`` column): AGD
  datasets straight from import are labelled ``queryname`` but keep input order,
  and Picard rejects a false SO:queryname. Unsorted names give ``SO:unsorted``.

Pipeline: reader threads read and decode chunks i+1, i+2 while the calling
thread encodes chunk i (one Cython call, GIL released) and ``threads`` BGZF
workers compress. The output appears atomically: it is written to
``<out>.partial`` and renamed at the end; on error nothing is left behind.
"""
from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import persona
from persona._native import bam as bam_kernel
from persona.agd.dataset import Dataset
from persona.agd.manifest import ChunkRef
from persona.agd.ragged import RaggedArray
from persona.agd.records import (
    FLAG_MATE_UNMAPPED,
    FLAG_PAIRED,
    FLAG_READ1,
    FLAG_READ2,
    FLAG_UNMAPPED,
    Alignments,
)
from persona.errors import ConfigError, DatasetError
from persona.formats.bam import BamWriter, encode_records
from persona.formats.sam import ReadGroup, build_header, contig_names, contig_pairs, format_records
from persona.storage import Store

UNMAPPED_READ1 = FLAG_PAIRED | FLAG_UNMAPPED | FLAG_MATE_UNMAPPED | FLAG_READ1  # 77
UNMAPPED_READ2 = FLAG_PAIRED | FLAG_UNMAPPED | FLAG_MATE_UNMAPPED | FLAG_READ2  # 141
READ_AHEAD = 2  # chunks read and decoded ahead of the encoder (bounds memory)


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_sam` wrote."""

    path: str
    format: str
    records: int
    chunks: int
    bytes_written: int
    seconds: float
    sort_order: str


def unmapped_alignments(ref: ChunkRef, paired: bool) -> Alignments:
    """Unmapped records for one chunk of an unaligned dataset (77/141 by ordinal parity, or 4)."""
    al = Alignments.empty(ref.num_records)
    if paired:
        ordinals = np.arange(ref.first, ref.last)
        al.fields["flag"] = np.where(ordinals % 2 == 0, UNMAPPED_READ1, UNMAPPED_READ2)
    return al


def _queryname_sorted(ds: Dataset) -> bool:
    last = b""
    for i in range(len(ds.chunks)):
        meta = ds.read_column(i, "metadata")
        ok, last = bam_kernel.names_sorted(meta.data, meta.offsets, last)
        if not ok:
            return False
    return True


def _sort_order(ds: Dataset) -> str:
    sort = ds.manifest.sort or "unknown"
    if sort == "queryname" and not _queryname_sorted(ds):
        return "unsorted"
    return sort


def _chunks(ds: Dataset, columns: list[str], read_ahead: int = READ_AHEAD) -> Iterator[tuple[int, dict[str, Any]]]:
    """Decoded chunks in order; the next ``read_ahead`` chunks are read and decoded on helper
    threads (decompression and base unpacking release the GIL) while the caller encodes."""
    n = len(ds.chunks)
    with ThreadPoolExecutor(read_ahead, thread_name_prefix="export-read") as pool:
        ahead: collections.deque[Future[dict[str, Any]]] = collections.deque(
            pool.submit(ds.read_chunk, i, columns) for i in range(min(read_ahead, n)))
        for i in range(n):
            values = ahead.popleft().result()
            if i + read_ahead < n:
                ahead.append(pool.submit(ds.read_chunk, i + read_ahead, columns))
            yield i, values


def export_sam(
    dataset_location: str | os.PathLike[str] | Store,
    out_path: str | os.PathLike[str],
    *,
    fmt: str = "bam",
    threads: int = 0,
    level: int = 6,
    read_group: ReadGroup | Mapping[str, str] | None = None,
    name: str | None = None,
    command_line: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Write dataset ``dataset_location`` (``name`` if the location holds several) to ``out_path``.

    ``fmt`` is ``"bam"`` or ``"sam"``; ``threads`` BGZF compression threads
    (samtools ``-@`` semantics) and ``level`` the deflate level, for BAM.
    ``read_group`` overrides ID/SM/LB/PL (see :class:`ReadGroup`).
    ``command_line`` goes in ``@PG CL`` (default: this process's argv).
    ``progress(n)`` is called with the number of records of each chunk written.
    Raises :class:`DatasetError` for a dataset that cannot be exported (missing
    columns, bad records: the message names the chunk and record).
    """
    if fmt not in ("bam", "sam"):
        raise ConfigError(f"export format must be 'bam' or 'sam', got {fmt!r}", key="fmt")
    t0 = time.perf_counter()
    ds = Dataset.open(dataset_location, name)
    missing = [c for c in ("base", "qual", "metadata") if c not in ds.columns]
    if missing:
        raise DatasetError(f"dataset {ds.name!r} lacks column(s) {missing} needed for SAM/BAM export",
                           store=ds.store.url)
    aligned = "results" in ds.columns
    contigs = contig_pairs(ds.manifest.reference_contigs)
    if aligned and not contigs:
        raise DatasetError(f"dataset {ds.name!r} has results but no reference_contigs in its manifest",
                           store=ds.store.url)
    if not aligned and ds.paired and ds.num_records % 2:
        raise DatasetError(f"paired dataset {ds.name!r} has an odd number of records ({ds.num_records})",
                           store=ds.store.url)
    rg = ReadGroup.for_dataset(ds.name, read_group)
    sort = _sort_order(ds)
    header = build_header(contigs=contigs, sort=sort, read_group=rg, version=persona.__version__,
                          command_line=command_line)
    columns = ["base", "qual", "metadata"] + (["results"] if aligned else [])
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".partial")
    records = 0
    try:
        if fmt == "bam":
            records = _write_bam(ds, tmp, header, contigs, columns, aligned, rg, level, threads, progress)
        else:
            records = _write_sam(ds, tmp, header, contigs, columns, aligned, rg, progress)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportSummary(
        path=str(out_path),
        format=fmt,
        records=records,
        chunks=len(ds.chunks),
        bytes_written=out_path.stat().st_size,
        seconds=time.perf_counter() - t0,
        sort_order=sort,
    )


def _alignments(ds: Dataset, i: int, values: Mapping[str, Any], aligned: bool) -> Alignments:
    return values["results"] if aligned else unmapped_alignments(ds.chunks[i], ds.paired)


def _bad_chunk(ds: Dataset, i: int, e: ValueError) -> DatasetError:
    return DatasetError(f"cannot export: {e}", key=ds.chunk_key(i, "results"), store=ds.store.url)


def _write_bam(ds: Dataset, path: Path, header: str, contigs: list[tuple[str, int]], columns: list[str],
               aligned: bool, rg: ReadGroup, level: int, threads: int,
               progress: Callable[[int], None] | None) -> int:
    records = 0
    with BamWriter(path, header, contigs, level=level, threads=threads) as writer:
        for i, values in _chunks(ds, columns):
            try:
                data, _ = encode_records(values["metadata"], values["base"], values["qual"],
                                         _alignments(ds, i, values, aligned), len(contigs), rg.id)
            except ValueError as e:
                raise _bad_chunk(ds, i, e) from None
            n = len(values["metadata"])
            writer.write_encoded(data, n)
            records += n
            if progress is not None:
                progress(n)
    return records


def _write_sam(ds: Dataset, path: Path, header: str, contigs: list[tuple[str, int]], columns: list[str],
               aligned: bool, rg: ReadGroup, progress: Callable[[int], None] | None) -> int:
    records = 0
    names: RaggedArray = contig_names(contigs)
    with open(path, "wb") as f:
        f.write(header.encode())
        for i, values in _chunks(ds, columns):
            try:
                text = format_records(values["metadata"], values["base"], values["qual"],
                                      _alignments(ds, i, values, aligned), names, rg.id)
            except ValueError as e:
                raise _bad_chunk(ds, i, e) from None
            f.write(text)
            records += len(values["metadata"])
            if progress is not None:
                progress(len(values["metadata"]))
    return records
