"""Small stage functions for examples, YAML configs and tests (like bytewax.testing).

They are real (they compress and checksum bytes) so an example pipeline does
work a user can check, and they release the GIL where zstd/zlib do.
"""
from __future__ import annotations

import zlib
from typing import Any

import zstandard

_level = 3


def identity(payload: Any) -> Any:
    """Return the payload unchanged (gate-overhead benchmarks)."""
    return payload


def make_block(seed: int, size: int = 1 << 16) -> bytes:
    """A deterministic, compressible block of ``size`` bytes for feed ``seed``."""
    unit = f"feed-{seed:08d}-ACGT".encode() * 8
    return (unit * (size // len(unit) + 1))[:size]


def block(seed: int) -> bytes:
    """Stage: feed number -> 64 KiB block."""
    return make_block(int(seed))


def compress(data: bytes) -> bytes:
    """Stage: zstd-compress (releases the GIL)."""
    return zstandard.ZstdCompressor(level=_level).compress(data)


def crc32(data: bytes) -> int:
    """Stage: CRC-32 of the bytes."""
    return zlib.crc32(data)


def total(values: list[int]) -> int:
    """Aggregate stage: sum of a group."""
    return sum(values)
