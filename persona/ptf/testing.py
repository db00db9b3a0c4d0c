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


# -- soak: many small batches through one long-lived pipeline ----------------------

POISON = -1
"""A soak payload that makes :func:`soak_check` raise (its batch fails)."""


def soak_check(x: int) -> int:
    """Stage: fails on :data:`POISON`, else ``x + 1``."""
    if x == POISON:
        raise ValueError("poisoned feed")
    return x + 1


def soak_spec(name: str = "soak", *, credits: int = 8) -> Any:
    """A small long-lived pipeline: check (2 replicas) -> pairs (aggregate 2) -> mix (2 replicas)."""
    from persona.ptf.spec import PipelineSpec, StageSpec

    return PipelineSpec.chain(name, [
        StageSpec("check", soak_check, replicas=2),
        StageSpec("pairs", total, aggregate=2),
        StageSpec("mix", lambda v: v * 31 % 1_000_003, replicas=2),
    ], capacity=8, credits=credits)


def soak(pipeline: Any, batches: int, *, max_feeds: int = 4, fail_every: int = 13,
         cancel_every: int = 17, stream_every: int = 3, inflight: int = 16,
         timeout: float = 60.0) -> dict[str, int]:
    """Push ``batches`` small batches (1..max_feeds feeds) through a running ``pipeline``
    built from :func:`soak_spec`, ``inflight`` at a time: every ``fail_every``-th has a
    poisoned feed, every ``cancel_every``-th is cancelled right after it is submitted,
    every ``stream_every``-th is a streaming batch. Checks every result; returns counts."""
    from persona.errors import BatchCancelled, StageError

    counts = {"batches": batches, "done": 0, "failed": 0, "cancelled": 0, "streamed": 0}
    live: list[tuple[Any, list[int] | None, bool]] = []

    def settle(h: Any, want: list[int] | None, cancelled: bool) -> None:
        try:
            got = h.result(timeout)
        except BatchCancelled:
            counts["cancelled"] += 1
            return
        except StageError:
            assert want is None or cancelled, "a batch without poison failed"
            counts["failed"] += 1
            return
        assert got == want, (got, want)
        counts["done"] += 1

    for i in range(batches):
        n = 1 + i % max_feeds
        items = [i * 10 + j for j in range(n)]
        poisoned = fail_every and i % fail_every == fail_every - 1
        if poisoned:
            items[i % n] = POISON
        want = None if poisoned else [
            (sum(x + 1 for x in items[k:k + 2]) * 31) % 1_000_003 for k in range(0, n, 2)]
        if stream_every and i % stream_every == 0:
            counts["streamed"] += 1
            stream = pipeline.open_batch()
            for x in items:
                try:
                    stream.put(x)
                except Exception:  # noqa: BLE001 - failed already: the producer stops
                    break
            h = stream.close()
        else:
            h = pipeline.submit(items)
        cancelled = bool(cancel_every and i % cancel_every == cancel_every - 1)
        if cancelled and not h.cancel():
            cancelled = False  # finished already
        live.append((h, want, cancelled))
        if len(live) >= inflight:
            settle(*live.pop(0))
    for entry in live:
        settle(*entry)
    return counts
