"""Streaming ingress, done callbacks and a long-running pipeline that stays flat (every wait
has a timeout)."""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ptf_pipeline import POISON, CallLog, Step, build, reference, steps_st

from persona.errors import BatchCancelled, PipelineError, StageError
from persona.ptf import (GateSpec, LocalPipelineSpec, Pipeline, PipelineSpec, StageSpec,
                         StreamingBatch, testing)

T = 20.0
pytestmark = pytest.mark.timeout(180)


def inc(x: int) -> int:
    return x + 1


class Seen:
    """A stage that records what it saw and lets tests wait for a count."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.cond = threading.Condition()

    def __call__(self, x: Any) -> Any:
        with self.cond:
            self.items.append(x)
            self.cond.notify_all()
        return x

    def wait_for(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, T), self.items


def test_feeds_flow_before_close_and_the_last_group_waits_for_it() -> None:
    seen_plain, seen_groups = Seen(), Seen()
    spec = PipelineSpec.chain("st", [StageSpec("inc", inc), StageSpec("see", seen_plain),
                                     StageSpec("pairs", seen_groups, aggregate=2)], credits=2)
    with Pipeline(spec) as p:
        stream = p.open_batch()
        assert isinstance(stream, StreamingBatch) and not stream.handle.done()
        for x in range(5):
            assert stream.put(x) == x
        seen_plain.wait_for(5)  # every feed went through before the source ended
        seen_groups.wait_for(2)  # the full groups too
        time.sleep(0.05)
        assert seen_groups.items == [[1, 2], [3, 4]]  # group {4} may still grow
        assert stream.handle.progress() == (2, None) and stream.handle.expected is None
        h = stream.close()
        assert h is stream.handle and h.result(T) == [[1, 2], [3, 4], [5]]
        assert (h.arity, h.expected, h.progress()) == (5, 3, (3, 3))
        assert stream.count == 5
        p.drain(T)
        assert p.state_entries() == 0


def test_empty_stream_finishes_with_no_results() -> None:
    spec = PipelineSpec.chain("e", [StageSpec("pairs", sum, aggregate=2)])
    with Pipeline(spec) as p:
        h = p.open_batch().close()
        assert h.result(T) == [] and h.progress() == (0, 0)
        with p.open_batch() as s:  # context manager: closes on success
            pass
        assert s.handle.result(T) == []
        p.drain(T)
        assert p.state_entries() == 0 and p.stats()["batches_done"] == 2


def test_stream_through_a_local_pipeline() -> None:
    inner = PipelineSpec.chain("in", [StageSpec("inc", inc)], credits=None)
    spec = PipelineSpec("o", "o.g0", "o.g1", (GateSpec("o.g0"), GateSpec("o.g1")), (), (),
                        (LocalPipelineSpec("loc", "o.g0", "o.g1", inner, partition_size=3,
                                           replicas=2, credits=1),))
    with Pipeline(spec) as p:
        s = p.open_batch()
        for x in range(7):
            s.put(x)
        assert s.close().result(T) == [[1, 2, 3], [4, 5, 6], [7]]
        p.drain(T)
        assert p.state_entries() == 0


def test_put_after_failure_raises_so_the_producer_stops() -> None:
    def picky(x: int) -> int:
        if x == 3:
            raise ValueError("bad chunk")
        return x

    with Pipeline(PipelineSpec.chain("pf", [StageSpec("picky", picky)])) as p:
        s = p.open_batch()
        s.put(3)
        with pytest.raises(StageError, match="bad chunk"):
            s.handle.result(T)
        with pytest.raises(PipelineError, match="stop producing"):
            s.put(4)
        assert s.close() is s.handle  # closing a failed stream is harmless
        other = p.open_batch()  # other streams go on
        other.put(1)
        assert other.close().result(T) == [1]
        p.drain(T)
        assert p.state_entries() == 0 and not p._dropped


def test_abort_cancel_and_closed_streams() -> None:
    with Pipeline(PipelineSpec.chain("ab", [StageSpec("inc", inc)])) as p:
        a = p.open_batch()
        a.put(1)
        assert a.abort() and not a.abort()
        with pytest.raises(BatchCancelled):
            a.handle.result(T)
        b = p.open_batch()
        b.put(1)
        assert b.abort(KeyError("disk gone"))
        with pytest.raises(PipelineError, match="aborted by its producer: KeyError") as e:
            b.handle.result(T)
        assert isinstance(e.value.__cause__, KeyError)
        c = p.open_batch()
        assert c.handle.cancel()  # the handle works before close
        with pytest.raises(PipelineError):
            c.put(0)
        d = p.open_batch()
        d.put(5)
        d.close()
        with pytest.raises(PipelineError, match="closed"):
            d.put(6)
        assert d.handle.result(T) == [6]
        with pytest.raises(RuntimeError, match="boom"):
            with p.open_batch() as e2:  # context manager: aborts if the block raised
                e2.put(1)
                raise RuntimeError("boom")
        with pytest.raises(PipelineError, match="RuntimeError: boom"):
            e2.handle.result(T)
        p.drain(T)
        assert p.state_entries() == 0


def test_drain_waits_for_open_streams_and_stop_fails_them() -> None:
    p = Pipeline(PipelineSpec.chain("dr", [StageSpec("inc", inc)])).start()
    s = p.open_batch()
    s.put(1)
    with pytest.raises(TimeoutError):
        p.drain(timeout=0.2)
    s.put(2)  # puts on an open stream still go in while draining
    with pytest.raises(PipelineError, match="draining"):
        p.open_batch()
    assert s.close().result(T) == [2, 3]
    p.drain(T)
    s2 = Pipeline(PipelineSpec.chain("dr2", [StageSpec("inc", inc)])).start()
    t = s2.open_batch()
    s2.stop()
    with pytest.raises(PipelineError, match="pipeline stopped"):
        t.handle.result(T)
    with pytest.raises(PipelineError):
        t.put(1)
    p.stop()


def test_done_callbacks_run_once_from_the_finishing_thread(caplog: Any) -> None:
    calls: list[tuple[int, str]] = []
    called = threading.Event()

    def record(h: Any) -> None:
        calls.append((h.id, threading.current_thread().name))
        called.set()

    def bad(h: Any) -> None:
        raise RuntimeError("callback bug")

    with Pipeline(PipelineSpec.chain("cb", [StageSpec("inc", inc)])) as p:
        s = p.open_batch()
        s.handle.add_done_callback(record)
        s.handle.add_done_callback(bad)
        s.put(1)
        with caplog.at_level(logging.ERROR, logger="persona.ptf"):
            assert s.close().result(T) == [2]
            assert called.wait(T)
            time.sleep(0.05)  # the failing callback runs right after
        assert [c[0] for c in calls] == [s.id]
        assert "callback bug" in caplog.text
        s.handle.add_done_callback(record)  # already done: called at once, here
        assert calls[-1] == (s.id, threading.current_thread().name) and len(calls) == 2
        h = p.submit([])
        h.add_done_callback(record)
        assert calls[-1][0] == h.id


def test_asyncio_awaits_a_batch_without_a_thread() -> None:
    def slow(x: int) -> int:
        time.sleep(0.01)
        return x * 2

    async def main(p: Pipeline) -> list[list[int]]:
        loop = asyncio.get_running_loop()

        def wait(h: Any) -> asyncio.Future[Any]:
            fut = loop.create_future()
            h.add_done_callback(lambda h: loop.call_soon_threadsafe(
                lambda: fut.done() or fut.set_result(h)))
            return fut

        async def one(n: int) -> list[int]:
            s = p.open_batch()
            for x in range(n):
                s.put(x)
                await asyncio.sleep(0)
            done = await asyncio.wait_for(wait(s.close()), T)
            return done.result(0)

        return list(await asyncio.gather(*(one(n) for n in (3, 0, 5))))

    with Pipeline(PipelineSpec.chain("aio", [StageSpec("slow", slow, replicas=2)])) as p:
        n_threads = threading.active_count()
        assert asyncio.run(main(p)) == [[0, 2, 4], [], [0, 2, 4, 6, 8]]
        assert threading.active_count() <= n_threads + 1  # asyncio's own, at most


# -- random pipelines fed by streams against the sequential reference --------------------

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=steps_st(), batches=st.lists(st.integers(0, 10), min_size=1, max_size=4),
       poison=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), max_size=1),
       poison_stage=st.integers(0, 8), streamed=st.lists(st.booleans(), min_size=4, max_size=4),
       abort=st.lists(st.integers(0, 3), max_size=1), seed=st.integers(0, 2**16))
def test_random_streams_match_sequential_reference(shape: tuple[list[Step], int | None],
                                                   batches: list[int],
                                                   poison: list[tuple[int, int]],
                                                   poison_stage: int, streamed: list[bool],
                                                   abort: list[int], seed: int) -> None:
    steps, link = shape
    tags = [s.tag for s in steps] + [t.tag for s in steps for t in (s.inner or [])]
    poison_tag = tags[poison_stage % len(tags)] if poison else None
    log = CallLog(slow={b for b, _ in poison} | set(abort))
    spec = build("r", steps, link, poison_tag, log)
    inputs = [[(POISON, b) if (b, i) in poison else (b, i) for i in range(n)]
              for b, n in enumerate(batches)]
    handles: dict[int, Any] = {}
    aborted: set[int] = set()

    def produce(b: int, items: list[Any], p: Pipeline) -> None:
        rng = random.Random(seed + b)
        s = p.open_batch()
        handles[b] = s.handle
        for i, x in enumerate(items):
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.003)  # random put timing
            if b in abort and i == len(items) // 2:
                if s.abort():  # the producer gives up half way
                    aborted.add(b)
            try:
                s.put(x)
            except PipelineError:  # failed: stop producing
                break
        if rng.random() < 0.3:
            time.sleep(0.002)
        s.close()

    failed_at: dict[int, int] = {}
    with Pipeline(spec) as p:
        threads = []
        for b, items in enumerate(inputs):
            if streamed[b % len(streamed)] or b in abort:
                threads.append(threading.Thread(target=produce, args=(b, items, p)))
                threads[-1].start()
            else:
                handles[b] = p.submit(items)
        for t in threads:
            t.join(T)
        for b, items in enumerate(inputs):
            h = handles[b]
            if b in aborted:
                assert isinstance(h.exception(T), BatchCancelled)
                failed_at[b] = len(log.events)
                continue
            try:
                want = reference(steps, items, poison_tag)
            except ValueError as e:
                with pytest.raises(StageError) as got:
                    h.result(T)
                failed_at[b] = len(log.events)
                assert str(got.value.context["stage"]).endswith(str(e))
                continue
            assert h.result(T) == want
            assert h.progress() == (len(want), len(want))
        p.drain(T)
        p.check()
        stats = p.stats()
        assert p.state_entries() == 0, stats
        assert not p._dropped
    by_id = {g["id"]: g for g in stats["gates"]}
    if link:  # open streams hold credits like any batch: the bound holds
        for i in range(1, len(steps) + 1):
            assert by_id[f"r.g{i}"]["max_open_batches"] <= link, by_id[f"r.g{i}"]
    # quiescence: once a failed batch's result() raised, none of its stage calls starts or ends
    for b, mark in failed_at.items():
        assert b not in {lb for lb, _ in log.events[mark:]}, (b, log.events[mark:])


# -- a long-running pipeline stays flat ---------------------------------------------------

def test_soak_leaves_no_state_behind() -> None:
    with Pipeline(testing.soak_spec(credits=4)) as p:
        counts = testing.soak(p, 2000, timeout=T)
        p.drain(T)
        assert counts["failed"] > 50 and counts["cancelled"] > 50 and counts["streamed"] > 500
        assert counts["done"] + counts["failed"] + counts["cancelled"] == 2000
        stats = p.stats()
        assert p.state_entries() == 0, stats
        assert stats["state_entries"] == 0 and stats["batches_quiescing"] == {}
        assert not p._dropped
        for g in p.gates:
            assert not g.state.dropped_roots and not g.state.open and not g.state.closed_batches
            assert g.link is None or not g.link.outstanding
        assert stats["batches_done"] == counts["done"]
        assert stats["batches_failed"] == counts["failed"] + counts["cancelled"]
