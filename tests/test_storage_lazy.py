"""Lazy asynchronous reads (persona/storage/lazy.py) on every backend: file, memory, Ceph (aio_read) and S3
(ranged GETs on radosgw), with the blocks held, and the memory used, bounded by block size x prefetch."""
from __future__ import annotations

import os
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_storage_s3 import s3_admin, s3_bucket, s3_env, s3_url  # noqa: F401 - fixtures

from persona.errors import StoreError, StoreKeyError
from persona.storage import Store, open_store
from persona.storage.lazy import BlockReader, _native_async, iter_objects

KiB, MiB = 1024, 1024 * 1024
BACKENDS = ["file", "memory", pytest.param("ceph", marks=pytest.mark.ceph), pytest.param("s3", marks=pytest.mark.ceph)]
DATA = os.urandom(3 * MiB + 12345)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    if kind == "file":
        yield open_store(str(tmp_path / "store"))
    elif kind == "memory":
        yield open_store(f"memory://lazy-{uuid.uuid4().hex[:8]}")
    elif kind == "ceph":
        cluster = request.getfixturevalue("ceph_cluster")
        st = open_store(cluster.ceph_url(f"lazy-{uuid.uuid4().hex[:10]}"))
        yield st
        for k in st.list():
            st.delete(k)
    else:
        yield open_store(request.getfixturevalue("s3_url"))


def test_blocks_in_order_and_bounded(store: Store) -> None:
    store.put("obj", DATA)
    with BlockReader(store, "obj", block_size=256 * KiB, prefetch=3) as r:
        blocks = list(r)
    assert b"".join(blocks) == DATA
    assert len(blocks) == -(-len(DATA) // (256 * KiB))
    assert all(len(b) == 256 * KiB for b in blocks[:-1])
    assert r.blocks_read == len(blocks) and r.bytes_read == len(DATA)
    assert 1 < r.peak_blocks <= 4  # prefetch in flight + the one being consumed


def test_read_like_a_file_and_ranges(store: Store) -> None:
    store.put("obj", DATA)
    r = BlockReader(store, "obj", block_size=100 * KiB, prefetch=2)
    assert r.read(10) == DATA[:10] and r.tell() == 10
    assert r.read(250 * KiB) == DATA[10 : 10 + 250 * KiB]
    assert r.read() == DATA[10 + 250 * KiB :]
    assert r.read(5) == b"" and r.tell() == len(DATA)
    part = BlockReader(store, "obj", block_size=64 * KiB, start=MiB + 7, length=300 * KiB)
    assert part.read() == DATA[MiB + 7 : MiB + 7 + 300 * KiB]
    assert list(BlockReader(store, "obj", start=len(DATA) + 10)) == []
    store.put("empty", b"")
    assert list(BlockReader(store, "empty")) == []
    with pytest.raises(StoreKeyError, match="nope"):
        BlockReader(store, "nope")


def test_iter_objects(store: Store) -> None:
    keys = [f"ds_{i * 1000}.base" for i in range(7)]
    for i, k in enumerate(keys):
        store.put(k, DATA[i * 1000 : (i + 1) * 1000 + i])
    got = list(iter_objects(store, keys, prefetch=3))
    assert [k for k, _ in got] == keys
    assert all(v == DATA[i * 1000 : (i + 1) * 1000 + i] for i, (_, v) in enumerate(got))
    with pytest.raises(StoreKeyError, match="missing"):
        list(iter_objects(store, [keys[0], "missing"]))


def test_peak_memory_is_bounded_by_blocks_not_object(store: Store, request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params["store"] == "memory":
        pytest.skip("a memory store holds the object itself")
    big = os.urandom(16 * MiB)
    store.put("big", big)
    size, crc = 0, 0
    import zlib

    tracemalloc.start()
    try:
        for block in BlockReader(store, "big", block_size=512 * KiB, prefetch=2):
            size += len(block)
            crc = zlib.crc32(block, crc)
            del block
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == len(big) and crc == zlib.crc32(big)
    # at most 3 blocks (1.5 MiB) held, plus the clients' own buffers: far below the 16 MiB object
    assert peak < 5 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_ceph_reads_through_aio(store: Store, request: pytest.FixtureRequest) -> None:
    native = _native_async(store, "k")
    if request.node.callspec.params["store"] == "ceph":
        assert native is not None and type(native[0]).__name__ == "CephStore"
        child = store.child("sub")
        child.put("k", b"abc" * 1000)
        assert BlockReader(child, "k", block_size=1000).read() == b"abc" * 1000
    else:
        assert native is None  # read on the shared thread pool


def test_object_changed_while_read_is_an_error() -> None:
    store = open_store(f"memory://lazy-{uuid.uuid4().hex[:8]}")
    store.put("obj", DATA[: 40 * KiB])
    r = BlockReader(store, "obj", block_size=KiB, prefetch=1)
    next(r)
    store.put("obj", DATA[: 2 * KiB])  # replaced by a shorter object while being read
    with pytest.raises(StoreError, match="ended early"):
        list(r)


def test_block_size_and_prefetch_from_the_config() -> None:
    from persona.config import load_config, set_config

    store = open_store(f"memory://lazy-{uuid.uuid4().hex[:8]}")
    store.put("obj", DATA[:300 * KiB])
    set_config(load_config(env={}, overrides={"storage.read_block_kb": 64, "storage.read_prefetch": 3}))
    try:
        r = BlockReader(store, "obj")
        assert (r.block_size, r.prefetch) == (64 * KiB, 3)
        assert len(list(r)) == 5
    finally:
        set_config(None)
    assert BlockReader(store, "obj", block_size=100 * KiB).prefetch == 2
