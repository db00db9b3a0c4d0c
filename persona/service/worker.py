"""``persona worker --coordinator ADDR``: one process per machine, a Runtime behind the worker API.

The worker registers with the coordinator (``WorkerService``, the worker credential), renews its
lease with a heartbeat every third of the lease, pulls partitions while it has free credits
(``--credits``, default ``service.worker_credits``; a report pulls the next one in the same round
trip; reports go on one long-lived ``Reports`` stream, with the results that finished meanwhile)
and runs each as a local batch in the Runtime's long-lived pipeline of its kind (the
thesis' nested batches: a partition is a batch here, a part of the request's batch at the
coordinator). Data moves through the shared store only:

* an align partition (chunks ``[start, stop)``) writes each chunk's output files under its
  attempt's unique key ``<name>_<first>~<attempt>.<column>`` and reports the keys and checksums;
  it commits nothing (the coordinator's column transaction does, once per step);
* a sort or align-sort partition sorts its groups into runs, and the step's merge task merges
  them and commits (:mod:`persona.service.sort_parts`);
* a whole-step partition (import, markdup, export, stats, a sort of one group) runs the request as
  the CLI does (its own transaction commits) and reports the summary.

A heartbeat's answer lists attempts to drop (the request was cancelled, the lease had expired, a
speculative copy won): they are cancelled and their files removed. An unknown worker (its lease
expired, or the coordinator restarted) registers again. A result that cannot be delivered is
retried with backoff for ``10 x lease`` seconds; the coordinator discards it if the attempt was
revoked meanwhile.

SIGTERM drains: no more pulls, the running partitions finish and are reported, then the worker
tells the coordinator it stopped and exits. A second signal stops at once.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from persona.agd.manifest import chunk_path
from persona.agd.transaction import checksum
from persona.apps.align import AlignJob, AlignRequest, aligner_version
from persona.apps.job import FeedDescriptor, Summary, Work, request_from_dict
from persona.errors import DatasetError, PersonaError

log = logging.getLogger(__name__)


class AlignPartitionJob(AlignJob):
    """Chunks ``[start, stop)`` of an align request, written under attempt-unique keys, uncommitted."""

    def __init__(self, request: AlignRequest, request_id: str, runtime: Any, *, start: int, stop: int,
                 attempt: str, generation: int) -> None:
        super().__init__(request, request_id, runtime)
        self.attempt = attempt
        self.start, self.stop = start, stop
        self.generation = generation
        self.files: list[list[Any]] = []
        self._keys: list[str] = []
        self._lock = threading.Lock()
        if not (0 <= start < stop <= len(self.ds.chunks)):
            raise DatasetError(f"partition chunks [{start}, {stop}) outside dataset {self.ds.name!r} "
                               f"({len(self.ds.chunks)} chunks)", store=self.ds.store.url)

    def begin(self) -> None:
        r = self.request
        assert r.references_url is not None and r.aligner is not None
        if self.generation and self.ds.manifest.generation != self.generation:
            raise DatasetError(f"dataset {self.ds.name!r} is at generation {self.ds.manifest.generation}, the "
                               f"partition was planned at {self.generation}", store=self.ds.store.url)
        self.reference = self.runtime.references.acquire(r.reference, r.references_url, aligner=r.aligner,
                                                         options=self.opts)
        from persona.agd import BASE, METADATA, QUAL

        self.read_columns = ((BASE,) + ((QUAL,) if self.reference.aligner.uses_quals else ())
                             + ((METADATA,) if self.opts.use_names and METADATA in self.ds.columns else ()))
        self.make_tags = bool(getattr(self.reference.aligner, "makes_tags", False))

    def feeds(self) -> list[FeedDescriptor]:
        return [FeedDescriptor(self.request_id, self.ds.store.url, self.ds.name, i, tuple(self.read_columns))
                for i in range(self.start, self.stop)]

    def stage_write(self, w: Work) -> Work:
        ref = self.ds.chunks[w.desc.chunk]
        for c, data in w.data.items():
            key = f"{chunk_path(self.ds.name, ref.first)}~{self.attempt}.{c}"
            with self._lock:
                self._keys.append(key)  # before the put: abort removes partial writes too
            self.ds.store.put(key, data)
            with self._lock:
                self.files.append([w.desc.chunk, c, key, checksum(data)])
        self._written[w.desc.chunk] = tuple(w.data)
        w.data = None
        w.n = ref.num_records
        self.advance(w.n)
        return w

    def commit(self, outputs: list[Any]) -> Summary:
        from persona.agd.columns import is_secondary_column

        assert self.reference is not None
        info = self.reference.info
        self.result = {
            "store": self.ds.store.url, "files": sorted(self.files), "feeds": self.stop - self.start,
            "records": sum(self.ds.chunks[i].num_records for i in range(self.start, self.stop)),
            "n_secondary": max([0] + [sum(map(is_secondary_column, cols)) for cols in self._written.values()]),
            "info": {"contigs": info.manifest_contigs(), "make_tags": self.make_tags,
                     "secondary": self.opts.secondary, "aligner": self.request.aligner,
                     "aligner_options": self.opts.to_dict(),
                     "aligner_version": aligner_version(self.request.aligner or ""),
                     "reference": {"name": info.name, "checksum": getattr(info, "sha256", None)},
                     "reference_uri": ("file://" + info.source) if info.source.startswith("/") else ""},
        }
        self._release()
        return Summary(**self.summary_base())

    def abort(self, error: BaseException | None) -> None:
        with self._lock:
            keys, self._keys = self._keys, []
        for key in keys:
            try:
                self.ds.store.delete(key)
            except Exception:  # noqa: BLE001 - garbage: the coordinator or the next writer removes it
                pass
        self._release()


class _PartitionPlan:
    """Duck-types a request for :meth:`Runtime.submit`: resolves the align request, plans the
    partition's job (not a registered request kind: clients cannot submit one)."""

    kind = "align"

    def __init__(self, request: AlignRequest, part: Any) -> None:
        self.request, self.part = request, part

    def resolved(self, config: Any) -> "_PartitionPlan":
        self.request = self.request.resolved(config)
        return self

    def plan(self, runtime: Any, request_id: str) -> AlignPartitionJob:
        p = self.part
        return AlignPartitionJob(self.request, request_id, runtime, start=p.chunk_start, stop=p.chunk_stop,
                                 attempt=p.attempt, generation=p.generation)


def _sort_part(request: Any, p: Any) -> Any:
    from persona.service.convert import _ints, from_struct
    from persona.service.sort_parts import KINDS, SortPartPlan

    if request.kind not in KINDS:
        raise PersonaError(f"a {request.kind} step has no partition tasks")
    return SortPartPlan(request, _ints(from_struct(p.task)), step_id=p.step_id, attempt=p.attempt)


class Worker:
    """One worker process's loop (see the module docstring). :meth:`run` blocks until stopped."""

    def __init__(self, config: Any = None, *, coordinator: str, token: str | None = None,
                 threads: int | None = None, credits: int | None = None, runtime: Any = None,
                 metrics_listen: str | None = None) -> None:
        from persona.config import get_config
        from persona.runtime import Runtime

        self.config = config if config is not None else get_config()
        sc = self.config.service
        self.coordinator = coordinator
        self.token = token or sc.worker_token or _token_beside(sc.db_path)
        self.credits = int(credits or sc.worker_credits)
        self.runtime = runtime if runtime is not None else Runtime(self.config, threads=threads)
        self.worker_id = ""
        self.lease = float(sc.lease_seconds)
        self.state = "starting"
        self._open: dict[str, Any] = {}  # attempt -> JobHandle (None while starting)
        self._reports: list[tuple[Any, bool, str, dict[str, Any]]] = []  # results waiting to be sent
        self._reporting = False  # a thread is sending reports
        self._rstream: tuple[Any, Any] | None = None  # the Reports stream: (request queue, answers)
        self._streams = True  # False: the coordinator has no Reports stream; unary Report
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._reregister = threading.Event()
        self._channel: Any = None
        self._stub: Any = None
        self.partitions_done = 0
        self.metrics_listen = metrics_listen if metrics_listen is not None else sc.metrics_listen
        self.metrics: Any = None

    # -- gRPC ----------------------------------------------------------------------------------
    def _connect(self) -> None:
        from persona.service import security
        from persona.service.proto import modules

        creds = security.worker_api_channel_credentials(self.config)
        # keepalives: a connection whose path went away (a network partition) is noticed and
        # replaced within seconds, so the worker is back as soon as the path is
        self._channel = security.open_channel(self.coordinator, creds, options=[
            ("grpc.keepalive_time_ms", 5000), ("grpc.keepalive_timeout_ms", 3000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)])
        self._stub = modules()[1].WorkerServiceStub(self._channel)
        self._md = security.bearer_metadata(self.token)

    def _call(self, name: str, msg: Any, timeout: float) -> Any:
        return getattr(self._stub, name)(msg, metadata=self._md, timeout=timeout)

    def _register(self) -> None:
        from persona.service.proto import modules

        pb2 = modules()[0]
        r = self._call("Register", pb2.RegisterRequest(host=socket.gethostname(), pid=os.getpid(),
                                                       threads=self.runtime.threads, credits=self.credits), 10)
        self.worker_id, self.lease = r.worker_id, r.lease_seconds
        self._reregister.clear()
        log.info("registered with %s as %s (lease %.1f s)", self.coordinator, self.worker_id, self.lease)

    # -- the loops -----------------------------------------------------------------------------
    def run(self) -> int:
        import grpc

        from persona.service.proto import modules

        pb2 = modules()[0]
        self._connect()
        self._serve_metrics()
        self.state = "running"
        hb = threading.Thread(target=self._heartbeats, name="worker-heartbeat", daemon=True)
        hb.start()
        try:
            while not self._stop.is_set():
                if self.state == "draining":
                    with self._lock:
                        if not self._open:
                            break
                        self._lock.wait(0.2)
                    continue
                try:
                    if not self.worker_id or self._reregister.is_set():
                        self._register()
                    with self._lock:
                        free = self.credits - len(self._open)
                        if free <= 0:
                            self._lock.wait(0.2)
                            continue
                    resp = self._call("Pull", pb2.PullRequest(worker_id=self.worker_id, max_partitions=free), 15)
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        raise PersonaError(f"the coordinator refused this worker's credential: {exc.details()}") \
                            from None
                    log.debug("coordinator unreachable (%s); retrying", exc.code())
                    self._stop.wait(0.5)
                    continue
                if not resp.known:
                    self._reregister.set()
                    continue
                for p in resp.partitions:
                    self._start(p)
        finally:
            self._finish()
        return 0

    def _serve_metrics(self) -> None:
        """``/metrics`` of this worker (its runtime's pipelines, records and bases, store I/O)."""
        from persona.service.metrics import Metrics

        self.metrics = Metrics(None, runtime_stats=self.runtime.stats)
        if not self.metrics_listen or self.metrics_listen in ("none", ""):
            return
        try:
            self.metrics.serve(self.metrics_listen)
            log.info("metrics on http://%s/metrics", self.metrics.address)
        except OSError as exc:  # e.g. the coordinator on this machine holds the port: run without
            log.warning("no metrics: cannot listen on %s (%s); pass --metrics-listen HOST:PORT",
                        self.metrics_listen, exc)

    def _heartbeats(self) -> None:
        import grpc

        from persona.service.proto import modules

        pb2 = modules()[0]
        while not self._stop.wait(max(0.05, self.lease / 3)):
            if not self.worker_id:
                continue
            with self._lock:
                attempts = list(self._open)
            try:
                r = self._call("Heartbeat", pb2.HeartbeatRequest(worker_id=self.worker_id, state=self.state,
                                                                 attempts=attempts), max(1.0, self.lease / 2))
            except grpc.RpcError:
                continue
            if not r.known:
                self._reregister.set()
            for attempt in r.drop:
                with self._lock:
                    h = self._open.get(attempt)
                if h is not None:
                    log.info("dropping attempt %s (the coordinator revoked it)", attempt)
                    h.cancel()

    def _start(self, p: Any) -> None:
        from persona.service.convert import step_to_dict

        with self._lock:
            self._open[p.attempt] = None
        try:
            request = request_from_dict(step_to_dict(p.step))
            if p.whole:
                from persona.service.server import _committed_by

                if _committed_by(request, p.step_id, None):
                    self._report(p, True, "", {"summary": {"request_id": p.step_id, "kind": request.kind,
                                                           "committed_before_restart": True}})
                    return
                if p.HasField("task"):  # a split sort's merge
                    handle = self.runtime.submit(_sort_part(request, p), request_id=p.step_id)
                else:
                    handle = self.runtime.submit(request, request_id=p.step_id)
            elif p.HasField("task"):  # a split sort's runs
                handle = self.runtime.submit(_sort_part(request, p), request_id=f"{p.step_id}.{p.index}.{p.attempt}")
            else:
                if not isinstance(request, AlignRequest):
                    raise PersonaError(f"cannot split a {request.kind} step into partitions")
                handle = self.runtime.submit(_PartitionPlan(request, p),
                                             request_id=f"{p.step_id}.{p.index}.{p.attempt}")
        except Exception as exc:  # noqa: BLE001 - reported: the coordinator retries or fails the step
            log.warning("partition %d of %s cannot start: %s", p.index, p.step_id, exc)
            threading.Thread(target=self._report, args=(p, False, str(exc) or type(exc).__name__, {}),
                             daemon=True).start()
            return
        with self._lock:
            self._open[p.attempt] = handle
        handle.add_done_callback(lambda h: self._done(p, h))

    def _done(self, p: Any, h: Any) -> None:
        exc = h.exception(0)
        if exc is not None:
            from persona.errors import DatasetBusyError

            if isinstance(exc, DatasetBusyError):
                # another writer's claim: most often the attempt of a lost worker whose claim has not
                # run out yet. Not this partition's fault: report it as transient, after a pause.
                self._stop.wait(min(5.0, self.lease))
                self._report(p, False, str(exc), {"transient": True})
                return
            self._report(p, False, str(exc) or type(exc).__name__, {})
            return
        summary = h.result(0)
        if self.metrics is not None:
            self.metrics.records.labels(p.step.kind).inc(h.job.done_records)
            self.metrics.feeds.labels(p.step.kind).inc(h.job.done_feeds)
        if p.whole:
            job = h.job
            self._report(p, True, "", {"summary": summary.to_dict(), "feeds": job.done_feeds,
                                       "records": job.done_records})
        elif p.HasField("task"):
            from persona.service.sort_parts import runs_result

            self._report(p, True, "", runs_result(h.job))
        else:
            self._report(p, True, "", h.job.result)

    def _report(self, p: Any, ok: bool, error: str, result: dict[str, Any]) -> None:
        """Deliver one attempt's result. Results that finish while a report is in flight go together
        in the next one (ReportRequest.more): one round trip, one group commit at the coordinator."""
        with self._lock:
            self._reports.append((p, ok, error, result))
            if self._reporting:
                return  # the thread sending now sends this one next
            self._reporting = True
        while True:
            with self._lock:
                batch, self._reports = self._reports, []
                if not batch:
                    self._reporting = False
                    return
            try:
                self._send_reports(batch)
            except BaseException:
                with self._lock:
                    self._reporting = False
                raise

    def _send_reports(self, batch: list[tuple[Any, bool, str, dict[str, Any]]]) -> None:
        """One Report of ``batch``, retried while the coordinator is unreachable; then start what it pulled."""
        import grpc

        from persona.service.convert import to_struct
        from persona.service.proto import modules

        pb2 = modules()[0]
        (p, ok, error, result), rest = batch[0], batch[1:]
        # pull the next partitions in the same round trip while these credits come free
        pull = len(batch) if self.state == "running" and not self._stop.is_set() else 0
        msg = pb2.ReportRequest(worker_id=self.worker_id, attempt=p.attempt, ok=ok, error=error,
                                result=to_struct(result), pull=pull,
                                more=[pb2.PartitionResult(attempt=q.attempt, ok=q_ok, error=q_error,
                                                          result=to_struct(q_result))
                                      for q, q_ok, q_error, q_result in rest])
        deadline = time.monotonic() + max(30.0, 10 * self.lease)
        delay = 0.2
        nxt: list[Any] = []
        try:
            while True:
                try:
                    r = self._report_rpc(msg, 10)
                    for (q, q_ok, _, _), accepted in zip(batch, [r.accepted, *r.more_accepted]):
                        if q_ok and not accepted:
                            log.info("partition %d of %s: result discarded by the coordinator", q.index, q.step_id)
                        self.partitions_done += int(q_ok and accepted)
                    if not r.known and msg.worker_id == self.worker_id:
                        self._reregister.set()
                    nxt = list(r.partitions)
                    break
                except (grpc.RpcError, PersonaError) as exc:
                    code = exc.code() if isinstance(exc, grpc.RpcError) else None
                    if time.monotonic() > deadline or code == grpc.StatusCode.UNAUTHENTICATED:
                        log.warning("%d partition result(s), first partition %d of %s: not delivered (%s)",
                                    len(batch), p.index, p.step_id, code or exc)
                        return
                time.sleep(delay)
                delay = min(2.0, delay * 2)
        finally:
            with self._lock:
                for q, *_ in batch:
                    self._open.pop(q.attempt, None)
                self._lock.notify_all()
        for q in nxt:
            self._start(q)

    def _report_rpc(self, msg: Any, timeout: float) -> Any:
        """One report and its answer, on this worker's Reports stream (opened at first use and again
        after any error; a stream message costs the coordinator about half a unary call), or as a
        unary Report where the coordinator has no stream. Only the one reporting thread calls this."""
        import queue

        import grpc

        if not self._streams:
            return self._call("Report", msg, timeout)
        if self._rstream is None:
            requests: queue.Queue[Any] = queue.Queue()
            self._rstream = (requests, self._stub.Reports(iter(requests.get, None), metadata=self._md))
        requests, answers = self._rstream
        requests.put(msg)
        timer = threading.Timer(timeout, answers.cancel)  # a lost path: do not wait forever
        timer.daemon = True
        timer.start()
        try:
            return next(answers)
        except StopIteration:
            self._close_reports()
            raise PersonaError("the coordinator closed the Reports stream") from None
        except grpc.RpcError as exc:
            self._close_reports()
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._streams = False
            raise
        finally:
            timer.cancel()

    def _close_reports(self) -> None:
        stream, self._rstream = self._rstream, None
        if stream is not None:
            stream[0].put(None)  # ends the request iterator (its thread is waiting on the queue)
            stream[1].cancel()

    # -- lifecycle -----------------------------------------------------------------------------
    def drain(self) -> None:
        """Pull nothing more; finish and report the running partitions; then stop."""
        if self.state == "running":
            log.info("draining: %d partitions running", len(self._open))
            self.state = "draining"
            with self._lock:
                self._lock.notify_all()
        elif self.state == "draining":
            log.warning("second signal: stopping now")
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            handles = [h for h in self._open.values() if h is not None]
            self._lock.notify_all()
        for h in handles:
            h.cancel()

    def _finish(self) -> None:
        from persona.service.proto import modules

        self._stop.set()
        self.runtime.stop()
        if self.worker_id and self._stub is not None:
            try:
                self._call("Heartbeat", modules()[0].HeartbeatRequest(worker_id=self.worker_id, state="stopped"), 2)
            except Exception:  # noqa: BLE001 - the lease runs out instead
                pass
        self._close_reports()
        if self._channel is not None:
            self._channel.close()
        if self.metrics is not None:
            self.metrics.close()
        self.state = "stopped"


def _token_beside(db_path: str) -> str:
    from persona.service.coordinator import worker_token_file

    path = worker_token_file(db_path)
    try:
        text = path.read_text().strip()
    except OSError:
        raise PersonaError(f"no worker token: set service.worker_token (PERSONA_SERVICE__WORKER_TOKEN) or "
                           f"--token, or run the worker beside the coordinator ({path})") from None
    if not text:
        raise PersonaError(f"worker token file {path} is empty")
    return text


def run_worker(config: Any = None, *, coordinator: str, token: str | None = None, threads: int | None = None,
               credits: int | None = None, metrics_listen: str | None = None) -> int:
    """``persona worker``: run until SIGTERM drained it (a second signal stops at once)."""
    import sys

    w = Worker(config, coordinator=coordinator, token=token, threads=threads, credits=credits,
               metrics_listen=metrics_listen)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.drain())
    print(f"persona worker: pulling from {coordinator} ({w.runtime.threads} threads, {w.credits} credits)",
          file=sys.stderr, flush=True)
    return w.run()
