"""The 56-byte AGD v0.1 chunk header (thesis §3.2.1 "Chunk File Format").

Byte layout, little-endian, identical to the original's packed
``format::FileHeader``::

    uint8  version_major   = 0
    uint8  version_minor   = 1
    uint8  record_type       RecordType
    uint8  compression_type  CompressionType
    uint16 segment_start   = 56 (offset of the payload)
    uint16 padding         = 0
    uint64 first_ordinal     global index of the chunk's first record
    uint64 last_ordinal      first_ordinal + number of records (exclusive end)
    char   string_id[32]     dataset name, NUL padded, truncated to 32 bytes
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from persona.errors import ChunkFormatError

HEADER = struct.Struct("<BBBBHHQQ32s")
HEADER_SIZE = HEADER.size  # 56
VERSION_MAJOR = 0
VERSION_MINOR = 1
STRING_ID_SIZE = 32


class RecordType(enum.IntEnum):
    """How a column's records are interpreted (``format.h`` RecordType)."""

    TEXT = 0
    STRUCTURED = 1
    COMPACTED_BASES = 2


class CompressionType(enum.IntEnum):
    """Payload compression. BZIP2 is declared by the original but never implemented;
    ZSTD is our extension (the original cannot read it, use GZIP for exchange)."""

    UNCOMPRESSED = 0
    BZIP2 = 1
    GZIP = 2
    ZSTD = 3

    @classmethod
    def parse(cls, value: "CompressionType | str | int") -> "CompressionType":
        """Accept a member, its value, or its name in any case (``"zstd"``; ``"none"`` = uncompressed)."""
        if isinstance(value, cls):
            return value
        try:
            if isinstance(value, str):
                name = value.strip().upper()
                return cls.UNCOMPRESSED if name == "NONE" else cls[name]
            return cls(value)
        except (KeyError, ValueError):
            names = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown compression {value!r}; expected one of {names}") from None


def _encode_string_id(name: str) -> bytes:
    """UTF-8, cut to 32 bytes on a character boundary (so it decodes cleanly).

    The field is informational: characters UTF-8 cannot carry (lone surrogates,
    e.g. from an undecodable file name) become '?' rather than failing the write.
    """
    raw = name.encode("utf-8", errors="replace")
    if len(raw) <= STRING_ID_SIZE:
        return raw
    cut = STRING_ID_SIZE
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # don't split a multi-byte character
        cut -= 1
    return raw[:cut]


def string_id_for(name: str) -> str:
    """The ``string_id`` a header written for dataset ``name`` reads back as (cut to 32 bytes)."""
    return _encode_string_id(name).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ChunkHeader:
    """A decoded chunk header. ``string_id`` is stored truncated to 32 UTF-8 bytes."""

    record_type: RecordType
    compression: CompressionType
    first_ordinal: int
    last_ordinal: int
    string_id: str = ""
    segment_start: int = HEADER_SIZE
    version_major: int = VERSION_MAJOR
    version_minor: int = VERSION_MINOR

    @property
    def num_records(self) -> int:
        return self.last_ordinal - self.first_ordinal

    def pack(self) -> bytes:
        """The 56 header bytes."""
        return HEADER.pack(
            self.version_major,
            self.version_minor,
            int(self.record_type),
            int(self.compression),
            self.segment_start,
            0,
            self.first_ordinal,
            self.last_ordinal,
            _encode_string_id(self.string_id),
        )

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, key: str | None = None) -> "ChunkHeader":
        """Parse and validate the header at the start of ``buf`` (a whole chunk or its
        first 56 bytes). Raises :class:`ChunkFormatError` naming ``key`` when the bytes
        cannot be a v0.1 header. ``segment_start`` is checked against the file size
        by :func:`persona.agd.chunk.decode_chunk`, which knows it."""
        if len(buf) < HEADER_SIZE:
            raise ChunkFormatError(
                f"truncated header: {len(buf)} bytes, an AGD chunk starts with {HEADER_SIZE}", key=key
            )
        major, minor, rtype, ctype, seg, _pad, first, last, sid = HEADER.unpack_from(buf, 0)
        if (major, minor) != (VERSION_MAJOR, VERSION_MINOR):
            raise ChunkFormatError(
                f"unsupported AGD version {major}.{minor} (expected {VERSION_MAJOR}.{VERSION_MINOR}); "
                "not an AGD chunk?",
                key=key,
            )
        try:
            record_type = RecordType(rtype)
        except ValueError:
            raise ChunkFormatError(f"unknown record type {rtype} in header", key=key) from None
        try:
            compression = CompressionType(ctype)
        except ValueError:
            raise ChunkFormatError(f"unknown compression type {ctype} in header", key=key) from None
        if seg < HEADER_SIZE:
            raise ChunkFormatError(f"segment_start {seg} lies inside the {HEADER_SIZE}-byte header", key=key)
        if last < first:
            raise ChunkFormatError(f"last_ordinal {last} < first_ordinal {first}", key=key)
        string_id = sid.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return cls(
            record_type=record_type,
            compression=compression,
            first_ordinal=first,
            last_ordinal=last,
            string_id=string_id,
            segment_start=seg,
            version_major=major,
            version_minor=minor,
        )
