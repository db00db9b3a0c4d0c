"""``persona cp`` / ``persona rm`` (persona/apps/copy.py): copies between real stores, resumption after a
kill, checksum checks, column subsets, safe deletion.

The file and memory cases run everywhere; the file -> Ceph -> S3 -> file round trip uses the throwaway
cluster of deploy/ceph.sh (the ``ceph_cluster`` fixture; skipped with the reason where Ceph is absent).
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_storage_s3 import s3_admin, s3_bucket, s3_env, s3_url  # noqa: F401 - fixtures

from persona.agd.dataset import Dataset
from persona.agd.transaction import WriterClaim
from persona.apps.copy import copy_dataset, remove_dataset
from persona.apps.export_fastq import export_fastq
from persona.apps.import_fastq import import_fastq
from persona.cli import main as cli_main
from persona.errors import ChunkFormatError, DatasetBusyError, DatasetError, ManifestError
from persona.storage import open_store

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "persona" / "data"
R1, R2 = DATA / "sample_R1.fastq.gz", DATA / "sample_R2.fastq.gz"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged sample pairs (8,000 records) as a dataset of 4 chunks in a directory."""
    root = tmp_path_factory.mktemp("src") / "sample"
    import_fastq(R1, R2, out=str(root), name="sample", chunk_size=1000, threads=2)
    return root


def _fastq(location: str | Path, tmp: Path, tag: str) -> tuple[bytes, bytes]:
    o1, o2 = tmp / f"{tag}_1.fq", tmp / f"{tag}_2.fq"
    export_fastq(str(location), o1, o2, name="sample")
    return o1.read_bytes(), o2.read_bytes()


def test_copy_between_directories_is_identical(sample: Path, tmp_path: Path) -> None:
    dst = tmp_path / "copy"
    s = copy_dataset(str(sample), str(dst), threads=3)
    assert (s.chunks, s.records, s.files_copied, s.files_skipped) == (4, 8000, 12, 0)
    ds = Dataset.open(str(dst))
    assert ds.columns == Dataset.open(str(sample)).columns
    assert ds.manifest.provenance[-1]["app"] == "cp"
    # a file store gets the original layout back (hard links), and no claim is left behind
    names = sorted(p.name for p in dst.iterdir())
    assert "sample_0.base" in names and not any("~" in n or "writer" in n for n in names)
    assert _fastq(dst, tmp_path, "b") == (gzip.decompress(R1.read_bytes()), gzip.decompress(R2.read_bytes()))


def test_columns_subset(sample: Path, tmp_path: Path) -> None:
    dst = f"memory://cp-{uuid.uuid4().hex[:8]}"
    s = copy_dataset(str(sample), dst, columns=["base", "qual"])
    assert s.files_copied == 8
    ds = Dataset.open(dst)
    assert ds.columns == ["base", "qual"]
    assert not any(k.endswith(".metadata") for k in open_store(dst).list())
    assert ds.read_column(3, "base") == Dataset.open(str(sample)).read_column(3, "base")
    with pytest.raises(DatasetError, match="no column"):
        copy_dataset(str(sample), f"memory://cp-{uuid.uuid4().hex[:8]}", columns=["results"])


def test_checksum_mismatch_is_detected(sample: Path, tmp_path: Path) -> None:
    src = tmp_path / "damaged"
    copy_dataset(str(sample), str(src))
    victim = src / "sample_4000.qual"
    raw = bytearray(victim.read_bytes())
    raw[-5] ^= 0xFF
    os.unlink(victim)  # a hard link of the module's sample: replace, never edit in place
    victim.write_bytes(bytes(raw))
    dst = tmp_path / "out"
    with pytest.raises(ChunkFormatError, match="checksum mismatch") as err:
        copy_dataset(str(src), str(dst))
    assert "sample_4000.qual" in str(err.value)
    assert not (dst / "sample_metadata.json").exists()  # nothing committed
    assert not any("writer" in p.name for p in dst.iterdir())  # the claim was given back


def test_existing_destination_needs_overwrite(sample: Path, tmp_path: Path) -> None:
    dst = f"memory://cp-{uuid.uuid4().hex[:8]}"
    first = copy_dataset(str(sample), dst, columns=["base"])
    with pytest.raises(DatasetError, match="already exists"):
        copy_dataset(str(sample), dst)
    assert Dataset.open(dst).columns == ["base"]  # untouched
    s = copy_dataset(str(sample), dst, overwrite=True)
    ds = Dataset.open(dst)
    assert ds.columns == ["base", "qual", "metadata"] and ds.manifest.generation == s.generation > first.generation
    # the first copy's files went with the commit: exactly one file per chunk and column is left
    assert len([k for k in open_store(dst).list() if k.startswith("sample_") and not k.endswith(".json")]) == 12
    with pytest.raises(DatasetError, match="same dataset"):
        copy_dataset(dst, dst)


_KILLER = """
import os, signal, sys
from persona.apps.copy import copy_dataset
def after(n):
    if n == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
copy_dataset(sys.argv[1], sys.argv[2], threads=1, _after_file=after)
"""


@pytest.mark.timeout(120)
def test_interrupted_copy_resumes(sample: Path, tmp_path: Path) -> None:
    """A copy killed (SIGKILL) after 5 of 12 files: nothing looks complete; the rerun copies the rest."""
    dst = tmp_path / "resumed"
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(sample), str(dst), "5"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert not (dst / "sample_metadata.json").exists()
    with pytest.raises(ManifestError):
        Dataset.open(str(dst))
    claim = json.loads((dst / "sample_writer.json").read_text())  # the dead copy's claim is still there
    assert claim["app"] == "cp"
    s = copy_dataset(str(sample), str(dst), threads=2)  # breaks the dead claim, resumes
    assert s.files_skipped == 5 and s.files_copied == 7
    assert _fastq(dst, tmp_path, "r") == _fastq(sample, tmp_path, "s")
    assert not any("~" in p.name or "writer" in p.name for p in dst.iterdir())


def test_rm(sample: Path, tmp_path: Path) -> None:
    loc = f"memory://rm-{uuid.uuid4().hex[:8]}"
    copy_dataset(str(sample), loc)
    store = open_store(loc)
    holder = WriterClaim(store, "sample", app="align", attempt="abc123")
    holder.acquire()
    try:
        with pytest.raises(DatasetBusyError, match="being written by align"):
            remove_dataset(loc)
        assert Dataset.open(loc).num_records == 8000  # untouched
    finally:
        holder.release()
    s = remove_dataset(loc)
    assert s.had_manifest and s.deleted[0] == "sample_metadata.json" and len(s.deleted) == 13
    assert list(store.list()) == []
    with pytest.raises(ManifestError):
        remove_dataset(loc)
    # leftovers of a write that never committed: removed by name
    store.put("sample_0~0123abcd.base", b"x")
    s = remove_dataset(loc, "sample")
    assert not s.had_manifest and s.deleted == ["sample_0~0123abcd.base"]


def test_cli_cp_and_rm(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "cli"
    assert cli_main(["cp", str(sample), str(dst), "--columns", "base,qual", "-t", "2"]) == 0
    assert "copied sample (4 chunks, 8000 records, columns base,qual)" in capsys.readouterr().err
    assert Dataset.open(str(dst)).columns == ["base", "qual"]
    assert cli_main(["rm", str(dst)]) == 0
    assert not (dst / "sample_metadata.json").exists() and not list(dst.glob("sample_*"))


@pytest.mark.ceph
@pytest.mark.timeout(300)
def test_file_ceph_s3_file_round_trip(sample: Path, tmp_path: Path, ceph_cluster, s3_url: str) -> None:  # noqa: F811
    ceph = ceph_cluster.ceph_url(f"cp-{uuid.uuid4().hex[:10]}")
    back = tmp_path / "back"
    try:
        a = copy_dataset(str(sample), ceph, threads=4)
        b = copy_dataset(ceph, s3_url, threads=4)
        c = copy_dataset(s3_url, str(back), threads=4)
        assert a.files_copied == b.files_copied == c.files_copied == 12
        for loc in (ceph, s3_url):
            assert Dataset.open(loc).num_records == 8000
        assert _fastq(back, tmp_path, "back") == _fastq(sample, tmp_path, "orig")
        prov = [p["app"] for p in Dataset.open(str(back)).manifest.provenance]
        assert prov[-3:] == ["cp", "cp", "cp"]
        # a second copy over a subset resumes nothing and rm clears the object stores
        remove_dataset(s3_url)
        assert list(open_store(s3_url).list()) == []
    finally:
        remove_dataset(ceph)
    assert list(open_store(ceph).list()) == []
