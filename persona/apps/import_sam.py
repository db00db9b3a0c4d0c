"""Import a SAM or BAM file into a new AGD dataset (read with pysam).

What is stored, per primary record, in file order:

* ``base``: SEQ in the ORIGINAL sequencing orientation: records with flag
  0x10 are reverse-complemented back (AGD stores reads as sequenced; the
  exporter flips them again). Characters other than A/C/G/T/N (IUPAC codes,
  ``=``) cannot be held by AGD's 3-bit bases and are stored as ``N``; the
  summary counts them (``bases_replaced``).
* ``qual``: QUAL as Phred+33 text, reversed for flag 0x10.
* ``metadata``: QNAME.
* ``results``: one Alignment per record (flag, MAPQ, ref index, 0-based
  position, mate ref index and position, TLEN, CIGAR). Written only when the
  header has ``@SQ`` lines; a file without them (an unmapped BAM) becomes an
  unaligned dataset (base, qual, metadata), ready to be aligned.

Choices (documented contract):

* Secondary (0x100) and supplementary (0x800) records are skipped: AGD's
  ``results`` column holds exactly one record per read. The summary counts them.
* A record without SEQ (``*``) is stored with an empty sequence and empty
  qualities (counted in ``empty_sequence``); exporting gives ``*`` back. A record
  with SEQ but no QUAL stores empty qualities (counted in ``missing_quality``).
* Optional tags are not carried: AGD has no tag column.
* Records keep file order. The manifest says ``paired: true`` only if every
  record is paired and they come as read1, read2 with equal names, adjacent
  (a queryname-grouped file); a coordinate-sorted BAM is not interleaved.
* ``sort`` is the header's ``@HD SO`` (``unknown`` without one); ``reference``
  is the first ``@SQ UR`` (else ``AS``, else the input file name) and
  ``reference_contigs`` the ``@SQ`` lines.
* ``chunk_size`` is records per chunk, rounded up to even so a chunk never
  splits a pair.
* A truncated or corrupt file raises :class:`InputFormatError` naming the file
  and the record number (1-based, counting all records read); whatever was
  written is removed, no dataset appears. A BAM without the BGZF EOF marker is
  treated as truncated.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pysam

from persona._native import bases as bases_kernel
from persona.agd.dataset import DatasetWriter
from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.agd.records import (
    ALIGNMENT_DTYPE,
    FLAG_PAIRED,
    FLAG_READ1,
    FLAG_READ2,
    FLAG_REVERSE,
    FLAG_SECONDARY,
    FLAG_SUPPLEMENTARY,
    Alignments,
)
from persona.errors import InputFormatError
from persona.formats.bgzf import EOF_BLOCK
from persona.storage import Store

_SORT_ORDERS = ("coordinate", "queryname", "unsorted", "unknown")
# Bytes AGD's 3-bit bases can hold; anything else becomes N.
_VALID_BASE = np.zeros(256, dtype=bool)
_VALID_BASE[np.frombuffer(b"ACGTN", np.uint8)] = True


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_sam` stored and what it left out."""

    name: str
    location: str
    records: int
    chunks: int
    columns: tuple[str, ...]
    paired: bool
    sort: str
    skipped_secondary: int
    skipped_supplementary: int
    empty_sequence: int
    missing_quality: int
    bases_replaced: int


def _dataset_name(path: Path) -> str:
    stem = path.name
    for ext in (".gz", ".bam", ".sam", ".cram"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "dataset"


class _PairCheck:
    """Streams over primary records: are they read1/read2 mates, adjacent, in that order?"""

    def __init__(self) -> None:
        self.ok = True
        self.count = 0
        self._prev_name: str | None = None

    def add(self, flag: int, name: str) -> None:
        if not self.ok:
            return
        role = flag & (FLAG_PAIRED | FLAG_READ1 | FLAG_READ2)
        if self.count % 2 == 0:
            self.ok = role == FLAG_PAIRED | FLAG_READ1
            self._prev_name = name
        else:
            self.ok = role == FLAG_PAIRED | FLAG_READ2 and name == self._prev_name
        self.count += 1

    @property
    def paired(self) -> bool:
        return self.ok and self.count > 0 and self.count % 2 == 0


class _ChunkBuilder:
    """Collects one chunk's records as Python lists, then builds the column values."""

    def __init__(self, aligned: bool) -> None:
        self.aligned = aligned
        self.names: list[bytes] = []
        self.seqs: list[bytes] = []
        self.quals: list[bytes] = []
        self.rows: list[tuple[int, int, int, int, int, int, int]] = []
        self.cigars: list[bytes] = []

    def __len__(self) -> int:
        return len(self.names)

    def columns(self) -> tuple[dict[str, Any], int]:
        """Column values (sequencing orientation) and the number of bases replaced by N."""
        seqs = RaggedArray.from_list(self.seqs)
        quals = RaggedArray.from_list(self.quals)
        invalid = ~_VALID_BASE[seqs.data]
        replaced = int(invalid.sum())
        if replaced:
            seqs.data[invalid] = ord("N")
        values: dict[str, Any] = {"metadata": RaggedArray.from_list(self.names)}
        fields = np.array(self.rows, dtype=ALIGNMENT_DTYPE) if self.rows else np.zeros(0, ALIGNMENT_DTYPE)
        rev = (fields["flag"] & FLAG_REVERSE) != 0
        if rev.any():
            # Back to the orientation the read was sequenced in (empty quals stay empty).
            seqs = RaggedArray(seqs.offsets, bases_kernel.reverse_complement(seqs.offsets, seqs.data, rev),
                               validate=False)
            quals = RaggedArray(quals.offsets, bases_kernel.reverse_records(quals.offsets, quals.data, rev),
                                validate=False)
        values["base"] = seqs
        values["qual"] = quals
        if self.aligned:
            values["results"] = Alignments(fields, RaggedArray.from_list(self.cigars))
        return values, replaced


def _check_bgzf_eof(path: Path) -> None:
    """A BGZF file (BAM, bgzipped SAM) must end with the EOF block, else it was cut short.

    Checked here rather than left to htslib, which only warns and then reads
    whatever complete blocks there are (a cut at a block boundary would lose
    records silently).
    """
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(16)
        if not (head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"):
            return  # not BGZF (plain SAM or gzip): nothing to check
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - len(EOF_BLOCK)))
        if f.read() != EOF_BLOCK:
            raise InputFormatError("no BGZF EOF marker: the file is truncated", file=str(path))


def _open(path: Path) -> pysam.AlignmentFile:
    _check_bgzf_eof(path)
    try:
        return pysam.AlignmentFile(str(path), "r", check_sq=False)
    except (OSError, ValueError) as e:
        raise InputFormatError(f"cannot read SAM/BAM input: {e}", file=str(path)) from None


def _header_fields(af: pysam.AlignmentFile, path: Path) -> dict[str, Any]:
    header = af.header.to_dict()
    so = header.get("HD", {}).get("SO", "unknown")
    sq = header.get("SQ", [])
    fields: dict[str, Any] = {"sort": so if so in _SORT_ORDERS else "unknown"}
    if sq:
        fields["reference_contigs"] = [Contig(s["SN"], int(s["LN"]), i) for i, s in enumerate(sq)]
        ref = next((s["UR"] for s in sq if s.get("UR")), None) or next((s["AS"] for s in sq if s.get("AS")), None)
        fields["reference"] = ref or path.name
    return fields


def import_sam(
    path: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | Store,
    name: str | None = None,
    chunk_size: int = 100_000,
    compression: str = "zstd",
) -> ImportSummary:
    """Import ``path`` (SAM or BAM, detected from content) as dataset ``name`` in store ``out``
    (a path, store URL or :class:`~persona.storage.Store`); ``name`` defaults to the file name
    without its extension.

    See the module docstring for what is stored. Raises
    :class:`~persona.errors.InputFormatError` for unreadable input (no dataset
    is left behind) and :class:`~persona.errors.DatasetError` if the dataset exists.
    """
    path = Path(path)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk_size += chunk_size % 2
    name = name or _dataset_name(path)
    af = _open(path)
    try:
        manifest_fields = _header_fields(af, path)
        aligned = "reference_contigs" in manifest_fields
        columns = ["base", "qual", "metadata"] + (["results"] if aligned else [])
        writer = DatasetWriter(out, name, columns=columns, compression=compression)
        with writer, ThreadPoolExecutor(1, thread_name_prefix="import-sam-write") as pool:
            # One chunk is compressed and stored in the background while the next is parsed.
            pending: Future[Any] | None = None
            counts = {"secondary": 0, "supplementary": 0, "empty": 0, "noqual": 0, "replaced": 0}
            pairs = _PairCheck()
            chunk = _ChunkBuilder(aligned)
            first = 0
            n_read = 0
            try:
                for rec in af.fetch(until_eof=True):
                    n_read += 1
                    flag = rec.flag
                    if flag & FLAG_SECONDARY:
                        counts["secondary"] += 1
                        continue
                    if flag & FLAG_SUPPLEMENTARY:
                        counts["supplementary"] += 1
                        continue
                    qname = rec.query_name or ""
                    seq = rec.query_sequence
                    qual = rec.query_qualities_str if seq else None
                    if not seq:
                        counts["empty"] += 1
                    elif qual is None:
                        counts["noqual"] += 1
                    pairs.add(flag, qname)
                    chunk.names.append(qname.encode())
                    chunk.seqs.append(seq.encode() if seq else b"")
                    chunk.quals.append(qual.encode() if qual else b"")
                    if aligned:
                        chunk.rows.append((flag, rec.mapping_quality, rec.reference_id, rec.reference_start,
                                           rec.next_reference_id, rec.next_reference_start, rec.template_length))
                        chunk.cigars.append((rec.cigarstring or "").encode())
                    else:
                        chunk.rows.append((flag, 0, -1, -1, -1, -1, 0))
                    if len(chunk) == chunk_size:
                        pending = _flush(writer, pool, pending, chunk, first, counts)
                        first += len(chunk)
                        chunk = _ChunkBuilder(aligned)
            except (OSError, ValueError) as e:
                if pending is not None:
                    pending.cancel()
                raise InputFormatError(
                    f"cannot read SAM/BAM input (truncated or corrupt): {e}", file=str(path), record=n_read + 1
                ) from None
            if len(chunk):
                pending = _flush(writer, pool, pending, chunk, first, counts)
                first += len(chunk)
            if pending is not None:
                pending.result()
            manifest = writer.commit(paired=pairs.paired, **manifest_fields)
    finally:
        try:
            af.close()
        except OSError:  # pysam may report a stale errno when closing after a read error
            pass
    return ImportSummary(
        name=name,
        location=writer.store.url,
        records=first,
        chunks=len(manifest.records),
        columns=tuple(columns),
        paired=pairs.paired,
        sort=manifest_fields["sort"],
        skipped_secondary=counts["secondary"],
        skipped_supplementary=counts["supplementary"],
        empty_sequence=counts["empty"],
        missing_quality=counts["noqual"],
        bases_replaced=counts["replaced"],
    )


def _flush(
    writer: DatasetWriter,
    pool: ThreadPoolExecutor,
    pending: Future[Any] | None,
    chunk: _ChunkBuilder,
    first: int,
    counts: dict[str, int],
) -> Future[Any]:
    values, replaced = chunk.columns()
    counts["replaced"] += replaced
    if pending is not None:
        pending.result()  # at most one chunk in flight: bounded memory, errors surface early
    return pool.submit(writer.write_chunk, first, values)
