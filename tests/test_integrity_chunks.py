"""Issue 8, checksums in chunk payloads: zstd frames carry their content checksum, so a damaged
zstd chunk fails to decode (as gzip's CRC makes a damaged gzip chunk fail); frames written
without one (older datasets) still decode; every decoding error names the chunk key."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import zstandard

from persona.agd.chunk import decode_chunk, encode_chunk, with_checksum, zstd_compressor
from persona.agd.format import HEADER_SIZE, ChunkHeader, CompressionType, RecordType
from persona.agd.ragged import RaggedArray
from persona.errors import ChunkFormatError

pytestmark = pytest.mark.native


def records(n: int = 300, seed: int = 1) -> RaggedArray:
    rng = np.random.default_rng(seed)
    return RaggedArray.from_list([bytes(rng.integers(33, 75, size=int(rng.integers(0, 120))).tolist())
                                  for _ in range(n)])


def chunk(comp: str = "zstd", level: object = None, n: int = 300) -> bytes:
    return encode_chunk(records(n), record_type=RecordType.TEXT, first_ordinal=1000, name="ds",
                        compression=comp, level=level)  # type: ignore[arg-type]


def frame_has_checksum(buf: bytes) -> bool:
    return bool(zstandard.get_frame_parameters(buf[HEADER_SIZE:]).has_checksum)


@pytest.mark.parametrize("level", [None, 1, 19, zstandard.ZstdCompressionParameters.from_level(
    1, strategy=zstandard.STRATEGY_DFAST, min_match=7)])
def test_zstd_chunks_carry_a_content_checksum(level: object) -> None:
    buf = chunk(level=level)
    assert frame_has_checksum(buf)
    header, back = decode_chunk(buf, "ds_1000.qual")
    assert back == records() and header.compression is CompressionType.ZSTD


def test_parameters_keep_their_settings_when_the_checksum_is_added() -> None:
    p = zstandard.ZstdCompressionParameters.from_level(5, window_log=20, min_match=6)
    q = with_checksum(p)
    fields = ("window_log", "min_match", "hash_log", "chain_log", "search_log", "strategy", "target_length")
    assert q.write_checksum == 1 and [getattr(q, f) for f in fields] == [getattr(p, f) for f in fields]
    assert with_checksum(q) is q
    data = bytes(range(256)) * 200
    plain = zstandard.ZstdCompressor(compression_params=p).compress(data)
    summed = zstd_compressor(p).compress(data)
    assert len(summed) == len(plain) + 4  # the same blocks, plus the 4-byte checksum


def test_import_column_parameters_get_the_checksum() -> None:
    from persona.apps.import_fastq import IMPORT_ZSTD_LEVELS

    for lv in IMPORT_ZSTD_LEVELS.values():
        buf = chunk(level=lv)
        assert frame_has_checksum(buf)


def test_a_frame_without_checksum_still_decodes() -> None:
    """Datasets written before checksums came in: their frames have none and must still read."""
    recs = records()
    header = ChunkHeader(RecordType.TEXT, CompressionType.ZSTD, 1000, 1000 + len(recs), "ds").pack()
    payload = recs.lengths.astype("<u4").tobytes() + recs.data.tobytes()
    old = header + zstandard.ZstdCompressor(level=3, write_checksum=False).compress(payload)
    assert not frame_has_checksum(old)
    assert decode_chunk(old, "k")[1] == recs
    # streamed frames without a content size too
    cobj = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    streamed = header + cobj.compress(payload) + cobj.flush()
    assert decode_chunk(streamed, "k")[1] == recs


def flip_all_payload_bits(buf: bytes, stride: int = 7) -> tuple[int, int, int]:
    """(raised, identical, changed) over single-bit flips of the payload (every ``stride``-th bit)."""
    raised = identical = changed = 0
    original = decode_chunk(buf)[1]
    for bit in range(HEADER_SIZE * 8, len(buf) * 8, stride):
        b = bytearray(buf)
        b[bit // 8] ^= 1 << (bit % 8)
        try:
            _, got = decode_chunk(bytes(b), "ds_1000.qual")
        except ChunkFormatError as e:
            assert e.context["key"] == "ds_1000.qual"
            raised += 1
            continue
        if got == original:
            identical += 1
        else:
            changed += 1
    return raised, identical, changed


@pytest.mark.parametrize("comp", ["zstd", "gzip"])
def test_every_payload_bit_flip_is_caught_or_harmless(comp: str) -> None:
    """Before: ~40 % of single-bit flips in a zstd chunk decoded to other content. Now none do."""
    raised, identical, changed = flip_all_payload_bits(chunk(comp, n=80))
    assert changed == 0 and raised > 0, (raised, identical, changed)


def test_flipped_checksum_is_reported_naming_the_key() -> None:
    buf = bytearray(chunk())
    buf[-1] ^= 0x10  # inside the 4-byte XXH64 content checksum
    with pytest.raises(ChunkFormatError, match="zstd") as e:
        decode_chunk(bytes(buf), "ds_1000.qual")
    assert e.value.context["key"] == "ds_1000.qual" and "ds_1000.qual" in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "extend", "garbage", "size"])
def test_zstd_damage_names_the_key(damage: str) -> None:
    buf = chunk()
    if damage == "truncate":
        bad = buf[:-9]
    elif damage == "extend":
        bad = buf + b"\0\0\0"
    elif damage == "garbage":
        bad = buf[:HEADER_SIZE] + b"\x28\xb5\x2f\xfd" + bytes(range(40))
    else:  # a frame declaring a huge content size: never allocated on trust
        params = zstandard.ZstdCompressionParameters.from_level(3, write_checksum=1)
        cobj = zstandard.ZstdCompressor(compression_params=params).compressobj(size=(1 << 30) + 5)
        bad = buf[:HEADER_SIZE] + cobj.compress(b"x" * 10) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    with pytest.raises(ChunkFormatError) as e:
        decode_chunk(bad, "ds_1000.qual")
    assert e.value.context["key"] == "ds_1000.qual"


def test_gzip_is_unchanged_and_compatible() -> None:
    """gzip chunks stay byte-identical to what the original writes (one member, CRC32)."""
    recs = records()
    buf = chunk("gzip")
    payload = recs.lengths.astype("<u4").tobytes() + recs.data.tobytes()
    z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 31, 9)
    assert buf[HEADER_SIZE:] == z.compress(payload) + z.flush()
