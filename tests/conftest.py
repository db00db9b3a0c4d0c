"""Shared fixtures: where the real test data lives, scratch stores, tool checks.

Real data comes in two sizes:

* the full sets (``yeast``, ``human``, ``measles``) in ``shared/data`` beside the repository
  (``../shared/data``, or ``PERSONA_TEST_DATA``), described in its README;
* small real subsets of each, with matching reference pieces, in ``tests/fixtures/`` (made by
  ``tests/fixtures/make_fixtures.sh``, described in ``tests/fixtures/README.md``), so the suite runs
  in a clone of the repository alone.

The fixtures ``yeast``, ``human`` and ``measles`` give the full sets when ``shared/data`` is there.
When it is absent, a test marked ``small_data`` (its checks hold on any real subset) gets the
small set instead, and every other test that uses a data set is skipped with the reason shown;
with ``PERSONA_REQUIRE_SHARED_DATA=1`` (``.ci/run`` sets it) such a test fails instead.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DATA_SETS = ("yeast", "human", "measles")
REQUIRE_SHARED = os.environ.get("PERSONA_REQUIRE_SHARED_DATA", "") not in ("", "0")


def find_shared_data() -> Path | None:
    """The full real data sets: ``PERSONA_TEST_DATA``, else ``shared/data`` beside the repository."""
    env = os.environ.get("PERSONA_TEST_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    # CI clones the repo with shared/ beside it; developers' work trees sit the same way.
    for cand in (REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


SHARED_DATA = find_shared_data()
MISSING = ("needs the full real data sets of ../shared/data, absent here "
           "(set PERSONA_TEST_DATA to their directory); tests marked small_data run on tests/fixtures")


def full_sets(root: Path) -> dict[str, dict[str, Path]]:
    y, h, m = root / "yeast_SRR5204809", root / "human_NA12878_chr20", root / "measles_SRR7517498"
    return {
        "yeast": {"r1": y / "SRR5204809_R1.fastq.gz", "r2": y / "SRR5204809_R2.fastq.gz", "ref": y / "sacCer3.fa.gz"},
        "human": {
            "bam": h / "NA12878_S1.chr20.10_10p1mb.bam",
            "r1": h / "NA12878_S1.chr20.10_10p1mb_R1.fastq.gz",
            "r2": h / "NA12878_S1.chr20.10_10p1mb_R2.fastq.gz",
            "ref": h / "hg19_chr20_9995001-11095000.fa",
        },
        "measles": {"r1": m / "SRR7517498_R1.fastq.gz", "r2": m / "SRR7517498_R2.fastq.gz",
                    "ref": m / "MH356245.1.fasta"},
    }


def small_sets(root: Path = FIXTURES) -> dict[str, dict[str, Path]]:
    """The small real subsets in tests/fixtures (same keys as the full sets)."""
    y, h, m = root / "yeast", root / "human", root / "measles"
    return {
        "yeast": {"r1": y / "SRR5204809_R1.fastq.gz", "r2": y / "SRR5204809_R2.fastq.gz",
                  "ref": y / "sacCer3_chrI_III_VI.fa.gz"},
        "human": {
            "bam": h / "NA12878_S1.chr20.10_10p1mb.sub.bam",
            "r1": h / "NA12878_S1.chr20.10_10p1mb.sub_R1.fastq.gz",
            "r2": h / "NA12878_S1.chr20.10_10p1mb.sub_R2.fastq.gz",
            "ref": h / "hg19_chr20_9995001-11095000.fa.gz",
        },
        "measles": {"r1": m / "SRR7517498_R1.fastq.gz", "r2": m / "SRR7517498_R2.fastq.gz",
                    "ref": m / "MH356245.1.fasta"},
    }


def data_set(name: str) -> dict[str, Path]:
    """The full set ``name`` when shared/data is there, else its small subset from tests/fixtures."""
    return (full_sets(SHARED_DATA) if SHARED_DATA is not None else small_sets())[name]


def _needs_shared_data(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if "shared_data" in names:
        return True
    if item.get_closest_marker("small_data") is not None:
        return False
    if names & set(DATA_SETS):
        return True
    # a data set taken by name with request.getfixturevalue(<parameter>)
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v in DATA_SETS for v in callspec.params.values())


def pytest_report_header(config: pytest.Config) -> str:
    if SHARED_DATA is not None:
        return f"test data: full sets in {SHARED_DATA}"
    what = "FAIL (PERSONA_REQUIRE_SHARED_DATA=1)" if REQUIRE_SHARED else "are skipped"
    return (f"test data: ../shared/data absent: small sets in {FIXTURES}; "
            f"tests needing the full sets {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA is not None or REQUIRE_SHARED:
        return
    skip = pytest.mark.skip(reason=MISSING)
    for item in items:
        if _needs_shared_data(item):
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if SHARED_DATA is None and REQUIRE_SHARED and _needs_shared_data(item):
        pytest.fail("PERSONA_REQUIRE_SHARED_DATA=1 and ../shared/data is absent: this test needs its full "
                    "real data sets (set PERSONA_TEST_DATA to their directory)", pytrace=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if SHARED_DATA is None:
        if REQUIRE_SHARED:
            pytest.fail("PERSONA_REQUIRE_SHARED_DATA=1 and ../shared/data is absent", pytrace=False)
        pytest.skip(MISSING)
    return SHARED_DATA


@pytest.fixture(scope="session")
def yeast() -> dict[str, Path]:
    """S. cerevisiae 2x50 pairs and sacCer3 (small: 4,000 pairs on chrI, chrIII, chrVI)."""
    return data_set("yeast")


@pytest.fixture(scope="session")
def human() -> dict[str, Path]:
    """NA12878 chr20 BAM, its 2x101 pairs and the 1.1 Mb reference slice (small: reads of 11 kb)."""
    return data_set("human")


@pytest.fixture(scope="session")
def measles() -> dict[str, Path]:
    """Measles 2x151 pairs and MH356245.1 (small: 2,000 random pairs)."""
    return data_set("measles")


def fastq_head(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` records of the FASTQ(.gz) ``src``, written as plain FASTQ to ``dst``."""
    import gzip
    import itertools

    with gzip.open(src, "rt") as f:
        dst.write_text("".join(itertools.chain.from_iterable(itertools.islice(zip(*[f] * 4), n))))
    return dst


def require_tool(name: str) -> str:
    """Path of an external reference tool; fails (not skips) when missing: CI installs them."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run deploy/test.sh (or deploy/setup.sh with its --apt list)")
    return path


# --- a throwaway Ceph cluster (mon + OSD with cephx, radosgw for S3), started by deploy/ceph.sh ---
REQUIRE_CEPH = os.environ.get("PERSONA_REQUIRE_CEPH", "") not in ("", "0")
CEPH_BINARIES = ("ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "radosgw", "radosgw-admin")


class CephCluster:
    """A running cluster: paths and the URLs Persona's stores use to reach it."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.conf = root / "ceph.conf"
        self.admin_keyring = root / "keyring"
        self.keyring = root / "client.persona.keyring"  # client.persona: rwx on pool "persona" only
        self.pool = "persona"
        env = {}
        for line in (root / "s3.env").read_text().splitlines():
            k, _, v = line.removeprefix("export ").partition("=")
            env[k] = v
        self.s3_env = env
        self.s3_endpoint = env["PERSONA_S3_ENDPOINT"]

    def ceph_url(self, namespace: str, *, pool: str | None = None, user: str = "persona",
                 keyring: Path | None = None) -> str:
        kr = keyring or (self.admin_keyring if user == "admin" else self.keyring)
        return f"ceph://{pool or self.pool}/{namespace}?conf={self.conf}&id={user}&keyring={kr}"

    def s3_url(self, bucket: str, prefix: str = "") -> str:
        return f"s3://{bucket}{'/' + prefix if prefix else ''}?endpoint={self.s3_endpoint}"

    def ceph(self, *args: str, timeout: float = 30) -> str:
        """Run the ``ceph`` CLI as client.admin; returns its stdout."""
        import subprocess

        return subprocess.run(["ceph", "-c", str(self.conf), *args], check=True, capture_output=True,
                               text=True, timeout=timeout).stdout


def _free_port_pair() -> int:
    """A port p with p and p+1 both free on 127.0.0.1 (the mon's v2 and v1 ports)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= 65000:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ceph_missing() -> str | None:
    missing = [b for b in CEPH_BINARIES if shutil.which(b) is None]
    try:
        import rados  # noqa: F401
    except ImportError:
        missing.append("python3-rados (linked into the venv by deploy/setup.sh)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        missing.append("boto3 (pip install 'persona-genomics[s3]')")
    if not missing:
        return None
    return ("needs a local Ceph cluster: missing " + ", ".join(missing) +
            "; apt-get install ceph-mon ceph-osd ceph-common radosgw python3-rados (deploy/test.sh does)")


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> "Iterator[CephCluster]":
    """A throwaway Ceph 16 cluster for the whole session (deploy/ceph.sh start ... stop).

    ``PERSONA_TEST_CEPH_DIR`` names a cluster already started with deploy/ceph.sh, to reuse
    (not stopped at the end). Skipped, with the reason, when the Debian packages are absent,
    unless ``PERSONA_REQUIRE_CEPH=1`` (``.ci/run`` sets it): then it fails.
    """
    import subprocess

    reason = _ceph_missing()
    if reason is not None:
        if REQUIRE_CEPH:
            pytest.fail(f"PERSONA_REQUIRE_CEPH=1: {reason}", pytrace=False)
        pytest.skip(reason)
    script = REPO / "deploy" / "ceph.sh"
    reuse = os.environ.get("PERSONA_TEST_CEPH_DIR")
    if reuse:
        root = Path(reuse)
        subprocess.run(["bash", str(script), "status", str(root)], check=True, capture_output=True, timeout=30)
        yield CephCluster(root)
        return
    root = tmp_path_factory.mktemp("ceph")
    env = dict(os.environ, CEPH_PORT=str(_free_port_pair()), RGW_PORT=str(_free_port()))
    try:
        proc = subprocess.run(["bash", str(script), "start", str(root)], env=env, capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(script), "stop", str(root)], capture_output=True, timeout=120)
        pytest.fail("deploy/ceph.sh start took more than 300 s", pytrace=False)
    if proc.returncode != 0:
        subprocess.run(["bash", str(script), "stop", str(root)], capture_output=True, timeout=120)
        pytest.fail(f"deploy/ceph.sh start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    print(proc.stdout.strip())
    try:
        yield CephCluster(root)
    finally:
        from contextlib import suppress

        with suppress(ImportError):
            from persona.storage.ceph import shutdown_connections

            shutdown_connections()
        subprocess.run(["bash", str(script), "stop", str(root)], capture_output=True, timeout=120)
