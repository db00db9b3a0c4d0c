"""Build, run and feed a pipeline: :class:`Pipeline`, :class:`BatchHandle`, :class:`StreamingBatch`.

Call order: ``Pipeline(spec)`` validates and builds (no threads yet);
``start()`` starts every stage and transfer thread; ``submit(feeds)`` or
``open_batch()`` any number of times, from any threads; ``drain()`` refuses
new batches and waits for the submitted ones (open streams included: they
finish once closed); ``stop()`` closes every gate, joins the threads and
fails what is still pending. ``start``/``stop`` are idempotent and the
pipeline is a context manager (``__exit__`` stops, draining first unless the
block raised).

Streaming ingress: ``stream = pipeline.open_batch()`` is a batch whose arity is
known only when its source ends. ``stream.put(payload)`` enqueues the next feed
at once (it flows through the stages before the stream is closed);
``stream.close()`` declares the arity (the number of puts) at every gate and
returns the :class:`BatchHandle`; ``stream.abort()`` fails it.

A failed or cancelled batch finishes only once it is *quiescent*: no stage
call (at any level, local pipelines included) is running on one of its feeds,
so its handle's ``result()`` raises only after every side effect of its stage
calls happened, and no stage call of it starts afterwards. The bookkeeping is
:class:`~persona.ptf.batches.BatchTable` (with its
:class:`~persona.ptf.occupancy.Occupancy`), pure code under the pipeline's
lock; the hot path adds one list store per feed and stage, under the gate lock
it holds anyway, and one outside. When a failed batch is quiescent no feed of
it can arrive anywhere, so every gate forgets it: a finished batch leaves no
state behind (:meth:`Pipeline.state_entries` is 0 when the pipeline is idle).

Lock order: the pipeline's lock may be held while calling into a gate (ingress
enqueue by producers, declarations, forgetting); a gate never takes the
pipeline's lock while holding its own (callbacks run after it is released).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from persona.errors import BatchCancelled, PersonaError, PipelineError
from persona.ptf.batches import BatchTable
from persona.ptf.credits import CreditLink
from persona.ptf.feed import Feed, aggregate_arity, new_batch_id
from persona.ptf.gate import Gate, GateState
from persona.ptf.local import LocalReplica
from persona.ptf.occupancy import FAILER, Occupancy
from persona.ptf.pool import dispose
from persona.ptf.spec import LocalPipelineSpec, PipelineSpec, Plan, plan, resolve_callable
from persona.ptf.stage import StageRunner

log = logging.getLogger("persona.ptf")

NEW, RUNNING, DRAINING, STOPPED = "new", "running", "draining", "stopped"


class BatchHandle:
    """One submitted batch. ``result()`` gives the egress payloads ordered by position:
    element k is the result of input feed k (or, after an aggregate of S, of inputs
    kS..kS+S-1; after a local pipeline, a list with one result per partition member).

    A failed or cancelled batch is *done* only once quiescent: when ``result()``
    raises (or ``exception()`` returns) its error, no stage call on any of its feeds
    is running and none will start, so the caller may clean up its side effects.

    For a streaming batch ``arity`` and ``expected`` are None until its stream closes.
    """

    def __init__(self, pipeline: Pipeline, bid: int, arity: int | None,
                 expected: int | None) -> None:
        self._pipeline = pipeline
        self.id = bid
        self.arity = arity
        self.expected = expected
        self.submitted_at = time.perf_counter()
        self.finished_at: float | None = None
        self._done = threading.Event()
        self._result: list[Any] | None = None
        self._error: PersonaError | None = None
        self._callbacks: list[Callable[[BatchHandle], object]] | None = []
        self._cb_lock = threading.Lock()

    def _finish(self, result: list[Any] | None, error: PersonaError | None) -> None:
        self._result, self._error = result, error
        self.finished_at = time.perf_counter()
        with self._cb_lock:
            callbacks, self._callbacks = self._callbacks, None
            self._done.set()
        for fn in callbacks or ():
            self._call(fn)

    def _call(self, fn: Callable[[BatchHandle], object]) -> None:
        try:
            fn(self)
        except Exception:  # a callback must not break the thread that finished the batch
            log.exception("done callback %r of batch %s raised", fn, self.id)

    def add_done_callback(self, fn: Callable[[BatchHandle], object]) -> None:
        """Call ``fn(handle)`` once the batch is done (finished, failed and quiescent, or
        cancelled and quiescent), from whichever thread finishes it; at once, in this
        thread, if it is done already. Exceptions ``fn`` raises are logged, not raised.
        An asyncio server awaits a batch without a thread::

            fut = loop.create_future()
            handle.add_done_callback(lambda h: loop.call_soon_threadsafe(
                lambda: fut.done() or fut.set_result(h)))
            results = (await fut).result(0)
        """
        with self._cb_lock:
            if self._callbacks is not None:
                self._callbacks.append(fn)
                return
        self._call(fn)

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

    def progress(self) -> tuple[int, int | None]:
        """``(results at the egress, expected results)``; expected is None while a
        streaming batch is open."""
        if self._done.is_set():
            return (self.expected, self.expected) if self._error is None else (0, self.expected)
        got = self._pipeline._egress.batch_progress(self.id)
        return (0 if got is None else got[0], self.expected)

    @property
    def latency(self) -> float | None:
        """Seconds from submit to finish."""
        return None if self.finished_at is None else self.finished_at - self.submitted_at


class StreamingBatch:
    """A batch fed one payload at a time, its arity declared when the source ends
    (:meth:`Pipeline.open_batch`). Feeds flow through the pipeline as they are put.
    Thread-safe. A context manager: closes on success, aborts if the block raised."""

    def __init__(self, pipeline: Pipeline, handle: BatchHandle) -> None:
        self._pipeline = pipeline
        self.handle = handle
        self.id = handle.id
        self._count = 0  # written under the pipeline's lock

    def put(self, payload: Any) -> int:
        """Enqueue the next feed (its position = the number of puts before it; returned).
        Never blocks. PipelineError if the batch failed, was cancelled or its stream is
        closed: the producer should stop."""
        return self._pipeline._put(self, payload)

    def close(self) -> BatchHandle:
        """The source ended: the arity is the number of puts. Returns the handle (also if the
        batch already failed: its ``result()`` raises). Idempotent."""
        self._pipeline._close(self.handle)
        return self.handle

    def abort(self, error: BaseException | None = None) -> bool:
        """Fail the batch with ``error`` (a PersonaError as is, another exception wrapped in
        a PipelineError), or cancel it (BatchCancelled) without one. False if it had already
        finished or failed."""
        if error is None:
            err: PersonaError = BatchCancelled("batch cancelled", batch=self.id)
        elif isinstance(error, PersonaError):
            err = error
        else:
            err = PipelineError(f"batch aborted by its producer: {type(error).__name__}: "
                                f"{error}", batch=self.id)
            err.__cause__ = error
        return self._pipeline._fail(self.id, err)

    @property
    def count(self) -> int:
        """Feeds put so far."""
        return self._count

    def __enter__(self) -> StreamingBatch:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)
            self.close()


class _Level:
    """Gates and stage runners of one chain (the outer pipeline or one local replica)."""

    def __init__(self, p: Plan, prefix: str, pipeline: Pipeline) -> None:
        spec = p.spec
        links = {ln.upstream: ln for ln in spec.credit_links}
        self.gates: dict[str, Gate] = {}
        for g in p.gates:
            mode, size = p.modes[g.id]
            link = CreditLink(links[g.id].credits) if g.id in links else None
            self.gates[g.id] = Gate(GateState(prefix + g.id, mode, size=size,
                                              capacity=g.capacity, link=link))
        for ln in spec.credit_links:
            self.gates[ln.downstream].on_closed = self.gates[ln.upstream].release_credits
        self.stages: list[StageRunner] = []
        self.replicas: list[LocalReplica] = []
        self.levels: list[_Level] = []
        table = pipeline._table
        for c in p.consumers:
            if isinstance(c, LocalPipelineSpec):
                inner = plan(c.pipeline, local=True)
                for r in range(c.replicas):
                    lv = _Level(inner, f"{prefix}{c.id}/{r}/", pipeline)
                    self.levels.append(lv)
                    self.replicas.append(LocalReplica(
                        f"{prefix}{c.id}/{r}", self.gates[c.input], lv.gates[inner.spec.ingress],
                        lv.gates[inner.spec.egress], self.gates[c.output], c.credits,
                        pipeline._fail, table.dropped, table.occupancy, pipeline._left))
            else:
                fn = resolve_callable(c.fn, f"{spec.id}.{c.id}.fn")
                assert c.input is not None and c.output is not None
                self.stages.append(StageRunner(
                    prefix + c.id, fn, self.gates[c.input], self.gates[c.output],
                    replicas=c.replicas, aggregate=bool(c.aggregate), fail=pipeline._fail,
                    dropped=table.dropped, occupancy=table.occupancy, left=pipeline._left))

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
        self._table = BatchTable()  # guarded by _lock (except the replicas' own slots)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._state = NEW
        self._level = _Level(self._plan, "", self)
        self._ingress = self._level.gates[spec.ingress]
        self._egress = self._level.gates[spec.egress]
        self._egress.on_complete = self._deliver
        self._gates = self._level.all_gates()
        self._outer = [self._level.gates[g.id] for g in self._plan.gates]  # chain order
        self._sizes = [c.partition_size if isinstance(c, LocalPipelineSpec) else c.aggregate or 1
                       for c in self._plan.consumers]  # arity at gate i+1 = ceil(at gate i / S)
        self._stages = self._level.all_stages()
        self._replicas = self._level.all_replicas()

    # compatibility views of the batch table
    @property
    def _dropped(self) -> set[int]:
        return self._table.dropped

    @property
    def _occupancy(self) -> Occupancy:
        return self._table.occupancy

    @property
    def _handles(self) -> dict[int, BatchHandle]:
        return {b: e.handle for b, e in self._table.entries.items()}

    @property
    def batches_done(self) -> int:
        return self._table.done

    @property
    def batches_failed(self) -> int:
        return self._table.failed

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
        included: they finish once quiescent; open streams once closed)."""
        with self._lock:
            if self._state == RUNNING:
                self._state = DRAINING
            if not self._idle.wait_for(lambda: not self._table.entries, timeout):
                raise TimeoutError(f"pipeline {self.spec.id!r}: {len(self._table.entries)} "
                                   f"batches still running after {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Close every gate, join threads (up to ``timeout`` s in all), then finish pending
        batches: failed ones with their error, the others with PipelineError. A stage call
        still running after the timeout may outlive its batch's handle. Idempotent."""
        with self._lock:
            if self._state == STOPPED:
                return
            self._state = STOPPED
            pending = self._table.stop()
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
    def _arities(self, n: int) -> list[int]:
        """Arity of a batch of ``n`` feeds at each outer gate, ingress to egress."""
        out = [n]
        for size in self._sizes:
            n = aggregate_arity(n, size) if size != 1 else n
            out.append(n)
        return out

    def _refuse(self) -> None:
        raise PipelineError(f"pipeline is {self._state}; cannot submit", pipeline=self.spec.id)

    def submit(self, feeds: Iterable[Any]) -> BatchHandle:
        """Batch enqueue at the ingress: one feed per item (its payload). Returns a handle."""
        payloads = list(feeds)
        n = len(payloads)
        bid = new_batch_id()
        h = BatchHandle(self, bid, n, self._expected(n))
        meta = ((bid, n),)
        batch = [Feed(meta, (i,), p) for i, p in enumerate(payloads)]
        with self._lock:
            if self._state != RUNNING:
                self._refuse()
            if n == 0:
                h._finish([], None)
                return h
            self._table.open(bid, h, n)
            # Under the lock, so a cancel is ordered before or after the whole enqueue
            # (never in between): see persona.ptf.occupancy. The ingress never blocks.
            self._ingress.enqueue_many(batch)
        return h

    def open_batch(self) -> StreamingBatch:
        """Open a streaming batch: ``put`` payloads as the source yields them (they flow at
        once), ``close()`` when it ends (declares the arity), ``abort()`` to fail it."""
        bid = new_batch_id()
        h = BatchHandle(self, bid, None, None)
        with self._lock:
            if self._state != RUNNING:
                self._refuse()
            self._table.open(bid, h, None)
        return StreamingBatch(self, h)

    def _put(self, stream: StreamingBatch, payload: Any) -> int:
        bid = stream.id
        with self._lock:
            pos = self._table.put(bid)  # raises once the batch failed: the producer stops
            stream._count = pos + 1
            self._ingress.enqueue(Feed(((bid, None),), (pos,), payload))
        return pos

    def _close(self, h: BatchHandle) -> None:
        bid = h.id
        complete = False
        error: PipelineError | None = None
        with self._lock:
            arity = self._table.close(bid)
            if arity is None:  # failed, finished or closed before
                return
            arities = self._arities(arity)
            h.arity, h.expected = arity, arities[-1]
            if arity == 0:
                self._table.finish_empty(bid)
                self._idle.notify_all()
            else:
                # Downstream first: a feed carrying a known arity then only meets gates
                # that know it already (see persona.ptf.gate_state).
                try:
                    for gate, a in zip(reversed(self._outer), reversed(arities)):
                        complete = gate.declare(bid, a) or complete
                except PipelineError as e:  # accounting violation: fail this batch only
                    error = e
        if arity == 0:
            h._finish([], None)
        elif error is not None:
            self._fail(bid, error)
        elif complete:
            self._deliver(bid)

    def _expected(self, n: int) -> int:
        return self._arities(n)[-1] if n else 0

    def _deliver(self, bid: int) -> None:
        try:
            feeds = self._egress.batch_dequeue(bid, timeout=0)
        except PipelineError:  # dropped between completion and delivery: it was failed
            return
        with self._lock:
            h = self._table.deliver(bid)  # None: failed meanwhile, it finishes when quiescent
            if h is not None:
                self._idle.notify_all()
        if h is None:
            for f in feeds:
                dispose(f.payload)
            return
        h._finish([f.payload for f in feeds], None)

    def _fail(self, root: int, error: PersonaError) -> bool:
        """Fail user batch ``root`` with ``error`` and drop its feeds everywhere; its handle
        finishes once no stage call runs on its feeds (see :meth:`_left`). Never blocks on
        stage calls. Returns False if the batch had already finished or failed. Other
        batches are untouched."""
        with self._lock:
            if not self._table.fail(root, error):  # from here no stage call of root starts
                return False
        for g in reversed(self._gates):  # downstream first: a credit returns last
            g.drop(root)
        for r in self._replicas:
            r.release_root(root)
        with self._lock:
            self._table.record(root)  # feeds taken before the drops are all published now
        self._left(root, FAILER)
        return True

    def _left(self, root: int, slot: int) -> None:
        """Slot ``slot`` (or the failer) is done with failed batch ``root``; finish its
        handle if that made the batch quiescent, and make every gate forget it."""
        with self._lock:
            done = self._table.leave(root, slot)
            if done is None:
                return
            for g in self._gates:  # no feed of root can arrive any more
                g.forget(root)
            self._idle.notify_all()
        h, error = done
        h._finish(None, error)

    # -- introspection ---------------------------------------------------------
    def state_entries(self) -> int:
        """Per-batch entries held anywhere in the pipeline: live batches, failed batches
        waiting to be quiescent, open or dropped batches at every gate, credits lent by
        every link. 0 once the pipeline is idle: finished batches leave nothing behind."""
        with self._lock:
            n = self._table.state_entries()
        n += sum(g.state_entries() for g in self._gates)
        return n + sum(r.state_entries() for r in self._replicas)

    def stats(self) -> dict[str, Any]:
        """Metrics snapshot: per gate depth/open batches/credits, per stage busy time and
        feeds, per running batch progress. Plain data, cheap enough to read at scrape time."""
        with self._lock:
            handles = self._table.handles()
            quiescing = self._table.occupancy.snapshot()
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
            "state_entries": self.state_entries(),
        }

    def check(self) -> None:
        """Assert every gate's accounting invariants (tests)."""
        for g in self._gates:
            g.check()
        with self._lock:
            self._table.check()

    @property
    def gates(self) -> list[Gate]:
        return list(self._gates)

    @property
    def state(self) -> str:
        return self._state
