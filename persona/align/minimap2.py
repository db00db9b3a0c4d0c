"""The ``minimap2`` backend: minimap2's C library bound directly (:mod:`persona._native.mm2`).

One :class:`persona._native.mm2.Index` (index + mapping options) serves every
thread; each executor thread owns a :class:`~persona._native.mm2.Mapper`
(minimap2's per-thread scratch buffer), kept in thread-local storage. A work
item is mapped in one kernel call with the GIL released, so the executor's
threads map on separate cores, and the SAM records (flags, mate fields, TLEN,
soft-clipped CIGARs) are built in C from minimap2's own hit fields exactly as
the minimap2 binary's SAM writer builds them (see the kernel's docstring).
Paired blocks are mapped in fragment mode (``mm_pair``) like
``minimap2 -ax sr r1.fq r2.fq``.

Every record also gets its optional tags, built in the same kernel call: minimap2's
NM, ms, AS, nn, tp, cm, s1, s2, de, SA and MD (MD from the index's own copy of the
reference), MC/MQ from the mate's primary, rl (see :meth:`persona._native.mm2.Mapper.map`).
Supplementary alignments are always returned (extra columns), secondary ones up to
``options.secondary``.

Read names (``options.use_names``) are passed to minimap2, which hashes them to
break ties between equal hits, so placements match the binary's. Reads shorter
than the k-mer length, empty reads and all-``N`` reads come back unmapped.

The index file is minimap2 2.31's ``.mmi`` (the version compiled into the
kernel, the same as mappy 2.31's): the ``mappy`` backend
(:mod:`persona.align.mappy_backend`) reads the same files.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.agd.records import ALIGNMENT_DTYPE, Alignments
from persona.align.base import Aligner, AlignerOptions, AlignResult
from persona.errors import AlignerError, ReferenceNotFoundError

#: minimap2 keywords that fix the index or mapping options (passed through from options.extra;
#: the same names and meanings as mappy.Aligner's keywords)
CONSTRUCT_OPTIONS = frozenset(
    {"k", "w", "min_cnt", "min_chain_score", "min_dp_score", "bw", "best_n", "max_frag_len",
     "extra_flags", "scoring"}
)
#: minimap2 presets and their (max_frag_len, max_gap) pairing defaults (options.c)
PRESET_PAIRING = {"sr": (800, 100), "short": (800, 100)}
#: minimap2 presets' (match, mismatch) scores (options.c; default 2, 4)
PRESET_SCORING = {"sr": (2, 8), "short": (2, 8), "map-hifi": (1, 4), "asm5": (1, 19), "asm10": (1, 9),
                  "asm20": (1, 4)}
PRESETS = ("sr", "short", "map-ont", "map-pb", "map-hifi", "lr:hq", "asm5", "asm10", "asm20",
           "splice", "splice:hq", "ava-ont", "ava-pb")
CIGAR_OPS = "MIDNSHP=XB"
INDEX_SUFFIX = ".mmi"
#: backends sharing an index file in the reference store use the same family name
INDEX_FAMILY = "minimap2"


def _kernel() -> Any:
    try:
        from persona._native import mm2
    except ImportError as e:
        raise AlignerError(
            "the minimap2 backend needs the compiled kernel persona._native.mm2 "
            f"({e}); rebuild with `python setup.py build_ext --inplace`, or use aligner 'mappy'") from None
    return mm2


def check_options(options: AlignerOptions) -> dict[str, Any]:
    """``options.extra`` after checking the preset and the option names (AlignerError if unknown)."""
    if options.preset not in PRESETS:
        raise AlignerError(f"unknown minimap2 preset {options.preset!r}; known: {', '.join(PRESETS)}")
    unknown = set(options.extra) - CONSTRUCT_OPTIONS
    if unknown:
        raise AlignerError(f"unknown minimap2 option(s): {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(CONSTRUCT_OPTIONS))}")
    return dict(options.extra)


def build_index(fasta: str | Path, out_path: str | Path, preset: str = "sr") -> None:
    """Build minimap2's index (.mmi) of ``fasta`` for ``preset`` into ``out_path``."""
    if preset not in PRESETS:
        raise AlignerError(f"unknown minimap2 preset {preset!r}")
    try:
        _kernel().Index.build(str(fasta), preset, str(out_path), 3)
    except (OSError, ValueError) as e:
        raise AlignerError(f"minimap2 could not index {fasta}: {e}", key=str(fasta)) from None


def load_index(path: str | Path, options: AlignerOptions) -> Any:
    """Load an .mmi with the mapping options of ``options`` (preset + pass-through keywords)."""
    extra = check_options(options)
    try:
        return _kernel().Index.load(str(path), options.preset, extra)
    except OSError as e:
        raise ReferenceNotFoundError(f"minimap2 could not load the index {path}: {e}", key=str(path)) from None
    except (ValueError, TypeError) as e:
        raise AlignerError(f"minimap2 could not load the index {path}: {e}", key=str(path)) from None


def _alignments(part: tuple[Any, ...]) -> Alignments:
    """Kernel output ``(fields, cigar offsets, cigar data[, present], tag offsets, tag data)`` as Alignments."""
    fields, offsets, data = part[:3]
    present = part[3] if len(part) == 6 else None
    toff, tdata = part[-2:]
    tags = RaggedArray(toff, tdata, validate=False) if toff is not None else None
    return Alignments(fields.view(ALIGNMENT_DTYPE), RaggedArray(offsets, data, validate=False), present, tags)


class Minimap2Aligner(Aligner):
    """:class:`~persona.align.base.Aligner` over a loaded :class:`persona._native.mm2.Index`."""

    name = "minimap2"
    uses_quals = False  # minimap2 ignores base qualities
    makes_tags = True  # NM MD AS ms nn tp cm s1 s2 de SA MC MQ rl, computed in the kernel

    def __init__(self, index: Any, contigs: Sequence[Contig], options: AlignerOptions) -> None:
        super().__init__(contigs, options)
        check_options(options)
        names = index.names
        if names != [c.name for c in self.contigs] or [c.index for c in self.contigs] != list(range(len(names))):
            raise ReferenceNotFoundError(
                "minimap2 index contigs do not match the reference's contig table "
                f"({len(names)} vs {len(self.contigs)} contigs)")
        self._index = index
        self._local = threading.local()

    def with_options(self, options: AlignerOptions) -> Minimap2Aligner:
        if options.preset != self.options.preset or dict(options.extra) != dict(self.options.extra):
            raise AlignerError("preset and minimap2 options are fixed when the index is loaded")
        return Minimap2Aligner(self._index, self.contigs, options)

    def _mapper(self) -> Any:
        m = getattr(self._local, "mapper", None)
        if m is None:
            m = self._local.mapper = self._index.mapper()
        return m

    def _map(self, bases: RaggedArray, names: RaggedArray | None, paired: bool) -> AlignResult:
        if not self.options.use_names:
            names = None
        primary, secondary = self._mapper().map(
            bases.offsets, bases.data,
            names.offsets if names is not None else None, names.data if names is not None else None,
            paired, self.options.secondary)
        return AlignResult(_alignments(primary), [_alignments(s) for s in secondary])

    def align_single(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        return self._map(bases, names, False)

    def align_paired(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        return self._map(bases, names, True)


ALIGNER = Minimap2Aligner
