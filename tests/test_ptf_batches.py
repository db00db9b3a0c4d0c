"""Batch bookkeeping (:class:`BatchTable`) driven deterministically against a model: submitted
and streaming batches, deliveries, failures, quiescence, stop; nothing is left behind."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from persona.errors import BatchCancelled, PipelineError, StageError
from persona.ptf.batches import FAILED, RUNNING, STREAMING, BatchTable
from persona.ptf.occupancy import FAILER, IDLE

pytestmark = pytest.mark.timeout(120)

SLOTS = 4


@dataclass
class Handle:
    """Stands for a BatchHandle: the table never looks inside."""
    bid: int
    finished: list[object] = field(default_factory=list)


def test_streaming_batch_lifecycle() -> None:
    t = BatchTable()
    h = Handle(1)
    t.open(1, h)
    assert [t.put(1), t.put(1), t.put(1)] == [0, 1, 2]
    assert t.close(1) == 3 and t.close(1) is None  # closing twice declares nothing
    with pytest.raises(PipelineError, match="closed"):
        t.put(1)
    assert t.deliver(1) is h and t.deliver(1) is None
    assert t.state_entries() == 0 and t.done == 1
    t.open(2, Handle(2))
    assert t.close(2) == 0 and t.finish_empty(2).bid == 2 and t.state_entries() == 0
    with pytest.raises(ValueError, match="twice"):
        t.open(3, Handle(3))
        t.open(3, Handle(3))


def test_failed_batch_is_removed_when_quiescent_and_refuses_puts() -> None:
    t = BatchTable()
    t.open(5, Handle(5))
    t.put(5)
    k = t.occupancy.add_slot("s/0")
    t.occupancy.slots[k] = 5  # a stage call on batch 5
    err = BatchCancelled("cancelled", batch=5)
    assert t.fail(5, err) and not t.fail(5, err)
    with pytest.raises(PipelineError, match="failed or was cancelled"):
        t.put(5)
    assert t.close(5) is None and t.deliver(5) is None
    t.record(5)
    assert t.leave(5, FAILER) is None and 5 in t.dropped
    t.occupancy.slots[k] = IDLE
    assert t.leave(5, k) == (Handle(5), err)
    assert t.state_entries() == 0 and not t.dropped and t.failed == 1
    assert t.leave(5, k) is None and not t.fail(5, err)
    t.check()


class BatchMachine(RuleBasedStateMachine):
    """Random interleavings of producers, the egress, failers and stage slots."""

    def __init__(self) -> None:
        super().__init__()
        self.t = BatchTable()
        self.slots = [self.t.occupancy.add_slot(f"s/{i}") for i in range(SLOTS)]
        self.next_id = 1
        self.live: dict[int, str] = {}  # model: bid -> streaming | running | failed
        self.arity: dict[int, int | None] = {}
        self.puts: dict[int, int] = {}
        self.handles: dict[int, Handle] = {}
        self.errors: dict[int, object] = {}
        self.failer: set[int] = set()  # failers that have not recorded + left yet
        self.dropping: set[int] = set()  # failed, gates not all dropped yet: feeds still taken
        self.finished: dict[int, tuple[str, object]] = {}

    def _finish(self, bid: int, how: str, what: object) -> None:
        assert bid not in self.finished, f"batch {bid} finished twice"
        self.finished[bid] = (how, what)
        self.live.pop(bid, None)

    # -- producers -------------------------------------------------------------
    @rule(arity=st.one_of(st.none(), st.integers(1, 4)))
    def open(self, arity: int | None) -> None:
        bid = self.next_id
        self.next_id += 1
        self.handles[bid] = Handle(bid)
        self.t.open(bid, self.handles[bid], arity)
        self.live[bid] = STREAMING if arity is None else RUNNING
        self.arity[bid] = arity
        self.puts[bid] = 0

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def put(self, data: st.DataObject) -> None:
        bid = data.draw(st.sampled_from(sorted(self.handles)))
        if self.live.get(bid) == STREAMING:
            assert self.t.put(bid) == self.puts[bid]
            self.puts[bid] += 1
        else:
            with pytest.raises(PipelineError):
                self.t.put(bid)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        bid = data.draw(st.sampled_from(sorted(self.handles)))
        got = self.t.close(bid)
        if self.live.get(bid) != STREAMING:
            assert got is None
            return
        assert got == self.puts[bid]
        self.arity[bid] = got
        self.live[bid] = RUNNING
        if got == 0:  # the pipeline finishes an empty stream at once
            assert self.t.finish_empty(bid) is self.handles[bid]
            self._finish(bid, "done", [])

    # -- the egress ------------------------------------------------------------
    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        # the egress only ever holds a whole batch whose arity is known
        cands = sorted(b for b in self.handles if self.arity[b])
        if not cands:
            return
        bid = data.draw(st.sampled_from(cands))
        got = self.t.deliver(bid)
        if self.live.get(bid) == RUNNING:
            assert got is self.handles[bid]
            self._finish(bid, "done", "results")
        else:
            assert got is None  # failed meanwhile (finishes when quiescent) or finished

    # -- stage slots -------------------------------------------------------------
    @rule(slot=st.integers(0, SLOTS - 1), data=st.data())
    def take_feed(self, slot: int, data: st.DataObject) -> None:
        # a dequeue publishes the batch; feeds of a failed batch can be taken only until
        # the failer has dropped it at every gate
        k = self.slots[slot]
        cands = sorted(b for b, s in self.live.items() if s != FAILED or b in self.dropping)
        if self.t.occupancy.slots[k] != IDLE or not cands:
            return
        self.t.occupancy.slots[k] = data.draw(st.sampled_from(cands))

    @rule(slot=st.integers(0, SLOTS - 1))
    def put_feed_downstream(self, slot: int) -> None:
        k = self.slots[slot]
        bid = self.t.occupancy.slots[k]
        if bid == IDLE:
            return
        self.t.occupancy.slots[k] = IDLE
        if bid in self.t.dropped:  # the holder's check after clearing its slot
            self._left(bid, k)

    def _left(self, bid: int, slot: int) -> None:
        got = self.t.leave(bid, slot)
        if got is None:
            return
        assert self.live.get(bid) == FAILED and bid not in self.failer
        assert bid not in self.t.occupancy.slots, "finished while a feed is held"
        h, err = got
        assert h is self.handles[bid] and err is self.errors[bid]
        self._finish(bid, "failed", err)

    # -- failures ----------------------------------------------------------------
    @precondition(lambda self: self.handles)
    @rule(data=st.data(), cancel=st.booleans())
    def fail(self, data: st.DataObject, cancel: bool) -> None:
        bid = data.draw(st.sampled_from(sorted(self.handles)))
        err = BatchCancelled("x", batch=bid) if cancel else StageError("x", batch=bid)
        ok = self.t.fail(bid, err)
        if self.live.get(bid) in (STREAMING, RUNNING):
            assert ok and bid in self.t.dropped
            self.live[bid] = FAILED
            self.errors[bid] = err
            self.failer.add(bid)
            self.dropping.add(bid)
        else:
            assert not ok

    @precondition(lambda self: self.dropping)
    @rule(data=st.data())
    def gates_dropped(self, data: st.DataObject) -> None:
        bid = data.draw(st.sampled_from(sorted(self.dropping)))
        self.dropping.discard(bid)
        self.t.record(bid)

    @precondition(lambda self: self.failer - self.dropping)
    @rule(data=st.data())
    def failer_leaves(self, data: st.DataObject) -> None:
        bid = data.draw(st.sampled_from(sorted(self.failer - self.dropping)))
        self.failer.discard(bid)
        self._left(bid, FAILER)

    @precondition(lambda self: not self.failer)
    @rule()
    def stop(self) -> None:
        got = self.t.stop()
        assert sorted(h.bid for h, _ in got) == sorted(self.live)
        for h, err in got:
            assert err is (self.errors[h.bid] if self.live[h.bid] == FAILED else None)
            self._finish(h.bid, "stopped", err)
        for k in self.slots:
            self.t.occupancy.slots[k] = IDLE
        self.dropping.clear()
        assert self.t.state_entries() == 0

    @invariant()
    def table_matches_model(self) -> None:
        self.t.check()
        assert {b: e.state for b, e in self.t.entries.items()} == self.live
        assert self.t.dropped == {b for b, s in self.live.items() if s == FAILED}
        # a long-running table stays flat: only live batches hold entries
        failed = sum(1 for s in self.live.values() if s == FAILED)
        assert self.t.state_entries() == len(self.live) + 3 * failed
        assert self.t.done == sum(1 for how, _ in self.finished.values() if how == "done")


TestBatchMachine = BatchMachine.TestCase
TestBatchMachine.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


def test_occupancy_record_after_the_drops_sees_late_takers() -> None:
    from persona.ptf.occupancy import Occupancy

    occ = Occupancy()
    a, b = occ.add_slot("s/0"), occ.add_slot("s/1")
    err = StageError("boom", batch=3)
    occ.fail(3, err)  # nothing inside yet
    occ.slots[a] = 3  # took a feed of 3 from a gate not dropped yet
    occ.record(3)  # every gate dropped 3: slot a is recorded now
    assert occ.leave(3, FAILER) is None
    occ.slots[a] = IDLE
    assert occ.leave(3, a) is err and occ.state_entries() == 0
    occ.slots[b] = 4
    occ.record(4)  # not failed: no-op
    assert occ.state_entries() == 0
