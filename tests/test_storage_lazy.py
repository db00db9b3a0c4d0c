"""Lazy asynchronous reads (persona/storage/lazy.py) on every backend: file, memory, Ceph (aio_read) and S3
(ranged GETs on radosgw), with the blocks held, and the memory used, bounded by block size x prefetch."""
from __future__ import annotations

import os
import shutil
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_storage_s3 import s3_admin, s3_bucket, s3_env, s3_url  # noqa: F401 - fixtures

from persona.errors import StoreError, StoreKeyError
from persona.storage import Store, StoreUsageError, open_store
from persona.storage.lazy import BlockReader, _native_async, iter_objects

KiB, MiB = 1024, 1024 * 1024
BACKENDS = ["file", "memory", pytest.param("ceph", marks=pytest.mark.ceph), pytest.param("s3", marks=pytest.mark.ceph)]
DATA = os.urandom(3 * MiB + 12345)
SAMPLE = Path(__file__).resolve().parent.parent / "persona" / "data"


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


# ---------------------------------------------------------------------- probing readers, object scans
def test_probing_reader_needs_no_stat(store: Store) -> None:
    store.put("small", DATA[:5000])
    r = BlockReader(store, "small", block_size=64 * KiB, stat=False)
    assert r.end is None  # nothing asked but the first block
    assert list(r) == [DATA[:5000]] and r.end == 5000 and r.blocks_read == 1
    store.put("exact", DATA[: 128 * KiB])  # a whole number of blocks: the size is asked after the first
    assert b"".join(BlockReader(store, "exact", block_size=64 * KiB, stat=False)) == DATA[: 128 * KiB]
    big = BlockReader(store, "obj-missing-yet", block_size=64 * KiB, stat=False, prefetch=3)
    with pytest.raises(StoreKeyError, match="obj-missing-yet"):
        list(big)  # the error comes with the first block
    store.put("obj", DATA)
    r = BlockReader(store, "obj", block_size=100 * KiB, stat=False, prefetch=3)
    assert b"".join(r) == DATA and r.peak_blocks <= 4
    store.put("empty", b"")
    assert list(BlockReader(store, "empty", stat=False)) == []


def test_object_scan_reads_groups_with_crcs_and_bounded_holding(store: Store) -> None:
    import zlib

    from persona.storage.lazy import HELD, ObjectScan

    block, prefetch = 32 * KiB, 2
    sizes = [0, 100, 31 * KiB, 32 * KiB, 200 * KiB + 5, 3 * KiB]
    groups = []
    for p in range(8):
        keys = tuple(f"ds_{p * 100}.{c}" for c in ("base", "qual", "results"))
        for j, k in enumerate(keys):
            n = sizes[(p + j) % len(sizes)]
            store.put(k, DATA[p * 1000 + j : p * 1000 + j + n])
        groups.append(keys)
    HELD.reset_peak()
    base = HELD.now
    read: set[int] = set()
    with ObjectScan(store, groups, block_size=block, prefetch=prefetch, lookahead=1) as scan:
        for p in [0, 1, 2, 3, 6, 4, 5, 7, 2]:  # in order, then out of order, then a group again
            got = scan.read(p)
            for (buf, crc), k in zip(got, groups[p]):
                want = store.get(k)
                assert bytes(buf) == want and crc == zlib.crc32(want), k
            read.add(p)
            # started ahead: at most the next group (lookahead 1) and one not yet read
            assert len(scan._started) <= 2 and not set(scan._started) & read, (p, scan._started)
        assert scan.objects_read == 27 and scan.blocks_read > 27  # the 200 KiB files came in blocks
        # held at most: the file being assembled, plus (lookahead + 1) groups of 3 readers, each
        # prefetch + 1 blocks (a probe counts a whole block)
        bound = max(sizes) + 2 * 3 * (prefetch + 1) * block
        assert 0 < scan.held.peak <= bound, (scan.held.peak, bound)
    assert scan.held.now == 0 and HELD.now == base  # nothing left counted once closed
    with pytest.raises(StoreUsageError, match="closed"):
        scan.read(0)
    with pytest.raises(StoreKeyError, match="ds_missing.base"):
        ObjectScan(store, [("ds_missing.base",)]).read(0)


# ---------------------------------------------------------------------- export reads lazily from Ceph
@pytest.fixture(scope="module")
def aligned_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged sample (8,000 reads), imported in 8 chunks and aligned, on a local disk."""
    from persona.align.reference import add_reference
    from persona.apps.align import AlignRequest
    from persona.apps.importer import ImportRequest
    from persona.runtime import Runtime

    d = tmp_path_factory.mktemp("lazy-export")
    add_reference("measles", SAMPLE / "sample_reference.fasta", str(d / "refs"))
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(SAMPLE / "sample_R1.fastq.gz"), str(SAMPLE / "sample_R2.fastq.gz")),
                             output=str(d / "ds"), name="sample", chunk_size=500))
        rt.run(AlignRequest(dataset=str(d / "ds"), reference="measles", references_url=str(d / "refs")))
    return d / "ds"


@pytest.mark.ceph
@pytest.mark.timeout(300)
def test_export_from_ceph_reads_lazily_identical_and_bounded(ceph_cluster, aligned_sample: Path,
                                                              tmp_path: Path) -> None:
    """Export's read stage on a ceph:// dataset goes through an ObjectScan (blocks of
    ``storage.read_block_kb``, the next chunk's reads started ahead, CRC-32 checked as blocks
    arrive): the SAM is the local export's (bar the @PG line of ``persona cp``), and the bytes held by the readers stay
    within block size x prefetch x columns plus one file, a fraction of the dataset."""
    from persona.agd.dataset import Dataset
    from persona.apps.copy import copy_dataset
    from persona.apps.export import ExportRequest
    from persona.config import load_config, set_config
    from persona.errors import StageError
    from persona.runtime import Runtime

    url = ceph_cluster.ceph_url(f"lazyexp-{uuid.uuid4().hex[:10]}")
    copy_dataset(str(aligned_sample), url, threads=4)
    remote = open_store(url)
    local_sam, ceph_sam = tmp_path / "local.sam", tmp_path / "ceph.sam"
    block, prefetch = 4 * KiB, 2
    set_config(load_config(env={}, overrides={"storage.read_block_kb": block // KiB, "storage.read_prefetch": prefetch}))
    try:
        with Runtime(threads=2) as rt:
            rt.run(ExportRequest(dataset=str(aligned_sample), output=str(local_sam), format="sam"))
            h = rt.submit(ExportRequest(dataset=url, output=str(ceph_sam), format="sam"))
            h.result(timeout=120)
            scan = h.job._scan
            # the same records and header, but for the @PG line persona cp added
            def lines(p: Path) -> list[str]:
                return [ln for ln in p.read_text().splitlines() if not ln.startswith("@PG")]
            assert lines(local_sam) == lines(ceph_sam) and len(lines(local_sam)) > 8000
            ds = Dataset.open(url)
            files = [remote.size(ds.chunk_key(i, c)) for i in range(len(ds.chunks)) for c in h.job.read_columns]
            ncols = len(h.job.read_columns)
            assert len(ds.chunks) == 8 and scan.objects_read == len(files)
            assert scan.blocks_read > len(files)  # files larger than a block came in several
            bound = max(files) + 2 * ncols * (prefetch + 1) * block
            assert 0 < scan.held.peak <= bound, (scan.held.peak, bound)
            assert scan.held.peak < sum(files) / 2  # (the bound does not grow with the chunks)
            assert scan.held.now == 0

            # a damaged chunk file is still caught: the CRC-32 computed from the blocks
            key = ds.chunk_key(5, "qual")
            raw = bytearray(remote.get(key))
            raw[-1] ^= 0xFF
            remote.put(key, raw)
            with pytest.raises(StageError) as err:
                rt.run(ExportRequest(dataset=url, output=str(tmp_path / "bad.sam"), format="sam"))
            assert "checksum mismatch" in str(err.value) and key in str(err.value) and "stage=read" in str(err.value)
    finally:
        set_config(None)
        for k in remote.list():
            remote.delete(k)


@pytest.mark.ceph
@pytest.mark.timeout(300)
def test_markdup_on_ceph_reads_lazily_and_flags_as_locally(ceph_cluster, aligned_sample: Path,
                                                           tmp_path: Path) -> None:
    """Duplicate marking's read stage on a ceph:// dataset is the dataset scan's (an ObjectScan:
    every chunk file of its columns in blocks, held bytes bounded): the flags and the metrics
    equal those of the same markdup on the local copy."""
    from persona.agd.dataset import Dataset
    from persona.apps.copy import copy_dataset
    from persona.apps.markdup import MarkdupRequest, read_metrics
    from persona.config import load_config, set_config
    from persona.runtime import Runtime

    local = tmp_path / "local"
    shutil.copytree(aligned_sample, local)
    url = ceph_cluster.ceph_url(f"lazymd-{uuid.uuid4().hex[:10]}")
    copy_dataset(str(aligned_sample), url, threads=4)
    remote = open_store(url)
    block, prefetch = 4 * KiB, 2
    set_config(load_config(env={}, overrides={"storage.read_block_kb": block // KiB, "storage.read_prefetch": prefetch}))
    try:
        with Runtime(threads=2) as rt:
            rt.run(MarkdupRequest(dataset=str(local), metrics=str(tmp_path / "local.txt")))
            h = rt.submit(MarkdupRequest(dataset=url, metrics=str(tmp_path / "ceph.txt")))
            h.result(timeout=120)
        scan = h.job._scan
        ds, lds = Dataset.open(url), Dataset.open(str(local))
        files = [remote.size(ds.chunk_key(i, c)) for i in range(len(ds.chunks)) for c in h.job.read_columns]
        assert scan is not None and scan.objects_read == len(files) and scan.blocks_read > len(files)
        assert 0 < scan.held.peak <= max(files) + 2 * len(h.job.read_columns) * (prefetch + 1) * block
        assert scan.held.now == 0

        def flags(d: Dataset) -> list[bytes]:
            return [bytes(d.read_file(i, "results")) for i in range(len(d.chunks))]

        assert flags(ds) == flags(lds)
        got, want = read_metrics(str(tmp_path / "ceph.txt")), read_metrics(str(tmp_path / "local.txt"))
        assert got == want and int(want[0]["READ_PAIR_DUPLICATES"]) + int(want[0]["UNPAIRED_READ_DUPLICATES"]) > 0
    finally:
        set_config(None)
        for k in remote.list():
            remote.delete(k)


def test_remote_stores_say_so(store: Store, request: pytest.FixtureRequest) -> None:
    """``remote`` (what makes the dataset read stage scan lazily) is set on Ceph and S3 and their views."""
    want = request.node.callspec.params["store"] in ("ceph", "s3")
    assert store.remote is want and store.child("sub").remote is want
