"""The ``minibwa`` backend: BWA-MEM-class alignment through the ``minibwa`` package.

``minibwa`` (PyPI; pyo3 bindings of Heng Li's minibwa, MIT) aligns with the GIL
released. What the package gives, and what this module adds around it:

- **Index.** ``minibwa.Index.build`` writes two files (``<prefix>.mbw``: the
  FM-index; ``<prefix>.l2b``: the 2-bit reference with its ambiguous-base
  intervals). The reference store keeps one file per index, so
  :func:`build_index` bundles them in an uncompressed tar (``INDEX_SUFFIX``)
  together with ``reference.seq``: the reference as minibwa sees it, one byte
  per base (``ACGTN``; minibwa's ambiguous bases are ``N``), contigs
  concatenated, decoded from the ``.l2b``. :func:`load_index` extracts the two
  minibwa files to a scratch directory, loads them (minibwa reads them whole;
  the scratch copy is then removed) and memory-maps ``reference.seq`` straight
  from the bundle: one page-cache copy per machine, shared by every thread.
  Build and load are independent of the preset.
- **Tags.** The package's hits carry no NM, MD or DP score (``Hit.score`` is
  the chaining score, not BWA's AS), so NM, MD and AS are computed here from
  each hit's CIGAR, the read and ``reference.seq``: NM and MD as ``samtools
  calmd`` defines them (an ``N`` on either side is a mismatch), AS as the
  alignment's score under minibwa's scoring (match ``a``, mismatch ``-b``,
  ambiguous ``-1``, a gap of length l ``-min(q + l*e, q2 + l*e2)``). SA (the
  read's other primary-chain hits; full CIGAR, as bwa writes it), MC and MQ
  (on primary records whose mate is mapped, as the minimap2 backend does) come
  from the hits. Tags are BAM aux bytes, integers in their smallest type.
- **Pairs.** ``minibwa.map_pair`` aligns one pair in minibwa's paired-end mode
  (mate rescue, pair scoring, proper-pair flag). The package has no batched
  paired call and does not estimate the insert-size distribution: minibwa's
  batch API pairs with *predefined* statistics (forward/reverse only; mean,
  std, proper range ``lo..hi``; minibwa's defaults 400, 100, 50, 800), which
  we expose as the ``pe_insert`` option. (bwa mem instead estimates them per
  batch of reads, which would make a pair's alignment depend on the other
  reads of the block; predefined values keep every pair's records pure.)
  The SAM primary of each mate is minibwa's (``Hit.is_primary``); the pair is
  proper when both primaries carry minibwa's ``proper_pair``. Flags, mate
  fields and TLEN are built by :mod:`persona.align.pairing`.
- **Single reads** go through ``minibwa.map_many`` (one call per block, with
  minibwa's batched seeding), one GIL release per block.

Read names are passed to minibwa, which hashes them to break ties between
equal hits (as the minibwa binary does); without names (``use_names`` off or
no metadata column) every read gets the same empty name, so results stay
pure per read. Empty reads come back unmapped; a pair with one empty mate
aligns the other mate alone. Qualities are not used.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.agd.records import FLAG_REVERSE
from persona.align.base import Aligner, AlignerOptions, AlignResult
from persona.align.pairing import (
    Hit,
    RecordSink,
    _secondaries,
    add_chosen_pair,
    add_single,
    template_length,
)
from persona.errors import AlignerError, ReferenceNotFoundError

#: the reference store's file for this backend: a tar of minibwa's two files plus reference.seq
INDEX_SUFFIX = ".mbwa.tar"
#: minibwa's presets (``Opts(preset)``): short reads, adaptive short/long, long reads
PRESETS = ("sr", "adap", "lr")
#: options.extra keys (minibwa ``Opts`` setters)
OPTIONS = frozenset({"min_seed_len", "match", "mismatch", "gap_open", "gap_extend", "pe_insert", "xa_ratio"})
#: minibwa's scoring defaults (options.c mb_opt_reset): a, b, q, e, q2, e2, ambiguous
DEFAULT_SCORING = (2, 8, 12, 2, 23, 1, 1)
#: minibwa's predefined paired-end statistics (mean, std, lo, hi) used unless ``pe_insert`` is given
DEFAULT_PE_INSERT = (400, 100, 50, 800)

_MEMBERS = ("index.mbw", "index.l2b", "reference.seq", "meta.json")
_COMP = bytes.maketrans(b"ACGTN", b"TGCAN")
_CIGAR_OPS = "MIDNSHP=XB"
_N = ord("N")


def _minibwa() -> Any:
    try:
        import minibwa
    except ImportError as e:
        raise AlignerError(
            f"the minibwa backend needs the minibwa package ({e}): pip install 'persona-genomics[minibwa]'"
        ) from None
    return minibwa


def minibwa_version() -> str | None:
    """The installed ``minibwa`` package's version (provenance)."""
    try:
        from importlib.metadata import version

        return version("minibwa")
    except Exception:  # noqa: BLE001 - provenance is best effort
        return None


# ----------------------------------------------------------------------------- index
def _l2b_sequence(path: Path, out: Path, block: int = 1 << 26) -> list[tuple[str, int]]:
    """Decode minibwa's ``.l2b`` (2 bits per base, ambiguous intervals) into ``out``, one byte per
    base (ACGTN), in blocks of ``block`` bases so memory stays bounded; returns (name, length)."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if bytes(raw[:4]) != b"L2B\x01":
        raise AlignerError(f"{path} is not a minibwa .l2b file", key=str(path))
    n_ctg, tot_len, n_ambi, n_mask, len_name, _len_comm, n_pac = struct.unpack_from("<7Q", raw, 8)
    off = 8 + 7 * 8
    lens = np.frombuffer(raw, np.uint64, n_ctg, off).astype(np.int64)
    off += 8 * n_ctg
    ambi = np.frombuffer(raw, np.uint64, 2 * n_ambi, off).reshape(-1, 2).astype(np.int64)
    off += 16 * n_ambi + 16 * n_mask
    pac = np.frombuffer(raw, np.uint8, 8 * n_pac, off)
    off += 8 * n_pac
    names = bytes(raw[off : off + len_name]).split(b"\0")[:n_ctg]
    if int(lens.sum()) != tot_len or len(names) != n_ctg:
        raise AlignerError(f"{path}: inconsistent minibwa reference header", key=str(path))
    lut = np.frombuffer(b"ACGT", np.uint8)
    with open(out, "wb") as f:
        for st in range(0, tot_len, block):
            en = min(st + block, tot_len)
            b = pac[st // 4 : (en + 3) // 4]
            codes = np.stack([b & 3, (b >> 2) & 3, (b >> 4) & 3, b >> 6], axis=1).ravel()[: en - st]
            seq = lut[codes]
            for s, e in ambi[(ambi[:, 1] > st) & (ambi[:, 0] < en)]:
                seq[max(s, st) - st : min(e, en) - st] = _N
            f.write(seq.tobytes())
    del raw
    return [(n.decode(), int(ln)) for n, ln in zip(names, lens)]


def build_index(fasta: str | Path, out_path: str | Path, preset: str = "sr") -> None:
    """Build minibwa's index of ``fasta`` and bundle it (see the module docstring) into ``out_path``."""
    if preset not in PRESETS:
        raise AlignerError(f"unknown minibwa preset {preset!r}; known: {', '.join(PRESETS)}")
    mb = _minibwa()
    with tempfile.TemporaryDirectory(prefix="persona-minibwa-") as tmp:
        prefix = Path(tmp) / "index"
        try:
            mb.Index.build(str(fasta), str(prefix), threads=max(1, min(4, os.cpu_count() or 1)))
        except (ValueError, RuntimeError, OSError) as e:
            raise AlignerError(f"minibwa could not index {fasta}: {e}", key=str(fasta)) from None
        seq = Path(tmp) / "reference.seq"
        contigs = _l2b_sequence(Path(f"{prefix}.l2b"), seq)
        meta = Path(tmp) / "meta.json"
        meta.write_text(json.dumps({"format": 1, "minibwa": minibwa_version(),
                                    "contigs": [[n, ln] for n, ln in contigs]}))
        with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, src in zip(_MEMBERS, (Path(f"{prefix}.mbw"), Path(f"{prefix}.l2b"), seq, meta)):
                tar.add(src, arcname=name, recursive=False)


@dataclass
class MinibwaIndex:
    """A loaded index: minibwa's ``Index``, mapping ``Opts`` and the memory-mapped reference bases."""

    index: Any
    opts: Any
    contigs: list[tuple[str, int]]
    starts: list[int]  # offset of each contig in ``seq``
    seq: Any  # bytes-like (an mmap): reference bases, contigs concatenated
    base: int  # offset of reference.seq in ``seq``
    scoring: tuple[int, int, int, int, int, int, int]
    options: AlignerOptions


def check_options(options: AlignerOptions) -> dict[str, Any]:
    """``options.extra`` after checking the preset and option names (AlignerError if unknown)."""
    if options.preset not in PRESETS:
        raise AlignerError(f"unknown minibwa preset {options.preset!r}; known: {', '.join(PRESETS)}")
    extra = dict(options.extra)
    unknown = set(extra) - OPTIONS
    if unknown:
        raise AlignerError(f"unknown minibwa option(s): {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(OPTIONS))}")
    for k in ("min_seed_len", "match", "mismatch", "gap_open", "gap_extend"):
        if k in extra and (not isinstance(extra[k], int) or isinstance(extra[k], bool) or extra[k] < 0):
            raise AlignerError(f"minibwa option {k} must be an integer >= 0, got {extra[k]!r}")
    if "pe_insert" in extra:
        v = extra["pe_insert"]
        if (not isinstance(v, (list, tuple)) or len(v) != 4 or not all(isinstance(x, int) for x in v)
                or not 0 < v[2] <= v[0] <= v[3] or v[1] <= 0):
            raise AlignerError("minibwa option pe_insert must be [mean, std, lo, hi] integers with "
                               f"0 < lo <= mean <= hi and std > 0, got {v!r}")
    if "xa_ratio" in extra and not (isinstance(extra["xa_ratio"], (int, float)) and 0 <= extra["xa_ratio"] <= 1):
        raise AlignerError(f"minibwa option xa_ratio must be in [0, 1], got {extra['xa_ratio']!r}")
    return extra


def _opts(options: AlignerOptions) -> tuple[Any, tuple[int, int, int, int, int, int, int]]:
    extra = check_options(options)
    mb = _minibwa()
    o = mb.Opts(options.preset)
    a, b, q, e, q2, e2, ambi = DEFAULT_SCORING
    if "min_seed_len" in extra:
        o.set_min_seed_len(int(extra["min_seed_len"]))
    if "match" in extra:
        a = int(extra["match"])
        o.set_match_score(a)
    if "mismatch" in extra:
        b = int(extra["mismatch"])
        o.set_mismatch_penalty(b)
    if "gap_open" in extra:
        q = int(extra["gap_open"])
        o.set_gap_open(q)
    if "gap_extend" in extra:
        e = int(extra["gap_extend"])
        o.set_gap_extend(e)
    if "xa_ratio" in extra:
        o.set_xa_ratio(float(extra["xa_ratio"]))
    o.set_pe_insert_size(*[int(x) for x in extra.get("pe_insert", DEFAULT_PE_INSERT)])
    return o, (a, b, q, e, q2, e2, ambi)


def load_index(path: str | Path, options: AlignerOptions) -> MinibwaIndex:
    """Load a bundle written by :func:`build_index` with the mapping options of ``options``."""
    opts, scoring = _opts(options)
    mb = _minibwa()
    path = Path(path)
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            missing = [m for m in _MEMBERS if m not in members or not members[m].isfile()]
            if missing:
                raise ReferenceNotFoundError(f"minibwa index bundle lacks {', '.join(missing)}", key=str(path))
            meta = json.loads(tar.extractfile(members["meta.json"]).read())  # type: ignore[union-attr]
            seq_member = members["reference.seq"]
            with tempfile.TemporaryDirectory(prefix="persona-minibwa-") as tmp:
                for name in ("index.mbw", "index.l2b"):
                    src = tar.extractfile(members[name])
                    assert src is not None
                    with src, open(Path(tmp) / name, "wb") as dst:
                        while block := src.read(1 << 22):
                            dst.write(block)
                try:
                    index = mb.Index.load(str(Path(tmp) / "index"))
                except (ValueError, RuntimeError, OSError) as e:
                    raise ReferenceNotFoundError(f"minibwa could not load the index: {e}", key=str(path)) from None
    except (tarfile.TarError, OSError, ValueError, KeyError) as e:
        raise ReferenceNotFoundError(f"unreadable minibwa index bundle: {e}", key=str(path)) from None
    contigs = [(str(n), int(ln)) for n, ln in meta["contigs"]]
    if [(n, int(ln)) for n, ln in index.contigs()] != contigs:
        raise ReferenceNotFoundError("minibwa index and its reference.seq disagree on the contigs", key=str(path))
    starts = np.concatenate([[0], np.cumsum([ln for _, ln in contigs])]).tolist()
    if seq_member.size != starts[-1]:
        raise ReferenceNotFoundError(f"reference.seq holds {seq_member.size} bases, expected {starts[-1]}",
                                     key=str(path))
    with open(path, "rb") as f:  # the mapping outlives the file (a scratch copy may be removed)
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return MinibwaIndex(index, opts, contigs, starts[:-1], view, seq_member.offset_data, scoring, options)


# ----------------------------------------------------------------------------- tags
_AUX_INT: dict[tuple[bytes, int], bytes] = {}


def _aux_int(tag: bytes, v: int) -> bytes:
    """An integer tag in the smallest BAM type (as htslib stores a SAM ``i`` value)."""
    if -128 <= v < 1024:  # the common values, encoded once
        key = (tag, v)
        out = _AUX_INT.get(key)
        if out is None:
            out = _AUX_INT[key] = _encode_int(tag, v)
        return out
    return _encode_int(tag, v)


def _encode_int(tag: bytes, v: int) -> bytes:
    if v < 0:
        if v >= -128:
            return tag + b"c" + struct.pack("<b", v)
        if v >= -32768:
            return tag + b"s" + struct.pack("<h", v)
        return tag + b"i" + struct.pack("<i", v)
    if v <= 255:
        return tag + b"C" + struct.pack("<B", v)
    if v <= 65535:
        return tag + b"S" + struct.pack("<H", v)
    return tag + b"I" + struct.pack("<I", v)


def _mismatches(q: bytes, t: bytes) -> list[int]:
    """Positions where two equally long byte strings differ, ascending (XOR of the two as one
    integer: a handful of big-integer steps per mismatch instead of a loop over every base)."""
    x = int.from_bytes(q, "little") ^ int.from_bytes(t, "little")
    out = []
    while x:
        j = ((x & -x).bit_length() - 1) >> 3
        out.append(j)
        x &= ~(0xFF << (j << 3))
    return out


def compare_alignment(cigar: Sequence[tuple[str, int]], query: bytes, ref: bytes,
                      scoring: tuple[int, int, int, int, int, int, int]) -> tuple[int, bytes, int]:
    """NM, MD and AS of one alignment. ``cigar`` is minibwa's (aligned part, no clips); ``query``
    and ``ref`` are the aligned bases in reference orientation (uppercase ACGTN)."""
    a, b, q, e, q2, e2, ambi = scoring
    if len(cigar) == 1 and cigar[0][0] == "M" and query == ref and _N not in ref:
        n = len(ref)
        return 0, str(n).encode(), a * n
    nm = 0
    score = 0
    md: list[str] = []
    run = 0
    qo = to = 0
    for op, n in cigar:
        if op in ("M", "=", "X"):
            qs = query[qo : qo + n]
            ts = ref[to : to + n]
            if qs == ts and _N not in ts:
                run += n
                score += a * n
            else:
                if _N in qs or _N in ts:  # an N on either side is a mismatch, even N against N
                    qa = np.frombuffer(qs, np.uint8)
                    ta = np.frombuffer(ts, np.uint8)
                    amb = (qa == _N) | (ta == _N)
                    diff = (qa != ta) | amb
                    n_amb = int(amb.sum())
                    where = np.flatnonzero(diff).tolist()
                else:
                    n_amb = 0
                    where = _mismatches(qs, ts)
                n_diff = len(where)
                score += a * (n - n_diff) - b * (n_diff - n_amb) - ambi * n_amb
                nm += n_diff
                last = -1
                for j in where:
                    md.append(str(run + j - last - 1))
                    md.append(chr(ts[j]))
                    run = 0
                    last = j
                run += n - last - 1
            qo += n
            to += n
        elif op == "I":
            nm += n
            score -= min(q + n * e, q2 + n * e2)
            qo += n
        elif op == "D":
            nm += n
            score -= min(q + n * e, q2 + n * e2)
            md.append(str(run))
            md.append("^" + ref[to : to + n].decode())
            run = 0
            to += n
        elif op == "N":
            to += n
        elif op == "S":
            qo += n
    md.append(str(run))
    return nm, "".join(md).encode(), score


class _TagSink:
    """Tag records laid out as :class:`~persona.align.pairing.RecordSink` lays out its rows."""

    __slots__ = ("prim", "sec")

    def __init__(self, n_secondary: int) -> None:
        self.prim: list[bytes] = []
        self.sec: list[list[bytes]] = [[] for _ in range(n_secondary)]

    def add(self, primary: bytes, extras: list[bytes]) -> None:
        n_read = len(self.prim)
        while len(self.sec) < len(extras):
            self.sec.append([b""] * n_read)
        self.prim.append(primary)
        for i, col in enumerate(self.sec):
            col.append(extras[i] if i < len(extras) else b"")

    @staticmethod
    def ragged(items: list[bytes]) -> RaggedArray:
        offsets = np.zeros(len(items) + 1, dtype=np.uint64)
        np.cumsum(np.fromiter(map(len, items), dtype=np.uint64, count=len(items)), out=offsets[1:])
        return RaggedArray(offsets, np.frombuffer(b"".join(items), dtype=np.uint8), validate=False)


# ----------------------------------------------------------------------------- aligner
# A hit here is a pairing.Hit (indices 0-7) extended with: 8 minibwa's CIGAR ops, 9 query start,
# 10 query end (read coordinates, minibwa's qs/qe), 11 the tags' NM, 12 MD, 13 AS (filled lazily).


class MinibwaAligner(Aligner):
    """:class:`~persona.align.base.Aligner` over a loaded :class:`MinibwaIndex`."""

    name = "minibwa"
    uses_quals = False  # minibwa ignores base qualities
    makes_tags = True  # NM MD AS SA MC MQ

    def __init__(self, index: MinibwaIndex, contigs: Sequence[Contig], options: AlignerOptions) -> None:
        super().__init__(contigs, options)
        check_options(options)
        if [n for n, _ in index.contigs] != [c.name for c in self.contigs]:
            raise ReferenceNotFoundError(
                "minibwa index contigs do not match the reference's contig table "
                f"({len(index.contigs)} vs {len(self.contigs)} contigs)")
        self._index = index
        self._rid: Mapping[str, int] = {c.name: c.index for c in self.contigs}
        self._starts = {c.name: index.base + index.starts[i] for i, c in enumerate(self.contigs)}
        self._names = [c.name for c in self.contigs]

    def with_options(self, options: AlignerOptions) -> MinibwaAligner:
        if options.preset != self.options.preset or dict(options.extra) != dict(self.options.extra):
            raise AlignerError("preset and minibwa options are fixed when the index is loaded")
        return MinibwaAligner(self._index, self.contigs, options)

    # -- hits -----------------------------------------------------------------------
    def _hits(self, raw: Sequence[Any], qlen: int) -> list[Any]:
        out = []
        rid = self._rid
        for h in raw:
            ctg = h.contig
            if ctg is None or not h.cigar:
                continue
            qs, qe = h.query_start, h.query_end
            rev = h.reverse
            left, right = (qlen - qe, qs) if rev else (qs, qlen - qe)
            cig = h.cigar
            core = "".join([f"{n}{op}" for op, n in cig]) if len(cig) > 1 else f"{cig[0][1]}{cig[0][0]}"
            if left:
                core = f"{left}S{core}"
            if right:
                core = f"{core}{right}S"
            primary = h.is_primary
            out.append([rid[ctg], h.ref_start, h.ref_end, rev, h.mapq, core.encode(),
                        primary or h.is_supplementary, h.score, cig, qs, qe, None, None, None, primary])
        # the SAM primary first (pairing takes the first primary-chain hit of a read as its primary)
        out.sort(key=lambda x: not x[14])
        return [tuple(x[:14]) for x in out]

    def _measure(self, h: Any, read: bytes, rc: bytes) -> tuple[int, bytes, int]:
        """NM, MD and AS of hit ``h`` of ``read`` (``rc``: its reverse complement)."""
        qlen = len(read)
        qs, qe = h[9], h[10]
        query = rc[qlen - qe : qlen - qs] if h[3] else read[qs:qe]
        st = self._starts[self._names[h[0]]]
        ref = self._index.seq[st + h[1] : st + h[2]]
        return compare_alignment(h[8], query, ref, self._index.scoring)

    def _record_tags(self, h: Any, hits: Sequence[Any], measured: dict[int, tuple[int, bytes, int]],
                     mate: Any | None, with_mate: bool) -> bytes:
        """One mapped record's tags: NM MD AS, SA on a primary-chain hit with others, MC MQ."""
        nm, md, score = measured[id(h)]
        out = [_aux_int(b"NM", nm), b"MDZ" + md + b"\0", _aux_int(b"AS", score)]
        if h[6]:
            others = [x for x in hits if x is not h and x[6]]
            if others:
                sa = "".join(f"{self._names[x[0]]},{x[1] + 1},{'-' if x[3] else '+'},{x[5].decode()},"
                             f"{x[4]},{measured[id(x)][0]};" for x in others)
                out.append(b"SAZ" + sa.encode() + b"\0")
        if with_mate and mate is not None:
            out.append(b"MCZ" + mate[5] + b"\0")
            out.append(_aux_int(b"MQ", mate[4]))
        return b"".join(out)

    def _emit(self, tags: _TagSink, hits: list[Any], primary: Any | None, mate: Any | None, read: bytes,
              paired: bool) -> None:
        """The tags of one read's records, in the order :mod:`~persona.align.pairing` writes them."""
        rest = _secondaries(hits, primary, self.options.secondary)
        if not hits:
            tags.add(b"MCZ" + mate[5] + b"\0" + _aux_int(b"MQ", mate[4]) if paired and mate is not None
                     else b"", [])
            return
        rc = read.translate(_COMP)[::-1]
        want = {id(h) for h in rest}
        measured = {id(h): self._measure(h, read, rc) for h in hits if h is primary or h[6] or id(h) in want}
        prim = self._record_tags(primary, hits, measured, mate, paired)
        tags.add(prim, [self._record_tags(h, hits, measured, mate, False) for h in rest])

    def _simple(self, raw: Sequence[Any], read: bytes) -> tuple[Hit, bytes] | None:
        """The hot path: a read whose only record is its primary (no supplementary; secondaries,
        if any, not asked for). Returns its :data:`Hit` and its NM, MD, AS tag bytes; None for
        every other read (unmapped, supplementary, secondary columns), which takes the general path."""
        p = None
        keep_secondary = self.options.secondary > 0
        for h in raw:
            if h.is_primary:
                if p is not None:
                    return None
                p = h
            elif keep_secondary or h.is_supplementary:
                return None
        if p is None:
            return None
        ctg = p.contig
        cig = p.cigar
        if ctg is None or not cig:
            return None
        qs, qe, rev, ts, te = p.query_start, p.query_end, p.reverse, p.ref_start, p.ref_end
        qlen = len(read)
        if len(cig) == 1:
            op, n = cig[0]
            core = f"{n}{op}"
        else:
            core = "".join([f"{n}{op}" for op, n in cig])
        left, right = (qlen - qe, qs) if rev else (qs, qlen - qe)
        if left:
            core = f"{left}S{core}"
        if right:
            core = f"{core}{right}S"
        st = self._starts[ctg]
        ref = self._index.seq[st + ts : st + te]
        query = read.translate(_COMP)[::-1][qlen - qe : qlen - qs] if rev else read[qs:qe]
        nm, md, score = compare_alignment(cig, query, ref, self._index.scoring)
        hit = (self._rid[ctg], ts, te, rev, p.mapq, core.encode(), True, 0)
        return hit, _aux_int(b"NM", nm) + b"MDZ" + md + b"\0" + _aux_int(b"AS", score)

    @staticmethod
    def _absent_extras(sink: RecordSink, tags: _TagSink) -> None:
        """No extra record for the read just added: absent rows in the columns the block has."""
        for i in range(len(sink.sec_rows)):
            sink.add_absent_secondary(i)
            tags.sec[i].append(b"")

    # -- Aligner ----------------------------------------------------------------------
    @staticmethod
    def _read_names(names: RaggedArray | None, n: int) -> list[str]:
        """Per read the name minibwa hashes: up to the first whitespace; '' when absent."""
        if names is None:
            return [""] * n
        data = names.data.tobytes().replace(b"\0", b" ").decode("latin-1")  # one char per byte
        offs = names.offsets.tolist()
        out = [data[offs[i] : offs[i + 1]] for i in range(n)]
        if " " in data or "\t" in data:
            out = [s.split(None, 1)[0] if s.strip() else "" for s in out]
        return out

    def _result(self, sink: RecordSink, tags: _TagSink) -> AlignResult:
        primary, secondary = sink.to_alignments()
        primary.tags = _TagSink.ragged(tags.prim)
        assert len(tags.sec) == len(secondary)
        for col, t in zip(secondary, tags.sec):
            col.tags = _TagSink.ragged(t)
        return AlignResult(primary, secondary)

    def align_single(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        mb = _minibwa()
        idx = self._index
        n = len(bases)
        data = bases.data.tobytes()
        offs = bases.offsets.tolist()
        reads = [data[offs[i] : offs[i + 1]] for i in range(n)]
        qnames = self._read_names(names if self.options.use_names else None, n)
        todo = [i for i in range(n) if reads[i]]
        raw = mb.map_many(idx.index, idx.opts, [qnames[i] for i in todo],
                          [reads[i].decode("ascii") for i in todo]) if todo else []
        per_read: list[Sequence[Any]] = [()] * n
        for i, r in zip(todo, raw):
            per_read[i] = r
        sink = RecordSink(self.options.secondary)
        tags = _TagSink(self.options.secondary)
        simple = self._simple
        for i in range(n):
            one = simple(per_read[i], reads[i]) if per_read[i] else None
            if one is not None:
                h, core = one
                sink.rows.append((FLAG_REVERSE if h[3] else 0, h[4], h[0], h[1], -1, -1, 0))
                sink.cigars.append(h[5])
                tags.prim.append(core)
                self._absent_extras(sink, tags)
                continue
            hits = self._hits(per_read[i], len(reads[i]))
            add_single(sink, hits)  # type: ignore[arg-type]
            self._emit(tags, hits, hits[0] if hits else None, None, reads[i], False)
        return self._result(sink, tags)

    def align_paired(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        mb = _minibwa()
        idx = self._index
        n = len(bases) // 2
        data = bases.data.tobytes()
        text = data.decode("ascii")  # minibwa takes str: decoded once, sliced per read
        offs = bases.offsets.tolist()
        qnames = self._read_names(names if self.options.use_names else None, 2 * n)
        sink = RecordSink(self.options.secondary)
        tags = _TagSink(self.options.secondary)
        map_pair, map_one = mb.map_pair, mb.map
        index, opts = idx.index, idx.opts
        simple = self._simple
        rows, cigars, prim = sink.rows, sink.cigars, tags.prim
        for i in range(n):
            s1 = data[offs[2 * i] : offs[2 * i + 1]]
            s2 = data[offs[2 * i + 1] : offs[2 * i + 2]]
            if s1 and s2:
                r1, r2 = map_pair(index, opts, qnames[2 * i], text[offs[2 * i] : offs[2 * i + 1]],
                                  qnames[2 * i + 1], text[offs[2 * i + 1] : offs[2 * i + 2]])
            else:  # an empty mate: the other one alone, unpaired
                r1 = map_one(index, opts, qnames[2 * i], s1.decode("ascii")) if s1 else []
                r2 = map_one(index, opts, qnames[2 * i + 1], s2.decode("ascii")) if s2 else []
            a = simple(r1, s1) if r1 else None
            b = simple(r2, s2) if a is not None and r2 else None
            if b is not None:  # the hot path: one record per mate (pairing.add_chosen_pair, inlined)
                (x, core1), (y, core2) = a, b  # type: ignore[misc]
                ra, rb = x[3], y[3]
                bits = 0x2 if _proper(r1) and _proper(r2) else 0
                fa = 0x41 | bits | (0x10 if ra else 0) | (0x20 if rb else 0)
                fb = 0x81 | bits | (0x10 if rb else 0) | (0x20 if ra else 0)
                tl = template_length(x, y)
                rows.append((fa, x[4], x[0], x[1], y[0], y[1], tl))
                rows.append((fb, y[4], y[0], y[1], x[0], x[1], -tl))
                cigars.append(x[5])
                cigars.append(y[5])
                prim.append(core1 + b"MCZ" + y[5] + b"\0" + _aux_int(b"MQ", y[4]))
                prim.append(core2 + b"MCZ" + x[5] + b"\0" + _aux_int(b"MQ", x[4]))
                if sink.sec_rows:
                    for i in range(len(sink.sec_rows)):
                        for _ in (0, 1):
                            sink.add_absent_secondary(i)
                            tags.sec[i].append(b"")
                continue
            h1 = self._hits(r1, len(s1))
            h2 = self._hits(r2, len(s2))
            p1 = h1[0] if h1 else None
            p2 = h2[0] if h2 else None
            proper = bool(p1 is not None and p2 is not None and s1 and s2 and _proper(r1) and _proper(r2))
            add_chosen_pair(sink, h1, h2, (p1, p2, proper))  # type: ignore[arg-type]
            self._emit(tags, h1, p1, p2, s1, True)
            self._emit(tags, h2, p2, p1, s2, True)
        return self._result(sink, tags)


def _proper(raw: Sequence[Any]) -> bool:
    """Whether minibwa flagged the read's SAM primary as part of a proper pair."""
    for h in raw:
        if h.is_primary:
            return bool(h.proper_pair)
    return False


ALIGNER = MinibwaAligner
