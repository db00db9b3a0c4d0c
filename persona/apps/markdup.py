"""Duplicate marking with Picard MarkDuplicates semantics, as a job (ARCHITECTURE.md, "Applications").

Pass 1 (the runtime's ``markdup`` pipeline, one feed per chunk)::

    read                ->  ends
    store.get of the        decode, then per primary record (Cython, GIL released): unclipped
    results, qual and       5' coordinate, duplicate score, read-name hash
    metadata files

Then (the request's thread, :meth:`MarkdupJob.commit`) the duplicates are decided
over the whole dataset as Picard does, and pass 2 rewrites ``results`` with flag
0x400 set on the duplicates and cleared on every other record, in one column
transaction (claimed when the request starts) with a provenance entry.

Picard's rules, as implemented:

* library: the read group's ``LB`` (the dataset's read group), else ``Unknown Library``;
* ends: every mapped primary record is a *fragment* end (library, reference, unclipped
  5' coordinate, strand); a paired record whose mate is mapped, with its mate found
  in the dataset (same name, the other of read 1/read 2), also forms a *pair* end with
  its mate: read 1 of the pair is the end with the lower (reference, coordinate),
  the first in file order on a tie, and the orientation is (read 1's strand, read
  2's strand). The mate's position, strand and CIGAR come from the mate's own
  record, never from MC tags;
* score: the sum of base qualities >= 15 (each read capped at 16383, -16384 if QC-failed,
  a pair's the sum of both as a Java short);
* pairs: grouped by (library, ref1, coord1, orientation, ref2, coord2), ordered by file
  index of read 1 then read 2; the first with the highest score is kept, both ends of
  every other pair are duplicates;
* fragments: grouped by (library, ref, coord, strand); a group holding an end of a
  paired record with a mapped mate marks all its unpaired ends (pairs win); otherwise
  the first with the highest score is kept;
* unmapped, secondary and supplementary records decide nothing; on coordinate-sorted
  input Picard does not flag secondary/supplementary records, so the ``secondary<N>``
  columns are left as they are;
* metrics (``DuplicationMetrics``, one row per library) as Picard counts them (the present
  rows of ``secondary<N>`` columns count as SECONDARY_OR_SUPPLEMENTARY_RDS, as they do when
  exported with the primaries), with
  ``ESTIMATED_LIBRARY_SIZE`` by its Lander-Waterman bisection;
* read-name locations: Picard's default READ_NAME_REGEX parser (names of 5 or 7 ':'
  fields: tile, x, y; x and y as Java shorts) gives each end a location that orders ends
  of equal key before the file index (so it decides ties between equal scores) and finds
  optical duplicates (``READ_PAIR_OPTICAL_DUPLICATES``: pixel distance 100, its pairwise
  algorithm; the graph variant Picard uses for sets over 1000 is not reproduced).

Memory: pass 1 keeps 32 bytes per record (the ends, not the reads); deciding adds packed sort
keys (about 336 MiB peak on 2M records). It grows with the dataset: a windowed pass over the
coordinate-sorted records (pending pairs only) is what bounds it; not done yet.
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from persona._native import markdup as md_kernel
from persona.agd import Dataset
from persona.agd.columns import RESULTS, is_secondary_column
from persona.agd.records import (
    FLAG_DUPLICATE,
    FLAG_MATE_UNMAPPED,
    FLAG_PAIRED,
    FLAG_READ1,
    FLAG_READ2,
    FLAG_REVERSE,
    FLAG_SECONDARY,
    FLAG_SUPPLEMENTARY,
    FLAG_UNMAPPED,
)
from persona.agd.transaction import Transaction
from persona.apps.job import FeedDescriptor, Job, Request, StagePlan, Summary, Work
from persona.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from persona.config import Config
    from persona.runtime import Runtime

UNKNOWN_LIBRARY = "Unknown Library"
METRICS_COLUMNS = ("LIBRARY", "UNPAIRED_READS_EXAMINED", "READ_PAIRS_EXAMINED", "SECONDARY_OR_SUPPLEMENTARY_RDS",
                   "UNMAPPED_READS", "UNPAIRED_READ_DUPLICATES", "READ_PAIR_DUPLICATES",
                   "READ_PAIR_OPTICAL_DUPLICATES", "PERCENT_DUPLICATION", "ESTIMATED_LIBRARY_SIZE")


@dataclass
class MarkdupRequest(Request):
    """Mark duplicates in ``dataset`` (``name`` where its location holds several), in place
    (a column transaction on ``results``); ``metrics``: a file for Picard-format metrics."""

    kind: ClassVar[str] = "markdup"

    dataset: str
    name: str | None = None
    metrics: str | None = None
    threads: int | None = None
    replicas: dict[str, int] = field(default_factory=dict)
    capacity: int | None = None

    def resolved(self, config: "Config") -> "MarkdupRequest":
        if self.threads is not None and self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}", key="threads")
        return replace(self, dataset=os.fspath(self.dataset), capacity=self.capacity or config.ptf.default_capacity)

    def plan(self, runtime: "Runtime", request_id: str) -> "MarkdupJob":
        return MarkdupJob(self, request_id, runtime)


@dataclass
class DuplicationMetrics:
    LIBRARY: str = UNKNOWN_LIBRARY
    UNPAIRED_READS_EXAMINED: int = 0
    READ_PAIRS_EXAMINED: int = 0
    SECONDARY_OR_SUPPLEMENTARY_RDS: int = 0
    UNMAPPED_READS: int = 0
    UNPAIRED_READ_DUPLICATES: int = 0
    READ_PAIR_DUPLICATES: int = 0
    READ_PAIR_OPTICAL_DUPLICATES: int = 0
    PERCENT_DUPLICATION: float = 0.0
    ESTIMATED_LIBRARY_SIZE: int | None = None

    def finish(self) -> None:
        """Picard's ``calculateDerivedFields``."""
        self.ESTIMATED_LIBRARY_SIZE = estimate_library_size(
            self.READ_PAIRS_EXAMINED - self.READ_PAIR_OPTICAL_DUPLICATES,
            self.READ_PAIRS_EXAMINED - self.READ_PAIR_DUPLICATES)
        den = self.UNPAIRED_READS_EXAMINED + self.READ_PAIRS_EXAMINED * 2
        self.PERCENT_DUPLICATION = 0.0 if den == 0 else \
            (self.UNPAIRED_READ_DUPLICATES + self.READ_PAIR_DUPLICATES * 2) / den

    def row(self) -> list[str]:
        out = []
        for k in METRICS_COLUMNS:
            v = getattr(self, k)
            if v is None:
                out.append("")
            elif isinstance(v, float):
                out.append(_format_double(v))
            else:
                out.append(str(v))
        return out


def _format_double(v: float) -> str:
    """htsjdk's FormatUtil for doubles: at most 6 decimals, no trailing zeros."""
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return s if s else "0"


def estimate_library_size(read_pairs: int, unique_pairs: int) -> int | None:
    """Picard's ``DuplicationMetrics.estimateLibrarySize`` (Lander-Waterman, bisection)."""
    dups = read_pairs - unique_pairs
    if read_pairs > 0 and dups > 0:
        def f(x: float, c: float, n: float) -> float:
            return c / x - 1 + math.exp(-n / x)

        m, big = 1.0, 100.0
        if unique_pairs >= read_pairs or f(m * unique_pairs, unique_pairs, read_pairs) < 0:
            raise DatasetError(f"invalid values for pairs and unique pairs: {read_pairs}, {unique_pairs}")
        while f(big * unique_pairs, unique_pairs, read_pairs) > 0:
            big *= 10.0
        for _ in range(40):
            r = (m + big) / 2.0
            u = f(r * unique_pairs, unique_pairs, read_pairs)
            if u == 0:
                break
            if u > 0:
                m = r
            else:
                big = r
        return int(unique_pairs * (m + big) / 2.0)
    return None


@dataclass
class MarkdupSummary(Summary):
    name: str = ""
    location: str = ""
    records: int = 0
    duplicates: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    metrics_file: str | None = None


class MarkdupJob(Job):
    kind: ClassVar[str] = "markdup"
    stages = (StagePlan("read", 1), StagePlan("ends", 2))
    request: MarkdupRequest

    def __init__(self, request: MarkdupRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        self.ds = Dataset.open(request.dataset, request.name)
        for c in (RESULTS, "qual", "metadata"):
            if c not in self.ds.columns:
                raise DatasetError(f"dataset {self.ds.name!r} has no {c!r} column: duplicate marking needs "
                                   "aligned reads with qualities and names", store=self.ds.store.url)
        self.threads = max(1, request.threads or runtime.threads)
        rg = self.ds.manifest.extra.get("read_group") or {}
        self.library = (rg.get("LB") if isinstance(rg, dict) else None) or UNKNOWN_LIBRARY
        self.txn: Transaction | None = None

    def begin(self) -> None:
        self.txn = self.ds.begin_columns(app="markdup", attempt=self.attempt, request_id=self.request_id)

    def feeds(self) -> list[FeedDescriptor]:
        return [FeedDescriptor(self.request_id, self.ds.store.url, self.ds.name, i, (RESULTS, "qual", "metadata"))
                for i in range(len(self.ds.chunks))]

    def stage_read(self, w: Work) -> Work:
        w.data = {c: self.ds.read_file(w.desc.chunk, c) for c in w.desc.columns}
        return w

    @property
    def secondary_columns(self) -> list[str]:
        return [c for c in self.ds.columns if is_secondary_column(c)]

    def stage_ends(self, w: Work) -> Work:
        i = w.desc.chunk
        res = self.ds.decode_file(i, RESULTS, w.data[RESULTS])
        qual = self.ds.decode_file(i, "qual", w.data["qual"])
        meta = self.ds.decode_file(i, "metadata", w.data["metadata"])
        secondary = 0
        for c in self.secondary_columns:  # present rows: non-empty records (no decode needed)
            _, raw = self.ds.read_raw(i, c)
            secondary += int(np.count_nonzero(raw.lengths))
        w.data = None
        f = res.fields
        flag = np.ascontiguousarray(f["flag"])
        pos = np.ascontiguousarray(f["position"])
        coord, score, hashes, loc = md_kernel.read_ends(flag, pos, res.cigars.offsets, res.cigars.data,
                                                   qual.offsets, qual.data, meta.offsets, meta.data)
        w.out = {"flag": flag, "ref": np.ascontiguousarray(f["ref_index"]), "coord": coord, "score": score,
                 "hash": hashes, "loc": loc, "secondary": secondary}
        w.n = len(flag)
        self.advance(w.n)
        return w

    # -- deciding ------------------------------------------------------------------------
    def decide(self, outputs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, DuplicationMetrics]:
        """The duplicate mask over all records (dataset order) and the metrics."""
        cat = lambda k, dt: np.concatenate([o.pop(k) for o in outputs]) if outputs else np.zeros(0, dt)  # noqa: E731
        secondary = sum(int(o["secondary"]) for o in outputs)
        flag = cat("flag", np.uint32)
        ref = cat("ref", np.int32)
        coord = cat("coord", np.int64)
        score = cat("score", np.int16)
        hashes = cat("hash", np.uint64)
        loc = np.concatenate([o.pop("loc") for o in outputs]) if outputs else np.zeros((0, 3), np.int16)
        n = len(flag)
        if n and int(ref.max()) >= (1 << 24) - 1:
            raise DatasetError(f"reference index {int(ref.max())} too large for duplicate marking keys")
        # Packed keys (fewer, smaller sort keys): (ref, coord) in 58 bits; the name location (tile, x, y)
        # as unsigned 16-bit fields in 48 bits, ordered as Picard's signed shorts.
        refcoord = ((ref.astype(np.int64) + 1) << 34) | (coord + (1 << 33))
        del coord
        loc48 = ((loc[:, 0].astype(np.int64) + 32768) << 32) | ((loc[:, 1].astype(np.int64) + 32768) << 16) \
            | (loc[:, 2].astype(np.int64) + 32768)
        del loc
        dup = np.zeros(n, dtype=bool)
        m = DuplicationMetrics(LIBRARY=self.library)

        unmapped = (flag & FLAG_UNMAPPED) != 0
        secsup = ((flag & (FLAG_SECONDARY | FLAG_SUPPLEMENTARY)) != 0) & ~unmapped
        mapped = ~unmapped & ~secsup
        paired_mm = mapped & ((flag & FLAG_PAIRED) != 0) & ((flag & FLAG_MATE_UNMAPPED) == 0)
        rev = ((flag & FLAG_REVERSE) != 0).astype(np.int8)
        m.UNMAPPED_READS = int(unmapped.sum())
        m.SECONDARY_OR_SUPPLEMENTARY_RDS = int(secsup.sum()) + secondary
        m.UNPAIRED_READS_EXAMINED = int((mapped & ~paired_mm).sum())
        pairs_examined = int(paired_mm.sum())

        # -- pairs: find each paired end's mate by name hash (read 1 with read 2) --------------
        cand = np.flatnonzero(paired_mm & ((flag & (FLAG_READ1 | FLAG_READ2)) != 0))
        order = cand[np.lexsort((cand, hashes[cand]))]
        h = hashes[order]
        same = h[1:] == h[:-1]
        # a pair is two consecutive entries of one hash (exactly two), one read 1 and one read 2
        run_start = np.flatnonzero(np.concatenate(([True], ~same)))
        run_len = np.diff(np.concatenate((run_start, [len(order)])))
        two = run_start[run_len == 2]
        a, b = order[two], order[two + 1]  # a: first in file order
        ok = ((flag[a] & FLAG_READ1) != 0) != ((flag[b] & FLAG_READ1) != 0)
        a, b = a[ok], b[ok]
        del order, h, same, run_start, run_len, two, cand
        b_first = refcoord[b] < refcoord[a]
        r1 = np.where(b_first, b, a)
        r2 = np.where(b_first, a, b)
        del b_first
        pscore = (score[a].astype(np.int32) + score[b].astype(np.int32)).astype(np.int16)
        if len(r1):
            # Picard's order: read 1's (ref, coord), the orientation (FF 0, FR 1, RF 2, RR 3), read 2's
            # (ref, coord), the location parsed from the name of the first end in file order, then read
            # 1's and read 2's file index
            key1 = refcoord[r1]
            key2 = ((rev[r1].astype(np.int64) * 2 + rev[r2]) << 58) | refcoord[r2]
            po = np.lexsort((r2, r1, loc48[a], key2, key1))
            key1, key2 = key1[po], key2[po]
            newg = np.concatenate(([True], (key1[1:] != key1[:-1]) | (key2[1:] != key2[:-1])))
            del key1, key2
            keep = self._first_max(newg, pscore[po])
            lost = po[keep == 0]
            m.READ_PAIR_OPTICAL_DUPLICATES = self._optical(newg, keep, po, a, b, flag, rev, loc48)
            dup[r1[lost]] = True
            dup[r2[lost]] = True

        # -- fragments -------------------------------------------------------------------------
        fr = np.flatnonzero(mapped)
        if len(fr):
            # Picard's order: (ref, coord), strand, paired ends first (read2 reference -1 last), location,
            # file index; groups: (ref, coord, strand)
            small = rev[fr].astype(np.int8) * 2 + (~paired_mm[fr]).astype(np.int8)
            fo = np.lexsort((fr, loc48[fr], small, refcoord[fr]))
            idx = fr[fo]
            del fo, small, fr
            k1, k3 = refcoord[idx], rev[idx]
            newg = np.concatenate(([True], (k1[1:] != k1[:-1]) | (k3[1:] != k3[:-1])))
            del k1, k3
            gid = np.cumsum(newg) - 1
            has_pair = np.zeros(int(gid[-1]) + 1, dtype=bool)
            np.logical_or.at(has_pair, gid, paired_mm[idx])
            unpaired = ~paired_mm[idx]
            # groups with a paired end: every unpaired end is a duplicate
            dup[idx[unpaired & has_pair[gid]]] = True
            # groups of unpaired ends only: the first best is kept
            sel = ~has_pair[gid]
            if sel.any():
                sidx = idx[sel]
                sg = gid[sel]
                newg2 = np.concatenate(([True], sg[1:] != sg[:-1]))
                keep = self._first_max(newg2, score[sidx])
                dup[sidx[keep == 0]] = True

        m.UNPAIRED_READ_DUPLICATES = int((dup & mapped & ~paired_mm).sum())
        m.READ_PAIR_DUPLICATES = int((dup & paired_mm).sum()) // 2
        m.READ_PAIRS_EXAMINED = pairs_examined // 2
        m.finish()
        return dup, m

    @staticmethod
    def _optical(newg: np.ndarray, keep: np.ndarray, po: np.ndarray, a: np.ndarray, b: np.ndarray, flag: np.ndarray,
                 rev: np.ndarray, loc48: np.ndarray, distance: int = 100) -> int:
        """Picard's optical duplicate count over the pair groups (OPTICAL_DUPLICATE_PIXEL_DISTANCE 100;
        its pairwise algorithm, per orientation of read 1 / read 2 of the pair when a group has both)."""
        starts = np.flatnonzero(newg)
        sizes = np.diff(np.concatenate((starts, [len(newg)])))
        total = 0
        a_is_r1 = (flag[a] & FLAG_READ1) != 0
        # orientation for optical duplicates: read 1 of the pair's strand, then read 2's
        s1 = np.where(a_is_r1, rev[a], rev[b])
        s2 = np.where(a_is_r1, rev[b], rev[a])
        for st, sz in zip(starts[sizes > 1], sizes[sizes > 1]):
            members = po[st:st + sz]
            kept = members[keep[st:st + sz] == 1][0]
            oo = s1[members] * 2 + s2[members]
            parts = [members]
            if (oo == 1).any() and (oo == 2).any():
                parts = [members[oo == 1], members[oo == 2]]
            for part in parts:
                if len(part) < 2:
                    continue
                la = loc48[a[part]]
                t, x, y = (la >> 32) - 32768, ((la >> 16) & 0xFFFF) - 32768, (la & 0xFFFF) - 32768
                kidx = int(np.flatnonzero(part == kept)[0]) if (part == kept).any() else -1

                def close(i: int, j: int) -> bool:
                    return i != j and t[i] != -1 and t[j] != -1 and t[i] == t[j] and \
                        abs(int(x[i]) - int(x[j])) <= distance and abs(int(y[i]) - int(y[j])) <= distance

                n = len(part)
                flags = [False] * n
                if kidx >= 0:
                    for i in range(n):
                        flags[i] = close(kidx, i)
                for i in range(n):
                    if i == kidx:
                        continue
                    for j in range(i + 1, n):
                        if j == kidx or (flags[i] and flags[j]):
                            continue
                        if close(i, j):
                            flags[j if not flags[j] else i] = True
                total += sum(flags)
        return total

    @staticmethod
    def _first_max(newg: np.ndarray, score: np.ndarray) -> np.ndarray:
        starts = np.concatenate((np.flatnonzero(newg), [len(newg)])).astype(np.int64)
        keep = np.zeros(len(newg), dtype=np.uint8)
        md_kernel.first_max_groups(starts, np.ascontiguousarray(score, dtype=np.int16), keep)
        return keep

    # -- pass 2 and commit ----------------------------------------------------------------
    def _rewrite(self, chunk: int, mask: np.ndarray) -> int:
        assert self.txn is not None
        res = self.ds.read_column(chunk, RESULTS)
        f = res.fields
        old = f["flag"].copy()
        f["flag"] = np.where(mask, old | FLAG_DUPLICATE, old & ~np.uint32(FLAG_DUPLICATE))
        self.txn.put_column_file(chunk, RESULTS, self.ds.encode_column_file(chunk, RESULTS, res))
        return int(mask.sum())

    def commit(self, outputs: list[Any]) -> MarkdupSummary:
        assert self.txn is not None
        dup, metrics = self.decide([o for o in outputs if o is not None])
        bounds = np.cumsum([0] + [c.num_records for c in self.ds.chunks])
        with ThreadPoolExecutor(self.threads, thread_name_prefix=f"markdup-{self.request_id[:6]}") as pool:
            counts = list(pool.map(lambda i: self._rewrite(i, dup[bounds[i]:bounds[i + 1]]),
                                   range(len(self.ds.chunks))))
        entry = self.provenance(inputs=[{"dataset": self.ds.store.url, "name": self.ds.name,
                                         "generation": self.ds.manifest.generation}],
                                duplicates=int(sum(counts)))
        manifest = self.txn.commit([RESULTS], provenance=entry)
        self.ds.manifest = manifest
        if self.request.metrics:
            write_metrics(self.request.metrics, [metrics], command=f"persona markdup {self.request.dataset}")
        return MarkdupSummary(**self.summary_base(), name=self.ds.name, location=self.ds.store.url,
                              records=len(dup), duplicates=int(dup.sum()), metrics=[metrics.__dict__.copy()],
                              metrics_file=self.request.metrics)

    def abort(self, error: BaseException | None) -> None:
        if self.txn is not None and self.txn.state in ("open", "new"):
            self.txn.abort()


def write_metrics(path: str, metrics: list[DuplicationMetrics], command: str = "") -> None:
    """A metrics file in Picard's format (htsjdk MetricsFile)."""
    lines = ["## htsjdk.samtools.metrics.StringHeader", f"# {command}",
             "## htsjdk.samtools.metrics.StringHeader",
             f"# Started on: {time.strftime('%a %b %d %H:%M:%S %Z %Y')}", "",
             "## METRICS CLASS\tpicard.sam.DuplicationMetrics", "\t".join(METRICS_COLUMNS)]
    lines += ["\t".join(m.row()) for m in metrics]
    lines += ["", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def read_metrics(path: str) -> list[dict[str, str]]:
    """The DuplicationMetrics rows of a Picard (or our) metrics file."""
    rows: list[dict[str, str]] = []
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("## METRICS CLASS"):
            header = lines[i + 1].split("\t")
            for row in lines[i + 2:]:
                if not row.strip() or row.startswith("#"):
                    break
                rows.append(dict(zip(header, row.split("\t"))))
            break
    return rows


def mark_duplicates(request: MarkdupRequest, *, runtime: "Runtime | None" = None, progress: Any = None,
                    threads: int = 0) -> MarkdupSummary:
    from persona.runtime import run_request

    s = run_request(request, threads=threads, runtime=runtime, progress=progress)
    assert isinstance(s, MarkdupSummary)
    return s
