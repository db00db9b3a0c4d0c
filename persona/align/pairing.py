"""SAM semantics of alignment records: flags, mate fields, TLEN, proper pairs.

Backends reduce each read's hits to :data:`Hit` tuples; this module turns them
into rows of :data:`~persona.agd.records.ALIGNMENT_DTYPE` following the SAM
specification and, where the specification leaves a choice, minimap2's SAM
writer:

- **Primary choice.** The primary of a read is its first hit marked primary by
  the backend. For a pair whose reads have several primary-chain hits (a
  supplementary alignment exists) we redo minimap2's pairing choice
  (``mm_pair``): among combinations in proper orientation and distance whose
  alignment scores sum to at least ``best(read 1) + best(read 2) - pe_bonus``,
  the best-scoring one is the primary pair; without one, the first primary
  hits stay and the pair is not proper. Scores are estimated from the match
  and mismatch counts (mappy does not report minimap2's DP score), so a pair
  at the very edge of the threshold may be decided differently.
- **Secondary / supplementary.** Other hits keep the backend's order; a hit on
  a primary chain that is not the primary is supplementary (0x800), others are
  secondary (0x100). All keep soft clips (like ``minimap2 -Y``).
- **Unmapped read with a mapped mate** is placed at its mate (RNAME/POS of the
  mate, SAM "recommended practice"), flag 0x4, MAPQ 0, no CIGAR; its mate gets
  0x8 and its own position as mate position.
- **Proper pair (0x2)** is set on both primaries when they lie on the same
  contig in forward/reverse orientation with the forward read's start not after
  the reverse read's start, and the reverse read starts at most ``max_gap``
  bases after the forward read ends. This is minimap2's ``mm_pair`` rule with
  ``max_gap = max(max_frag_len - (len1 + len2), max_gap_opt)`` (sr: 800, 100).
- **TLEN** is measured from this read's 5' end to its mate's 5' end (the
  last aligned base of a reverse-strand hit), plus one base, signed: the
  definition of minimap2's SAM writer and of Picard's ``computeInsertSize``.
  For forward/reverse pairs where neither read overhangs its mate it equals
  the SAM specification's leftmost-to-rightmost span; it is 0 across contigs
  or when a mate is unmapped. Secondary records use it against the mate's primary.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from persona.agd.ragged import RaggedArray
from persona.agd.records import (
    ABSENT_ROW,
    ALIGNMENT_DTYPE,
    FLAG_MATE_REVERSE,
    FLAG_MATE_UNMAPPED,
    FLAG_PAIRED,
    FLAG_PROPER_PAIR,
    FLAG_READ1,
    FLAG_READ2,
    FLAG_REVERSE,
    FLAG_SECONDARY,
    FLAG_SUPPLEMENTARY,
    FLAG_UNMAPPED,
    Alignments,
)

#: One alignment of one read: (ref_index, start, end, reverse, mapq, cigar, on_primary_chain, score).
#: ``start``/``end`` are 0-based half-open reference coordinates; ``cigar`` includes soft clips;
#: ``score`` is the (estimated) alignment score, used only to choose between supplementary hits.
Hit = tuple[int, int, int, bool, int, bytes, bool, int]
#: minimap2's bonus for a proper pair (mm_mapopt_t::pe_bonus, the same for every preset)
PE_BONUS = 33

_UNMAPPED_ROW = (FLAG_UNMAPPED, 0, -1, -1, -1, -1, 0)


class RecordSink:
    """Rows being gathered for one block: primary column + ``n_secondary`` columns."""

    __slots__ = ("cigars", "n_secondary", "rows", "sec_cigars", "sec_present", "sec_rows")

    def __init__(self, n_secondary: int) -> None:
        self.n_secondary = n_secondary
        self.rows: list[tuple[int, ...]] = []
        self.cigars: list[bytes] = []
        self.sec_rows: list[list[tuple[int, ...]]] = [[] for _ in range(n_secondary)]
        self.sec_cigars: list[list[bytes]] = [[] for _ in range(n_secondary)]
        self.sec_present: list[list[bool]] = [[] for _ in range(n_secondary)]

    def add_secondary(self, i: int, row: tuple[int, ...], cigar: bytes) -> None:
        self.sec_rows[i].append(row)
        self.sec_cigars[i].append(cigar)
        self.sec_present[i].append(True)

    def add_extras(self, extras: list[tuple[tuple[int, ...], bytes]]) -> None:
        """The extra records (rows, CIGARs) of the read whose primary row was added last: one per
        column, absent rows in the others; columns are added when a read has more than any before."""
        n_read = len(self.rows) - 1
        while len(self.sec_rows) < len(extras):
            self.sec_rows.append([ABSENT_ROW] * n_read)
            self.sec_cigars.append([b""] * n_read)
            self.sec_present.append([False] * n_read)
        for i in range(len(self.sec_rows)):
            if i < len(extras):
                self.add_secondary(i, *extras[i])
            else:
                self.add_absent_secondary(i)

    def add_absent_secondary(self, i: int) -> None:
        """The read has no ``i``-th secondary alignment: an absent row (see ``Alignments.present``)."""
        self.sec_rows[i].append(ABSENT_ROW)
        self.sec_cigars[i].append(b"")
        self.sec_present[i].append(False)

    def to_alignments(self) -> tuple[Alignments, list[Alignments]]:
        return (_build(self.rows, self.cigars),
                [_build(r, c, np.array(p, dtype=bool))
                 for r, c, p in zip(self.sec_rows, self.sec_cigars, self.sec_present)])


def _build(rows: list[tuple[int, ...]], cigars: list[bytes], present: np.ndarray | None = None) -> Alignments:
    fields = np.array(rows, dtype=ALIGNMENT_DTYPE) if rows else np.zeros(0, ALIGNMENT_DTYPE)
    offsets = np.zeros(len(cigars) + 1, dtype=np.uint64)
    np.cumsum(np.fromiter(map(len, cigars), dtype=np.uint64, count=len(cigars)), out=offsets[1:])
    data = np.frombuffer(b"".join(cigars), dtype=np.uint8)
    return Alignments(fields, RaggedArray(offsets, data, validate=False), present)


def is_proper(a: Hit, b: Hit, max_gap: int) -> bool:
    """minimap2's proper-pair rule for two mates' hits (see the module docstring)."""
    if a[0] != b[0] or a[3] == b[3]:
        return False
    fwd, rev = (b, a) if a[3] else (a, b)
    return fwd[1] <= rev[1] and rev[1] - fwd[2] <= max_gap


def template_length(h: Hit, mate: Hit) -> int:
    """TLEN of ``h`` against ``mate``: 5' end to 5' end, as minimap2 and Picard compute it.

    0 unless both are on the same contig; the 5' end of a reverse hit is its last base.
    """
    if h[0] != mate[0]:
        return 0
    this5 = h[2] - 1 if h[3] else h[1]
    next5 = mate[2] - 1 if mate[3] else mate[1]
    t = next5 - this5
    return t + 1 if t > 0 else (t - 1 if t < 0 else 0)


def _secondaries(hits: list[Hit], primary: Hit | None, n_secondary: int) -> list[Hit]:
    """A read's extra hits: every supplementary (primary-chain) one plus at most ``n_secondary``
    secondary ones, in the backend's order."""
    out = []
    n = 0
    for h in hits:
        if h is primary:
            continue
        if not h[6]:
            if n >= n_secondary:
                continue
            n += 1
        out.append(h)
    return out


def _first_primary(hits: list[Hit]) -> Hit | None:
    for h in hits:
        if h[6]:
            return h
    return hits[0] if hits else None


def add_single(sink: RecordSink, hits: list[Hit]) -> None:
    """Rows of one single-end read."""
    p = _first_primary(hits)
    if p is None:
        sink.rows.append(_UNMAPPED_ROW)
        sink.cigars.append(b"")
    else:
        sink.rows.append((FLAG_REVERSE if p[3] else 0, p[4], p[0], p[1], -1, -1, 0))
        sink.cigars.append(p[5])
    rest = _secondaries(hits, p, sink.n_secondary)
    sink.add_extras([(((FLAG_SUPPLEMENTARY if h[6] else FLAG_SECONDARY) | (FLAG_REVERSE if h[3] else 0),
                       h[4], h[0], h[1], -1, -1, 0), h[5]) for h in rest])


def choose_primaries(hits1: list[Hit], hits2: list[Hit], max_gap: int,
                     pe_bonus: int = PE_BONUS) -> tuple[Hit | None, Hit | None, bool]:
    """The primary hit of each mate and whether they form a proper pair (module docstring)."""
    c1 = [h for h in hits1 if h[6]] or hits1[:1]
    c2 = [h for h in hits2 if h[6]] or hits2[:1]
    p1 = c1[0] if c1 else None
    p2 = c2[0] if c2 else None
    if p1 is None or p2 is None:
        return p1, p2, False
    if len(c1) == 1 and len(c2) == 1:
        return p1, p2, is_proper(p1, p2, max_gap)
    threshold = max(h[7] for h in hits1) + max(h[7] for h in hits2) - pe_bonus
    best: tuple[Hit, Hit] | None = None
    best_score = threshold - 1
    for a in c1:
        for b in c2:
            score = a[7] + b[7]
            if score > best_score and is_proper(a, b, max_gap):
                best, best_score = (a, b), score
    if best is None:
        return p1, p2, False
    return best[0], best[1], True


def _mate_bits(mate: Hit | None) -> int:
    if mate is None:
        return FLAG_MATE_UNMAPPED
    return FLAG_MATE_REVERSE if mate[3] else 0


def add_pair(sink: RecordSink, hits1: list[Hit], hits2: list[Hit], max_gap: int) -> None:
    """Rows of one pair (read 1 then read 2)."""
    if len(hits1) == 1 and len(hits2) == 1 and not sink.sec_rows:
        _add_simple_pair(sink, hits1[0], hits2[0], max_gap)
        return
    add_chosen_pair(sink, hits1, hits2, choose_primaries(hits1, hits2, max_gap))


def add_chosen_pair(sink: RecordSink, hits1: Sequence[Hit], hits2: Sequence[Hit],
                    choice: tuple[Hit | None, Hit | None, bool]) -> None:
    """Rows of one pair whose primaries and proper flag are ``choice`` (the mappy backend makes its
    own choice, then builds the same rows)."""
    p1, p2, proper = choice
    for k, (s, m, hits) in enumerate(((p1, p2, hits1), (p2, p1, hits2))):
        base = FLAG_PAIRED | (FLAG_READ1 if k == 0 else FLAG_READ2) | _mate_bits(m)
        if s is None:
            if m is None:
                sink.rows.append((base | FLAG_UNMAPPED, 0, -1, -1, -1, -1, 0))
            else:  # placed at the mapped mate
                sink.rows.append((base | FLAG_UNMAPPED, 0, m[0], m[1], m[0], m[1], 0))
            sink.cigars.append(b"")
        else:
            flag = base | (FLAG_REVERSE if s[3] else 0) | (FLAG_PROPER_PAIR if proper else 0)
            if m is None:
                sink.rows.append((flag, s[4], s[0], s[1], s[0], s[1], 0))
            else:
                sink.rows.append((flag, s[4], s[0], s[1], m[0], m[1], template_length(s, m)))
            sink.cigars.append(s[5])
        add_extras(sink, base, _secondaries(hits, s, sink.n_secondary), m)


def add_extras(sink: RecordSink, base: int, rest: list[Hit], m: Hit | None) -> None:
    """The extra records of one mate (flag bits ``base``; mate primary ``m``)."""
    extras = []
    for h in rest:
        flag = base | (FLAG_SUPPLEMENTARY if h[6] else FLAG_SECONDARY) | (FLAG_REVERSE if h[3] else 0)
        if m is None:
            row = (flag, h[4], h[0], h[1], h[0], h[1], 0)
        else:
            row = (flag, h[4], h[0], h[1], m[0], m[1], template_length(h, m))
        extras.append((row, h[5]))
    sink.add_extras(extras)


def _add_simple_pair(sink: RecordSink, a: Hit, b: Hit, max_gap: int) -> None:
    """:func:`add_pair` for the common case (one hit per mate, no secondary columns), inlined.

    Must give exactly what the general path gives; the tests compare both.
    """
    ra, rb = a[3], b[3]
    flag_a = 0x41 | (0x10 if ra else 0) | (0x20 if rb else 0)
    flag_b = 0x81 | (0x10 if rb else 0) | (0x20 if ra else 0)
    if a[0] == b[0]:
        if ra != rb:
            fwd, rev = (b, a) if ra else (a, b)
            if fwd[1] <= rev[1] and rev[1] - fwd[2] <= max_gap:
                flag_a |= 0x2
                flag_b |= 0x2
        t = (b[2] - 1 if rb else b[1]) - (a[2] - 1 if ra else a[1])
        tlen = t + 1 if t > 0 else (t - 1 if t < 0 else 0)
    else:
        tlen = 0
    sink.rows.append((flag_a, a[4], a[0], a[1], b[0], b[1], tlen))
    sink.rows.append((flag_b, b[4], b[0], b[1], a[0], a[1], -tlen))
    sink.cigars.append(a[5])
    sink.cigars.append(b[5])
