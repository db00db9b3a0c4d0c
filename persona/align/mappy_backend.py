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
- the SAM primary (first primary-chain hit), supplementary/secondary flags,
  proper-pair flag, mate fields and TLEN: :mod:`persona.align.pairing`.

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
from persona.align.pairing import Hit, RecordSink, add_pair, add_single
from persona.errors import AlignerError, ReferenceNotFoundError

try:
    import mappy
except ImportError as e:  # pragma: no cover - mappy is a hard dependency
    raise ImportError("the minimap2 backend needs mappy: pip install mappy") from e

def build_index(fasta: str | Path, out_path: str | Path, preset: str = "sr") -> None:
    """Build minimap2's index (.mmi) of ``fasta`` for ``preset`` into ``out_path``."""
    if preset not in PRESETS:
        raise AlignerError(f"unknown minimap2 preset {preset!r}")
    idx = mappy.Aligner(str(fasta), preset=preset, fn_idx_out=str(out_path), n_threads=3)
    if not idx:
        raise AlignerError(f"minimap2 could not index {fasta}", key=str(fasta))


def load_index(path: str | Path, options: AlignerOptions) -> mappy.Aligner:
    """Load an .mmi with the mapping options of ``options`` (preset + pass-through keywords)."""
    extra = check_options(options)
    try:
        idx = mappy.Aligner(fn_idx_in=str(path), preset=options.preset, **extra)
    except TypeError as e:
        raise AlignerError(f"bad minimap2 option: {e}") from None
    if not idx:
        raise ReferenceNotFoundError(f"minimap2 could not load the index {path}", key=str(path))
    return idx


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
        self._local = threading.local()

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
            # the hot loop: _hit() inlined (this runs once per hit, with the GIL held)
            for h in amap(s1, s2, name=qnames[i], buf=buf):
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
