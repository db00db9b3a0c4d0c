"""FASTQ parsing and formatting kernels (persona._native.fastq, persona.formats.fastq)."""
from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona._native import fastq as k
from persona.errors import InputFormatError
from persona.formats.fastq import (
    TextChunk,
    default_name,
    format_records,
    iter_text_chunks,
    parse_chunk,
    parse_pair,
    read_fastq,
)

pytestmark = pytest.mark.native


def _reference_parse(text: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """Independent, obviously-correct parser for well-formed LF FASTQ."""
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    assert len(lines) % 4 == 0
    return [(lines[i][1:], lines[i + 1], lines[i + 3]) for i in range(0, len(lines), 4)]


def _head(path: Path, records: int) -> bytes:
    with gzip.open(path, "rb") as f:
        return b"".join(itertools.islice(f, 4 * records))


def _chunk(text: bytes, final: bool = True, first_line: int = 1) -> TextChunk:
    return TextChunk(text, first_line, final, 0)


def _fastq(records: list[tuple[bytes, bytes, bytes]], eol: bytes = b"\n") -> bytes:
    return b"".join(b"@" + m + eol + s + eol + b"+" + eol + q + eol for m, s, q in records)


# -- well-formed input ---------------------------------------------------------

@pytest.mark.parametrize("dataset", [pytest.param("yeast", marks=pytest.mark.small_data), "measles", "human"])
def test_real_reads_match_reference_parser_and_round_trip(dataset, request):
    paths = request.getfixturevalue(dataset)
    text = _head(paths["r1"], 3000)
    cols = parse_chunk(_chunk(text), "r1.fq")
    expected = _reference_parse(text)
    assert len(cols) == len(expected) == 3000
    assert cols.metadata.tolist() == [m for m, _, _ in expected]
    assert cols.bases.tolist() == [s for _, s, _ in expected]
    assert cols.qual.tolist() == [q for _, _, q in expected]
    assert format_records(cols.metadata, cols.bases, cols.qual).tobytes() == text


def test_crlf_no_final_newline_and_trailing_blank_lines():
    recs = [(b"r1 desc", b"ACGTN", b"IIII#"), (b"r2", b"acgtn", b"!!!!~"), (b"r3", b"", b"")]
    lf = _fastq(recs)
    crlf = _fastq(recs, b"\r\n")
    want = parse_chunk(_chunk(lf), "a.fq")
    assert want.bases.tolist() == [b"ACGTN", b"acgtn", b""]
    for variant in (crlf, lf[:-1], crlf[:-2], lf + b"\n\n", crlf + b"\r\n"):
        got = parse_chunk(_chunk(variant), "a.fq")
        assert got.as_dict() == want.as_dict()


def test_plus_line_may_repeat_header():
    got = parse_chunk(_chunk(b"@r1\nAC\n+r1\nII\n"), "a.fq")
    assert got.metadata.tolist() == [b"r1"] and got.qual.tolist() == [b"II"]


def test_scan_returns_consumed_so_caller_can_carry_the_tail():
    text = _fastq([(b"r%d" % i, b"ACGT" * (i % 5), b"I" * 4 * (i % 5)) for i in range(50)])
    for cut in range(0, len(text), 7):
        pos, consumed = k.scan_fastq(text[:cut], "a.fq", final=False)
        assert text[:consumed].count(b"\n") == 4 * len(pos)
        rest, consumed2 = k.scan_fastq(text[consumed:], "a.fq", first_line=1 + 4 * len(pos), final=True)
        assert consumed + consumed2 == len(text)
        assert len(pos) + len(rest) == 50


def test_max_records_limits_the_scan():
    text = _fastq([(b"r", b"A", b"I")] * 10)
    pos, consumed = k.scan_fastq(text, "a.fq", max_records=3)
    assert len(pos) == 3 and consumed == 3 * len(b"@r\nA\n+\nI\n")


records_strategy = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=20).map(lambda b: bytes(c for c in b if c not in b"\r\n") or b"x"),
        st.text(alphabet="ACGTNacgtn", max_size=60).map(str.encode),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(records_strategy, st.integers(min_value=1, max_value=7))
def test_chunking_and_parsing_any_records(recs, per_chunk):
    full = [(m, s, bytes(33 + (i * 7 + j) % 94 for j in range(len(s)))) for i, (m, s) in enumerate(recs)]
    text = _fastq(full)
    chunks = list(_chunks_of(text, per_chunk))
    assert all(c.text.count(b"\n") == 4 * per_chunk for c in chunks[:-1]) and chunks[-1].final
    parsed = [parse_chunk(c, "h.fq") for c in chunks]
    assert [m for p in parsed for m in p.metadata] == [m for m, _, _ in full]
    assert [s for p in parsed for s in p.bases] == [s for _, s, _ in full]
    out = b"".join(format_records(p.metadata, p.bases, p.qual).tobytes() for p in parsed)
    assert out == text


def _chunks_of(text: bytes, per_chunk: int):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".fq") as f:
        f.write(text)
        f.flush()
        yield from iter_text_chunks(f.name, per_chunk, block_size=13)


@pytest.mark.small_data
def test_iter_text_chunks_gzip_lines_and_boundaries(tmp_path, yeast):
    text = _head(yeast["r1"], 2500)
    path = tmp_path / "x.fastq.gz"
    path.write_bytes(gzip.compress(text))
    chunks = list(iter_text_chunks(path, 1000, block_size=65536))
    assert [c.first_line for c in chunks] == [1, 4001, 8001]
    assert [c.final for c in chunks] == [False, False, True]
    assert b"".join(bytes(c.text) for c in chunks) == text
    assert [len(parse_chunk(c, str(path))) for c in chunks] == [1000, 1000, 500]
    # A file that ends exactly on a chunk boundary gets an empty final chunk.
    exact = list(iter_text_chunks(path, 500, block_size=1 << 20))
    assert len(exact) == 6 and exact[-1].text == b"" and exact[-1].final


@pytest.mark.small_data
def test_read_fastq_plain_and_gzip_agree(tmp_path, measles):
    text = _head(measles["r2"], 500)
    (tmp_path / "a.fq").write_bytes(text)
    (tmp_path / "a.fq.gz").write_bytes(gzip.compress(text))
    assert read_fastq(tmp_path / "a.fq").as_dict() == read_fastq(tmp_path / "a.fq.gz").as_dict()


# -- errors name the file and the line ------------------------------------------

GOOD = b"@r1\nACGT\n+\nIIII\n"


@pytest.mark.parametrize(
    "bad, line, words",
    [
        (GOOD + b"r2\nACGT\n+\nIIII\n", 5, "does not start with '@'"),
        (GOOD + b"\n" + GOOD, 5, "(blank line; blank lines are allowed only at the end of the file)"),
        (GOOD + b"@r2\nACGT\n-\nIIII\n", 7, "'+' separator line missing"),
        (GOOD + b"@r2\nACGT\n+\nIII\n", 8, "quality length 3 does not match sequence length 4"),
        (GOOD + b"@r2\nACRT\n+\nIIII\n", 6, "invalid character 'R' in sequence at column 3"),
        (GOOD + b"@r2\nAC.T\n+\nIIII\n", 6, "invalid character '.'"),
        (GOOD + b"@r2\nACGT\n+\nII I\n", 8, "invalid quality character ' '"),
        (GOOD + b"@r2\nACGT\n", 7, "truncated FASTQ record"),
        (GOOD + b"@r2\nAC", 6, "truncated FASTQ record"),
        (GOOD + b"@r2\r\nACGT\r\n+\r\nIII\r\n", 8, "quality length 3"),
    ],
)
def test_errors_name_file_and_line(bad, line, words):
    with pytest.raises(InputFormatError) as ei:
        parse_chunk(_chunk(bad), "reads_R1.fq")
    assert ei.value.line == line
    assert f"reads_R1.fq:{line}:" in str(ei.value)
    assert words in str(ei.value)


def test_error_line_counts_from_chunk_first_line():
    with pytest.raises(InputFormatError, match=r"big\.fq:4003:"):
        parse_chunk(_chunk(b"@r\nAXGT\n+\nIIII\n", first_line=4002), "big.fq")


@pytest.mark.small_data
def test_corrupt_gzip_names_file(tmp_path, yeast):
    data = yeast["r1"].read_bytes()
    path = tmp_path / "cut.fastq.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFormatError, match="cut.fastq.gz: corrupt or truncated compressed data"):
        list(iter_text_chunks(path, 100_000))


# -- pairs -------------------------------------------------------------------------

def test_pair_interleaves_and_accepts_mate_suffixes():
    r1 = _fastq([(b"a/1 x", b"AAAA", b"1111"), (b"b/1", b"CCCC", b"2222")])
    r2 = _fastq([(b"a/2 y", b"GGGG", b"3333"), (b"b/2", b"TTTT", b"4444")])
    cols = parse_pair(_chunk(r1), _chunk(r2), "R1.fq", "R2.fq")
    assert cols.metadata.tolist() == [b"a/1 x", b"a/2 y", b"b/1", b"b/2"]
    assert cols.bases.tolist() == [b"AAAA", b"GGGG", b"CCCC", b"TTTT"]
    assert cols.qual.tolist() == [b"1111", b"3333", b"2222", b"4444"]
    assert format_records(cols.metadata, cols.bases, cols.qual, 0, 2).tobytes() == r1
    assert format_records(cols.metadata, cols.bases, cols.qual, 1, 2).tobytes() == r2


def test_pair_name_mismatch_names_both_files_and_lines():
    r1 = _fastq([(b"a", b"A", b"I"), (b"b", b"A", b"I")])
    r2 = _fastq([(b"a", b"A", b"I"), (b"c", b"A", b"I")])
    with pytest.raises(InputFormatError) as ei:
        parse_pair(_chunk(r1, first_line=9), _chunk(r2, first_line=9), "R1.fq", "R2.fq", pairs_before=2)
    msg = str(ei.value)
    assert "R2.fq:13:" in msg and "R1.fq:13" in msg and "'c'" in msg and "'b'" in msg and "pair 4" in msg
    assert ei.value.line == 13


def test_pair_count_mismatch_names_file_and_line():
    r1 = _fastq([(b"a", b"A", b"I"), (b"b", b"A", b"I"), (b"c", b"A", b"I")])
    r2 = _fastq([(b"a", b"A", b"I"), (b"b", b"A", b"I")])
    with pytest.raises(InputFormatError) as ei:
        parse_pair(_chunk(r1), _chunk(r2), "R1.fq", "R2.fq")
    assert "R1.fq:9: paired files have different record counts" in str(ei.value)
    assert "R2.fq ends after 2 records" in str(ei.value)
    with pytest.raises(InputFormatError, match=r"R1\.fq:9:"):
        parse_pair(_chunk(r2), _chunk(r1), "R2.fq", "R1.fq")


@pytest.mark.small_data
def test_real_pairs_match(yeast):
    r1, r2 = _head(yeast["r1"], 2000), _head(yeast["r2"], 2000)
    cols = parse_pair(_chunk(r1), _chunk(r2), "R1", "R2")
    assert len(cols) == 4000
    names = [k.read_name(m) for m in cols.metadata]
    assert names[0::2] == names[1::2]
    assert cols.bases[1] == _reference_parse(r2)[0][1]


def test_format_rejects_length_mismatch():
    from persona.agd.ragged import RaggedArray

    m = RaggedArray.from_list([b"r"])
    with pytest.raises(ValueError, match="record 0: 2 bases but 1 qualities"):
        format_records(m, RaggedArray.from_list([b"AC"]), RaggedArray.from_list([b"I"]))


def test_format_output_is_exact_size():
    from persona.agd.ragged import RaggedArray

    out = format_records(RaggedArray.from_list([b"", b"x"]), RaggedArray.from_list([b"", b"A"]),
                         RaggedArray.from_list([b"", b"I"]))
    assert out.dtype == np.uint8 and out.tobytes() == b"@\n\n+\n\n@x\nA\n+\nI\n"


@pytest.mark.parametrize(
    "fname, want",
    [("SRR5204809_R1.fastq.gz", "SRR5204809"), ("x_R1_001.fq", "x"), ("sample.fastq", "sample"),
     ("a_1.fq.gz", "a"), ("reads.fq", "reads")],
)
def test_default_name(fname, want):
    assert default_name(fname) == want


@pytest.mark.small_data
def test_gather_field_matches_gather_columns(measles):
    r1, r2 = _head(measles["r1"], 300), _head(measles["r2"], 300)
    p1, _ = k.scan_fastq(r1, "r1")
    p2, _ = k.scan_fastq(r2, "r2")
    both = k.gather_columns(r1, p1, r2, p2)
    for field in range(3):
        offs, data = k.gather_field(field, r1, p1, r2, p2)
        assert np.array_equal(offs, both[field][0]) and np.array_equal(data, both[field][1])
    with pytest.raises(ValueError, match="same number of records"):
        k.gather_field(0, r1, p1, r2, p2[:10])


@pytest.mark.small_data
def test_zlib_fallback_without_isal(tmp_path, monkeypatch, yeast):
    import persona.formats.fastq as fq

    text = _head(yeast["r2"], 400)
    (tmp_path / "a.fq.gz").write_bytes(gzip.compress(text))
    with_isal = read_fastq(tmp_path / "a.fq.gz")
    monkeypatch.setattr(fq, "_igzip", None)
    assert read_fastq(tmp_path / "a.fq.gz").as_dict() == with_isal.as_dict()
