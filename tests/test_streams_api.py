"""Pipes (``-`` as standard input and output, with samtools for real) and the Python API."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import persona
from conftest import require_tool
from persona.align.reference import add_reference
from persona.apps.align import align_dataset
from persona.apps.demo import sample_files
from persona.apps.import_fastq import import_fastq

CLI = [sys.executable, "-m", "persona.cli"]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("streams")
    files = sample_files()
    import_fastq(files["r1"], files["r2"], out=tmp / "ds", name="s", chunk_size=1000)
    add_reference("measles", files["reference"], tmp / "refs")
    align_dataset(tmp / "ds", "measles", references_url=tmp / "refs")
    return {"tmp": tmp, "ds": tmp / "ds", "refs": tmp / "refs", **files}


def _sh(cmd: str, **kw) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=300, **kw)


@pytest.mark.tools
def test_export_to_stdout_into_samtools(aligned) -> None:
    samtools = require_tool("samtools")
    py = " ".join(CLI)
    ds = aligned["ds"]
    r = _sh(f"{py} export {ds} - | {samtools} view -c -F 0x900 -")  # primary records: one per read
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 8000
    r = _sh(f"{py} export {ds} - -f bam | {samtools} sort -o {aligned['tmp']}/sorted.bam -")
    assert r.returncode == 0, r.stderr
    assert _sh(f"{samtools} quickcheck {aligned['tmp']}/sorted.bam").returncode == 0
    r = _sh(f"{samtools} view -H {aligned['tmp']}/sorted.bam")
    assert b"@HD\tVN:1.6\tSO:coordinate" in r.stdout
    # the summary went to stderr, never into the data
    r = _sh(f"{py} export {ds} - -f bam > {aligned['tmp']}/via_stdout.bam")
    assert r.returncode == 0 and b"exported 8" in r.stderr
    assert (aligned["tmp"] / "via_stdout.bam").read_bytes()[:4] == b"\x1f\x8b\x08\x04"  # BGZF from byte 0
    assert _sh(f"{samtools} quickcheck {aligned['tmp']}/via_stdout.bam").returncode == 0


def test_export_to_dev_stdout_keeps_the_symlink(aligned, tmp_path: Path) -> None:
    r = _sh(f"{' '.join(CLI)} export {aligned['ds']} /dev/stdout -f sam > {tmp_path}/x.sam")
    assert r.returncode == 0, r.stderr
    assert os.path.islink("/dev/stdout")
    assert (tmp_path / "x.sam").read_bytes().startswith(b"@HD")
    assert b"exported 8" in r.stderr and b"to /dev/stdout" in r.stderr


def test_closed_pipe_ends_quietly(aligned) -> None:
    r = _sh(f"{' '.join(CLI)} export {aligned['ds']} - | head -n 3")
    assert r.stdout.count(b"\n") == 3
    assert b"Traceback" not in r.stderr and b"error" not in r.stderr.lower()


def test_import_from_stdin_fastq_and_interleaved_fastq_out(aligned, tmp_path: Path) -> None:
    py = " ".join(CLI)
    # interleaved FASTQ out on stdout, back in on stdin: the same reads
    r = _sh(f"{py} export {aligned['ds']} - -f fastq | {py} import - -f fastq --interleaved -o {tmp_path}/x -n x -q")
    assert r.returncode == 0, r.stderr
    ds = persona.open(tmp_path / "x")
    assert len(ds) == 8000 and ds.paired
    # gzip'ed single-end FASTQ on stdin
    r = _sh(f"zcat -f {aligned['r1']} | gzip -1 | {py} import - -f fastq -o {tmp_path}/y -n y -q")
    assert r.returncode == 0, r.stderr
    assert len(persona.open(tmp_path / "y")) == 4000
    want = gzip.decompress(aligned["r1"].read_bytes())
    r = _sh(f"{py} export {tmp_path}/y - -f fastq")
    assert r.stdout == want


@pytest.mark.tools
def test_import_sam_from_stdin(aligned, tmp_path: Path) -> None:
    samtools = require_tool("samtools")
    py = " ".join(CLI)
    r = _sh(f"{py} export {aligned['ds']} - -f bam | {samtools} view -h - | {py} import - -f sam -o {tmp_path}/z "
            f"-n z -q")
    assert r.returncode == 0, r.stderr
    ds = persona.open(tmp_path / "z")
    assert len(ds) == 8000 and "results" in ds.columns


def test_import_refuses_a_second_dataset_in_a_location(aligned, tmp_path: Path) -> None:
    py = " ".join(CLI)
    loc = tmp_path / "loc"
    assert _sh(f"{py} import {aligned['r1']} -o {loc} -n a -q").returncode == 0
    r = _sh(f"{py} import {aligned['r2']} -o {loc} -n b -q")
    assert r.returncode == 1 and b"already holds dataset(s) a" in r.stderr
    assert _sh(f"{py} import {aligned['r2']} -o {loc} -n b -q --allow-several").returncode == 0
    r = _sh(f"{py} info {loc}")
    assert r.returncode == 1 and b"--name" in r.stderr or b"name" in r.stderr
    assert _sh(f"{py} info {loc} --name b").returncode == 0


def test_usage_errors_for_bad_values(aligned) -> None:
    py = " ".join(CLI)
    for args in ("import x.fq -o y -c 0", "align d -r x -t -1", "align d -r x --work-item-reads 0",
                 "export d o.bam --level -2"):
        r = _sh(f"{py} {args}")
        assert r.returncode == 2, args  # argparse usage error
        assert b"usage:" in r.stderr
    r = _sh(f"{py} --version")
    assert r.returncode == 0 and r.stdout.startswith(b"persona ") and b"minimap2 2." in r.stdout
    assert _sh(f"{py} align -h").stdout.count(b"examples:") == 1


def test_python_api(aligned) -> None:
    ds = persona.open(aligned["ds"])
    assert len(ds) == 8000 and ds.paired and "results" in ds.columns
    recs = list(ds)
    assert len(recs) == 8000
    first = recs[0]
    assert first.ordinal == 0 and first.seq and len(first.seq) == len(first.qual)
    assert ds[1].name == recs[1].name and ds[-1].ordinal == 7999
    mapped = [r for r in recs if r.mapped]
    assert len(mapped) > 7800 and all(r.contig and r.pos >= 0 and r.cigar for r in mapped[:100])
    chunks = list(ds.chunks(["results"]))
    assert [c.ordinals for c in chunks][:2] == [(0, 2000), (2000, 4000)]
    assert sum(len(c) for c in chunks) == 8000
    pos = ds.column("results").fields["position"]
    assert len(pos) == 8000 and (pos == [r.pos for r in recs]).all()
    assert shutil.which("true")  # keep imports used


@pytest.mark.tools
def test_cram_export(aligned, tmp_path: Path) -> None:
    samtools = require_tool("samtools")
    py = " ".join(CLI)
    cram, bam = tmp_path / "o.cram", tmp_path / "o.bam"
    env = {**os.environ, "PERSONA_ALIGN__REFERENCES_URL": str(aligned["refs"])}
    r = _sh(f"{py} export {aligned['ds']} {cram}", env=env)  # the reference comes from the registry
    assert r.returncode == 0, r.stderr
    assert cram.read_bytes()[:4] == b"CRAM"
    assert _sh(f"{py} export {aligned['ds']} {bam}").returncode == 0
    ref = tmp_path / "ref.fa"  # samtools writes a .fai beside the FASTA: not into the package
    shutil.copy(aligned["reference"], ref)
    a = _sh(f"{samtools} view {bam} | cut -f1-11").stdout
    b = _sh(f"{samtools} view -T {ref} {cram} | cut -f1-11").stdout
    assert a == b and a.count(b"\n") > 8000
    assert b"M5:" in _sh(f"{samtools} view -H {cram}").stdout


@pytest.mark.tools
def test_coordinate_sorted_paired_bam_aligns_as_pairs_after_a_name_sort(aligned, tmp_path: Path) -> None:
    """A paired BAM sorted by coordinate, imported as it is (--no-collate): align refuses to lose the
    pairing; sorted by name, it aligns as pairs and gives the same flagstat as the FASTQ import it came
    from. Imported by default, it is collated and aligns as pairs at once."""
    samtools = require_tool("samtools")
    py = " ".join(CLI)
    env = {**os.environ, "PERSONA_ALIGN__REFERENCES_URL": str(aligned["refs"])}
    t = tmp_path
    assert _sh(f"{py} export {aligned['ds']} - -f bam --no-secondary | {samtools} sort -o {t}/cs.bam -",
               env=env).returncode == 0
    assert _sh(f"{py} import {t}/cs.bam -o {t}/imp -n c -q --no-collate", env=env).returncode == 0
    r = _sh(f"{py} align {t}/imp -r measles -q", env=env)
    assert r.returncode == 1 and b"sort it by read name first" in r.stderr
    assert _sh(f"{py} sort {t}/imp -o {t}/byname --order queryname -q", env=env).returncode == 0
    assert b"paired: detected" in _sh(f"{py} info {t}/byname", env=env).stdout
    assert _sh(f"{py} align {t}/byname -r measles -q", env=env).returncode == 0
    ours = _sh(f"{py} stats {t}/byname --json", env=env).stdout
    theirs = _sh(f"{py} stats {aligned['ds']} --json", env=env).stdout
    import json

    a, b = json.loads(ours), json.loads(theirs)
    assert a["properly_paired"] == b["properly_paired"] and a["mapped"] == b["mapped"] and a["paired"] == 8000
    r = _sh(f"{py} import {t}/cs.bam -o {t}/collated -n c", env=env)
    assert r.returncode == 0 and b"mates collated" in r.stderr, r.stderr
    assert _sh(f"{py} align {t}/collated -r measles -q", env=env).returncode == 0
    c = json.loads(_sh(f"{py} stats {t}/collated --json", env=env).stdout)
    assert c["properly_paired"] == b["properly_paired"] and c["mapped"] == b["mapped"] and c["paired"] == 8000


@pytest.mark.tools
def test_coordinate_sorted_export_gets_an_index_and_full_sq_lines(aligned, tmp_path: Path) -> None:
    samtools = require_tool("samtools")
    py = " ".join(CLI)
    env = {**os.environ, "PERSONA_ALIGN__REFERENCES_URL": str(aligned["refs"])}
    assert _sh(f"{py} sort {aligned['ds']} -o {tmp_path}/srt -q", env=env).returncode == 0
    r = _sh(f"{py} export {tmp_path}/srt {tmp_path}/o.bam --no-secondary", env=env)
    assert r.returncode == 0 and b"SO:coordinate" in r.stderr, r.stderr
    assert (tmp_path / "o.bam.bai").exists()
    header = _sh(f"{samtools} view -H {tmp_path}/o.bam").stdout.decode()
    sq = [ln for ln in header.splitlines() if ln.startswith("@SQ")]
    assert sq and all("\tM5:" in ln and "\tUR:file://" in ln for ln in sq)
    contig = sq[0].split("\tSN:")[1].split("\t")[0]
    region = _sh(f"{samtools} view -c {tmp_path}/o.bam {contig}:1000-2000")  # the index answers a region
    assert region.returncode == 0 and int(region.stdout) > 0
