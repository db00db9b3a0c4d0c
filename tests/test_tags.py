"""Standard SAM tags computed in the aligner kernel, stored in AGD ``tags`` columns and exported.

Against the minimap2 binary on the same reads and reference (``minimap2 -a -x sr --MD``):
NM, MD, AS and minimap2's other tags per record, supplementary records and their SA tags;
MC/MQ against the mates we wrote; Picard ``ValidateSamFile`` in its default mode; and
``samtools stats`` error rate / mismatches within 1 % of minimap2's BAM.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pysam
import pytest

from conftest import require_tool

from persona._native import bam as bam_kernel
from persona.agd import Dataset
from persona.agd.columns import column_sort_key, is_tags_column, tags_column
from persona.agd.ragged import RaggedArray
from persona.agd.records import FLAG_SECONDARY, FLAG_SUPPLEMENTARY, Alignments
from persona.align.reference import add_reference
from persona.apps.align import align_dataset
from persona.apps.export_sam import export_sam
from persona.apps.import_fastq import import_fastq
from persona.formats.bam import encode_records

pytestmark = pytest.mark.small_data

CHUNK_PAIRS = 20000
#: minimap2's per-record tags we compute (MD: minimap2 omits a final 0 after a last mismatch; we don't)
MM2_TAGS = ("NM", "MD", "AS", "ms", "nn", "tp", "cm", "s1", "s2", "de", "rl")


@pytest.fixture(scope="module")
def run(yeast, tmp_path_factory) -> dict[str, Path]:
    """The yeast pairs (100,000; 4,000 in the small fixtures) aligned by persona (default options) and
    by the minimap2 binary. The whole set, because supplementary alignments are rare there (7)."""
    mm2 = require_tool("minimap2")
    samtools = require_tool("samtools")
    tmp = tmp_path_factory.mktemp("tags")
    r1, r2 = yeast["r1"], yeast["r2"]
    import_fastq(r1, r2, out=tmp / "ds", name="yeast", chunk_size=CHUNK_PAIRS)
    add_reference("sacCer3", yeast["ref"], tmp / "refs")
    align_dataset(tmp / "ds", "sacCer3", references_url=tmp / "refs")
    export_sam(tmp / "ds", tmp / "ours.bam")
    export_sam(tmp / "ds", tmp / "ours.sam", fmt="sam")
    with open(tmp / "theirs.sam", "wb") as out:
        subprocess.run([mm2, "-a", "-x", "sr", "--MD", "-t", "2", str(yeast["ref"]), str(r1), str(r2)],
                       stdout=out, stderr=subprocess.DEVNULL, check=True)
    subprocess.run([samtools, "view", "-b", "-o", str(tmp / "theirs.bam"), str(tmp / "theirs.sam")], check=True)
    return {"tmp": tmp, "ds": tmp / "ds", "ours": tmp / "ours.bam", "ours_sam": tmp / "ours.sam",
            "theirs": tmp / "theirs.bam"}


def records(path: Path) -> dict[tuple[str, int], pysam.AlignedSegment]:
    """Non-secondary records by (name, flag & (read1|read2|supplementary), contig, position)."""
    out = {}
    with pysam.AlignmentFile(str(path), check_sq=False) as f:
        for r in f:
            if r.flag & FLAG_SECONDARY:
                continue
            out[(r.query_name, r.flag & 0x8C0, r.reference_id, r.reference_start)] = r
    return out


def n_supplementary(path: Path) -> int:
    with pysam.AlignmentFile(str(path), check_sq=False) as f:
        return sum(1 for r in f if r.flag & FLAG_SUPPLEMENTARY)


def norm_md(md: str) -> str:
    return md + "0" if md and not md[-1].isdigit() else md


def test_columns_and_layout(run) -> None:
    ds = Dataset.open(run["ds"])
    assert "tags" in ds.columns
    extra = [c for c in ds.columns if c.startswith("secondary") and not is_tags_column(c)]
    if n_supplementary(run["theirs"]):
        assert extra, "default align keeps supplementary alignments in secondary<N> columns"
    assert all(tags_column(c) in ds.columns for c in extra)
    assert ds.columns == sorted(ds.columns, key=column_sort_key)
    for i in range(len(ds.chunks)):
        tags = ds.read_column(i, "tags")
        assert len(tags) == ds.chunks[i].num_records
        for c in extra:
            al = ds.read_column(i, c)
            t = ds.read_column(i, tags_column(c))
            lengths = t.offsets[1:] - t.offsets[:-1]
            assert (lengths[~al.present] == 0).all() and (lengths[al.present] > 0).all()


def test_tags_match_minimap2(run) -> None:
    ours, theirs = records(run["ours"]), records(run["theirs"])
    common = ours.keys() & theirs.keys()
    mapped = [k for k in common if not ours[k].is_unmapped]
    assert len(mapped) > 0.85 * len(theirs)
    bad: dict[str, int] = {}
    for k in mapped:
        a, b = ours[k], theirs[k]
        for t in MM2_TAGS:
            va = a.get_tag(t) if a.has_tag(t) else None
            vb = b.get_tag(t) if b.has_tag(t) else None
            if t == "MD" and vb is not None:
                vb = norm_md(vb)
            if t == "de" and va is not None and vb is not None:
                same = abs(va - vb) < 1e-6
            else:
                same = va == vb
            if not same:
                bad[t] = bad.get(t, 0) + 1
    # every tag of every record agrees (placements are the binary's: read names break ties)
    assert not bad, f"{bad} of {len(mapped)} records differ"
    # unmapped records carry rl only (plus RG), as minimap2's do
    for k in common:
        if ours[k].is_unmapped and ours[k].mate_is_unmapped:
            assert {t for t, _ in ours[k].get_tags()} == {"RG", "rl"}


def test_supplementary_and_sa(run) -> None:
    def supp(path: Path) -> dict[tuple, str]:
        with pysam.AlignmentFile(str(path), check_sq=False) as f:
            # minimap2 hard-clips supplementary records unless -Y; ours soft-clip (as -Y)
            return {(r.query_name, r.flag, r.reference_id, r.reference_start, r.cigarstring.replace("H", "S")):
                    r.get_tag("SA")
                    for r in f if r.flag & FLAG_SUPPLEMENTARY}

    ours, theirs = supp(run["ours"]), supp(run["theirs"])
    if not theirs:
        pytest.skip("minimap2 finds no supplementary alignment in this sample (the small fixture)")
    assert ours == theirs
    # the primary of a read with supplementary alignments names them in SA, as minimap2's does
    o, t = records(run["ours"]), records(run["theirs"])
    sa_o = {k: r.get_tag("SA") for k, r in o.items() if r.has_tag("SA") and not r.flag & FLAG_SUPPLEMENTARY}
    sa_t = {k: r.get_tag("SA") for k, r in t.items() if r.has_tag("SA") and not r.flag & FLAG_SUPPLEMENTARY}
    assert sa_o == sa_t and sa_o


def test_mate_cigar_and_mapq(run) -> None:
    primaries: dict[tuple[str, int], pysam.AlignedSegment] = {}
    with pysam.AlignmentFile(str(run["ours"]), check_sq=False) as f:
        for r in f:
            if not r.flag & (FLAG_SECONDARY | FLAG_SUPPLEMENTARY):
                primaries[(r.query_name, 1 if r.is_read1 else 2)] = r
    n_mc = 0
    for (name, seg), r in primaries.items():
        mate = primaries[(name, 3 - seg)]
        if mate.is_unmapped:
            assert not r.has_tag("MC") and not r.has_tag("MQ")
            continue
        assert r.get_tag("MC") == mate.cigarstring
        assert r.get_tag("MQ") == mate.mapping_quality
        n_mc += 1
    assert n_mc > len(primaries) // 2


def test_sam_text_equals_bam(run) -> None:
    samtools = require_tool("samtools")
    view = subprocess.run([samtools, "view", str(run["ours"])], capture_output=True, check=True).stdout
    ours = b"".join(ln for ln in Path(run["ours_sam"]).read_bytes().splitlines(keepends=True)
                    if not ln.startswith(b"@"))
    assert ours == view


def test_picard_default_mode(run) -> None:
    picard = require_tool("PicardCommandLine")
    v = subprocess.run([picard, "ValidateSamFile", f"I={run['ours']}", "MODE=SUMMARY"],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr[-3000:]
    assert "No errors found" in v.stdout


def stats(path: Path) -> dict[str, float]:
    samtools = require_tool("samtools")
    out = subprocess.run([samtools, "stats", str(path)], capture_output=True, text=True, check=True).stdout
    sn = {}
    for line in out.splitlines():
        if line.startswith("SN\t"):
            key, value = line.split("\t")[1:3]
            sn[key.rstrip(":")] = float(value)
    return sn


def test_samtools_stats_error_rate(run) -> None:
    ours, theirs = stats(run["ours"]), stats(run["theirs"])
    assert theirs["mismatches"] > 0
    assert abs(ours["mismatches"] - theirs["mismatches"]) <= 0.01 * theirs["mismatches"]
    assert abs(ours["error rate"] - theirs["error rate"]) <= 0.01 * theirs["error rate"]


# -- the kernels' tag handling, without data sets ------------------------------------------------



def test_aux_text_renders_every_type() -> None:
    import struct

    aux = (b"NMC\x05" + b"xsc\xfe" + b"ySS\x00\x10" + b"zIi\xff\xff\xff\xff" + b"tpAP" + b"def" + struct.pack("<f", 0.25)
           + b"MDZ10A5\x00" + b"HxH1AE3\x00" + b"BaBs" + struct.pack("<I", 2) + struct.pack("<hh", -1, 300))
    text = bam_kernel.aux_text(np.frombuffer(aux, np.uint8))
    assert text == (b"\tNM:i:5\txs:i:-2\tyS:i:4096\tzI:i:-1\ttp:A:P\tde:f:0.25\tMD:Z:10A5\tHx:H:1AE3"
                    b"\tBa:B:s,-1,300")
    for broken in (b"NM", b"NMC", b"MDZ10A", b"BaBs\x05\x00\x00\x00\x01\x00", b"NMq\x01", b"1Mi\x01\x00\x00\x00"):
        with pytest.raises(ValueError):
            bam_kernel.aux_text(np.frombuffer(broken, np.uint8))


def test_bam_and_sam_carry_tags(tmp_path) -> None:
    names = RaggedArray.from_list([b"r1", b"r2"])
    bases = RaggedArray.from_list([b"ACGT", b"ACGT"])
    quals = RaggedArray.from_list([b"IIII", b"IIII"])
    al = Alignments.empty(2)
    al.tags = RaggedArray.from_list([b"NMC\x01MDZ2A1\x00", b""])
    data, offsets = encode_records(names, bases, quals, al, 1, "g")
    import struct

    from persona.formats.bam import header_block
    from persona.formats import bgzf

    hdr = header_block("@HD\tVN:1.6\n@SQ\tSN:c\tLN:100\n@RG\tID:g\tSM:s\n", [("c", 100)])
    p = tmp_path / "x.bam"
    p.write_bytes(bgzf.compress_blocks(hdr, 6) + bgzf.compress_blocks(bytes(data), 6) + bgzf.EOF_BLOCK)
    with pysam.AlignmentFile(str(p)) as f:
        recs = list(f)
    assert recs[0].get_tags() == [("RG", "g"), ("NM", 1), ("MD", "2A1")]
    assert recs[1].get_tags() == [("RG", "g")]
    from persona.formats.sam import contig_names, format_records

    text = format_records(names, bases, quals, al, contig_names([("c", 100)]), "g")
    assert text.splitlines()[0].endswith(b"\tRG:Z:g\tNM:i:1\tMD:Z:2A1")
    # a record with its own RG (an imported BAM's per-read group) keeps it and gets no other
    al.tags = RaggedArray.from_list([b"RGZown\x00NMC\x01", b""])
    data, _ = encode_records(names, bases, quals, al, 1, "g")
    p.write_bytes(bgzf.compress_blocks(hdr, 6) + bgzf.compress_blocks(bytes(data), 6) + bgzf.EOF_BLOCK)
    with pysam.AlignmentFile(str(p)) as f:
        assert [r.get_tags() for r in f] == [[("RG", "own"), ("NM", 1)], [("RG", "g")]]
    text = format_records(names, bases, quals, al, contig_names([("c", 100)]), "g")
    assert text.splitlines()[0].endswith(b"\tACGT\tIIII\tRG:Z:own\tNM:i:1")
    al.tags = RaggedArray.from_list([b"NMC", b""])
    with pytest.raises(ValueError, match="record 0: malformed optional tags"):
        encode_records(names, bases, quals, al, 1, "g")
    _ = struct
