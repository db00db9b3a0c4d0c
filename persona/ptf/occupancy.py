"""Which batch each gate consumer holds a feed of, and failed batches waiting to be quiescent.

A failed or cancelled batch may still have feeds *inside* stages (a replica is
running the stage function on them, possibly in a local pipeline), and those
calls can have side effects (a write stage stores a chunk file). The batch's
handle must not finish before they are over, or a caller cleaning up after the
error races with them. :class:`Occupancy` is the pure, synchronous bookkeeping
for that; :class:`persona.ptf.batches.BatchTable` owns it (behind the pipeline's lock).

Hot path without a lock: every thread that takes feeds out of a gate (stage
replicas, a local replica's transfer threads) owns one *slot*. Its dequeue
stores the root id of what it took in the slot *under the gate lock*
(``Gate.dequeue(hold=(slots, k))``), and the thread stores ``0`` once the feed
is back in a gate downstream or disposed of (one list store per feed outside
the lock; each thread writes only its own slot). The runtime's protocol, with
``dropped`` the set of failed roots:

1. holder: dequeue (slot = root); then, if ``root in dropped``, skip the call;
2. failer (under the lock): ``dropped.add(root)``, then :meth:`Occupancy.fail`
   records every slot holding ``root`` plus :data:`FAILER`, its own token;
3. failer: drops ``root`` at every gate, then (under the lock) :meth:`record`
   records the slots holding ``root`` *now*, and leaves with :data:`FAILER`;
4. holder, after the call: if ``root in dropped`` it disposes of the feed
   instead of enqueueing it; after the enqueue (or disposal) ``slots[k] = 0``;
   then, if ``root in dropped``, it calls :meth:`leave`.

A call that started before step 2 is either over or recorded; a call that would
start after it sees ``root in dropped`` and is skipped. Step 3 closes the last
gap: a thread that dequeued a feed of ``root`` before the drop at that gate
published its slot under that gate's lock, so :meth:`record` sees it; after the
drops no thread can take a feed of ``root``, and gates discard late arrivals.
So when the last :meth:`leave` returns the batch's error, no stage call of it
runs *and no feed of it exists outside the gates*: its handle may finish and
every gate may :meth:`~persona.ptf.gate_state.GateState.forget` it (a
long-running pipeline keeps no state of finished batches). Producers (submit,
streaming puts and close) hold the pipeline's lock across the ingress enqueue,
so they are ordered with step 2. Python's memory model (the GIL, or per-object
locks in free-threaded builds) makes the list stores and set reads atomic.
"""
from __future__ import annotations

from persona.errors import PersonaError

IDLE = 0
"""Slot value of a replica not running a stage call (batch ids start at 1)."""
FAILER = -1
"""Token of the thread failing a batch: held until it has dropped the batch at every gate."""


class Occupancy:
    """Stage slots of one pipeline (every level) and its failed, not yet quiescent batches.

    Not thread-safe except as described in the module docstring: replica threads
    write their own slot without a lock; the owner serialises every method.
    """

    __slots__ = ("errors", "labels", "pending", "slots")

    def __init__(self) -> None:
        self.slots: list[int] = []  # per stage replica: root id of the call it runs, or IDLE
        self.labels: list[str] = []  # per slot: "stage label/replica" (stats, errors)
        self.pending: dict[int, set[int]] = {}  # failed root -> slots (and FAILER) still inside
        self.errors: dict[int, PersonaError] = {}  # failed root -> its error, until quiescent

    def add_slot(self, label: str) -> int:
        """Register one stage replica; returns the index of its slot (before threads start)."""
        self.slots.append(IDLE)
        self.labels.append(label)
        return len(self.slots) - 1

    def inside(self, root: int) -> int:
        """Number of stage calls now running on feeds of user batch ``root``."""
        return sum(1 for r in self.slots if r == root)

    def fail(self, root: int, error: PersonaError) -> None:
        """Batch ``root`` failed (the caller has already added it to ``dropped``): record the
        stage calls still running on it and the failer's own token. Call once per batch."""
        if root in self.pending:
            raise ValueError(f"batch {root} failed twice")
        held = {k for k, r in enumerate(self.slots) if r == root}
        held.add(FAILER)
        self.pending[root] = held
        self.errors[root] = error

    def record(self, root: int) -> None:
        """Step 3: the failer dropped ``root`` at every gate; record the slots holding it now.
        No-op if ``root`` is not waiting (already quiescent or never failed)."""
        held = self.pending.get(root)
        if held is not None:
            held.update(k for k, r in enumerate(self.slots) if r == root)

    def leave(self, root: int, slot: int) -> PersonaError | None:
        """Slot ``slot`` (or :data:`FAILER`) is done with failed batch ``root``. Returns the
        batch's error when this made it quiescent (exactly once per batch), else None.
        Idempotent: leaving a slot that was not recorded is a no-op."""
        held = self.pending.get(root)
        if held is None:
            return None
        held.discard(slot)
        if held:
            return None
        del self.pending[root]
        return self.errors.pop(root)

    def forget(self, root: int) -> PersonaError | None:
        """Stop waiting for ``root`` (pipeline stopping); its error if it was failed."""
        self.pending.pop(root, None)
        return self.errors.pop(root, None)

    def state_entries(self) -> int:
        """Per-batch entries held (failed batches still waiting)."""
        return len(self.pending) + len(self.errors)

    def snapshot(self) -> dict[int, list[str]]:
        """Failed batches still waiting -> the stage replicas still inside them."""
        return {root: sorted(self.labels[k] if k >= 0 else "(dropping)" for k in held)
                for root, held in self.pending.items()}

    def check(self) -> None:
        """Assert the invariants (tests)."""
        assert set(self.pending) == set(self.errors)
        for held in self.pending.values():
            assert held and all(k == FAILER or 0 <= k < len(self.slots) for k in held)
