"""Metric samples from :meth:`Pipeline.stats` (names ``persona_ptf_*``, labels from ids).

The service's Prometheus exporter reads these at scrape time; this module
only flattens the snapshot so the runtime stays free of exporter libraries.
"""
from __future__ import annotations

from typing import Any

Sample = tuple[str, dict[str, str], float]


def metric_samples(stats: dict[str, Any]) -> list[Sample]:
    """Flatten a stats snapshot into ``(metric name, labels, value)`` samples."""
    pipe = str(stats["pipeline"])
    out: list[Sample] = []
    for g in stats["gates"]:
        lab = {"pipeline": pipe, "gate": str(g["id"])}
        out.append(("persona_ptf_gate_depth", lab, float(g["depth"])))
        out.append(("persona_ptf_gate_open_batches", lab, float(g["open_batches"])))
        out.append(("persona_ptf_gate_feeds_enqueued_total", lab, float(g["enqueued"])))
        out.append(("persona_ptf_gate_feeds_discarded_total", lab, float(g["discarded"])))
        if g["capacity"] is not None:
            out.append(("persona_ptf_gate_capacity", lab, float(g["capacity"])))
        if g["credits_available"] is not None:
            out.append(("persona_ptf_gate_credits_available", lab, float(g["credits_available"])))
    for s in stats["stages"]:
        lab = {"pipeline": pipe, "stage": str(s["id"])}
        out.append(("persona_ptf_stage_busy_seconds_total", lab, float(s["busy_seconds"])))
        out.append(("persona_ptf_stage_feeds_total", lab, float(s["feeds"])))
        out.append(("persona_ptf_stage_errors_total", lab, float(s["errors"])))
        out.append(("persona_ptf_stage_replicas", lab, float(s["replicas"])))
    for lp in stats["local_pipelines"]:
        lab = {"pipeline": pipe, "local_pipeline": str(lp["id"])}
        out.append(("persona_ptf_local_credits_available", lab, float(lp["credits_available"])))
        out.append(("persona_ptf_local_partitions_total", lab, float(lp["partitions"])))
    lab = {"pipeline": pipe}
    out.append(("persona_ptf_batches_running", lab, float(len(stats["batches"]))))
    out.append(("persona_ptf_batches_done_total", lab, float(stats["batches_done"])))
    out.append(("persona_ptf_batches_failed_total", lab, float(stats["batches_failed"])))
    quiescing = stats.get("batches_quiescing", {})  # failed, stage calls still running
    out.append(("persona_ptf_batches_quiescing", lab, float(len(quiescing))))
    if "state_entries" in stats:  # per-batch bookkeeping held: flat in a healthy service
        out.append(("persona_ptf_state_entries", lab, float(stats["state_entries"])))
    return out
