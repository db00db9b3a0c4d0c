"""Build, run and feed a pipeline: :class:`Pipeline` and :class:`BatchHandle`.

Call order: ``Pipeline(spec)`` validates and builds (no threads yet);
``start()`` starts every stage and transfer thread; ``submit(feeds)`` any
number of times, from any threads; ``drain()`` refuses new batches and waits
for the submitted ones; ``stop()`` closes every gate, joins the threads and
fails what is still pending. ``start``/``stop`` are idempotent and the
pipeline is a context manager (``__exit__`` stops, draining first unless the
block raised).

A failed or cancelled batch finishes only once it is *quiescent*: no stage
call (at any level, local pipelines included) is running on one of its feeds,
so its handle's ``result()`` raises only after every side effect of its stage
calls happened, and no stage call of it starts afterwards. The bookkeeping is
:class:`~persona.ptf.occupancy.Occupancy`; the hot path adds two list stores
per stage call.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from persona.errors import BatchCancelled, PersonaError, PipelineError
from persona.ptf.channel import Gate
from persona.ptf.credits import CreditLinkState
from persona.ptf.gate import GateState
from persona.ptf.local import LocalReplica
from persona.ptf.metadata import new_batch_id
from persona.ptf.occupancy import FAILER, Occupancy
from persona.ptf.pool import dispose
from persona.ptf.spec import LocalPipelineSpec, PipelineSpec, Plan, plan, resolve_callable
from persona.ptf.stage import StageRunner

NEW, RUNNING, DRAINING, STOPPED = "new", "running", "draining", "stopped"


class BatchHandle:
    """One submitted batch. ``result()`` gives the egress payloads ordered by position:
    element k is the result of input feed k (or, after an aggregate of S, of inputs
    kS..kS+S-1; after a local pipeline, a list with one result per partition member).

    A failed or cancelled batch is *done* only once quiescent: when ``result()``
    raises (or ``exception()`` returns) its error, no stage call on any of its feeds
    is running and none will start, so the caller may clean up its side effects.
    """

    def __init__(self, pipeline: Pipeline, bid: int, arity: int, expected: int) -> None:
        self._pipeline = pipeline
        self.id = bid
        self.arity = arity
        self.expected = expected
        self.submitted_at = time.perf_counter()
        self.finished_at: float | None = None
        self._done = threading.Event()
        self._result: list[Any] | None = None
        self._error: PersonaError | None = None

    def _finish(self, result: list[Any] | None, error: PersonaError | None) -> None:
        self._result, self._error = result, error
        self.finished_at = time.perf_counter()
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> list[Any]:
        """Wait for the batch; its results, or raise StageError / BatchCancelled /
        PipelineError (the error names stage, batch and feed) once the batch is quiescent.
        TimeoutError on timeout."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"batch {self.id} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self, timeout: float | None = None) -> PersonaError | None:
        """Wait (for quiescence if it failed); the batch's error or None."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"batch {self.id} not finished after {timeout} s")
        return self._error

    def cancel(self) -> bool:
        """Cancel: drop its feeds at every gate; other batches go on. Returns at once (False if
        the batch already finished or failed); ``result()`` raises BatchCancelled once the
        stage calls already running on its feeds are over."""
        return self._pipeline._fail(self.id, BatchCancelled("batch cancelled", batch=self.id))

    def progress(self) -> tuple[int, int]:
        """``(results at the egress, expected results)``."""
        if self._done.is_set():
            return (self.expected, self.expected) if self._error is None else (0, self.expected)
        got = self._pipeline._egress.batch_progress(self.id)
        return (0 if got is None else got[0], self.expected)

    @property
    def latency(self) -> float | None:
        """Seconds from submit to finish."""
        return None if self.finished_at is None else self.finished_at - self.submitted_at


class _Level:
    """Gates and stage runners of one chain (the outer pipeline or one local replica)."""

    def __init__(self, p: Plan, prefix: str, pipeline: Pipeline) -> None:
        spec = p.spec
        links = {ln.upstream: ln for ln in spec.credit_links}
        self.gates: dict[str, Gate] = {}
        for g in p.gates:
            mode, size = p.modes[g.id]
            link = CreditLinkState(links[g.id].credits) if g.id in links else None
            self.gates[g.id] = Gate(GateState(prefix + g.id, mode, size=size,
                                              capacity=g.capacity, link=link))
        for ln in spec.credit_links:
            self.gates[ln.downstream].on_closed = self.gates[ln.upstream].release_credits
        self.stages: list[StageRunner] = []
        self.replicas: list[LocalReplica] = []
        self.levels: list[_Level] = []
        for c in p.consumers:
            if isinstance(c, LocalPipelineSpec):
                inner = plan(c.pipeline, local=True)
                for r in range(c.replicas):
                    lv = _Level(inner, f"{prefix}{c.id}/{r}/", pipeline)
                    self.levels.append(lv)
                    self.replicas.append(LocalReplica(
                        f"{prefix}{c.id}/{r}", self.gates[c.input], lv.gates[inner.spec.ingress],
                        lv.gates[inner.spec.egress], self.gates[c.output], c.credits,
                        pipeline._fail, pipeline._dropped))
            else:
                fn = resolve_callable(c.fn, f"{spec.id}.{c.id}.fn")
                assert c.input is not None and c.output is not None
                self.stages.append(StageRunner(
                    prefix + c.id, fn, self.gates[c.input], self.gates[c.output],
                    replicas=c.replicas, aggregate=bool(c.aggregate), fail=pipeline._fail,
                    dropped=pipeline._dropped, occupancy=pipeline._occupancy,
                    left=pipeline._left))

    def all_gates(self) -> list[Gate]:
        return [*self.gates.values(), *(g for lv in self.levels for g in lv.all_gates())]

    def all_stages(self) -> list[StageRunner]:
        return [*self.stages, *(s for lv in self.levels for s in lv.all_stages())]

    def all_replicas(self) -> list[LocalReplica]:
        return [*self.replicas, *(r for lv in self.levels for r in lv.all_replicas())]


class Pipeline:
    """A running PTF pipeline built from a :class:`PipelineSpec` (validated here)."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self._plan = plan(spec)
        self._dropped: set[int] = set()
        self._occupancy = Occupancy()  # guarded by _lock (except the replicas' own slots)
        self._handles: dict[int, BatchHandle] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._state = NEW
        self._level = _Level(self._plan, "", self)
        self._ingress = self._level.gates[spec.ingress]
        self._egress = self._level.gates[spec.egress]
        self._egress.on_complete = self._deliver
        self._gates = self._level.all_gates()
        self._stages = self._level.all_stages()
        self._replicas = self._level.all_replicas()
        self.batches_done = 0
        self.batches_failed = 0

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Pipeline:
        """Start all threads. Idempotent; a stopped pipeline cannot restart."""
        with self._lock:
            if self._state == STOPPED:
                raise PipelineError("pipeline already stopped", pipeline=self.spec.id)
            if self._state != NEW:
                return self
            self._state = RUNNING
        for s in self._stages:
            s.start()
        for r in self._replicas:
            r.start()
        return self

    def drain(self, timeout: float | None = None) -> None:
        """Refuse new batches and wait until every submitted batch finished (failed ones
        included: they finish once quiescent)."""
        with self._lock:
            if self._state == RUNNING:
                self._state = DRAINING
            if not self._idle.wait_for(lambda: not self._handles, timeout):
                raise TimeoutError(f"pipeline {self.spec.id!r}: {len(self._handles)} batches "
                                   f"still running after {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Close every gate, join threads (up to ``timeout`` s in all), then finish pending
        batches: failed ones with their error, the others with PipelineError. A stage call
        still running after the timeout may outlive its batch's handle. Idempotent."""
        with self._lock:
            if self._state == STOPPED:
                return
            self._state = STOPPED
            pending = [(h, self._occupancy.forget(h.id)) for h in self._handles.values()]
            self._handles.clear()
            self._idle.notify_all()
        for r in self._replicas:
            r.close()
        for g in self._gates:
            g.close()
        deadline = time.monotonic() + timeout
        for s in self._stages:
            s.join(max(0.0, deadline - time.monotonic()))
        for r in self._replicas:
            r.join(max(0.0, deadline - time.monotonic()))
        for h, error in pending:
            h._finish(None, error or PipelineError("pipeline stopped", pipeline=self.spec.id,
                                                   batch=h.id))

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None and self._state in (RUNNING, DRAINING):
                self.drain()
        finally:
            self.stop()

    # -- batches ---------------------------------------------------------------
    def submit(self, feeds: Iterable[Any]) -> BatchHandle:
        """Batch enqueue at the ingress: one feed per item (its payload). Returns a handle."""
        payloads = list(feeds)
        n = len(payloads)
        bid = new_batch_id()
        h = BatchHandle(self, bid, n, self._expected(n))
        with self._lock:
            if self._state != RUNNING:
                raise PipelineError(f"pipeline is {self._state}; cannot submit",
                                    pipeline=self.spec.id)
            if n == 0:
                h._finish([], None)
                return h
            self._handles[bid] = h
        self._ingress.batch_enqueue(payloads, bid)
        return h

    def _expected(self, n: int) -> int:
        return self.spec.egress_arity(n) if n else 0

    def _deliver(self, bid: int) -> None:
        try:
            feeds = self._egress.batch_dequeue(bid, timeout=0)
        except PipelineError:  # dropped between completion and delivery: it was failed
            return
        with self._lock:
            failed = bid in self._dropped  # failed meanwhile: it finishes when quiescent
            h = None if failed else self._handles.pop(bid, None)
            self.batches_done += h is not None
            self._idle.notify_all()
        if failed:
            for f in feeds:
                dispose(f.payload)
            return
        if h is not None:
            h._finish([f.payload for f in feeds], None)

    def _fail(self, root: int, error: PersonaError) -> bool:
        """Fail user batch ``root`` with ``error`` and drop its feeds everywhere; its handle
        finishes once no stage call runs on its feeds (see :meth:`_left`). Never blocks on
        stage calls. Returns False if the batch had already finished or failed. Other
        batches are untouched."""
        with self._lock:
            if root not in self._handles or root in self._dropped:
                return False
            self._dropped.add(root)  # from here no stage call of root starts
            self.batches_failed += 1
            self._occupancy.fail(root, error)  # records the calls still running
        for g in reversed(self._gates):  # downstream first: a credit returns last
            g.drop(root)
        for r in self._replicas:
            r.credits.release_root(root)
        self._left(root, FAILER)
        return True

    def _left(self, root: int, slot: int) -> None:
        """Stage slot ``slot`` (or the failer) is done with failed batch ``root``; finish its
        handle if that made the batch quiescent."""
        with self._lock:
            error = self._occupancy.leave(root, slot)
            if error is None:
                return
            h = self._handles.pop(root, None)
            self._idle.notify_all()
        if h is not None:
            h._finish(None, error)

    # -- introspection ---------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Metrics snapshot: per gate depth/open batches/credits, per stage busy time and
        feeds, per running batch progress. Plain data, cheap enough to read at scrape time."""
        with self._lock:
            handles = list(self._handles.values())
            quiescing = self._occupancy.snapshot()
        return {
            "pipeline": self.spec.id,
            "state": self._state,
            "gates": [g.snapshot() for g in self._gates],
            "stages": [s.stats() for s in self._stages],
            "local_pipelines": [{"id": r.label, "credits_available": r.credits.available,
                                 "partitions": r.partitions} for r in self._replicas],
            "batches": {h.id: h.progress() for h in handles},
            "batches_done": self.batches_done,
            "batches_failed": self.batches_failed,
            "batches_quiescing": quiescing,
        }

    def check(self) -> None:
        """Assert every gate's accounting invariants (tests)."""
        for g in self._gates:
            g.check()
        with self._lock:
            self._occupancy.check()

    @property
    def gates(self) -> list[Gate]:
        return list(self._gates)

    @property
    def state(self) -> str:
        return self._state
