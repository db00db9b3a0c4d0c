"""Run the benchmark scripts of ``bench/`` as one suite and record what each printed.

Each ``bench/bench_NAME.py`` is a program of its own (see bench/_common.py): it measures our
command and the reference tool side by side and prints, as its last line, one JSON object. The
suite discovers the scripts, runs each one ``reps`` times (several variants for some: thread
counts for align), keeps every repetition's JSON, wall time, exit status and standard-error
tail, and writes ``results.json`` after every script (a suite stopped half-way keeps what it
measured). Rendering (:mod:`persona.bench.report`) reads only ``results.json``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona.bench import environment

SCHEMA = 1

#: the benchmarks the report has a place for, in report order; a script not (yet) in bench/
#: is shown as missing rather than silently left out
EXPECTED: tuple[str, ...] = ("align", "align_accuracy", "sort", "markdup", "chain", "import", "size",
                             "service", "store", "ptf")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    """One way to run a script: a label (``t2``, ``snap-t1``; '' for the plain run) and its arguments."""

    label: str
    args: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def key(self, name: str) -> str:
        return f"{name}[{self.label}]" if self.label else name


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def discover(bench_dir: Path) -> dict[str, Path]:
    """``bench_NAME.py`` scripts of ``bench_dir`` by NAME."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(bench_dir.glob("bench_*.py"))}


def script_help(script: Path, env: dict[str, str], timeout: float = 60) -> str:
    """The script's ``--help`` text ('' when it cannot say): which options it takes."""
    try:
        r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=timeout,
                           env=env, cwd=script.parent.parent)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout if r.returncode == 0 else ""


def _choices(help_text: str, option: str) -> list[str]:
    m = re.search(re.escape(option) + r"\s+\{([^}]+)\}", help_text)
    return [c.strip() for c in m.group(1).split(",")] if m else []


def thread_counts(quick: bool, cores: int) -> list[int]:
    """Thread counts for the scaling curves: 1, 2, 4, ... up to the cores (quick: 1 and 2)."""
    counts, t = [], 1
    while t <= max(1, cores):
        counts.append(t)
        t *= 2
    if counts[-1] != cores and cores > 0:
        counts.append(cores)
    return counts[:2] if quick else counts


def plan(name: str, help_text: str, quick: bool, cores: int) -> list[Variant]:
    """The runs of one script: its quick flag when asked for, and for align a thread sweep (per
    aligner when the script takes ``--aligner``)."""
    base: tuple[str, ...] = ("--quick",) if quick and "--quick" in help_text else ()
    if name == "align" and "--threads" in help_text:
        aligners = _choices(help_text, "--aligner") or [""]
        out = []
        for aligner in aligners:
            for t in thread_counts(quick, cores):
                args = base + (("--aligner", aligner) if aligner else ()) + ("--threads", str(t))
                label = f"{aligner}-t{t}" if aligner else f"t{t}"
                out.append(Variant(label, args, {"threads": t, **({"aligner": aligner} if aligner else {})}))
        return out
    return [Variant("", base)]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def last_json(stdout: str) -> dict[str, Any] | None:
    """The JSON object on the last non-empty line of a benchmark's output, or None."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        obj = json.loads(lines[-1])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _exited(pid: int) -> bool:
    """Whether the process has ended, leaving it unreaped: its pid, and so its process group's id,
    cannot be reused until :func:`_stop` has killed the group and reaped it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the script's process group (the script too, when it still runs), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_once(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float,
             progress: Progress, what: str) -> dict[str, Any]:
    """One run of a script: its status, wall time, JSON and the tail of its standard error."""
    out_path, err_path = log.with_name(log.name + ".out"), log.with_name(log.name + ".err")
    t0 = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # a session of its own: a timeout stops the script and every process it started
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        timed_out = False
        next_note = t0 + 60
        try:
            while not _exited(proc.pid):
                now = time.monotonic()
                if now - t0 > timeout:
                    timed_out = True
                    break
                if now >= next_note:
                    last = _tail(err_path, 400).strip().splitlines()
                    progress(f"    {what}: running {now - t0:.0f} s" + (f" ({last[-1][:100]})" if last else ""))
                    next_note = now + 60
                time.sleep(0.2)
        finally:
            # on a timeout, Ctrl-C (it reaches only the suite: the script has a session of its own) or a
            # normal end alike: nothing the script started outlives it (a server it did not stop)
            _stop(proc)
    status = "timeout" if timed_out else "ok" if proc.returncode == 0 else "failed"
    wall = time.monotonic() - t0
    stdout = out_path.read_text(errors="replace")
    rep: dict[str, Any] = {"status": status, "returncode": proc.returncode, "wall_s": round(wall, 2)}
    obj = last_json(stdout)
    if status == "ok" and obj is None:
        rep["status"] = "no-json"
    if obj is not None:
        rep["json"] = obj
    if rep["status"] != "ok":
        rep["stderr_tail"] = _tail(err_path)
        if rep["status"] == "timeout":
            rep["stderr_tail"] += f"\n[persona bench: stopped after {timeout:.0f} s]"
    return rep


def entry_status(reps: list[dict[str, Any]]) -> str:
    ok = sum(r["status"] == "ok" for r in reps)
    if ok == len(reps) and reps:
        return "ok"
    if ok:
        return "partial"
    return reps[0]["status"] if reps else "not-run"


def inputs_record(cache: Path) -> dict[str, Any]:
    """The cached inputs (simulated reads, aligned BAMs) and the real data sets, with sizes."""
    files = []
    if cache.is_dir():
        for p in sorted(cache.rglob("*")):
            if p.is_file() and p.suffix in (".gz", ".bam", ".sam", ".cram", ".fa", ".fq", ".fastq", ".mmi") \
                    and len(p.relative_to(cache).parts) <= 3:
                files.append({"path": str(p.relative_to(cache)), "bytes": p.stat().st_size})
    data = os.environ.get("PERSONA_TEST_DATA") or str(repo_root().parent / "shared" / "data")
    real = []
    if Path(data).is_dir():
        for p in sorted(Path(data).rglob("*")):
            if p.is_file() and p.suffix in (".gz", ".bam") and len(p.relative_to(data).parts) <= 2:
                real.append({"path": str(p.relative_to(data)), "bytes": p.stat().st_size})
    return {"cache": str(cache), "cached": files[:60], "real_data": data, "real": real}


def _previous(path: Path, quick: bool) -> dict[str, Any] | None:
    """An earlier results.json in the output folder, when it is a run of the same kind."""
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(prev, dict) or not isinstance(prev.get("benchmarks"), dict) or prev.get("quick") != quick:
        return None
    return prev


def write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_suite(out: Path, *, quick: bool = False, only: list[str] | None = None, reps: int = 1,
              cache: Path | None = None, bench_dir: Path | None = None, timeout: float | None = None,
              install: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Run the suite into ``out`` (results.json and logs/); returns the results."""
    say: Progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    bench_dir = bench_dir or repo_root() / "bench"
    if not bench_dir.is_dir():
        raise FileNotFoundError(f"no benchmark folder at {bench_dir} (pass --bench-dir: the bench/ of a checkout)")
    cache = cache or Path(os.environ.get("PERSONA_CACHE_DIR", Path.home() / ".cache" / "persona")) / "bench"
    timeout = timeout or (900.0 if quick else 7200.0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    scripts = discover(bench_dir)
    names = list(EXPECTED) + [n for n in scripts if n not in EXPECTED]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"--only: no benchmark named {', '.join(unknown)} "
                             f"(known: {', '.join(names)})")
        names = [n for n in names if n in only]
    root = bench_dir.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    env["PERSONA_BENCH_CACHE"] = str(cache)  # bench/_common.py keeps its simulated inputs there
    say(f"persona bench: {len(names)} benchmarks, {'quick' if quick else 'full'}, {reps} repetition(s); "
        f"results in {out}, inputs cached in {cache}")
    mach = environment.machine()
    results: dict[str, Any] = {
        "schema": SCHEMA, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "reps": reps, "timeout_s": timeout, "bench_dir": str(bench_dir),
        "machine": mach, "git": environment.git_state(root),
        "tools": environment.find_tools(install, say), "benchmarks": {},
    }
    previous = _previous(out / "results.json", quick) if only else None
    if previous is not None:
        # --only refreshes those benchmarks in an earlier run's results, keeping the others (each entry
        # records the commit and time it was measured at)
        kept = {k: v for k, v in previous["benchmarks"].items() if v.get("name") not in names}
        results["benchmarks"] = kept
        results["updated_from"] = {"started": previous.get("started"), "git": previous.get("git"),
                                   "kept": sorted(kept)}
        say(f"keeping {len(kept)} earlier results of {out / 'results.json'}; re-running {', '.join(names)}")
    missing = [k for k, v in results["tools"].items() if "missing" in v]
    if missing:
        say(f"reference tools not available: {', '.join(missing)} (the benchmarks needing them say so)")
    cores = mach.get("cpus_usable") or 1
    common = bench_dir / "_common.py"
    if not quick and common.exists():
        # the simulated reads several full benchmarks share: made once here (minutes), then cached
        say(f"making the simulated inputs (once; cached in {cache}) ...")
        results["inputs_step"] = run_once([sys.executable, str(common)], root, env, out / "logs" / "inputs",
                                          timeout, say, "inputs")
        if results["inputs_step"]["returncode"] == 0:  # it prints the paths, not a JSON object
            results["inputs_step"]["status"] = "ok"
        say(f"    inputs: {results['inputs_step']['status']} in {results['inputs_step']['wall_s']:.0f} s")
    for i, name in enumerate(names, 1):
        script = scripts.get(name)
        if script is None:
            results["benchmarks"][name] = {"name": name, "variant": "", "status": "missing",
                                           "error": f"bench/bench_{name}.py is not in {bench_dir} yet"}
            say(f"[{i}/{len(names)}] {name}: not present")
            continue
        for v in plan(name, script_help(script, env, min(60.0, timeout)), quick, cores):
            key = v.key(name)
            entry: dict[str, Any] = {"name": name, "variant": v.label, "params": v.params,
                                     "script": str(script.relative_to(root)), "args": list(v.args), "reps": [],
                                     "commit": results["git"].get("commit"),
                                     "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            results["benchmarks"][key] = entry
            for r in range(reps):
                say(f"[{i}/{len(names)}] {key} rep {r + 1}/{reps}: {script.name} {' '.join(v.args)}")
                log = out / "logs" / f"{key.replace('[', '.').replace(']', '')}.rep{r + 1}"
                rep = run_once([sys.executable, str(script), *v.args], root, env, log, timeout, say, key)
                entry["reps"].append(rep)
                say(f"    {key} rep {r + 1}: {rep['status']} in {rep['wall_s']:.0f} s")
            entry["status"] = entry_status(entry["reps"])
            write_json(out / "results.json", results)
    results["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["inputs"] = inputs_record(cache)
    write_json(out / "results.json", results)
    return results
