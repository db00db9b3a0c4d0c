"""The ``persona`` command end to end: every sub-command on real data, and its failures."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from persona.apps.demo import sample_files
from persona.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def imported(tmp_path: Path, capsys) -> Path:
    files = sample_files()
    out = tmp_path / "ds"
    rc, stdout, stderr = run(capsys, "import", str(files["r1"]), str(files["r2"]), "-o", str(out),
                             "-n", "sample", "-c", "1500")
    assert rc == 0, stderr
    assert "imported 8000 records" in stderr and stdout == ""  # summaries on stderr: stdout is for data
    return out


def test_version_runs_as_installed_script() -> None:
    proc = subprocess.run([sys.executable, "-m", "persona.cli", "version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("persona ")


def test_config_show_is_yaml_with_sections(capsys) -> None:
    import yaml

    rc, out, _ = run(capsys, "config", "show")
    assert rc == 0
    cfg = yaml.safe_load(out)
    assert cfg["agd"]["compression"] == "zstd"
    assert cfg["agd"]["chunk_size"] == 100000


def test_info_reports_columns_chunks_and_sort(imported: Path, capsys) -> None:
    rc, out, _ = run(capsys, "info", str(imported), "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["records"] == 8000
    assert info["chunks"] == 3  # 4000 pairs in chunks of 1500 pairs
    assert info["columns"] == ["base", "qual", "metadata"]
    assert info["sort"] == "queryname"
    assert info["paired"] is True
    assert all(v > 0 for v in info["bytes_per_column"].values())


def test_verify_passes_then_detects_corruption(imported: Path, capsys) -> None:
    rc, _, _ = run(capsys, "verify", str(imported))
    assert rc == 0
    victim = imported / "sample_3000.qual"
    data = bytearray(victim.read_bytes())
    data[60:70] = b"\xff" * 10
    victim.write_bytes(bytes(data))
    rc, out, err = run(capsys, "verify", str(imported))
    assert rc != 0
    assert "sample_3000.qual" in out + err


def test_fastq_export_round_trip(imported: Path, tmp_path: Path, capsys) -> None:
    files = sample_files()
    o1, o2 = tmp_path / "o1.fastq", tmp_path / "o2.fastq"
    rc, _, _ = run(capsys, "export", str(imported), str(o1), str(o2))
    assert rc == 0
    assert o1.read_bytes() == gzip.decompress(files["r1"].read_bytes())
    assert o2.read_bytes() == gzip.decompress(files["r2"].read_bytes())


def test_repair_manifest_rebuilds_what_was_lost(imported: Path, capsys) -> None:
    manifest = imported / "sample_metadata.json"
    before = json.loads(manifest.read_text())
    manifest.unlink()
    rc, out, _ = run(capsys, "info", str(imported))
    assert rc == 1
    rc, out, _ = run(capsys, "repair-manifest", str(imported))
    assert rc == 0, out
    after = json.loads(manifest.read_text())
    assert after["records"] == before["records"]
    assert sorted(after["columns"]) == sorted(before["columns"])


def test_errors_are_one_line_and_nonzero(tmp_path: Path, capsys) -> None:
    rc, out, err = run(capsys, "import", str(tmp_path / "missing_R1.fastq.gz"), "-o", str(tmp_path / "x"))
    assert rc == 1
    assert err.startswith("persona: error: ") and err.count("\n") == 1
    assert "missing_R1.fastq.gz" in err
    rc, _, err = run(capsys, "info", str(tmp_path / "nothing-here"))
    assert rc == 1 and err.startswith("persona: error: ")
    bad = tmp_path / "bad.fastq"
    bad.write_text("@r1\nACGT\n+\nIII\n")
    rc, _, err = run(capsys, "import", str(bad), "-o", str(tmp_path / "bad_ds"))
    assert rc == 1
    assert "bad.fastq" in err and "line" in err
    assert not list((tmp_path / "bad_ds").glob("*_metadata.json")) if (tmp_path / "bad_ds").exists() else True


@pytest.mark.slow
def test_demo_runs_the_whole_chain(tmp_path: Path, capsys) -> None:
    rc, out, err = run(capsys, "demo", "--workdir", str(tmp_path))
    assert rc == 0, err
    assert "reads            8,000" in out
    assert "mapped" in out and "properly paired" in out
    bam = tmp_path / "sample.bam"
    proc = subprocess.run(["samtools", "quickcheck", str(bam)], capture_output=True)
    assert proc.returncode == 0
    flagstat = subprocess.run(["samtools", "flagstat", str(bam)], capture_output=True, text=True).stdout
    mapped_line = next(line for line in flagstat.splitlines() if " mapped (" in line)
    assert int(mapped_line.split()[0]) > 4000  # ~75% of the sample is measles
    # the chain sorts and marks duplicates: a coordinate-sorted, indexed BAM with 0x400 flags
    assert (tmp_path / "sample.bam.bai").exists() and (tmp_path / "duplicate_metrics.txt").exists()
    header = subprocess.run(["samtools", "view", "-H", str(bam)], capture_output=True, text=True).stdout
    assert "SO:coordinate" in header.splitlines()[0]
    dup_line = next(line for line in flagstat.splitlines() if " duplicates" in line)
    assert int(dup_line.split()[0]) > 0 and "duplicates" in out


@pytest.mark.parametrize(("choice", "code"), [("none", 0), ("gzip", 2), ("zstd", 3)])
def test_every_compression_choice_imports(tmp_path: Path, capsys, choice: str, code: int) -> None:
    files = sample_files()
    out = tmp_path / "ds"
    rc, _, err = run(capsys, "import", str(files["r1"]), str(files["r2"]), "-o", str(out), "-n", "s",
                     "--compression", choice)
    assert rc == 0, err
    header = (out / "s_0.qual").read_bytes()[:56]
    assert header[3] == code  # compression_type byte of the AGD header
    rc, _, _ = run(capsys, "verify", str(out))
    assert rc == 0


def test_bare_dataset_names_resolve_under_storage_default_url(tmp_path: Path, capsys,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_STORAGE__DEFAULT_URL", str(tmp_path / "store"))
    files = sample_files()
    rc, out, err = run(capsys, "import", str(files["r1"]), str(files["r2"]), "-o", "ds", "-n", "s")
    assert rc == 0, err
    assert (tmp_path / "store" / "ds" / "s_metadata.json").exists()
    monkeypatch.chdir(tmp_path)  # a bare name is not taken relative to the working directory
    rc, out, _ = run(capsys, "info", "ds", "--json")
    assert rc == 0 and json.loads(out)["records"] == 8000
    rc, _, err = run(capsys, "info", "./ds")  # an explicit path is taken as it is
    assert rc == 1 and "ds" in err


def test_bad_configuration_is_a_one_line_error(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_AGD__ZSTD_LEVEL", "fast")
    rc, _, err = run(capsys, "config", "show")
    assert rc == 1
    assert err.startswith("persona: error: agd.zstd_level") and err.count("\n") == 1


def test_closed_pipe_ends_quietly(imported: Path) -> None:
    """`persona info DS | head -1`: no error message, the status a SIGPIPE'd tool gives."""
    proc = subprocess.Popen([sys.executable, "-m", "persona.cli", "info", str(imported)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before persona writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""
