"""Replicated local pipelines fed with partitions (thesis §4.5.1–4.5.3).

One :class:`LocalReplica` is a full copy of a local pipeline plus two transfer
threads. *Transfer-in* takes a partition credit, does a partition dequeue on
the outer input gate and a partition enqueue (push a ``(partition id, n)``
metadata row) on the replica's first gate. *Transfer-out* does a partition
dequeue (whole local batch, row popped) on the replica's last gate and
enqueues one outer feed holding the ordered results into the outer output
gate. The credit returns when the last gate closes the partition. The
credits are one :class:`~persona.ptf.credits.CreditLink`, the class gate links use.

The outer input gate is exactly what a global gate will be: a gate whose
partition-dequeue consumers are (here) threads and (later) remote workers.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from persona.errors import PersonaError
from persona.ptf.credits import CreditLink
from persona.ptf.feed import new_batch_id, pop_partition
from persona.ptf.gate import Gate, GateClosed
from persona.ptf.occupancy import IDLE, Occupancy
from persona.ptf.pool import dispose

FailFn = Callable[[int, PersonaError], object]
LeftFn = Callable[[int, int], object]


class LocalReplica:
    """Transfer threads of one replica; its gates and stages are built by the pipeline.

    ``credits`` is the replica's :class:`CreditLink` (last gate -> transfer-in: one
    credit = one partition in flight), guarded by this replica's condition. Both
    transfer threads own an occupancy slot (see :mod:`persona.ptf.occupancy`): a
    partition taken from a gate is published there until it is in the next gate.
    """

    def __init__(self, label: str, source: Gate, first: Gate, last: Gate, sink: Gate,
                 credits: int, fail: FailFn, dropped: set[int],
                 occupancy: Occupancy | None = None, left: LeftFn | None = None) -> None:
        self.label = label
        self.source, self.first, self.last, self.sink = source, first, last, sink
        self.credits = CreditLink(credits)
        self._cond = threading.Condition()
        self._closed = False
        self._fail = fail
        self._dropped = dropped
        occupancy = occupancy if occupancy is not None else Occupancy()
        self._slots = occupancy.slots
        self._slot_in = occupancy.add_slot(f"{label}/in")
        self._slot_out = occupancy.add_slot(f"{label}/out")
        self._left: LeftFn = left if left is not None else (lambda root, slot: None)
        self.partitions = 0
        prev = last.on_closed

        def closed(ids: list[int]) -> None:
            self.release(ids)
            if prev is not None:
                prev(ids)

        last.on_closed = closed
        self.threads = [
            threading.Thread(target=self._transfer_in, daemon=True, name=f"ptf-in-{label}"),
            threading.Thread(target=self._transfer_out, daemon=True, name=f"ptf-out-{label}"),
        ]

    # -- credits (under self._cond) --------------------------------------------
    def _wait_credit(self) -> None:
        """Block until a credit is free (only this replica's transfer-in takes credits, so
        it is still free when the admission follows)."""
        with self._cond:
            while self.credits.available == 0 and not self._closed:
                self._cond.wait()
            if self._closed:
                raise GateClosed("partition credits closed", gate=self.label)

    def release(self, pids: list[int]) -> None:
        """The last gate closed these partitions: their credits come back."""
        with self._cond:
            if sum(1 for p in pids if self.credits.release(p)):
                self._cond.notify_all()

    def release_root(self, root: int) -> None:
        """User batch ``root`` was dropped: the credits of its partitions come back."""
        with self._cond:
            if self.credits.release_root(root):
                self._cond.notify_all()

    def state_entries(self) -> int:
        with self._cond:
            return self.credits.state_entries()

    # -- transfer threads ------------------------------------------------------
    def _transfer_in(self) -> None:
        slots, k = self._slots, self._slot_in
        hold = (slots, k)
        dropped = self._dropped
        try:
            while True:
                self._wait_credit()
                part = self.source.partition_dequeue(None, hold)
                root = part.meta[0][0]
                pid = new_batch_id()
                with self._cond:
                    if not self.credits.try_admit(pid, root):
                        raise AssertionError("partition credit taken by another thread")
                if root in dropped:  # dropped while we held it
                    self.release([pid])
                    dispose(part.payloads)
                    slots[k] = IDLE
                    self._left(root, k)
                    continue
                self.first.partition_enqueue(part, pid)
                slots[k] = IDLE
                if dropped and root in dropped:
                    self._left(root, k)
        except GateClosed:
            slots[k] = IDLE
            return

    def _transfer_out(self) -> None:
        slots, k = self._slots, self._slot_out
        hold = (slots, k)
        dropped = self._dropped
        try:
            while True:
                feeds = self.last.batch_dequeue_any(None, hold)
                f0 = feeds[0]
                root = f0.meta[0][0]
                self.partitions += 1
                try:
                    self.sink.enqueue(pop_partition(f0.meta, f0.pos, [f.payload for f in feeds]))
                except GateClosed:
                    raise
                except PersonaError as e:
                    self._fail(root, e)
                slots[k] = IDLE
                if dropped and root in dropped:
                    self._left(root, k)
        except GateClosed:
            slots[k] = IDLE
            return

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            if t.is_alive():
                t.join(timeout)
