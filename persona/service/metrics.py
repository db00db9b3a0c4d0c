"""Prometheus metrics of one service process (prometheus-client, a registry per :class:`Metrics`).

Requests (the coordinator, ``persona serve``):

* ``persona_requests`` (gauge, read from the request table at scrape time): by kind (the chain,
  ``import+align``) and state;
* ``persona_requests_finished_total`` (counter): requests that reached a final state, by kind and state;
* ``persona_request_duration_seconds`` (histogram): submit to finish of finished requests, by kind;
* ``persona_records_processed_total`` / ``persona_feeds_processed_total`` (counters): by app kind;
* ``persona_steps_running`` (gauge): app steps running on this process's runtime, by kind;
* ``persona_triggered_requests_total`` / ``persona_trigger_errors_total``: ``--watch`` triggers.

The runtime (every process hosting one: read from :meth:`Runtime.stats` at scrape time, names
from :mod:`persona.ptf.introspection`, label ``pipeline`` = the app, ``stage`` / ``gate`` = step ids):
``persona_ptf_gate_depth``, ``persona_ptf_gate_credits_available``,
``persona_ptf_local_credits_available``, ``persona_ptf_stage_busy_seconds_total``,
``persona_ptf_stage_feeds_total`` (feeds processed per app and stage), ``persona_ptf_stage_errors_total``,
``persona_ptf_batches_running`` and friends.

Counted by whoever does the work (functions below, for ``persona serve``, the coordinator and workers):

* ``persona_bases_processed_total`` / ``persona_stage_records_processed_total``: by app and stage
  (:meth:`Metrics.processed`; the apps count the bases they import, align and export in
  :mod:`persona.counters`, brought in at each scrape);
* ``persona_store_bytes_total`` (by scheme and op ``read``/``write``) and ``persona_store_errors_total``
  (by scheme and op): every store of the process counts its own I/O in :mod:`persona.counters`
  (brought in at each scrape); :meth:`Metrics.store_io`, :meth:`Metrics.store_error` for others;
* ``persona_worker_up`` / ``persona_worker_last_heartbeat_timestamp_seconds`` (by worker):
  :meth:`Metrics.worker_heartbeat`, :meth:`Metrics.worker_lost`, :meth:`Metrics.worker_removed`;
* ``persona_partitions_requeued_total`` (by kind and reason, e.g. ``lease_expired``, ``straggler``):
  :meth:`Metrics.partitions_requeued`.

Plus ``persona_service_up`` (1) and ``persona_build_info``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from persona.errors import PersonaError

log = logging.getLogger(__name__)

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)


def _prom() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - the service extra installs it
        raise PersonaError("the service needs prometheus-client: pip install 'persona-genomics[service]'") from exc
    return prometheus_client


class Metrics:
    """The metrics of one process. ``counts``: the request table's ``{(kind, state): n}`` (None in a
    process without one, a worker); ``runtime_stats``: :meth:`Runtime.stats` of the process's
    runtime (None: no runtime)."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]] | None = None, *,
                 runtime_stats: Callable[[], Mapping[str, Any]] | None = None) -> None:
        prom = _prom()

        import persona

        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        # first in the registry: the hooks refresh gauges before they are collected
        self._hooks: list[Callable[[], None]] = []
        r.register(_HookCollector(self._hooks))
        self.finished = prom.Counter("persona_requests_finished", "Requests that reached a final state",
                                     ["kind", "state"], registry=r)
        self.duration = prom.Histogram("persona_request_duration_seconds", "Request duration, submit to finish",
                                       ["kind"], buckets=BUCKETS, registry=r)
        self.records = prom.Counter("persona_records_processed", "Records processed", ["kind"], registry=r)
        self.feeds = prom.Counter("persona_feeds_processed", "Feeds (chunks) processed", ["kind"], registry=r)
        self.steps_running = prom.Gauge("persona_steps_running", "App steps running on this process",
                                        ["kind"], registry=r)
        self.stage_records = prom.Counter("persona_stage_records_processed", "Records processed, by app and stage",
                                          ["app", "stage"], registry=r)
        self.bases = prom.Counter("persona_bases_processed", "Bases processed, by app and stage",
                                  ["app", "stage"], registry=r)
        self.store_bytes = prom.Counter("persona_store_bytes", "Bytes read from and written to stores",
                                        ["scheme", "op"], registry=r)
        self.store_errors = prom.Counter("persona_store_errors", "Store operations that failed (I/O, not missing "
                                         "keys)", ["scheme", "op"], registry=r)
        self.worker_up = prom.Gauge("persona_worker_up", "1 while a worker holds a live lease, 0 once it is lost",
                                    ["worker"], registry=r)
        self.worker_heartbeat_time = prom.Gauge("persona_worker_last_heartbeat_timestamp_seconds",
                                                "Unix time of a worker's last heartbeat", ["worker"], registry=r)
        self.requeued = prom.Counter("persona_partitions_requeued", "Partitions handed to another worker",
                                     ["kind", "reason"], registry=r)
        self.triggered = prom.Counter("persona_triggered_requests", "Requests submitted by --watch triggers",
                                      ["watch", "input"], registry=r)
        self.trigger_errors = prom.Counter("persona_trigger_errors", "Trigger polls or submissions that failed",
                                           ["watch"], registry=r)
        prom.Gauge("persona_service_up", "1 while the service runs", registry=r).set(1)
        prom.Info("persona_build", "Persona version", registry=r).info({"version": persona.__version__})
        if counts is not None:
            r.register(_TableCollector(counts))
        if runtime_stats is not None:
            r.register(_RuntimeCollector(runtime_stats))
        # what the apps and stores counted in this process (persona.counters), since the last scrape
        self._seen: dict[tuple[str, tuple[str, ...]], float] = {}
        self._hooks.append(self._sync_process_counters)
        self._server: Any = None
        self._thread: Any = None
        self.address: str | None = None

    # -- what workers, coordinators and stages report -------------------------------------------
    def processed(self, app: str, stage: str, *, records: int = 0, bases: int = 0) -> None:
        """``records`` records of ``bases`` bases went through ``stage`` of ``app``."""
        if records:
            self.stage_records.labels(app, stage).inc(records)
        if bases:
            self.bases.labels(app, stage).inc(bases)

    def store_io(self, scheme: str, op: str, nbytes: int) -> None:
        """``nbytes`` moved to (``op`` ``write``) or from (``read``) a store of ``scheme``."""
        if nbytes:
            self.store_bytes.labels(scheme, op).inc(nbytes)

    def store_error(self, scheme: str, op: str) -> None:
        self.store_errors.labels(scheme, op).inc()

    def worker_heartbeat(self, worker: str, at: float | None = None) -> None:
        """``worker`` is alive (registered, or its lease renewed)."""
        self.worker_up.labels(worker).set(1)
        self.worker_heartbeat_time.labels(worker).set(time.time() if at is None else at)

    def worker_lost(self, worker: str) -> None:
        """``worker``'s lease expired: it shows as down until it heartbeats again or is removed."""
        self.worker_up.labels(worker).set(0)

    def worker_removed(self, worker: str) -> None:
        """Forget ``worker`` (it left cleanly): its series disappear."""
        for g in (self.worker_up, self.worker_heartbeat_time):
            try:
                g.remove(worker)
            except KeyError:
                pass

    def partitions_requeued(self, kind: str, reason: str, n: int = 1) -> None:
        """``n`` partitions of a ``kind`` request were re-queued (``lease_expired``, ``straggler``, ...)."""
        if n:
            self.requeued.labels(kind, reason).inc(n)

    def _sync_process_counters(self) -> None:
        """Bring the bases and store counters up to :mod:`persona.counters`' totals."""
        from persona import counters

        targets = {"bases": self.bases, "store_bytes": self.store_bytes, "store_errors": self.store_errors}
        for name, series in counters.snapshot().items():
            counter = targets.get(name)
            if counter is None:
                continue
            for labels, total in series.items():
                delta = total - self._seen.get((name, labels), 0.0)
                if delta > 0:
                    counter.labels(*labels).inc(delta)
                    self._seen[(name, labels)] = total

    def add_scrape_hook(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` at each scrape, before the metrics are read (to refresh gauges from live
        state, e.g. worker liveness from the membership table). A hook that raises is logged and
        skipped: a scrape never fails for it."""
        self._hooks.append(fn)

    # -- serving ------------------------------------------------------------------------------
    def serve(self, listen: str) -> str:
        """Serve ``/metrics`` over HTTP on ``HOST:PORT`` (port 0: a free one); returns the address."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._server, self._thread = _prom().start_http_server(int(port), addr=host, registry=self.registry)
        self.address = f"{host}:{self._server.server_port}"
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def text(self) -> bytes:
        return _prom().generate_latest(self.registry)


class _HookCollector:
    def __init__(self, hooks: list[Callable[[], None]]) -> None:
        self.hooks = hooks

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        for fn in list(self.hooks):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a scrape must not fail for a hook
                log.exception("metrics scrape hook %r failed", fn)
        return iter(())


class _TableCollector:
    """``persona_requests``: the request table's counts, read at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self.counts = counts

    def _family(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily("persona_requests", "Requests in the request table", labels=["kind", "state"])

    def describe(self) -> list[Any]:
        return [self._family()]

    def collect(self) -> Iterator[Any]:
        g = self._family()
        for (kind, state), n in sorted(self.counts().items()):
            g.add_metric([kind, state], n)
        yield g


#: help texts of the runtime's samples (names from persona.ptf.introspection)
_RUNTIME_HELP = {
    "persona_ptf_gate_depth": "Feeds buffered in a gate",
    "persona_ptf_gate_open_batches": "Batches open in a gate",
    "persona_ptf_gate_feeds_enqueued_total": "Feeds enqueued into a gate",
    "persona_ptf_gate_feeds_discarded_total": "Feeds a gate discarded (failed or cancelled batches)",
    "persona_ptf_gate_capacity": "A bounded gate's capacity",
    "persona_ptf_gate_credits_available": "Credits a gate's credit link has available",
    "persona_ptf_stage_busy_seconds_total": "Seconds a stage's replicas spent running feeds",
    "persona_ptf_stage_feeds_total": "Feeds a stage processed",
    "persona_ptf_stage_errors_total": "Feeds a stage failed",
    "persona_ptf_stage_replicas": "Replica threads of a stage",
    "persona_ptf_local_credits_available": "Partition credits a local pipeline has available",
    "persona_ptf_local_partitions_total": "Partitions a local pipeline ran",
    "persona_ptf_batches_running": "Batches (requests) running in a pipeline",
    "persona_ptf_batches_done_total": "Batches a pipeline finished",
    "persona_ptf_batches_failed_total": "Batches a pipeline failed",
    "persona_ptf_batches_quiescing": "Failed batches whose stage calls are still running",
    "persona_ptf_state_entries": "Per-batch bookkeeping entries a pipeline holds",
}


class _RuntimeCollector:
    """The runtime's pipelines (gates, credits, stages), read from ``Runtime.stats()`` at scrape time."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self.stats = stats

    def describe(self) -> list[Any]:
        return []  # families vary with the pipelines built so far: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from persona.ptf.introspection import metric_samples

        families: dict[str, Any] = {}
        for pipe in self.stats().get("pipelines", {}).values():
            for name, labels, value in metric_samples(pipe):
                fam = families.get(name)
                if fam is None:
                    text = _RUNTIME_HELP.get(name, name)
                    keys = list(labels)
                    fam = (CounterMetricFamily(name[: -len("_total")], text, labels=keys) if name.endswith("_total")
                           else GaugeMetricFamily(name, text, labels=keys))
                    families[name] = fam
                fam.add_metric([labels[k] for k in labels], value)
        yield from families.values()

