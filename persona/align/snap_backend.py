"""The ``snap`` backend: our SNAP-style aligner (:mod:`persona._native.snap`, GIL released).

The index (``<name>/snap-<preset>.snapidx`` in the reference store) is one file
holding the reference's base codes (contigs concatenated with 500 N between
them and at both ends), the seed hash tables and the overflow table of
repeated seeds (see the kernel's docstring). It is memory-mapped when loaded
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


def read_fasta(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Names and base codes (A0 C1 G2 T3, anything else 4) of every contig of a FASTA (plain/gzip/BGZF)."""
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    names: list[str] = []
    seqs: list[np.ndarray] = []
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            text = f.read()
    except (OSError, EOFError) as e:
        raise InputFormatError(f"cannot read FASTA {path}: {e}", file=str(path)) from None
    first = text.find(b">")
    if first < 0 or text[:first].strip():
        raise InputFormatError("sequence before the first '>' header line", file=str(path), line=1)
    for rec in text[first + 1:].split(b"\n>"):
        head, _, body = rec.partition(b"\n")
        fields = head.split(None, 1)
        if not fields:
            raise InputFormatError(f"empty contig name (contig {len(names) + 1})", file=str(path))
        names.append(fields[0].decode("utf-8", "replace"))
        seq = body.translate(None, b"\r\n\t ")
        seqs.append(_CODES[np.frombuffer(seq, dtype=np.uint8)])
    if not names:
        raise InputFormatError("no contigs (no '>' header line)", file=str(path))
    return names, seqs


def build_index(fasta: str | Path, out_path: str | Path, preset: str = "sr", *, slack: float = SLACK) -> None:
    """Build the seed index of ``fasta`` for ``preset`` into the single file ``out_path``."""
    snap = _kernel()
    names, seqs = read_fasta(fasta)
    total = sum(len(s) for s in seqs)
    k = seed_length_for(preset, total)
    starts = []
    pieces = [np.full(PADDING, 4, np.uint8)]
    pos = PADDING
    for s in seqs:
        starts.append(pos)
        pieces += [s, np.full(PADDING, 4, np.uint8)]
        pos += len(s) + PADDING
    genome = np.concatenate(pieces)
    del pieces
    canon, locs, rc = snap.canonical_seeds(genome, k)
    pos_bits = int(len(genome)).bit_length()
    if 2 * k + pos_bits + 1 <= 64:
        # one plain sort of (seed, position, strand) packed in a word: groups seeds, positions ascending
        packed = (canon << np.uint64(pos_bits + 1)) | (locs.astype(np.uint64) << np.uint64(1)) | rc
        del canon, locs, rc
        packed.sort()
        canon = packed >> np.uint64(pos_bits + 1)
        locs = ((packed >> np.uint64(1)) & np.uint64((1 << pos_bits) - 1)).astype(np.uint32)
        rc = (packed & np.uint64(1)).astype(np.uint8)
        del packed
    else:
        order = np.argsort(canon, kind="stable")
        canon, locs, rc = canon[order], locs[order], rc[order]
        del order
    offsets, slots, overflow = snap.fill_tables(canon, locs, rc, k, slack, len(genome))
    del canon, locs, rc
    arrays = {"genome": genome, "table_offsets": offsets, "overflow": overflow}
    if isinstance(slots, tuple):
        arrays["keys"], arrays["vals"] = slots
    else:
        arrays["slots"] = slots
    header: dict[str, Any] = {
        "format": 1, "seed_len": k, "padding": PADDING, "slack": slack,
        "contigs": [{"name": n, "start": st, "length": len(s)} for n, st, s in zip(names, starts, seqs)],
        "arrays": {},
    }
    # array offsets depend on the header's size: lay out with a generous fixed header block
    head_room = _ALIGN * (1 + (len(json.dumps(header)) + 200 * len(arrays) + 64) // _ALIGN)
    off = head_room
    for name, a in arrays.items():
        header["arrays"][name] = {"dtype": a.dtype.str, "shape": [int(a.shape[0])], "offset": off}
        off += -(-a.nbytes // _ALIGN) * _ALIGN
    text = json.dumps(header).encode()
    if len(text) + 16 > head_room:
        raise AlignerError("snap index header too large")
    with open(out_path, "wb") as f:
        f.write(MAGIC + len(text).to_bytes(8, "little") + text)
        for name, a in arrays.items():
            f.seek(header["arrays"][name]["offset"])
            f.write(np.ascontiguousarray(a).data)
        f.truncate(off)


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
