"""SAM/BAM -> AGD import on the real human chr20 BAM and on hand-written SAM edge cases."""
from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pysam
import pytest

from persona.agd.dataset import Dataset
from persona.agd.format import ChunkHeader, CompressionType
from persona.apps.import_sam import ImportSummary, import_sam
from persona.errors import DatasetError, InputFormatError
from persona.formats.bgzf import EOF_BLOCK

HEADER = "@HD\tVN:1.6\tSO:{so}\n@SQ\tSN:c1\tLN:1000\tUR:file:///refs/c.fa\n@SQ\tSN:c2\tLN:500\n"


def write_sam(path: Path, so: str, lines: list[str], header: str | None = None) -> Path:
    path.write_text((HEADER.format(so=so) if header is None else header) + "".join(l + "\n" for l in lines))
    return path


def fastq_reads(path: Path) -> dict[str, tuple[bytes, bytes]]:
    with gzip.open(path, "rb") as f:
        lines = f.read().split(b"\n")
    return {lines[i][1:].split()[0].decode(): (lines[i + 1], lines[i + 3]) for i in range(0, len(lines) - 3, 4)}


def all_records(ds: Dataset, columns: list[str]) -> dict[str, list]:
    out: dict[str, list] = {c: [] for c in columns}
    for i in range(len(ds.chunks)):
        chunk = ds.read_chunk(i, columns)
        for c in columns:
            v = chunk[c]
            out[c].extend(v.fields.tolist() if c == "results" else list(v))
    return out


@pytest.fixture(scope="module")
def human_ds(human, tmp_path_factory) -> tuple[ImportSummary, Dataset]:
    out = tmp_path_factory.mktemp("human")
    summary = import_sam(human["bam"], out=out, chunk_size=20_000)
    return summary, Dataset.open(out)


def test_human_bam_summary_and_manifest(human_ds):
    summary, ds = human_ds
    assert summary.records == ds.num_records == 52_035
    assert summary.chunks == 3 and [r.num_records for r in ds.chunks] == [20_000, 20_000, 12_035]
    assert summary.columns == ("base", "qual", "metadata", "results", "tags") and ds.columns == list(summary.columns)
    assert summary.skipped_secondary == summary.skipped_supplementary == 0
    assert summary.empty_sequence == summary.missing_quality == summary.bases_replaced == 0
    # coordinate-sorted, not interleaved; the file has no @HD line
    assert summary.paired is False and ds.manifest.paired is False
    assert ds.manifest.sort == "unknown"
    contigs = ds.manifest.reference_contigs
    assert len(contigs) == 25 and contigs[20].name == "chr20" and contigs[20].length == 63_025_520
    assert [c.index for c in contigs] == list(range(25))
    assert ds.manifest.reference == "NA12878_S1.chr20.10_10p1mb.bam"


def test_human_bases_are_in_sequencing_orientation(human_ds, human):
    """The shared FASTQs were derived from this BAM in sequencing orientation: they must match."""
    _, ds = human_ds
    r1, r2 = fastq_reads(human["r1"]), fastq_reads(human["r2"])
    recs = all_records(ds, ["metadata", "base", "qual", "results"])
    matched = reverse = 0
    for name, seq, qual, row in zip(recs["metadata"], recs["base"], recs["qual"], recs["results"]):
        flag = row[0]
        table = r1 if flag & 0x40 else r2
        want = table.get(name.decode())
        if want is None:
            continue  # orphan dropped from the FASTQs
        assert (seq, qual) == want, name
        matched += 1
        reverse += bool(flag & 0x10)
    assert matched >= 2 * 25_839  # the repeated records match too
    assert reverse > 20_000


def test_human_alignment_fields_and_repeats_survive(human_ds, human):
    _, ds = human_ds
    recs = all_records(ds, ["metadata", "results"])
    with pysam.AlignmentFile(str(human["bam"]), "rb") as f:
        want = [(s.query_name, (s.flag, s.mapping_quality, s.reference_id, s.reference_start, s.next_reference_id,
                                s.next_reference_start, s.template_length)) for s in f.fetch(until_eof=True)]
    got = [(n.decode(), tuple(r)) for n, r in zip(recs["metadata"], recs["results"])]
    assert got == want
    counts = Counter(got)
    assert sum(c - 1 for c in counts.values()) == 111  # the README's 111 exactly repeated records
    cigars = [c for i in range(len(ds.chunks)) for c in ds.read_column(i, "results").cigars]
    assert cigars[0] == b"85M2I14M" and len(cigars) == 52_035


def test_edge_records(tmp_path):
    sam = write_sam(tmp_path / "edge.sam", "unsorted", [
        "r1\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT\tIIII",
        "r1\t256\tc1\t50\t0\t4M\t*\t0\t0\t*\t*",           # secondary: skipped
        "r1\t2048\tc2\t5\t30\t2H2M\t*\t0\t0\tGT\tII",     # supplementary: skipped
        "r2\t16\tc2\t7\t20\t3M1S\t*\t0\t0\tACGT\t*",       # reverse, no QUAL
        "r3\t4\t*\t0\t0\t*\t*\t0\t0\t*\t*",                # no SEQ: stored empty
        "r4\t0\tc1\t1\t0\t5M\t*\t0\t0\tACRYN\tABCDE",      # IUPAC -> N
    ])
    s = import_sam(sam, out=tmp_path / "ds", name="edge")
    assert (s.records, s.skipped_secondary, s.skipped_supplementary) == (4, 1, 1)
    assert (s.empty_sequence, s.missing_quality, s.bases_replaced) == (1, 1, 2)
    assert s.sort == "unsorted" and s.paired is False
    ds = Dataset.open(tmp_path / "ds")
    recs = all_records(ds, ["metadata", "base", "qual", "results"])
    assert recs["metadata"] == [b"r1", b"r2", b"r3", b"r4"]
    assert recs["base"] == [b"ACGT", b"ACGT", b"", b"ACNNN"]  # r2 reverse-complemented back
    assert recs["qual"] == [b"IIII", b"", b"", b"ABCDE"]
    assert recs["results"][1] == (16, 20, 1, 6, -1, -1, 0)
    assert ds.manifest.reference == "file:///refs/c.fa"


def test_queryname_grouped_pairs_set_paired(tmp_path):
    lines = []
    for i in range(5):
        lines.append(f"p{i}\t99\tc1\t{10 + i}\t60\t2M\t=\t{100 + i}\t92\tAC\tII")
        lines.append(f"p{i}\t147\tc1\t{100 + i}\t60\t2M\t=\t{10 + i}\t-92\tGT\tJJ")
    s = import_sam(write_sam(tmp_path / "q.sam", "queryname", lines), out=tmp_path / "ds", chunk_size=3)
    assert s.paired is True and s.sort == "queryname"
    ds = Dataset.open(tmp_path / "ds")
    assert ds.paired and [r.num_records for r in ds.chunks] == [4, 4, 2]  # chunk size rounded up to even
    # swapped mates or a missing mate: not interleaved
    swapped = lines[:2] + [lines[3], lines[2]]
    assert import_sam(write_sam(tmp_path / "s.sam", "queryname", swapped), out=tmp_path / "ds2").paired is False
    assert import_sam(write_sam(tmp_path / "o.sam", "queryname", lines[:3]), out=tmp_path / "ds3").paired is False


def test_unmapped_bam_without_sq_is_unaligned(tmp_path):
    header = pysam.AlignmentHeader.from_dict({"HD": {"VN": "1.6", "SO": "queryname"}})
    path = tmp_path / "u.bam"
    with pysam.AlignmentFile(str(path), "wb", header=header) as f:
        for i, flag in enumerate([77, 141, 77, 141]):
            a = pysam.AlignedSegment(header)
            a.query_name, a.flag = f"u{i // 2}", flag
            a.query_sequence = "ACGTA"
            a.query_qualities = pysam.qualitystring_to_array("ABCDE")
            f.write(a)
    s = import_sam(path, out=tmp_path / "ds")
    assert s.columns == ("base", "qual", "metadata", "tags") and s.paired is True
    ds = Dataset.open(tmp_path / "ds")
    assert ds.columns == ["base", "qual", "metadata", "tags"] and not ds.manifest.reference_contigs


def no_files(path: Path) -> bool:
    return not path.exists() or not any(p.is_file() for p in path.rglob("*"))


def test_truncated_bam_without_eof_marker(tmp_path, human):
    bad = tmp_path / "cut.bam"
    bad.write_bytes(human["bam"].read_bytes()[:2_000_000])
    with pytest.raises(InputFormatError, match="truncated") as e:
        import_sam(bad, out=tmp_path / "ds")
    assert str(bad) in str(e.value)
    assert no_files(tmp_path / "ds")


@pytest.mark.parametrize("damage", ["cut_mid_block", "overwrite"])
def test_corrupt_bam_names_record_and_leaves_nothing(tmp_path, human, damage):
    raw = bytearray(human["bam"].read_bytes())
    if damage == "cut_mid_block":
        raw = raw[:1_500_000] + EOF_BLOCK  # data lost mid-block, EOF marker still present
    else:
        raw[500_000:500_100] = b"x" * 100
    bad = tmp_path / "bad.bam"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InputFormatError) as e:
        import_sam(bad, out=tmp_path / "ds", chunk_size=2000)  # several chunks written before the error
    msg = str(e.value)
    assert f"file={bad}" in msg and "record=" in msg
    assert int(msg.split("record=")[1].split(")")[0].split(",")[0]) > 2000
    assert no_files(tmp_path / "ds")


def test_not_alignment_data(tmp_path):
    bad = tmp_path / "x.sam"
    bad.write_text("this is not SAM\n")
    with pytest.raises(InputFormatError, match="x.sam"):
        import_sam(bad, out=tmp_path / "ds")
    assert no_files(tmp_path / "ds")


def test_malformed_sam_line_names_the_line(tmp_path):
    sam = write_sam(tmp_path / "m.sam", "unsorted", [
        "r1\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT\tIIII",
        "r2\t0\tc1\tNOTANUMBER\t60\t4M\t*\t0\t0\tACGT\tIIII",
    ])
    with pytest.raises(InputFormatError, match=r"POS 'NOTANUMBER' is not a number .*m\.sam, line=5"):
        import_sam(sam, out=tmp_path / "ds")
    assert no_files(tmp_path / "ds")


def test_existing_dataset_is_not_overwritten(tmp_path):
    sam = write_sam(tmp_path / "a.sam", "unsorted", ["r1\t4\t*\t0\t0\t*\t*\t0\t0\tACGT\tIIII"])
    import_sam(sam, out=tmp_path / "ds", name="a")
    with pytest.raises(DatasetError, match="already exists"):
        import_sam(sam, out=tmp_path / "ds", name="a")
    assert Dataset.open(tmp_path / "ds").num_records == 1


def test_gzip_compression_option(tmp_path):
    sam = write_sam(tmp_path / "a.sam", "unsorted", ["r1\t4\t*\t0\t0\t*\t*\t0\t0\tACGT\tIIII"])
    import_sam(sam, out=tmp_path / "ds", compression="gzip")
    header = ChunkHeader.unpack((tmp_path / "ds" / "a_0.qual").read_bytes())
    assert header.compression is CompressionType.GZIP
    assert Dataset.open(tmp_path / "ds").read_column(0, "qual")[0] == b"IIII"
