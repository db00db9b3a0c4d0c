"""The coordinator's global gates as plain bookkeeping (thesis §4.5.2): no locks, no I/O, no clock.

A :class:`StepGate` is one step of one request split into partitions of P feeds (chunks), or one
partition holding the whole step for kinds that are not split. :class:`GlobalGates` hands
partitions to workers and takes their results back:

* **leases**: a worker's lease runs ``lease_seconds`` from its last heartbeat; :meth:`expire` drops
  the workers whose lease ran out and re-queues their open partitions (their attempts are revoked,
  so a result arriving later is discarded, never committed);
* **credits**: a worker holds at most its credits in open partitions (the worker says how many when
  it registers; :meth:`pull` never exceeds them);
* **fair share**: :meth:`pull` takes partitions round-robin across the open steps (requests), so a
  small request behind a large one gets a partition at every turn instead of waiting for the large
  one's queue to drain;
* **stragglers**: once a step has nothing queued, a partition whose only attempt has run longer than
  ``speculate_factor`` x the step's median partition time is handed to a second worker; the first
  result wins, the other attempt is dropped.

Every method takes ``now`` and returns what its owner must do (results to commit, files to delete,
attempts to drop), as values: the owner (:mod:`persona.service.coordinator`) does the I/O.
"""
from __future__ import annotations

import os
import statistics
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def new_attempt() -> str:
    """An attempt id: hex, so the files it names match the transaction's chunk-key pattern."""
    return os.urandom(6).hex()


@dataclass
class Partition:
    index: int
    start: int
    stop: int
    #: attempt -> (worker id, started)
    attempts: dict[str, tuple[str, float]] = field(default_factory=dict)
    done_attempt: str = ""
    result: dict[str, Any] | None = None
    failures: float = 0.0
    #: what the partition does beyond its chunk range (a split sort's phase: persona.service.sort_parts)
    task: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return bool(self.done_attempt)


@dataclass
class StepGate:
    """One step's batch, split into partitions (see the module docstring)."""

    step_id: str
    request_id: str
    step: dict[str, Any]
    partitions: list[Partition]
    whole: bool = False
    generation: int = 0
    queue: deque[int] = field(default_factory=deque)
    durations: list[float] = field(default_factory=list)
    state: str = "open"  # open, done, failed, cancelled
    error: str = ""
    #: the owner's per-step cache (the step as a message, built once for all its partitions)
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queue.extend(p.index for p in self.partitions if not p.done)
        self._remaining = sum(1 for p in self.partitions if not p.done)

    @property
    def remaining(self) -> int:
        return self._remaining

    def mark(self, part: Partition, attempt: str, result: dict[str, Any] | None) -> None:
        """Set or (``attempt`` empty) clear partition ``part``'s result, counting what remains."""
        self._remaining += int(part.done) - int(bool(attempt))
        part.done_attempt, part.result = attempt, result

    @property
    def finished(self) -> bool:
        return self.state != "open"


@dataclass
class WorkerState:
    worker_id: str
    host: str
    pid: int
    threads: int
    credits: int
    lease_until: float
    last_heartbeat: float
    state: str = "running"  # running, draining
    #: attempt -> step id
    attempts: dict[str, str] = field(default_factory=dict)
    drop: set[str] = field(default_factory=set)
    done: int = 0


@dataclass
class Handout:
    """A partition attempt given to a worker."""

    gate: StepGate
    partition: Partition
    attempt: str
    speculative: bool = False


@dataclass
class ReportOutcome:
    """What a report means: ``accepted`` (commit it), ``discarded`` (delete its files), ``duplicate``
    (an accepted attempt reported again: nothing to do), or ``retry``/``failed`` (a failed attempt:
    re-queued, or the step fails)."""

    action: str
    reason: str = ""
    gate: StepGate | None = None
    partition: Partition | None = None


class GlobalGates:
    """The partition bookkeeping of one coordinator (see the module docstring)."""

    def __init__(self, *, lease_seconds: float, speculate_factor: float = 2.0, speculate_min: float = 1.0,
                 max_failures: int = 3) -> None:
        self.lease_seconds = float(lease_seconds)
        self.speculate_factor = speculate_factor
        self.speculate_min = speculate_min
        self.max_failures = max_failures
        self.workers: dict[str, WorkerState] = {}
        self.gates: dict[str, StepGate] = {}  # insertion order: the round-robin order
        self._attempts: dict[str, tuple[StepGate, Partition, str]] = {}
        self._turn = 0
        self.requeued = 0
        self.speculated = 0
        self.discarded = 0

    # -- workers -----------------------------------------------------------------------------
    def register(self, host: str, pid: int, threads: int, credits: int, now: float) -> WorkerState:
        wid = f"{host}/{pid}/{uuid.uuid4().hex[:6]}"
        w = WorkerState(wid, host, pid, threads, max(1, credits), now + self.lease_seconds, now)
        self.workers[wid] = w
        return w

    def heartbeat(self, worker_id: str, state: str, attempts: Iterable[str], now: float) -> tuple[bool, list[str]]:
        """Renew the lease: ``(known, attempts to drop)``. A worker that says "stopped" leaves now."""
        w = self.workers.get(worker_id)
        if w is None:
            return False, list(attempts)  # unknown: what it runs was re-queued; drop it all
        w.lease_until, w.last_heartbeat = now + self.lease_seconds, now
        if state == "stopped":
            self._lose(w)
            return True, []
        w.state = state if state in ("running", "draining") else w.state
        running = set(attempts)
        drop = sorted((w.drop | {a for a in running if a not in w.attempts}))
        w.drop.clear()
        return True, drop

    def expire(self, now: float) -> list[WorkerState]:
        """Drop the workers whose lease ran out; their partitions go back to the queues."""
        lost = [w for w in self.workers.values() if w.lease_until < now]
        for w in lost:
            self._lose(w)
        return lost

    def _lose(self, w: WorkerState) -> None:
        self.workers.pop(w.worker_id, None)
        for attempt in reversed(list(w.attempts)):  # each goes first in line: keep their order
            self._revoke(attempt, requeue=True)

    def _revoke(self, attempt: str, *, requeue: bool) -> None:
        entry = self._attempts.pop(attempt, None)
        if entry is None:
            return
        gate, part, wid = entry
        part.attempts.pop(attempt, None)
        w = self.workers.get(wid)
        if w is not None:
            w.attempts.pop(attempt, None)
            w.drop.add(attempt)
        if requeue and gate.state == "open" and not part.done and not part.attempts and part.index not in gate.queue:
            gate.queue.appendleft(part.index)  # first in line: it is the oldest work
            self.requeued += 1

    # -- steps -------------------------------------------------------------------------------
    def add(self, gate: StepGate) -> None:
        self.gates[gate.step_id] = gate
        if gate.remaining == 0:
            gate.state = "done"

    def close(self, step_id: str, state: str, error: str = "") -> None:
        """End a step (done, failed, cancelled): its open attempts are dropped, its queue emptied."""
        gate = self.gates.pop(step_id, None)
        if gate is None:
            return
        if gate.state == "open":
            gate.state, gate.error = state, error
        gate.queue.clear()
        for part in gate.partitions:
            for attempt in list(part.attempts):
                self._revoke(attempt, requeue=False)

    def attempts_of(self, step_id: str) -> bool:
        return any(g.step_id == step_id for g, _, _ in self._attempts.values())

    # -- handing out -------------------------------------------------------------------------
    def pull(self, worker_id: str, n: int, now: float) -> list[Handout] | None:
        """Up to ``n`` partitions for the worker (within its credits); None: unknown worker."""
        w = self.workers.get(worker_id)
        if w is None:
            return None
        if w.state != "running":
            return []
        n = min(n, w.credits - len(w.attempts))
        out: list[Handout] = []
        while len(out) < n:
            h = self._next_queued() or self._speculate(w, now)
            if h is None:
                break
            h.partition.attempts[h.attempt] = (w.worker_id, now)
            self._attempts[h.attempt] = (h.gate, h.partition, w.worker_id)
            w.attempts[h.attempt] = h.gate.step_id
            out.append(h)
        return out

    def _next_queued(self) -> Handout | None:
        gates = [g for g in self.gates.values() if g.state == "open" and g.queue]
        if not gates:
            return None
        gate = gates[self._turn % len(gates)]
        self._turn += 1
        index = gate.queue.popleft()
        return Handout(gate, gate.partitions[index], new_attempt())

    def _speculate(self, w: WorkerState, now: float) -> Handout | None:
        best: tuple[float, StepGate, Partition] | None = None
        for gate in self.gates.values():
            if gate.state != "open" or gate.queue or not gate.durations:
                continue
            limit = max(self.speculate_min, self.speculate_factor * statistics.median(gate.durations))
            for part in gate.partitions:
                if part.done or len(part.attempts) != 1:
                    continue
                (wid, started), = part.attempts.values()
                late = now - started - limit
                if wid != w.worker_id and late > 0 and (best is None or late > best[0]):
                    best = (late, gate, part)
        if best is None:
            return None
        self.speculated += 1
        return Handout(best[1], best[2], new_attempt(), speculative=True)

    # -- results -----------------------------------------------------------------------------
    def report(self, worker_id: str, attempt: str, ok: bool, error: str, result: dict[str, Any],
               now: float) -> ReportOutcome:
        entry = self._attempts.get(attempt)
        if entry is None and any(p.done_attempt == attempt for g in self.gates.values() for p in g.partitions):
            # the same report again (its answer was lost and the worker retried): already accepted
            return ReportOutcome("duplicate", "already accepted")
        if entry is None:
            self.discarded += 1
            return ReportOutcome("discarded", "attempt unknown or revoked (lease expired, cancelled, or lost "
                                              "to a speculative copy)")
        gate, part, wid = entry
        if wid != worker_id:
            self.discarded += 1
            return ReportOutcome("discarded", f"attempt {attempt} belongs to worker {wid}")
        started = part.attempts.get(attempt, (wid, now))[1]
        self._attempts.pop(attempt, None)
        part.attempts.pop(attempt, None)
        w = self.workers.get(worker_id)
        if w is not None:
            w.attempts.pop(attempt, None)
        if part.done or gate.state != "open":
            self.discarded += 1
            return ReportOutcome("discarded", "partition already done", gate, part)
        if not ok:
            # a transient failure (the dataset busy with a lost worker's claim) is retried without
            # counting, up to a bound
            part.failures += 1 if not result.get("transient") else 1 / 20
            if part.failures >= self.max_failures:
                return ReportOutcome("failed", error, gate, part)
            if not part.attempts:
                gate.queue.appendleft(part.index)
            return ReportOutcome("retry", error, gate, part)
        gate.mark(part, attempt, result)
        gate.durations.append(now - started)
        if w is not None:
            w.done += 1
        for other in list(part.attempts):  # a speculative twin still running: it lost
            self._revoke(other, requeue=False)
        if gate.remaining == 0:
            gate.state = "done"
        return ReportOutcome("accepted", "", gate, part)

    def unaccept(self, gate: StepGate, part: Partition) -> None:
        """The owner could not record an accepted result durably: the partition runs again."""
        gate.mark(part, "", None)
        if gate.state == "done":
            gate.state = "open"
        if part.index not in gate.queue:
            gate.queue.appendleft(part.index)
