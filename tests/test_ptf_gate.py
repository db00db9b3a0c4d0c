"""Gate and credit bookkeeping, driven deterministically (no threads); open (streaming)
arities and the forgetting of dropped batches included."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from persona.errors import PipelineError
from persona.ptf.credits import CreditLink, CreditLinkState
from persona.ptf.feed import (Feed, aggregate_arity, group_size, new_batch_id, pop_partition,
                              push_partition)
from persona.ptf.gate_state import (AGGREGATE, BATCH, COMPLETE, DISCARDED, ENQUEUED, PLAIN,
                                    GateState)

pytestmark = pytest.mark.timeout(120)


def feeds_of(bid: int, arity: int, root: int | None = None, *, open_arity: bool = False
             ) -> list[Feed]:
    """Feeds of batch ``bid``; ``open_arity``: as a streaming batch's (arity None)."""
    a = None if open_arity else arity
    meta = ((bid, a),) if root is None else ((root, 1), (bid, a))
    pre = () if root is None else (0,)
    return [Feed(meta, pre + (i,), f"{bid}:{i}") for i in range(arity)]


def test_module_names_lead_from_the_thesis_to_the_code() -> None:
    import persona.ptf as ptf
    from persona.ptf import channel, credits, feed, gate, gate_state, metadata

    assert gate.Gate.__module__ == "persona.ptf.gate" and channel.Gate is gate.Gate
    assert gate.GateState is gate_state.GateState
    assert feed.Feed.__module__ == "persona.ptf.feed" and metadata.Feed is feed.Feed
    assert credits.CreditLink is credits.CreditLinkState is ptf.CreditLink
    assert ptf.Gate is gate.Gate and ptf.Feed is feed.Feed


# -- open arity (streaming ingress) ---------------------------------------------------

def test_plain_gate_with_open_arity_closes_only_when_declared() -> None:
    g = GateState("g")
    fs = feeds_of(1, 3, open_arity=True)
    for f in fs:
        assert g.enqueue(f) == ENQUEUED
    assert [g.try_dequeue() for _ in range(3)] == fs
    assert g.open and g.take_closed() == []  # every feed left, but more may come
    assert g.batch_progress(1) == (3, None)
    assert g.declare(1, 3) == ENQUEUED
    assert not g.open and g.take_closed() == [1] and g.state_entries() == 0
    g.check()


def test_aggregate_groups_with_open_arity_complete_when_full_or_declared() -> None:
    g = GateState("g", AGGREGATE, size=3)
    fs = feeds_of(4, 7, open_arity=True)
    for f in fs[:6]:
        g.enqueue(f)
    first = g.try_aggregate()
    assert first is not None and first.payload == ["4:0", "4:1", "4:2"]
    assert first.meta == ((4, None),)  # the group's arity is open too
    second = g.try_aggregate()
    assert second is not None and second.payload == ["4:3", "4:4", "4:5"]
    g.enqueue(fs[6])
    assert g.try_aggregate() is None  # group 2 = {6} may still grow
    g.declare(4, 7)
    last = g.try_aggregate()
    assert last is not None and last.payload == ["4:6"] and last.meta == ((4, 3),)
    assert g.take_closed() == [4] and g.state_entries() == 0
    g.check()


def test_declare_before_any_feed_creates_the_record() -> None:
    g = GateState("g", AGGREGATE, size=2)
    assert g.declare(5, 3) == ENQUEUED
    assert g.batch_progress(5) == (0, 3)
    assert g.declare(5, 3) == ENQUEUED  # idempotent
    with pytest.raises(PipelineError, match="declared twice"):
        g.declare(5, 4)
    for f in feeds_of(5, 3, open_arity=True):
        g.enqueue(f)
    assert [len(x.payload) for x in (g.try_aggregate(), g.try_aggregate()) if x] == [2, 1]
    assert g.take_closed() == [5] and g.declare(6, 0) == ENQUEUED and not g.open


def test_batch_gate_open_arity_is_complete_at_declaration_or_last_feed() -> None:
    g = GateState("egress", BATCH)
    a = feeds_of(1, 2, open_arity=True)
    for f in a:
        assert g.enqueue(f) == ENQUEUED  # never complete while open
    assert g.try_take(1) is None and g.try_take_any() is None
    assert g.declare(1, 2) == COMPLETE
    assert [f.payload for f in g.try_take(1) or []] == ["1:0", "1:1"]
    b = feeds_of(2, 2, open_arity=True)
    g.enqueue(b[1])
    assert g.declare(2, 2) == ENQUEUED
    assert g.enqueue(b[0]) == COMPLETE
    assert g.try_take_any() is not None and g.state_entries() == 2  # closed ids not taken
    assert g.take_closed() == [1, 2] and g.state_entries() == 0


def test_a_known_arity_on_a_feed_is_adopted_and_checked() -> None:
    g = GateState("g", AGGREGATE, size=2)
    g.enqueue(feeds_of(3, 3, open_arity=True)[2])
    assert g.try_aggregate() is None
    g.enqueue(feeds_of(3, 3)[0])  # an upstream gate knew the arity: adopted here
    assert g.batch_progress(3) == (2, 3)
    last = g.try_aggregate()
    assert last is not None and last.payload == ["3:2"]
    with pytest.raises(PipelineError, match="inconsistent"):
        g.enqueue(feeds_of(3, 4)[1])
    h = GateState("h", AGGREGATE, size=2)
    for f in feeds_of(9, 3, open_arity=True):
        h.enqueue(f)
    with pytest.raises(PipelineError, match="declared arity 2"):
        h.declare(9, 2)


def test_forget_removes_the_last_trace_of_a_dropped_batch() -> None:
    link = CreditLink(2)
    g = GateState("u", AGGREGATE, size=2, link=link)
    for f in feeds_of(1, 3, open_arity=True)[:2] + feeds_of(2, 2):
        g.enqueue(f)
    assert g.try_aggregate() is not None and link.outstanding == {1: 1}
    assert g.state_entries() == 3  # two open records, one credit lent
    assert g.drop(1) == [1] and link.available == 2
    assert g.state_entries() == 2  # batch 2 open; batch 1 remembered as dropped
    assert g.declare(1, 3) == DISCARDED and g.enqueue(feeds_of(1, 3)[2]) == DISCARDED
    g.forget(1)
    assert g.state_entries() == 1 and not g.dropped_roots
    assert g.try_aggregate() is not None and g.take_closed() == [2]
    assert link.release(2) and g.state_entries() == 0
    g.check()


def test_plain_fifo_within_batch_and_oldest_batch_first() -> None:
    g = GateState("g")
    a, b = feeds_of(1, 3), feeds_of(2, 2)
    for f in (b[0], a[0], a[1], b[1], a[2]):  # batch 2 opened first
        assert g.enqueue(f) == ENQUEUED
    out = [g.try_dequeue() for _ in range(5)]
    assert [f.payload for f in out if f] == ["2:0", "2:1", "1:0", "1:1", "1:2"]
    assert g.try_dequeue() is None
    assert g.take_closed() == [2, 1]
    g.check()


def test_capacity_reports_full() -> None:
    g = GateState("g", capacity=2)
    for f in feeds_of(1, 2):
        g.enqueue(f)
    assert g.full()
    g.try_dequeue()
    assert not g.full()


def test_capacity_rejected_for_grouping_modes() -> None:
    with pytest.raises(ValueError, match="capacity"):
        GateState("g", AGGREGATE, size=2, capacity=4)
    with pytest.raises(ValueError, match="capacity"):
        GateState("g", BATCH, capacity=4)


def test_aggregate_groups_by_position_with_short_last_group() -> None:
    g = GateState("g", AGGREGATE, size=3)
    fs = feeds_of(7, 7)
    for i in (6, 0, 1, 4):
        g.enqueue(fs[i])
    last = g.try_aggregate()  # group 2 = {6} is complete (short), group 0 is not
    assert last is not None and last.payload == ["7:6"] and last.pos == (2,)
    assert last.meta == ((7, 3),)
    assert g.try_aggregate() is None
    g.enqueue(fs[2])
    first = g.try_aggregate()
    assert first is not None and first.payload == ["7:0", "7:1", "7:2"] and first.pos == (0,)
    g.enqueue(fs[3])
    g.enqueue(fs[5])
    mid = g.try_aggregate()
    assert mid is not None and mid.payload == ["7:3", "7:4", "7:5"]
    assert g.take_closed() == [7] and not g.open
    g.check()


@pytest.mark.parametrize("arity,size", [(1, 1), (5, 2), (6, 3), (7, 10)])
def test_aggregate_arity(arity: int, size: int) -> None:
    groups = aggregate_arity(arity, size)
    assert sum(group_size(arity, size, k) for k in range(groups)) == arity
    assert all(group_size(arity, size, k) >= 1 for k in range(groups))


def test_batch_mode_take_by_id_in_position_order() -> None:
    g = GateState("egress", BATCH)
    fs = feeds_of(3, 3)
    assert g.enqueue(fs[2]) == ENQUEUED
    assert g.enqueue(fs[0]) == ENQUEUED
    assert g.try_take(3) is None
    assert g.batch_progress(3) == (2, 3)
    assert g.enqueue(fs[1]) == COMPLETE
    assert [f.payload for f in g.try_take(3) or []] == ["3:0", "3:1", "3:2"]
    assert g.try_take(3) is None and g.take_closed() == [3]


def test_duplicate_feed_is_an_error() -> None:
    g = GateState("g", AGGREGATE, size=2)
    fs = feeds_of(1, 2)
    g.enqueue(fs[0])
    with pytest.raises(PipelineError, match="duplicated"):
        g.enqueue(Feed(fs[0].meta, fs[0].pos, "again"))
    p = GateState("p")
    one = feeds_of(2, 1)[0]
    p.enqueue(one)
    with pytest.raises(PipelineError, match="duplicated"):
        p.enqueue(one)


def test_drop_discards_buffered_and_late_feeds_and_returns_credits() -> None:
    link = CreditLinkState(1)
    g = GateState("u", link=link)
    a, b = feeds_of(1, 2), feeds_of(2, 2)
    g.enqueue(a[0])
    g.enqueue(b[0])
    assert g.try_dequeue() is a[0]  # batch 1 admitted: uses the only credit
    g.enqueue(b[1])
    assert g.try_dequeue() is None  # batch 2 waits for a credit
    assert g.drop(1) == [1]
    assert link.available == 1
    assert g.enqueue(a[1]) == DISCARDED
    assert [g.try_dequeue(), g.try_dequeue()] == [b[0], b[1]]
    g.check()


def test_credit_returns_only_on_downstream_close() -> None:
    link = CreditLinkState(1)
    u = GateState("u", link=link)
    for f in feeds_of(1, 1) + feeds_of(2, 1):
        u.enqueue(f)
    assert u.try_dequeue() is not None
    assert u.take_closed() == [1]  # closed at U, but D has not closed it yet
    assert u.try_dequeue() is None
    assert link.release(1) and not link.release(1)
    assert u.try_dequeue() is not None
    link.check()


def test_partition_push_and_pop_round_trip() -> None:
    g = GateState("global", AGGREGATE, size=2)
    for f in feeds_of(5, 3):
        g.enqueue(f)
    part = g.try_partition()
    assert part is not None and part.meta == ((5, 2),) and part.pos == (0,)
    pid = new_batch_id()
    inner = push_partition(part, pid)
    assert [f.meta for f in inner] == [((5, 2), (pid, 2))] * 2
    assert [f.pos for f in inner] == [(0, 0), (0, 1)]
    local_last = GateState("last", BATCH)
    for f in reversed(inner):
        local_last.enqueue(f)
    got = local_last.try_take_any()
    assert got is not None
    out = pop_partition(got[0].meta, got[0].pos, [f.payload for f in got])
    assert out.meta == ((5, 2),) and out.pos == (0,) and out.payload == ["5:0", "5:1"]


class GateMachine(RuleBasedStateMachine):
    """Random operation sequences against a model of the gate contract."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Feed] = []  # produced upstream, not yet enqueued
        self.order: list[int] = []  # batch ids in opening order at the gate
        self.enq: dict[int, list[int]] = {}  # positions enqueued, in order
        self.deq: dict[int, list[int]] = {}
        self.arity: dict[int, int] = {}
        self.streaming: set[int] = set()  # arity open at the gate until declared
        self.declared: set[int] = set()
        self.dropped: set[int] = set()
        self.forgotten: set[int] = set()
        self.closed_at_u: list[int] = []

    @initialize(mode=st.sampled_from([PLAIN, AGGREGATE]), size=st.integers(1, 4),
                capacity=st.one_of(st.none(), st.integers(1, 6)),
                credits=st.one_of(st.none(), st.integers(1, 3)))
    def setup(self, mode: str, size: int, capacity: int | None, credits: int | None) -> None:
        self.mode, self.size = mode, size
        self.link = CreditLinkState(credits) if credits else None
        self.gate = GateState("g", mode, size=size if mode == AGGREGATE else None,
                              capacity=capacity if mode == PLAIN else None, link=self.link)

    @rule(arity=st.integers(1, 7), streaming=st.booleans(), data=st.data())
    def new_batch(self, arity: int, streaming: bool, data: st.DataObject) -> None:
        bid = new_batch_id()
        self.arity[bid] = arity
        if streaming:
            self.streaming.add(bid)
        fs = feeds_of(bid, arity, open_arity=streaming)
        self.pending.extend(data.draw(st.permutations(fs)))

    def _known(self, bid: int) -> bool:
        return bid not in self.streaming or bid in self.declared

    @precondition(lambda self: self.streaming - self.declared - self.forgotten)
    @rule(data=st.data())
    def declare(self, data: st.DataObject) -> None:
        bid = data.draw(st.sampled_from(sorted(self.streaming - self.declared - self.forgotten)))
        res = self.gate.declare(bid, self.arity[bid])
        self.declared.add(bid)
        if bid in self.dropped:
            assert res == DISCARDED
            return
        assert res == ENQUEUED
        if bid not in self.order:
            self.order.append(bid)  # the declaration opened the batch here
        closed = self.gate.take_closed()
        assert closed == ([bid] if len(self.deq.get(bid, [])) == self.arity[bid] else [])
        self.closed_at_u.extend(closed)

    @precondition(lambda self: self.dropped - self.forgotten)
    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        # the owner forgets a dropped batch once none of its feeds can arrive any more
        bid = data.draw(st.sampled_from(sorted(self.dropped - self.forgotten)))
        self.pending = [f for f in self.pending if f.batch_id != bid]
        self.gate.forget(bid)
        self.forgotten.add(bid)
        assert bid not in self.gate.dropped_roots and bid not in self.gate.open

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def enqueue(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.pending) - 1))
        if self.gate.full():
            return
        f = self.pending.pop(i)
        bid = f.batch_id
        res = self.gate.enqueue(f)
        if bid in self.dropped:
            assert res == DISCARDED
            return
        assert res == ENQUEUED
        if bid not in self.order:
            self.order.append(bid)
        self.enq.setdefault(bid, []).append(f.pos[-1])

    def _available(self, bid: int) -> list[int]:
        done = set(self.deq.get(bid, []))
        return [p for p in self.enq.get(bid, []) if p not in done]

    def _admissible(self, bid: int) -> bool:
        return self.link is None or bid in self.link.outstanding or self.link.available > 0

    def _complete_groups(self, bid: int) -> list[int]:
        have = set(self._available(bid))
        n = aggregate_arity(self.arity[bid], self.size)
        known = self._known(bid)  # else a short last group is not complete yet
        return [k for k in range(n)
                if (known or group_size(self.arity[bid], self.size, k) == self.size)
                and all(k * self.size + j in have
                        for j in range(group_size(self.arity[bid], self.size, k)))]

    def _open(self) -> list[int]:
        return [b for b in self.order if len(self.deq.get(b, [])) < self.arity[b]
                and b not in self.dropped]

    @rule()
    def dequeue(self) -> None:
        if self.mode == PLAIN:
            f = self.gate.try_dequeue()
            want = [b for b in self._open() if self._available(b) and self._admissible(b)]
            if f is None:
                assert not want
                return
            assert f.batch_id == want[0]  # oldest admissible batch
            assert f.pos[-1] == self._available(f.batch_id)[0]  # FIFO within the batch
            self.deq.setdefault(f.batch_id, []).append(f.pos[-1])
        else:
            f = self.gate.try_aggregate()
            want = [b for b in self._open() if self._complete_groups(b) and self._admissible(b)]
            if f is None:
                assert not want
                return
            bid = f.batch_id
            assert bid == want[0]
            k = f.pos[-1]
            assert k == self._complete_groups(bid)[0]
            n = group_size(self.arity[bid], self.size, k)
            assert f.payload == [f"{bid}:{k * self.size + j}" for j in range(n)]
            assert f.arity == (aggregate_arity(self.arity[bid], self.size)
                               if self._known(bid) else None)
            self.deq.setdefault(bid, []).extend(range(k * self.size, k * self.size + n))
        self.closed_at_u.extend(self.gate.take_closed())

    @precondition(lambda self: self.closed_at_u)
    @rule(data=st.data())
    def downstream_closes(self, data: st.DataObject) -> None:
        bid = self.closed_at_u.pop(data.draw(st.integers(0, len(self.closed_at_u) - 1)))
        if self.link is not None:
            self.link.release(bid)

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        bid = data.draw(st.sampled_from(self.order))
        if bid in self.forgotten:
            return
        self.gate.drop(bid)  # root == bid at one level
        self.dropped.add(bid)

    def _live_records(self) -> set[int]:
        """Batches the gate must hold a record of: opened here, not dropped, not closed."""
        return {b for b in self.order if b not in self.dropped
                and not (self._known(b) and len(self.deq.get(b, [])) == self.arity[b])}

    @invariant()
    def accounting_holds(self) -> None:
        if hasattr(self, "gate"):
            self.gate.check()
            assert set(self.gate.open) == self._live_records()
            lent = 0 if self.link is None else len(self.link.outstanding)
            assert self.gate.state_entries() == (len(self._live_records()) + lent
                                                 + len(self.dropped - self.forgotten))
            for bid in self.deq:
                assert len(self.deq[bid]) == len(set(self.deq[bid]))  # no duplicates
                assert set(self.deq[bid]) <= set(self.enq[bid])  # no invented feeds


TestGateMachine = GateMachine.TestCase
TestGateMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


def test_occupancy_failed_batch_is_quiescent_after_last_slot_leaves() -> None:
    from persona.errors import StageError
    from persona.ptf.occupancy import FAILER, IDLE, Occupancy

    occ = Occupancy()
    a, b, c = (occ.add_slot(f"s/{i}") for i in range(3))
    occ.slots[a] = occ.slots[b] = 7  # two calls on batch 7, one on batch 8
    occ.slots[c] = 8
    assert occ.inside(7) == 2 and occ.inside(8) == 1 and occ.inside(9) == 0
    err = StageError("boom", batch=7)
    occ.fail(7, err)
    with pytest.raises(ValueError, match="twice"):
        occ.fail(7, err)
    assert occ.snapshot() == {7: ["(dropping)", "s/0", "s/1"]}
    occ.check()
    assert occ.leave(7, FAILER) is None  # gates dropped, calls still running
    occ.slots[a] = IDLE
    assert occ.leave(7, a) is None
    assert occ.leave(7, c) is None  # slot c was not inside batch 7: no-op
    assert occ.leave(7, a) is None  # idempotent
    occ.slots[b] = IDLE
    assert occ.leave(7, b) is err  # the last one out finishes the batch, exactly once
    assert occ.leave(7, b) is None and occ.snapshot() == {}
    occ.check()
    occ.fail(8, err)  # slot c still on batch 8
    assert occ.forget(8) is err and occ.forget(8) is None and occ.leave(8, c) is None
    occ.fail(9, err)  # nothing inside: quiescent once the failer leaves
    assert occ.leave(9, FAILER) is err
    occ.check()
