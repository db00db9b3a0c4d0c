"""Batch bookkeeping of one pipeline, as a pure synchronous state machine.

:class:`BatchTable` knows every batch a pipeline is running: submitted
batches (arity known), streaming batches (arity open until the source ends),
failed or cancelled batches waiting to be quiescent. It decides what the
threaded :class:`~persona.ptf.pipeline.Pipeline` does (which handle to finish,
with what, when a batch may be forgotten by the gates) and never blocks,
waits or touches a gate; the pipeline calls it under its lock. Tests drive it
directly against a model (tests/test_ptf_batches.py).

Life of a batch::

    open(bid, handle, arity)         STREAMING (arity None) or RUNNING
    put(bid) -> position             STREAMING only: the next feed's position
    close(bid) -> arity              STREAMING -> RUNNING (arity = puts so far)
    deliver(bid) -> handle           RUNNING, egress holds it whole: removed, done
    finish_empty(bid) -> handle      RUNNING with arity 0: removed, done
    fail(bid, error)                 -> FAILED: in ``dropped``; waits to be quiescent
    record(bid), leave(bid, slot)    quiescence (:class:`~persona.ptf.occupancy.Occupancy`);
                                     the last leave removes it: (handle, error)
    stop() -> [(handle, error)]      every entry removed

A removed batch leaves nothing behind: ``entries``, ``dropped`` and the
occupancy's per-batch maps only hold live batches, so :meth:`state_entries`
is 0 whenever the pipeline is idle. The pipeline makes every gate forget a
failed batch at the same moment the table removes it (the last leave): from
then on no feed of it can arrive anywhere (see :mod:`persona.ptf.occupancy`).
"""
from __future__ import annotations

from typing import Any

from persona.errors import PersonaError, PipelineError
from persona.ptf.occupancy import Occupancy

STREAMING, RUNNING, FAILED = "streaming", "running", "failed"


class BatchEntry:
    """One live batch: its handle (opaque here), arity (None while streaming), puts so far."""

    __slots__ = ("bid", "handle", "arity", "puts", "state")

    def __init__(self, bid: int, handle: Any, arity: int | None) -> None:
        self.bid = bid
        self.handle = handle
        self.arity = arity
        self.puts = 0
        self.state = STREAMING if arity is None else RUNNING


class BatchTable:
    """Live batches of one pipeline. Not thread-safe: the owner locks. Replica threads read
    ``dropped`` and write their occupancy slots without the lock (see
    :mod:`persona.ptf.occupancy`); ``dropped`` is only ever mutated in place."""

    __slots__ = ("entries", "dropped", "occupancy", "done", "failed")

    def __init__(self) -> None:
        self.entries: dict[int, BatchEntry] = {}
        self.dropped: set[int] = set()  # failed batches not yet quiescent
        self.occupancy = Occupancy()
        self.done = 0
        self.failed = 0

    # -- producing -----------------------------------------------------------
    def open(self, bid: int, handle: Any, arity: int | None = None) -> BatchEntry:
        """A new batch: ``arity`` known (submit) or None (streaming)."""
        if bid in self.entries:
            raise ValueError(f"batch {bid} opened twice")
        e = self.entries[bid] = BatchEntry(bid, handle, arity)
        return e

    def put(self, bid: int) -> int:
        """A streaming batch's next feed: returns its position. PipelineError if the batch
        failed, was cancelled, finished or its stream is closed (its producer should stop)."""
        e = self.entries.get(bid)
        if e is None:
            raise PipelineError("batch is no longer running; stop producing", batch=bid)
        if e.state == FAILED:
            raise PipelineError("batch failed or was cancelled; stop producing", batch=bid)
        if e.state != STREAMING:
            raise PipelineError("stream already closed", batch=bid)
        pos = e.puts
        e.puts = pos + 1
        return pos

    def close(self, bid: int) -> int | None:
        """End of a streaming batch's source: its arity is the number of puts. Returns the
        arity to declare at the gates, or None when there is nothing to declare (the batch
        failed, finished, was closed before, or was submitted whole)."""
        e = self.entries.get(bid)
        if e is None or e.state != STREAMING:
            return None
        e.arity = e.puts
        e.state = RUNNING
        return e.arity

    # -- finishing -------------------------------------------------------------
    def finish_empty(self, bid: int) -> Any:
        """A running batch of arity 0 (an empty stream): done at once; returns its handle."""
        e = self.entries[bid]
        if e.state != RUNNING or e.arity != 0:
            raise ValueError(f"batch {bid} is not an empty running batch")
        del self.entries[bid]
        self.done += 1
        return e.handle

    def deliver(self, bid: int) -> Any | None:
        """The egress holds batch ``bid`` whole: returns the handle to finish with its
        results, or None if the batch failed meanwhile (it finishes once quiescent; the
        caller disposes of the feeds) or is unknown."""
        e = self.entries.get(bid)
        if e is None or e.state != RUNNING:
            return None
        del self.entries[bid]
        self.done += 1
        return e.handle

    def fail(self, bid: int, error: PersonaError) -> bool:
        """Fail (or cancel) batch ``bid``: from here no stage call of it starts (``dropped``)
        and the stage calls running on it are recorded. False if the batch is unknown
        (finished) or already failed. The caller then drops it at every gate, calls
        :meth:`record` and leaves with :data:`~persona.ptf.occupancy.FAILER`."""
        e = self.entries.get(bid)
        if e is None or e.state == FAILED:
            return False
        e.state = FAILED
        self.dropped.add(bid)
        self.failed += 1
        self.occupancy.fail(bid, error)
        return True

    def record(self, bid: int) -> None:
        """The failer dropped ``bid`` at every gate: record the slots still holding it."""
        self.occupancy.record(bid)

    def leave(self, bid: int, slot: int) -> tuple[Any, PersonaError] | None:
        """Slot ``slot`` (or the failer) is done with failed batch ``bid``. When that made it
        quiescent the batch is removed (and leaves ``dropped``: the caller makes every gate
        forget it now) and ``(handle, error)`` is returned; else None."""
        error = self.occupancy.leave(bid, slot)
        if error is None:
            return None
        e = self.entries.pop(bid)
        self.dropped.discard(bid)
        return e.handle, error

    def stop(self) -> list[tuple[Any, PersonaError | None]]:
        """The pipeline stops: remove every batch; ``(handle, its error if it failed)``."""
        out = [(e.handle, self.occupancy.forget(bid)) for bid, e in self.entries.items()]
        self.entries.clear()
        self.dropped.clear()
        return out

    # -- introspection ---------------------------------------------------------
    def handles(self) -> list[Any]:
        return [e.handle for e in self.entries.values()]

    def state_entries(self) -> int:
        """Per-batch entries held (0 when no batch is live)."""
        return len(self.entries) + len(self.dropped) + self.occupancy.state_entries()

    def check(self) -> None:
        """Assert the invariants (tests)."""
        failed = {b for b, e in self.entries.items() if e.state == FAILED}
        assert self.dropped == failed, (self.dropped, failed)
        assert set(self.occupancy.pending) == failed
        self.occupancy.check()
        for e in self.entries.values():
            assert (e.arity is None) == (e.state == STREAMING) or e.state == FAILED
            assert e.arity is None or e.puts == 0 or e.arity == e.puts
