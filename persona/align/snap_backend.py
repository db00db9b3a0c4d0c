"""The ``snap`` backend: our SNAP-style aligner (:mod:`persona._native.snap`, GIL released).

The index (``<name>/snap-<preset>.snapidx`` in the reference store) is one file
holding the reference's base codes (contigs concatenated with 500 N between
them and at both ends), the seed hash tables and the overflow table of
repeated seeds (see the kernel's docstring). It is built in bounded memory
(``align.snap.index_memory_mb``: seeds gathered, sorted and inserted in passes
over ranges of seed value, written straight into the memory-mapped output
file; several passes give the same bytes as one). It is memory-mapped when loaded
(``np.memmap``): every thread and every request of a process reads the same
pages, and processes on one machine share them through the page cache.

The preset chooses the seed length: ``sr`` (the default) picks it from the
genome size (``ceil(log4(size)) + 8`` within 16..32: 20 for yeast, 24 for
human, as SNAP's own defaults), ``s16`` .. ``s32`` fix it.

Alignment parameters come from ``options.extra`` over the configuration's
``align.snap`` section (SNAP's defaults): ``max_dist`` (single-end) and
``max_dist_paired``, ``max_seeds`` (seed lookups per read, single-end) and
``max_seeds_paired``, ``max_hits``, ``extra_depth``, ``min_spacing``,
``max_spacing``, ``min_read_len``, ``secondary_edit_delta``.

Secondary alignments (flag 0x100, in the ``secondary<N>`` columns) are off by
default, as SNAP's: ``options.secondary`` (``--secondary N``) asks for up to N
per read, SNAP's ``-om``/``-omax``: the read's other scored locations within
``secondary_edit_delta`` edits of its primary one (and within ``max_dist``),
fewest edits first. Locations that far from the best are then always scored
(the search depth is at least ``secondary_edit_delta``). Pairs get per-mate
secondaries: each mate's other locations, their mate fields naming the mate's
primary record (as minimap2's), not secondary pair placements. Secondaries
carry NM, MD and AS, MAPQ 0, and no MC/MQ or proper-pair flag.

Each executor thread owns a :class:`~persona._native.snap.Mapper` (its scratch
memory, allocated once), kept in thread-local storage.
"""
from __future__ import annotations

import gzip
import json
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.agd.records import ALIGNMENT_DTYPE, Alignments
from persona.align.base import Aligner, AlignerOptions, AlignResult
from persona.errors import AlignerError, InputFormatError, ReferenceNotFoundError

INDEX_SUFFIX = ".snapidx"
MAGIC = b"PSNAPIX1"
#: N bases between contigs and at both ends of the concatenated genome (SNAP's padding)
PADDING = 500
#: fraction of extra hash-table slots (SNAP's default slack)
SLACK = 0.3
#: memory for the seeds of one index-build pass (MB) when the configuration gives none
INDEX_MEMORY_MB = 2048
_ALIGN = 4096

#: SNAP's defaults (the fork Persona used; persona-original.md §6.5); overridable in config and options.extra
DEFAULTS: dict[str, int] = {
    "max_dist": 14, "max_dist_paired": 15, "max_seeds": 25, "max_seeds_paired": 8, "max_hits": 300,
    "extra_depth": 2, "min_spacing": 50, "max_spacing": 1000, "min_read_len": 50,
    "secondary_edit_delta": 2,
}

_CODES = np.full(256, 4, dtype=np.uint8)
for _i, _c in enumerate(b"ACGT"):
    _CODES[_c] = _i
    _CODES[_c + 32] = _i
_CODE_TABLE = _CODES.tobytes()


def _kernel() -> Any:
    try:
        from persona._native import snap
    except ImportError as e:
        raise AlignerError(f"the snap backend needs the compiled kernel persona._native.snap ({e}); "
                           "rebuild with `python setup.py build_ext --inplace`") from None
    return snap


def seed_length_for(preset: str, genome_size: int) -> int:
    """Seed length of ``preset``: ``sr`` by genome size, ``sNN`` explicit (16..32)."""
    if preset in ("sr", "default"):
        return max(16, min(32, math.ceil(math.log(max(genome_size, 4), 4)) + 8))
    if preset.startswith("s") and preset[1:].isdigit():
        k = int(preset[1:])
        if 16 <= k <= 32:
            return k
    raise AlignerError(f"unknown snap preset {preset!r}: use 'sr' (seed length by genome size) "
                       "or s16 .. s32 (that seed length)")


def load_genome(path: str | Path) -> tuple[list[str], list[int], list[int], np.ndarray]:
    """Contig names, starts and lengths in the concatenated genome, and the genome's base codes (contigs
    with :data:`PADDING` N between them and at both ends), built in one array: peak memory is the
    FASTA's text and the genome."""
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            text = f.read()
    except (OSError, EOFError) as e:
        raise InputFormatError(f"cannot read FASTA {path}: {e}", file=str(path)) from None
    first = text.find(b">")
    if first < 0 or text[:first].strip():
        raise InputFormatError("sequence before the first '>' header line", file=str(path), line=1)
    # (name, body start, body end) of every contig, then its base count without line breaks
    spans: list[tuple[str, int, int]] = []
    at = first
    while at >= 0:
        nl = text.find(b"\n", at)
        head_end = len(text) if nl < 0 else nl
        fields = text[at + 1:head_end].split(None, 1)
        if not fields:
            raise InputFormatError(f"empty contig name (contig {len(spans) + 1})", file=str(path),
                                   line=text.count(b"\n", 0, at) + 1)
        nxt = text.find(b"\n>", head_end) if nl >= 0 else -1
        body_end = len(text) if nxt < 0 else nxt
        spans.append((fields[0].decode("utf-8", "replace"), head_end, body_end))
        at = -1 if nxt < 0 else nxt + 1
    ws = b"\r\n\t "
    lengths = [(e - s) - sum(text.count(c, s, e) for c in (b"\r", b"\n", b"\t", b" ")) for _, s, e in spans]
    genome = np.full(PADDING * (len(spans) + 1) + sum(lengths), 4, dtype=np.uint8)
    starts = []
    pos = PADDING
    for (_, s, e), n in zip(spans, lengths):
        starts.append(pos)
        at = pos
        for b0 in range(s, e, 1 << 23):   # 8 MB of text at a time: line breaks dropped, bases to codes
            piece = text[b0:min(b0 + (1 << 23), e)].translate(_CODE_TABLE, ws)
            genome[at:at + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            at += len(piece)
        pos += n + PADDING
    del text
    return [name for name, _, _ in spans], starts, lengths, genome


def _memory_budget() -> float:
    try:
        from persona.config import get_config

        v = getattr(get_config().align.snap, "index_memory_mb", None)
    except Exception:  # no usable configuration: the shipped default
        v = None
    return float(v) if v else float(INDEX_MEMORY_MB)


def plan_passes(hist: np.ndarray, shift: int, max_seeds: int) -> list[tuple[int, int, int]]:
    """Consecutive canonical-value ranges ``(lo, hi, seeds)`` of at most ``max_seeds`` seeds each (a
    histogram bin with more is a pass of its own), in ascending order, covering every seed."""
    cum = np.zeros(len(hist) + 1, dtype=np.uint64)
    np.cumsum(hist, out=cum[1:])
    passes: list[tuple[int, int, int]] = []
    lo = 0
    while lo < len(hist):
        hi = int(np.searchsorted(cum, cum[lo] + np.uint64(max_seeds), side="right")) - 1
        hi = min(max(hi, lo + 1), len(hist))
        passes.append((lo << shift, hi << shift, int(cum[hi] - cum[lo])))
        lo = hi
    return passes


def _sorted_seeds(snap: Any, genome: np.ndarray, k: int, lo: int, hi: int, count: int) -> tuple[Any, ...]:
    """The seeds whose canonical value is in ``[lo, hi)``, sorted by value, positions ascending within one:
    ``(packed, None, genome, pos_bits)`` when seed and position fit one word (sorted in place; the
    kernel reads strands from the genome), else ``(canon, pos, rc, 0)``."""
    pos_bits = int(len(genome)).bit_length()
    if 2 * k + pos_bits <= 64:
        packed = snap.packed_seeds(genome, k, pos_bits, lo, hi, count)
        packed.sort()
        return packed, None, genome, pos_bits
    canon, locs, rc = snap.canonical_seeds(genome, k, lo, hi, count)
    order = np.argsort(canon, kind="stable")
    canon, locs, rc = canon[order], locs[order], rc[order]
    del order
    return canon, locs, rc, 0


def _bytes_per_seed(k: int, genome_len: int) -> int:
    """Peak bytes one seed of a pass takes while it is gathered and sorted."""
    return 8 if 2 * k + int(genome_len).bit_length() <= 64 else 40


def build_index(fasta: str | Path, out_path: str | Path, preset: str = "sr", *, slack: float = SLACK,
                memory_mb: float | None = None) -> dict[str, Any]:
    """Build the seed index of ``fasta`` for ``preset`` into the single file ``out_path``.

    Memory is bounded by ``memory_mb`` (default: config ``align.snap.index_memory_mb``) beyond the
    genome itself: seeds are gathered, sorted and inserted in passes over ranges of canonical value
    (planned from a histogram of the genome's seeds) whose seeds fit in it. The tables and the overflow
    table are written straight into their place in the output file (memory-mapped), so peak memory is
    about the index plus the budget. Several passes give the same bytes as one: inserted in ascending
    canonical order either way. With more than one pass, a first round counts each table's seeds
    (sizing the tables) and a second fills them, so each pass's seeds are gathered and sorted twice.
    Returns the build's statistics (``passes``, ``seeds``, ``seed_len``).
    """
    snap = _kernel()
    budget = _memory_budget() if memory_mb is None else float(memory_mb)
    if budget <= 0:
        raise AlignerError(f"snap index build: memory budget must be > 0 MB, got {budget}")
    names, starts, lengths, genome = load_genome(fasta)
    if not names:
        raise InputFormatError("no contigs (no '>' header line)", file=str(fasta))
    total = sum(lengths)
    k = seed_length_for(preset, total)
    key_bits, table_bits = snap.seed_layout(k)
    shift = max(0, 2 * k - 20)
    hist = snap.seed_histogram(genome, k, shift)
    n_seeds = int(hist.sum())
    max_seeds = max(1, int(budget * 2**20) // _bytes_per_seed(k, len(genome)))
    passes = plan_passes(hist, shift, max_seeds)
    del hist
    counts = np.zeros(1 << table_bits, dtype=np.uint64)
    first = None
    if len(passes) == 1:  # one pass: count and fill from the same sorted seeds
        first = _sorted_seeds(snap, genome, k, passes[0][0], passes[0][1], passes[0][2])
        n_over = snap.count_seeds(first[0], k, counts, first[3])
    else:
        n_over = 0
        for lo, hi, cnt in passes:
            seeds = _sorted_seeds(snap, genome, k, lo, hi, cnt)
            n_over += snap.count_seeds(seeds[0], k, counts, seeds[3])
            del seeds
    if len(genome) + n_over >= 0xFFFFFFFF:
        raise AlignerError("snap index too large for 32-bit values")
    offsets = snap.table_offsets(counts, slack)
    n_slots = max(int(offsets[-1]), 1)
    wide = key_bits > 32
    specs: dict[str, tuple[np.dtype, int]] = {
        "genome": (np.dtype(np.uint8), len(genome)), "table_offsets": (np.dtype(np.uint64), len(offsets)),
        "overflow": (np.dtype(np.uint32), max(n_over, 1)),
    }
    if wide:
        specs["keys"] = (np.dtype(np.uint64), n_slots)
        specs["vals"] = (np.dtype(np.uint32), n_slots)
    else:
        specs["slots"] = (np.dtype(np.uint64), n_slots)
    header: dict[str, Any] = {
        "format": 1, "seed_len": k, "padding": PADDING, "slack": slack,
        "contigs": [{"name": n, "start": st, "length": ln} for n, st, ln in zip(names, starts, lengths)],
        "arrays": {},
    }
    # array offsets depend on the header's size: lay out with a generous fixed header block
    head_room = _ALIGN * (1 + (len(json.dumps(header)) + 200 * len(specs) + 64) // _ALIGN)
    off = head_room
    for name, (dt, n) in specs.items():
        header["arrays"][name] = {"dtype": dt.str, "shape": [n], "offset": off}
        off += -(-(n * dt.itemsize) // _ALIGN) * _ALIGN
    text = json.dumps(header).encode()
    if len(text) + 16 > head_room:
        raise AlignerError("snap index header too large")
    with open(out_path, "wb") as f:
        f.write(MAGIC + len(text).to_bytes(8, "little") + text)
        f.seek(header["arrays"]["genome"]["offset"])
        f.write(genome.data)
        f.truncate(off)

    def mapped(name: str) -> np.memmap:
        d = header["arrays"][name]
        return np.memmap(out_path, dtype=np.dtype(d["dtype"]), mode="r+", offset=d["offset"], shape=(d["shape"][0],))

    mapped("table_offsets")[:] = offsets
    overflow = mapped("overflow")
    if wide:
        slots: Any = (mapped("keys"), mapped("vals"))
        slots[1][:] = 0xFFFFFFFF
    else:
        slots = mapped("slots")
        slots[:] = 0xFFFFFFFF
    o = 0
    for i, (lo, hi, cnt) in enumerate(passes):
        seeds = first if (i == 0 and first is not None) else _sorted_seeds(snap, genome, k, lo, hi, cnt)
        first = None
        o = snap.fill_seeds(seeds[0], seeds[1], seeds[2], k, offsets, len(genome), slots, overflow, o, seeds[3])
        del seeds
    if o != n_over:
        raise AlignerError(f"snap index build: {o} overflow entries written, {n_over} counted")
    for a in (overflow, *(slots if wide else (slots,))):
        a.flush()
    del overflow, slots
    return {"passes": len(passes), "seeds": n_seeds, "seed_len": k}


def _read_header(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            raise AlignerError(f"{path} is not a snap index (bad magic)", key=str(path))
        n = int.from_bytes(head[8:], "little")
        try:
            return json.loads(f.read(n))  # type: ignore[no-any-return]
        except ValueError as e:
            raise AlignerError(f"{path}: unreadable snap index header: {e}", key=str(path)) from None


class SnapIndexFile:
    """A loaded (memory-mapped) index: the kernel's :class:`~persona._native.snap.SnapIndex` plus its header."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.header = h = _read_header(path)
        size = path.stat().st_size
        arrays = {}
        for name, d in h["arrays"].items():
            dt = np.dtype(d["dtype"])
            n = int(d["shape"][0])
            if d["offset"] + n * dt.itemsize > size:
                raise AlignerError(f"{path}: snap index truncated (array {name})", key=str(path))
            arrays[name] = np.memmap(path, dtype=dt, mode="r", offset=d["offset"], shape=(n,))
        self.contig_names = [c["name"] for c in h["contigs"]]
        slots = (arrays["keys"], arrays["vals"]) if "keys" in arrays else arrays["slots"]
        try:
            self.index = _kernel().SnapIndex(int(h["seed_len"]), arrays["genome"], arrays["table_offsets"], slots,
                                             arrays["overflow"], [c["start"] for c in h["contigs"]],
                                             [c["length"] for c in h["contigs"]])
        except (KeyError, ValueError) as e:
            raise AlignerError(f"{path}: inconsistent snap index: {e}", key=str(path)) from None
        self.seed_len = int(h["seed_len"])


def load_index(path: str | Path, options: AlignerOptions) -> SnapIndexFile:
    """Memory-map a built index (the file may be unlinked afterwards: the mapping keeps it)."""
    check_options(options)
    try:
        return SnapIndexFile(path)
    except OSError as e:
        raise ReferenceNotFoundError(f"snap could not load the index {path}: {e}", key=str(path)) from None


def _config_defaults() -> dict[str, int]:
    out = dict(DEFAULTS)
    try:
        from persona.config import get_config

        section = getattr(get_config().align, "snap", None)
    except Exception:  # no usable configuration: SNAP's defaults
        section = None
    if section is not None:
        for k in DEFAULTS:
            v = section.get(k) if isinstance(section, Mapping) else getattr(section, k, None)
            if v is not None:
                out[k] = int(v)
    return out


def check_options(options: AlignerOptions) -> dict[str, int]:
    """The alignment parameters: config defaults overridden by ``options.extra`` (AlignerError if unknown)."""
    seed_length_for(options.preset, 1 << 24)
    unknown = set(options.extra) - set(DEFAULTS)
    if unknown:
        raise AlignerError(f"unknown snap option(s): {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(DEFAULTS))}")
    params = _config_defaults()
    for k, v in options.extra.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise AlignerError(f"snap option {k} must be an integer >= 0, got {v!r}")
        params[k] = v
    if params["max_spacing"] < params["min_spacing"]:
        raise AlignerError(f"snap: max_spacing {params['max_spacing']} < min_spacing {params['min_spacing']}")
    if params["max_dist"] > 60 or params["max_dist_paired"] > 60:
        raise AlignerError("snap: max_dist must be at most 60")
    if params["secondary_edit_delta"] > 60:
        raise AlignerError("snap: secondary_edit_delta must be at most 60")
    return params


class SnapAligner(Aligner):
    """:class:`~persona.align.base.Aligner` over a loaded :class:`SnapIndexFile`."""

    name = "snap"
    uses_quals = True   # base qualities weigh mismatches in the MAPQ
    makes_tags = True   # NM MD AS, MC MQ

    def __init__(self, index: SnapIndexFile, contigs: Sequence[Contig], options: AlignerOptions) -> None:
        super().__init__(contigs, options)
        self.params = check_options(options)
        if index.contig_names != [c.name for c in self.contigs] or \
                [c.index for c in self.contigs] != list(range(len(index.contig_names))):
            raise ReferenceNotFoundError("snap index contigs do not match the reference's contig table "
                                         f"({len(index.contig_names)} vs {len(self.contigs)} contigs)")
        self._index = index
        self._local = threading.local()

    def with_options(self, options: AlignerOptions) -> SnapAligner:
        if options.preset != self.options.preset:
            raise AlignerError("the snap preset (seed length) is fixed when the index is loaded")
        return SnapAligner(self._index, self.contigs, options)

    def _mapper(self, paired: bool) -> Any:
        attr = "paired" if paired else "single"
        m = getattr(self._local, attr, None)
        if m is None:
            p = self.params
            m = _kernel().Mapper(
                self._index.index,
                max_dist=p["max_dist_paired"] if paired else p["max_dist"],
                # single-end: seeds applied over both directions, as SNAP's -n counts them; paired:
                # lookups per read (SNAP's intersecting aligner), two applications each
                max_seeds=2 * p["max_seeds_paired"] if paired else p["max_seeds"],
                max_hits=p["max_hits"], extra_depth=p["extra_depth"], min_spacing=p["min_spacing"],
                max_spacing=p["max_spacing"], min_read_len=p["min_read_len"],
                max_secondary=self.options.secondary, secondary_delta=p["secondary_edit_delta"])
            setattr(self._local, attr, m)
        return m

    def _align(self, bases: RaggedArray, quals: RaggedArray | None, paired: bool) -> AlignResult:
        fields, co, cd, to, td, secs = self._mapper(paired).align(
            bases.offsets, bases.data, quals.offsets if quals is not None else None,
            quals.data if quals is not None else None, paired)
        primary = Alignments(fields.view(ALIGNMENT_DTYPE), RaggedArray(co, cd, validate=False), None,
                             RaggedArray(to, td, validate=False))
        extra = [Alignments(f.view(ALIGNMENT_DTYPE), RaggedArray(sco, scd, validate=False), present,
                            RaggedArray(sto, std, validate=False))
                 for f, sco, scd, present, sto, std in secs]
        return AlignResult(primary, extra)

    def align_single(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        return self._align(bases, quals, False)

    def align_paired(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        return self._align(bases, quals, True)


ALIGNER = SnapAligner
