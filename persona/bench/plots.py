"""The report's figures, drawn with matplotlib from ``results.json``.

Each figure function takes the results and returns a matplotlib Figure, or a string saying
why it cannot be drawn (benchmark missing, failed, or its JSON lacks the figures). Error
bars are the range over the suite's repetitions; the point or bar is their median.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from persona.bench import data
from persona.bench.data import Stat

OURS, THEIRS, OTHER = "#1f77b4", "#8c8c8c", "#ff7f0e"

Result = Any  # a matplotlib Figure, or a str giving the reason there is none


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the benchmark report draws its plots with matplotlib: "
                          "pip install 'persona-genomics[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _why(results: dict[str, Any], name: str, what: str = "") -> str:
    es = data.entries(results, name)
    if not es:
        return f"bench_{name}.py was not run"
    e = es[0]
    st = e.get("status", "not-run")
    if st == "missing":
        return f"bench_{name}.py is not in bench/ yet"
    if st != "ok" and not any(data.runs(x) for x in es):
        return f"bench_{name}.py {st}"
    return f"bench_{name}.py does not report {what}" if what else f"bench_{name}.py gave nothing to plot"


def _is_ours(label: str) -> bool:
    low = label.lower()
    return "persona" in low or low.startswith(("ours", "agd"))


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _err(stats: list[Stat]) -> list[list[float]]:
    return [[s.median - s.lo for s in stats], [s.hi - s.median for s in stats]]


def _bars(ax: Any, labels: list[str], stats: list[Stat], unit: str, title: str) -> None:
    colors = [OURS if _is_ours(lb) else THEIRS for lb in labels]
    y = list(range(len(labels)))
    ax.barh(y, [s.median for s in stats], xerr=_err(stats), color=colors, capsize=3)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    for yi, s in zip(y, stats):
        ax.annotate(f" {_fmt(s.median)}", (s.hi, yi), va="center", fontsize=7)
    ax.margins(x=0.18)


def _dicts(obj: Any) -> dict[str, dict[str, Any]]:
    """The dict-valued members of a JSON object ({} for anything else): per-set figures."""
    return {k: v for k, v in obj.items() if isinstance(v, dict)} if isinstance(obj, dict) else {}


def _contenders(j: dict[str, Any], suffix: str, exclude: tuple[str, ...] = ()) -> list[str]:
    return [k for k, v in j.items() if k.endswith(suffix) and data.is_number(v)
            and not k.startswith(("ratio", "goal")) and not any(x in k for x in exclude)]


# -- align ----------------------------------------------------------------------------------------
def align_threads(results: dict[str, Any]) -> Result:
    es = [e for e in data.entries(results, "align") if data.runs(e)]
    if not es:
        return _why(results, "align")

    def aligner_of(e: dict[str, Any]) -> str:
        return str(e.get("params", {}).get("aligner") or data.first(e).get("aligner") or "minimap2")

    # one panel per (aligner, input set): the series of one panel ran on the same reads
    panels: dict[tuple[str, str], dict[str, list[tuple[int, Stat]]]] = {}
    for e in es:
        j = data.first(e)
        t = e.get("params", {}).get("threads") or j.get("threads")
        if not data.is_number(t):
            continue
        for s_name, figs in _dicts(j.get("sets")).items():
            for k in _contenders(figs, "_reads_s"):
                st = data.at(e, "sets", s_name, k)
                if st is None:
                    continue
                label = k.removesuffix("_reads_s").replace("_", " ")
                label = {"kernel": "mappy loop (bare)", "mm2 kernel": "persona's kernel (bare loop)",
                         "binary": "minimap2 binary", "kernel paired": "persona's kernel (bare loop), paired",
                         "snap paired": "snap-aligner paired", "snap single": "snap-aligner single"}.get(label, label)
                panels.setdefault((aligner_of(e), s_name), {}).setdefault(label, []).append((int(t), st))
    if not panels:
        return _why(results, "align", "per-set throughput")
    keys = list(panels)[:6]
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.2 * rows), squeeze=False)
    for ax, (aligner, s_name) in zip(axes.flat, keys):
        for i, (label, pts) in enumerate(sorted(panels[(aligner, s_name)].items())):
            pts.sort()
            xs, sts = [p[0] for p in pts], [p[1] for p in pts]
            ax.errorbar(xs, [x.median for x in sts], yerr=_err(sts), marker="os^vD<>"[i % 7], capsize=3,
                        label=label, linestyle="-" if _is_ours(label) else "--")
        ax.set_xlabel("threads")
        ax.set_ylabel("reads / s")
        ax.set_title(f"{aligner}: {s_name}", fontsize=10)
        ax.set_xticks(sorted({p[0] for pts in panels[(aligner, s_name)].values() for p in pts}))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("align throughput vs threads (solid: persona; dashed: the reference tool or bare loop)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _accuracy_rows(obj: Any) -> list[tuple[str, float, float]]:
    """(label, correct, wrong) fractions wherever a dict has 'correct' and 'wrong' figures
    (preferring those at MAPQ >= 10)."""
    rows = []
    for path, v in data.walk(obj):
        if not isinstance(v, dict):
            continue
        num = {k: x for k, x in v.items() if data.is_number(x)}
        cor = [k for k in num if "correct" in k.lower()]
        wro = [k for k in num if "wrong" in k.lower() or "incorrect" in k.lower()]
        cor = [k for k in cor if "incorrect" not in k.lower()]
        if not cor or not wro:
            continue

        def pick(keys: list[str]) -> str:
            q10 = [k for k in keys if "10" in k]
            frac = [k for k in (q10 or keys) if "frac" in k or "pct" in k or "rate" in k]
            return (frac or q10 or keys)[0]

        c, w = num[pick(cor)], num[pick(wro)]
        total = next((num[k] for k in num if k.lower() in ("reads", "total", "n", "records")), None)
        if c > 1 or w > 1:
            if not total:
                continue
            c, w = c / total, w / total
        rows.append(("/".join(path) or "aligner", c, w))
    return rows


def align_accuracy(results: dict[str, Any]) -> Result:
    es = [e for e in data.entries(results, "align_accuracy") if data.runs(e)]
    if not es:
        return _why(results, "align_accuracy")
    rows = _accuracy_rows(data.first(es[0]))
    if not rows:
        return _why(results, "align_accuracy", "correct/wrong figures")
    # the speed of each aligner on the same reads, where the benchmark reports it
    speed = [(label, st) for label in (r[0] for r in rows)
             if (st := data.at(es[0], *label.split("/"), "reads_s")) is not None]
    plt = _plt()
    panels = 3 if speed else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 0.34 * len(rows) + 1.5), sharey=True,
                             squeeze=False)
    labels = [r[0] for r in rows]
    y = list(range(len(rows)))
    colors = [OURS if _is_ours(lb) else THEIRS for lb in labels]
    correct = [100 * r[1] for r in rows]
    wrong = [100 * r[2] for r in rows]
    ax = axes[0][0]
    ax.barh(y, correct, color=colors)
    ax.set_xlim(max(0.0, min(correct) - 1.0), min(100.0, max(correct) + 0.6))  # the differences are small
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("correct, % of all reads")
    ax.set_title("correct at MAPQ >= 10", fontsize=10)
    for yi, v in zip(y, correct):
        ax.annotate(f" {v:.2f}", (v, yi), va="center", fontsize=6)
    ax = axes[0][1]
    ax.barh(y, wrong, color=["#d62728" if _is_ours(lb) else "#e8a0a0" for lb in labels])
    ax.set_xlabel("wrong, % of all reads")
    ax.set_title("wrong at MAPQ >= 10", fontsize=10)
    ax.set_xlim(0, max(max(wrong) * 1.35, 0.001))
    for yi, v in zip(y, wrong):
        ax.annotate(f" {v:.3f}", (v, yi), va="center", fontsize=6)
    if speed:
        by_label = dict(speed)
        ax = axes[0][2]
        sts = [by_label.get(lb) for lb in labels]
        ax.barh(y, [s.median if s else 0 for s in sts], color=colors,
                xerr=_err([s or Stat(0, 0, 0, 0) for s in sts]), capsize=2)
        ax.set_xlabel("reads / s (index load included)")
        ax.set_title("speed on the same reads", fontsize=10)
        for yi, st in zip(y, sts):
            if st:
                ax.annotate(f" {_fmt(st.median)}", (st.hi, yi), va="center", fontsize=6)
        ax.margins(x=0.2)
    fig.suptitle("aligners on simulated reads of known origin (blue/red: persona)", fontsize=10)
    fig.tight_layout()
    return fig


# -- sort and duplicate marking ----------------------------------------------------------------------
def sort_markdup(results: dict[str, Any]) -> Result:
    panels = []
    for name in ("sort", "markdup", "chain"):
        es = [e for e in data.entries(results, name) if data.runs(e)]
        if not es:
            continue
        j = data.first(es[0])
        for suffix, unit in (("_s", "seconds"), ("_peak_mib", "peak RSS, MiB")):
            keys = _contenders(j, suffix, exclude=("cpu",) if suffix == "_s" else ())
            if suffix == "_s":
                keys = [k for k in keys if not k.endswith("_peak_mib")]
            stats = [(k.removesuffix(suffix).replace("_", " "), data.at(es[0], k)) for k in keys]
            stats = [(lb, s) for lb, s in stats if s is not None]
            if stats:
                panels.append((f"{name}: {unit.split(',')[0]}", unit, stats))
    if not panels:
        return "; ".join(_why(results, n) for n in ("sort", "markdup"))
    plt = _plt()
    cols = 2
    rows = (len(panels) + 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.6 * rows + 0.4), squeeze=False)
    for ax, (title, unit, stats) in zip(axes.flat, panels):
        _bars(ax, [s[0] for s in stats], [s[1] for s in stats], unit, title)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


# -- import and size ---------------------------------------------------------------------------------
def import_rate(results: dict[str, Any]) -> Result:
    es = [e for e in data.entries(results, "import") if data.runs(e)]
    if not es:
        return _why(results, "import")
    sets = _dicts(data.first(es[0]).get("sets"))
    if not sets:
        return _why(results, "import", "per-set rates")
    plt = _plt()
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 2.8), squeeze=False)
    for ax, (s, j) in zip(axes[0], sets.items()):
        keys = _contenders(j, "_mb_s")
        stats = [(k.removesuffix("_mb_s"), data.at(es[0], "sets", s, k)) for k in keys]
        stats = [(("persona import" if lb == "import" else lb), st) for lb, st in stats if st is not None]
        _bars(ax, [x[0] for x in stats], [x[1] for x in stats], "MB of FASTQ / s", f"import rate: {s}")
    fig.tight_layout()
    return fig


def dataset_size(results: dict[str, Any]) -> Result:
    es = [e for e in data.entries(results, "size") if data.runs(e)]
    if not es:
        return _why(results, "size")
    sets = _dicts(data.first(es[0]).get("sets"))
    if not sets:
        return _why(results, "size", "per-set sizes")
    plt = _plt()
    fig, axes = plt.subplots(1, len(sets), figsize=(3.6 * len(sets) + 1, 3.6), squeeze=False)
    palette = ["#1f77b4", "#aec7e8", "#9467bd", "#c5b0d5", "#17becf"]
    for ax, (s, j) in zip(axes[0], sets.items()):
        labels, x = [], 0
        variants = _dicts(j.get("variants"))
        variant = "default" if "default" in variants else next(iter(variants), None)
        if variant is not None:
            cols = [k for k, v in variants[variant].items() if data.is_number(v)
                    and not k.startswith("vs_") and k != "total"]
            bottom = 0.0
            for c, colour in zip(cols, palette * 3):
                st = data.at(es[0], "sets", s, "variants", variant, c)
                if st is None:
                    continue
                ax.bar(x, st.median / 1e6, bottom=bottom, color=colour, label=c if s == next(iter(sets)) else None)
                bottom += st.median / 1e6
            labels.append(f"AGD\n({variant})")
            x += 1
        for k, v in j.items():
            if data.is_number(v) and not k.startswith(("max_", "goal")):
                st = data.at(es[0], "sets", s, k)
                if st is not None:
                    ax.bar(x, st.median / 1e6, color=THEIRS)
                    labels.append(k.replace("_", "\n").replace("fastq\ngz", "FASTQ.gz").replace("bam", "BAM")
                                  .replace("cram", "CRAM"))
                    x += 1
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylabel("MB")
        ax.set_title(f"dataset size: {s}", fontsize=10)
    fig.legend(loc="upper right", fontsize=7, title="AGD columns", title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    return fig


# -- the service --------------------------------------------------------------------------------------
def _concurrency(results: dict[str, Any]) -> tuple[dict[str, Any], dict[int, dict[str, Stat]]] | None:
    es = [e for e in data.entries(results, "service") if data.runs(e)]
    if not es:
        return None
    conc = data.first(es[0]).get("concurrency")
    if not isinstance(conc, dict):
        return None
    out: dict[int, dict[str, Stat]] = {}
    for n, j in conc.items():
        if not isinstance(j, dict) or not str(n).isdigit():
            continue
        figs = {k: data.at(es[0], "concurrency", n, k) for k, v in j.items() if data.is_number(v)}
        out[int(n)] = {k: v for k, v in figs.items() if v is not None}
    return es[0], dict(sorted(out.items()))


def latency_throughput(results: dict[str, Any]) -> Result:
    got = _concurrency(results)
    if not got or not got[1]:
        return _why(results, "service", "concurrency levels")
    _, conc = got
    thr_key = next((k for k in next(iter(conc.values())) if "throughput" in k), None)
    if thr_key is None:
        return _why(results, "service", "throughput per concurrency level")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ns = list(conc)
    xs = [conc[n][thr_key].median for n in ns]
    for q, style in (("p50_s", "o-"), ("p99_s", "s--"), ("mean_s", "^:")):
        if all(q in conc[n] for n in ns):
            sts = [conc[n][q] for n in ns]
            ax.errorbar(xs, [s.median for s in sts], yerr=_err(sts), fmt=style, capsize=3, label=q[:-2] + " latency")
    for n, x in zip(ns, xs):
        y = conc[n].get("p50_s")
        if y is not None:
            ax.annotate(f" {n} concurrent", (x, y.median), fontsize=7)
    ax.set_xlabel(thr_key.replace("_", " ").replace("throughput ", "throughput, "))
    ax.set_ylabel("request latency, s")
    ax.set_title("latency vs throughput, concurrent align requests (cf. thesis Fig. 6.4)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def latency_ccdf(results: dict[str, Any]) -> Result:
    es = [e for e in data.entries(results, "service") if data.runs(e)]
    if not es:
        return _why(results, "service")
    series: dict[str, list[float]] = {}
    for j in data.runs(es[0]):
        for path, v in data.walk(j):
            if path and isinstance(v, list) and v and all(data.is_number(x) for x in v) and \
                    any("latenc" in p for p in path):
                label = " ".join(path).replace("concurrency ", "").replace("latencies_s", "").strip()
                label = f"{label} concurrent" if label.isdigit() else label
                series.setdefault(label, []).extend(float(x) for x in v)
    if not series:
        return _why(results, "service", "per-request latencies")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, xs in sorted(series.items(), key=lambda kv: (len(kv[0]), kv[0])):
        xs = sorted(xs)
        n = len(xs)
        ax.step(xs, [1 - i / n for i in range(n)], where="post", label=f"{label} (n={n})")
    ax.set_yscale("log")
    ax.set_ylim(min(0.5 / max(len(v) for v in series.values()), 0.5), 1.05)
    ax.set_xlabel("request latency, s")
    ax.set_ylabel("P(latency > x)")
    ax.set_title("request latency CCDF (cf. thesis Fig. 6.5)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _find(results: dict[str, Any], word: str) -> list[tuple[dict[str, Any], tuple[str, ...], Any]]:
    hits = []
    for e in results.get("benchmarks", {}).values():
        j = data.first(e)
        for path, v in data.walk(j):
            if path and word in path[-1].lower():
                hits.append((e, path, v))
    return hits


def _scale_points(results: dict[str, Any]) -> tuple[list[tuple[int, Stat]], str] | None:
    """Throughput per worker count: a ``{workers: throughput}`` series, or flat ``scale_out_<n>_s``
    times of the same work (throughput taken as 1 / time, relative to the smallest)."""
    for e, path, v in _find(results, "scale"):
        if isinstance(v, dict):
            pts = _series(e, path, v)
            if len(pts) >= 2:
                return pts, "throughput"
    for e in results.get("benchmarks", {}).values():
        for path, v in data.walk(data.first(e)):
            if not isinstance(v, dict):
                continue
            times = {int(m.group(1)): k for k in v if (m := re.fullmatch(r"scale_?out_(\d+)_s", k))}
            if len(times) < 2:
                continue
            sts = {n: data.at(e, *path, k) for n, k in times.items()}
            if any(st is None for st in sts.values()):
                continue
            n0 = min(sts)
            t0 = sts[n0].median  # type: ignore[union-attr]
            pts = [(n, Stat(t0 / st.median, t0 / st.hi, t0 / st.lo, st.n))  # type: ignore[union-attr]
                   for n, st in sorted(sts.items())]
            return pts, f"throughput relative to {n0} worker(s) (same work)"
    return None


def _series(e: dict[str, Any], path: tuple[str, ...], v: dict[str, Any]) -> list[tuple[int, Stat]]:
    """``{workers: throughput or {..throughput..}}`` as (workers, throughput) points."""
    pts = []
    for n, x in v.items():
        if not str(n).isdigit():
            continue
        st = None
        if data.is_number(x):
            st = data.at(e, *path, n)
        elif isinstance(x, dict):
            k = next((k for k in x if data.is_number(x[k]) and
                      any(w in k for w in ("throughput", "records_s", "reads_s", "bases_s"))), None)
            st = data.at(e, *path, n, k) if k else None
        if st is not None:
            pts.append((int(n), st))
    return sorted(pts)


def scale_out(results: dict[str, Any]) -> Result:
    got = _scale_points(results)
    if got is None:
        return "no benchmark reports a scale-out series yet (bench_service: workers -> throughput)"
    pts, ylabel = got
    base = pts[0][1].median / pts[0][0]
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [p[0] for p in pts]
    a1.errorbar(xs, [p[1].median for p in pts], yerr=_err([p[1] for p in pts]), marker="o", capsize=3,
                label="measured")
    a1.plot(xs, [base * x for x in xs], "k:", label="linear (from the smallest)")
    a1.set_xlabel("workers")
    a1.set_ylabel(ylabel, fontsize=8)
    a1.legend(fontsize=7)
    a1.set_title("scale-out throughput", fontsize=10)
    a2.plot(xs, [p[1].median / (base * p[0]) for p in pts], "o-")
    a2.axhline(1.0, color="k", linestyle=":")
    a2.set_ylim(0, 1.2)
    a2.set_xlabel("workers")
    a2.set_ylabel("efficiency = T(n) / (n T(1))")
    a2.set_title("scale-out efficiency (thesis: linear to 32 servers)", fontsize=9)
    for a in (a1, a2):
        a.set_xticks(xs)
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def recovery(results: dict[str, Any]) -> Result:
    stats = []
    for e, path, v in _find(results, "recover"):
        cands = [(path, v)] if data.is_number(v) else \
            [(path + (k,), x) for k, x in v.items() if data.is_number(x)] if isinstance(v, dict) else []
        for p, _ in cands:
            if p[-1].endswith("_s") or p[-1].endswith("seconds"):
                st = data.at(e, *p)
                if st is not None:
                    stats.append((" ".join(p), st))
    if not stats:
        return "no benchmark reports a recovery time yet (bench_service: a worker killed mid-request)"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(stats) + 1.4))
    _bars(ax, [s[0] for s in stats], [s[1] for s in stats], "seconds", "recovery after a worker is killed")
    fig.tight_layout()
    return fig


def store_rates(results: dict[str, Any]) -> Result:
    es = [e for e in data.entries(results, "store") if data.runs(e)]
    if not es:
        return _why(results, "store")
    j = data.first(es[0])
    top = "chunks" if isinstance(j.get("chunks"), dict) else "results"  # the key changed once: read both
    res = _dicts(j.get(top))
    rows = []
    for backend, r in res.items():
        cases = r.get("cases")
        for i, case in enumerate(cases if isinstance(cases, list) else []):
            if not isinstance(case, dict):
                continue
            for op in ("put", "get"):
                st = data.at(es[0], top, backend, "cases", i, f"{op}_MBps")
                if st is not None:
                    rows.append((f"{backend} {op} {case.get('size_mib')} MiB x{case.get('inflight')}", st))
    if not rows:
        return _why(results, "store", "any measured backend")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    _bars(ax, [r[0] for r in rows], [r[1] for r in rows], "MB/s", "chunk store put/get throughput")
    fig.tight_layout()
    return fig


# -- every ratio at a glance --------------------------------------------------------------------------
def ratios(results: dict[str, Any]) -> Result:
    rows = ratio_rows(results, headline=True)
    if not rows:
        return "no benchmark produced a ratio"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.24 * len(rows) + 1.3))
    for y, (_, path, st, goal) in enumerate(rows):
        met = data.goal_met(path, st.median, 1.0 if goal is None else goal)
        ax.errorbar([st.median], [y], xerr=[[st.median - st.lo], [st.hi - st.median]], fmt="o", capsize=2,
                    color=OURS if met else OTHER)
        if goal is not None:
            ax.plot([goal], [y], marker="|", color="k", markersize=11, markeredgewidth=2)
    ax.axvline(1.0, color="k", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    lo = min(min(r[2].lo for r in rows), min((r[3] for r in rows if r[3]), default=1.0), 1.0)
    hi = max(max(r[2].hi for r in rows), 1.0)
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)
             if lo / 2.5 <= t <= hi * 2.5]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_yticks(range(len(rows)), [f"{r[0]}: {r[1].removeprefix('sets.')}" for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("ratio, log scale (|: the benchmark's goal; orange: short of it, or of 1 where none)")
    ax.set_title("every headline ratio measured side by side", fontsize=10)
    ax.grid(alpha=0.3, axis="x", which="both")
    fig.tight_layout()
    return fig


def ratio_rows(results: dict[str, Any], headline: bool = False) -> list[tuple[str, str, Stat, float | None]]:
    """(benchmark, ratio path, median/spread, goal) for every ratio in every benchmark; ``headline``
    leaves out the non-default variants (bench_size's other compression levels)."""
    rows = []
    for key, e in results.get("benchmarks", {}).items():
        j = data.first(e)
        for path in data.ratio_paths(j):
            other_variant = "variants" in path and path[path.index("variants") + 1:][:1] != ("default",)
            if headline and other_variant:
                continue
            st = data.at(e, *path)
            if st is not None:
                # a stated goal holds for the default setting, not for the other variants measured beside it
                rows.append((key, ".".join(path), st, None if other_variant else data.goal_for(j, path)))
    return rows


@dataclass(frozen=True)
class Figure:
    id: str
    title: str
    caption: str
    draw: Callable[[dict[str, Any]], Result]


FIGURES: tuple[Figure, ...] = (
    Figure("ratios", "All ratios", "Every ratio the benchmarks print, median over repetitions (range as error bar); "
           "above 1 means persona is ahead, except for size ratios (AGD/other: below 1 is smaller).", ratios),
    Figure("align_threads", "Alignment throughput vs threads",
           "Reads per second against threads, persona and the reference aligners on the same reads and index.",
           align_threads),
    Figure("align_accuracy", "Alignment accuracy",
           "Correct and wrong placements (MAPQ >= 10) on simulated reads with known origin, per aligner.",
           align_accuracy),
    Figure("sort_markdup", "Sort and duplicate marking",
           "Wall time and peak memory (RSS) of each contender on the same records and threads.", sort_markdup),
    Figure("import_rate", "Import rate", "MB of uncompressed FASTQ per second: persona import against "
           "decompression alone (zcat; pigz where measured).", import_rate),
    Figure("dataset_size", "Dataset size", "AGD per column (stacked) against the FASTQ.gz inputs and BAM/CRAM "
           "of the same reads.", dataset_size),
    Figure("latency_throughput", "Latency vs throughput", "Concurrent align requests to one `persona serve`: "
           "throughput against request latency (p50, p99), one point per concurrency level.", latency_throughput),
    Figure("latency_ccdf", "Request latency CCDF", "Fraction of requests slower than x, per concurrency level.",
           latency_ccdf),
    Figure("scale_out", "Scale-out efficiency", "Throughput against workers and efficiency relative to linear.",
           scale_out),
    Figure("recovery", "Recovery time", "Time to finish a request after a worker is killed under it.", recovery),
    Figure("store", "Chunk store throughput", "put/get MB/s per store backend, chunk size and requests in flight.",
           store_rates),
)
