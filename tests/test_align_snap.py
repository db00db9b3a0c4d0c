"""The ``snap`` backend (our SNAP-style kernel): index, single-end and paired alignment, records, CLI.

Reads are cut from the small real yeast reference in tests/fixtures (chrI, chrIII, chrVI: 0.7 Mb)
with known edits, so every position, CIGAR, NM and MD is checked against the truth and the
reference itself; wgsim reads check accuracy beside snap-aligner (SNAP 2.0.2) on the same reads.
"""
from __future__ import annotations

import gzip
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pysam
import pytest
from conftest import require_tool, small_sets

from persona._native import bam as bam_kernel
from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.align import snap_backend as sb
from persona.align.base import AlignerOptions, make_aligner
from persona.align.fasta import read_contig_table
from persona.errors import AlignerError

REF = small_sets()["yeast"]["ref"]
COMP = str.maketrans("ACGTN", "TGCAN")


def revcomp(s: str) -> str:
    return s.translate(COMP)[::-1]


@pytest.fixture(scope="module")
def genome() -> dict[str, str]:
    with gzip.open(REF, "rt") as f:
        text = f.read()
    out = {}
    for rec in text[1:].split("\n>"):
        head, _, body = rec.partition("\n")
        out[head.split()[0]] = body.replace("\n", "").upper()
    return out


@pytest.fixture(scope="module")
def index_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("snapidx") / "ref.snapidx"
    sb.build_index(REF, path, "s20")
    return path


@pytest.fixture(scope="module")
def contigs() -> list[Contig]:
    return read_contig_table(REF).contigs


def aligner(index_path: Path, contigs, **extra):
    opts = AlignerOptions(preset="s20", extra=extra)
    return make_aligner("snap", sb.load_index(index_path, opts), contigs, opts)


def ragged(items: list[str]) -> RaggedArray:
    data = [s.encode() for s in items]
    off = np.zeros(len(data) + 1, np.uint64)
    np.cumsum([len(s) for s in data], out=off[1:])
    return RaggedArray(off, np.frombuffer(b"".join(data) or b"\0", np.uint8)[: int(off[-1])].copy(), validate=False)


def tags(res, i: int) -> dict[str, str]:
    raw = bytes(res.primary.tags[i])
    text = bam_kernel.aux_text(np.frombuffer(raw, dtype=np.uint8)).decode() if raw else ""
    return {t[:2]: t[5:] for t in text.split("\t") if t}


def check_record(ref: str, pos: int, cigar: str, seq: str) -> tuple[int, str]:
    """NM and MD recomputed by walking ``cigar`` over ``ref`` from ``pos`` (``seq`` as SAM stores it)."""
    q = t = nm = run = 0
    md = []
    for n, op in re.findall(r"(\d+)([MIDS])", cigar):
        n = int(n)
        if op == "S":
            q += n
        elif op == "I":
            q += n
            nm += n
        elif op == "D":
            md.append(f"{run}^{ref[pos + t:pos + t + n]}")
            run = 0
            t += n
            nm += n
        else:
            for j in range(n):
                a, b = seq[q + j], ref[pos + t + j]
                if a != b or a == "N":
                    md.append(f"{run}{b}")
                    run = 0
                    nm += 1
                else:
                    run += 1
            q += n
            t += n
    assert q == len(seq), f"CIGAR {cigar} covers {q} of {len(seq)} bases"
    md.append(str(run))
    return nm, "".join(md)


def sample_reads(genome: dict[str, str], rng, n: int, length: int = 100):
    """``n`` (contig, pos, reverse, read) cut from unique-looking places (no N)."""
    names = list(genome)
    out = []
    while len(out) < n:
        c = names[int(rng.integers(len(names)))]
        s = genome[c]
        p = int(rng.integers(0, len(s) - length))
        read = s[p:p + length]
        if "N" in read:
            continue
        rev = bool(rng.integers(2))
        out.append((c, p, rev, revcomp(read) if rev else read))
    return out


def test_index_build_and_mmap_load(index_path: Path, genome) -> None:
    idx = sb.load_index(index_path, AlignerOptions(preset="s20"))
    assert idx.seed_len == 20
    assert idx.contig_names == ["chrI", "chrIII", "chrVI"]
    assert all(isinstance(a, np.memmap) for a in idx.index.arrays[:2])
    # a seed's hits: forward copies where the genome holds it, reverse where it holds its complement
    starts = {c["name"]: c["start"] for c in idx.header["contigs"]}
    seed = genome["chrIII"][5000:5020]
    fwd, rev = idx.index.hits(seed.encode())
    assert starts["chrIII"] + 5000 in fwd
    fwd2, rev2 = idx.index.hits(revcomp(seed).encode())
    assert (fwd2, rev2) == (rev, fwd)
    # every hit really holds the seed (or its complement)
    flat = np.asarray(idx.index.arrays[0])
    codes = "ACGTN"
    for p in fwd:
        assert "".join(codes[b] for b in flat[p:p + 20]) == seed
    for p in rev:
        assert "".join(codes[b] for b in flat[p:p + 20]) == revcomp(seed)
    # default seed length from the genome size; a corrupt file is refused clearly
    assert sb.seed_length_for("sr", 12_157_105) == 20
    assert sb.seed_length_for("sr", 3_100_000_000) == 24
    assert sb.seed_length_for("s28", 10) == 28
    with pytest.raises(AlignerError, match="snap preset"):
        sb.seed_length_for("s40", 10)
    bad = index_path.parent / "bad.snapidx"
    bad.write_bytes(b"NOTANINDEX" * 4)
    with pytest.raises(AlignerError, match="bad magic"):
        sb.load_index(bad, AlignerOptions(preset="s20"))


@pytest.mark.parametrize("seed", [16, 24, 28])
def test_other_seed_lengths(tmp_path: Path, genome, contigs, seed: int) -> None:
    path = tmp_path / "i.snapidx"
    sb.build_index(REF, path, f"s{seed}")
    opts = AlignerOptions(preset=f"s{seed}")
    al = make_aligner("snap", sb.load_index(path, opts), contigs, opts)
    reads = sample_reads(genome, np.random.default_rng(seed), 50)
    res = al.align(ragged([r[3] for r in reads]))
    f = res.primary.fields
    ok = sum(contigs[f["ref_index"][i]].name == c and f["position"][i] == p for i, (c, p, _, _) in enumerate(reads))
    assert ok >= 48


def test_exact_reads_placed_exactly(index_path, contigs, genome) -> None:
    al = aligner(index_path, contigs)
    reads = sample_reads(genome, np.random.default_rng(1), 400)
    res = al.align(ragged([r[3] for r in reads]), ragged(["I" * 100] * len(reads)))
    f = res.primary.fields
    exact = 0
    for i, (c, p, rev, _) in enumerate(reads):
        assert not f["flag"][i] & 0x4
        assert bool(f["flag"][i] & 0x10) == rev or f["mapq"][i] < 10
        if contigs[f["ref_index"][i]].name == c and f["position"][i] == p:
            exact += 1
            assert res.primary.cigars[i] == b"100M"
            assert tags(res, i) == {"NM": "0", "MD": "100", "AS": "100"}
        else:  # a repeat: then it must say so
            assert f["mapq"][i] < 10
    assert exact >= 390
    assert (f["mapq"][[i for i in range(len(reads))]] == 70).mean() > 0.9


def _mutate(read: str, rng) -> str:
    """1-3 substitutions and maybe one indel of 1-4 bases, away from the ends."""
    s = list(read)
    for _ in range(int(rng.integers(1, 4))):
        j = int(rng.integers(5, len(s) - 5))
        s[j] = "ACGT"[("ACGT".index(s[j]) + int(rng.integers(1, 4))) % 4]
    kind = int(rng.integers(3))
    j = int(rng.integers(30, len(s) - 30))
    n = int(rng.integers(1, 5))
    if kind == 1:
        s[j:j] = list("".join("ACGT"[int(rng.integers(4))] for _ in range(n)))
    elif kind == 2:
        del s[j:j + n]
    return "".join(s)


def test_mismatches_and_indels(index_path, contigs, genome) -> None:
    al = aligner(index_path, contigs)
    rng = np.random.default_rng(7)
    reads = sample_reads(genome, rng, 300)
    muts = []
    for c, p, rev, r in reads:
        fwd = _mutate(revcomp(r) if rev else r, rng)
        muts.append(revcomp(fwd) if rev else fwd)
    res = al.align(ragged(muts))
    f = res.primary.fields
    placed = indels = 0
    for i, (c, p, rev, _) in enumerate(reads):
        assert not f["flag"][i] & 0x4, i
        name = contigs[f["ref_index"][i]].name
        cig = res.primary.cigars[i].decode()
        seq = revcomp(muts[i]) if f["flag"][i] & 0x10 else muts[i]
        nm, md = check_record(genome[name], int(f["position"][i]), cig, seq)
        t = tags(res, i)
        assert (int(t["NM"]), t["MD"]) == (nm, md), (i, cig)
        assert nm <= 7
        if name == c and abs(int(f["position"][i]) - p) <= 4:
            placed += 1
            indels += "I" in cig or "D" in cig
    assert placed >= 290
    assert indels >= 120  # two reads in three carry an indel, and it shows in the CIGAR


def test_unmapped_short_and_n_reads(index_path, contigs, genome) -> None:
    al = aligner(index_path, contigs)
    rng = np.random.default_rng(3)
    junk = "".join("ACGT"[int(x)] for x in rng.integers(0, 4, 100))
    good = genome["chrI"][10000:10100]
    reads = ["", "ACGT", "N" * 100, junk, good[:19], good[:40], good[:30] + "N" * 40 + good[70:], good]
    res = al.align(ragged(reads))
    f = res.primary.fields
    for i in range(5):
        assert f["flag"][i] == 0x4 and f["ref_index"][i] == -1 and f["position"][i] == -1, i
        assert res.primary.cigars[i] == b"" and tags(res, i) == {}
    assert f["position"][5] == 10000 and res.primary.cigars[5] == b"40M"
    assert f["flag"][6] == 0x4   # 40 Ns: more than max_dist
    assert f["position"][7] == 10000


def test_contig_edge_soft_clips(index_path, contigs, genome) -> None:
    al = aligner(index_path, contigs)
    chr1 = genome["chrI"]
    # 30 foreign bases then the contig's first 70; the contig's last 70 then 30 foreign bases
    head = "ACGTTGCAAC" * 3 + chr1[:70]
    tail = chr1[-70:] + "TTGACCAGTA" * 3
    res = al.align(ragged([head, tail]))
    f = res.primary.fields
    assert f["position"][0] == 0 and res.primary.cigars[0].endswith(b"70M")
    assert res.primary.cigars[0].startswith(b"30S") or res.primary.cigars[0].startswith(b"2")
    assert f["position"][1] == len(chr1) - 70
    assert res.primary.cigars[1] == b"70M30S"
    for i, s in enumerate((head, tail)):
        nm, md = check_record(chr1, int(f["position"][i]), res.primary.cigars[i].decode(), s)
        assert tags(res, i)["MD"] == md


def test_repeat_gets_low_mapq(tmp_path, contigs, genome) -> None:
    # a reference with one 300-bp segment twice: reads inside it have two equal places
    seg = genome["chrI"][50000:50300]
    fa = tmp_path / "rep.fa"
    a = genome["chrI"][:20000]
    b = genome["chrIII"][:20000]
    fa.write_text(f">a\n{a[:8000]}{seg}{a[8000:]}\n>b\n{b[:5000]}{seg}{b[5000:]}\n")
    path = tmp_path / "rep.snapidx"
    sb.build_index(fa, path, "s20")
    opts = AlignerOptions(preset="s20")
    al = make_aligner("snap", sb.load_index(path, opts), read_contig_table(fa).contigs, opts)
    res = al.align(ragged([seg[100:200], a[1000:1100]]))
    f = res.primary.fields
    assert f["mapq"][0] <= 3 and not f["flag"][0] & 0x4
    assert f["mapq"][1] == 70


def test_pairs_flags_mate_fields_tlen(index_path, contigs, genome) -> None:
    al = aligner(index_path, contigs)
    chr3 = genome["chrIII"]
    frag = chr3[20000:20350]                     # a 350-bp fragment
    r1, r2 = frag[:100], revcomp(frag[-100:])    # FR pair
    rng = np.random.default_rng(5)
    junk = "".join("ACGT"[int(x)] for x in rng.integers(0, 4, 100))
    far = revcomp(chr3[90000:90100])             # mates 70 kb apart: not proper
    reads = [r1, r2, r2, r1, r1, junk, r1, far]
    res = al.align(ragged(reads), paired=True)
    f = res.primary.fields
    c3 = [c.name for c in contigs].index("chrIII")
    # pair 1: read 1 forward at 20000, read 2 reverse at 20250, TLEN +-350
    assert list(f[0]) == [99, 70, c3, 20000, c3, 20250, 350]
    assert list(f[1]) == [147, 70, c3, 20250, c3, 20000, -350]
    # pair 2: the same fragment with the mates swapped
    assert f["flag"][2] == 83 and f["flag"][3] == 163 and f["template_length"][2] == -350
    # pair 3: read 2 unmappable: placed at its mate, flags 0x8 / 0x4
    assert f["flag"][4] == 0x1 | 0x40 | 0x8 and f["position"][4] == 20000 and f["next_position"][4] == 20000
    assert f["flag"][5] == 0x1 | 0x80 | 0x4 and f["ref_index"][5] == c3 and f["position"][5] == 20000
    assert res.primary.cigars[5] == b""
    assert tags(res, 5) == {"MC": "100M", "MQ": str(f["mapq"][4])}
    # pair 4: mapped apart, not proper; MAPQ divided by 3 (single-end fallback)
    assert f["flag"][6] == 0x1 | 0x40 | 0x20 and f["flag"][7] == 0x1 | 0x80 | 0x10
    assert f["template_length"][6] == 90100 - 20000 and f["mapq"][6] <= 23
    assert tags(res, 0)["MC"] == "100M" and tags(res, 0)["MQ"] == "70"


def test_deterministic_across_threads_and_blocks(index_path, contigs, genome) -> None:
    al = aligner(index_path, contigs)
    rng = np.random.default_rng(11)
    reads = [r[3] for r in sample_reads(genome, rng, 600)]
    reads = [_mutate(r, rng) if i % 3 else r for i, r in enumerate(reads)]
    whole = al.align(ragged(reads), paired=True)
    parts = [reads[i:i + 100] for i in range(0, len(reads), 100)]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda p: al.align(ragged(p), paired=True), parts))
    for k, g in enumerate(got):
        sl = slice(100 * k, 100 * (k + 1))
        assert np.array_equal(g.primary.fields, whole.primary.fields[sl])
        assert [g.primary.cigars[i] for i in range(100)] == [whole.primary.cigars[i] for i in range(sl.start, sl.stop)]
        assert [bytes(g.primary.tags[i]) for i in range(100)] == \
            [bytes(whole.primary.tags[i]) for i in range(sl.start, sl.stop)]


def test_options_checked(index_path, contigs) -> None:
    with pytest.raises(AlignerError, match="unknown snap option"):
        aligner(index_path, contigs, bogus=1)
    with pytest.raises(AlignerError, match="max_spacing"):
        aligner(index_path, contigs, min_spacing=500, max_spacing=100)
    al = aligner(index_path, contigs, max_dist=2)
    assert al.params["max_dist"] == 2 and al.params["max_hits"] == 300
    with pytest.raises(AlignerError, match="secondary_edit_delta"):
        aligner(index_path, contigs, secondary_edit_delta=61)
    assert aligner(index_path, contigs).params["secondary_edit_delta"] == 2
    with pytest.raises(ValueError, match="max_secondary"):
        sb._kernel().Mapper(sb.load_index(index_path, AlignerOptions(preset="s20")).index, max_secondary=-1)


def _wgsim(tmp: Path, n: int) -> tuple[Path, Path]:
    exe = require_tool("wgsim")
    ref = tmp / "ref.fa"
    with gzip.open(REF, "rb") as f:
        ref.write_bytes(f.read())
    r1, r2 = tmp / "w1.fq", tmp / "w2.fq"
    subprocess.run([exe, "-S", "7", "-N", str(n), "-1", "101", "-2", "101", "-e", "0.002", "-r", "0.001",
                    "-R", "0.15", str(ref), str(r1), str(r2)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return r1, r2


def _score_sam(path: Path) -> tuple[float, float]:
    """(correct with MAPQ >= 10, wrong among MAPQ >= 10) of the primary records of a wgsim SAM."""
    n = hq = hq_ok = 0
    with pysam.AlignmentFile(str(path)) as f:
        for r in f:
            if r.is_secondary or r.is_supplementary:
                continue
            n += 1
            if r.is_unmapped or r.mapping_quality < 10:
                continue
            m = re.match(r"(.+)_(\d+)_(\d+)_", r.query_name)
            hq += 1
            hq_ok += r.reference_name == m.group(1) and (abs(r.reference_start + 1 - int(m.group(2))) <= 20
                                                         or abs(r.reference_end - int(m.group(3))) <= 20)
    return hq_ok / n, (hq - hq_ok) / max(hq, 1)


def test_accuracy_beside_snap_aligner(tmp_path: Path) -> None:
    """4,000 wgsim pairs (0.1 % SNPs, 15 % of them indels): ours end to end (import, reference add,
    align, export) against snap-aligner paired on the same reads, same seed length."""
    from persona.cli import main

    r1, r2 = _wgsim(tmp_path, 4000)
    refs = tmp_path / "refs"
    assert main(["reference", "add", "y", str(REF), "--aligner", "snap", "--preset", "s20",
                 "--store", str(refs), "-q"]) == 0
    assert main(["import", "-q", "-o", str(tmp_path / "ds"), "-n", "w", str(r1), str(r2)]) == 0
    assert main(["align", str(tmp_path / "ds"), "-n", "w", "-r", "y", "--aligner", "snap", "--preset", "s20",
                 "--store", str(refs), "-t", "2", "-q"]) == 0
    bam = tmp_path / "ours.bam"
    assert main(["export", str(tmp_path / "ds"), "-n", "w", str(bam), "-q"]) == 0
    samtools = require_tool("samtools")
    subprocess.run([samtools, "quickcheck", str(bam)], check=True)
    ours = _score_sam(bam)
    assert ours[0] >= 0.95, ours  # the sanity bar: >= 95 % correct at MAPQ >= 10
    snap = require_tool("snap-aligner")
    subprocess.run([snap, "index", str(tmp_path / "ref.fa"), str(tmp_path / "sidx"), "-s", "20"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([snap, "paired", str(tmp_path / "sidx"), str(r1), str(r2), "-o", str(tmp_path / "snap.sam"),
                    "-t", "2"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs = _score_sam(tmp_path / "snap.sam")
    assert ours[0] >= theirs[0] - 0.005, (ours, theirs)
    assert ours[1] <= theirs[1] + 0.001, (ours, theirs)


def test_threads_give_identical_results(tmp_path: Path) -> None:
    """``persona align --aligner snap`` with 1 and 2 threads: identical results columns."""
    from persona.agd import Dataset
    from persona.cli import main

    y = small_sets()["yeast"]
    refs = tmp_path / "refs"
    assert main(["reference", "add", "y", str(REF), "--aligner", "snap", "--store", str(refs), "-q"]) == 0
    out = []
    for t in ("1", "2"):
        ds = tmp_path / f"ds{t}"
        assert main(["import", "-q", "-o", str(ds), "-n", "y", "-c", "500", str(y["r1"]), str(y["r2"])]) == 0
        assert main(["align", str(ds), "-n", "y", "-r", "y", "--aligner", "snap", "--store", str(refs),
                     "-t", t, "--work-item-reads", "300", "-q"]) == 0
        d = Dataset.open(str(ds), "y")
        out.append([d.read_column(i, "results") for i in range(len(d.chunks))])
    assert len(out[0]) > 1
    for a, b in zip(*out):
        assert a == b


# -- secondary alignments (SNAP's -om / -omax: --secondary N, align.snap.secondary_edit_delta) ---------

@pytest.fixture(scope="module")
def dup_ref(tmp_path_factory, genome):
    """A reference holding one 300-bp segment twice: exactly in contig a, with one substitution (at
    segment offset 150) in contig b."""
    tmp = tmp_path_factory.mktemp("snapdup")
    seg = genome["chrI"][50000:50300]
    seg_b = seg[:150] + ("A" if seg[150] != "A" else "C") + seg[151:]
    a = genome["chrI"][:20000]
    b = genome["chrIII"][:20000]
    fa = tmp / "dup.fa"
    fa.write_text(f">a\n{a[:8000]}{seg}{a[8000:]}\n>b\n{b[:5000]}{seg_b}{b[5000:]}\n")
    path = tmp / "dup.snapidx"
    sb.build_index(fa, path, "s20")
    seqs = {"a": a[:8000] + seg + a[8000:], "b": b[:5000] + seg_b + b[5000:]}
    return {"fa": fa, "index": path, "seg": seg, "seqs": seqs, "contigs": read_contig_table(fa).contigs}


def _dup_aligner(dup_ref, secondary: int, **extra):
    opts = AlignerOptions(preset="s20", secondary=secondary, extra=extra)
    return make_aligner("snap", sb.load_index(dup_ref["index"], opts), dup_ref["contigs"], opts)


def _sec_tags(col, i: int) -> dict[str, str]:
    raw = bytes(col.tags[i])
    text = bam_kernel.aux_text(np.frombuffer(raw, dtype=np.uint8)).decode() if raw else ""
    return {t[:2]: t[5:] for t in text.split("\t") if t}


def test_secondary_is_the_other_copy(dup_ref) -> None:
    seg, seqs = dup_ref["seg"], dup_ref["seqs"]
    read = seg[100:200]                       # covers the substitution of copy b
    unique = seqs["a"][1000:1100]
    al = _dup_aligner(dup_ref, 2)
    for rev in (False, True):
        res = al.align(ragged([revcomp(read) if rev else read, unique]))
        assert len(res.secondary) == 2
        p, s = res.primary.fields[0], res.secondary[0].fields[0]
        # primary: the exact copy in a (0 edits); secondary: copy b, 1 substitution, flag 0x100
        assert (p["ref_index"], p["position"], p["flag"]) == (0, 8100, 16 if rev else 0)
        assert res.secondary[0].present[0] and not res.secondary[1].present[0]
        assert (s["ref_index"], s["position"], s["flag"], s["mapq"]) == (1, 5100, 0x100 | (16 if rev else 0), 0)
        cigar = res.secondary[0].cigars[0].decode()
        assert cigar == "100M"
        nm, md = check_record(seqs["b"], 5100, cigar, read)  # SEQ as SAM stores it: reference strand
        t = _sec_tags(res.secondary[0], 0)
        assert (nm, t["NM"], t["MD"]) == (1, "1", md) and md == f"50{seqs['b'][5150]}49"
        assert int(t["AS"]) == 99 - 4 and "MC" not in t
        # a unique read has none: absent rows, zero-length records
        assert not res.secondary[0].present[1] and res.secondary[0].cigars[1] == b""
        assert bytes(res.secondary[0].tags[1]) == b""
    # the default (no --secondary) reports none; a delta of 0 leaves out the 1-edit copy
    assert _dup_aligner(dup_ref, 0).align(ragged([read])).secondary == []
    res0 = _dup_aligner(dup_ref, 2, secondary_edit_delta=0).align(ragged([read]))
    assert not res0.secondary[0].present[0]
    # the primary record is the same with and without secondaries
    plain = _dup_aligner(dup_ref, 0).align(ragged([read, unique]))
    with_sec = al.align(ragged([read, unique]))
    assert np.array_equal(plain.primary.fields, with_sec.primary.fields)
    assert [bytes(plain.primary.tags[i]) for i in range(2)] == [bytes(with_sec.primary.tags[i]) for i in range(2)]


def test_pair_secondaries_are_per_mate(dup_ref) -> None:
    seqs = dup_ref["seqs"]
    # mate 1 inside the duplicated segment (before the substitution: both copies exact), mate 2 after it:
    # the pair decides the primary, the other copy is mate 1's secondary
    frag = seqs["a"][8050:8400]
    r1, r2 = frag[:100], revcomp(frag[-100:])
    res = _dup_aligner(dup_ref, 1).align(ragged([r1, r2]), paired=True)
    f, s = res.primary.fields, res.secondary[0]
    assert [f[0][k] for k in ("flag", "ref_index", "position", "next_position", "template_length")] == \
        [99, 0, 8050, 8300, 350]
    assert f["flag"][1] == 147 and f["position"][1] == 8300
    # mate 1's other place (copy b, 1 substitution) is its secondary; its mate fields name mate 2's
    # primary record; not a proper pair (another contig), no MC/MQ
    assert s.present[0] and not s.present[1]
    assert list(s.fields[0]) == [0x1 | 0x40 | 0x20 | 0x100, 0, 1, 5050, 0, 8300, 0]
    cigar = s.cigars[0].decode()
    nm, md = check_record(seqs["b"], 5050, cigar, r1)
    t = _sec_tags(s, 0)
    assert (cigar, int(t["NM"]), t["MD"]) == ("100M", nm, md) == ("100M", 0, "100")
    assert "MC" not in t and "MQ" not in t


def test_secondaries_export_valid_sam(tmp_path: Path) -> None:
    """Real yeast pairs aligned with ``--secondary 2``: samtools and Picard accept the export."""
    from persona.cli import main

    y = small_sets()["yeast"]
    refs = tmp_path / "refs"
    assert main(["reference", "add", "y", str(REF), "--aligner", "snap", "--store", str(refs), "-q"]) == 0
    ds = tmp_path / "ds"
    assert main(["import", "-q", "-o", str(ds), "-n", "y", "-c", "2000", str(y["r1"]), str(y["r2"])]) == 0
    assert main(["align", str(ds), "-n", "y", "-r", "y", "--aligner", "snap", "--store", str(refs),
                 "--secondary", "2", "-q"]) == 0
    bam = tmp_path / "out.bam"
    assert main(["export", str(ds), str(bam), "-n", "y", "--secondary-seq", "--rg-platform", "ILLUMINA", "-q"]) == 0
    subprocess.run([require_tool("samtools"), "quickcheck", str(bam)], check=True)
    recs = list(pysam.AlignmentFile(str(bam), "rb", check_sq=False).fetch(until_eof=True))
    sec = [r for r in recs if r.is_secondary]
    assert len(sec) > 100 and all(r.mapping_quality == 0 and r.has_tag("MD") for r in sec)
    assert len(recs) - len(sec) == 2 * sum(1 for _ in gzip.open(y["r1"], "rt")) // 4
    require_tool("PicardCommandLine")
    proc = subprocess.run(["PicardCommandLine", "ValidateSamFile", f"I={bam}", "MODE=VERBOSE",
                           "MAX_OUTPUT=100000"], capture_output=True, text=True, check=False)
    problems = [ln for ln in proc.stdout.splitlines() if ln.startswith(("ERROR", "WARNING"))]
    assert problems == [] and "No errors found" in proc.stdout, (problems[:5], proc.stderr[-2000:])


# -- index build in bounded memory -----------------------------------------------------------------

@pytest.mark.parametrize("preset", ["s20", "s28"])   # 32-bit keys packed with values / wide keys
def test_index_build_in_passes_is_byte_identical(tmp_path: Path, preset: str) -> None:
    one, many = tmp_path / "one.snapidx", tmp_path / "many.snapidx"
    s1 = sb.build_index(REF, one, preset, memory_mb=1024)
    s2 = sb.build_index(REF, many, preset, memory_mb=1)   # ~1 MB of seeds a pass: several passes
    assert s1["passes"] == 1 and s2["passes"] >= 5 and s1["seeds"] == s2["seeds"] > 700_000
    assert one.read_bytes() == many.read_bytes()
    with pytest.raises(AlignerError, match="memory budget"):
        sb.build_index(REF, tmp_path / "x.snapidx", preset, memory_mb=0)


def test_plan_passes_cover_every_seed_in_order() -> None:
    hist = np.array([5, 0, 3, 9, 1, 0, 0, 2], dtype=np.uint64)
    passes = sb.plan_passes(hist, 4, 8)
    # consecutive ranges from 0 to the end of the value space, none over budget unless one bin is
    assert passes == [(0, 48, 8), (48, 64, 9), (64, 128, 3)]
    assert sb.plan_passes(hist, 4, 1000) == [(0, 128, 20)]


def test_short_single_reads_placed_after_the_short_read_stop(index_path, contigs, genome) -> None:
    """50-bp single-end reads (two seeds a pass: the search stops after two passes once the best location
    has <= 1 edit): exact and one-substitution reads are placed at their origin, NM/MD/AS exact."""
    al = aligner(index_path, contigs)
    rng = np.random.default_rng(23)
    reads = sample_reads(genome, rng, 400, length=50)
    seqs = []
    for i, (c, p, rev, r) in enumerate(reads):
        if i % 2:   # one substitution, away from the ends
            j = int(rng.integers(5, 45))
            r = r[:j] + "ACGT"[("ACGT".index(r[j]) + 1) % 4] + r[j + 1:]
        seqs.append(r)
    res = al.align(ragged(seqs))
    f = res.primary.fields
    placed = 0
    for i, (c, p, rev, _) in enumerate(reads):
        assert not f["flag"][i] & 0x4, i
        name = contigs[f["ref_index"][i]].name
        seq = revcomp(seqs[i]) if f["flag"][i] & 0x10 else seqs[i]
        nm, md = check_record(genome[name], int(f["position"][i]), res.primary.cigars[i].decode(), seq)
        t = tags(res, i)
        assert (int(t["NM"]), t["MD"]) == (nm, md) and nm <= i % 2, (i, t)
        if name == c and f["position"][i] == p:
            placed += 1
        else:       # another exact (or as good) copy: then the MAPQ says so
            assert f["mapq"][i] < 10, i
    assert placed >= 380
