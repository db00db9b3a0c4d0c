"""Reading ``results.json``: the successful repetitions of a benchmark, a number at a path
across them (median and spread), and searches that tolerate benchmarks which add, rename or
lack keys. Every figure of the report goes through here, so a benchmark that is missing,
failed, or prints an older shape of JSON shows up as "not measured", never as an error.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    """The median of a figure over the repetitions that measured it, and their range."""

    median: float
    lo: float
    hi: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        m = _num(self.median, digits)
        if self.n > 1 and self.hi > self.lo:
            return f"{m} [{_num(self.lo, digits)}–{_num(self.hi, digits)}]"
        return m


def _num(x: float, digits: int) -> str:
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def stat(values: list[float]) -> Stat | None:
    vals = [float(v) for v in values if is_number(v)]
    if not vals:
        return None
    return Stat(statistics.median(vals), min(vals), max(vals), len(vals))


def entries(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The benchmark entries (all variants) of one script."""
    return [e for e in results.get("benchmarks", {}).values() if e.get("name") == name]


def runs(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON objects of the entry's successful repetitions."""
    return [r["json"] for r in entry.get("reps", []) if r.get("status") == "ok" and isinstance(r.get("json"), dict)]


def get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        if isinstance(obj, dict):
            if p in obj:
                obj = obj[p]
            elif str(p) in obj:
                obj = obj[str(p)]
            else:
                return None
        elif isinstance(obj, list) and isinstance(p, int) and 0 <= p < len(obj):
            obj = obj[p]
        else:
            return None
    return obj


def at(entry: dict[str, Any], *path: Any) -> Stat | None:
    """The figure at ``path`` across the entry's successful repetitions."""
    return stat([get(j, path) for j in runs(entry)])


def first(entry: dict[str, Any]) -> dict[str, Any]:
    """The JSON of the first successful repetition ({} when none): for shapes, not figures."""
    rs = runs(entry)
    return rs[0] if rs else {}


def walk(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) in a JSON object, depth first."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, path + (str(k),))


def numeric_leaves(obj: Any, keep: Callable[[tuple[str, ...]], bool]) -> list[tuple[str, ...]]:
    return [p for p, v in walk(obj) if p and is_number(v) and keep(p)]


def ratio_paths(obj: dict[str, Any]) -> list[tuple[str, ...]]:
    """Paths of the ratios a benchmark prints (``ratio*``, ``*_over_*``, ``*speedup*``, ``vs_*``)."""
    def is_ratio(k: str) -> bool:
        k = k.lower()
        return (k.startswith("ratio") or "_over_" in k or "_vs_" in k or "speedup" in k or k.startswith("vs_")
                or k.startswith("agree")) and not k.startswith("goal")

    # the leaf itself (``ratio_vs_binary``) or a dict of them (``ratio_local_over_store: {ceph: ..}``)
    return numeric_leaves(obj, lambda p: is_ratio(p[-1]) or (len(p) > 1 and is_ratio(p[-2])))


def lower_is_better(path: str | tuple[str, ...]) -> bool:
    """Size and memory ratios (``vs_bam``: AGD bytes over BAM bytes; ``ratio_memory``) are better
    below their goal; the time ratios (theirs over ours) above it."""
    key = (path.split(".") if isinstance(path, str) else list(path))[-1]
    return key.startswith(("vs_", "max_vs")) or "memory" in key  # ratio_memory: our RSS over theirs


def goal_met(path: str | tuple[str, ...], value: float, goal: float) -> bool:
    return value <= goal if lower_is_better(path) else value >= goal


def goal_for(obj: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The goal a benchmark states for a ratio: ``goal_<key>`` or ``goal_<key without ratio_>``,
    next to it or at the top level."""
    key = path[-1]
    names = {f"goal_{key}", f"goal_{key.removeprefix('ratio_')}", f"goal_{key.removeprefix('min_')}",
             f"goal_{key.removeprefix('max_')}"}
    if key in ("ratio", "min_ratio"):
        names.add("goal_ratio")
    for scope in (get(obj, path[:-1]), obj):
        if isinstance(scope, dict):
            for n in names:
                if is_number(scope.get(n)):
                    return float(scope[n])
    return None
