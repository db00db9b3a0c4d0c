"""AGD -> SAM/BAM export, checked with samtools and Picard on real data.

Round trip BAM -> AGD -> BAM is record-identical in SAM columns 1-11; optional
tags are not compared because AGD has no tag column (only RG:Z is written).
"""
from __future__ import annotations

import gzip
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pysam
import pytest

from conftest import require_tool
from persona.agd.dataset import Dataset, DatasetWriter
from persona.agd.ragged import RaggedArray
from persona.agd.records import ALIGNMENT_DTYPE, Alignments
from persona.apps.export_sam import ExportSummary, export_sam
from persona.apps.import_sam import import_sam
from persona.errors import ConfigError, DatasetError

# Picard check types ignored, and why:
# MISSING_TAG_NM (a WARNING): AGD keeps no optional tags, so the NM tags of an imported BAM are
# not written back. Our aligner-independent export has no reference to recompute them.
IGNORED_FOR_IMPORTED_BAM = ["MISSING_TAG_NM"]


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def picard_validate(bam: Path, *ignore: str) -> list[str]:
    """ValidateSamFile MODE=VERBOSE: every ERROR/WARNING line, sorted."""
    require_tool("PicardCommandLine")
    args = ["PicardCommandLine", "ValidateSamFile", f"I={bam}", "MODE=VERBOSE", "MAX_OUTPUT=1000000"]
    args += [f"IGNORE={t}" for t in ignore]
    proc = subprocess.run(args, capture_output=True, text=True)
    lines = sorted(l for l in proc.stdout.splitlines() if l.startswith(("ERROR", "WARNING")))
    if not lines:
        assert "No errors found" in proc.stdout, proc.stdout + proc.stderr
    return lines


def columns_1_11(bam: Path) -> list[str]:
    require_tool("samtools")
    return ["\t".join(l.split("\t")[:11]) for l in sh("samtools", "view", str(bam)).splitlines()]


def read_fastq(path: Path, n: int) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    with gzip.open(path, "rb") as f:
        while len(out) < n:
            head, seq, _, qual = (f.readline().rstrip(b"\n") for _ in range(4))
            if not head:
                break
            out.append((head[1:], seq, qual))
    return out


def unaligned_dataset(root: Path, r1: Path, r2: Path | None, n: int, name: str) -> Path:
    """An unaligned AGD dataset (interleaved if r2), written with DatasetWriter like a FASTQ import."""
    reads = read_fastq(r1, n)
    if r2 is not None:
        mates = read_fastq(r2, n)
        reads = [r for pair in zip(reads, mates) for r in pair]
    with DatasetWriter(root, name, paired=r2 is not None) as w:
        for first in range(0, len(reads), 600):  # several chunks
            part = reads[first : first + 600]
            w.write_chunk(first, {"metadata": RaggedArray.from_list([r[0] for r in part]),
                                  "base": RaggedArray.from_list([r[1] for r in part]),
                                  "qual": RaggedArray.from_list([r[2] for r in part])})
        w.commit()  # the manifest's default sort order, "queryname", as the original's import
    return root


@pytest.fixture(scope="module")
def human_agd(human, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("human_agd")
    import_sam(human["bam"], out=out, chunk_size=16_000)
    return out


@pytest.fixture(scope="module")
def human_export(human_agd, tmp_path_factory) -> tuple[ExportSummary, Path]:
    out = tmp_path_factory.mktemp("human_bam") / "out.bam"
    summary = export_sam(human_agd, out, threads=2, read_group={"ID": "NA12878", "SM": "NA12878"},
                         command_line="persona export test")
    return summary, out


def test_summary_and_header(human_export):
    summary, out = human_export
    assert (summary.records, summary.chunks, summary.format) == (52_035, 4, "bam")
    assert summary.bytes_written == out.stat().st_size > 0
    assert not out.with_name("out.bam.partial").exists()
    with pysam.AlignmentFile(str(out), "rb") as f:
        h = f.header.to_dict()
    assert h["HD"] == {"VN": "1.6", "SO": "unknown"}  # the input had no @HD
    assert len(h["SQ"]) == 25 and h["SQ"][20] == {"SN": "chr20", "LN": 63_025_520}
    assert h["RG"] == [{"ID": "NA12878", "SM": "NA12878", "PL": "ILLUMINA"}]  # PL defaults to ILLUMINA
    # the @PG chain: the import that made the dataset, then this export, linked by PP
    assert h["PG"][-1] == {"ID": "persona", "PN": "persona", "PP": "persona-import", "VN": "0.1.0",
                           "CL": "persona export test"}
    # the input BAM's own @PG chain comes first (kept at import), then the import
    assert [pg["ID"] for pg in h["PG"]] == ["bwa", "persona-import", "persona"]
    assert h["PG"][1]["PP"] == "bwa"


@pytest.mark.tools
def test_bam_round_trip_is_record_identical(human_export, human):
    _, out = human_export
    require_tool("samtools")
    subprocess.run(["samtools", "quickcheck", "-v", str(out)], check=True)
    want, got = columns_1_11(human["bam"]), columns_1_11(out)
    assert len(got) == 52_035
    assert got == want
    assert sum(c - 1 for c in Counter(got).values()) == 111  # the exactly repeated records survive
    # optional fields come back too (kept in the tags column at import), in any order
    theirs = [sorted(l.split("\t")[11:]) for l in sh("samtools", "view", str(human["bam"])).splitlines()]
    ours = [sorted(l.split("\t")[11:]) for l in sh("samtools", "view", str(out)).splitlines()]
    assert ours == theirs
    assert any("MD:Z:" in " ".join(t) for t in ours[:10])


@pytest.mark.tools
@pytest.mark.small_data
def test_picard_reports_only_what_the_input_has(human_export, human):
    """Picard's findings on our BAM equal those on the input (orphan mates, mate mismatches
    left by the region extraction), line by line, apart from the NM tags we cannot carry."""
    _, out = human_export
    ours = picard_validate(out, *IGNORED_FOR_IMPORTED_BAM)
    # the input's @RG has no PL; ours gets the default PL:ILLUMINA, so that finding is theirs only
    theirs = [ln for ln in picard_validate(human["bam"]) if not ln.startswith("ERROR::MISSING_PLATFORM_VALUE")]
    assert ours == theirs
    assert any("MATE_NOT_FOUND" in l for l in ours)


@pytest.mark.tools
def test_sam_text_equals_samtools_view_of_our_bam(human_agd, human_export, tmp_path):
    _, bam = human_export
    sam = tmp_path / "out.sam"
    s = export_sam(human_agd, sam, fmt="sam", read_group={"ID": "NA12878", "SM": "NA12878"},
                   command_line="persona export test")
    assert s.records == 52_035
    assert sam.read_text() == sh("samtools", "view", "-h", "--no-PG", str(bam))


@pytest.mark.small_data
def test_threads_and_levels(human_agd, human_export, tmp_path):
    _, bam = human_export
    again = tmp_path / "t0.bam"
    export_sam(human_agd, again, threads=0, read_group={"ID": "NA12878", "SM": "NA12878"},
               command_line="persona export test")
    assert again.read_bytes() == bam.read_bytes()  # same bytes whatever the thread count
    fast = tmp_path / "l1.bam"
    export_sam(human_agd, fast, threads=1, level=1, read_group={"ID": "NA12878", "SM": "NA12878"},
               command_line="persona export test")
    assert gzip.decompress(fast.read_bytes()) == gzip.decompress(bam.read_bytes())


@pytest.mark.small_data
def test_reimport_gives_the_same_dataset(human_agd, human_export, tmp_path):
    _, bam = human_export
    import_sam(bam, out=tmp_path / "again", name="again", chunk_size=16_000)
    a, b = Dataset.open(human_agd), Dataset.open(tmp_path / "again")
    for i in range(len(a.chunks)):
        ca, cb = a.read_chunk(i), b.read_chunk(i)
        for col in ("base", "qual", "metadata", "results"):
            assert ca[col] == cb[col], (i, col)


@pytest.mark.tools
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.small_data
def test_unaligned_export_flags_and_picard_clean(human, tmp_path, paired):
    root = unaligned_dataset(tmp_path / "ds", human["r1"], human["r2"] if paired else None, 1000, "reads")
    out = tmp_path / "reads.bam"
    s = export_sam(root, out, threads=1, read_group={"PL": "ILLUMINA", "LB": "lib1"})
    assert s.records == (2000 if paired else 1000)
    assert s.sort_order == "queryname"  # the human FASTQ is name-sorted, so the label holds
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as f:
        assert f.header.to_dict()["RG"] == [{"ID": "reads", "SM": "reads", "LB": "lib1", "PL": "ILLUMINA"}]
        recs = list(f.fetch(until_eof=True))
    want_flags = [77, 141] * 1000 if paired else [4] * 1000
    assert [r.flag for r in recs] == want_flags
    assert all(r.reference_name is None and r.reference_start == -1 and r.cigarstring is None for r in recs)
    assert all(r.mapping_quality == 0 and r.next_reference_id == -1 for r in recs)
    first = read_fastq(human["r1"], 1)[0]
    assert recs[0].query_name == first[0].decode() and recs[0].query_sequence == first[1].decode()
    assert sh("samtools", "view", str(out)).splitlines()[0].split("\t")[2:4] == ["*", "0"]
    assert picard_validate(out) == []


@pytest.mark.tools
@pytest.mark.small_data
def test_unaligned_unsorted_names_are_not_labelled_queryname(yeast, tmp_path):
    root = unaligned_dataset(tmp_path / "ds", yeast["r1"], yeast["r2"], 1500, "yeast")
    assert Dataset.open(root).manifest.sort == "queryname"
    out = tmp_path / "yeast.bam"
    s = export_sam(root, out, threads=2, read_group={"PL": "ILLUMINA"})
    assert s.sort_order == "unsorted"
    # reads keep their import order, mates together: grouped by query name (GO:query), not sorted
    assert sh("samtools", "view", "-H", str(out)).splitlines()[0] == "@HD\tVN:1.6\tSO:unsorted\tGO:query"
    assert picard_validate(out) == []


@pytest.mark.tools
@pytest.mark.small_data
def test_default_read_group_passes_picard(human, tmp_path):
    """Without any read group option the @RG gets PL:ILLUMINA (Picard 2.27 requires a PL), so the
    default export validates; `persona info` says the platform was assumed."""
    root = unaligned_dataset(tmp_path / "ds", human["r1"], human["r2"], 200, "reads")
    out = tmp_path / "reads.bam"
    export_sam(root, out)
    assert picard_validate(out) == []
    from persona.apps.info import dataset_info, format_info

    assert "PL:ILLUMINA (assumed" in format_info(dataset_info(str(root)))


@pytest.mark.small_data
def test_read_group_options(human, tmp_path):
    root = unaligned_dataset(tmp_path / "ds", human["r1"], None, 10, "reads")
    sam = tmp_path / "x.sam"
    export_sam(root, sam, fmt="sam", read_group={"id": "g1", "sample": "NA12878", "library": "L", "platform": "ILLUMINA"})
    text = sam.read_text().splitlines()
    assert "@RG\tID:g1\tSM:NA12878\tLB:L\tPL:ILLUMINA" in text
    assert all(l.endswith("\tRG:Z:g1") for l in text if not l.startswith("@"))
    with pytest.raises(ConfigError, match="read group"):
        export_sam(root, sam, read_group={"ID": "has space"})
    with pytest.raises(ConfigError, match="unknown read group option"):
        export_sam(root, sam, read_group={"bad tag": "1"})
    export_sam(root, sam, fmt="sam", read_group={"ID": "g2", "PU": "flowcell1.lane2", "CN": "centre"})
    assert "@RG\tID:g2\tSM:reads\tPL:ILLUMINA\tPU:flowcell1.lane2\tCN:centre" in sam.read_text().splitlines()
    with pytest.raises(ConfigError, match="format"):
        export_sam(root, tmp_path / "x.cram", fmt="cram")


def test_bad_results_name_chunk_and_record_and_leave_nothing(tmp_path):
    fields = np.zeros(3, ALIGNMENT_DTYPE)
    fields["ref_index"] = [0, 0, 5]  # only one contig in the manifest
    fields["next_ref_index"] = -1
    cig = RaggedArray.from_list([b"2M", b"2M", b"2M"])
    with DatasetWriter(tmp_path / "ds", "bad", columns=["base", "qual", "metadata", "results"]) as w:
        w.write_chunk(0, {"base": RaggedArray.from_list([b"AC"] * 3), "qual": RaggedArray.from_list([b"II"] * 3),
                          "metadata": RaggedArray.from_list([b"a", b"b", b"c"]), "results": Alignments(fields, cig)})
        w.commit(reference_contigs=[{"name": "c1", "length": 100, "index": 0}], sort="unsorted")
    for fmt in ("bam", "sam"):
        out = tmp_path / f"bad.{fmt}"
        with pytest.raises(DatasetError, match=r"record 2: ref_index.*bad_0\.results"):
            export_sam(tmp_path / "ds", out, fmt=fmt)
        assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_dataset_without_reads_or_contigs_is_refused(tmp_path):
    fields = np.zeros(1, ALIGNMENT_DTYPE)
    with DatasetWriter(tmp_path / "a", "nometa", columns=["base", "qual", "results"]) as w:
        w.write_chunk(0, {"base": [b"A"], "qual": [b"I"], "results": Alignments(fields, RaggedArray.from_list([b"1M"]))})
        w.commit(reference_contigs=[{"name": "c1", "length": 100, "index": 0}])
    with pytest.raises(DatasetError, match="metadata"):
        export_sam(tmp_path / "a", tmp_path / "a.bam")
    with DatasetWriter(tmp_path / "b", "nocontigs", columns=["base", "qual", "metadata", "results"]) as w:
        w.write_chunk(0, {"base": [b"A"], "qual": [b"I"], "metadata": [b"r"],
                          "results": Alignments(fields, RaggedArray.from_list([b"1M"]))})
        w.commit()
    with pytest.raises(DatasetError, match="reference_contigs"):
        export_sam(tmp_path / "b", tmp_path / "b.bam")
    assert not re.search("partial", " ".join(p.name for p in tmp_path.iterdir()))


@pytest.mark.slow
@pytest.mark.tools
def test_fastq_import_then_export_is_picard_clean(yeast, tmp_path):
    """The real FASTQ importer's dataset (100k pairs, labelled queryname, names not sorted)."""
    from persona.apps.import_fastq import import_fastq

    import_fastq(yeast["r1"], yeast["r2"], out=tmp_path / "ds", name="yeast", chunk_size=30_000)
    out = tmp_path / "yeast.bam"
    s = export_sam(tmp_path / "ds", out, threads=2, read_group={"PL": "ILLUMINA"})
    assert s.records == 200_000 and s.sort_order == "unsorted"
    assert picard_validate(out) == []
    flags = Counter(int(l.split("\t")[1]) for l in sh("samtools", "view", str(out)).splitlines())
    assert flags == {77: 100_000, 141: 100_000}


@pytest.mark.tools
def test_coordinate_sorted_export_is_indexable(human, tmp_path):
    """SO:coordinate survives the round trip (imported in file order: without collating the pairs)
    and our bins let samtools index and query the BAM."""
    require_tool("samtools")
    sorted_in = tmp_path / "in.bam"
    subprocess.run(["samtools", "sort", "-o", str(sorted_in), str(human["bam"])], check=True, capture_output=True)
    import_sam(sorted_in, out=tmp_path / "ds", chunk_size=10_000, collate=False)
    out = tmp_path / "out.bam"
    s = export_sam(tmp_path / "ds", out, threads=2)
    assert s.sort_order == "coordinate"
    subprocess.run(["samtools", "index", str(out)], check=True)
    subprocess.run(["samtools", "index", str(sorted_in)], check=True)
    for region in ("chr20:10000000-10000500", "chr20:10050000-10090000", "chr20:9999000-9999950"):
        want = columns_1_11_region(sorted_in, region)
        assert want and columns_1_11_region(out, region) == want


def columns_1_11_region(bam: Path, region: str) -> list[str]:
    return ["\t".join(l.split("\t")[:11]) for l in sh("samtools", "view", str(bam), region).splitlines()]
