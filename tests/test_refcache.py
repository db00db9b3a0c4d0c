"""The compute node's reference cache (persona/storage/refcache.py): fetched once per machine by
concurrent processes, checked on every use (a damaged copy is fetched again), bounded in size
(least recently used evicted, never an entry in use), and wired into reference loading."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from persona.config import load_config, set_config
from persona.storage import Store, open_store
from persona.storage.refcache import CacheIntegrityError, NodeCache, node_cache

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def _put(store: Store, key: str, size: int) -> tuple[str, int]:
    data = os.urandom(size)
    store.put(key, data)
    return hashlib.sha256(data).hexdigest(), size


_WORKER = """
import json, sys
from persona.storage import open_store
from persona.storage.refcache import NodeCache
cache = NodeCache(sys.argv[1], 1 << 30)
with cache.open(open_store(sys.argv[2]), sys.argv[3], sha256=sys.argv[4], size=int(sys.argv[5]), suffix=".mmi") as u:
    data = u.path.read_bytes()
print(json.dumps({"fetched": u.fetched, "path": str(u.path), "n": len(data)}))
"""


@pytest.mark.parametrize("source", ["file", pytest.param("ceph", marks=pytest.mark.ceph)])
def test_two_processes_fetch_once(source: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if source == "ceph":
        url = request.getfixturevalue("ceph_cluster").ceph_url(f"rc-{uuid.uuid4().hex[:10]}")
    else:
        url = str(tmp_path / "refs")
    store = open_store(url)
    digest, size = _put(store, "ref/minimap2-sr.mmi", 24 * MiB)
    cache_dir = tmp_path / "cache"
    args = [sys.executable, "-c", _WORKER, str(cache_dir), url, "ref/minimap2-sr.mmi", digest, str(size)]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["fetched"] for o in outs) == [False, True]  # one fetched, the other waited and used it
    assert outs[0]["path"] == outs[1]["path"] and all(o["n"] == size for o in outs)
    assert sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")) == [f"{digest}.mmi",
                                                                                          f"{digest}.stamp"]
    if source == "ceph":
        for k in store.list():
            store.delete(k)


def test_corruption_is_detected_and_refetched(tmp_path: Path) -> None:
    store = open_store(f"memory://rc-{uuid.uuid4().hex[:8]}")
    digest, size = _put(store, "idx", 3 * MiB)
    cache = NodeCache(tmp_path / "cache", 64 * MiB)
    with cache.open(store, "idx", sha256=digest, size=size) as u:
        assert u.fetched and not u.refetched
        path = u.path
    with cache.open(store, "idx", sha256=digest, size=size) as u:
        assert not u.fetched  # a warm cache
    with open(path, "r+b") as f:  # a bit flipped on the local disk
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 1]))
    with cache.open(store, "idx", sha256=digest, size=size) as u:
        assert u.fetched and u.refetched
        assert hashlib.sha256(u.path.read_bytes()).hexdigest() == digest
    assert cache.fetches == 2
    path.write_bytes(b"short")  # truncated
    with cache.open(store, "idx", sha256=digest, size=size) as u:
        assert u.refetched and u.path.stat().st_size == size


def test_damaged_store_object_is_refused(tmp_path: Path) -> None:
    store = open_store(f"memory://rc-{uuid.uuid4().hex[:8]}")
    digest, size = _put(store, "idx", MiB)
    store.put("idx", b"x" * size)  # replaced behind the description's back
    cache = NodeCache(tmp_path / "cache", 64 * MiB)
    with pytest.raises(CacheIntegrityError, match="damaged in the store"):
        with cache.open(store, "idx", sha256=digest, size=size):
            pass
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_eviction_by_size_least_recently_used_first(tmp_path: Path) -> None:
    store = open_store(f"memory://rc-{uuid.uuid4().hex[:8]}")
    objs = {k: _put(store, k, MiB) for k in "abcde"}
    cache = NodeCache(tmp_path / "cache", int(2.5 * MiB))

    def use(k: str) -> bool:
        with cache.open(store, k, sha256=objs[k][0], size=MiB) as u:
            return u.fetched

    def cached() -> set[str]:
        names = {p.name for p, _, _ in cache.entries()}
        return {k for k, (d, _) in objs.items() if d in names}

    assert use("a") and use("b")
    assert not use("a")  # a is now the most recently used
    assert use("c")  # 3 MiB > 2.5: b, the least recently used, goes
    assert cached() == {"a", "c"} and cache.total_bytes() <= cache.max_bytes
    # an entry in use is never evicted, even when it is the oldest
    with cache.open(store, "a", sha256=objs["a"][0], size=MiB):
        os.utime(cache.dir / f"{objs['a'][0]}.stamp", (1, 1))  # the LRU clock: a is the oldest
        assert use("d")
        assert use("e")
        assert "a" in cached()
    assert cache.total_bytes() <= cache.max_bytes + MiB


@pytest.mark.ceph
@pytest.mark.timeout(300)
def test_reference_loading_uses_the_node_cache(ceph_cluster, tmp_path: Path) -> None:
    from persona.align.reference import ReferenceCache, add_reference

    url = ceph_cluster.ceph_url(f"refs-{uuid.uuid4().hex[:10]}")
    set_config(load_config(env={}, overrides={"storage.reference_cache.dir": str(tmp_path / "cache")}))
    try:
        info = add_reference("sample", REPO / "persona" / "data" / "sample_reference.fasta", url)
        cache = node_cache()
        assert cache is not None and cache.dir == tmp_path / "cache"
        before = cache.fetches
        for _ in range(2):  # two fresh processes' worth of loads: one fetch
            rc = ReferenceCache()
            ref = rc.acquire("sample", url)
            assert ref.contigs == info.contigs
            rc.release(ref)
        assert cache.fetches == before + 1
        (digest,) = [v["sha256"] for v in info.indexes.values()]
        assert any(p.name.startswith(digest) for p, _, _ in cache.entries())
    finally:
        set_config(None)
        store = open_store(url)
        for k in store.list():
            store.delete(k)


def test_unusable_cache_directory_is_no_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert node_cache(blocker / "cache", 10) is None  # logged; reference loading fetches to a temp file
    assert node_cache(tmp_path / "ok", 10) is node_cache(tmp_path / "ok", 10)


# ------------------------------------------------------------------ the verified stamp
def _aged(cache: NodeCache, digest: str) -> None:
    """Move the stamp's record of when it was written past the racy window (as if time passed)."""
    from persona.storage.refcache import RACY_NS

    stamp = cache.dir / f"{digest}.stamp"
    rec = json.loads(stamp.read_text())
    rec["stamped_ns"] = rec["ctime_ns"] + RACY_NS
    stamp.write_text(json.dumps(rec))


def _use(cache: NodeCache, store: Store, digest: str, size: int) -> tuple[bool, bool]:
    with cache.open(store, "idx", sha256=digest, size=size) as u:
        assert hashlib.sha256(u.path.read_bytes()).hexdigest() == digest
        return u.fetched, u.refetched


def test_a_warm_use_trusts_the_stamp_and_rehashes_only_when_it_changed(tmp_path: Path) -> None:
    store = open_store(f"memory://rc-{uuid.uuid4().hex[:8]}")
    digest, size = _put(store, "idx", 2 * MiB)
    cache = NodeCache(tmp_path / "cache", 64 * MiB)
    assert _use(cache, store, digest, size) == (True, False) and cache.hashes == 0
    stamp = json.loads((cache.dir / f"{digest}.stamp").read_text())
    st = (cache.dir / digest).stat()
    assert (stamp["sha256"], stamp["size"], stamp["ino"], stamp["mtime_ns"], stamp["ctime_ns"]) == (
        digest, size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    # just fetched: the stamp is racy (written within the timestamp window of the file's last
    # change), so the next use hashes once and stamps afresh; from then on no use reads the file
    assert _use(cache, store, digest, size) == (False, False) and cache.hashes == 1
    _aged(cache, digest)
    for _ in range(3):
        assert _use(cache, store, digest, size) == (False, False)
    assert cache.hashes == 1 and cache.fetches == 1
    # a stamp gone, or not ours: one hash of the sound file, no fetch
    (cache.dir / f"{digest}.stamp").unlink()
    assert _use(cache, store, digest, size) == (False, False) and cache.hashes == 2
    (cache.dir / f"{digest}.stamp").write_text("not json")
    assert _use(cache, store, digest, size) == (False, False) and cache.hashes == 3 and cache.fetches == 1


@pytest.mark.parametrize("damage", ["write", "same-size-overwrite-mtime-kept", "replaced-same-stat", "truncated"])
def test_a_changed_entry_voids_its_stamp_and_is_fetched_again(damage: str, tmp_path: Path) -> None:
    """Every change made through the file system is caught, even one that keeps size and mtime:
    ``ctime`` moves on any write or utime (no user call sets it), and a replacement has another inode."""
    store = open_store(f"memory://rc-{uuid.uuid4().hex[:8]}")
    digest, size = _put(store, "idx", MiB)
    cache = NodeCache(tmp_path / "cache", 64 * MiB)
    _use(cache, store, digest, size)
    _use(cache, store, digest, size)  # the stamp made when the racy one was re-checked
    _aged(cache, digest)
    path = cache.dir / digest
    before = path.stat()
    good = path.read_bytes()
    bad = bytearray(good)
    bad[size // 3] ^= 0x40
    if damage == "write":
        with open(path, "r+b") as f:
            f.seek(size // 3)
            f.write(bad[size // 3 : size // 3 + 1])
    elif damage == "same-size-overwrite-mtime-kept":
        with open(path, "r+b") as f:
            f.write(bad)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` would
        after = path.stat()
        assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns,
                                                                    before.st_ino)
        assert after.st_ctime_ns != before.st_ctime_ns  # what gives it away
    elif damage == "replaced-same-stat":
        other = cache.dir / "elsewhere"
        other.write_bytes(bad)
        os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(other, path)
    else:
        with open(path, "r+b") as f:
            f.truncate(size - 1)
    hashes = cache.hashes
    assert _use(cache, store, digest, size) == (True, True)  # hashed, found damaged, fetched again
    assert cache.hashes == hashes + 1 and path.read_bytes() == good


def test_verify_scrubs_whatever_the_stamps_say(tmp_path: Path) -> None:
    """Damage below the file system (here: the bytes changed, then size, mtime, ctime and inode put
    back into the stamp, as a disk's bit rot would leave them) passes the stamp: verify() finds it."""
    store = open_store(f"memory://rc-{uuid.uuid4().hex[:8]}")
    digest, size = _put(store, "idx", MiB)
    cache = NodeCache(tmp_path / "cache", 64 * MiB)
    _use(cache, store, digest, size)
    path = cache.dir / digest
    with open(path, "r+b") as f:
        f.write(b"rot")
    st = path.stat()
    stamp = cache.dir / f"{digest}.stamp"
    rec = json.loads(stamp.read_text())
    rec.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    stamp.write_text(json.dumps(rec))
    _aged(cache, digest)
    with cache.open(store, "idx", sha256=digest, size=size) as u:
        assert not u.fetched and u.path.read_bytes()[:3] == b"rot"  # the stamp is trusted (documented)
    assert cache.verify() == [path] and not path.exists()
    assert _use(cache, store, digest, size) == (True, False)


def test_local_reference_store_index_is_hashed_once_then_trusted(tmp_path: Path) -> None:
    """An index in a local (file://) reference store: the first load hashes it, later loads trust the
    stamp; a changed index voids the stamp and is refused as corrupt, naming the key."""
    from persona.align.reference import ReferenceCache, add_reference
    from persona.errors import ReferenceNotFoundError

    set_config(load_config(env={}, overrides={"storage.reference_cache.dir": str(tmp_path / "cache")}))
    try:
        refs = tmp_path / "refs"
        info = add_reference("sample", REPO / "persona" / "data" / "sample_reference.fasta", refs)
        cache = node_cache()
        assert cache is not None
        time.sleep(1.1)  # a stamp within RACY_NS of the file's last change is not trusted (racy-clean)
        before = cache.hashes
        for _ in range(3):
            rc = ReferenceCache()
            rc.release(rc.acquire("sample", str(refs)))
        assert cache.hashes == before + 1  # hashed once, then the stamp holds
        assert cache.fetches == 0  # a local store's index is used in place, never copied
        (desc,) = info.indexes.values()
        index = refs / desc["key"]
        data = bytearray(index.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size
        st = index.stat()
        index.write_bytes(bytes(data))
        os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime: ctime moved
        rc = ReferenceCache()
        with pytest.raises(ReferenceNotFoundError, match="corrupt"):
            rc.acquire("sample", str(refs))
        assert cache.hashes >= before + 2
    finally:
        set_config(None)
