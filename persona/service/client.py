"""A Python client of the ``persona.v1.Persona`` API: submit, watch, get, cancel, list, cluster_status.

    from persona.service.client import Client
    from persona.apps.align import AlignRequest

    with Client() as c:                       # address and token from the config (or the token file)
        rid = c.submit(AlignRequest(dataset="/data/agd/yeast", reference="sacCer3"))
        for status in c.watch(rid):
            print(status["state"], status["records_done"])

Statuses are plain dicts (:func:`persona.service.convert.status_from_message`). gRPC errors are
raised as :class:`ServiceError` with the status code's name in ``code``.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from persona.apps.job import Request
from persona.errors import PersonaError
from persona.service.convert import FINAL_STATES, state_to_enum, status_from_message, submit_message
from persona.service.proto import modules


class ServiceError(PersonaError):
    """A call the service refused or could not answer; ``code``: the gRPC status code name."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


def default_token(config: Any) -> str | None:
    """``service.token``, else the token file ``persona serve`` wrote beside its request table."""
    if config.service.token:
        return str(config.service.token)
    from persona.service.server import token_file

    path = token_file(config.service.db_path)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class Client:
    def __init__(self, address: str | None = None, token: str | None = None, *, config: Any = None,
                 timeout: float = 30.0, tls_ca: str | None = None) -> None:
        """``tls_ca``: the CA certificate (PEM file) that signed the service's: connect with TLS
        (default: ``service.tls_ca``; neither: plain TCP)."""
        import grpc

        from persona.service import security

        if config is None and (address is None or token is None or tls_ca is None):
            from persona.config import get_config

            config = get_config()
        self.address = address or config.service.listen
        self.token = token if token is not None else default_token(config)
        self.timeout = timeout
        self._grpc = grpc
        self._pb2, pb2_grpc = modules()
        creds = security.client_api_channel_credentials(config, tls_ca) if config is not None else (
            security.channel_credentials(security.TlsFiles.load(ca=tls_ca)) if tls_ca else None)
        self.tls = creds is not None
        self._channel = security.open_channel(self.address, creds)
        self._stub = pb2_grpc.PersonaStub(self._channel)

    # -- plumbing ------------------------------------------------------------------------------
    def _md(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def _call(self, method: str, message: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(message, metadata=self._md(),
                                               timeout=self.timeout if timeout is None else timeout)
        except self._grpc.RpcError as exc:
            raise _error(exc, self.address) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the verbs -----------------------------------------------------------------------------
    def submit(self, *steps: Request | Mapping[str, Any], label: str = "", idempotency_key: str = "") -> str:
        """Submit one request, or a chain of them run in order; returns the request id."""
        if len(steps) == 1 and isinstance(steps[0], (list, tuple)):
            steps = tuple(steps[0])
        msg = submit_message(steps, label=label, idempotency_key=idempotency_key)
        return str(self._call("Submit", msg).request_id)

    def get(self, request_id: str) -> dict[str, Any]:
        return status_from_message(self._call("Get", self._pb2.GetRequest(request_id=request_id)))

    def watch(self, request_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Statuses as they change until the request finished (``timeout``: seconds in all, None: no limit)."""
        stream = self._stub.Watch(self._pb2.WatchRequest(request_id=request_id), metadata=self._md(),
                                  timeout=timeout)
        try:
            for msg in stream:
                yield status_from_message(msg)
        except self._grpc.RpcError as exc:
            raise _error(exc, self.address) from None
        finally:
            stream.cancel()

    def wait(self, request_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The request's final status (Watch until it finished; reconnects if the stream ends early)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"request {request_id} not finished after {timeout} s")
            try:
                for last in self.watch(request_id, timeout=left):
                    if last["state"] in FINAL_STATES:
                        return last
            except ServiceError as exc:
                if exc.code not in ("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"):
                    raise
            time.sleep(0.2)

    def cancel(self, request_id: str) -> bool:
        """Ask the request to stop; False when it had already finished."""
        return bool(self._call("Cancel", self._pb2.CancelRequest(request_id=request_id)).cancelled)

    def list(self, *, states: Iterable[str] = (), kind: str = "", page_size: int = 0,
             page_token: str = "") -> tuple[list[dict[str, Any]], str]:
        """One page of requests, newest first, and the next page's token ('' at the end)."""
        msg = self._pb2.ListRequest(states=[state_to_enum(s) for s in states], kind=kind, page_size=page_size,
                                    page_token=page_token)
        resp = self._call("List", msg)
        return [status_from_message(r) for r in resp.requests], resp.next_page_token

    def cluster_status(self) -> dict[str, Any]:
        r = self._call("ClusterStatus", self._pb2.ClusterStatusRequest())
        return {"version": r.version, "state": r.state, "queued": r.queued, "running": r.running,
                "started_at": r.started_at, "lease_seconds": r.lease_seconds, "partition_size": r.partition_size,
                "workers": [{"worker_id": w.worker_id, "host": w.host, "threads": w.threads, "state": w.state,
                             "running_requests": w.running_requests, "last_heartbeat": w.last_heartbeat,
                             "partitions_done": w.partitions_done}
                            for w in r.workers]}


def _error(exc: Any, address: str) -> ServiceError:
    code = exc.code().name if hasattr(exc, "code") and exc.code() is not None else "UNKNOWN"
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == "UNAVAILABLE":
        detail = f"service at {address} unavailable: {detail}"
    return ServiceError(f"{detail} ({code})", code)
