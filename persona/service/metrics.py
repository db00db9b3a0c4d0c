"""Prometheus metrics of one service process (prometheus-client, a registry per service).

* ``persona_requests`` (gauge): requests in the table by kind (the chain, ``import+align``) and state;
* ``persona_requests_finished_total`` (counter): requests that reached a final state, by kind and state;
* ``persona_request_duration_seconds`` (histogram): submit to finish of finished requests, by kind;
* ``persona_records_processed_total`` / ``persona_feeds_processed_total`` (counters): by app kind;
* ``persona_steps_running`` (gauge): app steps running on this process's runtime, by kind;
* ``persona_service_up`` (gauge, 1) and ``persona_build_info``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from persona.errors import PersonaError

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)


def _prom() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - the service extra installs it
        raise PersonaError("the service needs prometheus-client: pip install 'persona-genomics[service]'") from exc
    return prometheus_client


class Metrics:
    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        prom = _prom()
        from prometheus_client.core import GaugeMetricFamily

        import persona

        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.finished = prom.Counter("persona_requests_finished", "Requests that reached a final state",
                                     ["kind", "state"], registry=r)
        self.duration = prom.Histogram("persona_request_duration_seconds", "Request duration, submit to finish",
                                       ["kind"], buckets=BUCKETS, registry=r)
        self.records = prom.Counter("persona_records_processed", "Records processed", ["kind"], registry=r)
        self.feeds = prom.Counter("persona_feeds_processed", "Feeds (chunks) processed", ["kind"], registry=r)
        self.steps_running = prom.Gauge("persona_steps_running", "App steps running on this process",
                                        ["kind"], registry=r)
        prom.Gauge("persona_service_up", "1 while the service runs", registry=r).set(1)
        prom.Info("persona_build", "Persona version", registry=r).info({"version": persona.__version__})

        class _Table:
            def describe(self) -> list[Any]:
                return [GaugeMetricFamily("persona_requests", "Requests in the request table", labels=["kind", "state"])]

            def collect(self) -> Any:
                g = GaugeMetricFamily("persona_requests", "Requests in the request table", labels=["kind", "state"])
                for (kind, state), n in sorted(counts().items()):
                    g.add_metric([kind, state], n)
                yield g

        r.register(_Table())
        self._server: Any = None
        self._thread: Any = None
        self.address: str | None = None

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
