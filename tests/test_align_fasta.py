"""FASTA validation and the contig table."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from persona.align.fasta import read_contig_table
from persona.errors import InputFormatError


def write(tmp: Path, text: str, gz: bool = False) -> Path:
    p = tmp / ("ref.fa.gz" if gz else "ref.fa")
    if gz:
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    return p


@pytest.mark.parametrize("gz", [False, True])
def test_contig_table(tmp_path: Path, gz: bool) -> None:
    s = read_contig_table(write(tmp_path, ">a desc\nACGT\nacgn\n\n>b\nNNRY\r\n", gz))
    assert [(c.name, c.length, c.index) for c in s.contigs] == [("a", 8, 0), ("b", 4, 1)]
    assert s.total_length == 12 and len(s.sha256) == 64


def test_real_reference(yeast) -> None:
    s = read_contig_table(yeast["ref"])
    assert len(s.contigs) == 17 and s.total_length == 12_157_105
    assert s.contigs[0].name == "chrI" and s.contigs[-1].index == 16


@pytest.mark.parametrize(
    "text, match",
    [
        (">a\nACGT\n>b\nAC\n>a\nGG\n", r"duplicate contig name 'a' \(first at line 1\).*line=5"),
        (">a\nACGT\n>b\nAC1T\n", r"invalid character '1' in contig 'b'.*line=4.*column=3"),
        (">a\nAC GT\n", r"invalid character ' ' in contig 'a'"),
        ("ACGT\n>a\nAC\n", r"sequence before the first '>'.*line=1"),
        (">a\n>b\nAC\n", r"contig 'a' \(line 1\) has no sequence"),
        (">\nAC\n", r"empty contig name.*line=1"),
        ("", r"no contigs"),
        (">a\nACGT\n>b\n", r"contig 'b' \(line 3\) has no sequence"),
    ],
)
def test_bad_fasta_names_line_and_contig(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InputFormatError, match=match):
        read_contig_table(write(tmp_path, text))


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="does not exist"):
        read_contig_table(tmp_path / "nope.fa")
    p = tmp_path / "bad.fa.gz"
    p.write_bytes(gzip.compress(b"".join(b">c%d\nACGT\n" % i for i in range(5000)))[:300])
    with pytest.raises(InputFormatError, match="cannot read FASTA"):
        read_contig_table(p)
