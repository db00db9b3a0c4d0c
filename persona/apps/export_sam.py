"""Export an AGD dataset to SAM or BAM.

Header: ``@HD VN:1.6 SO:<sort>``, ``@SQ`` per reference contig, one ``@RG``
(ID and SM default to the dataset name; LB/PL on request), ``@PG ID:persona``.
Every record carries ``RG:Z:<id>``. Records follow dataset order; bases and
qualities are stored as sequenced, so records with flag 0x10 get SEQ
reverse-complemented and QUAL reversed on the way out.

* Aligned datasets (with ``results``) export their primary results. Each present
  row of the ``secondary<N>`` columns follows its read's primary record as a
  record of its own, in column order (``secondary=False`` leaves them out).
  As ``minimap2 -a`` writes them, secondary records (0x100) have SEQ and QUAL
  ``*`` and the mate fields of the mate's primary; supplementary records
  (0x800) keep the full SEQ/QUAL since their CIGARs soft-clip (``minimap2 -Y``).
  ``secondary_seq=True`` writes SEQ/QUAL on secondaries too (``minimap2
  --secondary-seq``); Picard warns (QUALITY_NOT_STORED) about ``*`` qualities.
  Absent rows (no alignment) are not written. Optional tags other than RG are
  not written (AGD has no tag column).
* Unaligned datasets export unmapped records: flags 77/141 (paired, interleaved)
  or 4, RNAME ``*``, POS 0, MAPQ 0, CIGAR ``*``.
* ``SO`` is the manifest's sort order (``unsorted`` for a coordinate-sorted
  dataset whose secondaries are written, as they follow their primaries), except that ``queryname`` is checked
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
from persona.agd.columns import column_sort_key, is_alignment_column
from persona.agd.dataset import Dataset
from persona.agd.manifest import ChunkRef
from persona.agd.ragged import RaggedArray
from persona.agd.records import (
    FLAG_MATE_UNMAPPED,
    FLAG_PAIRED,
    FLAG_READ1,
    FLAG_READ2,
    FLAG_SECONDARY,
    FLAG_SUPPLEMENTARY,
    FLAG_UNMAPPED,
    Alignments,
)
from persona.errors import ConfigError, DatasetError
from persona.formats.bam import BamWriter, encode_records
from persona.formats.sam import (
    ReadGroup,
    build_header,
    contig_names,
    contig_pairs,
    format_records,
)
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
    #: of ``records``, how many came from ``secondary<N>`` columns
    secondary_records: int = 0


def unmapped_alignments(ref: ChunkRef, paired: bool) -> Alignments:
    """Unmapped records for one chunk of an unaligned dataset (77/141 by ordinal parity, or 4)."""
    al = Alignments.empty(ref.num_records)
    if paired:
        ordinals = np.arange(ref.first, ref.last)
        al.fields["flag"] = np.where(ordinals % 2 == 0, UNMAPPED_READ1, UNMAPPED_READ2)
    return al


def ragged_take(ra: RaggedArray, idx: np.ndarray, keep: np.ndarray | None = None) -> RaggedArray:
    """Records ``ra[idx[k]]`` for every k (records where ``keep`` is False become empty)."""
    starts = ra.offsets[:-1][idx].astype(np.int64)
    lengths = (ra.offsets[1:] - ra.offsets[:-1])[idx].astype(np.int64)
    if keep is not None:
        lengths[~keep] = 0
    return _take_spans(ra.data, starts, lengths)


def _seq_less_offsets(off: np.ndarray, src: np.ndarray, is_extra: np.ndarray) -> np.ndarray:
    """Offsets placing a zero-length record for each extra record after its read (no data copied):
    an extra record after read i spans [off[i+1], off[i+1]], where read i+1 starts."""
    at = np.where(is_extra, src + 1, src)
    out = np.empty(len(src) + 1, np.uint64)
    out[:-1] = off[at]
    out[-1] = off[-1]
    return out


def interleave_secondaries(metadata: RaggedArray, bases: RaggedArray, quals: RaggedArray,
                           primary: Alignments, secondary: list[Alignments], *, secondary_seq: bool = False,
                           ) -> tuple[RaggedArray, RaggedArray, RaggedArray, Alignments, int]:
    """Columns of one chunk with each present secondary row as a record right after its read's primary.

    Returns ``(metadata, bases, quals, alignments, n_secondary_records)``; the
    records of a read are its primary then its present rows of ``secondary[0]``,
    ``secondary[1]``, ... . Secondary (0x100) records get empty bases/quals (SEQ
    and QUAL ``*``) unless ``secondary_seq``; supplementary ones keep the
    read's bases and qualities.
    Without present secondary rows the inputs are returned unchanged.
    """
    n = len(primary)
    cols = [s for s in secondary if s.present.any()]
    if not cols:
        return metadata, bases, quals, primary, 0
    per_read = np.stack([c.present for c in cols]).sum(axis=0)
    start = np.arange(n) + np.concatenate(([0], np.cumsum(per_read)[:-1]))  # primary record of each read
    total = n + int(per_read.sum())
    src = np.empty(total, np.int64)  # the read of each output record
    from_col = np.full(total, -1, np.int64)  # the secondary column of each output record (-1: primary)
    fields = np.empty(total, primary.fields.dtype)
    src[start] = np.arange(n)
    fields[start] = primary.fields
    slot = np.zeros(n, np.int64)  # how many secondary records of each read are placed so far
    for k, col in enumerate(cols):
        rows = np.flatnonzero(col.present)
        slot[rows] += 1
        where = start[rows] + slot[rows]
        src[where] = rows
        from_col[where] = k
        fields[where] = col.fields[rows]
    is_extra = from_col >= 0
    # CIGARs: spans into the concatenated CIGAR data of all columns, taken in output order
    starts = np.empty(total, np.int64)
    lengths = np.empty(total, np.int64)
    datas = []
    base = 0
    for k, ra in enumerate([primary.cigars, *(c.cigars for c in cols)]):
        sel = from_col == k - 1
        starts[sel] = ra.offsets[:-1][src[sel]].astype(np.int64) + base
        lengths[sel] = (ra.offsets[1:] - ra.offsets[:-1])[src[sel]].astype(np.int64)
        datas.append(ra.data)
        base += len(ra.data)
    cigars = _take_spans(np.concatenate(datas), starts, lengths)
    with_seq = ~is_extra | secondary_seq | (
        (fields["flag"] & (FLAG_SECONDARY | FLAG_SUPPLEMENTARY)) == FLAG_SUPPLEMENTARY)
    if with_seq.all():
        out_bases, out_quals = ragged_take(bases, src), ragged_take(quals, src)
    elif (with_seq == ~is_extra).all():  # only seq-less extras: reuse the data, just new offsets
        out_bases = RaggedArray(_seq_less_offsets(bases.offsets, src, is_extra), bases.data, validate=False)
        out_quals = RaggedArray(_seq_less_offsets(quals.offsets, src, is_extra), quals.data, validate=False)
    else:
        out_bases, out_quals = ragged_take(bases, src, with_seq), ragged_take(quals, src, with_seq)
    return (ragged_take(metadata, src), out_bases, out_quals,
            Alignments(fields, cigars), total - n)


def _take_spans(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> RaggedArray:
    """The records ``data[starts[k] : starts[k] + lengths[k]]`` as a RaggedArray (int64 inputs)."""
    offsets = np.zeros(len(starts) + 1, np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    pos = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(starts - offsets[:-1].astype(np.int64), lengths)
    return RaggedArray(offsets, data[pos], validate=False)


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
    secondary: bool = True,
    secondary_seq: bool = False,
) -> ExportSummary:
    """Write dataset ``dataset_location`` (``name`` if the location holds several) to ``out_path``.

    ``fmt`` is ``"bam"`` or ``"sam"``; ``threads`` BGZF compression threads
    (samtools ``-@`` semantics) and ``level`` the deflate level, for BAM.
    ``read_group`` overrides ID/SM/LB/PL (see :class:`ReadGroup`).
    ``command_line`` goes in ``@PG CL`` (default: this process's argv).
    ``progress(n)`` is called with the number of reads of each chunk written.
    ``secondary`` writes the present rows of the ``secondary<N>`` columns as
    records after their primaries (False: primary records only); ``secondary_seq``
    gives those records SEQ/QUAL (default ``*``, as minimap2 writes them).
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
    sec_columns = sorted((c for c in ds.columns if is_alignment_column(c) and c != "results"),
                         key=column_sort_key) if aligned and secondary else []
    sort = _sort_order(ds)
    if sec_columns and sort == "coordinate":
        sort = "unsorted"  # secondaries follow their primaries, not their own coordinates
    header = build_header(contigs=contigs, sort=sort, read_group=rg, version=persona.__version__,
                          command_line=command_line)
    columns = ["base", "qual", "metadata"] + (["results"] if aligned else []) + sec_columns
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".partial")
    job = _Job(ds, aligned, sec_columns, len(contigs), rg, progress, secondary_seq)
    try:
        if fmt == "bam":
            _write_bam(job, tmp, header, contigs, columns, level, threads)
        else:
            _write_sam(job, tmp, header, contigs, columns)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportSummary(
        path=str(out_path),
        format=fmt,
        records=job.records,
        chunks=len(ds.chunks),
        bytes_written=out_path.stat().st_size,
        seconds=time.perf_counter() - t0,
        sort_order=sort,
        secondary_records=job.secondary_records,
    )


class _Job:
    """One export's settings and running counts, shared by the SAM and BAM writers."""

    def __init__(self, ds: Dataset, aligned: bool, sec_columns: list[str], n_contigs: int, rg: ReadGroup,
                 progress: Callable[[int], None] | None, secondary_seq: bool) -> None:
        self.ds, self.aligned, self.sec_columns, self.n_contigs = ds, aligned, sec_columns, n_contigs
        self.rg, self.progress, self.secondary_seq = rg, progress, secondary_seq
        self.records = self.secondary_records = 0

    def chunk_columns(self, i: int, values: Mapping[str, Any],
                      ) -> tuple[RaggedArray, RaggedArray, RaggedArray, Alignments]:
        """The records to write for chunk ``i``: metadata, bases, quals, alignments (secondaries placed)."""
        meta, bases, quals = values["metadata"], values["base"], values["qual"]
        if not self.aligned:
            return meta, bases, quals, unmapped_alignments(self.ds.chunks[i], self.ds.paired)
        primary = values["results"]
        n_sec = 0
        if self.sec_columns:
            secs = [values[c] for c in self.sec_columns]
            for c, s in zip(self.sec_columns, secs):
                if len(s) != len(primary):
                    raise DatasetError(f"column {c!r} has {len(s)} records but results has {len(primary)}",
                                       key=self.ds.chunk_key(i, c), store=self.ds.store.url)
            meta, bases, quals, primary, n_sec = interleave_secondaries(
                meta, bases, quals, primary, secs, secondary_seq=self.secondary_seq)
        self.secondary_records += n_sec
        return meta, bases, quals, primary

    def done(self, n_reads: int, n_records: int) -> None:
        self.records += n_records
        if self.progress is not None:
            self.progress(n_reads)

    def bad_chunk(self, i: int, e: ValueError) -> DatasetError:
        where = " (record numbers count secondary records)" if self.sec_columns else ""
        return DatasetError(f"cannot export: {e}{where}", key=self.ds.chunk_key(i, "results"),
                            store=self.ds.store.url)


def _write_bam(job: _Job, path: Path, header: str, contigs: list[tuple[str, int]], columns: list[str],
               level: int, threads: int) -> None:
    with BamWriter(path, header, contigs, level=level, threads=threads) as writer:
        for i, values in _chunks(job.ds, columns):
            meta, bases, quals, al = job.chunk_columns(i, values)
            try:
                data, _ = encode_records(meta, bases, quals, al, job.n_contigs, job.rg.id)
            except ValueError as e:
                raise job.bad_chunk(i, e) from None
            writer.write_encoded(data, len(meta))
            job.done(len(values["metadata"]), len(meta))


def _write_sam(job: _Job, path: Path, header: str, contigs: list[tuple[str, int]], columns: list[str]) -> None:
    names: RaggedArray = contig_names(contigs)
    with open(path, "wb") as f:
        f.write(header.encode())
        for i, values in _chunks(job.ds, columns):
            meta, bases, quals, al = job.chunk_columns(i, values)
            try:
                text = format_records(meta, bases, quals, al, names, job.rg.id)
            except ValueError as e:
                raise job.bad_chunk(i, e) from None
            f.write(text)
            job.done(len(values["metadata"]), len(meta))
