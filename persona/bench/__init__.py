"""``persona bench``: the benchmark scripts of ``bench/`` run as one suite, and a report.

* :mod:`persona.bench.suite` discovers ``bench/bench_*.py``, runs each (quick or full, several
  repetitions, a thread sweep for align) and records every repetition's JSON in ``results.json``;
* :mod:`persona.bench.environment` records the machine, the commit and the reference tools
  (installing missing ones from Debian);
* :mod:`persona.bench.report` renders ``report.md``, a self-contained ``report.html`` and PNG
  figures (:mod:`persona.bench.plots`), with our ratios next to the thesis'
  (:mod:`persona.bench.thesis`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def run(out: Path, *, render_only: Path | None = None, **suite_args: Any) -> dict[str, Path]:
    """Run the suite into ``out`` (or only re-render ``render_only``) and render the report there."""
    from persona.bench import report, suite

    results = report.load(render_only) if render_only else suite.run_suite(out, **suite_args)
    if render_only and render_only.resolve() != (out / "results.json").resolve():
        out.mkdir(parents=True, exist_ok=True)
        suite.write_json(out / "results.json", results)
    return report.render(results, out)
