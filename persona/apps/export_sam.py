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
  Absent rows (no alignment) are not written. Every record carries ``RG:Z``
  then its optional tags from the ``tags`` / ``secondary<N>_tags`` columns
  (NM, MD, AS, SA, MC, MQ, ... as align computed them; see
  :mod:`persona.agd.columns`), when the dataset has them.
* Unaligned datasets export unmapped records: flags 77/141 (paired, interleaved)
  or 4, RNAME ``*``, POS 0, MAPQ 0, CIGAR ``*``.
* ``SO`` is the manifest's sort order (``unsorted`` for a coordinate-sorted
  dataset whose secondaries are written, as they follow their primaries), except that ``queryname`` is checked
  against the names first (one extra pass over the ``metadata`` column): AGD
  datasets straight from import are labelled ``queryname`` but keep input order,
  and Picard rejects a false SO:queryname. Unsorted names give ``SO:unsorted``.

The export runs as a job in the runtime's ``export`` pipeline (see
:mod:`persona.apps.export`); this module keeps the per-chunk record logic and
the :func:`export_sam` convenience function.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from persona._native import bam as bam_kernel
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
from persona.errors import ConfigError
from persona.formats.sam import ReadGroup
from persona.storage import Store

UNMAPPED_READ1 = FLAG_PAIRED | FLAG_UNMAPPED | FLAG_MATE_UNMAPPED | FLAG_READ1  # 77
UNMAPPED_READ2 = FLAG_PAIRED | FLAG_UNMAPPED | FLAG_MATE_UNMAPPED | FLAG_READ2  # 141


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
    Optional tags (``Alignments.tags``) follow their records; an extra
    column without tags gives its records none.
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
    tags = None
    if primary.tags is not None:
        datas = []
        base = 0
        for k, ra in enumerate([primary.tags, *(c.tags for c in cols)]):
            sel = from_col == k - 1
            if ra is None:
                starts[sel] = 0
                lengths[sel] = 0
                continue
            starts[sel] = ra.offsets[:-1][src[sel]].astype(np.int64) + base
            lengths[sel] = (ra.offsets[1:] - ra.offsets[:-1])[src[sel]].astype(np.int64)
            datas.append(ra.data)
            base += len(ra.data)
        tags = _take_spans(np.concatenate(datas), starts, lengths)
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
            Alignments(fields, cigars, None, tags), total - n)


def _take_spans(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> RaggedArray:
    """The records ``data[starts[k] : starts[k] + lengths[k]]`` as a RaggedArray (int64 inputs)."""
    offsets = np.zeros(len(starts) + 1, np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    if len(starts) == 0:
        return RaggedArray(offsets, data[:0].copy(), validate=False)
    # records taken mostly in order (extra records are rare): copy whole runs of adjacent spans
    breaks = np.flatnonzero(starts[1:] != starts[:-1] + lengths[:-1]) + 1
    if len(breaks) < 4096:
        first = np.concatenate(([0], breaks))
        last = np.concatenate((breaks, [len(starts)]))
        out = np.concatenate([data[int(starts[a]) : int(starts[b - 1] + lengths[b - 1])] for a, b in zip(first, last)])
        return RaggedArray(offsets, out, validate=False)
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


def sort_order(ds: Dataset) -> str:
    sort = ds.manifest.sort or "unknown"
    if sort == "queryname" and not _queryname_sorted(ds):
        return "unsorted"
    return sort


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
    runtime: Any = None,
) -> ExportSummary:
    """Write dataset ``dataset_location`` (``name`` if the location holds several) to ``out_path``
    (``-``: standard output).

    ``fmt`` is ``"bam"`` or ``"sam"``; ``level`` the BGZF deflate level.
    ``read_group`` overrides ID/SM/LB/PL (see :class:`ReadGroup`).
    ``command_line`` goes in ``@PG CL`` (default: this process's argv).
    ``progress(n)`` is called with the number of reads of each chunk written.
    ``secondary`` writes the present rows of the ``secondary<N>`` columns as
    records after their primaries (False: primary records only); ``secondary_seq``
    gives those records SEQ/QUAL (default ``*``, as minimap2 writes them).
    Raises :class:`DatasetError` for a dataset that cannot be exported (missing
    columns, bad records: the message names the chunk and record).
    """
    from persona.apps.export import ExportRequest, export_dataset

    if fmt not in ("bam", "sam"):
        raise ConfigError(f"export format must be 'bam' or 'sam', got {fmt!r}", key="fmt")
    if isinstance(read_group, ReadGroup):
        rg = {k: v for k, v in (("ID", read_group.id), ("SM", read_group.sample), ("LB", read_group.library),
                                ("PL", read_group.platform)) if v}
    else:
        rg = dict(read_group or {})
    loc = dataset_location.url if isinstance(dataset_location, Store) else os.fspath(dataset_location)
    req = ExportRequest(dataset=loc, output=os.fspath(out_path), format=fmt, name=name, level=level,
                        read_group=rg, secondary=secondary, secondary_seq=secondary_seq,
                        command_line=command_line)
    s = export_dataset(req, runtime=runtime, progress=progress, threads=threads)
    return ExportSummary(path=s.path, format=s.format, records=s.records, chunks=s.chunks,
                         bytes_written=s.bytes_written, seconds=s.seconds, sort_order=s.sort_order,
                         secondary_records=s.secondary_records)
