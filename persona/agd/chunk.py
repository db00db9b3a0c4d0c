"""Encode and decode one AGD chunk file (one column of one chunk).

A chunk file is the 56-byte header (:mod:`persona.agd.format`) followed by the
payload: a relative index of N ``uint32`` record lengths, then the N records
back to back. The payload is stored raw, as ONE gzip member (zlib level -1,
window 15 + gzip wrapper, memLevel 9: exactly what the original writes and
reads), or as one zstd frame (our extension, the default for new datasets). zstd
frames are written with their content checksum (XXH64 of the payload), so a
damaged zstd chunk fails to decode just as a damaged gzip chunk fails its CRC;
frames without a checksum (datasets written before) still decode.

Decoding never trusts the file: every size is checked against the bytes that
are really there, and any problem raises :class:`ChunkFormatError` naming the
chunk key. The decoded :class:`RaggedArray` is a view into the decompressed
buffer (no copy of the records).
"""
from __future__ import annotations

import zlib

import numpy as np
import zstandard

from persona.agd.format import ChunkHeader, CompressionType, RecordType
from persona.agd.ragged import RaggedArray
from persona.errors import ChunkFormatError

DEFAULT_ZSTD_LEVEL = 3
_MAX_RECORD = 0xFFFFFFFF  # the relative index is uint32
_INDEX_DTYPE = np.dtype("<u4")
# A sanity bound on a declared decompressed size, so a corrupt frame header cannot
# make us allocate terabytes (a chunk is normally a few MB to a few hundred MB).
_MAX_PAYLOAD = 1 << 36
# Declared sizes up to this are allocated at once; larger ones are decoded incrementally.
_ONE_SHOT_MAX = 1 << 28

Buffer = bytes | bytearray | memoryview


def encode_chunk(
    records: RaggedArray,
    *,
    record_type: RecordType | int,
    first_ordinal: int,
    name: str,
    compression: CompressionType | str | int = CompressionType.ZSTD,
    level: int | zstandard.ZstdCompressionParameters | None = None,
) -> bytes:
    """The bytes of a chunk file holding ``records`` (already column-encoded).

    ``name`` goes into the header's ``string_id``; ``level`` is the gzip (-1..9) or
    zstd (1..22) level, None for the default; for zstd it may also be a full
    ``zstandard.ZstdCompressionParameters`` (per-column tuning, e.g. for qualities). BZIP2 is rejected (never implemented
    by the original either).
    """
    compression = CompressionType.parse(compression)
    n = len(records)
    if first_ordinal < 0:
        raise ValueError(f"first_ordinal must be >= 0, got {first_ordinal}")
    lengths = records.lengths
    if n and int(lengths.max()) > _MAX_RECORD:
        raise ValueError(f"record of {int(lengths.max())} bytes does not fit AGD's uint32 index")
    header = ChunkHeader(
        record_type=RecordType(record_type),
        compression=compression,
        first_ordinal=first_ordinal,
        last_ordinal=first_ordinal + n,
        string_id=name,
    ).pack()
    index = lengths.astype(_INDEX_DTYPE)
    data = records.data
    if compression is CompressionType.UNCOMPRESSED:
        return b"".join((header, index.data, data.data))
    if compression is CompressionType.GZIP:
        gz = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION if level is None else level, zlib.DEFLATED, 31, 9
        )
        return b"".join((header, gz.compress(index.data), gz.compress(data.data), gz.flush()))
    if isinstance(level, zstandard.ZstdCompressionParameters) and compression is not CompressionType.ZSTD:
        raise ValueError(f"zstd compression parameters given for {compression.name} compression")
    if compression is CompressionType.ZSTD:
        cctx = zstd_compressor(level)
        # Stating the content size lets the reader decompress in one allocation.
        zobj = cctx.compressobj(size=index.nbytes + data.nbytes)
        return b"".join((header, zobj.compress(index.data), zobj.compress(data.data), zobj.flush()))
    raise ValueError(f"compression {compression.name} is not supported")


_PARAM_FIELDS = (
    "format", "compression_level", "window_log", "hash_log", "chain_log", "search_log", "min_match",
    "target_length", "strategy", "write_content_size", "write_dict_id", "job_size", "overlap_log",
    "force_max_window", "enable_ldm", "ldm_hash_log", "ldm_min_match", "ldm_bucket_size_log",
    "ldm_hash_rate_log", "threads",
)


def with_checksum(params: zstandard.ZstdCompressionParameters) -> zstandard.ZstdCompressionParameters:
    """``params`` with the frame content checksum switched on (every other setting kept)."""
    if params.write_checksum:
        return params
    kwargs = {f: getattr(params, f) for f in _PARAM_FIELDS if hasattr(params, f)}
    return zstandard.ZstdCompressionParameters(write_checksum=1, **kwargs)


def zstd_compressor(level: int | zstandard.ZstdCompressionParameters | None = None) -> zstandard.ZstdCompressor:
    """The compressor for chunk payloads: ``level`` (None: the default) or full parameters,
    always writing the frame's content checksum (XXH64), so a flipped bit in a stored chunk
    is detected when it is decoded, as gzip's CRC does for gzip chunks."""
    if isinstance(level, zstandard.ZstdCompressionParameters):
        return zstandard.ZstdCompressor(compression_params=with_checksum(level))
    return zstandard.ZstdCompressor(level=DEFAULT_ZSTD_LEVEL if level is None else level, write_checksum=True)


def decode_header(buf: Buffer, key: str | None = None) -> ChunkHeader:
    """The validated header of a whole chunk file (checks segment_start against its size)."""
    header = ChunkHeader.unpack(buf, key)
    if header.segment_start > len(buf):
        raise ChunkFormatError(
            f"segment_start {header.segment_start} is beyond the end of the {len(buf)}-byte file", key=key
        )
    return header


def decompress_payload(header: ChunkHeader, payload: Buffer, key: str | None = None) -> Buffer:
    """The uncompressed ``index ‖ data`` bytes of a chunk (a view when stored raw)."""
    c = header.compression
    if c is CompressionType.UNCOMPRESSED:
        return payload
    if c is CompressionType.GZIP:
        return _gunzip(payload, key)
    if c is CompressionType.ZSTD:
        return _unzstd(payload, key)
    raise ChunkFormatError(f"compression {c.name} is not supported (never implemented by AGD)", key=key)


def _gunzip(payload: Buffer, key: str | None) -> bytes:
    # wbits 47 = auto-detect gzip or zlib wrapper, as the original's inflateInit2(15|32).
    parts = []
    rest: Buffer = payload
    while True:
        d = zlib.decompressobj(47)
        try:
            parts.append(d.decompress(rest))
        except zlib.error as e:
            raise ChunkFormatError(f"corrupt gzip payload: {e}", key=key) from None
        if not d.eof:
            raise ChunkFormatError("truncated gzip payload (stream ends early)", key=key)
        rest = d.unused_data
        if not rest:
            break
        # Concatenated gzip members are valid gzip; anything else after the stream is not.
        if rest[:2] != b"\x1f\x8b":
            raise ChunkFormatError(f"{len(rest)} stray bytes after the gzip payload", key=key)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _unzstd(payload: Buffer, key: str | None) -> bytes:
    """One zstd frame, decoded and checked: its content checksum when it has one (every frame
    we write since checksums came in; older frames without one are still accepted), its
    declared size, nothing after it. Any problem is a ChunkFormatError naming ``key``."""
    dctx = zstandard.ZstdDecompressor()
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as e:
        raise ChunkFormatError(f"corrupt zstd payload: {e}", key=key) from None
    size = params.content_size
    if size != zstandard.CONTENTSIZE_UNKNOWN and size > _MAX_PAYLOAD:
        raise ChunkFormatError(f"zstd frame claims an implausible size of {size} bytes", key=key)
    try:
        if size != zstandard.CONTENTSIZE_UNKNOWN and size <= _ONE_SHOT_MAX:
            return dctx.decompress(payload, allow_extra_data=False)
        # A frame written without its size (streaming writers), or claiming a size too large to
        # allocate on trust: decompress incrementally (zstd checks the declared size at the end).
        dobj = dctx.decompressobj()
        out = dobj.decompress(payload)
    except zstandard.ZstdError as e:
        raise ChunkFormatError(f"corrupt or truncated zstd payload: {e}", key=key) from None
    except MemoryError:
        raise ChunkFormatError(f"zstd frame claims {size} bytes, more than can be allocated", key=key) from None
    if not dobj.eof:
        raise ChunkFormatError("truncated zstd payload (frame ends early)", key=key)
    if dobj.unused_data:
        raise ChunkFormatError(f"{len(dobj.unused_data)} stray bytes after the zstd frame", key=key)
    if size != zstandard.CONTENTSIZE_UNKNOWN and len(out) != size:
        raise ChunkFormatError(f"zstd frame declares {size} bytes but holds {len(out)}", key=key)
    return out


def split_payload(raw: Buffer, num_records: int, key: str | None = None) -> RaggedArray:
    """Turn ``index ‖ data`` into a RaggedArray (views into ``raw``), validating sizes."""
    index_bytes = 4 * num_records
    if len(raw) < index_bytes:
        raise ChunkFormatError(
            f"payload of {len(raw)} bytes is shorter than the index of {num_records} records "
            f"({index_bytes} bytes)",
            key=key,
        )
    buf = np.frombuffer(raw, dtype=np.uint8)
    index = buf[:index_bytes].view(_INDEX_DTYPE)
    data = buf[index_bytes:]
    offsets = np.empty(num_records + 1, dtype=np.uint64)
    offsets[0] = 0
    np.cumsum(index, dtype=np.uint64, out=offsets[1:])
    if int(offsets[-1]) != data.size:
        raise ChunkFormatError(
            f"index says {int(offsets[-1])} bytes of records but the payload holds {data.size}",
            key=key,
        )
    return RaggedArray(offsets, data, validate=False)


def decode_chunk(buf: Buffer, key: str | None = None) -> tuple[ChunkHeader, RaggedArray]:
    """Parse a whole chunk file: its header and its records (still column-encoded)."""
    header = decode_header(buf, key)
    payload = memoryview(buf)[header.segment_start :]
    raw = decompress_payload(header, payload, key)
    return header, split_payload(raw, header.num_records, key)
