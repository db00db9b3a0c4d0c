"""CephStore against a real throwaway Ceph cluster (cephx on; deploy/ceph.sh via the ceph_cluster fixture).

The conformance suite runs as client.persona, a non-admin user whose caps allow only pool
"persona"; the rest covers what is Ceph's own: URLs and options, the atomic exclusive create
across separate connections, aio prefetch, retries, and the errors for a missing pool, refused
credentials or caps, an unreachable cluster and an OSD that stops answering mid-run.
"""
from __future__ import annotations

import errno
import gzip
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_conformance import StoreTests

from persona.errors import StoreError, StoreKeyError
from persona.storage import Store, StoreUsageError, open_store

pytestmark = pytest.mark.ceph

DATA = Path(__file__).resolve().parent.parent / "persona" / "data"


def _wipe(store: Store) -> None:
    for k in store.list():
        try:
            store.delete(k)
        except StoreKeyError:
            pass


@pytest.fixture
def ceph_url(ceph_cluster) -> Iterator[str]:
    """The URL of a fresh namespace of pool "persona", reached as client.persona; emptied afterwards."""
    url = ceph_cluster.ceph_url(f"t-{uuid.uuid4().hex[:12]}")
    yield url
    from persona.storage.ceph import CephStore

    with CephStore.from_url(url) as s:
        _wipe(s)


@pytest.fixture
def ceph_env(ceph_cluster, monkeypatch: pytest.MonkeyPatch):
    """Connection options from the environment, so store URLs stay plain ``ceph://pool/ns``."""
    monkeypatch.setenv("PERSONA_CEPH_CONF", str(ceph_cluster.conf))
    monkeypatch.setenv("PERSONA_CEPH_ID", "persona")
    monkeypatch.setenv("PERSONA_CEPH_KEYRING", str(ceph_cluster.keyring))
    return ceph_cluster


class TestCephStore(StoreTests):
    @pytest.fixture
    def store(self, ceph_env, ceph_url: str) -> Iterator[Store]:
        yield open_store(ceph_url.partition("?")[0])


class TestCephStorePrefix(StoreTests):
    """The same contract for a store under a key prefix inside a namespace (ceph://pool/ns/prefix)."""

    @pytest.fixture
    def store(self, ceph_env, ceph_url: str) -> Iterator[Store]:
        yield open_store(ceph_url.partition("?")[0] + "/some/prefix")


# ---------------------------------------------------------------------- URLs
def test_url_round_trip_and_layout(ceph_cluster, ceph_url: str) -> None:
    import rados

    from persona.storage.ceph import CephStore

    store = open_store(ceph_url)
    assert isinstance(store, CephStore)
    assert store.pool == "persona" and store.namespace.startswith("t-") and store.prefix == ""
    assert open_store(store.url).url == store.url
    child = store.child("ds")
    assert child.url.split("?")[0] == ceph_url.split("?")[0] + "/ds"
    assert open_store(child.url).url == child.url
    child.put("yeast_0.base", b"chunk")
    # one RADOS object per key, named by the key, in the URL's namespace
    cluster = rados.Rados(conffile=str(ceph_cluster.conf), rados_id="admin",
                          conf={"keyring": str(ceph_cluster.admin_keyring)})
    cluster.connect(timeout=10)
    try:
        io = cluster.open_ioctx("persona")
        io.set_namespace(store.namespace)
        assert io.read("ds/yeast_0.base") == b"chunk"
        assert [o.key for o in io.list_objects()] == ["ds/yeast_0.base"]
        io.close()
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("url", ["ceph://", "ceph:///ns", "ceph://pool/ns?bogus=1", "ceph://pool/ns?timeout=x"])
def test_bad_urls(ceph_cluster, url: str) -> None:
    with pytest.raises(StoreUsageError):
        open_store(url)


def test_missing_conf_or_keyring_file(ceph_cluster, tmp_path: Path) -> None:
    with pytest.raises(StoreUsageError, match="keyring file"):
        open_store(ceph_cluster.ceph_url("x", keyring=tmp_path / "nope"))
    with pytest.raises(StoreUsageError, match="conf file"):
        open_store(f"ceph://persona/x?conf={tmp_path / 'nope.conf'}")


def test_options_from_environment(ceph_cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_CEPH_CONF", str(ceph_cluster.conf))
    monkeypatch.setenv("PERSONA_CEPH_ID", "client.persona")
    monkeypatch.setenv("PERSONA_CEPH_KEYRING", str(ceph_cluster.keyring))
    ns = f"env-{uuid.uuid4().hex[:8]}"
    store = open_store(f"ceph://persona/{ns}")
    assert store.url == f"ceph://persona/{ns}"  # nothing explicit: the URL stays plain
    store.put("k", b"v")
    assert open_store(ceph_cluster.ceph_url(ns)).get("k") == b"v"
    store.delete("k")


# ------------------------------------------------------------ exclusive create
@pytest.mark.timeout(120)
def test_put_if_absent_race_across_connections(ceph_url: str) -> None:
    """Writers on separate cluster connections (as separate processes would be): one winner per key."""
    from persona.storage.ceph import CephStore

    stores = [CephStore.from_url(ceph_url), CephStore.from_url(ceph_url, op_timeout=59)]
    assert stores[0]._conn_key != stores[1]._conn_key  # two librados connections
    n, rounds = 8, 10
    for r in range(rounds):
        wins: list[int] = []
        start = threading.Barrier(n)

        def racer(t: int) -> None:
            start.wait()
            if stores[t % 2].put_if_absent(f"claim{r}", f"writer {t}".encode() * 100):
                wins.append(t)

        threads = [threading.Thread(target=racer, args=(t,)) for t in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(wins) == 1, (r, wins)
        assert stores[1].get(f"claim{r}") == f"writer {wins[0]}".encode() * 100


def test_writer_claims_use_exclusive_create(ceph_url: str) -> None:
    from persona.agd.transaction import WriterClaim
    from persona.errors import DatasetBusyError

    store = open_store(ceph_url)
    first = WriterClaim(store, "ds", app="test", attempt="a1")
    first.acquire()
    try:
        with pytest.raises(DatasetBusyError):
            WriterClaim(open_store(ceph_url), "ds", app="test", attempt="a2").acquire()
    finally:
        first.release()
    assert not store.exists("ds_writer.json")


# ------------------------------------------------------------------- prefetch
def test_get_async(ceph_url: str) -> None:
    store = open_store(ceph_url)
    data = os.urandom(1_000_000)
    for i in range(4):
        store.put(f"c{i}", data[i:])
    futures = [store.get_async(f"c{i}") for i in range(4)]
    assert [f.result(timeout=30) for f in futures] == [data[i:] for i in range(4)]
    assert store.get_async("c0", 10, 20).result(timeout=30) == data[10:30]
    assert store.get_async("c0", 999_990).result(timeout=30) == data[999_990:]
    assert store.get_async("c0", 2_000_000, 5).result(timeout=30) == b""
    with pytest.raises(StoreKeyError, match="nope"):
        store.get_async("nope").result(timeout=30)
    with pytest.raises(StoreKeyError, match="nope"):
        store.get_async("nope", 0, 10).result(timeout=30)
    with pytest.raises(StoreUsageError):
        store.get_async("c0", -1)


def test_partial_reads_do_not_fetch_the_object(ceph_url: str) -> None:
    store = open_store(ceph_url)
    assert store.supports_partial_reads and not store.cheap_copy
    store.put("big", b"h" * 64 + b"x" * 8_000_000)
    assert store.get_range("big", 0, 64) == b"h" * 64


# -------------------------------------------------------------------- retries
class _Flaky:
    """An ioctx proxy whose named method fails with ``code`` the first ``times`` calls."""

    def __init__(self, io, method: str, code: int, times: int, apply_first: bool = False) -> None:
        self.io, self.method, self.code, self.times, self.apply_first = io, method, code, times, apply_first
        self.calls = 0

    def __getattr__(self, name: str):
        real = getattr(self.io, name)
        if name != self.method:
            return real

        def wrapper(*args, **kwargs):
            import rados

            self.calls += 1
            if self.calls <= self.times:
                if self.apply_first:  # the op happens, its reply is lost
                    real(*args, **kwargs)
                raise rados.OSError(f"injected {errno.errorcode[self.code]}", errno=self.code)
            return real(*args, **kwargs)

        return wrapper


def test_transient_errors_are_retried(ceph_url: str) -> None:
    store = open_store(ceph_url)
    flaky = _Flaky(store._io(), "write_full", errno.EAGAIN, 2)
    store._ioctx = flaky
    store.put("k", b"v")
    assert flaky.calls == 3 and store.get("k") == b"v"


def test_permanent_errors_are_not_retried(ceph_url: str) -> None:
    from persona.storage.remote import StorePermissionError

    store = open_store(ceph_url)
    flaky = _Flaky(store._io(), "write_full", errno.EACCES, 5)
    store._ioctx = flaky
    with pytest.raises(StorePermissionError, match="k"):
        store.put("k", b"v")
    assert flaky.calls == 1


def test_put_if_absent_after_a_lost_reply_is_a_win(ceph_url: str) -> None:
    store = open_store(ceph_url)
    flaky = _Flaky(store._io(), "operate_write_op", errno.ETIMEDOUT, 1, apply_first=True)
    store._ioctx = flaky
    assert store.put_if_absent("claim", b"mine") is True  # the retry finds our own object
    assert flaky.calls == 2
    assert store.put_if_absent("claim", b"other") is False


# --------------------------------------------------------------------- errors
def test_missing_pool(ceph_cluster) -> None:
    from persona.storage.remote import StoreNotFoundError

    with pytest.raises(StoreNotFoundError, match="no-such-pool") as info:
        open_store(ceph_cluster.ceph_url("ns", pool="no-such-pool"))
    assert not info.value.transient and "ceph://no-such-pool/ns" in str(info.value)


def test_permission_denied_by_caps(ceph_cluster) -> None:
    """client.persona may use pool "persona" only: another pool's reads and writes are refused."""
    from persona.storage.remote import StorePermissionError

    ceph_cluster.ceph("osd", "pool", "create", "persona-other", "8", "8")
    admin = open_store(ceph_cluster.ceph_url("ns", pool="persona-other", user="admin"))
    admin.put("secret", b"x")
    store = open_store(ceph_cluster.ceph_url("ns", pool="persona-other"))
    t0 = time.monotonic()
    with pytest.raises(StorePermissionError, match="secret") as info:
        store.put("secret", b"mine")
    assert "persona-other" in str(info.value) and not info.value.transient
    with pytest.raises(StorePermissionError):
        store.get("secret")
    assert time.monotonic() - t0 < 10  # not retried
    assert admin.get("secret") == b"x"


def test_wrong_key_is_refused(ceph_cluster, tmp_path: Path) -> None:
    from persona.storage.remote import StorePermissionError

    bad = tmp_path / "bad.keyring"
    bad.write_text("[client.persona]\n\tkey = AQBAbGZlAAAAABAAsp9Y1uoYvLh4Kgr6HxDRAg==\n")
    with pytest.raises(StorePermissionError, match="credentials"):
        open_store(ceph_cluster.ceph_url("ns", keyring=bad) + "&timeout=5")


@pytest.mark.timeout(60)
def test_unreachable_cluster_times_out(ceph_cluster, tmp_path: Path) -> None:
    from persona.storage.remote import StoreUnreachableError

    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon_host = [v2:127.0.0.1:9,v1:127.0.0.1:10]\nauth_client_required = cephx\n")
    keyring = tmp_path / "keyring"
    keyring.write_text("[client.admin]\n\tkey = AQBAbGZlAAAAABAAsp9Y1uoYvLh4Kgr6HxDRAg==\n")
    t0 = time.monotonic()
    with pytest.raises(StoreUnreachableError, match="within 2 s") as info:
        open_store(f"ceph://pool/ns?conf={conf}&keyring={keyring}&timeout=2")
    assert time.monotonic() - t0 < 15
    assert info.value.transient


def _osd_pid(ceph_cluster) -> int:
    return int((ceph_cluster.dir / "run" / "osd.0.pid").read_text())


@pytest.mark.timeout(120)
def test_osd_stopped_mid_run_fails_within_the_op_timeout(ceph_cluster, ceph_url: str) -> None:
    """An OSD that stops answering (SIGSTOP) turns into a clear error within op_timeout, not a hang;
    once it answers again the same store works."""
    from persona.storage.remote import StoreUnreachableError

    store = open_store(ceph_url + "&op_timeout=3")
    store.put("before", b"1")
    pid = _osd_pid(ceph_cluster)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnreachableError, match="timed out") as info:
            store.get("before")
        took = time.monotonic() - t0
        assert "before" in str(info.value) and store.url in str(info.value)
        assert took < 15
        with pytest.raises(StoreUnreachableError):
            store.put("during", b"2")
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while True:
        try:
            store.put("after", b"3")
            break
        except StoreError:
            if time.monotonic() > deadline:
                raise
    assert store.get("before") == b"1" and store.get("after") == b"3"


# ------------------------------------------------------------------ end to end
@pytest.mark.timeout(300)
def test_fastq_import_export_round_trip(ceph_cluster, ceph_url: str, tmp_path: Path) -> None:
    from persona.agd.dataset import Dataset
    from persona.apps.export_fastq import export_fastq
    from persona.apps.import_fastq import import_fastq

    r1, r2 = DATA / "sample_R1.fastq.gz", DATA / "sample_R2.fastq.gz"
    m = import_fastq(r1, r2, out=ceph_url, name="sample", chunk_size=1000, threads=2)
    assert m.paired and m.num_records == 8000
    store = open_store(ceph_url)
    keys = list(store.list())
    assert "sample_metadata.json" in keys
    assert not any("writer" in k for k in keys)  # the claim is gone after the commit
    ds = Dataset.open(ceph_url, name="sample")
    assert ds.paired
    n = export_fastq(ceph_url, tmp_path / "o1.fq", tmp_path / "o2.fq", name="sample")
    assert n == 8000
    assert (tmp_path / "o1.fq").read_bytes() == gzip.decompress(r1.read_bytes())
    assert (tmp_path / "o2.fq").read_bytes() == gzip.decompress(r2.read_bytes())
