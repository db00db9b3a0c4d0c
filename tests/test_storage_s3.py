"""S3Store against a real S3-compatible server: Ceph 16's radosgw on the throwaway cluster
(deploy/ceph.sh via the ceph_cluster fixture). No mock.

The conformance suite runs with the endpoint and keys from the environment (plain ``s3://`` URLs);
the rest covers ranged GETs, multipart PUTs, paginated listings, the conditional create
(``If-None-Match: *``), credentials from the environment and from a shared credentials file,
the endpoint in the URL, and the errors for a missing bucket, refused credentials, an unreachable
endpoint and a server that stops answering mid-run.
"""
from __future__ import annotations

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


@pytest.fixture(scope="session")
def s3_admin(ceph_cluster):
    """A plain boto3 client with the S3 user's keys (set-up and clean-up, whatever a test changes)."""
    import boto3
    from botocore.config import Config

    env = ceph_cluster.s3_env
    return boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).client(
        "s3", endpoint_url=ceph_cluster.s3_endpoint, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="session")
def s3_bucket(s3_admin) -> str:
    """One bucket for the session."""
    bucket = f"persona-test-{uuid.uuid4().hex[:8]}"
    s3_admin.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_env(ceph_cluster, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """The S3 user's keys and the endpoint in the environment, no ~/.aws of this machine.

    (The same environment for every test, so the stores share one boto3 client as in production.)
    """
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    none = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(none / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(none / "config"))
    for k, v in ceph_cluster.s3_env.items():
        monkeypatch.setenv(k, v)
    return ceph_cluster


@pytest.fixture
def s3_url(s3_env, s3_admin, s3_bucket: str) -> Iterator[str]:
    """A fresh prefix of the session bucket, as a plain URL (endpoint and keys from the environment)."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield f"s3://{s3_bucket}/{prefix}"
    for page in s3_admin.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", ()):
            s3_admin.delete_object(Bucket=s3_bucket, Key=obj["Key"])


class TestS3Store(StoreTests):
    @pytest.fixture
    def store(self, s3_url: str) -> Iterator[Store]:
        yield open_store(s3_url)


# ---------------------------------------------------------------------- URLs
def test_url_with_endpoint_round_trips(s3_env, s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from persona.storage.s3 import S3Store

    monkeypatch.delenv("PERSONA_S3_ENDPOINT")
    url = s3_url + f"?endpoint={s3_env.s3_endpoint}&multipart_threshold=6000000"
    store = open_store(url)
    assert isinstance(store, S3Store) and store.endpoint == s3_env.s3_endpoint
    assert store.multipart_threshold == 6_000_000 and not store.cheap_copy and store.supports_partial_reads
    assert open_store(store.url).url == store.url
    store.put("ds/x", b"1")
    child = store.child("ds")
    assert child.url.split("?")[0] == s3_url + "/ds"
    assert open_store(child.url).get("x") == b"1"


@pytest.mark.parametrize("url", ["s3://", "s3:///p", "s3://b/p?bogus=1", "s3://b/p?part_size=10",
                                 "s3://b/p?addressing=sideways", "s3://b/p?conditional_create=maybe"])
def test_bad_urls(s3_env, url: str) -> None:
    with pytest.raises(StoreUsageError):
        open_store(url)


# --------------------------------------------------------- multipart, listing
@pytest.mark.timeout(120)
def test_multipart_put_for_large_objects(s3_url: str) -> None:
    store = open_store(s3_url + "?multipart_threshold=5242880&part_size=5242880")
    data = os.urandom(12 * 1024 * 1024 + 17)
    store.put("big", data)
    head = store._client.head_object(Bucket=store.bucket, Key=store._name("big"))
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload
    assert store.size("big") == len(data)
    assert store.get("big") == data
    assert store.get_range("big", 5 * 1024 * 1024 - 3, 10) == data[5 * 1024 * 1024 - 3:5 * 1024 * 1024 + 7]
    store.put("small", data[:1000])  # under the threshold: one PUT
    head = store._client.head_object(Bucket=store.bucket, Key=store._name("small"))
    assert "-" not in head["ETag"].strip('"')
    store.copy("big", "big2")  # server-side
    assert store.get("big2") == data


_KILLED_MULTIPART = """
import os, sys
from persona.storage import open_store
store = open_store(sys.argv[1] + "?multipart_threshold=5242880&part_size=5242880")
orig = store._client.complete_multipart_upload
store._client.complete_multipart_upload = lambda **kw: os._exit(9)  # killed before completing
store.put(sys.argv[2], os.urandom(11 * 1024 * 1024))
"""


@pytest.mark.timeout(180)
def test_remove_temporaries_aborts_a_killed_writers_multipart_uploads(s3_url: str) -> None:
    """A writer killed mid multipart put leaves an open upload (invisible, its parts stored and
    billed); remove_temporaries aborts those under the prefix that match and are old enough."""
    import subprocess
    import sys

    for key in ("ds.sortrun-a-0", "other"):
        rc = subprocess.run([sys.executable, "-c", _KILLED_MULTIPART, s3_url, key], timeout=120).returncode
        assert rc == 9
    store = open_store(s3_url)
    assert list(store.list()) == []

    def uploads() -> list[str]:
        resp = store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=store._name(""))
        return sorted(u["Key"].rsplit("/", 1)[1] for u in resp.get("Uploads", ()))

    assert uploads() == ["ds.sortrun-a-0", "other"]
    assert store.remove_temporaries("ds.", min_age=3600) == []  # just started: spared
    assert store.remove_temporaries("ds.") == ["ds.sortrun-a-0"]
    assert uploads() == ["other"]
    assert store.remove_temporaries("", match=lambda k: k != "other") == []
    assert store.child("x").remove_temporaries("") == []  # another prefix
    assert store.remove_temporaries("") == ["other"] and uploads() == []


def test_listing_pages(s3_url: str) -> None:
    store = open_store(s3_url)
    store.list_page_size = 7
    calls: list[int] = []
    store._client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    try:
        keys = [f"ds/k{i:03d}" for i in range(23)]
        for k in keys:
            store.put(k, b"x")
        store.put("other", b"y")
        n0 = len(calls)
        assert list(store.list("ds/")) == keys
        assert len(calls) - n0 == 4  # 7 + 7 + 7 + 2
    finally:
        store._client.meta.events.unregister("before-call.s3.ListObjectsV2")


# ------------------------------------------------------------- conditional create
@pytest.mark.timeout(120)
def test_put_if_absent_races_repeatedly(s3_url: str) -> None:
    store = open_store(s3_url)
    n = 8
    for r in range(10):
        wins: list[int] = []
        start = threading.Barrier(n)

        def racer(t: int) -> None:
            start.wait()
            if store.put_if_absent(f"claim{r}", f"writer {t}".encode() * 50):
                wins.append(t)

        threads = [threading.Thread(target=racer, args=(t,)) for t in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(wins) == 1, (r, wins)
        assert store.get(f"claim{r}") == f"writer {wins[0]}".encode() * 50


def test_writer_claims_use_conditional_create(s3_url: str) -> None:
    from persona.agd.transaction import WriterClaim
    from persona.errors import DatasetBusyError

    store = open_store(s3_url)
    first = WriterClaim(store, "ds", app="test", attempt="a1")
    first.acquire()
    try:
        with pytest.raises(DatasetBusyError):
            WriterClaim(open_store(s3_url), "ds", app="test", attempt="a2").acquire()
    finally:
        first.release()
    assert not store.exists("ds_writer.json")


def test_conditional_create_off_refuses_instead_of_pretending(s3_url: str) -> None:
    store = open_store(s3_url + "?conditional_create=off")
    with pytest.raises(StoreUsageError, match="not supported by this server"):
        store.put_if_absent("claim", b"x")
    assert not store.exists("claim")


# ------------------------------------------------------------------ credentials
def test_credentials_from_a_shared_credentials_file(s3_env, s3_url: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[persona-file]\naws_access_key_id = {s3_env.s3_env['AWS_ACCESS_KEY_ID']}\n"
                     f"aws_secret_access_key = {s3_env.s3_env['AWS_SECRET_ACCESS_KEY']}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = open_store(s3_url + "?profile=persona-file")
    store.put("k", b"from the file")
    assert store.get("k") == b"from the file"
    monkeypatch.setenv("AWS_PROFILE", "persona-file")
    assert open_store(s3_url).get("k") == b"from the file"
    with pytest.raises(StoreUsageError, match="not configured"):
        open_store(s3_url + "?profile=nobody")


def test_wrong_credentials_are_refused(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from persona.storage.remote import StorePermissionError

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-at-all-000000000000000")
    store = open_store(s3_url)
    t0 = time.monotonic()
    with pytest.raises(StorePermissionError, match="refused access") as info:
        store.put("k", b"v")
    assert "k" in str(info.value) and not info.value.transient
    assert time.monotonic() - t0 < 10  # not retried


def test_no_credentials(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from persona.storage.remote import StorePermissionError

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorePermissionError, match="no S3 credentials"):
        open_store(s3_url).get("k")


# --------------------------------------------------------------------- errors
def test_missing_bucket(s3_env) -> None:
    from persona.storage.remote import StoreNotFoundError

    store = open_store("s3://no-such-bucket-persona/p")
    for op in (lambda: store.get("k"), lambda: store.put("k", b"v"), lambda: list(store.list())):
        with pytest.raises(StoreNotFoundError, match="no-such-bucket-persona") as info:
            op()
        assert not info.value.transient


def test_missing_key_in_a_range_read(s3_url: str) -> None:
    with pytest.raises(StoreKeyError, match="nope"):
        open_store(s3_url).get_range("nope", 3, 4)


@pytest.mark.timeout(60)
def test_unreachable_endpoint(s3_env, s3_bucket: str) -> None:
    from persona.storage.remote import StoreUnreachableError

    store = open_store(f"s3://{s3_bucket}/p?endpoint=http://127.0.0.1:9&timeout=2&retries=1")
    t0 = time.monotonic()
    with pytest.raises(StoreUnreachableError, match="127.0.0.1:9") as info:
        store.get("k")
    assert time.monotonic() - t0 < 20
    assert info.value.transient and "k" in str(info.value)


@pytest.mark.timeout(120)
def test_server_stopped_mid_run(s3_env, s3_url: str) -> None:
    """radosgw stops answering (SIGSTOP): a clear error within the read timeout, then it works again."""
    from persona.storage.remote import StoreUnreachableError

    store = open_store(s3_url + "?read_timeout=2&retries=0")
    store.put("before", b"1")
    pid = int((s3_env.dir / "run" / "client.rgw.a.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnreachableError, match="within 2 s") as info:
            store.get("before")
        assert "before" in str(info.value)
        assert time.monotonic() - t0 < 15
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
def test_fastq_import_export_round_trip(s3_env, s3_url: str, tmp_path: Path) -> None:
    from persona.apps.export_fastq import export_fastq
    from persona.apps.import_fastq import import_fastq

    url = f"{s3_url}?endpoint={s3_env.s3_endpoint}"  # the endpoint in the URL this time
    r1, r2 = DATA / "sample_R1.fastq.gz", DATA / "sample_R2.fastq.gz"
    m = import_fastq(r1, r2, out=url, name="sample", chunk_size=1000, threads=2)
    assert m.paired and m.num_records == 8000
    keys = list(open_store(url).list())
    assert "sample_metadata.json" in keys and not any("writer" in k for k in keys)
    n = export_fastq(url, tmp_path / "o1.fq", tmp_path / "o2.fq", name="sample")
    assert n == 8000
    assert (tmp_path / "o1.fq").read_bytes() == gzip.decompress(r1.read_bytes())
    assert (tmp_path / "o2.fq").read_bytes() == gzip.decompress(r2.read_bytes())
