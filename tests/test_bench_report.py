"""``persona bench``: the suite runner on small real scripts, and the report rendered from a
recorded result set (tests/fixtures/bench/results.json: a real ``persona bench --quick`` run,
trimmed) checked as files and in a real headless browser (Debian's chromium)."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from persona.bench import data, plots, report, suite, thesis
from persona.cli import main as cli_main
from conftest import require_tool

pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (pip install '.[bench]')")

FIXTURE = Path(__file__).parent / "fixtures" / "bench" / "results.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def recorded() -> dict[str, Any]:
    return report.load(FIXTURE)


def _with_extras(results: dict[str, Any]) -> dict[str, Any]:
    """The recorded set plus benchmarks in the shapes the report also reads (accuracy per
    aligner, a scale-out series, a recovery time), for the figures no recorded run has yet."""
    r = copy.deepcopy(results)
    acc = {"wgsim.persona minimap2": {"reads": 40000, "mapped": 0.99, "correct": 0.98, "correct_q10": 0.975,
                                      "wrong_q10": 0.0006, "wrong_among_q10": 0.0007, "reads_s": 52000},
           "wgsim.bwa mem": {"reads": 40000, "mapped": 0.99, "correct": 0.979, "correct_q10": 0.97,
                             "wrong_q10": 0.001, "wrong_among_q10": 0.0011, "reads_s": 21000},
           "minibwa_vs_bwa_speed": {"wgsim": 1.2},
           "counts": {"persona": {"reads": 20000, "correct_mapq10": 19500, "wrong_mapq10": 12}}}
    r["benchmarks"]["align_accuracy[synthetic]"] = {"name": "align_accuracy", "variant": "synthetic",
                                                    "status": "ok",
                                                    "reps": [{"status": "ok", "wall_s": 3.0, "json": acc}]}
    conc = {str(n): {"throughput_records_s": 9000.0 * (1 - 0.02 * n), "p50_s": 1.1 * n, "p99_s": 1.3 * n,
                     "latencies_s": [1.0 * n + 0.1 * k for k in range(n)]} for n in (1, 2, 4)}
    r["benchmarks"]["service[shape]"] = {
        "name": "service", "variant": "shape", "status": "ok",
        "reps": [{"status": "ok", "wall_s": 9.0, "json": {"concurrency": conc, "throughput_4_over_1": 0.94,
                                                            "cluster": {"scale_out_1_s": 10.0, "scale_out_2_s": 5.4,
                                                                        "scale_out_efficiency": 0.93}}}]}
    svc = {"scale_out": {"1": {"throughput_records_s": 1000.0}, "2": {"throughput_records_s": 1900.0},
                         "4": {"throughput_records_s": 3500.0}},
           "recovery": {"kill_worker_s": 4.2}}
    r["benchmarks"]["cluster"] = {"name": "cluster", "variant": "", "status": "ok",
                                  "reps": [{"status": "ok", "wall_s": 5.0, "json": svc},
                                           {"status": "ok", "wall_s": 5.0,
                                            "json": {**svc, "recovery": {"kill_worker_s": 5.0}}}]}
    return r


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Path]]:
    """The recorded set (plus the extra shapes) rendered once for the tests that only read it."""
    results = _with_extras(report.load(FIXTURE))
    return results, report.render(results, tmp_path_factory.mktemp("report"))


# -- rendering -------------------------------------------------------------------------------------------
def test_recorded_set_renders_every_measured_figure(rendered: tuple[dict[str, Any], dict[str, Path]]) -> None:
    recorded, paths = rendered
    md, page = paths["md"].read_text(), paths["html"].read_text()
    measured = {e["name"] for e in recorded["benchmarks"].values() if e.get("status") == "ok"}
    expect = {"ratios"} | {f for f, n in (("align_threads", "align"), ("sort_markdup", "sort"),
                                          ("align_accuracy", "align_accuracy"), ("sort_markdup", "chain"),
                                          ("import_rate", "import"), ("dataset_size", "size"),
                                          ("latency_throughput", "service"), ("latency_ccdf", "service"),
                                          ("store", "store")) if n in measured}
    assert expect <= set(paths) - {"md", "html"}
    for fid in expect:
        png = paths[fid].read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000, fid
        assert f"![" in md and f"({paths[fid].name})" in md
    # self-contained: every image inline, nothing fetched from anywhere
    imgs = re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)
    assert len(imgs) == len(paths) - 2 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    # the machine, the commit and the tools are recorded
    assert recorded["machine"]["cpu_model"] in md and recorded["git"]["commit"] in md
    assert "samtools" in md and "## Against the thesis" in md
    # a median of the recorded JSON appears, as printed by the benchmark
    align = next(e for e in recorded["benchmarks"].values() if e["name"] == "sort" and data.runs(e))
    assert f"{data.at(align, 'ratio_vs_samtools_bam').median:.3g}" in md


def test_missing_and_failed_benchmarks_are_shown_with_their_stderr(recorded: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    r = copy.deepcopy(recorded)
    # two measured benchmarks (fewer figures: quicker) besides a missing one and a failed one
    r["benchmarks"] = {k: v for k, v in r["benchmarks"].items() if v["name"] in ("import", "markdup")}
    r["benchmarks"]["align"] = {"name": "align", "variant": "", "status": "missing",
                                "error": "bench/bench_align.py is not in bench yet"}
    r["benchmarks"]["sort"] = {"name": "sort", "variant": "", "status": "failed", "args": ["--quick"],
                                 "reps": [{"status": "failed", "returncode": 1, "wall_s": 2.0,
                                           "stderr_tail": "Traceback ...\nSystemExit: samtools is not installed"}]}
    paths = report.render(r, tmp_path)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "align_threads" not in paths and not (tmp_path / "fig_align_threads.png").exists()
    assert "*Not drawn: bench_align.py is not in bench/ yet.*" in md
    assert "### sort: failed" in md and "samtools is not installed" in md and "samtools is not installed" in page
    rows = {row.claim: row for row in thesis.rows(r)}
    assert rows["Table 6.2: sort, samtools time / persona time"].comparable == "not measured"
    assert rows["Table 6.1: align, persona vs the standalone aligner"].ours == "not measured"
    assert {"ratios", "import_rate", "sort_markdup"} <= set(paths)  # the rest still drawn


def test_nothing_measured_still_renders(tmp_path: Path) -> None:
    empty = {"schema": 1, "benchmarks": {}, "machine": {}, "git": {}, "tools": {}}
    paths = report.render(empty, tmp_path)
    assert set(paths) == {"md", "html"}
    md = paths["md"].read_text()
    assert md.count("*Not drawn:") == len(plots.FIGURES)
    assert all(r.comparable == "not measured" for r in thesis.rows(empty))


def test_unexpected_shapes_do_not_break_the_report(recorded: dict[str, Any]) -> None:
    r = copy.deepcopy(recorded)
    r["benchmarks"]["size"] = {"name": "size", "variant": "", "status": "ok",
                               "reps": [{"status": "ok", "wall_s": 1.0,
                                         "json": {"bench": "size", "sets": {"x": "not a dict"}}}]}
    r["benchmarks"]["service"] = {"name": "service", "variant": "", "status": "ok",
                                  "reps": [{"status": "ok", "wall_s": 1.0, "json": {"concurrency": [1, 2]}}]}
    assert isinstance(plots.dataset_size(r), str) and isinstance(plots.latency_throughput(r), str)
    assert isinstance(plots.latency_ccdf(r), str)
    md = report.render_md(r, [(f, None, "why") for f in plots.FIGURES])
    assert "### Dataset size" in md and "### Latency vs throughput" in md


def test_figures_for_accuracy_scale_out_and_recovery(rendered: tuple[dict[str, Any], dict[str, Path]]) -> None:
    r, paths = rendered
    assert plots._accuracy_rows(data.first(r["benchmarks"]["align_accuracy[synthetic]"])) == [
        ("wgsim.persona minimap2", 0.975, 0.0006), ("wgsim.bwa mem", 0.97, 0.001),
        ("counts/persona", 0.975, 0.0006)]  # counts are read as fractions of the reads
    for fid in ("align_accuracy", "scale_out", "recovery", "latency_throughput", "latency_ccdf"):
        assert paths[fid].read_bytes().startswith(PNG_MAGIC), fid
    assert plots._scale_points(r)[1] == "throughput"  # the {workers: throughput} series comes first
    only_flat = {**r, "benchmarks": {"s": r["benchmarks"]["service[shape]"]}}
    pts, label = plots._scale_points(only_flat)
    assert [(n, round(st.median, 3)) for n, st in pts] == [(1, 1.0), (2, 1.852)] and "relative" in label
    eff = {row.claim: row for row in thesis.rows(r)}["Figure 6.3: scale-out of align"]
    recorded_eff = data.at(r["benchmarks"]["service"], "cluster", "scale_out_efficiency")
    assert eff.ours.startswith(f"efficiency {recorded_eff.fmt()}") and eff.comparable == "no"
    st = data.at(r["benchmarks"]["cluster"], "recovery", "kill_worker_s")
    assert (st.median, st.lo, st.hi, st.n) == (4.6, 4.2, 5.0, 2)


def test_render_only_through_the_cli(recorded: dict[str, Any], tmp_path: Path) -> None:
    small = dict(recorded, benchmarks={k: v for k, v in recorded["benchmarks"].items() if v["name"] == "import"})
    (tmp_path / "small.json").write_text(json.dumps(small))
    assert cli_main(["bench", "--render", str(tmp_path / "small.json"), "--out", str(tmp_path / "r"), "-q"]) == 0
    assert (tmp_path / "r" / "fig_import_rate.png").exists() and (tmp_path / "r" / "results.json").exists()
    assert "import rate" in (tmp_path / "r" / "report.html").read_text().lower()
    bad = tmp_path / "bad.json"
    bad.write_text('{"no": "benchmarks"}')
    assert cli_main(["bench", "--render", str(bad), "--out", str(tmp_path / "b"), "-q"]) == 1


# -- the suite runner ------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for init to reap it counts as ended)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True


def _script(d: Path, name: str, body: str) -> None:
    (d / f"bench_{name}.py").write_text(textwrap.dedent(body))


def test_suite_runs_each_script_and_records_outcomes(tmp_path: Path) -> None:
    bench = tmp_path / "repo" / "bench"
    bench.mkdir(parents=True)
    _script(bench, "align", """
        import argparse, json, os
        ap = argparse.ArgumentParser(); ap.add_argument("--quick", action="store_true")
        ap.add_argument("--threads", type=int, default=2); a = ap.parse_args()
        print("a table"); print(json.dumps({"threads": a.threads, "quick": a.quick,
              "cache": os.environ["PERSONA_BENCH_CACHE"], "sets": {"s": {"persona_reads_s": 100 * a.threads}}}))
    """)
    _script(bench, "sort", """
        import sys
        print("starting"); print("samtools: not found", file=sys.stderr); sys.exit(3)
    """)
    _script(bench, "size", "print('no json here')\n")
    _script(bench, "leaky", """
        import json, subprocess, sys
        child = subprocess.Popen(["sleep", "300"])  # a server it forgets to stop
        print(json.dumps({"child": child.pid}))
    """)
    _script(bench, "slow", "import argparse, time\nargparse.ArgumentParser().parse_args()\ntime.sleep(60)\n")
    notes: list[str] = []
    out = tmp_path / "out"
    res = suite.run_suite(out, quick=True, reps=2, cache=tmp_path / "cache", bench_dir=bench, timeout=60,
                          install=False, progress=notes.append, only=["align", "sort", "size", "chain"])
    b = res["benchmarks"]
    assert [k for k in b] == ["align[t1]", "align[t2]", "sort", "chain", "size"]
    assert b["align[t2]"]["status"] == "ok" and b["align[t2]"]["args"] == ["--quick", "--threads", "2"]
    assert [r["json"]["sets"]["s"]["persona_reads_s"] for r in b["align[t2]"]["reps"]] == [200, 200]
    assert b["align[t1]"]["reps"][0]["json"]["cache"] == str(tmp_path / "cache")
    assert b["sort"]["status"] == "failed" and "samtools: not found" in b["sort"]["reps"][0]["stderr_tail"]
    assert b["size"]["status"] == "no-json"
    assert b["chain"]["status"] == "missing"
    assert json.loads((out / "results.json").read_text())["benchmarks"].keys() == b.keys()
    again = suite.run_suite(out, quick=True, bench_dir=bench, install=False, progress=notes.append, only=["sort"])
    assert set(again["benchmarks"]) == set(b) and again["updated_from"]["kept"] == ["align[t1]", "align[t2]",
                                                                                   "chain", "size"]
    second = suite.run_suite(tmp_path / "out2", bench_dir=bench, timeout=2, install=False,
                             progress=notes.append, only=["slow", "leaky"])["benchmarks"]
    slow = second["slow"]
    assert slow["status"] == "timeout" and slow["reps"][0]["wall_s"] < 20
    assert "stopped after 2 s" in slow["reps"][0]["stderr_tail"]
    assert second["leaky"]["status"] == "ok"
    assert not _alive(second["leaky"]["reps"][0]["json"]["child"])  # what it left running was stopped
    assert any("align[t2] rep 2/2" in n for n in notes)
    assert {"cpu_model", "cpus", "memory_gib"} <= res["machine"].keys() and "samtools" in res["tools"]
    with pytest.raises(ValueError, match="no benchmark named nope"):
        suite.run_suite(out, bench_dir=bench, install=False, only=["nope"], progress=notes.append)


def test_thread_sweep() -> None:
    assert suite.thread_counts(False, 8) == [1, 2, 4, 8]
    assert suite.thread_counts(False, 6) == [1, 2, 4, 6]
    assert suite.thread_counts(True, 8) == [1, 2]
    assert suite.thread_counts(True, 1) == [1]
    v = suite.plan("align", "usage ... --aligner {minimap2,snap} --threads T --quick", True, 2)
    assert [x.label for x in v] == ["minimap2-t1", "minimap2-t2", "snap-t1", "snap-t2"]
    assert suite.plan("sort", "--quick", False, 2) == [suite.Variant("")]


# -- the HTML in a real browser ----------------------------------------------------------------------------
PROBE = """<script>
window.__errors = [];
addEventListener("error", e => __errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || e)),
                 true);
addEventListener("unhandledrejection", e => __errors.push("unhandled rejection: " + e.reason));
for (const level of ["error", "warn"]) {
  const orig = console[level];
  console[level] = (...a) => { __errors.push(level + ": " + a.join(" ")); orig.apply(console, a); };
}
addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                               h: i.naturalHeight, shown: i.getBoundingClientRect().width}));
  const res = performance.getEntriesByType("resource").map(r => r.name);
  const p = document.createElement("pre");
  p.id = "probe-result";
  p.textContent = JSON.stringify({errors: __errors, imgs: imgs, resources: res});
  document.body.appendChild(p);
});
</script>"""


def test_html_in_headless_chromium(rendered: tuple[dict[str, Any], dict[str, Path]], tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    _, paths = rendered
    page = paths["html"].read_text()
    assert page.count("<script") == 0  # the report itself runs nothing; the probe below is the test's
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--window-size=1280,1024", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"chromium printed no probe result (rc {proc.returncode}): {proc.stderr[-2000:]}"
    got = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                     .replace("&gt;", ">"))
    assert got["errors"] == []
    assert all(r.startswith("data:") for r in got["resources"]), got["resources"]
    figures = len(paths) - 2
    assert figures == len(plots.FIGURES) and len(got["imgs"]) == figures
    for img in got["imgs"]:
        assert img["complete"] and img["w"] > 200 and img["h"] > 100 and img["shown"] > 200, img


def test_discovery_and_the_json_last_line() -> None:
    scripts = suite.discover(suite.repo_root() / "bench")
    assert {"align", "sort", "import", "size"} <= scripts.keys() and "_common" not in scripts
    assert suite.last_json("table\n\n{\"a\": 1}\n\n") == {"a": 1}
    assert suite.last_json("{\"a\": 1}\nnot json") is None
    assert suite.last_json("[1, 2]") is None
