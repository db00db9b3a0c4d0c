"""Credit links (thesis §4.4.3): :class:`CreditLink`, one class for every use.

A credit link runs from a downstream gate D to an upstream point U: U may
admit (open for dequeue) one batch per credit; the credit comes back when D
closes the batch, or when the batch is dropped (failure / cancel). One
``CreditLink`` object serves

* gate links: U is a gate (the link lives in its :class:`~persona.ptf.gate_state.GateState`,
  admission happens inside U's dequeues), D a later gate of the same chain;
* local pipelines: U is a replica's transfer-in thread (one credit = one
  partition in flight), D the replica's last gate;
* global gates (later): U is a global gate, D the next one; partitions go
  to remote workers.

The class is pure, synchronous state: no locks here. The owner serialises
calls with its own lock (the upstream gate's lock; a local replica's
condition). Every method is idempotent where the event may arrive twice
(close after drop), and a batch leaves ``outstanding`` as soon as its credit
comes back, so a long-running link keeps no per-batch state.
"""
from __future__ import annotations


class CreditLink:
    """Credits of one link: ``available + len(outstanding) == credits`` always."""

    __slots__ = ("credits", "available", "outstanding")

    def __init__(self, credits: int) -> None:
        if credits < 1:
            raise ValueError(f"a credit link needs at least 1 credit, got {credits}")
        self.credits = credits
        self.available = credits
        self.outstanding: dict[int, int] = {}  # batch id -> root id

    def try_admit(self, batch_id: int, root: int) -> bool:
        """Spend a credit to open ``batch_id``; False if none is left. Re-admitting is free."""
        if batch_id in self.outstanding:
            return True
        if self.available == 0:
            return False
        self.available -= 1
        self.outstanding[batch_id] = root
        return True

    def release(self, batch_id: int) -> bool:
        """Return the credit of ``batch_id`` (D closed it). True if a credit came back."""
        if self.outstanding.pop(batch_id, None) is None:
            return False
        self.available += 1
        return True

    def release_root(self, root: int) -> int:
        """Return every credit held by batches of user batch ``root``; how many came back."""
        if not self.outstanding:
            return 0
        ids = [b for b, r in self.outstanding.items() if r == root]
        for b in ids:
            del self.outstanding[b]
        self.available += len(ids)
        return len(ids)

    def state_entries(self) -> int:
        """Per-batch entries held (batches holding a credit)."""
        return len(self.outstanding)

    def check(self) -> None:
        """Assert the invariant (tests call this)."""
        assert 0 <= self.available <= self.credits
        assert self.available + len(self.outstanding) == self.credits


CreditLinkState = CreditLink
"""Former name of :class:`CreditLink` (kept for existing imports)."""
