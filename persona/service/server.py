"""``persona serve``: the client gRPC API, the durable request table and one embedded worker.

One process, one asyncio loop (uvloop when installed) running the ``grpc.aio`` server; every
request runs its steps, in order, on one :class:`~persona.runtime.Runtime` (the embedded worker:
each step is a batch in the long-lived pipeline of its kind, so requests run side by side and share
the aligner pool and the loaded references). A step's end reaches the loop through
:meth:`~persona.runtime.JobHandle.add_done_callback` (no thread waits per request); progress
through the job's progress callback.

Durability: a request's row is committed (SQLite) before it is acknowledged, and at each step's
start and end. After a crash, :meth:`Service.start` resumes every request the table still has as
queued or running: its finished steps are kept, its unfinished step runs again. Outputs are
written through column transactions (a dataset's new state appears only at its commit), so the
re-run's output is the one a single run writes; a creating step (import, sort) whose commit had
landed before the crash is recognised by its provenance entry (the step's request id) and not
run twice.

Security: every call needs ``authorization: Bearer <token>`` (missing or wrong: UNAUTHENTICATED);
request paths are confined to ``service.roots`` (:mod:`persona.service.paths`).

Lifecycle: SIGTERM (or SIGINT) drains: new submissions get UNAVAILABLE, the running requests
finish, then the server stops. A second signal stops at once; the running requests stay
"running" in the table and resume at the next start.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from persona.apps.job import new_request_id, request_from_dict
from persona.errors import BatchCancelled, PersonaError
from persona.service.convert import FINAL_STATES, request_to_dict, state_from_enum, status_to_message, \
    step_to_dict
from persona.service import security
from persona.service.db import RequestTable
from persona.service.metrics import Metrics
from persona.service.paths import Roots
from persona.service.proto import modules

log = logging.getLogger(__name__)

_UNSET: Any = object()
#: seconds between Watch messages while nothing changes (a heartbeat: rate and liveness)
WATCH_HEARTBEAT = 2.0


class NotFound(PersonaError):
    pass


class Unavailable(PersonaError):
    pass


def token_file(db_path: str | os.PathLike[str], name: str = "token") -> Path:
    """Where ``persona serve`` keeps the token it made (``service.token`` null): beside the table
    (``name``: ``token``, or the coordinator's ``worker-token``)."""
    return Path(os.path.expanduser(os.fspath(db_path))).parent / name


def load_or_create_token(db_path: str | os.PathLike[str], name: str = "token") -> str:
    """The token in file ``name`` beside the request table, made once (mode 0600)."""
    path = token_file(db_path, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        if not text:
            raise PersonaError(f"{name} file {path} is empty") from None
        return text
    token = secrets.token_hex(32)  # hex: never starts with "-", which a command line would take for an option
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class Live:
    """An unfinished request in memory: its steps, progress and the JobHandle of its running step."""

    def __init__(self, row: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.row = dict(row)
        self.id: str = row["id"]
        self.steps: list[dict[str, Any]] = row["steps"]
        self.kinds = "+".join(s["kind"] for s in self.steps)
        self.summaries: list[dict[str, Any]] = list(row["summaries"])
        self.state: str = row["state"]
        self.error: str = row["error"]
        self.records_total_done: int = row["records_total_done"]
        self.feeds_done: int = row["feeds_done"]
        self.records_done: int = row["records_done"]
        self.cancel_requested: bool = row["cancel_requested"]
        self.handle: Any = None
        self.step_started = 0.0
        self.loop = loop
        self.version = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def step(self) -> int:
        return min(len(self.summaries), len(self.steps) - 1)

    def bump(self) -> None:
        self.version += 1
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def bump_threadsafe(self, *_: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.bump)
        except RuntimeError:  # the loop closed: nobody is watching any more
            pass

    async def changed(self, version: int, timeout: float) -> None:
        """Return when the version moved past ``version``, or after ``timeout`` seconds."""
        if self.version != version:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass

    def snapshot(self) -> dict[str, Any]:
        d = dict(self.row)
        d.update(state=self.state, error=self.error, summaries=list(self.summaries), step=self.step,
                 cancel_requested=self.cancel_requested, rate=0.0)
        h = self.handle
        if h is not None and self.state == "running" and not h.done():
            job = h.job
            d["feeds_done"], d["records_done"] = job.done_feeds, job.done_records
            d["records_total_done"] = self.records_total_done + job.done_records
            elapsed = time.time() - self.step_started
            d["rate"] = job.done_records / elapsed if elapsed > 0 else 0.0
        else:
            d["feeds_done"], d["records_done"] = self.feeds_done, self.records_done
            d["records_total_done"] = self.records_total_done
        return d


class Service:
    """The coordinator and its embedded worker (see the module docstring)."""

    def __init__(self, config: Any = None, *, listen: str | None = None, metrics_listen: Any = _UNSET,
                 token: str | None = None, db_path: str | None = None, roots: str | None = None,
                 runtime: Any = None, threads: int | None = None, triggers: Any = ()) -> None:
        """``triggers``: :class:`~persona.service.triggers.TriggerSpec` s (``persona serve --watch``)."""
        from persona.config import get_config
        from persona.runtime import Runtime

        self.config = config if config is not None else get_config()
        sc = self.config.service
        self.listen = listen or sc.listen
        self.metrics_listen = sc.metrics_listen if metrics_listen is _UNSET else metrics_listen
        self.db_path = Path(os.path.expanduser(db_path or sc.db_path))
        self.token = token or sc.token or load_or_create_token(self.db_path)
        self.roots = Roots.parse(roots or sc.roots, os.getcwd())
        self.table = RequestTable(self.db_path)
        self.runtime = runtime if runtime is not None else Runtime(self.config, threads=threads)
        self.metrics = Metrics(self.table.counts, runtime_stats=self.runtime.stats)
        self.worker_id = f"{socket.gethostname()}/embedded"
        self.state = "starting"
        self.started_at = time.time()
        self.address: str | None = None
        self._live: dict[str, Live] = {}
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._ref_lock = threading.Lock()
        self.trigger_specs = list(triggers)
        self._workers_seen: set[str] = set()
        self.triggers: list[Any] = []
        self._trigger_tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> str:
        """Listen, serve metrics, resume the unfinished requests; returns ``HOST:PORT``."""
        import grpc

        pb2, pb2_grpc = modules()
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb2_grpc.add_PersonaServicer_to_server(Servicer(self), self._server)
        port = security.add_port(self._server, self.listen, security.client_api_server_credentials(self.config))
        host = self.listen.rpartition(":")[0] or "127.0.0.1"
        self.address = f"{host}:{port}"
        await self._server.start()
        if self.metrics_listen:
            self.metrics.serve(self.metrics_listen)
        self.metrics.add_scrape_hook(self._worker_metrics)
        self.state = "running"
        for row in self.table.unfinished():
            log.info("resuming request %s (%s, step %d of %d)", row["id"], "+".join(s["kind"] for s in row["steps"]),
                     len(row["summaries"]) + 1, len(row["steps"]))
            self._start(row)
        await self._start_triggers()
        return self.address

    def _worker_metrics(self) -> None:
        """Scrape hook: worker liveness from :meth:`cluster_status` (the embedded worker here, the
        registered workers in a coordinator); a worker that left the list shows as down."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._stopping:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None

        async def workers() -> list[dict[str, Any]]:
            return list(self.cluster_status()["workers"])

        if running is loop:  # scraped from the loop itself (a test): read directly
            listed = self.cluster_status()["workers"]
        else:
            listed = asyncio.run_coroutine_threadsafe(workers(), loop).result(5)
        seen = set()
        for w in listed:
            seen.add(w["worker_id"])
            if w["state"] in ("running", "draining"):
                self.metrics.worker_heartbeat(w["worker_id"], w["last_heartbeat"] or None)
            else:
                self.metrics.worker_lost(w["worker_id"])
        for gone in self._workers_seen - seen:
            self.metrics.worker_lost(gone)
        self._workers_seen |= seen

    async def _start_triggers(self) -> None:
        from persona.service.triggers import Trigger

        assert self._loop is not None
        for spec in self.trigger_specs:
            trigger = await asyncio.to_thread(Trigger, spec, metrics=self.metrics)
            self.triggers.append(trigger)
            self._trigger_tasks.append(self._loop.create_task(self._watch_loop(trigger), name=f"watch-{spec.watch}"))
            log.info("watching %s: new inputs run %s", spec.watch, "+".join(spec.then))

    async def _watch_loop(self, trigger: Any) -> None:
        """Poll ``trigger`` until the service stops accepting requests; submit what it finds."""
        while self.state == "running":
            try:
                ready = await asyncio.to_thread(trigger.poll)
            except Exception as exc:  # noqa: BLE001 - a store hiccup: the next poll tries again
                log.warning("watch %s: listing failed: %s", trigger.spec.watch, exc)
                self.metrics.trigger_errors.labels(trigger.spec.watch).inc()
                ready = []
            for found, steps, label, key in ready:
                if self.state != "running":
                    trigger.watcher.forget(found)
                    break
                try:
                    row, existing = self.submit(steps, label=label, idempotency_key=key)
                except PersonaError as exc:
                    log.warning("watch %s: %s not submitted: %s", trigger.spec.watch, ", ".join(found.keys), exc)
                    self.metrics.trigger_errors.labels(trigger.spec.watch).inc()
                    continue
                if not existing:
                    log.info("watch %s: %s -> request %s", trigger.spec.watch, ", ".join(found.keys), row["id"])
                    self.metrics.triggered.labels(trigger.spec.watch, found.kind).inc()
            await asyncio.sleep(trigger.spec.poll_seconds)

    def _stop_triggers(self) -> None:
        for t in self._trigger_tasks:
            t.cancel()
        self._trigger_tasks = []

    async def drain(self) -> None:
        """Refuse new requests, let the running ones finish, then stop."""
        if self.state == "running":
            self.state = "draining"
            log.info("draining: %d requests running", len(self._live))
        self._stop_triggers()
        tasks = [lv.task for lv in list(self._live.values()) if lv.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.stop()

    async def stop(self, grace: float = 2.0) -> None:
        """Stop now: running requests are interrupted and stay 'running' in the table (resumed at the
        next start). Idempotent."""
        if self._stopping:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._stopping = True
        self.state = "stopping"
        self._stop_triggers()
        for lv in list(self._live.values()):
            lv.bump()
        await asyncio.to_thread(self.runtime.stop)
        tasks = [lv.task for lv in list(self._live.values()) if lv.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        if self._server is not None:
            await self._server.stop(grace)
        self.metrics.close()
        self.table.close()
        self.state = "stopped"
        assert self._stopped is not None
        self._stopped.set()

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    def on_signal(self) -> None:
        """First SIGTERM/SIGINT: drain; the second: stop at once."""
        if self.state == "running":
            asyncio.ensure_future(self.drain())
        elif not self._stopping:
            log.warning("second signal: stopping now; running requests resume at the next start")
            asyncio.ensure_future(self.stop())

    # -- requests ----------------------------------------------------------------------------
    def submit(self, steps: list[dict[str, Any]], *, label: str = "", idempotency_key: str = "") -> tuple[dict[str, Any], bool]:
        if self.state != "running":
            raise Unavailable(f"the service is {self.state}; no new requests")
        if not steps:
            raise PersonaError("a request needs at least one step")
        checked = []
        for s in steps:
            d = self.roots.confine_request(request_to_dict(s))
            request_from_dict(d)  # the request it names is valid
            checked.append(d)
        row, existing = self.table.insert(new_request_id(), checked, label=label, idempotency_key=idempotency_key)
        if not existing:
            self._start(row)
        return row, existing

    def _start(self, row: dict[str, Any]) -> None:
        assert self._loop is not None
        live = Live(row, self._loop)
        self._live[live.id] = live
        live.task = self._loop.create_task(self._run(live), name=f"request-{live.id}")

    def status(self, request_id: str) -> dict[str, Any]:
        live = self._live.get(request_id)
        if live is not None:
            return live.snapshot()
        row = self.table.get(request_id)
        if row is None:
            raise NotFound(f"no request {request_id}")
        return row

    def cancel(self, request_id: str) -> tuple[bool, str]:
        live = self._live.get(request_id)
        if live is None:
            row = self.table.get(request_id)
            if row is None:
                raise NotFound(f"no request {request_id}")
            return False, row["state"]
        if not live.cancel_requested:
            live.cancel_requested = True
            self.table.update(live.id, cancel_requested=True)
            h = live.handle
            if h is not None:
                h.cancel()
            live.bump()
        return True, live.state

    def list(self, *, states: list[str], kind: str, page_size: int, page_token: str) -> tuple[list[dict[str, Any]], str]:
        size = 50 if page_size <= 0 else min(page_size, 1000)
        try:
            before = int(page_token) if page_token else None
        except ValueError:
            raise PersonaError(f"bad page token {page_token!r}") from None
        rows = self.table.list(states=states, kind=kind, limit=size + 1, before_seq=before)
        more = len(rows) > size
        rows = rows[:size]
        out = [self._live[r["id"]].snapshot() if r["id"] in self._live else r for r in rows]
        return out, (str(rows[-1]["seq"]) if more and rows else "")

    async def watch(self, request_id: str) -> AsyncIterator[dict[str, Any]]:
        live = self._live.get(request_id)
        if live is None:
            yield self.status(request_id)
            return
        last: tuple[Any, ...] | None = None
        last_sent = 0.0
        while True:
            version = live.version
            snap = live.snapshot()
            key = (snap["state"], snap["step"], snap["feeds_done"], snap["records_done"], snap["error"],
                   snap["cancel_requested"])
            now = time.monotonic()
            if key != last or now - last_sent >= WATCH_HEARTBEAT:
                yield snap
                last, last_sent = key, now
            if snap["state"] in FINAL_STATES or self._stopping:
                return
            await live.changed(version, WATCH_HEARTBEAT)

    def cluster_status(self) -> dict[str, Any]:
        counts = self.table.counts()
        return {"state": self.state, "started_at": self.started_at,
                "queued": sum(n for (_, s), n in counts.items() if s == "queued"),
                "running": sum(n for (_, s), n in counts.items() if s == "running"),
                "workers": [{"worker_id": self.worker_id, "host": socket.gethostname(),
                             "threads": self.runtime.threads, "state": self.runtime.state,
                             "running_requests": len(self.runtime.handles()), "last_heartbeat": time.time()}],
                "lease_seconds": self.config.service.lease_seconds,
                "partition_size": self.config.service.partition_size}

    # -- running a request ---------------------------------------------------------------------
    async def _run(self, live: Live) -> None:
        first_step = len(live.summaries)
        resumed = live.row["attempts"] > 0
        attempts = live.row["attempts"] + 1
        started = live.row["started_at"] or time.time()
        self.table.update(live.id, state="running", started_at=started, attempts=attempts)
        live.row.update(started_at=started, attempts=attempts)
        live.state = "running"
        live.bump()
        state, error = "done", ""
        try:
            while len(live.summaries) < len(live.steps):
                i = len(live.summaries)
                if live.cancel_requested:
                    raise BatchCancelled("request cancelled", request=live.id)
                self.table.update(live.id, step=i, feeds_done=0, records_done=0)
                summary = await self._run_step(live, i, resumed=resumed and i == first_step)
                live.summaries.append(summary)
                self.table.update(live.id, summaries=live.summaries, feeds_done=live.feeds_done,
                                  records_done=live.records_done, records_total_done=live.records_total_done)
                live.bump()
        except BaseException as exc:  # noqa: BLE001 - recorded in the table
            if isinstance(exc, asyncio.CancelledError) or (self._stopping and not live.cancel_requested):
                # the service stops: the request stays 'running' and resumes at the next start
                log.info("request %s interrupted by the stop; resumes at the next start", live.id)
                self._live.pop(live.id, None)
                live.bump()
                return
            if isinstance(exc, BatchCancelled) or live.cancel_requested:
                state, error = "cancelled", "cancelled"
            else:
                state, error = "failed", (str(exc) or type(exc).__name__)
                log.warning("request %s failed: %s", live.id, error)
        finished = time.time()
        self.table.update(live.id, state=state, error=error, finished_at=finished, feeds_done=live.feeds_done,
                          records_done=live.records_done, records_total_done=live.records_total_done,
                          summaries=live.summaries)
        live.row["finished_at"] = finished
        live.state, live.error = state, error
        self.metrics.finished.labels(live.kinds, state).inc()
        self.metrics.duration.labels(live.kinds).observe(finished - live.row["submitted_at"])
        self._live.pop(live.id, None)
        live.bump()

    async def _run_step(self, live: Live, i: int, *, resumed: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        d = live.steps[i]
        kind = d["kind"]
        step_id = f"{live.id}.{i}"
        request = await asyncio.to_thread(self._prepare, d)
        if resumed and await asyncio.to_thread(_committed_by, request, step_id, self.runtime.config):
            log.info("request %s step %d (%s) had committed before the restart", live.id, i, kind)
            live.feeds_done = live.records_done = 0
            return {"request_id": step_id, "kind": kind, "committed_before_restart": True}
        handle = await asyncio.to_thread(self.runtime.submit, request, progress=live.bump_threadsafe,
                                         request_id=step_id)
        live.handle, live.step_started = handle, time.time()
        if live.cancel_requested:
            handle.cancel()
        live.bump()
        done: asyncio.Future[None] = loop.create_future()

        def finished(_h: Any) -> None:
            try:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
            except RuntimeError:
                pass

        gauge = self.metrics.steps_running.labels(kind)
        gauge.inc()
        try:
            handle.add_done_callback(finished)
            await done
        finally:
            gauge.dec()
        job = handle.job
        live.feeds_done, live.records_done = job.done_feeds, job.done_records
        live.records_total_done += job.done_records
        self.metrics.records.labels(kind).inc(job.done_records)
        self.metrics.feeds.labels(kind).inc(job.done_feeds)
        exc = handle.exception(0)
        if exc is not None:
            raise exc
        summary = handle.result(0).to_dict()
        return summary

    def _prepare(self, d: dict[str, Any]) -> Any:
        """The request of step dict ``d``; an align step naming a FASTA file registers it (once)."""
        d = dict(d)
        if d["kind"] in ("align", "align-sort") and isinstance(d.get("reference"), str) \
                and ("/" in d["reference"] or "://" in d["reference"]):
            d["reference"] = self._register_reference(d["reference"], d.get("references_url"), d.get("aligner"),
                                                      d.get("preset"))
        return request_from_dict(d)

    def _register_reference(self, path: str, store: str | None, aligner: str | None, preset: str | None) -> str:
        from persona.align.reference import add_reference, list_references

        cfg = self.runtime.config
        store = store or cfg.align.references_url
        base = os.path.basename(path.rstrip("/"))
        for ext in (".gz", ".fasta", ".fa", ".fna"):
            if base.endswith(ext):
                base = base[: -len(ext)]
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in base) or "reference"
        with self._ref_lock:
            if name not in list_references(store):
                log.info("registering reference %s from %s", name, path)
                add_reference(name, path, store_url=store, aligner=aligner or cfg.align.aligner,
                              preset=preset or cfg.align.preset)
        return name


def _committed_by(request: Any, step_id: str, config: Any) -> bool:
    """Whether a creating step (import, sort) had committed its dataset before a crash: the dataset it
    names exists and its provenance names ``step_id``."""
    from persona.agd import Dataset

    if request.kind == "import":
        location, name = request.output, request.name
    elif request.kind in ("sort", "align-sort"):
        location = request.output or request.dataset
        name = request.name
    else:
        return False
    try:
        ds = Dataset.open(location, name)
    except Exception:  # noqa: BLE001 - no such dataset (or several): not committed
        return False
    return any(p.get("request_id") == step_id for p in ds.manifest.provenance)


# -- the gRPC servicer ---------------------------------------------------------------------
def _rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bearer-token check and error mapping around a servicer method (unary or server-streaming)."""
    import grpc

    def code_of(exc: BaseException) -> Any:
        if isinstance(exc, NotFound):
            return grpc.StatusCode.NOT_FOUND
        if isinstance(exc, Unavailable):
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.INVALID_ARGUMENT

    async def check(self: "Servicer", context: Any) -> None:
        if not security.token_ok(context.invocation_metadata(), self.service.token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self: "Servicer", request: Any, context: Any) -> AsyncIterator[Any]:
            await check(self, context)
            try:
                async for item in fn(self, request, context):
                    yield item
            except PersonaError as exc:
                await context.abort(code_of(exc), str(exc))
        return stream

    @functools.wraps(fn)
    async def unary(self: "Servicer", request: Any, context: Any) -> Any:
        await check(self, context)
        try:
            return await fn(self, request, context)
        except PersonaError as exc:
            await context.abort(code_of(exc), str(exc))
    return unary


def _servicer_base() -> type:
    return modules()[1].PersonaServicer


class Servicer(_servicer_base()):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self.service = service

    @_rpc
    async def Submit(self, request: Any, context: Any) -> Any:
        pb2 = modules()[0]
        steps = [step_to_dict(s) for s in request.steps]
        row, existing = self.service.submit(steps, label=request.label, idempotency_key=request.idempotency_key)
        return pb2.SubmitResponse(request_id=row["id"], existing=existing)

    @_rpc
    async def Get(self, request: Any, context: Any) -> Any:
        return status_to_message(self.service.status(request.request_id))

    @_rpc
    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for snap in self.service.watch(request.request_id):
            yield status_to_message(snap)

    @_rpc
    async def Cancel(self, request: Any, context: Any) -> Any:
        from persona.service.convert import state_to_enum

        ok, state = self.service.cancel(request.request_id)
        return modules()[0].CancelResponse(cancelled=ok, state=state_to_enum(state))

    @_rpc
    async def List(self, request: Any, context: Any) -> Any:
        rows, token = self.service.list(states=[state_from_enum(s) for s in request.states], kind=request.kind,
                                        page_size=request.page_size, page_token=request.page_token)
        return modules()[0].ListResponse(requests=[status_to_message(r) for r in rows], next_page_token=token)

    @_rpc
    async def ClusterStatus(self, request: Any, context: Any) -> Any:
        import persona

        pb2 = modules()[0]
        st = self.service.cluster_status()
        return pb2.ClusterStatusResponse(
            version=persona.__version__, state=st["state"], queued=st["queued"], running=st["running"],
            started_at=st["started_at"], lease_seconds=st["lease_seconds"], partition_size=st["partition_size"],
            workers=[pb2.Worker(**w) for w in st["workers"]])


# -- persona serve -----------------------------------------------------------------------------
def serve(config: Any = None, *, listen: str | None = None, metrics_listen: Any = _UNSET,
          db_path: str | None = None, roots: str | None = None, threads: int | None = None,
          address_file: str | None = None, triggers: Any = ()) -> int:
    """Run the service until SIGTERM/SIGINT drained it (see the module docstring)."""

    async def main() -> None:
        svc = Service(config, listen=listen, metrics_listen=metrics_listen, db_path=db_path, roots=roots,
                      threads=threads, triggers=triggers)
        try:
            address = await svc.start()
        except BaseException:
            await svc.stop(0)
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, svc.on_signal)
        metrics = f", metrics on http://{svc.metrics.address}/metrics" if svc.metrics.address else ""
        tls = " (TLS)" if svc.config.service.tls_cert else ""
        print(f"persona serve: listening on {address}{tls}{metrics}; request table {svc.db_path}; "
              f"token {'from config' if svc.config.service.token else token_file(svc.db_path)}",
              file=sys.stderr, flush=True)
        if address_file:
            tmp = f"{address_file}.tmp"
            with open(tmp, "w") as f:
                f.write(address + "\n")
            os.replace(tmp, address_file)
        await svc.wait_stopped()

    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())
    return 0
