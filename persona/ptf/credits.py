"""Credit accounting (thesis §4.4.3), as pure synchronous state.

A credit link runs from a downstream gate D to an upstream gate U: U may admit
(open for dequeue) one batch per credit; the credit comes back when D closes
the batch, or when the batch is dropped (failure / cancel). The same class
bounds the partitions in flight inside one local-pipeline replica.

No locks here: the owner (the upstream gate's lock) serialises calls. Every
method is idempotent where the event may arrive twice (close after drop).
"""
from __future__ import annotations


class CreditLinkState:
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
        ids = [b for b, r in self.outstanding.items() if r == root]
        for b in ids:
            del self.outstanding[b]
        self.available += len(ids)
        return len(ids)

    def check(self) -> None:
        """Assert the invariant (tests call this)."""
        assert 0 <= self.available <= self.credits
        assert self.available + len(self.outstanding) == self.credits
