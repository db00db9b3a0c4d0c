"""Stage runners (thesis §4.3.1): N replica threads running one function over feeds.

A stage function sees only payloads, never metadata: ``fn(payload) -> payload``
(plain) or ``fn([payloads of one group]) -> payload`` (aggregate). The runner
swaps the payload on the feed object and enqueues the same feed downstream.
Kernels release the GIL, so replicas run on every core. An exception fails the
feed's user batch (via ``fail``) and the runner carries on with other feeds.

Each replica owns a slot of the pipeline's :class:`~persona.ptf.occupancy.Occupancy`
and follows its protocol: the dequeue publishes the feed's batch in the slot
(under the gate lock) and the slot is cleared once the feed is in the next
gate; a call on a feed of a failed batch never starts, and a feed whose batch
failed during the call is disposed of (never enqueued downstream); the runner
then reports leaving (``left``) so the batch can finish once no stage call of
it is running and no feed of it is held outside the gates.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from persona.errors import PersonaError, StageError
from persona.ptf.feed import Feed
from persona.ptf.gate import Gate, GateClosed
from persona.ptf.occupancy import IDLE, Occupancy
from persona.ptf.pool import dispose

FailFn = Callable[[int, PersonaError], object]
LeftFn = Callable[[int, int], object]


def describe_feed(feed: Feed) -> str:
    """Feed position as the user sees it: ``"7"``, or ``"2/1"`` inside a partition."""
    return "/".join(str(p) for p in feed.pos)


class StageRunner:
    """The replica threads of one stage; counters are per replica (no shared writes)."""

    def __init__(self, label: str, fn: Callable[[Any], Any], inp: Gate, out: Gate, *,
                 replicas: int, aggregate: bool, fail: FailFn, dropped: set[int],
                 occupancy: Occupancy, left: LeftFn) -> None:
        self.label = label
        self.fn = fn
        self.inp = inp
        self.out = out
        self.replicas = replicas
        self.aggregate = aggregate
        self._fail = fail
        self._dropped = dropped
        self._slots = occupancy.slots
        self._left = left
        self.slot_ids = [occupancy.add_slot(f"{label}/{r}") for r in range(replicas)]
        self.busy = [0.0] * replicas
        self.feeds = [0] * replicas
        self.errors = 0
        self.threads = [threading.Thread(target=self._loop, args=(r,), daemon=True,
                                         name=f"ptf-stage-{label}-{r}") for r in range(replicas)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            if t.is_alive():
                t.join(timeout)

    def _loop(self, r: int) -> None:
        deq = self.inp.aggregate_dequeue if self.aggregate else self.inp.dequeue
        enq = self.out.enqueue
        fn = self.fn
        dropped = self._dropped
        slots = self._slots
        k = self.slot_ids[r]
        hold = (slots, k)
        left = self._left
        clock = time.perf_counter
        busy = self.busy
        feeds = self.feeds
        while True:
            try:
                feed = deq(None, hold)  # slots[k] = root, under the gate lock
            except GateClosed:
                return
            root = feed.meta[0][0]
            if dropped and root in dropped:
                dispose(feed.payload)  # its batch failed or was cancelled: skip the work
                slots[k] = IDLE
                left(root, k)
                continue
            t0 = clock()
            try:
                feed.payload = fn(feed.payload)
            except Exception as e:  # a stage must not kill its runner
                self.errors += 1
                err = StageError(f"stage raised {type(e).__name__}: {e}", stage=self.label,
                                 batch=root, feed=describe_feed(feed))
                err.__cause__ = e
                dispose(feed.payload)  # before the batch can finish: the caller sees it done
                slots[k] = IDLE
                self._fail(root, err)
                left(root, k)  # the batch may have failed earlier, with us inside
                continue
            busy[r] += clock() - t0
            feeds[r] += 1
            if dropped and root in dropped:  # failed during the call: not downstream
                dispose(feed.payload)
                slots[k] = IDLE
                left(root, k)
                continue
            try:
                enq(feed)
            except GateClosed:
                slots[k] = IDLE
                return
            except PersonaError as e:  # accounting violation: fail the batch, keep running
                self._fail(root, e)
            slots[k] = IDLE  # the feed is in the next gate (or discarded there)
            if dropped and root in dropped:
                left(root, k)

    def stats(self) -> dict[str, Any]:
        return {"id": self.label, "replicas": self.replicas, "busy_seconds": sum(self.busy),
                "feeds": sum(self.feeds), "errors": self.errors}
