"""minibwa backend: index bundle, tags against samtools calmd, agreement with `bwa mem`, pairs,
odd reads, determinism, options, and the CLI end to end."""
from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pysam
import pytest
from conftest import require_tool, small_sets

from persona.agd.ragged import RaggedArray
from persona.agd.records import FLAG_SUPPLEMENTARY, FLAG_UNMAPPED
from persona.align.base import AlignerOptions, AlignResult, make_aligner
from persona.align.fasta import read_contig_table
from persona.errors import AlignerError, ReferenceNotFoundError

pytest.importorskip("minibwa", reason="the minibwa extra is not installed: pip install 'persona-genomics[minibwa]'")

from persona.align import minibwa_backend as mbb  # noqa: E402

N_PAIRS = 5000
_INDEXES: dict[Path, Path] = {}


def head_fastq(path: Path, n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` records of a FASTQ.gz as (name, seq, qual)."""
    with gzip.open(path, "rt") as f:
        return [(ls[0][1:].split()[0], ls[1].strip(), ls[3].strip()) for ls in itertools.islice(zip(*[f] * 4), n)]


def write_fastq(path: Path, recs: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(f"@{n}\n{s}\n+\n{q}\n" for n, s, q in recs))
    return path


def bundle(fasta: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The minibwa index bundle of ``fasta``, built once per session."""
    if fasta not in _INDEXES:
        out = tmp_path_factory.mktemp("mbwa") / f"{fasta.name}{mbb.INDEX_SUFFIX}"
        mbb.build_index(fasta, out)
        _INDEXES[fasta] = out
    return _INDEXES[fasta]


def aligner_for(fasta: Path, tmp_path_factory: pytest.TempPathFactory, options: AlignerOptions | None = None):
    options = options or AlignerOptions()
    idx = mbb.load_index(bundle(fasta, tmp_path_factory), options)
    return make_aligner("minibwa", idx, read_contig_table(fasta).contigs, options)


def ragged(items: list[str]) -> RaggedArray:
    return RaggedArray.from_list([s.encode() for s in items])


def interleave(r1, r2) -> tuple[RaggedArray, RaggedArray]:
    seqs, names = [], []
    for a, b in zip(r1, r2):
        seqs += [a[1], b[1]]
        names += [a[0], b[0]]
    return ragged(seqs), ragged(names)


def bwa_index(ref: Path) -> Path:
    """``bwa index`` of ``ref``, kept in ~/.cache/persona/test-bwa (by the FASTA's SHA-256): indexing
    the whole sacCer3 takes bwa ~15 s of CPU, once."""
    digest = hashlib.sha256(ref.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "persona" / "test-bwa" / digest
    local = cache / "ref.fa"
    if not (cache / "ref.fa.sa").exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        with (gzip.open(ref, "rb") if ref.suffix == ".gz" else open(ref, "rb")) as src, \
                open(tmp / "ref.fa", "wb") as dst:
            shutil.copyfileobj(src, dst)
        subprocess.run([require_tool("bwa"), "index", str(tmp / "ref.fa")], check=True, capture_output=True)
        for f in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".sa"):  # .sa last: it marks completion
            os.replace(f, cache / f.name)
        tmp.rmdir()
    return local


def bwa_primaries(ref: Path, fqs: list[Path], tmp: Path) -> list[pysam.AlignedSegment]:
    """``bwa mem`` (Debian bwa) primaries of the reads in ``fqs``, in input order."""
    exe = require_tool("bwa")
    local = bwa_index(ref)
    sam = tmp / "bwa.sam"
    with open(sam, "wb") as out:
        subprocess.run([exe, "mem", "-t", "2", str(local), *map(str, fqs)], stdout=out, stderr=subprocess.DEVNULL,
                       check=True)
    with pysam.AlignmentFile(str(sam)) as f:
        return [r for r in f if not (r.is_secondary or r.is_supplementary)]


def agreement(res: AlignResult, recs: list[pysam.AlignedSegment]) -> tuple[int, dict[str, float]]:
    """Among reads both place with MAPQ >= 20: how many, and the share agreeing on each field."""
    f = res.primary.fields
    assert len(f) == len(recs)
    both = [i for i, r in enumerate(recs) if not r.is_unmapped and r.mapping_quality >= 20
            and not f[i]["flag"] & FLAG_UNMAPPED and f[i]["mapq"] >= 20]
    agree = dict.fromkeys(["position", "flag", "flag_no_proper", "mate", "tlen"], 0)
    for i in both:
        row, r = f[i], recs[i]
        agree["position"] += (int(row["ref_index"]), int(row["position"])) == (r.reference_id, r.reference_start)
        agree["flag"] += int(row["flag"]) == r.flag
        agree["flag_no_proper"] += (int(row["flag"]) | 2) == (r.flag | 2)
        agree["mate"] += (int(row["next_ref_index"]), int(row["next_position"])) == (
            r.next_reference_id, r.next_reference_start)
        agree["tlen"] += int(row["template_length"]) == r.template_length
    return len(both), {k: v / max(1, len(both)) for k, v in agree.items()}


# ------------------------------------------------------------------------------------------- index
@pytest.mark.small_data
def test_bundle_holds_the_reference_as_minibwa_sees_it(measles, tmp_path_factory) -> None:
    path = bundle(measles["ref"], tmp_path_factory)
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == sorted(["index.mbw", "index.l2b", "reference.seq", "meta.json"])
        seq = tar.extractfile("reference.seq").read()  # type: ignore[union-attr]
    text = "".join(l.strip() for l in open(measles["ref"]) if not l.startswith(">")).upper().encode()
    assert seq == bytes(b if b in b"ACGT" else ord("N") for b in text)
    idx = mbb.load_index(path, AlignerOptions())
    assert idx.contigs == [(c.name, c.length) for c in read_contig_table(measles["ref"]).contigs]


def test_bad_bundle_and_options_are_refused(tmp_path: Path, measles, tmp_path_factory) -> None:
    bad = tmp_path / "bad.mbwa.tar"
    bad.write_bytes(b"not a tar")
    with pytest.raises(ReferenceNotFoundError, match="unreadable minibwa index bundle"):
        mbb.load_index(bad, AlignerOptions())
    with tarfile.open(tmp_path / "partial.tar", "w") as tar:
        tar.add(measles["ref"], arcname="index.l2b")
    with pytest.raises(ReferenceNotFoundError, match="lacks index.mbw"):
        mbb.load_index(tmp_path / "partial.tar", AlignerOptions())
    with pytest.raises(AlignerError, match="unknown minibwa option"):
        mbb.load_index(bundle(measles["ref"], tmp_path_factory), AlignerOptions(extra={"k": 3}))
    with pytest.raises(AlignerError, match="pe_insert"):
        mbb.check_options(AlignerOptions(extra={"pe_insert": [300, 30, 400, 200]}))
    with pytest.raises(AlignerError, match="unknown minibwa preset"):
        mbb.build_index(measles["ref"], tmp_path / "x", preset="map-ont")


# -------------------------------------------------------------------------------------- alignments
def check_against_bwa(files: dict[str, Path], n_pairs: int, tmp_path: Path, tmp_path_factory) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    r1, r2 = head_fastq(files["r1"], n_pairs), head_fastq(files["r2"], n_pairs)
    fq = [write_fastq(tmp_path / "r1.fq", r1), write_fastq(tmp_path / "r2.fq", r2)]
    recs = bwa_primaries(files["ref"], fq, tmp_path)
    bases, names = interleave(r1, r2)
    res = aligner_for(files["ref"], tmp_path_factory).align(bases, names=names, paired=True)
    n, share = agreement(res, recs)
    assert n >= 0.8 * len(recs), n
    # FLAG includes 0x2: minibwa's predefined insert-size bounds (50..800) vs bwa's estimated ones
    assert share["position"] >= 0.99 and share["flag"] >= 0.99, share
    assert share["mate"] >= 0.99 and share["tlen"] >= 0.99, share


@pytest.mark.tools
@pytest.mark.parametrize("dataset", ["yeast", "human"])
def test_fixture_pairs_agree_with_bwa_mem(dataset: str, tmp_path: Path, tmp_path_factory) -> None:
    """On tests/fixtures (always there): flags and positions agree with bwa mem for >= 99 % of the
    reads both place with MAPQ >= 20."""
    check_against_bwa(small_sets()[dataset], N_PAIRS, tmp_path, tmp_path_factory)


@pytest.mark.tools
@pytest.mark.slow
def test_full_yeast_and_human_agree_with_bwa_mem(yeast, human, tmp_path: Path, tmp_path_factory) -> None:
    """The same on the full sets of ../shared/data (bwa's index of sacCer3 is cached, see bwa_index)."""
    check_against_bwa(yeast, 10000, tmp_path / "y", tmp_path_factory)
    check_against_bwa(human, 10000, tmp_path / "h", tmp_path_factory)


def test_pair_records_are_consistent(tmp_path_factory) -> None:
    """Mate fields, TLEN and the proper flag mirror each other within every pair; MC/MQ name the mate."""
    files = small_sets()["human"]
    r1, r2 = head_fastq(files["r1"], 1000), head_fastq(files["r2"], 1000)
    bases, names = interleave(r1, r2)
    res = aligner_for(files["ref"], tmp_path_factory).align(bases, names=names, paired=True)
    f, cig = res.primary.fields, res.primary.cigars
    assert res.primary.tags is not None
    proper = 0
    for i in range(0, len(f), 2):
        a, b = f[i], f[i + 1]
        assert a["flag"] & 0x41 == 0x41 and b["flag"] & 0x81 == 0x81
        assert (a["flag"] & 2) == (b["flag"] & 2)
        proper += bool(a["flag"] & 2)
        for x, y, j in ((a, b, i), (b, a, i + 1)):
            if not y["flag"] & FLAG_UNMAPPED:
                assert (x["next_ref_index"], x["next_position"]) == (y["ref_index"], y["position"])
                assert bool(x["flag"] & 0x20) == bool(y["flag"] & 0x10)
                tags = pysam_tags(res.primary.tags[j])
                assert tags["MC"] == cig[j ^ 1].decode() and tags["MQ"] == y["mapq"]
        if not (a["flag"] | b["flag"]) & FLAG_UNMAPPED and a["ref_index"] == b["ref_index"]:
            assert a["template_length"] == -b["template_length"]
    assert proper >= 0.9 * len(f) // 2


def pysam_tags(aux: bytes) -> dict[str, object]:
    """BAM aux bytes (Z and integer types) -> {tag: value}."""
    buf = bytearray(aux)
    out: dict[str, object] = {}
    i = 0
    while i < len(buf):
        tag, typ = buf[i : i + 2].decode(), chr(buf[i + 2])
        i += 3
        if typ == "Z":
            end = buf.index(0, i)
            out[tag] = buf[i:end].decode()
            i = end + 1
        else:
            fmt = {"c": "<b", "C": "<B", "s": "<h", "S": "<H", "i": "<i", "I": "<I"}[typ]
            size = struct.calcsize(fmt)
            out[tag] = struct.unpack(fmt, bytes(buf[i : i + size]))[0]
            i += size
    return out


def test_supplementary_alignment_and_sa_tags(tmp_path_factory) -> None:
    """A chimeric read (two distant pieces of the genome): primary + supplementary with soft clips,
    SA on both, each naming the other; NM/MD/AS on both."""
    ref = small_sets()["measles"]["ref"]
    genome = "".join(l.strip() for l in open(ref) if not l.startswith(">")).upper()
    comp = str.maketrans("ACGT", "TGCA")
    read = genome[2000:2080] + genome[9000:9070].translate(comp)[::-1]
    al = aligner_for(ref, tmp_path_factory)
    res = al.align(ragged([read]), names=ragged(["chimera"]))
    p = res.primary.fields[0]
    assert not p["flag"] & FLAG_UNMAPPED
    extra = [(c.fields[0], c.cigars[0].decode(), c.tags[0]) for c in res.secondary if c.present[0]]
    supp = [e for e in extra if e[0]["flag"] & FLAG_SUPPLEMENTARY]
    assert len(supp) == 1
    s_row, s_cig, s_tags = supp[0]
    starts = sorted([int(p["position"]), int(s_row["position"])])
    assert starts == [2000, 9000]
    assert "S" in res.primary.cigars[0].decode() and "S" in s_cig
    pt, st = pysam_tags(res.primary.tags[0]), pysam_tags(s_tags)
    assert pt["SA"].startswith(f"MH356245.1,{s_row['position'] + 1},") and pt["SA"].endswith(";")
    assert st["SA"].startswith(f"MH356245.1,{p['position'] + 1},")
    assert pt["NM"] == st["NM"] == 0 and pt["AS"] > 0 and st["AS"] > 0


@pytest.mark.small_data
def test_odd_reads_come_back_unmapped(measles, tmp_path_factory) -> None:
    al = aligner_for(measles["ref"], tmp_path_factory)
    good = head_fastq(measles["r1"], 1)[0][1]
    reads = ["", "N" * 80, "ACGT", good, "A"]
    res = al.align(ragged(reads))
    flags = res.primary.fields["flag"]
    assert [bool(x & FLAG_UNMAPPED) for x in flags] == [True, True, True, False, True]
    assert [res.primary.cigars[i] for i in (0, 1, 2, 4)] == [b""] * 4
    assert res.primary.tags[0] == b"" and b"MDZ" in res.primary.tags[3]
    # pairs: an empty mate, an all-N mate; the other mate is aligned alone, the pair is not proper
    res = al.align(ragged(["", good, "N" * 50, good]), paired=True)
    f = res.primary.fields
    assert f[0]["flag"] & FLAG_UNMAPPED and not f[1]["flag"] & FLAG_UNMAPPED
    assert f[0]["flag"] & 0x8 == 0 and f[1]["flag"] & 0x8  # mate unmapped bits
    assert (f[0]["ref_index"], f[0]["position"]) == (f[1]["ref_index"], f[1]["position"])  # placed at its mate
    assert not any(x & 2 for x in f["flag"])
    mc = pysam_tags(res.primary.tags[0])
    assert mc["MC"] == res.primary.cigars[1].decode()  # the unmapped mate's record names its mate's CIGAR
    with pytest.raises(AlignerError, match="odd number"):
        al.align(ragged(["ACGT"] * 3), paired=True)


@pytest.mark.small_data
def test_results_are_pure_per_read(yeast, tmp_path_factory) -> None:
    """Byte-identical records and tags whatever the block boundaries and the number of threads."""
    from persona.align.executor import AlignerExecutor

    r1, r2 = head_fastq(yeast["r1"], 1500), head_fastq(yeast["r2"], 1500)
    bases, names = interleave(r1, r2)
    al = aligner_for(yeast["ref"], tmp_path_factory, AlignerOptions(secondary=2))
    n = len(bases)
    whole = al.align(bases, names=names, paired=True)
    ex = AlignerExecutor(3)
    try:
        pieces = ex.align(al, bases, names=names, paired=True, work_item_reads=214)
    finally:
        ex.close()
    single_whole = al.align(bases, names=names)
    single_pieces = AlignResult.concat([al.align(bases.slice(lo, min(lo + 333, n)),
                                                 names=names.slice(lo, min(lo + 333, n))) for lo in range(0, n, 333)])
    for whole, res in ((whole, pieces), (single_whole, single_pieces)):
        assert np.array_equal(whole.primary.fields, res.primary.fields)
        assert list(whole.primary.cigars) == list(res.primary.cigars)
        assert list(whole.primary.tags) == list(res.primary.tags)
        assert len(whole.secondary) == len(res.secondary) >= 2
        for a, b in zip(whole.secondary, res.secondary):
            assert np.array_equal(a.present, b.present)
            assert np.array_equal(a.fields[a.present], b.fields[b.present])
            assert list(a.tags) == list(b.tags)


def test_options_and_with_options(tmp_path_factory) -> None:
    ref = small_sets()["measles"]["ref"]
    al = aligner_for(ref, tmp_path_factory, AlignerOptions(extra={"pe_insert": [300, 50, 100, 600]}))
    two = al.with_options(AlignerOptions(secondary=2, extra={"pe_insert": [300, 50, 100, 600]}))
    assert two.options.secondary == 2 and two._index is al._index  # the loaded index is shared
    with pytest.raises(AlignerError, match="fixed when the index is loaded"):
        al.with_options(AlignerOptions(extra={"min_seed_len": 15}))


@pytest.mark.tools
def test_cli_end_to_end_samtools_accepts_and_calmd_agrees(tmp_path: Path, capsys) -> None:
    """`persona reference add --aligner minibwa`, import, `persona align --aligner minibwa`, export:
    samtools reads the SAM, and `samtools calmd` recomputes the same NM and MD on every record."""
    from persona.cli import main

    samtools = require_tool("samtools")
    files = small_sets()["yeast"]
    refs, ds = tmp_path / "refs", tmp_path / "ds"
    assert main(["reference", "add", "ysub", str(files["ref"]), "--aligner", "minibwa", "--store", str(refs)]) == 0
    assert main(["import", str(files["r1"]), str(files["r2"]), "-o", str(ds), "-n", "y", "-c", "3000"]) == 0
    assert main(["align", str(ds), "-r", "ysub", "--aligner", "minibwa", "--store", str(refs), "-t", "2"]) == 0
    sam = tmp_path / "out.sam"
    assert main(["export", str(ds), str(sam), "-f", "sam"]) == 0
    capsys.readouterr()
    assert subprocess.run([samtools, "quickcheck", str(sam)]).returncode == 0
    flagstat = subprocess.run([samtools, "flagstat", str(sam)], capture_output=True, text=True, check=True).stdout
    assert "8000 + 0 primary" in flagstat
    fa = tmp_path / "ref.fa"
    with gzip.open(files["ref"], "rb") as src, open(fa, "wb") as dst:
        shutil.copyfileobj(src, dst)
    # calmd reloads the reference at every change of contig: give it the records sorted
    ordered = subprocess.run([samtools, "sort", "-O", "sam", str(sam)], capture_output=True, text=True,
                             check=True).stdout
    calmd = subprocess.run([samtools, "calmd", "-", str(fa)], input=ordered, capture_output=True, text=True,
                           check=True)

    def nm_md(text: str) -> list[tuple[str | None, str | None]]:
        out = []
        for line in text.splitlines():
            if line.startswith("@"):
                continue
            tags = {t[:2]: t[5:] for t in line.split("\t")[11:]}
            out.append((tags.get("NM"), tags.get("MD")))
        return out

    ours, theirs = nm_md(ordered), nm_md(calmd.stdout)
    assert len(ours) >= 8000 and ours == theirs
    assert sum(md is not None for _, md in ours) > 7000


@pytest.mark.small_data
def test_hot_path_gives_what_the_general_path_gives(human, tmp_path_factory, monkeypatch) -> None:
    """Reads with one record each take an inlined path; it must build the very rows and tags the
    general path (pairing.add_chosen_pair + per-record tags) builds."""
    r1, r2 = head_fastq(human["r1"], 800), head_fastq(human["r2"], 800)
    bases, names = interleave(r1, r2)
    al = aligner_for(human["ref"], tmp_path_factory)
    fast_p, fast_s = al.align(bases, names=names, paired=True), al.align(bases, names=names)
    monkeypatch.setattr(al, "_simple", lambda raw, read: None)
    slow_p, slow_s = al.align(bases, names=names, paired=True), al.align(bases, names=names)
    for fast, slow in ((fast_p, slow_p), (fast_s, slow_s)):
        assert np.array_equal(fast.primary.fields, slow.primary.fields)
        assert list(fast.primary.cigars) == list(slow.primary.cigars)
        assert list(fast.primary.tags) == list(slow.primary.tags)
        assert len(fast.secondary) == len(slow.secondary)
        for a, b in zip(fast.secondary, slow.secondary):
            assert np.array_equal(a.present, b.present) and list(a.tags) == list(b.tags)


def test_reference_store_without_local_files(tmp_path_factory) -> None:
    """From a store with no local paths (memory://) the bundle is copied to a scratch file that is
    removed after loading: the memory-mapped reference bases must outlive it."""
    from persona.align.reference import ReferenceCache, add_reference
    from persona.storage.memory import MemoryStore

    ref = small_sets()["measles"]["ref"]
    url = "memory://minibwa-test-refs"
    try:
        info = add_reference("measles", ref, url, aligner="minibwa")
        assert info.indexes["minibwa-sr"]["key"].endswith(mbb.INDEX_SUFFIX)
        cache = ReferenceCache()
        held = cache.acquire("measles", url, aligner="minibwa")
        try:
            genome = "".join(l.strip() for l in open(ref) if not l.startswith(">")).upper()
            read = genome[5000:5060] + ("A" if genome[5060] != "A" else "C") + genome[5061:5100]
            res = held.aligner.align(ragged([read]))
            tags = pysam_tags(res.primary.tags[0])
            assert res.primary.fields[0]["position"] == 5000
            assert tags["NM"] == 1 and tags["MD"] == f"60{genome[5060]}39"
        finally:
            cache.release(held)
    finally:
        MemoryStore.drop("minibwa-test-refs")
