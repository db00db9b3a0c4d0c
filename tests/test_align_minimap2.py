"""minimap2 backend: concordance with the minimap2 binary on real reads, odd reads, options."""
from __future__ import annotations

import gzip
import itertools
import subprocess
from pathlib import Path

import numpy as np
import pysam
import pytest
from conftest import require_tool

from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.agd.records import FLAG_PAIRED, FLAG_UNMAPPED
from persona.align.base import AlignerOptions, make_aligner
from persona.align.fasta import read_contig_table
from persona.align.minimap2 import build_index, load_index
from persona.errors import AlignerError

N_PAIRS = 5000


def head_fastq(path: Path, n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` records of a FASTQ.gz as (name, seq, qual)."""
    out = []
    with gzip.open(path, "rt") as f:
        for lines in itertools.islice(zip(*[f] * 4), n):
            out.append((lines[0][1:].split()[0], lines[1].strip(), lines[3].strip()))
    return out


def write_fastq(path: Path, recs: list[tuple[str, str, str]]) -> None:
    path.write_text("".join(f"@{n}\n{s}\n+\n{q}\n" for n, s, q in recs))


def aligner_for(fasta: Path, tmp: Path, options: AlignerOptions | None = None):
    options = options or AlignerOptions()
    mmi = tmp / f"{fasta.name}.mmi"
    if not mmi.exists():
        build_index(fasta, mmi, options.preset)
    contigs = read_contig_table(fasta).contigs
    return make_aligner("minimap2", load_index(mmi, options), contigs, options)


def binary_primaries(ref: Path, fq: list[Path], tmp: Path) -> list[pysam.AlignedSegment]:
    exe = require_tool("minimap2")
    sam = tmp / "bin.sam"
    with open(sam, "wb") as out:
        subprocess.run([exe, "-a", "-x", "sr", "-t", "1", str(ref), *map(str, fq)], stdout=out,
                       stderr=subprocess.DEVNULL, check=True)
    with pysam.AlignmentFile(str(sam)) as f:
        return [r for r in f if not (r.is_secondary or r.is_supplementary)]


def compare(res, recs: list[pysam.AlignedSegment]) -> dict[str, float]:
    """Share of reads on which each field agrees with the binary's SAM."""
    f = res.primary.fields
    cig = res.primary.cigars
    assert len(f) == len(recs)
    agree = dict.fromkeys(["position", "flag", "mapq", "cigar", "mate", "tlen"], 0)
    for i, r in enumerate(recs):
        row = f[i]
        agree["position"] += (int(row["ref_index"]), int(row["position"])) == (r.reference_id, r.reference_start)
        agree["flag"] += int(row["flag"]) == r.flag
        agree["mapq"] += int(row["mapq"]) == r.mapping_quality
        agree["cigar"] += (cig[i].decode() or None) == r.cigarstring
        agree["mate"] += (int(row["next_ref_index"]), int(row["next_position"])) == (
            r.next_reference_id, r.next_reference_start)
        agree["tlen"] += int(row["template_length"]) == r.template_length
    return {k: v / len(recs) for k, v in agree.items()}


@pytest.mark.tools
@pytest.mark.parametrize("dataset", ["yeast", "human"])
@pytest.mark.small_data
def test_paired_concordance_with_minimap2_binary(dataset: str, request, tmp_path: Path) -> None:
    files = request.getfixturevalue(dataset)
    r1, r2 = head_fastq(files["r1"], N_PAIRS), head_fastq(files["r2"], N_PAIRS)
    write_fastq(tmp_path / "r1.fq", r1)
    write_fastq(tmp_path / "r2.fq", r2)
    al = aligner_for(files["ref"], tmp_path)
    bases = RaggedArray.from_list([s for a, b in zip(r1, r2) for s in (a[1], b[1])])
    names = RaggedArray.from_list([n for a, b in zip(r1, r2) for n in (a[0], b[0])])
    res = al.align(bases, None, names, paired=True)
    agree = compare(res, binary_primaries(files["ref"], [tmp_path / "r1.fq", tmp_path / "r2.fq"], tmp_path))
    assert agree["position"] >= 0.999, agree
    for k in ("flag", "mapq", "cigar", "mate", "tlen"):
        assert agree[k] >= 0.995, agree
    mapped = ~(res.primary.fields["flag"] & FLAG_UNMAPPED).astype(bool)
    assert mapped.mean() > 0.9
    assert any(b"S" in c for c in res.primary.cigars)  # soft clips are rebuilt


@pytest.mark.tools
@pytest.mark.small_data
def test_single_end_concordance(measles, tmp_path: Path) -> None:
    r1 = head_fastq(measles["r1"], 3000)
    write_fastq(tmp_path / "r1.fq", r1)
    al = aligner_for(measles["ref"], tmp_path)
    res = al.align(RaggedArray.from_list([s for _, s, _ in r1]), None, RaggedArray.from_list([n for n, _, _ in r1]))
    agree = compare(res, binary_primaries(measles["ref"], [tmp_path / "r1.fq"], tmp_path))
    assert all(v >= 0.999 for v in agree.values()), agree
    assert not (res.primary.fields["flag"] & FLAG_PAIRED).any()


@pytest.mark.small_data
def test_odd_reads_come_back_unmapped(measles, tmp_path: Path) -> None:
    al = aligner_for(measles["ref"], tmp_path)
    good = head_fastq(measles["r1"], 1)[0][1]
    reads = [b"", b"ACGT", b"N" * 150, good.encode(), b"ACGTACGTAC"]
    res = al.align(RaggedArray.from_list(reads))
    flags = res.primary.fields["flag"]
    assert list(flags & FLAG_UNMAPPED) == [4, 4, 4, 0, 4]
    assert res.primary.cigars[0] == b"" and res.primary.fields["ref_index"][0] == -1
    # pairs with an empty / unseedable mate: the other mate still maps, flags stay SAM-consistent
    pairs = RaggedArray.from_list([good, b"", b"ACG", good])
    pres = al.align(pairs, paired=True).primary.fields
    assert list(pres["flag"]) == [0x1 | 0x8 | 0x40 | (pres["flag"][0] & 0x10), 0x1 | 0x4 | 0x80 | (pres["flag"][1] & 0x20),
                                  0x1 | 0x4 | 0x40 | (pres["flag"][2] & 0x20), 0x1 | 0x8 | 0x80 | (pres["flag"][3] & 0x10)]
    # the unmapped mate is placed at its mapped mate
    assert (pres["ref_index"][1], pres["position"][1]) == (pres["ref_index"][0], pres["position"][0])


@pytest.mark.small_data
def test_paired_block_must_be_even(measles, tmp_path: Path) -> None:
    al = aligner_for(measles["ref"], tmp_path)
    with pytest.raises(AlignerError, match="odd number"):
        al.align(RaggedArray.from_list([b"ACGT"] * 3), paired=True)
    with pytest.raises(AlignerError, match="quality records"):
        al.align(RaggedArray.from_list([b"ACGT"] * 2), RaggedArray.from_list([b"IIII"]))


@pytest.mark.small_data
def test_secondary_columns_and_options(human, tmp_path: Path) -> None:
    recs = head_fastq(human["r1"], 2000)
    al = aligner_for(human["ref"], tmp_path, AlignerOptions(secondary=2))
    res = al.align(RaggedArray.from_list([s for _, s, _ in recs]))
    assert len(res.secondary) == 2 and all(len(s) == len(recs) for s in res.secondary)
    sec = res.secondary[0].fields
    has = res.secondary[0].present
    assert has.any() and not has.all()  # repeats in the slice give some secondaries
    assert (((sec["flag"] & 0x4) == 0) == has).all()
    assert ((sec["flag"][has] & 0x900) != 0).all()  # secondary or supplementary
    assert (sec["flag"][~has] == 0x4).all() and (sec["ref_index"][~has] == -1).all()  # ABSENT_ROW
    with pytest.raises(AlignerError, match="unknown minimap2 option"):
        aligner_for(human["ref"], tmp_path, AlignerOptions(extra={"no_such": 1}))
    with pytest.raises(AlignerError, match="preset"):
        AlignerOptions(preset="")
    # a pass-through option changes the result: a huge min_chain_score maps nothing
    strict = aligner_for(human["ref"], tmp_path, AlignerOptions(extra={"min_chain_score": 10_000}))
    assert (strict.align(RaggedArray.from_list([recs[0][1]])).primary.fields["flag"] & 4).all()


@pytest.mark.small_data
def test_contig_table_must_match_index(measles, human, tmp_path: Path) -> None:
    mmi = tmp_path / "m.mmi"
    build_index(measles["ref"], mmi)
    idx = load_index(mmi, AlignerOptions())
    with pytest.raises(Exception, match="contig"):
        make_aligner("minimap2", idx, [Contig("chrX", 10, 0)], AlignerOptions())
    assert np.array_equal(
        read_contig_table(measles["ref"]).contigs[0].length, idx.lengths[0])
