"""AGD chunk format: header, chunk encode/decode, corruption handling, base packing,
the proto3 Alignment codec (checked against the real protobuf library), column codecs."""
from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from agd_reference import ref_pack
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona._native import alignment_codec, bases
from persona.agd import (
    ALIGNMENT_DTYPE,
    Alignments,
    ChunkHeader,
    CompressionType,
    RaggedArray,
    RecordType,
    decode_chunk,
    decode_column,
    encode_chunk,
    encode_column,
)
from persona.agd.chunk import split_payload
from persona.errors import ChunkFormatError

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.native

KEY = "ds_100.qual"
COMPRESSIONS = [CompressionType.UNCOMPRESSED, CompressionType.GZIP, CompressionType.ZSTD]


# ---------------------------------------------------------------- references


@pytest.fixture(scope="session")
def alignment_pb(tmp_path_factory: pytest.TempPathFactory) -> type:
    """The protobuf message class compiled from protos/persona/agd/v1/alignment.proto.

    Loaded into a private descriptor pool so it cannot clash with generated code
    that other modules register in the default pool.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("pb") / "alignment.desc"
    rc = protoc.main(
        ["protoc", f"-I{REPO / 'protos'}", f"--descriptor_set_out={out}", "persona/agd/v1/alignment.proto"]
    )
    assert rc == 0
    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("persona.agd.v1.Alignment"))


# ---------------------------------------------------------------- header
def test_header_layout_is_the_original_56_bytes() -> None:
    h = ChunkHeader(RecordType.COMPACTED_BASES, CompressionType.GZIP, 100, 250, "NA12878")
    raw = h.pack()
    assert len(raw) == 56
    assert raw == struct.pack("<BBBBHHQQ32s", 0, 1, 2, 2, 56, 0, 100, 250, b"NA12878".ljust(32, b"\0"))
    back = ChunkHeader.unpack(raw, KEY)
    assert back == h and back.num_records == 150


def test_header_string_id_truncated_to_32_bytes_on_char_boundary() -> None:
    h = ChunkHeader(RecordType.TEXT, CompressionType.ZSTD, 0, 1, "x" * 40)
    assert ChunkHeader.unpack(h.pack()).string_id == "x" * 32
    h = ChunkHeader(RecordType.TEXT, CompressionType.ZSTD, 0, 1, "a" + "é" * 20)  # 41 bytes
    sid = ChunkHeader.unpack(h.pack()).string_id
    assert sid == "a" + "é" * 15 and len(sid.encode()) == 31


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((1, 1, 0, 0, 56, 0, 0, 1), "unsupported AGD version 1.1"),
        ((0, 2, 0, 0, 56, 0, 0, 1), "unsupported AGD version 0.2"),
        ((0, 1, 9, 0, 56, 0, 0, 1), "unknown record type 9"),
        ((0, 1, 0, 7, 56, 0, 0, 1), "unknown compression type 7"),
        ((0, 1, 0, 0, 20, 0, 0, 1), "segment_start 20 lies inside"),
        ((0, 1, 0, 0, 56, 0, 10, 5), "last_ordinal 5 < first_ordinal 10"),
    ],
)
def test_impossible_header_values(fields: tuple[int, ...], message: str) -> None:
    raw = struct.pack("<BBBBHHQQ32s", *fields, b"ds") + b"\0" * 8
    with pytest.raises(ChunkFormatError, match=message) as e:
        decode_chunk(raw, KEY)
    assert e.value.context["key"] == KEY and KEY in str(e.value)


# ---------------------------------------------------------------- chunk round trips
records_st = st.lists(st.binary(max_size=300), max_size=60)


def test_string_id_with_unencodable_characters_is_replaced() -> None:
    ra = RaggedArray.from_list([b"x"])
    buf = encode_chunk(ra, record_type=RecordType.TEXT, first_ordinal=0, name="ds\udc80\ud800", compression="none")
    header, back = decode_chunk(buf, "k")
    assert header.string_id == "ds??" and back == ra


@settings(max_examples=60, deadline=None)
@given(
    recs=records_st,
    comp=st.sampled_from(COMPRESSIONS),
    rtype=st.sampled_from(list(RecordType)),
    first=st.integers(0, 2**40),
    name=st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40),
)
def test_chunk_round_trip(recs: list[bytes], comp: CompressionType, rtype: RecordType, first: int, name: str) -> None:
    ra = RaggedArray.from_list(recs)
    buf = encode_chunk(ra, record_type=rtype, first_ordinal=first, name=name, compression=comp)
    header, back = decode_chunk(buf, KEY)
    assert back == ra and back.tolist() == recs
    assert (header.record_type, header.compression) == (rtype, comp)
    assert (header.first_ordinal, header.last_ordinal) == (first, first + len(recs))
    # string_id: the name, cut to 32 UTF-8 bytes on a character boundary
    assert name.startswith(header.string_id)
    assert header.string_id == name or 28 < len(header.string_id.encode()) <= 32


def test_chunk_payload_layout_gzip_is_one_member_over_index_and_data() -> None:
    ra = RaggedArray.from_list([b"IIII", b"", b"#A"])
    buf = encode_chunk(ra, record_type=RecordType.TEXT, first_ordinal=7, name="d", compression="gzip")
    d = zlib.decompressobj(31)
    payload = d.decompress(buf[56:])
    assert d.eof and d.unused_data == b""
    assert payload == struct.pack("<3I", 4, 0, 2) + b"IIII#A"
    raw = encode_chunk(ra, record_type=RecordType.TEXT, first_ordinal=7, name="d", compression=0)
    assert raw[56:] == payload


def test_zstd_level_is_configurable_and_decodes() -> None:
    ra = RaggedArray.from_list([bytes(range(256)) * 4] * 50)
    fast = encode_chunk(ra, record_type=1, first_ordinal=0, name="d", compression="zstd", level=1)
    best = encode_chunk(ra, record_type=1, first_ordinal=0, name="d", compression="zstd", level=19)
    assert decode_chunk(fast)[1] == ra and decode_chunk(best)[1] == ra


def test_zstd_frame_without_content_size_decodes() -> None:
    ra = RaggedArray.from_list([b"ACGT", b"GG"])
    payload = struct.pack("<2I", 4, 2) + b"ACGTGG"
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = cobj.compress(payload) + cobj.flush()
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    buf = ChunkHeader(RecordType.TEXT, CompressionType.ZSTD, 0, 2, "d").pack() + frame
    assert decode_chunk(buf, KEY)[1] == ra


def test_decode_is_a_view_without_copying_records() -> None:
    ra = RaggedArray.from_list([b"x" * 1000] * 10)
    buf = encode_chunk(ra, record_type=0, first_ordinal=0, name="d", compression=0)
    _, back = decode_chunk(buf)
    assert not back.data.flags.owndata  # a view into the file bytes


def test_bzip2_is_declared_but_unsupported() -> None:
    ra = RaggedArray.from_list([b"a"])
    with pytest.raises(ValueError, match="BZIP2"):
        encode_chunk(ra, record_type=0, first_ordinal=0, name="d", compression="bzip2")
    buf = ChunkHeader(RecordType.TEXT, CompressionType.BZIP2, 0, 1, "d").pack() + b"BZh9"
    with pytest.raises(ChunkFormatError, match="BZIP2 is not supported") as e:
        decode_chunk(buf, KEY)
    assert e.value.context["key"] == KEY


def test_unknown_compression_name() -> None:
    with pytest.raises(ValueError, match="unknown compression 'lz4'"):
        CompressionType.parse("lz4")


# ---------------------------------------------------------------- corruption
def _chunk(comp: CompressionType, recs: list[bytes] | None = None) -> bytes:
    ra = RaggedArray.from_list(recs if recs is not None else [b"IIIIIIII"] * 200 + [b"#" * 50])
    return encode_chunk(ra, record_type=RecordType.TEXT, first_ordinal=100, name="ds", compression=comp)


def _expect(buf: bytes, message: str) -> None:
    with pytest.raises(ChunkFormatError, match=message) as e:
        decode_chunk(buf, KEY)
    assert e.value.context["key"] == KEY
    assert KEY in str(e.value)


@pytest.mark.parametrize("size", [0, 1, 55])
def test_truncated_header(size: int) -> None:
    _expect(_chunk(CompressionType.ZSTD)[:size], "truncated header")


def test_segment_start_beyond_file() -> None:
    buf = bytearray(_chunk(CompressionType.UNCOMPRESSED))
    struct.pack_into("<H", buf, 4, 60000)
    _expect(bytes(buf), "segment_start 60000 is beyond the end")


def test_truncated_gzip_payload() -> None:
    buf = _chunk(CompressionType.GZIP)
    _expect(buf[:-10], "truncated gzip payload")


def test_corrupt_gzip_payload() -> None:
    buf = bytearray(_chunk(CompressionType.GZIP))
    buf[70:90] = b"\xff" * 20
    _expect(bytes(buf), "corrupt gzip payload")


def test_garbage_after_gzip_payload() -> None:
    _expect(_chunk(CompressionType.GZIP) + b"junk", "stray bytes after the gzip payload")


def test_truncated_zstd_payload() -> None:
    _expect(_chunk(CompressionType.ZSTD)[:-5], "zstd payload")


def test_corrupt_zstd_payload() -> None:
    buf = bytearray(_chunk(CompressionType.ZSTD))
    buf[56:60] = b"\0\0\0\0"  # destroy the frame magic
    _expect(bytes(buf), "corrupt zstd payload")


def test_garbage_after_zstd_payload() -> None:
    _expect(_chunk(CompressionType.ZSTD) + b"junk", "zstd payload")


@pytest.mark.parametrize("comp", COMPRESSIONS)
def test_payload_shorter_than_index(comp: CompressionType) -> None:
    buf = bytearray(_chunk(comp, [b"a", b"b"]))
    struct.pack_into("<Q", buf, 16, 100 + 1000)  # header now claims 1000 records
    _expect(bytes(buf), "shorter than the index of 1000 records")


def test_index_sum_disagrees_with_data_size() -> None:
    buf = bytearray(_chunk(CompressionType.UNCOMPRESSED, [b"abc", b"de"]))
    struct.pack_into("<I", buf, 56, 4)  # first record claims 4 bytes
    _expect(bytes(buf), "index says 6 bytes of records but the payload holds 5")
    short = _chunk(CompressionType.UNCOMPRESSED, [b"abc", b"de"])[:-1]
    _expect(short, "index says 5 bytes of records but the payload holds 4")


def test_huge_record_count_does_not_allocate() -> None:
    buf = bytearray(_chunk(CompressionType.UNCOMPRESSED, [b"a"]))
    struct.pack_into("<Q", buf, 16, 2**62)
    _expect(bytes(buf), "shorter than the index")


def test_split_payload_names_key() -> None:
    with pytest.raises(ChunkFormatError, match="shorter than the index") as e:
        split_payload(b"\0\0", 1, "k.base")
    assert e.value.context["key"] == "k.base"


# ---------------------------------------------------------------- bases kernel
bases_st = st.lists(st.text(alphabet="ACGTNacgtn", max_size=130), max_size=40)


@settings(max_examples=80, deadline=None)
@given(seqs=bases_st)
def test_pack_matches_reference_and_round_trips(seqs: list[str]) -> None:
    text = RaggedArray.from_list(seqs)
    po, pd = bases.pack_bases(text.offsets, text.data)
    packed = RaggedArray(po, pd)
    assert packed.tolist() == [ref_pack(s.encode()) for s in seqs]
    assert [len(p) // 8 for p in packed] == [len(s) // 21 + 1 for s in seqs]
    uo, ud = bases.unpack_bases(po, pd)
    assert RaggedArray(uo, ud).tolist() == [s.upper().encode() for s in seqs]


@pytest.mark.parametrize("n", [0, 1, 20, 21, 22, 41, 42, 43, 101, 151])
def test_pack_lengths_at_word_boundaries(n: int) -> None:
    seq = ("ACGTN" * 40)[:n].encode()
    ra = RaggedArray.from_list([seq])
    po, pd = bases.pack_bases(ra.offsets, ra.data)
    assert pd.tobytes() == ref_pack(seq)
    assert pd.size == 8 * (n // 21 + 1)
    assert RaggedArray(*bases.unpack_bases(po, pd))[0] == seq


def test_pack_rejects_bad_character_naming_record() -> None:
    ra = RaggedArray.from_list([b"ACGT", b"ACGT", b"ACXT"])
    with pytest.raises(ValueError, match=r"record 2: invalid base 'X' .* at position 2"):
        bases.pack_bases(ra.offsets, ra.data)


def _packed(*words_per_record: list[int]) -> RaggedArray:
    return RaggedArray.from_list([struct.pack(f"<{len(w)}Q", *w) for w in words_per_record])


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([5 | (7 << 3)], "invalid base code 5 in word 0, slot 0"),
        ([(6 << 3) | (7 << 6)], "invalid base code 6 in word 0, slot 1"),
        ([0], "no END code in the last word"),
        ([7, 7], "END code in word 0 before the last word 1"),
    ],
)
def test_unpack_rejects_bad_codes(words: list[int], message: str) -> None:
    ra = _packed([7], words)
    with pytest.raises(ValueError, match=f"record 1: {message}"):
        bases.unpack_bases(ra.offsets, ra.data)


@pytest.mark.parametrize("size", [0, 7, 12])
def test_unpack_rejects_size_not_multiple_of_8(size: int) -> None:
    ra = RaggedArray.from_list([struct.pack("<Q", 7), b"\x07" * size])
    with pytest.raises(ValueError, match=f"record 1: packed size {size} bytes is not a positive multiple of 8"):
        bases.unpack_bases(ra.offsets, ra.data)


def test_reverse_complement_and_reverse() -> None:
    ra = RaggedArray.from_list([b"AACGTN", b"", b"acgtnG", b"GATTACA"])
    rc = bases.reverse_complement(ra.offsets, ra.data)
    assert RaggedArray(ra.offsets, rc).tolist() == [b"NACGTT", b"", b"Cnacgt", b"TGTAATC"]
    masked = bases.reverse_complement(ra.offsets, ra.data, np.array([False, False, False, True]))
    assert RaggedArray(ra.offsets, masked).tolist() == [b"AACGTN", b"", b"acgtnG", b"TGTAATC"]
    rev = bases.reverse_records(ra.offsets, ra.data, [True, True, False, True])
    assert RaggedArray(ra.offsets, rev).tolist() == [b"NTGCAA", b"", b"acgtnG", b"ACATTAG"]
    with pytest.raises(ValueError, match="mask has 2 entries for 4 records"):
        bases.reverse_records(ra.offsets, ra.data, [True, False])


# ---------------------------------------------------------------- alignment codec
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
row_st = st.tuples(st.integers(0, 2**32 - 1), I32, I32, I64, I32, I64, I64)
cigar_st = st.text(alphabet="0123456789MIDNSHP=X*", max_size=40)
small_row_st = st.tuples(
    st.sampled_from([0, 4, 99, 147, 0x400]),
    st.sampled_from([0, 60, -1]),
    st.sampled_from([0, -1, 3]),
    st.sampled_from([0, -1, 12345]),
    st.sampled_from([0, -1, 1]),
    st.sampled_from([0, -1, 2**40]),
    st.sampled_from([0, -300, 300]),
)
rows_st = st.lists(st.tuples(st.one_of(row_st, small_row_st), cigar_st), max_size=30)


def _alignments(rows: list[tuple[tuple[int, ...], str]]) -> Alignments:
    fields = np.array([r for r, _ in rows], dtype=ALIGNMENT_DTYPE)
    return Alignments(fields, RaggedArray.from_list([c for _, c in rows]))


def _message(pb: type, row: tuple[int, ...], cigar: str) -> object:
    flag, mapq, ref, pos, nref, npos, tlen = row
    m = pb(flag=flag, mapping_quality=mapq, template_length=tlen, cigar=cigar)
    m.position.SetInParent()  # the original always calls mutable_position()
    m.next_position.SetInParent()
    m.position.ref_index, m.position.position = ref, pos
    m.next_position.ref_index, m.next_position.position = nref, npos
    return m


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_st)
def test_encode_is_byte_identical_to_protobuf(alignment_pb: type, rows: list) -> None:
    al = _alignments(rows)
    enc = encode_column("results", al)
    expected = [_message(alignment_pb, r, c).SerializeToString() for r, c in rows]
    assert enc.tolist() == expected
    back = decode_column("results", enc)
    assert back == al


def _field(num: int, wt: int, value: bytes | int) -> bytes:
    def varint(v: int) -> bytes:
        v &= (1 << 64) - 1
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        return bytes(out)

    tag = varint((num << 3) | wt)
    if wt == 0:
        return tag + varint(value)  # type: ignore[arg-type]
    if wt == 1:
        return tag + struct.pack("<Q", value & (2**64 - 1))  # type: ignore[operator]
    if wt == 5:
        return tag + struct.pack("<I", value & (2**32 - 1))  # type: ignore[operator]
    assert isinstance(value, bytes)
    return tag + varint(len(value)) + value


_pos_st = st.lists(
    st.one_of(
        st.builds(lambda v: _field(1, 0, v), I64),
        st.builds(lambda v: _field(2, 0, v), I64),
        st.builds(lambda v: _field(9, 0, v), st.integers(0, 2**64 - 1)),
        st.builds(lambda b: _field(7, 2, b), st.binary(max_size=5)),
    ),
    max_size=4,
).map(b"".join)

# Valid Alignment encodings protobuf itself never writes: shuffled, repeated and unknown fields.
wire_message = st.lists(
    st.one_of(
        st.builds(lambda v: _field(1, 0, v), st.integers(0, 2**64 - 1)),  # uint32 keeps the low 32 bits
        st.builds(lambda v: _field(2, 0, v), I64),  # int32 too
        st.builds(lambda v: _field(5, 0, v), I64),
        st.builds(lambda s: _field(6, 2, s.encode()), cigar_st),
        st.builds(lambda b: _field(3, 2, b), _pos_st),
        st.builds(lambda b: _field(4, 2, b), _pos_st),
        st.builds(lambda v: _field(15, 0, v), st.integers(0, 2**64 - 1)),
        st.builds(lambda v: _field(100, 1, v), I64),
        st.builds(lambda v: _field(2000, 5, v), I32),
        st.builds(lambda b: _field(21, 2, b), st.binary(max_size=8)),
        st.just(b"\x3b" + _field(1, 0, 5) + b"\x3c"),  # a group, field 7 (unknown)
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=st.lists(wire_message, max_size=8))
def test_decode_accepts_any_valid_encoding_like_protobuf(alignment_pb: type, msgs: list[bytes]) -> None:
    al = decode_column("results", RaggedArray.from_list(msgs))
    for i, raw in enumerate(msgs):
        m = alignment_pb.FromString(raw)
        row = al.fields[i]
        assert int(row["flag"]) == m.flag
        assert int(row["mapq"]) == m.mapping_quality
        assert (int(row["ref_index"]), int(row["position"])) == (m.position.ref_index, m.position.position)
        assert (int(row["next_ref_index"]), int(row["next_position"])) == (
            m.next_position.ref_index,
            m.next_position.position,
        )
        assert int(row["template_length"]) == m.template_length
        assert al.cigars[i] == m.cigar.encode()


def test_absent_submessages_decode_as_zero(alignment_pb: type) -> None:
    raw = alignment_pb(flag=4, cigar="*").SerializeToString()
    al = decode_column("results", RaggedArray.from_list([raw, b""]))
    assert al.fields.tolist() == [(4, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 0)]
    assert al.cigars.tolist() == [b"*", b""]


def test_negative_values_are_ten_byte_varints() -> None:
    al = _alignments([((0, -1, 0, 0, 0, 0, 0), "")])
    raw = encode_column("results", al)[0]
    assert raw == b"\x10" + b"\xff" * 9 + b"\x01" + b"\x1a\x00" + b"\x22\x00"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x08", "truncated varint"),
        (b"\x08" + b"\xff" * 11, "varint longer than 10 bytes"),
        (b"\x32\x05ab", "field extends past the end"),
        (b"\x1a\x03\x08\x01", "field extends past the end"),
        (b"\x00\x01", "field number 0"),
        (b"\x0e\x01", "invalid wire type"),
        (b"\x0c", "unbalanced or too deeply nested group"),
        (b"\x0b\x08\x01", "unbalanced or too deeply nested group"),
    ],
)
def test_decode_rejects_malformed_messages(raw: bytes, message: str) -> None:
    ra = RaggedArray.from_list([b"", raw])
    with pytest.raises(ChunkFormatError, match=f"record 1: malformed Alignment message: {message}") as e:
        decode_column("secondary0", ra, key="ds_0.secondary0")
    assert e.value.context["key"] == "ds_0.secondary0"


def test_encode_checks_shapes() -> None:
    f = np.zeros(2, dtype=ALIGNMENT_DTYPE)
    c = RaggedArray.from_list([b"1M"])
    with pytest.raises(ValueError, match="2 rows but 1 CIGARs"):
        alignment_codec.encode_alignments(f, c.offsets, c.data)
    with pytest.raises(ValueError, match="dtype"):
        alignment_codec.encode_alignments(np.zeros(1, np.int64), c.offsets, c.data)


# ---------------------------------------------------------------- column codecs
def test_column_codecs_by_name() -> None:
    reads = RaggedArray.from_list([b"ACGTN" * 5, b"GATTACA"])
    packed = encode_column("base", reads)
    assert packed.tolist() == [ref_pack(r) for r in reads]
    assert decode_column("base", packed, key="k") == reads
    assert decode_column("base", reads, record_type=RecordType.TEXT) is reads  # TEXT base chunks pass through
    assert encode_column("qual", [b"II", "##"]).tolist() == [b"II", b"##"]
    assert decode_column("metadata", reads) is reads
    assert encode_column("prot", [b"\x00\x01"]).tolist() == [b"\x00\x01"]
    with pytest.raises(TypeError, match="takes Alignments"):
        encode_column("results", reads)
    with pytest.raises(ValueError, match="column 'base': record 1: invalid base 'U'"):
        encode_column("base", [b"ACGT", b"ACGU"])


def test_decode_column_wraps_base_errors_with_key() -> None:
    bad = RaggedArray.from_list([b"\x07" + b"\0" * 7, b"\x05" + b"\0" * 6])
    with pytest.raises(ChunkFormatError, match="record 1: packed size 7") as e:
        decode_column("base", bad, key="ds_0.base")
    assert e.value.context["key"] == "ds_0.base"


@pytest.mark.parametrize("comp", COMPRESSIONS)
def test_big_chunk_round_trip(comp: CompressionType) -> None:
    rng = np.random.default_rng(1)
    n, length = 5000, 101
    data = np.frombuffer(b"ACGTN", np.uint8)[rng.integers(0, 5, n * length)]
    reads = RaggedArray(np.arange(n + 1, dtype=np.uint64) * length, data)
    buf = encode_chunk(encode_column("base", reads), record_type=2, first_ordinal=0, name="x", compression=comp)
    header, raw = decode_chunk(buf, "x_0.base")
    assert decode_column("base", raw, "x_0.base") == reads
    if comp is not CompressionType.UNCOMPRESSED:
        assert len(buf) < n * length * 3 // 8 + 56 + 4 * n  # compression helps beyond 3-bit packing


def test_random_shuffled_rows_round_trip() -> None:
    rng = random.Random(5)
    rows = [((rng.getrandbits(32), rng.randint(-5, 70), rng.randint(-1, 30), rng.randint(-1, 2**40),
              rng.randint(-1, 30), rng.randint(-1, 2**40), rng.randint(-1000, 1000)), f"{rng.randint(1, 151)}M")
            for _ in range(2000)]
    al = _alignments(rows)
    assert decode_column("results", encode_column("results", al)) == al
