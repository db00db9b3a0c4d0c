"""Gates (thesis §4.3.2–4.3.3): the threaded :class:`Gate`.

A gate is its pure bookkeeping, :class:`~persona.ptf.gate_state.GateState`
(buffer, per-batch accounting, every operation as a non-blocking ``try_*``
method; re-exported here), behind one lock and two conditions.

Operations are served under one lock, so they are first-come-first-served in
lock order (CPython's lock is not strictly fair; Condition waiters are woken
FIFO). Every blocking call takes an optional timeout and raises
:class:`GateClosed` once the gate is closed, so no thread outlives
:meth:`Pipeline.stop`. Events that touch another gate (a closed batch returns
a credit upstream) are delivered after the lock is released: no thread ever
holds two gate locks, so gates cannot deadlock on each other's locks.

Lock order: a pipeline may call into a gate while holding its own lock (the
ingress enqueue of a streaming put, declarations, forgetting a dropped batch);
a gate never calls out while holding its lock, except to release pooled
buffers (whose locks are leaves).

A dequeue may *publish* its taker: with ``hold=(slots, k)`` the root id of what
it returns is stored in ``slots[k]`` under the gate lock, atomically with the
dequeue, so a failer that has dropped a batch at this gate and then scans the
slots sees every thread still holding one of the batch's feeds (see
:mod:`persona.ptf.occupancy`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from persona.errors import PipelineError
from persona.ptf.credits import CreditLink
from persona.ptf.feed import Feed, Partition, new_batch_id, push_partition
from persona.ptf.gate_state import (AGGREGATE, BATCH, COMPLETE, DISCARDED, ENQUEUED, MODES, PLAIN,
                                    BatchRecord, GateState)
from persona.ptf.pool import dispose

__all__ = ["AGGREGATE", "BATCH", "COMPLETE", "DISCARDED", "ENQUEUED", "MODES", "PLAIN",
           "BatchRecord", "Gate", "GateClosed", "GateState", "GateTimeout", "Hold"]

Hold = tuple[list[int], int]
"""``(slots, k)``: where a dequeue publishes the root id of what it took."""


class GateClosed(PipelineError):
    """The gate was closed (pipeline stopping) while an operation waited."""


class GateTimeout(PipelineError, TimeoutError):
    """A blocking gate operation did not complete within its timeout."""


class Gate:
    """A thread-safe gate. ``on_closed(ids)`` is called (outside the lock) with the ids of
    batches this gate closed; ``on_complete(bid)`` when a batch-mode gate holds a whole batch."""

    def __init__(self, state: GateState) -> None:
        self.state = state
        self.id = state.gate_id
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._writable = threading.Condition(self._lock)
        # Threads waiting on each condition (changed under the lock): a feed moving through a
        # gate nobody waits on skips Condition.notify, which costs a lock probe per call.
        self._readers = 0
        self._writers = 0
        self._closed = False
        self.on_closed: Callable[[list[int]], None] | None = None
        self.on_complete: Callable[[int], None] | None = None

    # -- producer side -------------------------------------------------------
    def enqueue(self, feed: Feed, timeout: float | None = None) -> None:
        """Insert one feed, waiting for space if the gate has a capacity."""
        with self._lock:
            st = self.state
            if st.capacity is not None and st.buffered >= st.capacity:
                self._wait(self._writable, st.full, timeout)
            res = st.enqueue(feed)
            if self._readers:
                self._readable.notify()
        if res:
            if res == COMPLETE and self.on_complete is not None:
                self.on_complete(feed.meta[-1][0])
            elif res == DISCARDED:
                dispose(feed.payload)

    def enqueue_many(self, feeds: list[Feed]) -> None:
        """Insert a whole batch at once (batch / partition enqueue); never waits:
        such gates have no capacity (the builder enforces it)."""
        complete: list[int] = []
        with self._lock:
            st = self.state
            for f in feeds:
                res = st.enqueue(f)
                if res == COMPLETE:
                    complete.append(f.meta[-1][0])
                elif res == DISCARDED:
                    dispose(f.payload)  # pool locks are leaves: safe under the gate lock
            self._readable.notify_all()
        if self.on_complete is not None:
            for bid in complete:
                self.on_complete(bid)

    def batch_enqueue(self, payloads: list[Any], bid: int | None = None) -> int:
        """Ingress batch enqueue: one feed per payload, metadata ``((bid, len),)``; returns
        the batch id (a fresh one unless given). An empty batch enqueues nothing."""
        bid = new_batch_id() if bid is None else bid
        meta = ((bid, len(payloads)),)
        self.enqueue_many([Feed(meta, (i,), p) for i, p in enumerate(payloads)])
        return bid

    def partition_enqueue(self, part: Partition, pid: int | None = None) -> int:
        """Local pipeline partition enqueue: push a ``(pid, n)`` row; returns ``pid``."""
        pid = new_batch_id() if pid is None else pid
        self.enqueue_many(push_partition(part, pid))
        return pid

    # -- consumer side -------------------------------------------------------
    def _wait(self, cond: threading.Condition, blocked: Callable[[], bool],
              timeout: float | None) -> None:
        # Called with the lock held; returns with it held and ``blocked()`` False.
        reader = cond is self._readable
        if reader:
            self._readers += 1
        else:
            self._writers += 1
        try:
            # ``blocked()`` of a dequeue *takes* the feed when it returns False: call it once
            # per wake-up and never again after it succeeded.
            if timeout is None:
                while blocked():
                    if self._closed:
                        raise GateClosed("gate closed", gate=self.id)
                    cond.wait()
            else:
                deadline = time.monotonic() + timeout
                while blocked():
                    if self._closed:
                        raise GateClosed("gate closed", gate=self.id)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise GateTimeout("gate operation timed out", gate=self.id)
                    cond.wait(left)
        finally:
            if reader:
                self._readers -= 1
            else:
                self._writers -= 1

    def _dequeue_with(self, op: Callable[[], Any], timeout: float | None,
                      hold: Hold | None = None, many: bool = False) -> Any:
        with self._lock:
            got = op()
            if got is None:
                box: list[Any] = []

                def blocked() -> bool:
                    r = op()
                    if r is None:
                        return True
                    box.append(r)
                    return False

                self._wait(self._readable, blocked, timeout)
                got = box[0]
            if hold is not None:  # under the lock: see the module docstring
                hold[0][hold[1]] = (got[0] if many else got).meta[0][0]
            if self._writers:
                self._writable.notify()
            closed = self.state.take_closed() if self.state.closed_batches else None
        if closed and self.on_closed is not None:
            self.on_closed(closed)
        return got

    def _mode(self, mode: str, op: str) -> None:
        if self.state.mode != mode:
            raise PipelineError(f"{op} on a gate serving {self.state.mode} dequeues",
                                gate=self.id)

    def dequeue(self, timeout: float | None = None, hold: Hold | None = None) -> Feed:
        """Plain dequeue (blocks until a feed of an admissible batch is buffered)."""
        if self.state.mode != PLAIN:
            self._mode(PLAIN, "plain dequeue")
        return self._dequeue_with(self.state.try_dequeue, timeout, hold)

    def aggregate_dequeue(self, timeout: float | None = None, hold: Hold | None = None) -> Feed:
        """Aggregate dequeue of the gate's configured size."""
        self._mode(AGGREGATE, "aggregate dequeue")
        return self._dequeue_with(self.state.try_aggregate, timeout, hold)

    def partition_dequeue(self, timeout: float | None = None,
                          hold: Hold | None = None) -> Partition:
        """Partition dequeue: the next group of this (global-side) gate as a Partition."""
        self._mode(AGGREGATE, "partition dequeue")
        return self._dequeue_with(self.state.try_partition, timeout, hold)

    def batch_dequeue(self, bid: int, timeout: float | None = None) -> list[Feed]:
        """Egress batch dequeue by id: every feed of batch ``bid`` in position order."""
        self._mode(BATCH, "batch dequeue")
        return self._dequeue_with(lambda: self.state.try_take(bid), timeout)

    def batch_dequeue_any(self, timeout: float | None = None,
                          hold: Hold | None = None) -> list[Feed]:
        """Dequeue the oldest complete batch (local pipeline partition dequeue)."""
        self._mode(BATCH, "batch dequeue")
        return self._dequeue_with(self.state.try_take_any, timeout, hold, many=True)

    # -- control -------------------------------------------------------------
    def release_credits(self, bids: list[int]) -> None:
        """A downstream gate closed these batches: return their credits (this gate is U)."""
        link = self.state.link
        if link is None:
            return
        with self._lock:
            n = sum(1 for b in bids if link.release(b))
            if n:
                self._readable.notify_all()

    def drop(self, root: int) -> list[int]:
        """Drop user batch ``root`` here (failure or cancel); wakes waiters."""
        with self._lock:
            ids = self.state.drop(root)
            closed = self.state.take_closed() if self.state.closed_batches else None
            garbage, self.state.garbage = self.state.garbage, []
            self._readable.notify_all()
            self._writable.notify_all()
        for f in garbage:
            dispose(f.payload)
        if closed and self.on_closed is not None:
            self.on_closed(closed)
        return ids

    def declare(self, bid: int, arity: int, root: int | None = None) -> bool:
        """Declare the arity of open (streaming) batch ``bid`` here: completes its short last
        group, closes it if all its feeds already left (``on_closed``), wakes waiters.
        Returns True if this batch-mode gate now holds the whole batch; the caller then does
        what ``on_complete`` would (it is not called: the caller may hold locks it takes).
        Declare downstream gates first (see :mod:`persona.ptf.gate_state`)."""
        with self._lock:
            res = self.state.declare(bid, arity, root)
            self._readable.notify_all()
            closed = self.state.take_closed() if self.state.closed_batches else None
        if closed and self.on_closed is not None:
            self.on_closed(closed)
        return res == COMPLETE

    def forget(self, root: int) -> None:
        """No feed of dropped user batch ``root`` can arrive any more: drop its last trace."""
        with self._lock:
            self.state.forget(root)

    def state_entries(self) -> int:
        """Per-batch entries held here (0 when idle: nothing leaks)."""
        with self._lock:
            return self.state.state_entries()

    def close(self) -> None:
        """Wake every waiter with GateClosed; later blocking calls fail too. Idempotent."""
        with self._lock:
            self._closed = True
            self._readable.notify_all()
            self._writable.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap = self.state.snapshot()
        snap["id"] = self.id
        return snap

    def batch_progress(self, bid: int) -> tuple[int, int | None] | None:
        with self._lock:
            return self.state.batch_progress(bid)

    def check(self) -> None:
        with self._lock:
            self.state.check()

    @property
    def link(self) -> CreditLink | None:
        return self.state.link
