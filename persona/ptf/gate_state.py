"""Gate bookkeeping (thesis §4.3.2–4.3.3), as pure synchronous state.

:class:`GateState` holds a gate's feed buffer and per-batch accounting and
implements every gate operation as a *non-blocking* method that either does
the operation and returns its result or returns ``None`` ("cannot proceed
now"). The threaded :class:`persona.ptf.gate.Gate` wraps it with one lock
and condition variables; tests drive this class directly and deterministically.

A gate serves exactly one kind of consumer, fixed at construction (``mode``):

``plain``      dequeue one feed; the gate may have a capacity.
``aggregate``  dequeue a group of ``size`` feeds of one batch: group k holds the
               feeds at positions kS .. kS+S-1 (the last group may be short),
               the result has arity ceil(A/S) and position k. Also serves
               partition dequeue (a global gate's operation, §4.5.2).
``batch``      dequeue a whole batch (egress batch dequeue by id, local
               pipeline partition dequeue); the batch must be complete.

Dequeues prefer the oldest open batch; within a batch ``plain`` is FIFO and
``aggregate`` takes the lowest complete group. If the gate is the upstream end
of a credit link, a batch must be *admitted* (spend one credit) before its
first feed leaves the gate.

Open arity (streaming ingress): a feed's innermost row may carry arity
``None``. Its batch record then stays open: an aggregate group is complete
only when all S of its feeds are in, a batch-mode batch is never whole, and
the record never closes, until :meth:`GateState.declare` sets the arity
(or a feed carrying it arrives). Declaring completes the short last group,
reports a whole batch (``COMPLETE``) and closes a record whose feeds have all
left. The declaring pipeline declares downstream gates first, so a gate never
sees a known arity before its own declaration could create a record twice.

No state outlives a batch: a record leaves ``open`` when the batch closes or
is dropped, and the id of a dropped user batch leaves ``dropped_roots`` when
the owner calls :meth:`GateState.forget` (once no feed of it can arrive).
"""
from __future__ import annotations

import heapq
from collections import deque
from typing import Any

from persona.errors import PipelineError
from persona.ptf.credits import CreditLink
from persona.ptf.feed import Feed, Partition, aggregate_arity, group_size

PLAIN, AGGREGATE, BATCH = "plain", "aggregate", "batch"
MODES = (PLAIN, AGGREGATE, BATCH)

ENQUEUED, COMPLETE, DISCARDED = 0, 1, -1
"""Results of :meth:`GateState.enqueue`."""


class BatchRecord:
    """Accounting of one open batch at one gate: arity (None: not declared yet), dequeued,
    buffered; ``top`` is one past the highest position seen while the arity was open."""

    __slots__ = ("bid", "root", "arity", "dequeued", "buffered", "enqueued", "items",
                 "admitted", "counts", "ready", "top", "early")

    def __init__(self, bid: int, root: int, arity: int | None, keyed: bool) -> None:
        self.bid = bid
        self.root = root
        self.arity = arity
        self.dequeued = 0
        self.buffered = 0
        self.enqueued = 0
        self.items: Any = {} if keyed else deque()
        self.admitted = False
        self.counts: dict[int, int] = {}  # aggregate: feeds present per incomplete group
        self.ready: list[int] = []  # aggregate: heap of complete group indexes
        self.top = 0
        self.early = False  # declared before its first feed arrived


class GateState:
    """Feed buffer + batch accounting of one gate. Not thread-safe: the owner locks."""

    def __init__(self, gate_id: str, mode: str = PLAIN, *, size: int | None = None,
                 capacity: int | None = None, link: CreditLink | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"gate {gate_id!r}: unknown mode {mode!r}")
        if mode == AGGREGATE and (size is None or size < 1):
            raise ValueError(f"gate {gate_id!r}: aggregate mode needs size >= 1")
        if capacity is not None and (mode != PLAIN or capacity < 1):
            # §4.4.3: a bounded buffer in front of a grouping dequeue can deadlock.
            raise ValueError(f"gate {gate_id!r}: capacity needs plain mode and >= 1")
        self.gate_id = gate_id
        self.mode = mode
        self.size = size or 1
        self.capacity = capacity
        self.link = link
        self.open: dict[int, BatchRecord] = {}  # insertion order = opening order
        self.buffered = 0
        self.closed_batches: list[int] = []  # ids closed since the owner last looked
        self.dropped_roots: set[int] = set()
        self.garbage: list[Feed] = []  # feeds dropped here; the owner disposes of them
        self.enqueued_total = 0
        self.dequeued_total = 0
        self.discarded_total = 0
        self.high_water = 0
        self.max_open = 0  # most batches open at once (tests: <= credits inside a link)
        self.early = 0  # open records declared before their first feed (not counted above)

    # -- enqueue -------------------------------------------------------------
    def full(self) -> bool:
        """True if a plain enqueue must wait for space."""
        return self.capacity is not None and self.buffered >= self.capacity

    def enqueue(self, feed: Feed) -> int:
        """Buffer ``feed``. Returns ENQUEUED, COMPLETE (batch mode: batch now whole) or
        DISCARDED (its user batch was dropped). Does not check capacity: the caller waits.
        A feed whose arity is known at a record still open adopts it (:meth:`declare`)."""
        meta = feed.meta
        if self.dropped_roots and meta[0][0] in self.dropped_roots:
            self.discarded_total += 1
            return DISCARDED
        bid, arity = meta[-1]
        rec = self.open.get(bid)
        if rec is None:
            rec = self.open[bid] = BatchRecord(bid, meta[0][0], arity, self.mode != PLAIN)
            if len(self.open) - self.early > self.max_open:
                self.max_open = len(self.open) - self.early
        rec.enqueued += 1
        ra = rec.arity
        learn = False
        if ra is not None:
            if rec.enqueued > ra or (arity is not None and arity != ra):
                raise PipelineError("feed duplicated or metadata inconsistent at gate",
                                    gate=self.gate_id, batch=bid, feed=feed.pos)
            if rec.early:  # the first feed of a batch declared before it: now it counts
                rec.early = False
                self.early -= 1
                if len(self.open) - self.early > self.max_open:
                    self.max_open = len(self.open) - self.early
        elif arity is not None:
            learn = True  # an upstream gate knew the arity first
        if self.mode == PLAIN:
            rec.items.append(feed)
        else:
            p = feed.pos[-1]
            if p in rec.items or p < 0 or (ra is not None and p >= ra):
                rec.enqueued -= 1
                raise PipelineError("feed position duplicated or out of range at gate",
                                    gate=self.gate_id, batch=bid, feed=feed.pos)
            if ra is None and p >= rec.top:
                rec.top = p + 1
            rec.items[p] = feed
            if self.mode == AGGREGATE:
                g = p // self.size
                c = rec.counts.get(g, 0) + 1
                if c == group_size(ra, self.size, g):
                    rec.counts.pop(g, None)
                    heapq.heappush(rec.ready, g)
                else:
                    rec.counts[g] = c
        rec.buffered += 1
        self.buffered += 1
        self.enqueued_total += 1
        if self.buffered > self.high_water:
            self.high_water = self.buffered
        if learn:
            return self._set_arity(rec, arity)
        if self.mode == BATCH and rec.buffered == ra:
            return COMPLETE
        return ENQUEUED

    def declare(self, bid: int, arity: int, root: int | None = None) -> int:
        """The arity of batch ``bid`` (of user batch ``root``, default ``bid``) is now known.
        Returns COMPLETE if a batch-mode gate now holds the whole batch, DISCARDED if the
        batch was dropped here, else ENQUEUED. Creates the record if no feed arrived yet
        (nothing for arity 0). Idempotent; a different arity is an error."""
        root = bid if root is None else root
        if root in self.dropped_roots:
            return DISCARDED
        rec = self.open.get(bid)
        if rec is None:
            if arity > 0:  # remember the arity until the feeds come
                rec = self.open[bid] = BatchRecord(bid, root, arity, self.mode != PLAIN)
                rec.early = True
                self.early += 1
            return ENQUEUED
        if rec.arity is not None:
            if rec.arity != arity:
                raise PipelineError(f"arity declared twice ({rec.arity}, then {arity})",
                                    gate=self.gate_id, batch=bid)
            return ENQUEUED
        return self._set_arity(rec, arity)

    def _set_arity(self, rec: BatchRecord, arity: int) -> int:
        if rec.enqueued > arity or rec.top > arity:
            raise PipelineError(f"declared arity {arity} but {rec.enqueued} feeds (positions "
                                f"up to {rec.top - 1}) arrived", gate=self.gate_id, batch=rec.bid)
        rec.arity = arity
        if self.mode == AGGREGATE and rec.counts:  # the short last group may be complete now
            for g, c in list(rec.counts.items()):
                if c == group_size(arity, self.size, g):
                    del rec.counts[g]
                    heapq.heappush(rec.ready, g)
        if rec.dequeued == arity:  # every feed already left: the batch closes here now
            del self.open[rec.bid]
            self.closed_batches.append(rec.bid)
        elif self.mode == BATCH and rec.buffered == arity:
            return COMPLETE
        return ENQUEUED

    # -- dequeue -------------------------------------------------------------
    def _admit(self, rec: BatchRecord) -> bool:
        if rec.admitted:
            return True
        if self.link is None or self.link.try_admit(rec.bid, rec.root):
            rec.admitted = True
            return True
        return False

    def _took(self, rec: BatchRecord, n: int) -> None:
        rec.buffered -= n
        rec.dequeued += n
        self.buffered -= n
        self.dequeued_total += n
        if rec.dequeued == rec.arity:
            del self.open[rec.bid]
            self.closed_batches.append(rec.bid)

    def try_dequeue(self) -> Feed | None:
        """Plain dequeue: next feed of the oldest admissible batch, or None."""
        for rec in self.open.values():
            if rec.buffered and (rec.admitted or self._admit(rec)):
                feed = rec.items.popleft()
                self._took(rec, 1)
                return feed
        return None

    def _try_group(self) -> tuple[BatchRecord, int, list[Feed]] | None:
        for rec in self.open.values():
            if rec.ready and (rec.admitted or self._admit(rec)):
                g = heapq.heappop(rec.ready)
                base = g * self.size
                n = group_size(rec.arity, self.size, g)
                members = [rec.items.pop(base + i) for i in range(n)]
                self._took(rec, n)
                return rec, g, members
        return None

    def try_aggregate(self) -> Feed | None:
        """Aggregate dequeue: a feed whose payload is the list of a group's payloads."""
        got = self._try_group()
        if got is None:
            return None
        rec, g, members = got
        return Feed(*self._group_meta(rec, g, members[0]), [m.payload for m in members])

    def try_partition(self) -> Partition | None:
        """Partition dequeue (global-gate side): the next group as a :class:`Partition`."""
        got = self._try_group()
        if got is None:
            return None
        rec, g, members = got
        return Partition(*self._group_meta(rec, g, members[0]), tuple(m.payload for m in members))

    def _group_meta(self, rec, g: int, first: Feed) -> tuple[tuple, tuple]:
        """Metadata and position of group ``g``: its innermost row now has arity ceil(A/S)."""
        meta = first.meta[:-1] + ((rec.bid, aggregate_arity(rec.arity, self.size)),)
        return meta, first.pos[:-1] + (g,)

    def _take(self, rec: BatchRecord) -> list[Feed]:
        items = rec.items
        feeds = [items[i] for i in range(rec.arity)]
        items.clear()
        self._took(rec, rec.arity)
        return feeds

    def try_take(self, bid: int) -> list[Feed] | None:
        """Batch dequeue by id: all feeds of batch ``bid`` in position order, once complete."""
        rec = self.open.get(bid)
        if rec is None or rec.buffered != rec.arity:
            return None
        return self._take(rec)

    def try_take_any(self) -> list[Feed] | None:
        """Batch dequeue of the oldest complete batch (local pipeline partition dequeue)."""
        for rec in self.open.values():
            if rec.buffered == rec.arity:
                return self._take(rec)
        return None

    # -- failure / introspection --------------------------------------------
    def drop(self, root: int) -> list[int]:
        """Drop every buffered feed of user batch ``root`` now and discard later arrivals.
        Returns the dropped batch ids; credits the link lent them come back. The owner
        calls :meth:`forget` once no feed of ``root`` can arrive any more."""
        self.dropped_roots.add(root)
        ids = [bid for bid, rec in self.open.items() if rec.root == root]
        for bid in ids:
            rec = self.open.pop(bid)
            self.early -= rec.early
            self.buffered -= rec.buffered
            self.garbage.extend(rec.items.values() if isinstance(rec.items, dict) else rec.items)
        if self.link is not None:
            self.link.release_root(root)
        return ids

    def forget(self, root: int) -> None:
        """No feed of dropped user batch ``root`` can arrive any more: stop remembering it."""
        self.dropped_roots.discard(root)

    def state_entries(self) -> int:
        """Per-batch entries held: open records, dropped roots, closed ids not yet taken,
        credits lent by this gate's link. 0 when the gate is idle and nothing leaks."""
        n = len(self.open) + len(self.dropped_roots) + len(self.closed_batches)
        return n if self.link is None else n + self.link.state_entries()

    def take_closed(self) -> list[int]:
        """Ids of batches closed since the last call (to return credits downstream->upstream)."""
        closed, self.closed_batches = self.closed_batches, []
        return closed

    def batch_progress(self, bid: int) -> tuple[int, int | None] | None:
        """``(feeds arrived, arity)`` of an open batch (arity None if open), or None."""
        rec = self.open.get(bid)
        return None if rec is None else (rec.dequeued + rec.buffered, rec.arity)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data view for metrics."""
        return {
            "depth": self.buffered,
            "capacity": self.capacity,
            "high_water": self.high_water,
            "open_batches": len(self.open),
            "max_open_batches": self.max_open,
            "credits_available": None if self.link is None else self.link.available,
            "enqueued": self.enqueued_total,
            "dequeued": self.dequeued_total,
            "discarded": self.discarded_total,
            "batches": {b: {"arity": r.arity, "dequeued": r.dequeued, "buffered": r.buffered}
                        for b, r in self.open.items()},
        }

    def check(self) -> None:
        """Assert the accounting invariants (tests call this after every step)."""
        assert self.buffered == sum(r.buffered for r in self.open.values())
        assert self.early == sum(r.early for r in self.open.values())
        assert self.max_open >= len(self.open) - self.early
        assert self.capacity is None or self.buffered <= self.capacity
        for r in self.open.values():
            assert 0 <= r.dequeued + r.buffered <= (r.enqueued if r.arity is None else r.arity)
            assert r.arity is None or r.top <= r.arity
            assert len(r.items) == r.buffered
        if self.link is not None:
            self.link.check()
