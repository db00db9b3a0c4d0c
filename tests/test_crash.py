"""Crash consistency: SIGKILL ``persona import``, ``align`` and ``export`` at random moments.

After each kill the dataset (or output file) must be exactly the old committed state or the
new one, verify, and the next run must succeed with identical output. Leftover attempt files
are removed by the next writer. Bounded: ``PERSONA_CRASH_KILLS`` kills per app (default 30).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona.agd import Dataset
from persona.agd.transaction import unreferenced_keys
from persona.agd.verify import verify_dataset
from persona.align.reference import add_reference
from persona.apps.demo import sample_files
from persona.errors import ManifestError

KILLS = int(os.environ.get("PERSONA_CRASH_KILLS", "30"))
SEED = int(os.environ.get("PERSONA_CRASH_SEED", "1234"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "persona.cli", *args]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def _kill_after(args: list[str], env: dict[str, str], delay: float) -> int:
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    return p.returncode


def _state(loc: Path) -> dict[str, bytes] | None:
    """Every committed chunk file (checksums checked), or None when there is no dataset."""
    try:
        ds = Dataset.open(loc)
    except ManifestError:
        return None
    return {f"{ds.chunks[i].first}.{c}": ds.read_file(i, c) for i in range(len(ds.chunks)) for c in ds.columns}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("crash")
    files = sample_files()
    refs = tmp / "refs"
    add_reference("measles", files["reference"], refs)
    add_reference("measles", files["reference"], refs, preset="map-ont")  # a re-align with other results
    env = {**os.environ, "PERSONA_ALIGN__REFERENCES_URL": str(refs), "PYTHONUNBUFFERED": "1"}
    base = tmp / "base"
    t0 = time.monotonic()
    r = _run(_cli("import", str(files["r1"]), str(files["r2"]), "-o", str(base), "-n", "s", "-c", "300", "-q"), env)
    assert r.returncode == 0, r.stderr
    t_import = time.monotonic() - t0
    # timing of a whole run, to spread the kills over it
    t0 = time.monotonic()
    aligned = tmp / "aligned"
    shutil.copytree(base, aligned)
    r = _run(_cli("align", str(aligned), "-r", "measles", "-q", "--work-item-reads", "100"), env)
    assert r.returncode == 0, r.stderr
    t_align = time.monotonic() - t0
    t0 = time.monotonic()
    r = _run(_cli("export", str(aligned), str(tmp / "timing.sam"), "-q"), env)
    assert r.returncode == 0, r.stderr
    t_export = time.monotonic() - t0
    return {"tmp": tmp, "files": files, "env": env, "base": base, "aligned": aligned, "t_align": t_align,
            "t_import": t_import, "t_export": t_export}


def _delays(n: int, span: float) -> list[float]:
    """Kill moments over a whole run: from interpreter start-up to just after the commit."""
    rng = random.Random(SEED)
    return [rng.uniform(0.25 * span, 1.5 * span) for _ in range(n)]


def test_kill_realign_any_moment_keeps_old_or_new(setup) -> None:
    tmp, env = setup["tmp"], setup["env"]
    # the dataset starts aligned with the short-read preset (old); the re-align uses another preset (new)
    loc = tmp / "realign"
    shutil.copytree(setup["aligned"], loc)
    old = _state(loc)
    ref_new = tmp / "realign_ref"
    shutil.copytree(loc, ref_new)
    realign = ["align", "-r", "measles", "-q", "--work-item-reads", "100", "--preset", "map-ont"]
    assert _run(_cli(realign[0], str(ref_new), *realign[1:]), env).returncode == 0
    new = _state(ref_new)
    assert old is not None and new is not None and old != new
    seen = {"old": 0, "new": 0}
    for delay in _delays(KILLS, setup["t_align"]):
        _kill_after(_cli(realign[0], str(loc), *realign[1:]), env, delay)
        st = _state(loc)
        assert st in (old, new), "dataset is neither the old nor the new committed state"
        seen["old" if st == old else "new"] += 1
        assert verify_dataset(Dataset.open(loc)).ok
        if st == new:  # go back to the old state for the next kill
            shutil.rmtree(loc)
            shutil.copytree(setup["aligned"], loc)
    # the next run succeeds, identical output, no leftovers
    r = _run(_cli(realign[0], str(loc), *realign[1:]), env)
    assert r.returncode == 0, r.stderr
    assert _state(loc) == new
    ds = Dataset.open(loc)
    assert unreferenced_keys(ds.store, ds.name, ds.manifest) == []
    print(f"align kills: {KILLS}, states seen: {seen}")
    assert seen["old"] > 0


def test_kill_import_any_moment_leaves_nothing_or_complete(setup) -> None:
    tmp, env, files = setup["tmp"], setup["env"], setup["files"]
    expect = _state(setup["base"])
    seen = {"none": 0, "complete": 0}
    loc = tmp / "imp"
    args = _cli("import", str(files["r1"]), str(files["r2"]), "-o", str(loc), "-n", "s", "-c", "300", "-q",
                "--overwrite")
    t0 = time.monotonic()
    assert _run(args, env).returncode == 0  # one whole run: how long the kills spread over
    span = time.monotonic() - t0
    for delay in _delays(KILLS, span):
        if loc.exists():
            shutil.rmtree(loc)
        _kill_after(args, env, delay)
        st = _state(loc)
        assert st is None or st == expect
        seen["none" if st is None else "complete"] += 1
    r = _run(args, env)
    assert r.returncode == 0, r.stderr
    assert _state(loc) == expect
    ds = Dataset.open(loc)
    assert unreferenced_keys(ds.store, ds.name, ds.manifest) == []
    print(f"import kills: {KILLS}, states seen: {seen}")


def test_kill_export_any_moment_old_file_or_complete_new(setup) -> None:
    tmp, env = setup["tmp"], setup["env"]
    out = tmp / "out.sam"
    out.write_bytes(b"old content\n")
    ref = tmp / "ref.sam"
    assert _run(_cli("export", str(setup["aligned"]), str(ref), "-q"), env).returncode == 0
    new = ref.read_bytes()
    seen = {"old": 0, "new": 0}
    for delay in _delays(KILLS, setup["t_export"]):
        out.write_bytes(b"old content\n")
        _kill_after(_cli("export", str(setup["aligned"]), str(out), "-q"), env, delay)
        got = out.read_bytes()
        body = [ln for ln in got.split(b"\n") if not ln.startswith(b"@PG")]
        assert got == b"old content\n" or body == [ln for ln in new.split(b"\n") if not ln.startswith(b"@PG")]
        seen["old" if got == b"old content\n" else "new"] += 1
    print(f"export kills: {KILLS}, states seen: {seen}")


def test_sigint_realign_any_moment_keeps_old_or_new_and_cleans_up(setup) -> None:
    """Ctrl-C: the command stops (status 130), the dataset is the old or the new committed state,
    and the interrupted attempt's files are already gone (no gc needed)."""
    tmp, env = setup["tmp"], setup["env"]
    loc = tmp / "sigint"
    shutil.copytree(setup["aligned"], loc)
    old = _state(loc)
    ref = tmp / "sigint_ref"
    shutil.copytree(setup["aligned"], ref)
    assert _run(_cli("align", str(ref), "-r", "measles", "-q", "--preset", "map-ont"), env).returncode == 0
    new_state = _state(ref)
    assert new_state != old
    n = max(3, KILLS // 3)
    seen = {"old": 0, "new": 0}
    for delay in _delays(n, setup["t_align"]):
        p = subprocess.Popen(_cli("align", str(loc), "-r", "measles", "-q", "--work-item-reads", "100",
                                  "--preset", "map-ont"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        st = _state(loc)
        assert st is not None
        if st != old:  # finished (or interrupted only after its commit): the new state, whole
            assert st == new_state
            seen["new"] += 1
            shutil.rmtree(loc)
            shutil.copytree(setup["aligned"], loc)
            continue
        assert p.returncode in (130, -signal.SIGINT), err
        assert st == old
        seen["old"] += 1
        ds = Dataset.open(loc)
        assert unreferenced_keys(ds.store, ds.name, ds.manifest) == []  # the attempt cleaned up after itself
        assert not (loc / "s_writer.json").exists()
    print(f"align SIGINTs: {n}, states seen: {seen}")


def test_two_aligns_on_one_dataset_one_fails_at_once_naming_the_holder(setup) -> None:
    import gzip

    tmp, env, files = setup["tmp"], setup["env"], setup["files"]
    big1, big2 = tmp / "big_R1.fq", tmp / "big_R2.fq"  # 20x the sample: the first align runs a few seconds
    big1.write_bytes(gzip.decompress(files["r1"].read_bytes()) * 20)
    big2.write_bytes(gzip.decompress(files["r2"].read_bytes()) * 20)
    loc = tmp / "two"
    assert _run(_cli("import", str(big1), str(big2), "-o", str(loc), "-n", "s", "-q"), env).returncode == 0
    assert _run(_cli("align", str(loc), "-r", "measles", "-q"), env).returncode == 0
    before = _state(loc)
    a = subprocess.Popen(_cli("align", str(loc), "-r", "measles", "-q", "--preset", "map-ont"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not (loc / "s_writer.json").exists() and time.monotonic() < deadline and a.poll() is None:
        time.sleep(0.01)
    a_running = a.poll() is None and (loc / "s_writer.json").exists()
    b = _run(_cli("align", str(loc), "-r", "measles", "-q"), env)
    a_err = a.communicate(timeout=120)[1]
    st = _state(loc)
    print(f"second writer while the first ran: {a_running}, refused: {b.returncode != 0}")
    if a_running and b.returncode != 0:
        assert a.returncode == 0, a_err
        assert b.returncode == 1 and "is being written by align" in b.stderr and f"pid {a.pid}" in b.stderr, b.stderr
        assert st is not None and st != before  # a's alignment (map-ont), whole
    else:  # a had already finished when b started: both succeed, one after the other
        assert a.returncode == 0 and b.returncode == 0, (a_err, b.stderr)
        assert st == before
    assert verify_dataset(Dataset.open(loc)).ok


@pytest.mark.parametrize("app", ["sort", "markdup"])
def test_kill_sort_and_markdup_any_moment(setup, app: str) -> None:
    """sort writes a new dataset, markdup rewrites results: after a SIGKILL at any moment the output is
    absent or complete (sort), or the old or new state (markdup); the next run succeeds identically."""
    tmp, env = setup["tmp"], setup["env"]
    src = tmp / f"{app}_src"
    if not src.exists():
        shutil.copytree(setup["aligned"], src)
    if app == "sort":
        out = tmp / "sorted_out"
        args = _cli("sort", str(src), "-o", str(out), "-q", "--overwrite")
        ref_out = tmp / "sorted_ref"
        assert _run(_cli("sort", str(src), "-o", str(ref_out), "-q"), env).returncode == 0
        old, new = None, _state(ref_out)
    else:
        shutil.rmtree(tmp / "md_ref", ignore_errors=True)
        shutil.copytree(src, tmp / "md_ref")
        assert _run(_cli("markdup", str(tmp / "md_ref"), "-q"), env).returncode == 0
        old, new = _state(src), _state(tmp / "md_ref")
        out = src
        args = _cli("markdup", str(src), "-q")
    t0 = time.monotonic()
    assert _run(args, env).returncode == 0  # one whole run, for the timing
    span = time.monotonic() - t0
    seen: dict[str, int] = {"old": 0, "new": 0}
    for delay in _delays(max(3, KILLS // 3), span):
        if app == "sort":
            shutil.rmtree(out, ignore_errors=True)
        else:
            shutil.rmtree(out)
            shutil.copytree(setup["aligned"], out)
        _kill_after(args, env, delay)
        st = _state(out)
        assert st in (old, new), f"{app}: neither the old nor the new committed state"
        seen["old" if st == old else "new"] += 1
    assert _run(args, env).returncode == 0
    assert _state(out) == new
    ds = Dataset.open(out)
    assert unreferenced_keys(ds.store, ds.name, ds.manifest) == []
    print(f"{app} kills: {max(3, KILLS // 3)}, states seen: {seen}")
