"""Duplicate marking with Picard MarkDuplicates semantics, as a job (ARCHITECTURE.md, "Applications").

Pass 1 (the runtime's ``markdup`` pipeline, one feed per chunk)::

    read                ->  ends                                   ->  decide
    store.get of the        decode, then per primary record             the chunks' ends in dataset
    results, qual and       (Cython, GIL released): unclipped 5'        order into the Decider: mates
    metadata files          coordinate, duplicate score, read-name      meet, groups are decided once
                            hash, name location (tile, x, y)            the sweep has passed them

On a coordinate-sorted dataset a group is decided as soon as the records' alignment
starts have passed it by ``window`` bases (:class:`Decider`), so memory holds only the
open groups and the mates waiting for theirs, whatever the dataset size; other orders
are decided at the end. Pass 2 (:meth:`MarkdupJob.commit`) rewrites ``results`` with flag
0x400 set on the duplicates and cleared on every other record, in one column
transaction (claimed when the request starts) with a provenance entry.

Picard's rules, as implemented:

* library: the ``LB`` of the record's read group (its ``RG`` tag in the ``tags`` column, else the
  dataset's read group), else ``Unknown Library`` (:class:`Libraries`); duplicates only within a
  library; a metrics row for the library of every read group, by name (Picard's sorted map);
* ends: every mapped primary record is a *fragment* end (library, reference, unclipped
  5' coordinate, strand); a paired record whose mate is mapped, with its mate found
  in the dataset (same name; mates meet in file order, as in Picard's pending-mate map),
  also forms a *pair* end with its mate: read 1 of the pair is the end with the lower (reference, coordinate),
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
  optical duplicates (``READ_PAIR_OPTICAL_DUPLICATES``: pixel distance 100). As Picard 2.27's
  OpticalDuplicateFinder: sets over 300,000 ends (its MAX_OPTICAL_DUPLICATE_SET_SIZE) are not
  searched at all; sets of 4 or more ends are clustered (ends on one tile within the distance are
  linked, transitively; one end per cluster stays, the keeper in its cluster, else the lowest x, y);
  only sets of 2 and 3 use its pairwise comparison. (Picard logs sets over 1,000 as "large" but
  treats them the same.) Two ends are optical duplicates only within one read group as well (Picard's
  ``PhysicalLocation.getReadGroup``: the index of the record's ``RG`` in the header's ``@RG`` lines, 0
  without an ``RG`` tag, one index past them for an undeclared one; a pair end takes its first record's
  in file order); the read group does not enter the ordering of ends (:class:`Libraries`).

Memory: the open groups and waiting mates (2,684 ends at most on 2M simulated records, 164 MiB
peak for the process) and the duplicates' ordinals; mates on other contigs wait until theirs come.
"""
from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from persona._native import markdup as md_kernel
from persona.agd import Dataset
from persona.agd.columns import RESULTS, decode_column, is_secondary_column
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
from persona.apps.job import DatasetReadJob, Request, StagePlan, Summary, Work
from persona.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from persona.config import Config
    from persona.runtime import Runtime

UNKNOWN_LIBRARY = "Unknown Library"
#: bases the alignment starts must pass a group by before it is decided (longer clips need more)
DEFAULT_WINDOW = 10_000
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
    #: bases past a group before it is decided (coordinate-sorted datasets; 0: decide at the end)
    window: int | None = None
    threads: int | None = None
    replicas: dict[str, int] = field(default_factory=dict)
    capacity: int | None = None
    #: Picard's REMOVE_DUPLICATES: write a new dataset (``out_name`` at ``output``; default
    #: ``<name>_dedup`` beside the input) holding every record but the duplicates; the input is unchanged
    remove: bool = False
    output: str | None = None
    out_name: str | None = None
    overwrite: bool = False

    def resolved(self, config: "Config") -> "MarkdupRequest":
        if self.threads is not None and self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}", key="threads")
        if not self.remove and (self.output or self.out_name):
            raise ConfigError("an output dataset is written only with remove (--remove)", key="output")
        return replace(self, dataset=os.fspath(self.dataset), capacity=self.capacity or config.ptf.default_capacity,
                       window=self.window if self.window is not None else config.markdup.window)

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


_RC_MASK = (1 << 58) - 1


def _rc(ref: np.ndarray, coord: np.ndarray) -> np.ndarray:
    """(reference, coordinate) packed in 58 bits, in (ref, coord) order; unmapped (ref -1) first."""
    return ((ref.astype(np.int64) + 1) << 34) | (coord.astype(np.int64) + (1 << 33))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _first_max(newg: np.ndarray, score: np.ndarray) -> np.ndarray:
    """1 for the first entry of the highest score of each group (``newg``: group starts), else 0."""
    starts = np.concatenate((np.flatnonzero(newg), [len(newg)])).astype(np.int64)
    keep = np.zeros(len(newg), dtype=np.uint8)
    md_kernel.first_max_groups(starts, np.ascontiguousarray(score, dtype=np.int16), keep)
    return keep


def _optical_count(newg: np.ndarray, keep: np.ndarray, oo: np.ndarray, loc48: np.ndarray,
                   rg: np.ndarray | None = None, distance: int = 100) -> int:
    """Picard's optical duplicate count over sorted pair groups (``newg``: group starts; ``keep``: the
    representative; ``oo``: orientation for optical duplicates, read 1 of the pair then read 2, FR 1 RF 2;
    ``loc48``: packed tile, x, y; ``rg``: read group index, None: all one), split by orientation when a
    group has FR and RF; only ends of one read group and one tile can be optical duplicates; as Picard 2.27's
    OpticalDuplicateFinder counts them: nothing for a set over :data:`MAX_OPTICAL_SET` ends, its clustering
    (:func:`_optical_graph`) for sets of 4 or more, its pairwise comparison for smaller ones."""
    starts = np.flatnonzero(newg)
    sizes = np.diff(np.concatenate((starts, [len(newg)])))
    total = 0
    for st, sz in zip(starts[sizes > 1], sizes[sizes > 1]):
        sl = slice(int(st), int(st + sz))
        members = np.arange(sz)
        kept = int(np.flatnonzero(keep[sl])[0])
        o = oo[sl]
        parts = [members]
        if (o == 1).any() and (o == 2).any():
            parts = [members[o == 1], members[o == 2]]
        la_all = loc48[sl]
        g_all = rg[sl] if rg is not None else np.zeros(int(sz), dtype=np.int32)
        for part in parts:
            if len(part) < 2:
                continue
            la = la_all[part]
            t, x, y = (la >> 32) - 32768, ((la >> 16) & 0xFFFF) - 32768, (la & 0xFFFF) - 32768
            g = g_all[part].astype(np.int64)
            hit = np.flatnonzero(part == kept)
            kidx = int(hit[0]) if len(hit) else -1
            if len(part) > MAX_OPTICAL_SET:
                continue
            if len(part) >= 4:  # Picard: 3 without a keeper, 4 with one; a pair group always has one
                total += _optical_graph(t, x, y, kidx if kidx >= 0 and t[kidx] != -1 else -1, distance, g)
                continue

            def close(i: int, j: int) -> bool:
                return i != j and t[i] != -1 and t[j] != -1 and t[i] == t[j] and g[i] == g[j] and \
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


#: Picard's MAX_OPTICAL_DUPLICATE_SET_SIZE: larger duplicate sets are not searched for optical duplicates
MAX_OPTICAL_SET = 300_000


def _optical_graph(t: np.ndarray, x: np.ndarray, y: np.ndarray, keeper: int, distance: int,
                   rg: np.ndarray | None = None) -> int:
    """Optical duplicates of one duplicate set by clustering (Picard's graph variant, in our words): ends
    of the same read group (``rg``, None: all one) on the same tile within ``distance`` in x and in y are
    linked, and linked ends form clusters
    (transitively); in each cluster one end stays unflagged: the keeper in the keeper's cluster, else the
    one with the lowest (x, y), ties to the earliest; every other end of a cluster is an optical duplicate.
    Ends are visited in set order, as Picard's map of cluster assignments is."""
    n = len(t)
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    located = np.flatnonzero(t != -1)
    # one key per (read group, tile): tiles are Java shorts, so distinct pairs never share a key
    rgt = (rg.astype(np.int64) << 16) + t if rg is not None else t.astype(np.int64)
    for key in np.unique(rgt[located]):
        idx = located[rgt[located] == key]
        order = idx[np.argsort(x[idx], kind="stable")]
        xs = x[order].astype(np.int64)
        for a in range(len(order)):
            hi = int(np.searchsorted(xs, xs[a] + distance, side="right"))
            for b in range(a + 1, hi):
                i, j = int(order[a]), int(order[b])
                if abs(int(y[i]) - int(y[j])) <= distance:
                    ri, rj = find(i), find(j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
    cluster = [find(i) for i in range(n)]
    flags = np.zeros(n, dtype=bool)
    rep: dict[int, int] = {}
    kc = cluster[keeper] if keeper >= 0 else None
    if keeper >= 0:
        rep[kc] = keeper  # type: ignore[index]
    for i in range(n):
        c = cluster[i]
        if c in rep and i != keeper:
            r = rep[c]
            if c != kc and (x[i] < x[r] or (x[i] == x[r] and y[i] < y[r])):
                flags[r] = True
                rep[c] = i
            else:
                flags[i] = True
        else:
            rep[c] = i
    return int(flags.sum())


class Decider:
    """Picard's duplicate decisions, fed the ends of the records chunk by chunk in dataset order.

    ``margin`` None: everything is decided at :meth:`finish` (any record order; memory grows with the
    dataset). ``margin`` M (coordinate-sorted records): a fragment group (reference, unclipped 5'
    coordinate, strand) is decided once the records' alignment starts have passed its coordinate by M,
    a pair group once they have passed its read 2 coordinate by M, since no later record can join it
    while clips stay under M bases; only those open groups and the mates still waiting for theirs are
    held. A record that would join a decided group (a clip over M) raises :class:`DatasetError`.
    Mates pair in file order, as Picard's pending-mate map pairs them (by read name).
    """

    _FRAG = ("rc", "small", "paired", "loc", "ord", "score")
    _WAIT = ("hash", "ord", "rc", "rev", "loc", "score", "r1flag", "rg")
    _PAIR = ("key1", "key2", "loc", "r1", "r2", "score", "oo", "rg")

    def __init__(self, library: str, margin: int | None) -> None:
        self.m = DuplicationMetrics(LIBRARY=library)
        self.margin = margin
        self.sweep = -1
        self.cut = -1  # groups below this packed coordinate are decided
        self.pairs_examined = 0
        self.records = 0
        self.dups: list[np.ndarray] = []
        self.frag: dict[str, list[np.ndarray]] = {k: [] for k in self._FRAG}
        self.wait: dict[str, np.ndarray] = {}
        self.pairs: dict[str, list[np.ndarray]] = {k: [] for k in self._PAIR}
        self.held_max = 0

    def add(self, out: dict[str, Any], first: int) -> None:
        flag = out["flag"]
        n = len(flag)
        ordinal = out["ord"] if "ord" in out else np.arange(first, first + n, dtype=np.int64)
        self.records += n
        m = self.m
        unmapped = (flag & FLAG_UNMAPPED) != 0
        secsup = ((flag & (FLAG_SECONDARY | FLAG_SUPPLEMENTARY)) != 0) & ~unmapped
        mapped = ~unmapped & ~secsup
        paired_mm = mapped & ((flag & FLAG_PAIRED) != 0) & ((flag & FLAG_MATE_UNMAPPED) == 0)
        m.UNMAPPED_READS += int(unmapped.sum())
        m.SECONDARY_OR_SUPPLEMENTARY_RDS += int(secsup.sum()) + int(np.sum(out["secondary"]))
        m.UNPAIRED_READS_EXAMINED += int((mapped & ~paired_mm).sum())
        self.pairs_examined += int(paired_mm.sum())
        ref = out["ref"]
        if n and int(ref.max()) >= (1 << 24) - 1:
            raise DatasetError(f"reference index {int(ref.max())} too large for duplicate marking keys")
        rc = _rc(ref, out["coord"])
        loc = out["loc"]
        loc48 = ((loc[:, 0].astype(np.int64) + 32768) << 32) | ((loc[:, 1].astype(np.int64) + 32768) << 16) \
            | (loc[:, 2].astype(np.int64) + 32768)
        rev = ((flag & FLAG_REVERSE) != 0).astype(np.int8)
        score = out["score"]
        rg = out.get("rg")
        if rg is None:
            rg = np.zeros(n, dtype=np.int32)

        # fragment ends: every mapped primary record
        fm = np.flatnonzero(mapped)
        if len(fm):
            if self.margin is not None and int(rc[fm].min()) < self.cut:
                self._late("fragment", int(ordinal[fm][np.argmin(rc[fm])]))
            for k, v in (("rc", rc[fm]), ("small", rev[fm] * 2 + (~paired_mm[fm]).astype(np.int8)),
                         ("paired", paired_mm[fm]), ("loc", loc48[fm]), ("ord", ordinal[fm]), ("score", score[fm])):
                self.frag[k].append(v)

        # pairs: mates meet in file order (by name hash)
        pm = np.flatnonzero(paired_mm)
        if len(pm):
            new = {"hash": out["hash"][pm], "ord": ordinal[pm], "rc": rc[pm], "rev": rev[pm], "loc": loc48[pm],
                   "score": score[pm], "r1flag": (flag[pm] & FLAG_READ1) != 0, "rg": rg[pm]}
            allw = {k: (np.concatenate((self.wait[k], new[k])) if self.wait else new[k]) for k in self._WAIT}
            o = np.lexsort((allw["ord"], allw["hash"]))
            h = allw["hash"][o]
            start = np.concatenate(([True], h[1:] != h[:-1]))
            run_id = np.cumsum(start) - 1
            run_first = np.flatnonzero(start)
            pos_in_run = np.arange(len(o)) - run_first[run_id]
            run_len = np.diff(np.concatenate((run_first, [len(o)])))[run_id]
            is_a = (pos_in_run % 2 == 0) & (pos_in_run + 1 < run_len)
            ai = o[np.flatnonzero(is_a)]
            bi = o[np.flatnonzero(is_a) + 1]
            left = o[(pos_in_run % 2 == 0) & (pos_in_run + 1 >= run_len)]
            self.wait = {k: v[left] for k, v in allw.items()}
            if len(ai):
                a = {k: v[ai] for k, v in allw.items()}
                b = {k: v[bi] for k, v in allw.items()}
                b_first = b["rc"] < a["rc"]
                rc1 = np.where(b_first, b["rc"], a["rc"])
                rc2 = np.where(b_first, a["rc"], b["rc"])
                rev1 = np.where(b_first, b["rev"], a["rev"]).astype(np.int64)
                rev2 = np.where(b_first, a["rev"], b["rev"]).astype(np.int64)
                if self.margin is not None and len(rc2) and int(rc2.min()) < self.cut:
                    self._late("pair", int(b["ord"][np.argmin(rc2)]))
                s1 = np.where(a["r1flag"], a["rev"], b["rev"]).astype(np.int8)
                s2 = np.where(a["r1flag"], b["rev"], a["rev"]).astype(np.int8)
                for k, v in (("key1", rc1), ("key2", ((rev1 * 2 + rev2) << 58) | rc2), ("loc", a["loc"]),
                             ("r1", np.where(b_first, b["ord"], a["ord"])),
                             ("r2", np.where(b_first, a["ord"], b["ord"])),
                             ("score", (a["score"].astype(np.int32) + b["score"].astype(np.int32)).astype(np.int16)),
                             ("oo", s1 * 2 + s2), ("rg", a["rg"])):
                    self.pairs[k].append(v)
        if len(fm):
            start_rc = _rc(ref[fm], out["pos"][fm])
            self.sweep = max(self.sweep, int(start_rc.max()))
        if self.margin is not None and self.sweep >= 0:
            self._decide(self.sweep - self.margin)
        self.held_max = max(self.held_max, self.held())

    def held(self) -> int:
        """Ends held: open fragment ends, waiting mates, open pairs."""
        return sum(len(p) for p in self.frag["ord"]) + len(self.wait.get("ord", ())) + \
            sum(len(p) for p in self.pairs["r1"])

    def _late(self, what: str, ordinal: int) -> None:
        raise DatasetError(f"record {ordinal}: its {what}'s unclipped 5' position lies more than {self.margin} bases "
                           "before the records already decided (clipping longer than the window, or records not "
                           "coordinate-sorted); run markdup with a larger window")

    def _decide(self, cut: int) -> None:
        """Decide every group entirely below ``cut``."""
        self.cut = max(self.cut, cut)
        # -- pairs whose read 2 coordinate is below the cut ------------------------------------
        if self.pairs["r1"]:
            p = {k: _cat(v) for k, v in self.pairs.items()}
            done = (p["key2"] & _RC_MASK) < cut
            rest = ~done
            self.pairs = {k: ([v[rest]] if rest.any() else []) for k, v in p.items()}
            if done.any():
                q = {k: v[done] for k, v in p.items()}
                po = np.lexsort((q["r2"], q["r1"], q["loc"], q["key2"], q["key1"]))
                k1, k2 = q["key1"][po], q["key2"][po]
                newg = np.concatenate(([True], (k1[1:] != k1[:-1]) | (k2[1:] != k2[:-1])))
                keep = _first_max(newg, q["score"][po])
                self.m.READ_PAIR_OPTICAL_DUPLICATES += _optical_count(newg, keep, q["oo"][po], q["loc"][po],
                                                                   q["rg"][po])
                lost = po[keep == 0]
                if len(lost):
                    self.m.READ_PAIR_DUPLICATES += len(lost)
                    self.dups.append(q["r1"][lost])
                    self.dups.append(q["r2"][lost])
        # -- fragment groups below the cut --------------------------------------------------
        if self.frag["ord"]:
            f = {k: _cat(v) for k, v in self.frag.items()}
            done = f["rc"] < cut
            rest = ~done
            self.frag = {k: ([v[rest]] if rest.any() else []) for k, v in f.items()}
            if done.any():
                g = {k: v[done] for k, v in f.items()}
                fo = np.lexsort((g["ord"], g["loc"], g["small"], g["rc"]))
                rcs, strand = g["rc"][fo], g["small"][fo] >> 1
                newg = np.concatenate(([True], (rcs[1:] != rcs[:-1]) | (strand[1:] != strand[:-1])))
                gid = np.cumsum(newg) - 1
                paired = g["paired"][fo]
                has_pair = np.zeros(int(gid[-1]) + 1, dtype=bool)
                np.logical_or.at(has_pair, gid, paired)
                ords = g["ord"][fo]
                marked = [ords[~paired & has_pair[gid]]]
                sel = ~has_pair[gid]
                if sel.any():
                    sg = gid[sel]
                    newg2 = np.concatenate(([True], sg[1:] != sg[:-1]))
                    keep = _first_max(newg2, g["score"][fo][sel])
                    marked.append(ords[sel][keep == 0])
                for mk in marked:
                    if len(mk):
                        self.m.UNPAIRED_READ_DUPLICATES += len(mk)
                        self.dups.append(mk)

    def finish(self) -> tuple[np.ndarray, DuplicationMetrics]:
        """Decide what is left; the sorted duplicate ordinals and the metrics."""
        self._decide(1 << 62)
        self.wait = {}
        self.m.READ_PAIRS_EXAMINED = self.pairs_examined // 2
        self.m.finish()
        dups = np.sort(np.concatenate(self.dups)) if self.dups else np.zeros(0, np.int64)
        self.dups = []
        return dups, self.m


def _secondary_rows(columns: list[Any], n: int) -> np.ndarray:
    """Per row, how many of the (still-encoded) ``secondary<N>`` columns hold a record (absent: empty)."""
    out = np.zeros(n, dtype=np.int32)
    for raw in columns:
        out += (raw.lengths != 0)
    return out


def library_of(read_group: Any) -> str:
    """Picard's library of a read group: its ``LB``, else :data:`UNKNOWN_LIBRARY`."""
    return (read_group.get("LB") if isinstance(read_group, dict) else None) or UNKNOWN_LIBRARY


def chunk_ends(res: Any, qual: Any, meta: Any, secondary: Any) -> dict[str, Any]:
    """The ends of one chunk's records for a :class:`Decider` (``res``: decoded results; ``qual`` and
    ``meta``: the still-encoded quality and name records; ``secondary``: each row's present secondary
    records)."""
    f = res.fields
    flag = np.ascontiguousarray(f["flag"])
    pos = np.ascontiguousarray(f["position"])
    coord, score, hashes, loc = md_kernel.read_ends(flag, pos, res.cigars.offsets, res.cigars.data,
                                                    qual.offsets, qual.data, meta.offsets, meta.data)
    return {"flag": flag, "ref": np.ascontiguousarray(f["ref_index"]), "coord": coord, "pos": pos,
            "score": score, "hash": hashes, "loc": loc, "secondary": secondary}


class Libraries:
    """Picard's libraries: each record's is the ``LB`` of its read group (its ``RG`` tag in the ``tags``
    column, else the dataset's read group), ``Unknown Library`` where that read group has none or is not
    declared; duplicates are decided within a library only (one :class:`Decider` per library, fed that
    library's records with their ordinals). Metrics: one row per library of any read group (Picard's
    LibraryIdGenerator), by library name (Picard's sorted map).

    Each record's read group index, for optical duplicates (Picard's ``ReadEnds.readGroup``), is the
    position of its ``RG`` among the ``@RG`` lines export writes (the dataset's read group first, then
    the imported ones not equal to it): 0 without an ``RG`` tag, one past the last for an undeclared one."""

    def __init__(self, extra: dict[str, Any], margin: int | None, default: str | None = None) -> None:
        rg = extra.get("read_group")
        self.default = default or library_of(rg)
        self.by_id: dict[bytes, str] = {}
        for g in extra.get("read_groups") or []:
            if isinstance(g, dict) and g.get("ID"):
                self.by_id[str(g["ID"]).encode()] = library_of(g)
        if isinstance(rg, dict) and rg.get("ID") and default is None:
            self.by_id.setdefault(str(rg["ID"]).encode(), self.default)
        # the header's @RG order (persona.apps.export): the dataset's read group (ID: its name when not
        # given, which no RG tag of an imported record names), then the imported ones
        ids: list[str | None] = [str(rg["ID"]) if isinstance(rg, dict) and rg.get("ID") else None]
        for g in extra.get("read_groups") or []:
            if isinstance(g, dict) and g.get("ID") and str(g["ID"]) not in ids:
                ids.append(str(g["ID"]))
        self.group_index: dict[bytes, int] = {i.encode(): k for k, i in enumerate(ids) if i is not None}
        self.groups = len(ids)
        self.margin = margin
        # Picard has a metrics row for the library of every @RG of the header (export writes the
        # dataset's read group and the imported ones), records or not
        self._lock = threading.Lock()
        self.names: list[str] = [self.default]
        for name in self.by_id.values():
            self._index(name)
        self.deciders: dict[int, Decider] = {}

    @property
    def per_record(self) -> bool:
        """Whether records may name other libraries than the default, or other read groups than the
        dataset's (then the ``tags`` column is read)."""
        return len(set(self.by_id.values()) | {self.default}) > 1 or self.groups > 1

    def _index(self, name: str) -> int:
        with self._lock:  # ends are computed on several encode threads
            if name not in self.names:
                self.names.append(name)
            return self.names.index(name)

    def of_records(self, tags: Any, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Each record's library index and read group index (None: all the dataset's), from its
        ``RG:Z`` tag."""
        if tags is None or not self.per_record:
            return None, None
        hashes, starts, ends = md_kernel.aux_string(tags.offsets, np.ascontiguousarray(tags.data), b"RG")
        lib = np.zeros(n, dtype=np.int32)
        group = np.zeros(n, dtype=np.int32)
        uniq, first = np.unique(hashes, return_index=True)
        data = tags.data
        for h, i in zip(uniq, first):
            if starts[i] < 0:
                continue  # no RG tag: the dataset's read group
            rg_id = bytes(data[int(starts[i]):int(ends[i])])
            sel = hashes == h
            lib[sel] = self._index(self.by_id.get(rg_id, UNKNOWN_LIBRARY))
            group[sel] = self.group_index.get(rg_id, self.groups)
        return lib, group

    def decider(self, k: int) -> Decider:
        d = self.deciders.get(k)
        if d is None:
            d = self.deciders[k] = Decider(self.names[k], self.margin)
        return d

    def add(self, out: dict[str, Any], first: int) -> None:
        lib = out.pop("lib", None)
        if lib is None or not len(lib) or (lib == 0).all():
            self.decider(0).add(out, first)
            return
        ordinal = np.arange(first, first + len(lib), dtype=np.int64)
        for k in np.unique(lib):
            sel = lib == k
            sub = {key: (v[sel] if isinstance(v, np.ndarray) else v) for key, v in out.items()}
            sub["ord"] = ordinal[sel]
            self.decider(int(k)).add(sub, first)

    @property
    def records(self) -> int:
        return sum(d.records for d in self.deciders.values())

    @property
    def held_max(self) -> int:
        return sum(d.held_max for d in self.deciders.values())

    def finish(self) -> tuple[np.ndarray, list[DuplicationMetrics]]:
        dups, metrics = [], []
        for k in sorted(range(len(self.names)), key=lambda k: self.names[k]):  # by name, as Picard writes them
            d, m = self.decider(k).finish()
            dups.append(d)
            metrics.append(m)
        all_dups = np.sort(np.concatenate(dups)) if dups else np.zeros(0, np.int64)
        return all_dups, metrics


class MergeMarker:
    """Duplicate marking fused into a coordinate sort's merge (as bamsormadup and elPrep do): each
    output chunk's ends are computed where it is encoded (:meth:`ends`, any thread) and fed to one
    :class:`Decider` in output order (:meth:`add`); :meth:`finish` gives the duplicates' output
    ordinals and the metrics. ``flagged``: first ordinals of output chunks that already held a 0x400
    flag (to be cleared where the record is no duplicate)."""

    def __init__(self, extra: dict[str, Any], window: int, library: str | None = None) -> None:
        self.libraries = Libraries(extra, window if window > 0 else None, library)
        self.flagged: set[int] = set()
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[int, dict[str, Any]]] = {}
        self._next = 0

    def ends(self, res: Any, values: dict[str, Any]) -> dict[str, Any]:
        secondary = _secondary_rows([v for c, v in values.items() if is_secondary_column(c)], len(res))
        out = chunk_ends(res, values["qual"], values["metadata"], secondary)
        out["lib"], out["rg"] = self.libraries.of_records(values.get("tags"), len(res))
        return out

    def add(self, index: int, first: int, ends: dict[str, Any]) -> None:
        with self._lock:
            if (ends["flag"] & FLAG_DUPLICATE).any():
                self.flagged.add(first)
            self._pending[index] = (first, ends)
            while self._next in self._pending:
                f, e = self._pending.pop(self._next)
                self.libraries.add(e, f)
                self._next += 1

    def finish(self) -> tuple[np.ndarray, list[DuplicationMetrics]]:
        if self._pending:
            raise DatasetError(f"duplicate marking lost output chunks before {min(self._pending)}")
        return self.libraries.finish()


@dataclass
class MarkdupSummary(Summary):
    name: str = ""
    location: str = ""
    records: int = 0
    duplicates: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    metrics_file: str | None = None
    #: decided in a window over coordinate-sorted records (else over the whole dataset at the end)
    windowed: bool = False
    #: the most ends held at once (open groups and waiting mates)
    held_max: int = 0
    #: with remove: the records written to the new dataset
    kept: int = 0


class MarkdupJob(DatasetReadJob):
    """Duplicate marking: the read stage is :class:`DatasetReadJob`'s (lazy, block by block, on remote
    stores); ``ends`` decodes and computes each chunk's read-ends; ``decide`` feeds them in order."""

    kind: ClassVar[str] = "markdup"
    stages = (StagePlan("read", 1), StagePlan("ends", 2), StagePlan("decide", 1))
    request: MarkdupRequest

    def __init__(self, request: MarkdupRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        self.ds = Dataset.open(request.dataset, request.name)
        for c in (RESULTS, "qual", "metadata"):
            if c not in self.ds.columns:
                raise DatasetError(f"dataset {self.ds.name!r} has no {c!r} column: duplicate marking needs "
                                   "aligned reads with qualities and names", store=self.ds.store.url)
        self.threads = max(1, request.threads or runtime.threads)
        self.library = library_of(self.ds.manifest.extra.get("read_group"))
        self.txn: Transaction | None = None
        window = request.window if request.window is not None else DEFAULT_WINDOW
        self.windowed = self.ds.manifest.sort == "coordinate" and window > 0
        self.decider = Libraries(self.ds.manifest.extra, window if self.windowed else None)
        self.in_columns = (RESULTS, "qual", "metadata") + \
            (("tags",) if self.decider.per_record and "tags" in self.ds.columns else ())
        self.read_columns = self.in_columns
        self._order_lock = threading.Lock()
        self._pending: dict[int, Any] = {}
        self._next = 0

    def begin(self) -> None:
        if self.request.remove:
            from persona.storage import open_store

            r = self.request
            loc = r.output or self.ds.store.url
            self.out_store = self.runtime.store(loc) if "://" in loc else open_store(loc)
            same = self.out_store.url == self.ds.store.url
            self.out_name = r.out_name or (f"{self.ds.name}_dedup" if same else self.ds.name)
            if same and self.out_name == self.ds.name:
                raise DatasetError(f"removing duplicates of {self.ds.name!r} into itself: choose another name or "
                                   "location", store=self.out_store.url)
            self.txn = Transaction(self.out_store, self.out_name, app="markdup", new=True, overwrite=r.overwrite,
                                   attempt=self.attempt, request_id=self.request_id)
            self.txn.begin()
            return
        self.txn = self.ds.begin_columns(app="markdup", attempt=self.attempt, request_id=self.request_id)

    @property
    def secondary_columns(self) -> list[str]:
        return [c for c in self.ds.columns if is_secondary_column(c)]

    def stage_ends(self, w: Work) -> Work:
        i = w.desc.chunk
        res = self.ds.decode_file(i, RESULTS, w.data[RESULTS])
        qual = self.ds.decode_file(i, "qual", w.data["qual"])
        meta = self.ds.decode_file(i, "metadata", w.data["metadata"])
        tags = self.ds.decode_file(i, "tags", w.data["tags"]) if "tags" in w.data else None
        # present rows: non-empty records (no decode needed)
        secondary = _secondary_rows([self.ds.read_raw(i, c)[1] for c in self.secondary_columns], len(res))
        w.data = None
        w.out = chunk_ends(res, qual, meta, secondary)
        w.out["lib"], w.out["rg"] = self.decider.of_records(tags, len(res))
        w.n = len(w.out["flag"])
        return w

    def stage_decide(self, w: Work) -> Work:
        """Feed the decider the chunks' ends in dataset order (one replica; early chunks wait here)."""
        with self._order_lock:
            self._pending[w.desc.chunk] = w.out
            w.out = None
            while self._next in self._pending:
                out = self._pending.pop(self._next)
                self.decider.add(out, self.ds.chunks[self._next].first)
                self._next += 1
        self.advance(w.n)
        return w

    # -- pass 2 and commit ----------------------------------------------------------------
    def _rewrite(self, chunk: int, mask: np.ndarray) -> int:
        assert self.txn is not None
        res = self.ds.read_column(chunk, RESULTS)
        f = res.fields
        old = f["flag"].copy()
        f["flag"] = np.where(mask, old | FLAG_DUPLICATE, old & ~np.uint32(FLAG_DUPLICATE))
        self.txn.put_column_file(chunk, RESULTS, self.ds.encode_column_file(chunk, RESULTS, res))
        return int(mask.sum())

    def _write_without(self, dups: np.ndarray) -> Any:
        """REMOVE_DUPLICATES: every chunk of the input without its duplicates (each becomes one output chunk,
        empty ones none), the kept records' 0x400 flags cleared, as a new dataset; returns its manifest."""
        from persona._native import sort as sort_kernel
        from persona.agd.chunk import encode_chunk
        from persona.agd.columns import encode_column
        from persona.agd.ragged import RaggedArray

        assert self.txn is not None
        txn = self.txn
        firsts = []
        at = 0
        keeps = []
        for ref in self.ds.chunks:
            lo, hi = np.searchsorted(dups, [ref.first, ref.last])
            keep = np.ones(ref.num_records, dtype=bool)
            keep[dups[lo:hi] - ref.first] = False
            keeps.append(np.flatnonzero(keep).astype(np.int64))
            firsts.append(at)
            at += len(keeps[-1])

        def write(i: int) -> int:
            idx = keeps[i]
            if not len(idx):
                return 0
            files = {}
            for c in self.ds.columns:
                h, raw = self.ds.read_raw(i, c)
                if c == RESULTS:
                    res = decode_column(RESULTS, raw, key=self.ds.chunk_key(i, c))
                    res.fields["flag"] &= ~np.uint32(FLAG_DUPLICATE)
                    raw = encode_column(RESULTS, res)
                o, d = sort_kernel.ragged_take(raw.offsets, np.ascontiguousarray(raw.data), idx)
                files[c] = encode_chunk(RaggedArray(o, d, validate=False), record_type=h.record_type,
                                        first_ordinal=firsts[i], name=self.out_name, compression=self.ds.compression)
            txn.write_encoded(firsts[i], len(idx), files)
            return len(idx)

        with ThreadPoolExecutor(self.threads, thread_name_prefix=f"markdup-{self.request_id[:6]}") as pool:
            kept = sum(pool.map(write, range(len(self.ds.chunks))))
        m = self.ds.manifest
        entry = self.provenance(inputs=[{"dataset": self.ds.store.url, "name": self.ds.name,
                                         "generation": m.generation}], duplicates=int(len(dups)), removed=True)
        # the chunks changed: their coordinate ranges no longer hold
        extra = {k: v for k, v in m.extra.items() if k not in ("coordinate_ranges", "extras_ranges")}
        return txn.commit(list(self.ds.columns), sort=m.sort, reference=m.reference,
                          reference_contigs=list(m.reference_contigs), paired=False if m.paired else m.paired,
                          extra=extra, provenance=[*m.provenance, entry]), kept

    def commit(self, outputs: list[Any]) -> MarkdupSummary:
        assert self.txn is not None
        dups, metrics = self.decider.finish()
        if self.request.remove:
            manifest, kept = self._write_without(dups)
            if self.request.metrics:
                write_metrics(self.request.metrics, metrics, command=f"persona markdup --remove "
                                                                       f"{self.request.dataset}")
            return MarkdupSummary(**self.summary_base(), name=manifest.name, location=self.out_store.url,
                                  records=self.decider.records, duplicates=len(dups),
                                  metrics=[m.__dict__.copy() for m in metrics], metrics_file=self.request.metrics,
                                  windowed=self.windowed, held_max=self.decider.held_max, kept=kept)

        def rewrite(i: int) -> int:
            ref = self.ds.chunks[i]
            lo, hi = np.searchsorted(dups, [ref.first, ref.last])
            mask = np.zeros(ref.num_records, dtype=bool)
            mask[dups[lo:hi] - ref.first] = True
            return self._rewrite(i, mask)

        with ThreadPoolExecutor(self.threads, thread_name_prefix=f"markdup-{self.request_id[:6]}") as pool:
            counts = list(pool.map(rewrite, range(len(self.ds.chunks))))
        entry = self.provenance(inputs=[{"dataset": self.ds.store.url, "name": self.ds.name,
                                         "generation": self.ds.manifest.generation}],
                                duplicates=int(sum(counts)))
        manifest = self.txn.commit([RESULTS], provenance=entry)
        self.ds.manifest = manifest
        if self.request.metrics:
            write_metrics(self.request.metrics, metrics, command=f"persona markdup {self.request.dataset}")
        return MarkdupSummary(**self.summary_base(), name=self.ds.name, location=self.ds.store.url,
                              records=self.decider.records, duplicates=len(dups),
                              metrics=[m.__dict__.copy() for m in metrics], metrics_file=self.request.metrics,
                              windowed=self.windowed, held_max=self.decider.held_max)

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
