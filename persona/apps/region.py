"""Region export: the records of a coordinate-sorted dataset that overlap samtools-style regions.

``persona export ds out.bam chr1:1000-2000 chr2`` writes what ``samtools view -M ds.bam REGION...``
gives on an indexed BAM of the same dataset (``-M``: each record once, in file order, however
many of the regions it overlaps; for one region that is plain ``samtools view``):

* a region is ``CONTIG``, ``CONTIG:BEG`` or ``CONTIG:BEG-END``, 1-based and inclusive; commas in
  numbers are allowed; ``{CONTIG}:BEG-END`` for a contig whose name holds ':';
* a record overlaps when it lies on the contig and its alignment span ``[pos, pos + reference
  length)`` meets ``[BEG-1, END)``; a record without reference length (unmapped, placed at its mate)
  counts as one base, as samtools counts it;
* ``-L FILE`` (``regions_file``): the intervals of a BED file (``CHROM BEG END``, 0-based, end exclusive,
  further columns ignored; ``CHROM POS``, 1-based, one base; ``#``, ``track`` and ``browser`` lines and
  blank lines skipped; gzip allowed), as ``samtools view -L``: intervals on contigs the dataset's
  reference lacks are ignored, as samtools ignores them; with REGIONs too, a record is written when it
  overlaps a region and a BED interval;
* only the chunks that may hold such records are read: sort records each output chunk's first and
  last (reference, position) and its longest reference span in the manifest
  (``coordinate_ranges``), so a chunk is read when its records' positions may fall in
  ``[BEG-1 - longest span, END)``. Like a BAM index, without an index file.

Secondary and supplementary records (``secondary<N>`` columns) lie at their own coordinates, which the
chunk ranges of the primaries do not cover: a coordinate sort also records, per chunk, the range of its
extra records (``extras_ranges``: lowest and highest (reference, position), longest span, and the
columns it describes). The chunks whose extras may overlap are read in a first pass
(:class:`persona.apps.export_sorted.SortedExtras`, keeping only the overlapping extra records), and
the overlapping extras are merged into the output where the whole sorted export places them, so the
output is what ``samtools view`` returns from that export. A dataset sorted before ``extras_ranges``
existed (or whose extra columns are not the ones the field names) has every chunk's extra columns
scanned, with a log line saying so. ``--no-secondary`` leaves the extras out.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from persona import counters
from persona._native import markdup as md_kernel
from persona.agd.columns import BASE, METADATA, RESULTS
from persona.apps.export import ExportJob
from persona.apps.job import FeedDescriptor, Work
from persona.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from persona.agd import Dataset

log = logging.getLogger(__name__)

_REGION = re.compile(r"^(?:\{(?P<braced>[^}]+)\}|(?P<name>[^:]+))(?::(?P<beg>[\d,]+)?(?:-(?P<end>[\d,]+)?)?)?$")


@dataclass(frozen=True)
class Region:
    """One region: contig index, 0-based start, end (exclusive; None: the contig's end)."""

    text: str
    ref: int
    start: int
    end: int


def parse_region(text: str, contigs: dict[str, tuple[int, int]]) -> Region:
    """``text`` (samtools syntax) against ``contigs`` (name -> (index, length))."""
    t = text.strip()
    if t in contigs:  # a contig name that itself contains ':' or '-'
        idx, length = contigs[t]
        return Region(text, idx, 0, length)
    m = _REGION.match(t)
    if not m:
        raise ConfigError(f"region {text!r}: expected CONTIG, CONTIG:BEG or CONTIG:BEG-END (1-based, inclusive)",
                          key="regions")
    name = m.group("braced") or m.group("name")
    if name not in contigs:
        shown = ", ".join(list(contigs)[:8]) + (" ..." if len(contigs) > 8 else "")
        raise DatasetError(f"region {text!r}: no contig {name!r} in the dataset's reference (contigs: {shown})")
    idx, length = contigs[name]
    beg = int(m.group("beg").replace(",", "")) if m.group("beg") else 1
    end = int(m.group("end").replace(",", "")) if m.group("end") else length
    if beg < 1 or end < beg:
        raise ConfigError(f"region {text!r}: the start must be >= 1 and not after the end", key="regions")
    return Region(text, idx, beg - 1, end)


@dataclass(frozen=True)
class Selection:
    """What a region export writes: records overlapping one of ``regions`` (REGION arguments; all
    records when there are none) and, with a BED file, one of ``bed`` too."""

    regions: tuple[Region, ...]
    bed: tuple[Region, ...] | None = None

    @property
    def choosing(self) -> tuple[Region, ...]:
        """The intervals that choose the chunks to read (a superset of what is written)."""
        return self.regions if self.regions or self.bed is None else self.bed

    def mask(self, al: Any) -> np.ndarray:
        """Which records of ``al`` (Alignments) are written."""
        keep = overlap_mask(al, self.regions) if self.regions else np.ones(len(al.fields), dtype=bool)
        if self.bed is not None:
            keep &= overlap_mask(al, self.bed)
        return keep


def read_bed(path: str, contigs: dict[str, tuple[int, int]]) -> tuple[list[Region], int]:
    """The intervals of BED file ``path`` on ``contigs`` (name -> (index, length)) and how many lines
    named other contigs (ignored); a malformed line raises :class:`ConfigError` naming file and line."""
    import gzip

    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        opener: Any = gzip.open if gz else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"BED file {path!r}: {e.strerror or e}", key="regions_file") from None
    out: list[Region] = []
    ignored = 0
    for no, line in enumerate(lines, 1):
        t = line.split()
        if not t or t[0].startswith("#"):
            continue
        nums: list[int] = []
        for tok in t[1:3]:
            if not tok.isdigit():
                break
            nums.append(int(tok))
        beg, end = (nums[0] - 1, nums[0]) if len(nums) == 1 else (nums[0], nums[1]) if nums else (0, 0)
        if not nums or beg < 0 or end < beg:
            if t[0] in ("track", "browser"):
                continue
            what = ("expected CHROM BEG END (0-based, end exclusive) or CHROM POS (1-based)" if not nums
                    else "the position must be >= 1" if beg < 0
                    else f"the end ({end}) must not be less than the start ({beg})")
            raise ConfigError(f"BED file {path!r} line {no}: {what}: {line.strip()[:80]!r}", key="regions_file")
        if t[0] not in contigs:
            ignored += 1
            continue
        out.append(Region(f"{t[0]}:{beg}-{end}", contigs[t[0]][0], beg, end))
    return out, ignored


def plan_regions(ds: "Dataset", texts: tuple[str, ...] | list[str],
                 bed: str | None = None) -> tuple[Selection, list[int]]:
    """What to write (REGION ``texts`` and the ``bed`` file's intervals) and the indices of the chunks
    that may hold those records (in order)."""
    m = ds.manifest
    if m.sort != "coordinate":
        raise DatasetError(f"dataset {ds.name!r} is not sorted by coordinate (sort: {m.sort or 'none'}): a "
                           "region export needs coordinate order; run persona sort first", store=ds.store.url)
    if RESULTS not in ds.columns:
        raise DatasetError(f"dataset {ds.name!r} is not aligned: no region to export", store=ds.store.url)
    contigs = {c.name: (c.index, c.length) for c in m.reference_contigs}
    regions = tuple(parse_region(t, contigs) for t in texts)
    intervals: tuple[Region, ...] | None = None
    if bed is not None:
        got, ignored = read_bed(bed, contigs)
        if ignored:
            log.info("BED file %r: %d interval(s) on contigs not in the reference of %r ignored (as samtools "
                     "view -L ignores them)", bed, ignored, ds.name)
        intervals = tuple(got)
    sel = Selection(regions, intervals)
    ranges = m.extra.get("coordinate_ranges")
    if not isinstance(ranges, list) or len(ranges) != len(ds.chunks):
        return sel, list(range(len(ds.chunks)))  # sorted without ranges: read every chunk, filter all
    span = max((int(r[4]) for r in ranges), default=0)
    return sel, _overlapping(ranges, sel.choosing, span)


#: packed (reference, position) keys: an unmapped record's reference after every contig (as samtools,
#: which compares the reference index unsigned)
_UNMAPPED_REF = 1 << 22


def _pack(ref: Any, pos: Any) -> np.ndarray:
    r = np.asarray(ref, dtype=np.int64)
    return np.where(r >= 0, r, _UNMAPPED_REF) * (1 << 40) + np.asarray(pos, dtype=np.int64)


def _any_hit(regions: Sequence[Region], lo: np.ndarray, hi: np.ndarray, span: int = 0) -> np.ndarray:
    """For each query ``[lo[k], hi[k]]`` (packed keys, inclusive): whether some region's
    ``[(ref, start - span), (ref, end - 1)]`` meets it. With the regions sorted by their first key and
    the running maximum of their last, a query is met when a region starting at or before its end
    reaches its start."""
    if not len(regions) or not len(lo):
        return np.zeros(len(lo), dtype=bool)
    ref = np.fromiter((g.ref for g in regions), np.int64, len(regions))
    a = _pack(ref, np.fromiter((g.start for g in regions), np.int64, len(regions)) - span)
    b = _pack(ref, np.fromiter((g.end - 1 for g in regions), np.int64, len(regions)))
    order = np.argsort(a, kind="stable")
    a, reach = a[order], np.maximum.accumulate(b[order])
    n = np.searchsorted(a, hi, side="right")
    hit = n > 0
    hit[hit] = reach[n[hit] - 1] >= lo[hit]
    return hit


def _overlapping(ranges: list[Any], regions: Sequence[Region], span: int) -> list[int]:
    """Indices of the ``[ref, pos, ref, pos, ...]`` ranges (None: nothing) whose records, of reference
    spans up to ``span``, may overlap a region."""
    at = [i for i, r in enumerate(ranges) if r is not None]
    if not at:
        return []
    r = np.array([[int(x) for x in ranges[i][:4]] for i in at], dtype=np.int64)
    hit = _any_hit(regions, _pack(r[:, 0], r[:, 1]), _pack(r[:, 2], r[:, 3]), span)
    return [i for i, h in zip(at, hit.tolist()) if h]


def plan_extras(ds: "Dataset", regions: "Selection | Sequence[Region]", columns: list[str]) -> list[int]:
    """The indices of the chunks whose extra records (``columns``: the ``secondary<N>`` columns) may
    overlap ``regions``: from the manifest's ``extras_ranges`` where it describes exactly these columns
    and every chunk, else every chunk (logged: the extra columns of the whole dataset are read)."""
    if not columns:
        return []
    er = ds.manifest.extra.get("extras_ranges")
    ranges = er.get("ranges") if isinstance(er, dict) else None
    if (not isinstance(ranges, list) or len(ranges) != len(ds.chunks) or sorted(er.get("columns") or [])
            != sorted(columns) or not all(r is None or (isinstance(r, list) and len(r) == 5) for r in ranges)):
        log.warning("dataset %r has no per-chunk ranges of its secondary/supplementary records in its manifest "
                    "(sorted by an older persona, or its extra columns are not the ones recorded): the region "
                    "export reads the extra columns of all %d chunks; sorting it again records them",
                    ds.name, len(ds.chunks))
        return list(range(len(ds.chunks)))
    span = max((int(r[4]) for r in ranges if r is not None), default=0)
    return _overlapping(ranges, regions.choosing if isinstance(regions, Selection) else regions, span)


def overlap_mask(al: Any, regions: Sequence[Region]) -> np.ndarray:
    """Which records of ``al`` (Alignments) overlap any of ``regions``."""
    f = al.fields
    ref = f["ref_index"].astype(np.int64)
    pos = f["position"].astype(np.int64)
    span = md_kernel.reference_lengths(al.cigars.offsets, al.cigars.data)
    end = pos + np.maximum(span, 1)
    return (ref >= 0) & _any_hit(regions, _pack(ref, pos), _pack(ref, end - 1))


class RegionExportJob(ExportJob):
    """An export of the records overlapping ``request.regions`` (see the module docstring).

    Feeds: the chunks whose primaries may overlap (:func:`plan_regions`), in dataset order. With extra
    columns, ``begin`` first looks for overlapping extra records in the chunks whose extras may
    overlap (:func:`plan_extras`): it decodes their extra columns only, and encodes the reads of a
    chunk only where some of its extras overlap."""

    kind: ClassVar[str] = "export"

    def __init__(self, request: Any, request_id: str, runtime: Any) -> None:
        super().__init__(request, request_id, runtime)
        if self.fmt == "fastq":
            raise ConfigError("a region export writes SAM, BAM or CRAM", key="regions")
        self.selection, self.chosen = plan_regions(self.ds, request.regions,
                                                   getattr(request, "regions_file", None))
        self.extra_sources = plan_extras(self.ds, self.selection, self.sec_columns)
        # the export pass reads the primaries' columns; the extras come from the first pass
        extra_cols = set(self.sec_columns) | {self.tag_columns[c] for c in self.sec_columns if c in self.tag_columns}
        self.read_columns = tuple(c for c in self.columns if c not in extra_cols)
        self.slot = {c: k for k, c in enumerate(self.chosen)}
        self._at = 0

    def begin(self) -> None:
        if self.sec_columns and self.fmt in ("bam", "sam") and self.extra_sources:
            self._first_pass()
        sec, self.sec_columns = self.sec_columns, []  # the parent's begin: files and header only
        try:
            super().begin()
        finally:
            self.sec_columns = sec

    def _first_pass(self) -> None:
        """The overlapping extra records, placed among the chosen chunks (one chunk stands in when no
        primary may overlap: every extra then goes to it)."""
        from persona.apps.export_sorted import SortedExtras, alignment_keys

        if not self.chosen:
            self.chosen = self.extra_sources[:1]
            self.slot = {c: k for k, c in enumerate(self.chosen)}

        def first_key(i: int) -> int:  # of the chunk's first record (only that one decoded)
            from persona.agd.columns import decode_column

            _, raw = self.ds.read_raw(i, RESULTS)
            if not len(raw):
                return 0
            return int(alignment_keys(decode_column(RESULTS, raw.slice(0, 1)))[0])

        mb = self.runtime.config.export.sorted_extras_memory_mb
        self.extras = SortedExtras(len(self.chosen), self.fmt, lambda k: (None, b"", None), memory_limit=mb << 20,
                                   submit=self.runtime.compute.submit, in_flight=max(2, self.runtime.threads),
                                   keep=self.selection.mask)
        try:
            firsts = np.array(list(self.runtime.compute.map(first_key, self.chosen)), dtype=np.uint64)
            self.extras.build_from(firsts, len(self.extra_sources), self._source)
        except BaseException:
            self.extras.close()
            raise
        log.debug("region export of %r: %d extra records from the extra columns of %d chunks", self.ds.name,
                  self.extras.count, len(self.extra_sources))

    def _source(self, j: int) -> tuple[np.ndarray, list[bytes]]:
        """Source chunk ``j`` of the first pass: the keys and encoded records of its extra records that
        overlap. Its extra columns are decoded; its other columns are read only where some overlap."""
        from persona.apps.export_sorted import take_rows

        i = self.extra_sources[j]

        def load(c: str) -> Any:
            return self.ds.decode_file(i, c, self.ds.read_file(i, c))

        values = {c: load(c) for c in self.sec_columns}
        hit = np.zeros(len(next(iter(values.values()))), dtype=bool)
        for al in values.values():
            hit |= al.present & self.selection.mask(al)
        rows = np.flatnonzero(hit).astype(np.int64)
        if not len(rows):
            return np.zeros(0, np.uint64), []
        for c in self.columns:
            if c not in values:
                values[c] = load(c)
        assert self.extras is not None
        al, data, offsets, _ = self._encode(i, {c: take_rows(v, rows) for c, v in values.items()}, interleave=True)
        _, keys, recs = self.extras.extras_of(al, data, offsets)
        return keys, recs

    def feeds(self) -> list[FeedDescriptor]:
        return [FeedDescriptor(self.request_id, self.ds.store.url, self.ds.name, i, tuple(self.read_columns))
                for i in self.chosen]

    def stage_decode(self, w: Work) -> Work:
        w = super().stage_decode(w)
        keep = np.flatnonzero(self.selection.mask(w.data[RESULTS]))
        w.data = {c: _take(v, keep) for c, v in w.data.items()}
        return w

    def stage_encode(self, w: Work) -> Work:
        """The overlapping primaries; with extras, merged with the overlapping extra records that fall
        between this chunk's first key and the next chosen chunk's."""
        if self.extras is None:
            return super().stage_encode(w)
        values = w.data
        w.n = len(values[METADATA])
        counters.add("bases", ("export", "encode"), int(values[BASE].offsets[-1]) if w.n else 0)
        al, data, offsets, _ = self._encode(w.desc.chunk, values, interleave=False)
        data, n_sec = self.extras.merge_into(self.slot[w.desc.chunk], al, data, offsets)
        w.data = [data]
        w.out = (w.n, n_sec)
        return w

    def stage_write(self, w: Work) -> Work:
        """One replica: the chosen chunks in order (early ones wait, bounded by the gates)."""
        self._pending[w.desc.chunk] = w.data
        w.data = None
        while self._at < len(self.chosen) and self.chosen[self._at] in self._pending:
            i = self.chosen[self._at]
            for k, data in enumerate(self._pending.pop(i)):
                self._write(k, data)
            self._at += 1
            self.advance(self.ds.chunks[i].num_records)
        return w


def _take(value: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a decoded column (RaggedArray or Alignments)."""
    from persona._native import sort as sort_kernel
    from persona.agd.ragged import RaggedArray
    from persona.agd.records import Alignments

    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if isinstance(value, Alignments):
        o, d = sort_kernel.ragged_take(value.cigars.offsets, value.cigars.data, idx)
        tags = None
        if value.tags is not None:
            to, td = sort_kernel.ragged_take(value.tags.offsets, value.tags.data, idx)
            tags = RaggedArray(to, td, validate=False)
        return Alignments(value.fields[idx], RaggedArray(o, d, validate=False), value.present[idx], tags)
    o, d = sort_kernel.ragged_take(value.offsets, np.ascontiguousarray(value.data), idx)
    return RaggedArray(o, d, validate=False)
