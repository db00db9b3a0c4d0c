"""The Runtime: what every request in one process shares (ARCHITECTURE.md, "Jobs and the Runtime").

A :class:`Runtime` owns

* one long-lived PTF pipeline per job kind (align, import, export, ...): every
  request is a batch in the pipeline of its kind, as in the thesis (§4.3–4.5),
  so requests of one kind share stage threads and requests of different kinds
  run side by side;
* the aligner executor, one thread pool sized to the process's thread budget
  (:func:`thread_budget`: CPU affinity and the cgroup CPU quota), shared by every
  align stage of every request;
* the reference cache (indexes loaded once, shared, reference-counted);
* open stores, one per URL.

The CLI runs one job on a Runtime; a worker of the service is a Runtime behind
gRPC. :meth:`Runtime.submit` returns a :class:`JobHandle` at once (the job's
source runs on its own thread); :meth:`Runtime.run` waits for the summary.
``start``/``stop`` are idempotent; :meth:`install_signal_handlers` makes SIGTERM
drain (finish the running requests, refuse new ones) and then stop.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from persona.apps.job import (
    Job,
    Progress,
    Request,
    Summary,
    Work,
    dispatch,
    new_request_id,
    register_job,
    unregister_job,
)
from persona.errors import BatchCancelled, PersonaError, PipelineError
from persona.ptf import Pipeline, PipelineSpec, StageSpec

log = logging.getLogger(__name__)


def cgroup_cpu_limit() -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 quota/period), or None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def thread_budget(threads: int = 0) -> int:
    """``threads`` if positive, else the cores this process may use: its CPU affinity, capped by
    the cgroup CPU quota (a container limited to 2.5 CPUs gets 3)."""
    if threads > 0:
        return threads
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _user_error(exc: BaseException) -> BaseException:
    """A stage's error about the user's input file is reported as that error (file and line say
    where), not wrapped in the stage that found it; other stage errors keep their stage context."""
    from persona.errors import ChunkFormatError, DatasetError, InputFormatError, StageError

    cause = exc.__cause__
    if isinstance(exc, StageError) and isinstance(cause, (InputFormatError, DatasetError)) \
            and not isinstance(cause, ChunkFormatError):
        if "stage" in exc.context and "stage" not in cause.context:
            cause.context["stage"] = exc.context["stage"]
        return cause
    return exc


class JobHandle:
    """A submitted request: wait for its summary, cancel it, watch its progress."""

    def __init__(self, job: Job, runtime: "Runtime") -> None:
        self.job = job
        self.request_id = job.request_id
        self.runtime = runtime
        self.submitted_at = time.time()
        self.finished_at: float | None = None
        self.state = "queued"
        self._done = threading.Event()
        self._summary: Summary | None = None
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._batch: Any = None  # the PTF BatchHandle once submitted
        self._callbacks: list[Callable[["JobHandle"], None]] = []
        self._lock = threading.Lock()

    def _finish(self, summary: Summary | None, error: BaseException | None) -> None:
        with self._lock:
            self._summary, self._error = summary, error
            self.finished_at = time.time()
            self.state = "done" if error is None else ("cancelled" if isinstance(error, BatchCancelled)
                                                         else "failed")
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:  # noqa: BLE001 - a callback must not break the runtime
                log.exception("done callback of request %s failed", self.request_id)

    def add_done_callback(self, fn: Callable[["JobHandle"], None]) -> None:
        """Call ``fn(handle)`` once the request finished (at once if it already has)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Summary:
        """The summary; raises the request's error (after its output was cleaned up)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._summary is not None
        return self._summary

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} not finished after {timeout} s")
        return self._error

    def cancel(self) -> bool:
        """Ask the request to stop; its output is removed and ``result()`` raises BatchCancelled."""
        if self._done.is_set():
            return False
        self._cancel.set()
        batch = self._batch
        if batch is not None:
            batch.cancel()
        return True

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def progress(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "state": self.state, "feeds_done": self.job.done_feeds,
                "records_done": self.job.done_records}


class Runtime:
    """Per-process shared state and the runner of jobs (see the module docstring)."""

    def __init__(self, config: Any = None, *, threads: int | None = None, references: Any = None) -> None:
        from persona.config import get_config

        self.config = config if config is not None else get_config()
        self.threads = thread_budget(threads if threads is not None else self.config.align.threads)
        self._lock = threading.Lock()
        self._pipelines: dict[str, Pipeline] = {}
        self._executor: Any = None
        self._compute: Any = None
        self._stores: dict[str, Any] = {}
        self._handles: dict[str, JobHandle] = {}
        self._idle = threading.Condition(self._lock)
        self._state = "running"
        self.references = references if references is not None else _references()

    # -- shared resources ------------------------------------------------------------------
    @property
    def executor(self) -> Any:
        """The aligner executor: one pool of :attr:`threads` threads for every request."""
        with self._lock:
            if self._executor is None:
                from persona.align.executor import AlignerExecutor

                self._executor = AlignerExecutor(self.threads)
            return self._executor

    @property
    def compute(self) -> Any:
        """A pool of :attr:`threads` threads for CPU work items that stages hand out and wait for (the
        thesis' executor pattern: compressing the columns of one chunk in parallel, reading a mate
        file alongside). Tasks are leaves: they never wait on other tasks of the pool."""
        with self._lock:
            if self._compute is None:
                from concurrent.futures import ThreadPoolExecutor

                self._compute = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="runtime-compute")
            return self._compute

    def store(self, url: str) -> Any:
        """The open store of ``url`` (one per URL per runtime)."""
        from persona.storage import open_store

        with self._lock:
            st = self._stores.get(url)
            if st is None or st.closed:
                st = self._stores[url] = open_store(url)
            return st

    def pipeline(self, job: Job) -> Pipeline:
        """The long-lived pipeline of ``job``'s kind (built and started on first use)."""
        with self._lock:
            if self._state not in ("running", "draining"):  # a request accepted before a drain goes on
                raise PipelineError(f"runtime is {self._state}; no new requests")
            key = getattr(job, "kind_key", job.kind)
            p = self._pipelines.get(key)
            if p is None:
                stages = [StageSpec(s.name, dispatch(s.name), replicas=self._replicas(job, s.name, s.replicas))
                          for s in job.stages]
                capacity = getattr(job.request, "capacity", None) or job.capacity
                spec = PipelineSpec.chain(job.kind, stages, capacity=max(1, int(capacity)), credits=None)
                p = self._pipelines[key] = Pipeline(spec).start()
            return p

    def _replicas(self, job: Job, stage: str, default: int) -> int:
        wanted = getattr(job.request, "replicas", None) or {}
        return max(1, int(wanted.get(stage, default)))

    # -- running requests ------------------------------------------------------------------
    def submit(self, request: Request, *, progress: Progress | None = None,
               request_id: str | None = None) -> JobHandle:
        """Plan ``request`` and start it; returns at once. Planning errors raise here."""
        if self._state != "running":
            raise PipelineError(f"runtime is {self._state}; no new requests")
        request = request.resolved(self.config)
        rid = request_id or new_request_id()
        job = request.plan(self, rid)
        job.progress = progress
        handle = JobHandle(job, self)
        with self._lock:
            if self._state != "running":
                raise PipelineError(f"runtime is {self._state}; no new requests")
            self._handles[rid] = handle
        register_job(job)
        t = threading.Thread(target=self._drive, args=(job, handle), name=f"request-{rid[:8]}", daemon=True)
        t.start()
        return handle

    def run(self, request: Request, *, progress: Progress | None = None) -> Summary:
        """Run ``request`` to its end; Ctrl-C cancels it (its output is removed) and re-raises."""
        handle = self.submit(request, progress=progress)
        try:
            return handle.result()
        except KeyboardInterrupt:
            handle.cancel()
            handle.exception()
            raise

    def _drive(self, job: Job, handle: JobHandle) -> None:
        """The request's own thread: begin, feed the pipeline, wait, commit or abort."""
        error: BaseException | None = None
        summary: Summary | None = None
        try:
            handle.state = "running"
            job.begin()
            if handle.cancelled:
                raise BatchCancelled("request cancelled", request=job.request_id)
            outputs = self._feed(job, handle)
            if handle.cancelled:
                raise BatchCancelled("request cancelled", request=job.request_id)
            handle.state = "committing"
            summary = job.commit(outputs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the handle
            error = _user_error(exc)
            try:
                job.abort(exc)
            except BaseException as exc2:  # noqa: BLE001
                log.warning("request %s: cleanup after failure failed: %s", job.request_id, exc2)
        finally:
            unregister_job(job)
            with self._lock:
                self._handles.pop(job.request_id, None)
                self._idle.notify_all()
            handle._finish(summary, error)

    def _feed(self, job: Job, handle: JobHandle) -> list[Any]:
        pipeline = self.pipeline(job)
        if not job.streaming:
            works = [job.work_for(d) for d in job.feeds()]
            if not works:
                return []
            batch = pipeline.submit(works)
            handle._batch = batch
            if handle.cancelled:
                batch.cancel()
            return [w.out for w in self._wait(batch)]
        stream = pipeline.open_batch()
        handle._batch = stream.handle
        if handle.cancelled:
            stream.abort()
        try:
            job.produce(stream.put)
        except PersonaError as exc:
            # An input error at chunk k: the feeds before it go on, so that an error in an
            # earlier chunk (found by a stage) is the one reported, as a sequential run would.
            batch = stream.close()
            try:
                batch.result()
            except BaseException:
                raise
            raise exc
        except BaseException:
            # Interrupted or a bug in the source: stop everything now.
            stream.abort()
            try:
                stream.handle.exception()  # quiescent: no stage of it runs any more
            except BaseException:  # noqa: BLE001
                pass
            raise
        batch = stream.close()
        return [w.out for w in self._wait(batch)]

    @staticmethod
    def _wait(batch: Any) -> list[Work]:
        try:
            return batch.result()
        except BaseException:
            # Interrupted while waiting: cancel, and wait until no stage runs for it
            batch.cancel()
            batch.exception()
            raise

    def handle_of(self, request_id: str) -> JobHandle | None:
        with self._lock:
            return self._handles.get(request_id)

    def handles(self) -> list[JobHandle]:
        with self._lock:
            return list(self._handles.values())

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Runtime":
        """Make sure the runtime accepts requests (it does from construction; pipelines start on
        first use). Idempotent; a stopped runtime cannot restart."""
        with self._lock:
            if self._state == "stopped":
                raise PipelineError("runtime already stopped")
        return self

    def drain(self, timeout: float | None = None) -> None:
        """Refuse new requests and wait for the running ones."""
        with self._lock:
            if self._state == "running":
                self._state = "draining"
            if not self._idle.wait_for(lambda: not self._handles, timeout):
                raise TimeoutError(f"{len(self._handles)} requests still running after {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what runs, stop every pipeline and the executor. Idempotent."""
        with self._lock:
            if self._state == "stopped":
                return
            self._state = "stopping"
            handles = list(self._handles.values())
        for h in handles:
            h.cancel()
        deadline = time.monotonic() + timeout
        for h in handles:
            try:
                h.exception(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("request %s still running at stop", h.request_id)
        with self._lock:
            pipelines, self._pipelines = list(self._pipelines.values()), {}
            executor, self._executor = self._executor, None
            compute, self._compute = self._compute, None
            stores, self._stores = list(self._stores.values()), {}
            self._state = "stopped"
        for p in pipelines:
            p.stop(max(0.1, deadline - time.monotonic()))
        if executor is not None:
            executor.close()
        if compute is not None:
            compute.shutdown(wait=True, cancel_futures=True)
        for st in stores:
            try:
                st.close()
            except Exception:  # noqa: BLE001
                pass

    @property
    def state(self) -> str:
        return self._state

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.drain()
        finally:
            self.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM: drain (finish running requests, refuse new ones), then stop. Main thread only."""

        def on_term(signum: int, frame: object) -> None:
            log.info("SIGTERM: draining %d running requests", len(self.handles()))
            threading.Thread(target=self._drain_then_stop, name="runtime-drain", daemon=True).start()

        signal.signal(signal.SIGTERM, on_term)

    def _drain_then_stop(self) -> None:
        try:
            self.drain()
        finally:
            self.stop()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pipelines = dict(self._pipelines)
        return {"state": self._state, "threads": self.threads,
                "requests": [h.progress() for h in self.handles()],
                "pipelines": {k: p.stats() for k, p in pipelines.items()}}


def _references() -> Any:
    """The process's reference cache: indexes are loaded once per process, whichever runtime asks."""
    from persona.align import reference

    return reference._default_cache


_shared: Runtime | None = None
_shared_lock = threading.Lock()


def default_runtime(threads: int = 0) -> Runtime:
    """The process's one shared Runtime (the library's convenience functions run on it), created
    on first use with ``threads`` aligner threads (0: the CPU budget). Its pool is the process's
    pool: a later call asking for another size shares it rather than oversubscribing the cores
    (make a :class:`Runtime` of your own for a different budget)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.state == "stopped":
            _shared = Runtime(threads=threads or None)
        elif threads and threads != _shared.threads:
            log.debug("process runtime has %d threads; a request for %d shares them", _shared.threads, threads)
        return _shared


def run_request(request: Request, *, threads: int = 0, runtime: Runtime | None = None,
                progress: Progress | None = None) -> Summary:
    """Run ``request`` on ``runtime``, else on the shared runtime of ``threads`` threads."""
    return (runtime or default_runtime(threads)).run(request, progress=progress)
