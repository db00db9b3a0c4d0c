"""The BAM/SAM kernels (``persona._native.bam``) against pysam/htslib, and the BGZF writer.

The reference encoding is htslib's: each record is built as a
``pysam.AlignedSegment`` from the same fields, written to an uncompressed BAM
by pysam, and the raw record bytes are compared with ours byte for byte.
"""
from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pysam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona._native import bam as kernel
from persona.agd.ragged import RaggedArray
from persona.agd.records import ALIGNMENT_DTYPE, Alignments
from persona.formats import bgzf
from persona.formats.bam import BamWriter, encode_records
from persona.formats.sam import ReadGroup, build_header, contig_names, format_records

pytestmark = pytest.mark.native

CONTIGS = [("chrA", 5_000_000), ("chrB", 300_000_000), ("c3", 1000)]
COMP = bytes.maketrans(b"ACGTNacgtn", b"TGCANtgcan")


# -- building records -------------------------------------------------------------
def record(name, flag, ref, pos, mapq, cigar, mref, mpos, tlen, seq, qual):
    return dict(name=name, flag=flag, ref=ref, pos=pos, mapq=mapq, cigar=cigar, mref=mref, mpos=mpos,
                tlen=tlen, seq=seq, qual=qual)


def columns(recs):
    fields = np.array([(r["flag"], r["mapq"], r["ref"], r["pos"], r["mref"], r["mpos"], r["tlen"]) for r in recs],
                      dtype=ALIGNMENT_DTYPE) if recs else np.zeros(0, ALIGNMENT_DTYPE)
    return (RaggedArray.from_list([r["name"] for r in recs]), RaggedArray.from_list([r["seq"] for r in recs]),
            RaggedArray.from_list([r["qual"] for r in recs]),
            Alignments(fields, RaggedArray.from_list([r["cigar"] for r in recs])))


def pysam_segment(r, header, rg):
    """The same record as htslib would store it: SEQ/QUAL flipped for reverse-strand reads."""
    a = pysam.AlignedSegment(header)
    name = r["name"].split()[0].decode() if r["name"].strip() else "*"
    if r["flag"] & 1 and name[-2:] in ("/1", "/2") and len(name) > 2:
        name = name[:-2]  # the kernel drops mate suffixes, as bwa and FastqToSam do
    a.query_name = name
    a.flag = r["flag"]
    a.reference_id = r["ref"]
    a.reference_start = r["pos"]
    a.mapping_quality = r["mapq"]
    a.next_reference_id = r["mref"]
    a.next_reference_start = r["mpos"]
    a.template_length = r["tlen"]
    a.cigarstring = r["cigar"].decode() or None
    rev = bool(r["flag"] & 0x10)
    seq, qual = r["seq"], r["qual"]
    if rev:
        seq, qual = seq.translate(COMP)[::-1], qual[::-1]
    a.query_sequence = seq.decode() if seq else None
    if qual and qual != b"*":
        a.query_qualities = pysam.qualitystring_to_array(qual.decode())
    if rg:
        a.set_tag("RG", rg, "Z")
    return a


def pysam_records(recs, rg, tmp_path: Path) -> tuple[list[bytes], list[str]]:
    """Raw BAM record bytes and SAM lines, as pysam/htslib write them."""
    header = pysam.AlignmentHeader.from_references([n for n, _ in CONTIGS], [ln for _, ln in CONTIGS])
    segs = [pysam_segment(r, header, rg) for r in recs]
    path = tmp_path / "ref.bam"
    with pysam.AlignmentFile(str(path), "wbu", header=header) as f:
        for s in segs:
            f.write(s)
    raw = gzip.open(path).read()
    (l_text,) = struct.unpack_from("<i", raw, 4)
    p = 8 + l_text
    (n_ref,) = struct.unpack_from("<i", raw, p)
    p += 4
    for _ in range(n_ref):
        (ln,) = struct.unpack_from("<i", raw, p)
        p += 8 + ln
    out = []
    while p < len(raw):
        (size,) = struct.unpack_from("<i", raw, p)
        out.append(raw[p : p + 4 + size])
        p += 4 + size
    return out, [s.to_string() for s in segs]


def ours(recs, rg):
    names, seqs, quals, al = columns(recs)
    data, offsets = encode_records(names, seqs, quals, al, len(CONTIGS), rg)
    blobs = [data[int(offsets[i]) : int(offsets[i + 1])].tobytes() for i in range(len(recs))]
    text = format_records(names, seqs, quals, al, contig_names(CONTIGS), rg or "")
    return blobs, text.decode().splitlines()


EXAMPLES = [
    record(b"pair1 comment", 99, 0, 9999, 60, b"85M2I14M", 0, 10185, 375, b"ACGT" * 25 + b"A", b"I" * 101),
    record(b"pair1", 147, 0, 10185, 60, b"5S96M", 0, 9999, -375, b"ACGTN" * 20 + b"C", b"#" * 100 + b"J"),
    record(b"odd", 0, 1, 16383, 0, b"1M", -1, -1, 0, b"G", b"5"),  # bin boundary
    record(b"span", 16, 1, 16380, 255, b"3M2D3N2M", 1, 200_000_000, 0, b"ACGTA", b"ABCDE"),
    record(b"big", 0, 1, 250_000_000, 3, b"2=1X2P3H", -1, -1, 0, b"AAA", b"III"),
    record(b"unmapped_placed", 0x1 | 0x4 | 0x80, 2, 500, 0, b"", 2, 500, 0, b"ACG", b"FFF"),
    record(b"unplaced", 4, -1, -1, 0, b"", -1, -1, 0, b"ACGTAC", b""),  # no qualities
    record(b"noseq", 0x100, 0, 50, 10, b"10M", -1, -1, 0, b"", b""),  # SEQ and QUAL '*'
    record(b"star_qual", 4, -1, -1, 0, b"*", -1, -1, 0, b"TTTT", b"*"),
    record(b"frag/1", 0x1 | 0x40 | 0x4 | 0x8, -1, -1, 0, b"", -1, -1, 0, b"NNAC", b"!!!!"),  # /1 dropped
    record(b"", 4, -1, -1, 0, b"", -1, -1, 0, b"A", b"I"),  # no name -> '*'
    record(b"lower", 16, 2, 0, 7, b"4M", -1, -1, 0, b"acgn", b"%%%%"),
]


@pytest.mark.parametrize("rg", ["grp1", None])
def test_examples_equal_htslib(rg, tmp_path):
    ref_bytes, ref_text = pysam_records(EXAMPLES, rg, tmp_path)
    got_bytes, got_text = ours(EXAMPLES, rg)
    for i, (a, b) in enumerate(zip(got_bytes, ref_bytes)):
        assert a == b, f"record {i} ({EXAMPLES[i]['name']!r}) differs"
    assert len(got_bytes) == len(ref_bytes)
    assert got_text == ref_text


@st.composite
def records(draw):
    n_ops_query = draw(st.lists(st.sampled_from("MIS=X"), max_size=5))
    lens = [draw(st.integers(1, 30)) for _ in n_ops_query]
    mapped = bool(n_ops_query) and draw(st.booleans())
    cigar = b""
    if mapped:
        parts = []
        for op, ln in zip(n_ops_query, lens):
            if draw(st.booleans()):
                parts.append(f"{draw(st.integers(1, 70000))}{draw(st.sampled_from('DNHP'))}")
            parts.append(f"{ln}{op}")
        cigar = "".join(parts).encode()
    length = sum(lens)
    seq = draw(st.text(alphabet="ACGTN", min_size=length, max_size=length)).encode()
    qual = draw(st.one_of(st.just(b""), st.text(alphabet=[chr(c) for c in range(33, 127)],
                                                 min_size=length, max_size=length).map(str.encode)))
    flag = draw(st.integers(0, 0xFFF)) & ~0x4
    if not mapped:
        flag |= 0x4
    ref = draw(st.integers(-1, len(CONTIGS) - 1)) if not mapped else draw(st.integers(0, len(CONTIGS) - 1))
    pos = draw(st.integers(-1, 2**31 - 400_000)) if ref >= 0 else -1
    name = draw(st.text(alphabet="abcXYZ0123:_.-", min_size=1, max_size=40)).encode()
    mref = draw(st.integers(-1, len(CONTIGS) - 1))
    return record(name, flag, ref, pos, draw(st.integers(0, 255)), cigar, mref,
                  draw(st.integers(-1, 2**31 - 2)) if mref >= 0 else -1,
                  draw(st.integers(-(2**31), 2**31 - 1)), seq, qual)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(records(), max_size=12))
def test_random_records_equal_htslib(tmp_path, recs):
    ref_bytes, ref_text = pysam_records(recs, "rg", tmp_path)
    got_bytes, got_text = ours(recs, "rg")
    assert got_bytes == ref_bytes
    assert got_text == ref_text


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(name=b"x" * 255), "longer than 254"),
        (dict(cigar=b"10Q"), "malformed CIGAR"),
        (dict(cigar=b"M"), "malformed CIGAR"),
        (dict(cigar=b"4M"), "CIGAR query length"),
        (dict(qual=b"II"), "quality string length"),
        (dict(qual=b"II\x1fI I"[:5]), "below '!'"),
        (dict(ref=3), "ref_index"),
        (dict(mref=7), "next_ref_index"),
        (dict(pos=2**31), "int32"),
    ],
)
def test_bad_records_are_named(change, message):
    good = record(b"ok", 0, 0, 10, 5, b"5M", -1, -1, 0, b"ACGTA", b"IIIII")
    bad = {**good, **change}
    names, seqs, quals, al = columns([good, good, bad])
    with pytest.raises(ValueError, match=rf"record 2: .*{message}"):
        encode_records(names, seqs, quals, al, len(CONTIGS), "g")
    with pytest.raises(ValueError, match=rf"record 2: .*{message}"):
        format_records(names, seqs, quals, al, contig_names(CONTIGS), "g")


def test_empty_chunk():
    names, seqs, quals, al = columns([])
    data, offsets = encode_records(names, seqs, quals, al, 0, "g")
    assert data.size == 0 and offsets.tolist() == [0]
    assert format_records(names, seqs, quals, al, contig_names([]), "g") == b""


def test_names_sorted_byte_order():
    r = RaggedArray.from_list([b"a1 x", b"a1", b"a10", b"a2"])
    assert kernel.names_sorted(r.data, r.offsets, b"") == (True, b"a2")
    assert kernel.names_sorted(r.data, r.offsets, b"b")[0] is False
    r = RaggedArray.from_list([b"a2", b"a10"])  # natural order is not byte order
    assert kernel.names_sorted(r.data, r.offsets, b"")[0] is False


# -- BGZF ---------------------------------------------------------------------------
def bgzf_blocks(raw: bytes) -> list[tuple[int, int]]:
    """(block size, ISIZE) of each block, checking the BGZF framing as it goes."""
    out = []
    p = 0
    while p < len(raw):
        id1, id2, cm, flg, _mtime, _xfl, _os, xlen = struct.unpack_from("<BBBBIBBH", raw, p)
        assert (id1, id2, cm, flg, xlen) == (31, 139, 8, 4, 6)
        si1, si2, slen, bsize = struct.unpack_from("<BBHH", raw, p + 12)
        assert (si1, si2, slen) == (66, 67, 2)
        block = raw[p : p + bsize + 1]
        crc, isize = struct.unpack_from("<II", block, len(block) - 8)
        data = zlib.decompress(block[18:-8], -15)
        assert len(data) == isize <= bgzf.BLOCK_INPUT_SIZE and zlib.crc32(data) == crc
        out.append((bsize + 1, isize))
        p += bsize + 1
    return out


@pytest.mark.parametrize("backend", bgzf.BACKENDS)
@pytest.mark.parametrize("threads", [0, 2])
def test_bgzf_readable_by_gzip(tmp_path, backend, threads):
    rng = np.random.default_rng(1)
    payload = rng.choice(np.frombuffer(b"ACGT", np.uint8), 1_000_000).tobytes() + os.urandom(200_000)
    path = tmp_path / "x.gz"
    with bgzf.BgzfWriter(path, level=6, threads=threads, backend=backend) as w:
        for piece in (payload[:10], payload[10:70_000], payload[70_000:]):
            w.write(piece)
    raw = path.read_bytes()
    assert gzip.decompress(raw) == payload
    assert raw.endswith(bgzf.EOF_BLOCK)
    blocks = bgzf_blocks(raw)
    assert all(size <= bgzf.MAX_BLOCK_SIZE for size, _ in blocks)
    assert sum(isize for _, isize in blocks) == len(payload)
    assert blocks[-1] == (28, 0)


def test_bgzf_same_bytes_for_any_thread_count(tmp_path):
    payload = b"".join(b"read%d\tACGT\n" % i for i in range(200_000))
    outs = []
    for threads in (0, 1, 3):
        buf = io.BytesIO()
        w = bgzf.BgzfWriter(buf, threads=threads)
        w.write(payload)
        w.close()
        outs.append(buf.getvalue())
    assert outs[0] == outs[1] == outs[2]


def test_bgzf_empty_stream_is_eof_block():
    buf = io.BytesIO()
    bgzf.BgzfWriter(buf).close()
    assert buf.getvalue() == bgzf.EOF_BLOCK


def test_bgzf_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="level"):
        bgzf.BgzfWriter(io.BytesIO(), level=10)
    with pytest.raises(ValueError, match="threads"):
        bgzf.BgzfWriter(io.BytesIO(), threads=-1)
    with pytest.raises(ValueError, match="backend"):
        bgzf.BgzfWriter(io.BytesIO(), backend="lz4")


def test_bgzf_abort_writes_no_eof(tmp_path):
    path = tmp_path / "x.gz"
    with pytest.raises(RuntimeError):
        with bgzf.BgzfWriter(path, threads=1) as w:
            w.write(b"x" * 200_000)
            raise RuntimeError("boom")
    assert not path.read_bytes().endswith(bgzf.EOF_BLOCK)


@pytest.mark.parametrize("threads", [0, 2])
def test_bam_writer_output_read_by_pysam(tmp_path, threads):
    recs = EXAMPLES * 3000  # ~36k records: many BGZF blocks
    names, seqs, quals, al = columns(recs)
    rg = ReadGroup.for_dataset("ds", {"PL": "ILLUMINA"})
    header = build_header(contigs=CONTIGS, sort="unsorted", read_group=rg, version="0", command_line="test")
    data, _ = encode_records(names, seqs, quals, al, len(CONTIGS), rg.id)
    path = tmp_path / "out.bam"
    with BamWriter(path, header, CONTIGS, threads=threads) as w:
        w.write_encoded(data, len(recs))
    with pysam.AlignmentFile(str(path), "rb", check_sq=False) as f:
        assert f.header.to_dict()["RG"] == [{"ID": "ds", "SM": "ds", "PL": "ILLUMINA"}]
        assert list(f.references) == [n for n, _ in CONTIGS]
        got = list(f.fetch(until_eof=True))
    assert len(got) == len(recs)
    assert got[1].query_name == "pair1" and got[1].is_reverse
    assert got[1].query_sequence == EXAMPLES[1]["seq"].translate(COMP)[::-1].decode()
    assert all(s.get_tag("RG") == "ds" for s in got[:20])
