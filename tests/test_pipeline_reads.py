"""persona align-sort on read files (persona.apps.pipeline): import, align-sort (--markdup) and export in
one process give exactly what the three commands give; the staging dataset never outlives the run (nor,
through `persona gc`, a killed run); bad input loses nothing."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, require_tool
from persona.agd.dataset import find_manifests
from persona.align.reference import add_reference
from persona.apps.importer import ImportRequest
from persona.apps.pipeline import STAGING_NAME, remove_orphan_staging, staging_owner
from persona.runtime import Runtime
from persona.storage import open_store

REF = FIXTURES / "measles" / "MH356245.1.fasta"
R1 = FIXTURES / "measles" / "SRR7517498_R1.fastq.gz"
R2 = FIXTURES / "measles" / "SRR7517498_R2.fastq.gz"
RG = "@RG\\tID:g1\\tSM:s1\\tLB:libA\\tPL:ILLUMINA"


def persona(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "persona.cli", *args], capture_output=True, text=True,
                       env={**os.environ, "PERSONA_DEBUG": ""})
    if check and r.returncode != 0:
        raise AssertionError(f"persona {' '.join(args)} exited {r.returncode}:\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pipeline_refs")
    add_reference("measles", REF, d)
    return d


def _body(bam: Path) -> list[str]:
    return subprocess.run(["samtools", "view", str(bam)], check=True, capture_output=True, text=True).stdout.splitlines()


def test_reads_to_sorted_bam_equals_the_three_commands(refs: Path, tmp_path: Path) -> None:
    require_tool("samtools")
    one, three = tmp_path / "one", tmp_path / "three"
    persona("align-sort", str(R1), str(R2), "-o", str(one), "-r", "measles", "--store", str(refs), "--markdup",
            "-M", str(tmp_path / "one.metrics"), "--bam", str(tmp_path / "one.bam"), "-c", "3000", "-R", RG,
            "--group-chunks", "2", "-t", "2", "-q")
    persona("import", str(R1), str(R2), "-o", str(three), "-n", "SRR7517498", "-c", "3000", "-R", RG, "-q")
    persona("align-sort", str(three), "-r", "measles", "--store", str(refs), "--markdup", "-M",
            str(tmp_path / "three.metrics"), "--out-name", "sorted", "--group-chunks", "2", "-t", "2", "-q")
    persona("export", str(three), str(tmp_path / "three.bam"), "-n", "sorted", "-q")
    # one dataset at the output location, under the name the reads give; the staging one is gone
    assert find_manifests(open_store(str(one))) == ["SRR7517498"]
    assert not [k for k in open_store(str(one)).list() if STAGING_NAME.match(k)]
    a, b = _body(tmp_path / "one.bam"), _body(tmp_path / "three.bam")
    assert len(a) >= 4000 and a == b
    assert sum(int(line.split("\t")[1]) & 0x400 != 0 for line in a) > 10  # deep measles: duplicates
    assert (tmp_path / "one.bam.bai").exists()

    def metrics(p: Path) -> list[str]:
        return [ln for ln in p.read_text().splitlines() if ln and not ln.startswith("#")]

    assert metrics(tmp_path / "one.metrics") == metrics(tmp_path / "three.metrics")
    hd = subprocess.run(["samtools", "view", "-H", str(tmp_path / "one.bam")], capture_output=True, text=True,
                        check=True).stdout
    assert "SO:coordinate" in hd and "ID:g1" in hd and "LB:libA" in hd
    # the sorted dataset is compressed as configured, not like the (uncompressed) staging dataset
    info = persona("info", str(one)).stdout
    assert "coordinate" in info


def test_bad_reads_leave_nothing(refs: Path, tmp_path: Path) -> None:
    """A malformed record mid-file: an error naming the file and line; no dataset, no staging files."""
    bad1, bad2 = tmp_path / "bad_R1.fastq.gz", tmp_path / "bad_R2.fastq.gz"
    for src, dst in ((R1, bad1), (R2, bad2)):
        with gzip.open(src, "rt") as f:
            lines = f.read().splitlines()
        if dst is bad2:
            bad_record = (len(lines) // 4) * 3 // 4  # late in the file: earlier chunks are already written
            lines[4 * bad_record + 2] = "this is not a plus line"
        with gzip.open(dst, "wt") as f:
            f.write("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = persona("align-sort", str(bad1), str(bad2), "-o", str(out), "-r", "measles", "--store", str(refs),
                "-c", "200", "-q", check=False)
    assert r.returncode == 1
    assert "bad_R2.fastq.gz" in r.stderr and str(4 * bad_record + 3) in r.stderr, r.stderr
    left = list(open_store(str(out)).list()) if out.exists() else []
    assert not [k for k in left if not k.endswith(".broken")], left


def test_usage_errors(refs: Path, tmp_path: Path) -> None:
    r = persona("align-sort", str(R1), str(R2), "-r", "measles", "--store", str(refs), check=False)
    assert r.returncode == 2 and "-o" in r.stderr
    r = persona("align-sort", str(R1), str(R2), "-o", str(tmp_path / "x"), "-r", "measles", "--paired", check=False)
    assert r.returncode == 2
    # the service takes the chain as a chain of requests; the one-process form says so before connecting
    r = persona("submit", "align-sort", str(R1), str(R2), "-o", str(tmp_path / "x"), "-r", "measles", check=False)
    assert r.returncode == 2 and "submit import" in r.stderr, r.stderr


def test_existing_dataset_is_kept(refs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["align-sort", str(R1), str(R2), "-o", str(out), "-r", "measles", "--store", str(refs), "-q"]
    persona(*args)
    before = {k: open_store(str(out)).get(k) for k in open_store(str(out)).list()}
    r = persona(*args, check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    assert {k: open_store(str(out)).get(k) for k in open_store(str(out)).list()} == before


def test_gc_removes_orphan_staging_but_not_a_live_one(tmp_path: Path) -> None:
    """What a SIGKILL between the chain's steps leaves: a complete staging dataset with no live owner."""
    loc = tmp_path / "loc"
    with Runtime(threads=1) as rt:
        for name in ("s.unsorted-0badf00d", "t.unsorted-12345678", "keep"):
            rt.run(ImportRequest(inputs=(str(R1), str(R2)), output=str(loc), name=name, chunk_size=5000))
    store = open_store(str(loc))
    live = staging_owner(store, "t.unsorted-12345678")
    live.acquire()  # a chain still running holds its staging dataset
    try:
        r = persona("gc", str(loc))
        assert "s.unsorted-0badf00d" in r.stderr
        assert sorted(find_manifests(store)) == ["keep", "t.unsorted-12345678"]
        assert not [k for k in store.list() if k.startswith("s.unsorted-0badf00d")]
    finally:
        live.release()
    assert remove_orphan_staging(store) == ["t.unsorted-12345678"]
    assert find_manifests(store) == ["keep"]


def test_gc_clears_a_writer_killed_before_its_first_commit(tmp_path: Path) -> None:
    """A SIGKILL during the chain's align-sort leaves the target's claim and attempt files but no
    manifest; plain `persona gc` (no --name) clears them, and leaves a live writer's alone."""
    import json
    import socket

    from persona.agd.transaction import WriterClaim, claim_key

    loc = tmp_path / "loc"
    loc.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    store = open_store(str(loc))
    store.put(claim_key("ghost"), json.dumps({"app": "sort", "attempt": "a1", "host": socket.gethostname(),
                                              "pid": int(dead), "since": 0, "expires": 4e9}).encode())
    store.put("ghost_0~a1.base", b"partial")
    live = WriterClaim(store, "busy", app="sort", attempt="b2")
    live.acquire()
    try:
        store.put("busy_0~b2.base", b"being written")
        persona("gc", str(loc))
        assert sorted(store.list()) == sorted([claim_key("busy"), "busy_0~b2.base"])
    finally:
        live.release()


def test_gc_removes_old_partial_writes_and_leaves_recent_ones(tmp_path: Path) -> None:
    """Puts killed mid-write leave hidden staged files that no dataset references; `persona gc` removes
    those older than an hour (no put lasts that long) and leaves a recent one (it may be in flight)."""
    from test_storage_file import killed_put

    loc = tmp_path / "loc"
    loc.mkdir()
    store = open_store(str(loc))
    store.put("keep", b"an object")
    killed_put(loc, "ds.sortrun-x-0-0-0-a")
    killed_put(loc, "recent_0.base")
    for p in loc.iterdir():
        if "sortrun" in p.name:
            os.utime(p, (0, 1000))
    out = persona("gc", str(loc), "-v")
    assert "partial write of ds.sortrun-x-0-0-0-a" in out.stderr and "removed 1 partial write" in out.stderr
    names = sorted(p.name for p in loc.iterdir())
    assert names[0].startswith(".persona-tmp-recent_0.base.") and names[1:] == ["keep"], names


def test_ending_a_split_sort_step_removes_its_runs_and_killed_puts_of_them(tmp_path: Path) -> None:
    from persona.service.sort_parts import remove_runs, run_prefix
    from test_storage_file import killed_put

    loc = tmp_path / "loc"
    store = open_store(str(loc))
    prefix = run_prefix("sorted", "step1")
    store.put(prefix + "0-000000000-a", b"run")
    killed_put(loc, prefix + "1-000000000-b")  # the worker was killed while writing this run
    killed_put(loc, run_prefix("sorted", "step2") + "0-000000000-c")  # another step's
    assert remove_runs(str(loc), prefix) == 2
    left = [p.name for p in loc.iterdir()]
    assert len(left) == 1 and "step2" in left[0], left
