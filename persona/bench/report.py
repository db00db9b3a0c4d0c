"""Render ``results.json`` as ``report.md``, ``report.html`` (self-contained: the PNGs are
embedded as base64, no script, no network) and one PNG per figure.

Rendering is a pure function of the results: ``persona bench --render results.json`` redraws a
report without running anything, and the tests render a small recorded result set.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from persona.bench import data, plots, thesis

HOW_TO_READ = """\
Every number is measured on this machine in this run, ours and the reference tool side by side on the
same input and threads; a **ratio** is the reference's time (or size) over ours unless its name says
otherwise, so above 1 means persona is ahead (for size, `vs_*` is AGD/other: below 1 is smaller). A
figure shows the **median** over the suite's repetitions, and its error bar or `[lo–hi]` the range;
each benchmark takes its own medians inside a repetition too. On a shared or small machine, absolute
rates move with the load; the ratios move much less. A benchmark that is not in `bench/` yet, failed,
or timed out is listed with the tail of its standard error; its figures say "not drawn" and why."""


def _figures(results: dict[str, Any], out: Path) -> list[tuple[plots.Figure, Path | None, str]]:
    """Draw every figure into ``out``; (figure, PNG path or None, reason when None)."""
    plt = plots._plt()
    drawn = []
    for f in plots.FIGURES:
        try:
            fig = f.draw(results)
        except Exception as exc:  # a benchmark printed a shape we did not expect: say so, draw the rest
            fig = f"could not draw: {type(exc).__name__}: {exc}"
        png = out / f"fig_{f.id}.png"
        if isinstance(fig, str):
            png.unlink(missing_ok=True)
            drawn.append((f, None, fig))
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        png.write_bytes(buf.getvalue())
        drawn.append((f, png, ""))
    return drawn


def _status_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, e in results.get("benchmarks", {}).items():
        reps = e.get("reps", [])
        ok = sum(r.get("status") == "ok" for r in reps)
        wall = data.stat([r.get("wall_s") for r in reps])
        rows.append([key, e.get("status", "not-run"), f"{ok}/{len(reps)}" if reps else "-",
                     f"{wall.median:.0f}" if wall else "-", " ".join(e.get("args", [])) or "-",
                     f"{(e.get('commit') or '-')[:10]} {e.get('at', '')}".strip()])
    return rows


def _ratio_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, path, st, goal in plots.ratio_rows(results):
        met = "-" if goal is None else ("yes" if data.goal_met(path, st.median, goal) else "no")
        rows.append([key, path, st.fmt(), f"{goal:g}" if goal is not None else "-", met])
    return rows


def _problems(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for key, e in results.get("benchmarks", {}).items():
        if e.get("status") == "ok":
            continue
        tail = next((r.get("stderr_tail", "") for r in e.get("reps", []) if r.get("status") != "ok"), "")
        out.append((key, e.get("status", "not-run"), (e.get("error") or "") + ("\n" if e.get("error") else "")
                    + tail.strip()[-2000:]))
    return out


def _machine_lines(results: dict[str, Any]) -> list[str]:
    m, g = results.get("machine", {}), results.get("git", {})
    return [
        f"machine: {m.get('cpu_model', '?')}, {m.get('cpus_usable', '?')} of {m.get('cpus', '?')} cores usable, "
        f"{m.get('memory_gib', '?')} GiB, {m.get('os', '?')}, kernel {m.get('kernel', '?')}, Python {m.get('python', '?')}",
        f"load average: {m.get('loadavg_start', '?')} at start, {m.get('loadavg_end', '?')} at the end",
        f"commit: {g.get('commit', '?')}{' (with uncommitted changes)' if g.get('dirty') else ''}"
        f"{' — ' + g['subject'] if g.get('subject') else ''}",
        f"run: {results.get('started', '?')} to {results.get('finished', '(unfinished)')}, "
        f"{'quick' if results.get('quick') else 'full'}, {results.get('reps', '?')} repetition(s) per benchmark",
    ] + ([f"kept from the run of {results['updated_from'].get('started')}: "
          f"{', '.join(results['updated_from'].get('kept', []))} (see 'measured at')"]
         if results.get("updated_from") else [])


def _tool_rows(results: dict[str, Any]) -> list[list[str]]:
    return [[n, t.get("version") or t.get("missing", "?"), t.get("path", "-"), t.get("purpose", "")]
            for n, t in results.get("tools", {}).items()]


def _input_rows(results: dict[str, Any]) -> list[list[str]]:
    inp = results.get("inputs", {})
    rows = [[f"cache: {f['path']}", f"{f['bytes'] / 1e6:.1f} MB"] for f in inp.get("cached", [])]
    rows += [[f"real: {f['path']}", f"{f['bytes'] / 1e6:.1f} MB"] for f in inp.get("real", [])]
    return rows


# -- markdown ------------------------------------------------------------------------------------------
def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_md(results: dict[str, Any], figs: list[tuple[plots.Figure, Path | None, str]]) -> str:
    parts = ["# Persona benchmark report", "", *[f"- {ln}" for ln in _machine_lines(results)], "",
             "## How to read it", "", HOW_TO_READ, "",
             "## Benchmarks", "", _md_table(["benchmark", "status", "reps ok", "median wall s", "arguments", "measured at"],
                                             _status_rows(results)), "",
             "## Against the thesis", "",
             _md_table(["claim", "thesis", "ours (median [range])", "comparable", "why"],
                       [[r.claim, r.thesis, r.ours, r.comparable, r.why] for r in thesis.rows(results)]), "",
             "## Figures", ""]
    for f, png, why in figs:
        parts += [f"### {f.title}", "", f.caption, ""]
        parts += [f"![{f.title}]({png.name})" if png else f"*Not drawn: {why}.*", ""]
    parts += ["## Every ratio", "", _md_table(["benchmark", "ratio", "median [range]", "goal", "goal met"],
                                              _ratio_rows(results)), ""]
    probs = _problems(results)
    if probs:
        parts += ["## Missing or failed benchmarks", ""]
        for key, st, tail in probs:
            parts += [f"### {key}: {st}", "", "```", tail or "(no output)", "```", ""]
    parts += ["## Reference tools", "", _md_table(["tool", "version", "path", "used for"], _tool_rows(results)), ""]
    inputs = _input_rows(results)
    if inputs:
        parts += ["## Inputs", "", _md_table(["file", "size"], inputs), ""]
    return "\n".join(parts)


# -- HTML ----------------------------------------------------------------------------------------------
CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}
figure{margin:1em 0 2em}figcaption{color:#555;margin:.3em 0}.missing{color:#a33;font-style:italic}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12px;max-height:24em}
.ok{color:#176}.bad{color:#a33}"""


def _h_table(headers: list[str], rows: list[list[str]], status_col: int | None = None) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"]
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            cls = ""
            if i == status_col:
                cls = ' class="ok"' if c in ("ok", "yes") else ' class="bad"'
            cells.append(f"<td{cls}>{e(str(c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _inline(text: str) -> str:
    """The markdown of HOW_TO_READ (bold, code) as HTML."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def render_html(results: dict[str, Any], figs: list[tuple[plots.Figure, Path | None, str]]) -> str:
    e = html.escape
    body = ["<h1>Persona benchmark report</h1><ul>"]
    body += [f"<li>{e(ln)}</li>" for ln in _machine_lines(results)]
    body += ["</ul><h2>How to read it</h2>"]
    body += [f"<p>{_inline(e(p))}</p>" for p in HOW_TO_READ.split("\n\n")]
    body += ["<h2>Benchmarks</h2>",
             _h_table(["benchmark", "status", "reps ok", "median wall s", "arguments", "measured at"], _status_rows(results), 1),
             "<h2>Against the thesis</h2>",
             _h_table(["claim", "thesis", "ours (median [range])", "comparable", "why"],
                      [[r.claim, r.thesis, r.ours, r.comparable, r.why] for r in thesis.rows(results)]),
             "<h2>Figures</h2>"]
    for f, png, why in figs:
        body.append(f'<figure id="{e(f.id)}"><h3>{e(f.title)}</h3><figcaption>{e(f.caption)}</figcaption>')
        if png:
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            body.append(f'<img class="plot" alt="{e(f.title)}" src="data:image/png;base64,{b64}">')
        else:
            body.append(f'<p class="missing">Not drawn: {e(why)}.</p>')
        body.append("</figure>")
    body += ["<h2>Every ratio</h2>",
             _h_table(["benchmark", "ratio", "median [range]", "goal", "goal met"], _ratio_rows(results), 4)]
    probs = _problems(results)
    if probs:
        body.append("<h2>Missing or failed benchmarks</h2>")
        for key, st, tail in probs:
            body.append(f'<h3 class="bad">{e(key)}: {e(st)}</h3><pre>{e(tail or "(no output)")}</pre>')
    body += ["<h2>Reference tools</h2>", _h_table(["tool", "version", "path", "used for"], _tool_rows(results))]
    inputs = _input_rows(results)
    if inputs:
        body += ["<h2>Inputs</h2>", _h_table(["file", "size"], inputs)]
    body.append("<h2>Raw results</h2>")
    for key, ent in results.get("benchmarks", {}).items():
        j = data.first(ent)
        if j:
            body.append(f"<details><summary>{e(key)}</summary><pre>{e(json.dumps(j, indent=1))}</pre></details>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Persona benchmark report"
            f"</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def render(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the PNGs, report.md and report.html into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    figs = _figures(results, out)
    md, page = out / "report.md", out / "report.html"
    for path, text in ((md, render_md(results, figs)), (page, render_html(results, figs))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return {"md": md, "html": page, **{f.id: png for f, png, _ in figs if png}}


def load(path: Path) -> dict[str, Any]:
    """A results.json, checked enough to render (a clear error names the file)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable results.json: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("benchmarks"), dict):
        raise ValueError(f"{path}: not a persona bench results file (no 'benchmarks' object)")
    return obj
