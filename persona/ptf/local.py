"""Replicated local pipelines fed with partitions (thesis §4.5.1–4.5.3).

One :class:`LocalReplica` is a full copy of a local pipeline plus two transfer
threads. *Transfer-in* takes a partition credit, does a partition dequeue on
the outer input gate and a partition enqueue (push a ``(partition id, n)``
metadata row) on the replica's first gate. *Transfer-out* does a partition
dequeue (whole local batch, row popped) on the replica's last gate and
enqueues one outer feed holding the ordered results into the outer output
gate. The credit returns when the last gate closes the partition.

The outer input gate is exactly what a global gate will be: a gate whose
partition-dequeue consumers are (here) threads and (later) remote workers.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from persona.errors import PersonaError
from persona.ptf.channel import Gate, GateClosed
from persona.ptf.credits import CreditLinkState
from persona.ptf.metadata import new_batch_id, pop_partition
from persona.ptf.pool import dispose

FailFn = Callable[[int, PersonaError], object]


class PartitionCredits:
    """Bounds the partitions in flight in one replica (a credit link last gate -> transfer-in)."""

    def __init__(self, credits: int) -> None:
        self.state = CreditLinkState(credits)
        self._cond = threading.Condition()
        self._closed = False

    def wait_available(self) -> None:
        """Block until a credit is free (only the replica's one transfer-in thread takes
        credits, so it is still free when :meth:`admit` follows)."""
        with self._cond:
            while self.state.available == 0:
                if self._closed:
                    raise GateClosed("partition credits closed")
                self._cond.wait()
            if self._closed:
                raise GateClosed("partition credits closed")

    def admit(self, pid: int, root: int) -> None:
        """Lend a credit to partition ``pid`` of user batch ``root``."""
        with self._cond:
            if not self.state.try_admit(pid, root):
                raise AssertionError("partition credit taken by another thread")

    def release(self, pids: list[int]) -> None:
        with self._cond:
            if sum(1 for p in pids if self.state.release(p)):
                self._cond.notify_all()

    def release_root(self, root: int) -> None:
        with self._cond:
            if self.state.release_root(root):
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def available(self) -> int:
        return self.state.available


class LocalReplica:
    """Transfer threads of one replica; its gates and stages are built by the pipeline."""

    def __init__(self, label: str, source: Gate, first: Gate, last: Gate, sink: Gate,
                 credits: int, fail: FailFn, dropped: set[int]) -> None:
        self.label = label
        self.source, self.first, self.last, self.sink = source, first, last, sink
        self.credits = PartitionCredits(credits)
        self._fail = fail
        self._dropped = dropped
        self.partitions = 0
        prev = last.on_closed

        def closed(ids: list[int]) -> None:
            self.credits.release(ids)
            if prev is not None:
                prev(ids)

        last.on_closed = closed
        self.threads = [
            threading.Thread(target=self._transfer_in, daemon=True, name=f"ptf-in-{label}"),
            threading.Thread(target=self._transfer_out, daemon=True, name=f"ptf-out-{label}"),
        ]

    def _transfer_in(self) -> None:
        try:
            while True:
                self.credits.wait_available()
                part = self.source.partition_dequeue()
                pid = new_batch_id()
                self.credits.admit(pid, part.root)
                if part.root in self._dropped:  # dropped while we held it
                    self.credits.release([pid])
                    dispose(part.payloads)
                    continue
                self.first.partition_enqueue(part, pid)
        except GateClosed:
            return

    def _transfer_out(self) -> None:
        try:
            while True:
                feeds = self.last.batch_dequeue_any()
                f0 = feeds[0]
                self.partitions += 1
                try:
                    self.sink.enqueue(pop_partition(f0.meta, f0.pos, [f.payload for f in feeds]))
                except GateClosed:
                    raise
                except PersonaError as e:
                    self._fail(f0.meta[0][0], e)
        except GateClosed:
            return

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.credits.close()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            if t.is_alive():
                t.join(timeout)
