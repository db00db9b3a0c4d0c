"""Every application end to end with its datasets (and the reference) in Ceph and in S3:
import -> align -> sort -> markdup -> export, against the same pipeline on a local directory
(the records exported must be identical); and the ``storage`` config section.

The Ceph and S3 cases use the throwaway cluster of deploy/ceph.sh (``ceph_cluster`` fixture).
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from test_storage_s3 import s3_admin, s3_bucket, s3_env, s3_url  # noqa: F401 - fixtures

from persona.config import load_config, set_config
from persona.errors import ConfigError
from persona.storage import open_store

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "persona" / "data"


def _pipeline(root: str, tmp: Path, query: str = "") -> dict[str, object]:
    """Import, align, sort, markdup and export with every dataset and the reference under ``root``
    (locations ``root/<x>`` + ``query``: a Ceph URL's connection options go last)."""
    from persona.align.reference import add_reference
    from persona.apps.align import AlignRequest
    from persona.apps.export import ExportRequest
    from persona.apps.importer import ImportRequest
    from persona.apps.markdup import MarkdupRequest
    from persona.apps.sort import SortRequest
    from persona.runtime import Runtime

    ds, sorted_ds, refs = (f"{root}/{x}{query}" for x in ("dataset", "sorted", "references"))
    sam = tmp / "out.sam"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(DATA / "sample_R1.fastq.gz"), str(DATA / "sample_R2.fastq.gz")),
                             output=ds, name="sample", chunk_size=1000))
        add_reference("measles", DATA / "sample_reference.fasta", refs)
        rt.run(AlignRequest(dataset=ds, reference="measles", references_url=refs))
        rt.run(SortRequest(dataset=ds, output=sorted_ds, order="coordinate"))
        md = rt.run(MarkdupRequest(dataset=sorted_ds))
        rt.run(ExportRequest(dataset=sorted_ds, output=str(sam), format="sam"))
    lines = sam.read_text().splitlines()
    return {
        "records": [ln for ln in lines if not ln.startswith("@")],
        "sq": [ln for ln in lines if ln.startswith("@SQ")],
        "markdup": md,
    }


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return _pipeline(str(tmp_path_factory.mktemp("local")), tmp_path_factory.mktemp("local-out"))


def _same(got: dict[str, object], want: dict[str, object]) -> None:
    assert len(got["records"]) == len(want["records"]) >= 8000  # type: ignore[arg-type]
    assert got["records"] == want["records"]
    assert [s.split("\tUR:")[0] for s in got["sq"]] == [s.split("\tUR:")[0] for s in want["sq"]]  # type: ignore[union-attr]


def _wipe(url: str) -> None:
    store = open_store(url)
    for k in store.list():
        store.delete(k)


@pytest.mark.ceph
@pytest.mark.timeout(600)
def test_every_app_on_ceph(ceph_cluster, local_run: dict[str, object], tmp_path: Path) -> None:
    base = ceph_cluster.ceph_url(f"apps-{uuid.uuid4().hex[:10]}")
    url, query = base.split("?")
    set_config(load_config(env={}, overrides={"storage.reference_cache.dir": str(tmp_path / "refcache")}))
    try:
        got = _pipeline(url, tmp_path, "?" + query)  # datasets under prefixes of one namespace
        _same(got, local_run)
    finally:
        set_config(None)
        _wipe(base)


@pytest.mark.ceph
@pytest.mark.timeout(600)
def test_every_app_on_s3(s3_url: str, local_run: dict[str, object], tmp_path: Path) -> None:  # noqa: F811
    set_config(load_config(env={}, overrides={"storage.reference_cache.dir": str(tmp_path / "refcache")}))
    try:
        got = _pipeline(s3_url, tmp_path)
    finally:
        set_config(None)
    _same(got, local_run)
    keys = list(open_store(s3_url).list())
    assert any(k.startswith("sorted/") and k.endswith("_metadata.json") for k in keys)


# ------------------------------------------------------------------ the storage config section
def test_storage_config_defaults_and_overrides() -> None:
    cfg = load_config(env={})
    st = cfg.storage
    assert (st.retries, st.read_block_kb, st.read_prefetch) == (4, 4096, 2)
    assert (st.ceph.conf, st.ceph.user, st.ceph.connect_timeout, st.ceph.op_timeout) == (None, None, 10, 60)
    assert (st.s3.endpoint, st.s3.multipart_threshold_mb, st.s3.part_size_mb) == (None, 64, 16)
    assert st.reference_cache.max_mb > 0 and st.reference_cache.dir
    env = load_config(env={"PERSONA_STORAGE__CEPH__USER": "persona", "PERSONA_STORAGE__S3__READ_TIMEOUT": "5",
                           "PERSONA_STORAGE__REFERENCE_CACHE__DIR": ""})
    assert env.storage.ceph.user == "persona" and env.storage.s3.read_timeout == 5
    assert env.storage.reference_cache.dir is None
    with pytest.raises(ConfigError, match=r"storage\.s3\.part_size_mb: must be >= 5"):
        load_config(env={"PERSONA_STORAGE__S3__PART_SIZE_MB": "1"})
    with pytest.raises(ConfigError, match=r"storage\.ceph\.pool: unknown key"):
        load_config(env={}, overrides={"storage.ceph.pool": "x"})


def test_s3_store_takes_its_defaults_from_the_config() -> None:
    pytest.importorskip("boto3")
    set_config(load_config(env={}, overrides={"storage.s3.endpoint": "http://127.0.0.1:9", "storage.retries": 1,
                                              "storage.s3.read_timeout": 7, "storage.s3.part_size_mb": 8}))
    try:
        s = open_store("s3://some-bucket/prefix")
        assert (s.endpoint, s.retries, s.read_timeout, s.part_size) == ("http://127.0.0.1:9", 1, 7.0, 8 << 20)
        # the URL's own options win
        s2 = open_store("s3://some-bucket/prefix?endpoint=http://127.0.0.1:10&retries=3")
        assert (s2.endpoint, s2.retries) == ("http://127.0.0.1:10", 3)
    finally:
        set_config(None)


@pytest.mark.ceph
def test_ceph_store_takes_its_connection_from_the_config(ceph_cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PERSONA_CEPH_CONF", "CEPH_CONF", "PERSONA_CEPH_ID", "PERSONA_CEPH_KEYRING"):
        monkeypatch.delenv(var, raising=False)
    set_config(load_config(env={}, overrides={"storage.ceph.conf": str(ceph_cluster.conf),
                                              "storage.ceph.user": "persona",
                                              "storage.ceph.keyring": str(ceph_cluster.keyring),
                                              "storage.ceph.op_timeout": 30}))
    try:
        ns = f"cfg-{uuid.uuid4().hex[:8]}"
        s = open_store(f"ceph://persona/{ns}")  # a plain URL: the rest from the config
        assert (s.user, s.op_timeout) == ("persona", 30.0)
        s.put("k", b"v")
        assert s.get("k") == b"v"
        s.delete("k")
    finally:
        set_config(None)


# ------------------------------------------------------------------ the service: two workers, one store
@pytest.fixture(scope="module")
def svc_sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The packaged sample in 8 chunks, the reference, and the results column a local align writes."""
    from persona.agd.dataset import Dataset
    from persona.align.reference import add_reference
    from persona.apps.align import AlignRequest
    from persona.apps.copy import copy_dataset
    from persona.apps.importer import ImportRequest
    from persona.runtime import Runtime

    d = tmp_path_factory.mktemp("svc")
    add_reference("sample_reference", DATA / "sample_reference.fasta", str(d / "refs"))
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(DATA / "sample_R1.fastq.gz"), str(DATA / "sample_R2.fastq.gz")),
                             output=str(d / "ds"), name="sample", chunk_size=500))
        copy_dataset(str(d / "ds"), str(d / "aligned"))
        rt.run(AlignRequest(dataset=str(d / "aligned"), reference="sample_reference", references_url=str(d / "refs")))
    ds = Dataset.open(str(d / "aligned"))
    return {"dataset": d / "ds", "refs": d / "refs",
            "results": [bytes(ds.read_file(i, "results")) for i in range(len(ds.chunks))]}


@pytest.mark.ceph
@pytest.mark.cluster
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["ceph", "s3"])
def test_two_workers_align_a_dataset_in_the_store(kind: str, ceph_cluster, request: pytest.FixtureRequest,
                                                  tmp_path: Path) -> None:
    """A coordinator and two worker processes align a ceph:// (s3://) dataset in partitions; the
    store's connection comes from the ``storage`` config section they share; the results column is
    byte for byte the one a local align writes."""
    pytest.importorskip("grpc")
    from test_cluster import WAIT, Cluster

    from persona.agd.dataset import Dataset
    from persona.apps.align import AlignRequest
    from persona.apps.copy import copy_dataset

    sample = request.getfixturevalue("svc_sample")
    refs = sample["refs"]
    if kind == "ceph":
        plain = f"ceph://persona/svc-{uuid.uuid4().hex[:10]}"
        full = ceph_cluster.ceph_url(plain.rsplit("/", 1)[1])
        storage = (f'storage:\n  ceph:\n    conf: "{ceph_cluster.conf}"\n    user: persona\n'
                   f'    keyring: "{ceph_cluster.keyring}"\n')
        root = "ceph://persona/"
    else:
        full = plain = request.getfixturevalue("s3_url")
        storage = f'storage:\n  s3:\n    endpoint: "{ceph_cluster.s3_endpoint}"\n'
        root = plain.rsplit("/", 1)[0] + "/"
    copy_dataset(str(sample["dataset"]), full, threads=4)
    cl = Cluster(tmp_path, refs, extra=storage)
    cl.config.write_text(cl.config.read_text().replace('roots: "', f'roots: "{root},'))
    try:
        cl.start_coordinator()
        cl.start_worker()
        cl.start_worker()
        cl.wait_workers(2)
        with cl.client() as c:
            st = c.wait(c.submit(AlignRequest(dataset=plain, reference="sample_reference")), timeout=WAIT)
        assert st["state"] == "done", f"{st['error']}\n{cl.log()}"
        assert st["summaries"][0]["partitions"] >= 2  # spread over the workers
        ds = Dataset.open(full)
        assert "results" in ds.columns
        assert [bytes(ds.read_file(i, "results")) for i in range(len(ds.chunks))] == sample["results"]
        assert not [k for k in open_store(full).list() if k.endswith("_writer.json")]
    finally:
        cl.close()
        _wipe(full)
