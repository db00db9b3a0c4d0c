"""The native minimap2 kernel (persona._native.mm2): concordance, GIL release, API contracts."""
from __future__ import annotations

import gzip
import itertools
import subprocess
import threading
import time
from pathlib import Path

import mappy
import numpy as np
import pysam
import pytest
from conftest import require_tool

from persona._native import mm2
from persona.agd.ragged import RaggedArray
from persona.align.base import AlignerOptions, make_aligner
from persona.align.fasta import read_contig_table
from persona.align.mappy_backend import load_index as mappy_load_index
from persona.align.minimap2 import build_index, load_index

pytestmark = pytest.mark.native


def read_pairs(r1: Path, r2: Path, n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` pairs as interleaved (name, seq) records."""
    out = []
    with gzip.open(r1, "rt") as f1, gzip.open(r2, "rt") as f2:
        for a, b in itertools.islice(zip(zip(*[f1] * 4), zip(*[f2] * 4)), n):
            out.append((a[0][1:].split()[0], a[1].strip(), b[1].strip()))
    return out


def blocks(pairs: list[tuple[str, str, str]]) -> tuple[RaggedArray, RaggedArray]:
    bases = RaggedArray.from_list([s for _, s1, s2 in pairs for s in (s1, s2)])
    names = RaggedArray.from_list([n for n, _, _ in pairs for _ in (0, 1)])
    return bases, names


def index_of(fasta: Path, tmp: Path) -> Path:
    mmi = tmp / f"{fasta.name}.mmi"
    if not mmi.exists():
        build_index(fasta, mmi)
    return mmi


def binary_records(ref: Path, pairs: list[tuple[str, str, str]], tmp: Path) -> list[pysam.AlignedSegment]:
    """The primary SAM line of every read as ``minimap2 -ax sr`` (the Debian binary) writes it."""
    exe = require_tool("minimap2")
    for k, col in ((1, 1), (2, 2)):
        (tmp / f"r{k}.fq").write_text("".join(f"@{p[0]}\n{p[col]}\n+\n{'I' * len(p[col])}\n" for p in pairs))
    sam = tmp / "bin.sam"
    with open(sam, "wb") as out:
        subprocess.run([exe, "-a", "-x", "sr", "-t", "2", str(ref), str(tmp / "r1.fq"), str(tmp / "r2.fq")],
                       stdout=out, stderr=subprocess.DEVNULL, check=True)
    with pysam.AlignmentFile(str(sam)) as f:
        return [r for r in f if not (r.is_secondary or r.is_supplementary)]


def identical_share(res, recs: list[pysam.AlignedSegment]) -> float:
    """Share of reads whose position, flag, MAPQ, CIGAR, mate and TLEN all equal the binary's."""
    f, cig = res.primary.fields, res.primary.cigars
    assert len(f) == len(recs)
    same = 0
    for i, r in enumerate(recs):
        row = f[i]
        same += ((int(row["ref_index"]), int(row["position"]), int(row["flag"]), int(row["mapq"]),
                  cig[i].decode() or None, int(row["next_ref_index"]), int(row["next_position"]),
                  int(row["template_length"]))
                 == (r.reference_id, r.reference_start, r.flag, r.mapping_quality, r.cigarstring,
                     r.next_reference_id, r.next_reference_start, r.template_length))
    return same / len(recs)


@pytest.mark.tools
@pytest.mark.parametrize("dataset,n_pairs", [("human", 25_839), ("yeast", 30_000)])
@pytest.mark.small_data
def test_kernel_matches_minimap2_binary(dataset: str, n_pairs: int, request, tmp_path: Path) -> None:
    files = request.getfixturevalue(dataset)
    pairs = read_pairs(files["r1"], files["r2"], n_pairs)
    contigs = read_contig_table(files["ref"]).contigs
    al = make_aligner("minimap2", load_index(index_of(files["ref"], tmp_path), AlignerOptions()), contigs,
                      AlignerOptions())
    bases, names = blocks(pairs)
    res = al.align(bases, None, names, paired=True)
    share = identical_share(res, binary_records(files["ref"], pairs, tmp_path))
    # measured: 100.0000 % on the full human set (51,678 reads) and on all 100k yeast pairs
    assert share >= 0.999, f"{dataset}: {share:.6%} of reads identical to minimap2's SAM"
    assert (res.primary.fields["flag"] & 0x4 == 0).mean() > 0.9


@pytest.mark.parametrize("secondary", [0, 2])
@pytest.mark.small_data
def test_kernel_agrees_with_mappy_backend(human, tmp_path: Path, secondary: int) -> None:
    pairs = read_pairs(human["r1"], human["r2"], 4000)
    mmi = index_of(human["ref"], tmp_path)  # one .mmi file read by both backends
    opts = AlignerOptions(secondary=secondary)
    contigs = read_contig_table(human["ref"]).contigs
    kern = make_aligner("minimap2", load_index(mmi, opts), contigs, opts)
    mpy = make_aligner("mappy", mappy_load_index(mmi, opts), contigs, opts)
    bases, names = blocks(pairs)
    a = kern.align(bases, None, names, paired=True)
    b = mpy.align(bases, None, names, paired=True)
    same = (a.primary.fields == b.primary.fields) & np.array(
        [x == y for x, y in zip(a.primary.cigars, b.primary.cigars)])
    assert same.mean() >= 0.999, same.mean()
    # extra columns: every supplementary alignment plus up to `secondary` secondary ones
    assert len(a.secondary) == len(b.secondary) >= secondary
    for x, y in zip(a.secondary, b.secondary):
        assert (x.present == y.present).mean() >= 0.999
    single_a = kern.align(bases, None, names)
    single_b = mpy.align(bases, None, names)
    assert (single_a.primary.fields == single_b.primary.fields).mean() >= 0.999


def test_mapping_releases_the_gil(yeast, tmp_path: Path) -> None:
    """While one thread is inside Mapper.map, the main thread keeps running Python code."""
    idx = mm2.Index.load(str(index_of(yeast["ref"], tmp_path)))
    pairs = read_pairs(yeast["r1"], yeast["r2"], 100_000)
    bases, names = blocks(pairs)
    mapper = idx.mapper()
    span: list[float] = []
    out: list[object] = []

    def work() -> None:
        span.append(time.monotonic())
        out.append(mapper.map(bases.offsets, bases.data, names.offsets, names.data, True, 0))
        span.append(time.monotonic())

    t = threading.Thread(target=work)
    ticks: list[float] = []
    last = 0.0
    deadline = time.monotonic() + 120
    t.start()
    while t.is_alive() and last < deadline:  # a tick is kept per millisecond of main-thread progress
        now = time.monotonic()
        if now - last >= 0.001:
            ticks.append(now)
            last = now
    t.join(timeout=120)
    assert not t.is_alive() and out
    start, end = span
    inside = [x for x in ticks if start <= x <= end]
    # with the GIL held for the whole call the main thread could not tick at all until it returned:
    # the largest pause between its ticks would be the call's full length
    gaps = np.diff([start, *inside, end])
    assert end - start > 0.05 and len(inside) > 10, (len(inside), end - start)
    assert gaps.max() < 0.5 * (end - start), (gaps.max(), end - start)


@pytest.mark.small_data
def test_index_build_load_and_contigs(human, measles, tmp_path: Path) -> None:
    mmi = tmp_path / "h.mmi"
    built = mm2.Index.build(str(human["ref"]), "sr", str(mmi))
    table = read_contig_table(human["ref"]).contigs
    assert built.names == [c.name for c in table] and built.lengths == [c.length for c in table]
    loaded = mm2.Index.load(str(mmi))
    assert (loaded.names, loaded.lengths, loaded.k, loaded.w) == (built.names, built.lengths, 21, 11)
    # the file is minimap2 2.31's .mmi: mappy reads it too
    assert list(mappy.Aligner(fn_idx_in=str(mmi), preset="sr").seq_names) == built.names
    with pytest.raises(ValueError, match="not a minimap2 index"):
        mm2.Index.load(str(measles["ref"]))
    with pytest.raises(ValueError, match="unknown minimap2 preset"):
        mm2.Index.load(str(mmi), "no-such-preset")
    with pytest.raises(ValueError, match="unknown minimap2 option"):
        mm2.Index.load(str(mmi), "sr", {"nope": 1})
    with pytest.raises(OSError):
        mm2.Index.build(str(tmp_path / "missing.fa"))


@pytest.mark.small_data
def test_mapper_contracts(measles, tmp_path: Path) -> None:
    idx = mm2.Index.load(str(index_of(measles["ref"], tmp_path)))
    m = idx.mapper()
    pairs = read_pairs(measles["r1"], measles["r2"], 300)
    bases, names = blocks(pairs)
    with pytest.raises(ValueError, match="odd number"):
        m.map(bases.offsets[:4], bases.data, None, None, True, 0)
    with pytest.raises(ValueError, match="names"):
        m.map(bases.offsets, bases.data, names.offsets[:-1], names.data, True, 0)
    with pytest.raises(ValueError, match="offsets end"):
        m.map(bases.offsets, bases.data[:10], None, None, True, 0)
    (f, co, cd, *_), sec = m.map(bases.offsets, bases.data, names.offsets, names.data, True, 1)
    assert f.dtype.itemsize == 40 and len(f) == len(bases) and len(co) == len(bases) + 1
    assert int(co[-1]) == len(cd) and len(sec) >= 1
    # names break ties only: mapping without them still maps every read the same way or its equal twin
    (f2, *_), _ = m.map(bases.offsets, bases.data, None, None, True, 1)
    assert (f2["flag"] & 0x4 == f["flag"] & 0x4).all()
    # the same read alone or inside a block: records are per read (pure)
    (f3, *_), _ = m.map(bases.offsets[:3] - bases.offsets[0], bases.data[: int(bases.offsets[2])],
                          names.offsets[:3], names.data, True, 0)
    assert f3.tobytes() == f[:2].tobytes()
    # an empty block
    (f4, co4, cd4, *_), sec4 = m.map(np.zeros(1, np.uint64), np.zeros(0, np.uint8), None, None, False, 2)
    assert len(f4) == 0 and list(co4) == [0] and len(cd4) == 0 and [len(s[0]) for s in sec4] == [0, 0]


@pytest.mark.small_data
def test_one_mapper_is_one_thread_at_a_time(yeast, tmp_path: Path) -> None:
    idx = mm2.Index.load(str(index_of(yeast["ref"], tmp_path)))
    bases, names = blocks(read_pairs(yeast["r1"], yeast["r2"], 40_000))
    m = idx.mapper()
    errors: list[BaseException] = []
    entered = threading.Event()

    def work() -> None:
        entered.set()
        m.map(bases.offsets, bases.data, names.offsets, names.data, True, 0)

    t = threading.Thread(target=work)
    t.start()
    entered.wait(10)
    while t.is_alive():
        try:
            m.map(bases.offsets[:3], bases.data, None, None, True, 0)
        except RuntimeError as e:
            errors.append(e)
            break
    t.join(60)
    assert errors and "one thread at a time" in str(errors[0])


@pytest.mark.small_data
def test_secondary_records(human, tmp_path: Path) -> None:
    opts = AlignerOptions(secondary=2)
    al = make_aligner("minimap2", load_index(index_of(human["ref"], tmp_path), opts),
                      read_contig_table(human["ref"]).contigs, opts)
    bases, names = blocks(read_pairs(human["r1"], human["r2"], 3000))
    res = al.align(bases, None, names, paired=True)
    for col in res.secondary:
        f = col.fields
        has = col.present
        assert has.any() and not (f["flag"] == 0x104).any()
        assert ((f["flag"][has] & 0x900) != 0).all() and (f["flag"][has] & 0x1).all()
        assert (f["ref_index"][~has] == -1).all() and all(len(col.cigars[i]) == 0 for i in np.flatnonzero(~has))
        # secondaries carry the mate's primary as their mate (when the mate is mapped)
        p = res.primary.fields
        mate = np.arange(len(f)) ^ 1
        sel = has & (p["flag"][mate] & 0x4 == 0)
        assert sel.any()
        assert (f["next_position"][sel] == p["position"][mate][sel]).all()
        assert (f["next_ref_index"][sel] == p["ref_index"][mate][sel]).all()


@pytest.mark.small_data
def test_mappy_backend_shares_the_stored_index(measles, tmp_path: Path) -> None:
    from persona.align.reference import add_reference, reference_info, use_reference

    store = tmp_path / "refs"
    add_reference("measles", measles["ref"], store)
    assert list(reference_info("measles", store).indexes) == ["minimap2-sr"]
    pairs = read_pairs(measles["r1"], measles["r2"], 500)
    bases, names = blocks(pairs)
    with use_reference("measles", store) as a, use_reference("measles", store, aligner="mappy") as b:
        assert a.aligner.name == "minimap2" and b.aligner.name == "mappy"
        ra = a.aligner.align(bases, None, names, paired=True).primary
        rb = b.aligner.align(bases, None, names, paired=True).primary
    assert ra == rb
