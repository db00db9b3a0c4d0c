"""The ``mappy`` backend: minimap2 through mappy (the minimap2 Python binding).

One ``mappy.Aligner`` (index + mapping options) serves every thread; each
executor thread owns a ``mappy.ThreadBuffer`` (minimap2's per-thread scratch
memory), kept in thread-local storage. Paired reads go through
``Aligner.map(seq, seq2)``, i.e. minimap2's fragment mode with its pairing
step (``mm_pair``), exactly as ``minimap2 -x sr r1.fq r2.fq`` does.

What we rebuild from mappy's hits (mappy does not print SAM):

- soft clips: mappy's CIGAR covers the aligned part only; clips come from
  ``q_st``/``q_en``. For read 2 of a pair mappy reports ``q_st``/``q_en`` on the
  reverse complement it maps (it flips the strand back but not the query
  coordinates), so we mirror them to the read's own orientation;
- the SAM primary: for a single read its first primary-chain hit (minimap2's
  ``mm_set_sam_pri``); for a pair the pair minimap2's ``mm_pair`` chose, which
  may be a supplementary or a (then lifted) secondary hit rather than the first
  primary. mappy reports neither the choice (``sam_pri``, ``proper_frag``) nor
  the DP scores it is made on, so :func:`choose_pair` redoes it: each hit's
  ``dp_max`` is recomputed exactly from its CIGAR, the read and the reference
  (``mm_update_extra``; short-read presets), and ``mm_pair``'s search is run
  over every hit of both mates. Ties in score, which minimap2 breaks with hashes
  mappy does not report, are decided by what mappy does report: a chosen hit
  is a primary-chain hit afterwards (a lifted secondary becomes one);
- supplementary/secondary flags, mate fields and TLEN:
  :mod:`persona.align.pairing`.

Read names are passed to minimap2 (``options.use_names``), which hashes them
to break ties between equal hits, so placements match the minimap2 binary's.
Reads shorter than the index's k-mer length cannot be seeded and come back
unmapped. Qualities are not used by minimap2.

The GIL: mappy 2.31's ``Aligner.map`` calls minimap2 without releasing the
GIL (its generated C has no ``Py_BEGIN_ALLOW_THREADS`` around ``mm_map_aux``;
measured: 5 kb reads, map-ont preset, 1 thread 850 reads/s, 2 threads 890).
So the executor's threads serialize on mapping, and our per-hit Python work
shares the same core. The ``minimap2`` backend (:mod:`persona.align.minimap2`)
maps whole work items in C with the GIL released; this backend stays for
installations without the compiled kernel and as the tests' second opinion.
It reads and writes the same ``.mmi`` files (same minimap2 version).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.align.base import (
    Aligner,
    AlignerOptions,
    AlignResult,
)
from persona.align.minimap2 import (  # noqa: F401 - INDEX_FAMILY/INDEX_SUFFIX: this backend's contract
    CIGAR_OPS,
    INDEX_FAMILY,
    INDEX_SUFFIX,
    PRESET_PAIRING,
    PRESET_SCORING,
    PRESETS,
    check_options,
)
from persona.agd.records import FLAG_MATE_REVERSE, FLAG_MATE_UNMAPPED
from persona.align.pairing import PE_BONUS, Hit, RecordSink, add_chosen_pair, add_pair, add_single
from persona.errors import AlignerError, ReferenceNotFoundError

try:
    import mappy
except ImportError as e:  # pragma: no cover - mappy is a hard dependency
    raise ImportError("the minimap2 backend needs mappy: pip install mappy") from e

#: minimap2's default scoring (mm_mapopt_init: a, b, q, e, sc_ambi) and the presets' overrides (options.c)
_DEFAULT_SCORING = (2, 4, 4, 2, 1)
_PRESET_GAP = {"sr": (12, 2), "short": (12, 2), "map-hifi": (6, 2), "asm5": (39, 3), "asm10": (16, 2),
               "asm20": (6, 2)}
#: presets with minimap2's MM_F_SR flag: linear gap cost in dp_max, no dp_max re-ranking
_SR_PRESETS = frozenset({"sr", "short"})
# nt4 codes as minimap2's seq_nt4_table (A C G T = 0..3, U = T, anything else 4)
_NT4 = bytes(0 if c in b"Aa" else 1 if c in b"Cc" else 2 if c in b"Gg" else 3 if c in b"TtUu" else 4
             for c in range(256))
_COMP = bytes.maketrans(b"ACGTNacgtn", b"TGCANtgcan")


def build_index(fasta: str | Path, out_path: str | Path, preset: str = "sr") -> None:
    """Build minimap2's index (.mmi) of ``fasta`` for ``preset`` into ``out_path``."""
    if preset not in PRESETS:
        raise AlignerError(f"unknown minimap2 preset {preset!r}")
    idx = mappy.Aligner(str(fasta), preset=preset, fn_idx_out=str(out_path), n_threads=3)
    if not idx:
        raise AlignerError(f"minimap2 could not index {fasta}", key=str(fasta))


class MappyIndex(mappy.Aligner):
    """A loaded index that remembers its file (the tie fallback of :class:`MappyAligner` loads the
    same file into the built-in kernel)."""

    path: str = ""


def load_index(path: str | Path, options: AlignerOptions) -> mappy.Aligner:
    """Load an .mmi with the mapping options of ``options`` (preset + pass-through keywords)."""
    extra = check_options(options)
    try:
        idx = MappyIndex(fn_idx_in=str(path), preset=options.preset, **extra)
        idx.path = str(path)
    except TypeError as e:
        raise AlignerError(f"bad minimap2 option: {e}") from None
    if not idx:
        raise ReferenceNotFoundError(f"minimap2 could not load the index {path}", key=str(path))
    return idx


def dp_max(cigar: Sequence[Sequence[int]], query: bytes, ref: bytes, scoring: tuple[int, int, int, int, int],
           log_gap: bool) -> int:
    """minimap2's ``dp_max`` of one alignment (align.c ``mm_update_extra``): the best prefix score
    walking the CIGAR, a run score floored at 0, matches +a, mismatches -b, pairs with an
    ambiguous base -sc_ambi, each gap -(q + e) (``log_gap``: -(q + e*log2(1 + len))).
    ``query`` and ``ref`` are the aligned bases in reference orientation (soft clips removed)."""
    a, b, q, e, ambi = scoring
    s = 0.0
    best = 0.0
    qo = to = 0
    qn = query.translate(_NT4)
    tn = ref.translate(_NT4)
    for n, op in cigar:
        if op == 0 or op == 7 or op == 8:  # M (= X only with --eqx)
            for cq, ct in zip(qn[qo : qo + n], tn[to : to + n]):
                if cq > 3 or ct > 3:
                    s -= ambi
                elif cq == ct:
                    s += a
                else:
                    s -= b
                if s < 0:
                    s = 0.0
                elif s > best:
                    best = s
            qo += n
            to += n
        elif op == 1 or op == 2:  # I, D
            s -= q + e * math.log2(1.0 + n) if log_gap else q + e
            if s < 0:
                s = 0.0
            if op == 1:
                qo += n
            else:
                to += n
        elif op == 3:  # N
            to += n
    return int(best + 0.499)


def _mm_pair_search(hits: Sequence[Sequence[Hit]], frame_rev: Sequence[Sequence[bool]], max_gap_ref: int,
                    pe_bonus: int = PE_BONUS) -> tuple[int, list[tuple[int, int]]]:
    """minimap2's pairing search (pe.c ``mm_pair``) over both mates' hits, ``Hit[7]`` being dp_max.

    ``frame_rev`` is each hit's strand as minimap2 sees it while pairing (read 2 is mapped
    reverse-complemented). Returns the best score (sum of dp_max, -1 when no pair qualifies)
    and every (index in mate 1's hits, index in mate 2's hits) reaching it: minimap2 breaks such
    ties with hit hashes that mappy does not report.
    """
    entries = []
    dp_thres = 0
    for s in (0, 1):
        best = 0
        for i, h in enumerate(hits[s]):
            rev = frame_rev[s][i]
            entries.append(((h[0] << 32) | (h[1] << 1) | (s ^ rev), s, rev, i, h))
            best = max(best, h[7])
        dp_thres += best
    dp_thres = max(0, dp_thres - pe_bonus)
    entries.sort(key=lambda t: t[0])  # a stable sort, like ksort's LSD radix sort
    best_score = -1
    best: list[tuple[int, int]] = []
    last = [-1, -1]
    for i, (key, s_i, rev_i, idx_i, r) in enumerate(entries):
        if not key & 1:  # forward read 1 or reverse read 2: a left end
            last[rev_i] = i
            continue
        if last[rev_i] < 0:
            continue
        q = entries[last[rev_i]][4]
        if r[0] != q[0] or r[1] - q[2] > max_gap_ref:
            continue
        for j in range(last[rev_i], -1, -1):
            _, s_j, rev_j, idx_j, q = entries[j]
            if rev_j != rev_i or s_j == s_i:
                continue
            if r[0] != q[0] or r[1] - q[2] > max_gap_ref:
                break
            score = r[7] + q[7]
            if score < dp_thres:
                continue
            pair = (idx_j, idx_i) if s_j == 0 else (idx_i, idx_j)
            if score > best_score:
                best_score, best = score, [pair]
            elif score == best_score:
                best.append(pair)
    return best_score, best


def choose_pair(hits1: Sequence[Hit], hits2: Sequence[Hit], max_gap_ref: int,
                pe_bonus: int = PE_BONUS) -> tuple[Hit | None, Hit | None, bool]:
    """:func:`choose_pair_tied` without the tie flag."""
    return choose_pair_tied(hits1, hits2, max_gap_ref, pe_bonus)[:3]  # type: ignore[return-value]


def choose_pair_tied(hits1: Sequence[Hit], hits2: Sequence[Hit], max_gap_ref: int,
                     pe_bonus: int = PE_BONUS) -> tuple[Hit | None, Hit | None, bool, bool]:
    """The SAM primary of each mate and whether they are a proper pair, as minimap2 decides
    (pe.c ``mm_pair`` after hit.c ``mm_set_sam_pri``), from mappy's hits of one pair as
    :data:`Hit` tuples in mappy's order (final strands; ``Hit[6]`` is mappy's ``is_primary``
    after pairing, ``Hit[7]`` the hit's dp_max, see :func:`dp_max`).

    Without a qualifying pair each mate's primary is its first primary-chain hit and the pair is
    not proper. Otherwise the best-scoring pair is the primary pair and proper; among equal
    scores, only a pair whose hits are both primary-chain hits can have been chosen (minimap2
    lifts a chosen secondary to primary). If several such pairs remain, minimap2 decided with
    the sum of the hits' hashes, which mappy does not report: the pair of hits earliest in
    mappy's order is taken (within one mate, equal scores are ordered by descending hash, so it
    is minimap2's choice unless that 32-bit sum wrapped), and the last value is True.
    """
    p1 = next((h for h in hits1 if h[6]), hits1[0] if hits1 else None)
    p2 = next((h for h in hits2 if h[6]), hits2[0] if hits2 else None)
    if p1 is None or p2 is None:
        return p1, p2, False, False
    # read 2 is paired on its reverse complement: its strand is flipped while pairing
    frame = ([h[3] for h in hits1], [not h[3] for h in hits2])
    score, tied = _mm_pair_search((hits1, hits2), frame, max_gap_ref, pe_bonus)
    if score < 0 or not tied:
        return p1, p2, False, False
    if len(tied) > 1:
        tied = [t for t in tied if hits1[t[0]][6] and hits2[t[1]][6]] or tied
    i, j = min(tied)
    return hits1[i], hits2[j], True, len(tied) > 1


def _mate_bits(mate: Hit | None) -> int:
    if mate is None:
        return FLAG_MATE_UNMAPPED
    return FLAG_MATE_REVERSE if mate[3] else 0


class MappyAligner(Aligner):
    """:class:`~persona.align.base.Aligner` over a loaded ``mappy.Aligner``."""

    name = "mappy"
    uses_quals = False  # minimap2 ignores base qualities

    def __init__(self, index: mappy.Aligner, contigs: Sequence[Contig], options: AlignerOptions) -> None:
        super().__init__(contigs, options)
        check_options(options)
        names = list(index.seq_names)
        if names != [c.name for c in self.contigs]:
            raise ReferenceNotFoundError(
                "minimap2 index contigs do not match the reference's contig table "
                f"({len(names)} vs {len(self.contigs)} contigs)")
        self._index = index
        self._rid: Mapping[str, int] = {c.name: c.index for c in self.contigs}
        frag_len, gap = PRESET_PAIRING.get(options.preset, (0, 5000))
        self._max_frag_len = int(options.extra.get("max_frag_len", frag_len))
        self._max_gap = gap
        scoring = options.extra.get("scoring")
        self._match, self._mismatch = (scoring[0], scoring[1]) if scoring else PRESET_SCORING.get(options.preset, (2, 4))
        # (a, b, q, e, sc_ambi) as minimap2 scores dp_max (options.c; "scoring" overrides as in mm2.pyx)
        q, e = _PRESET_GAP.get(options.preset, _DEFAULT_SCORING[2:4])
        ambi = _DEFAULT_SCORING[4]
        if scoring:
            q, e = int(scoring[2]), int(scoring[3])
            if len(scoring) >= 7:
                ambi = int(scoring[6])
        self._dp_scoring = (int(self._match), int(self._mismatch), q, e, abs(ambi))
        self._log_gap = options.preset not in _SR_PRESETS
        self._local = threading.local()
        self._native: Aligner | None = None
        self._native_lock = threading.Lock()

    def with_options(self, options: AlignerOptions) -> MappyAligner:
        if options.preset != self.options.preset or dict(options.extra) != dict(self.options.extra):
            raise AlignerError("preset and minimap2 options are fixed when the index is loaded")
        return MappyAligner(self._index, self.contigs, options)

    # -- per-thread scratch -----------------------------------------------------
    def _buffer(self) -> mappy.ThreadBuffer:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = mappy.ThreadBuffer()
        return buf

    def _hits(self, raw: Any, qlen: int, mirror: bool) -> list[Hit]:
        """mappy hits -> :data:`Hit` tuples with soft-clipped CIGARs (see module docstring)."""
        out: list[Hit] = []
        for h in raw:
            out.append(self._hit(h, qlen, mirror))
        return out

    def _hit(self, h: Any, qlen: int, mirror: bool) -> Hit:
        q_st, q_en = h.q_st, h.q_en
        qs, qe = (qlen - q_en, qlen - q_st) if mirror else (q_st, q_en)
        rev = h.strand < 0
        left, right = (qlen - qe, qs) if rev else (qs, qlen - qe)
        cigar = h.cigar
        if len(cigar) == 1:  # the common case: one M run
            n, op = cigar[0]
            cig = f"{n}{CIGAR_OPS[op]}"
        else:
            cig = "".join([f"{n}{CIGAR_OPS[op]}" for n, op in cigar])
        if left:
            cig = f"{left}S{cig}"
        if right:
            cig = f"{cig}{right}S"
        # score estimate: minimap2's match score a per matching base, mismatch (and gap base) penalty b
        mlen = h.mlen
        score = self._match * mlen - self._mismatch * (h.blen - mlen)
        return (self._rid[h.ctg], h.r_st, h.r_en, rev, h.mapq, cig.encode(), h.is_primary, score)

    def _hit_dp(self, h: Any, read: bytes, mirror: bool) -> Hit:
        """A :data:`Hit` whose score (``Hit[7]``) is minimap2's dp_max, recomputed from the CIGAR,
        the read and the reference (for :func:`choose_pair`)."""
        qlen = len(read)
        q_st, q_en = h.q_st, h.q_en
        qs, qe = (qlen - q_en, qlen - q_st) if mirror else (q_st, q_en)
        rev = h.strand < 0
        left, right = (qlen - qe, qs) if rev else (qs, qlen - qe)
        cigar = h.cigar
        cig = "".join([f"{n}{CIGAR_OPS[op]}" for n, op in cigar])
        if left:
            cig = f"{left}S{cig}"
        if right:
            cig = f"{cig}{right}S"
        oriented = read[::-1].translate(_COMP) if rev else read
        ref = self._index.seq(h.ctg, h.r_st, h.r_en) or ""
        dp = dp_max(cigar, oriented[left : qlen - right], ref.encode(), self._dp_scoring, self._log_gap)
        return (self._rid[h.ctg], h.r_st, h.r_en, rev, h.mapq, cig.encode(), h.is_primary, dp)

    @staticmethod
    def _names(names: RaggedArray | None, n: int, step: int) -> list[bytes | None]:
        """Per read (pair) the name minimap2 hashes: up to the first whitespace; None if absent."""
        if names is None:
            return [None] * n
        data = names.data.tobytes()
        offs = names.offsets.tolist()
        out: list[bytes | None] = []
        for i in range(0, n * step, step):
            name = data[offs[i] : offs[i + 1]]
            if b" " in name or b"\t" in name:
                name = name.split(None, 1)[0]
            out.append(name or None)
        return out

    def _tie_breaker(self) -> Aligner | None:
        """The built-in minimap2 kernel on the same index file, loaded on the first tie.

        Between candidate pairs of equal score minimap2 chooses by a hash of each chain's first
        anchor, which mappy does not report; the built-in kernel reads it from minimap2's own
        structures, so for those pairs (about 1 in 10,000 on the measles set, none on human) the
        pair is aligned by it and both backends agree on every record. None when the index was
        not loaded from a file (then the pair is decided here, as minimap2 would up to the hash)."""
        if self._native is None:
            path = getattr(self._index, "path", "")
            if not path:
                return None
            with self._native_lock:
                if self._native is None:
                    from persona.align import minimap2 as native_backend

                    self._native = native_backend.ALIGNER(native_backend.load_index(path, self.options),
                                                          self.contigs, self.options)
        return self._native

    @staticmethod
    def _add_native_pair(sink: RecordSink, native: Aligner, s1: bytes, s2: bytes, qname: bytes | None) -> None:
        bases = RaggedArray.from_list([s1, s2])
        names = RaggedArray.from_list([qname, qname]) if qname is not None else None
        res = native.align_paired(bases, None, names)
        for j in (0, 1):
            sink.rows.append(tuple(res.primary.fields[j].tolist()))
            sink.cigars.append(bytes(res.primary.cigars[j]))
            sink.add_extras([(tuple(col.fields[j].tolist()), bytes(col.cigars[j]))
                             for col in res.secondary if col.present[j]])

    def last_ties(self) -> list[int]:
        """Pairs (indices in the block) of this thread's last :meth:`align_paired` call whose primary
        pair minimap2 chose between equal scores by hashes mappy does not report (see
        :func:`choose_pair_tied`): the only pairs where this backend may differ from minimap2."""
        return list(getattr(self._local, "ties", []))

    # -- Aligner -------------------------------------------------------------------
    def align_single(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        n = len(bases)
        sink = RecordSink(self.options.secondary)
        buf = self._buffer()
        data = bases.data.tobytes()
        offs = bases.offsets.tolist()
        qnames = self._names(names if self.options.use_names else None, n, 1)
        amap = self._index.map
        for i in range(n):
            seq = data[offs[i] : offs[i + 1]]
            hits = self._hits(amap(seq, name=qnames[i], buf=buf), len(seq), False) if seq else []
            add_single(sink, hits)
        primary, secondary = sink.to_alignments()
        return AlignResult(primary, secondary)

    def align_paired(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        n = len(bases) // 2
        sink = RecordSink(self.options.secondary)
        buf = self._buffer()
        data = bases.data.tobytes()
        offs = bases.offsets.tolist()
        qnames = self._names(names if self.options.use_names else None, n, 2)
        amap = self._index.map
        frag, min_gap = self._max_frag_len, self._max_gap
        rid = self._rid
        match, mismatch = self._match, self._mismatch
        keep_all = self.options.secondary > 0
        ops = CIGAR_OPS
        ties: list[int] = []
        self._local.ties = ties
        for i in range(n):
            s1 = data[offs[2 * i] : offs[2 * i + 1]]
            s2 = data[offs[2 * i + 1] : offs[2 * i + 2]]
            l1, l2 = len(s1), len(s2)
            max_gap = max(frag - (l1 + l2), min_gap)
            h1: list[Hit] = []
            h2: list[Hit] = []
            if not (l1 and l2):  # an empty mate: map the other one alone, as minimap2 skips empty segments
                if l1:
                    h1 = self._hits(amap(s1, name=qnames[i], buf=buf), l1, False)
                if l2:
                    h2 = self._hits(amap(s2, name=qnames[i], buf=buf), l2, False)
                add_pair(sink, h1, h2, max_gap)
                continue
            raw = list(amap(s1, s2, name=qnames[i], buf=buf))
            n_pri = [0, 0, 0]
            for h in raw:
                if h.is_primary:
                    n_pri[h.read_num] += 1
            if n_pri[1] > 1 or n_pri[2] > 1:
                # a mate with several primary-chain hits (a supplementary): which one is the SAM
                # primary, and whether the pair is proper, is minimap2's mm_pair choice, redone here.
                # With one primary-chain hit per mate that hit is the primary (mm_pair only ever
                # moves the primary to, or lifts, a hit of the pair it chose, which is then the only
                # one), and the pair is proper exactly when the two are: pairing.add_pair's rule.
                r1 = [self._hit_dp(h, s1, False) for h in raw if h.read_num == 1]
                r2 = [self._hit_dp(h, s2, True) for h in raw if h.read_num == 2]
                p1, p2, proper, tie = choose_pair_tied(r1, r2, max_gap)
                if tie:
                    ties.append(i)
                    native = self._tie_breaker()
                    if native is not None:
                        self._add_native_pair(sink, native, s1, s2, qnames[i])
                        continue
                add_chosen_pair(sink, r1, r2, (p1, p2, proper))
                continue
            # the hot loop: _hit() inlined (this runs once per hit, with the GIL held)
            for h in raw:
                primary = h.is_primary
                if not (primary or keep_all):
                    continue  # secondaries are only converted when secondary columns are asked for
                second = h.read_num == 2
                q_st, q_en = h.q_st, h.q_en
                if second:  # mappy maps read 2 reverse-complemented: mirror its query coordinates
                    q_st, q_en = l2 - q_en, l2 - q_st
                    qlen = l2
                else:
                    qlen = l1
                rev = h.strand < 0
                left, right = (qlen - q_en, q_st) if rev else (q_st, qlen - q_en)
                cigar = h.cigar
                if len(cigar) == 1:
                    c = cigar[0]
                    cig = f"{c[0]}{ops[c[1]]}"
                else:
                    cig = "".join([f"{c[0]}{ops[c[1]]}" for c in cigar])
                if left:
                    cig = f"{left}S{cig}"
                if right:
                    cig = f"{cig}{right}S"
                mlen = h.mlen
                hit = (rid[h.ctg], h.r_st, h.r_en, rev, h.mapq, cig.encode(), primary,
                       match * mlen - mismatch * (h.blen - mlen))
                if second:
                    h2.append(hit)
                else:
                    h1.append(hit)
            add_pair(sink, h1, h2, max_gap)
        primary_cols, secondary = sink.to_alignments()
        return AlignResult(primary_cols, secondary)

ALIGNER = MappyAligner
