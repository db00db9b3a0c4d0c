"""The threaded runtime: lifecycle, failures, cancellation, pools, and random pipelines
checked against a sequential reference (every wait has a timeout)."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona.errors import BatchCancelled, PipelineError, StageError
from persona.ptf import (Buffer, CreditLinkSpec, GateSpec, LocalPipelineSpec, Pipeline,
                         PipelineSpec, ResourcePool, StageSpec, buffer_pool)
from persona.ptf.metadata import aggregate_arity

T = 20.0  # seconds: any wait longer than this is a deadlock
pytestmark = pytest.mark.timeout(120)


def inc(x: int) -> int:
    return x + 1


def test_results_are_ordered_and_replicas_run_in_parallel() -> None:
    def slow(x: int) -> int:
        time.sleep(0.05)  # releases the GIL like a kernel would
        return x * 10

    spec = PipelineSpec.chain("par", [StageSpec("slow", slow, replicas=4), StageSpec("inc", inc)])
    with Pipeline(spec) as p:
        t0 = time.perf_counter()
        assert p.submit(range(16)).result(T) == [x * 10 + 1 for x in range(16)]
        assert time.perf_counter() - t0 < 16 * 0.05 / 2
        stats = p.stats()
    slow_stats = stats["stages"][0]
    assert slow_stats["feeds"] == 16 and slow_stats["busy_seconds"] >= 16 * 0.04


def test_empty_batch_and_lifecycle() -> None:
    p = Pipeline(PipelineSpec.chain("life", [StageSpec("inc", inc)]))
    with pytest.raises(PipelineError, match="cannot submit"):
        p.submit([1])
    p.start()
    p.start()  # idempotent
    assert p.submit([]).result(T) == []
    h = p.submit([1, 2, 3])
    p.drain(timeout=T)
    assert h.result(0) == [2, 3, 4] and h.progress() == (3, 3)
    with pytest.raises(PipelineError, match="draining"):
        p.submit([1])
    p.stop()
    p.stop()  # idempotent
    with pytest.raises(PipelineError, match="stopped"):
        p.start()
    assert all(not t.is_alive() for s in p._stages for t in s.threads)


def test_stop_fails_pending_batches() -> None:
    gate = threading.Event()

    def wait(x: int) -> int:
        gate.wait(T)
        return x

    p = Pipeline(PipelineSpec.chain("stop", [StageSpec("wait", wait)])).start()
    h = p.submit([1, 2])
    p.stop(timeout=0.1)
    gate.set()
    with pytest.raises(PipelineError, match="pipeline stopped"):
        h.result(T)


def test_failure_names_stage_batch_feed_and_spares_other_batches() -> None:
    def picky(x: int) -> int:
        if x == 13:
            raise ValueError("unlucky")
        return x

    spec = PipelineSpec.chain("fail", [StageSpec("picky", picky, replicas=2),
                                       StageSpec("sum", sum, aggregate=3)], capacity=2, credits=2)
    with Pipeline(spec) as p:
        bad = p.submit(range(30))
        good = [p.submit(range(i, i + 9)) for i in (0, 20)]
        with pytest.raises(StageError) as e:
            bad.result(T)
        assert e.value.context == {"stage": "picky", "batch": bad.id, "feed": "13"}
        assert isinstance(e.value.__cause__, ValueError)
        assert [h.result(T) for h in good] == [[3, 12, 21], [63, 72, 81]]
        p.drain(T)
        snaps = p.stats()["gates"]
    assert all(s["depth"] == 0 and not s["batches"] for s in snaps)
    assert snaps[0]["credits_available"] == 2  # the failed batch's credit came back


def test_cancel_drops_batch_and_returns_credits() -> None:
    release = threading.Event()

    def hold(x: int) -> int:
        release.wait(T)
        return x

    spec = PipelineSpec.chain("cancel", [StageSpec("hold", hold), StageSpec("inc", inc)],
                              capacity=2, credits=1)
    with Pipeline(spec) as p:
        a = p.submit(range(50))
        b = p.submit(range(3))  # waits for a's credit
        assert a.cancel() and not a.cancel()
        release.set()
        assert b.result(T) == [1, 2, 3]
        with pytest.raises(BatchCancelled):
            a.result(T)
        assert not b.cancel()
        assert p.stats()["gates"][0]["credits_available"] == 1


def test_resource_pool_bounds_and_returns_to_origin() -> None:
    pool = buffer_pool(2, capacity=16, name="bufs")
    other = ResourcePool(lambda: Buffer(0), 1, name="other", reset=Buffer.clear)
    a, b = pool.acquire(), pool.acquire()
    a.value.extend(b"x" * 100)
    cap = a.value.capacity
    with pytest.raises(PipelineError, match="timed out"):
        pool.acquire(timeout=0.05)
    a.release()
    with pytest.raises(PipelineError, match="twice"):
        a.release()
    c = pool.acquire(timeout=T)
    assert c.value is a.value and c.value.size == 0 and c.value.capacity == cap
    assert pool.stats() == {"size": 2, "created": 2, "free": 0, "in_use": 2, "waits": 1}
    with other.acquire() as o:
        assert isinstance(o, Buffer)
    assert other.stats()["free"] == 1 and pool.stats()["free"] == 0
    b.release()
    c.release()
    assert pool.stats()["free"] == 2


# -- random pipelines against a sequential reference --------------------------------

POISON = "poison"


@dataclass
class Step:
    kind: str  # plain | agg | local
    tag: str
    replicas: int = 1
    size: int = 1  # aggregate S or partition size P
    capacity: int | None = None  # of the gate in front (plain consumers only)
    credits: int = 1  # local: partitions in flight per replica
    inner: list[Step] | None = None
    inner_link: int | None = None


def has_poison(x: Any) -> bool:
    if isinstance(x, (tuple, list)):
        return any(has_poison(y) for y in x)
    return x == POISON


def batch_of(x: Any) -> int:
    """Input batch index of a payload: leaves are ``(b, i)`` or ``(POISON, b)``."""
    while True:
        if isinstance(x, tuple) and len(x) == 2 and x[0] == POISON:
            return int(x[1])
        if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], int):
            return x[0]
        x = x[1] if isinstance(x, tuple) and isinstance(x[0], str) else x[0]


@dataclass
class CallLog:
    """Every stage call of a random pipeline as ``(input batch, "start" | "end")``; calls on
    ``slow`` batches (those that fail) often take a while, so some outlast the failure."""
    events: list[tuple[int, str]] = field(default_factory=list)
    slow: set[int] = field(default_factory=set)


def make_fn(step: Step, poison_tag: str | None, log: CallLog | None) -> Any:
    def fn(x: Any) -> Any:
        b = -1
        if log is not None:
            b = batch_of(x)
            log.events.append((b, "start"))
        try:
            if b in log.slow if log is not None else False:
                if random.random() < 0.5:
                    time.sleep(0.002)
            elif random.random() < 0.2:
                time.sleep(0.0002)  # shuffle completion order across replicas
            if step.tag == poison_tag and has_poison(x):
                raise ValueError(f"poisoned in {step.tag}")
            return (step.tag, tuple(x) if step.kind == "agg" else x)
        finally:
            if log is not None:
                log.events.append((b, "end"))
    return fn


def reference(steps: list[Step], items: list[Any], poison_tag: str | None) -> list[Any]:
    for s in steps:
        if s.kind == "plain":
            if s.tag == poison_tag and any(has_poison(x) for x in items):
                raise ValueError(s.tag)
            items = [(s.tag, x) for x in items]
        elif s.kind == "agg":
            groups = [items[k * s.size:(k + 1) * s.size]
                      for k in range(aggregate_arity(len(items), s.size))]
            if s.tag == poison_tag and any(has_poison(g) for g in groups):
                raise ValueError(s.tag)
            items = [(s.tag, tuple(g)) for g in groups]
        else:
            assert s.inner is not None
            items = [reference(s.inner, items[k * s.size:(k + 1) * s.size], poison_tag)
                     for k in range(aggregate_arity(len(items), s.size))]
    return items


def build(name: str, steps: list[Step], link: int | None, poison_tag: str | None,
          log: CallLog | None = None) -> PipelineSpec:
    gates = [GateSpec(f"{name}.g{i}", None if i == 0 or steps[i].kind != "plain"
                      else steps[i].capacity) for i in range(len(steps))]
    gates.append(GateSpec(f"{name}.g{len(steps)}"))
    stages, locals_ = [], []
    for i, s in enumerate(steps):
        inp, out = gates[i].id, gates[i + 1].id
        if s.kind == "local":
            assert s.inner is not None
            locals_.append(LocalPipelineSpec(s.tag, inp, out,
                                             build(f"{s.tag}.in", s.inner, s.inner_link, poison_tag,
                                                   log),
                                             partition_size=s.size, replicas=s.replicas,
                                             credits=s.credits))
        else:
            stages.append(StageSpec(s.tag, make_fn(s, poison_tag, log), inp, out, s.replicas,
                                    s.size if s.kind == "agg" else None))
    links = (CreditLinkSpec(gates[0].id, gates[-1].id, link),) if link else ()
    return PipelineSpec(name, gates[0].id, gates[-1].id, tuple(gates), tuple(stages), links,
                        tuple(locals_))


@st.composite
def steps_st(draw: st.DrawFn, depth: int = 0, prefix: str = "s") -> tuple[list[Step], int | None]:
    n = draw(st.integers(1, 3))
    kinds = ["plain", "agg"] + (["local"] if depth == 0 else [])
    steps = []
    for i in range(n):
        kind = draw(st.sampled_from(kinds))
        tag = f"{prefix}{i}"
        if kind == "local":
            inner, inner_link = draw(steps_st(depth + 1, prefix=f"{tag}x"))
            steps.append(Step(kind, tag, draw(st.integers(1, 2)), draw(st.integers(1, 4)),
                              credits=draw(st.integers(1, 2)), inner=inner,
                              inner_link=inner_link))
        else:
            steps.append(Step(kind, tag, draw(st.integers(1, 3)),
                              draw(st.integers(1, 4)) if kind == "agg" else 1,
                              capacity=draw(st.integers(1, 4))))
    needs_link = any(s.kind != "plain" for s in steps[1:])
    link = draw(st.integers(1, 3)) if needs_link else draw(st.one_of(st.none(), st.integers(1, 3)))
    return steps, link


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=steps_st(), batches=st.lists(st.integers(0, 12), min_size=1, max_size=5),
       poison=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 11)), max_size=2),
       poison_stage=st.integers(0, 8), cancel=st.lists(st.integers(0, 4), max_size=2),
       data=st.data())
def test_random_pipelines_match_sequential_reference(shape: tuple[list[Step], int | None],
                                                     batches: list[int],
                                                     poison: list[tuple[int, int]],
                                                     poison_stage: int, cancel: list[int],
                                                     data: st.DataObject) -> None:
    steps, link = shape
    tags = [s.tag for s in steps] + [t.tag for s in steps for t in (s.inner or [])]
    poison_tag = tags[poison_stage % len(tags)] if poison else None
    log = CallLog(slow={b for b, _ in poison} | set(cancel))
    spec = build("r", steps, link, poison_tag, log)
    inputs = [[(POISON, b) if (b, i) in poison else (b, i) for i in range(n)]
              for b, n in enumerate(batches)]
    failed_at: dict[int, int] = {}  # failed batch -> len(log.events) when result() raised
    with Pipeline(spec) as p:
        handles = [p.submit(items) for items in inputs]
        cancelled = {b for b in cancel if b < len(handles) and handles[b].cancel()}
        for b, (h, items) in enumerate(zip(handles, inputs)):
            if b in cancelled:
                with pytest.raises(BatchCancelled):
                    h.result(T)
                failed_at[b] = len(log.events)
                continue
            try:
                want = reference(steps, items, poison_tag)
            except ValueError as e:
                with pytest.raises(StageError) as got:
                    h.result(T)
                failed_at[b] = len(log.events)
                assert str(got.value.context["stage"]).endswith(str(e))
                assert got.value.context["batch"] == h.id
                continue
            assert h.result(T) == want
            assert h.progress() == (len(want), len(want))
        p.drain(T)
        p.check()
        stats = p.stats()
        assert p.state_entries() == 0 and not p._dropped, stats  # nothing outlives a batch
    # quiescence: once a failed batch's result() raised, none of its stage calls starts or ends
    for b, mark in failed_at.items():
        assert b not in {lb for lb, _ in log.events[mark:]}, (b, log.events[mark:])
    assert stats["batches_quiescing"] == {}
    by_id = {g["id"]: g for g in stats["gates"]}
    for g in by_id.values():
        assert g["depth"] == 0 and not g["batches"], g
        assert g["capacity"] is None or g["high_water"] <= g["capacity"], g
    if link:
        first = by_id["r.g0"]
        assert first["credits_available"] == link
        for i in range(1, len(steps) + 1):
            assert by_id[f"r.g{i}"]["max_open_batches"] <= link
    for lp in stats["local_pipelines"]:
        step = next(s for s in steps if lp["id"].startswith(s.tag + "/"))
        assert lp["credits_available"] == step.credits
        for g in by_id.values():  # partitions in flight per replica never exceed its credits
            if g["id"].startswith(lp["id"] + "/"):
                assert g["max_open_batches"] <= step.credits, g


def test_concurrent_submitters_are_isolated() -> None:
    spec = PipelineSpec.chain("conc", [StageSpec("inc", inc, replicas=2),
                                       StageSpec("agg", tuple, aggregate=2),
                                       StageSpec("id", lambda x: x, replicas=2)],
                              capacity=3, credits=2)
    results: dict[int, Any] = {}
    with Pipeline(spec) as p:
        def client(k: int) -> None:
            for j in range(5):
                n = (k * 7 + j) % 9
                results[k * 10 + j] = (n, p.submit(range(n)).result(T))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T)
    assert len(results) == 20
    for n, got in results.values():
        xs = [x + 1 for x in range(n)]
        assert got == [tuple(xs[i:i + 2]) for i in range(0, n, 2)]


def test_pooled_buffers_bound_memory_and_survive_failures() -> None:
    pool = buffer_pool(3, capacity=64, name="chunks")

    def load(x: int) -> Any:
        res = pool.acquire(timeout=T)
        res.value.extend(bytes([x % 256]) * 32)
        return (x, res)

    def check(item: Any) -> Any:
        x, res = item
        if x == 7:
            raise ValueError("bad chunk")
        return item

    def store(item: Any) -> int:
        x, res = item
        total = int(res.value.view().sum())
        res.release()
        return total

    spec = PipelineSpec.chain("pool", [StageSpec("load", load, replicas=2),
                                       StageSpec("check", check), StageSpec("store", store)],
                              capacity=1, credits=2)
    with Pipeline(spec) as p:
        bad = p.submit(range(40))  # fails at feed 7 with buffers in flight
        good = p.submit(range(100, 130))  # 30 feeds through a pool of 3 buffers
        assert good.result(T) == [(x % 256) * 32 for x in range(100, 130)]
        with pytest.raises(StageError, match="bad chunk"):
            bad.result(T)
        p.drain(T)
    stats = pool.stats()
    assert stats["created"] <= 3 and stats["in_use"] == 0, stats


def test_metric_samples_from_stats() -> None:
    from persona.ptf import metric_samples

    spec = PipelineSpec.chain("m", [StageSpec("inc", inc, replicas=2)], credits=3)
    with Pipeline(spec) as p:
        p.submit(range(5)).result(T)
        p.drain(T)
        samples = metric_samples(p.stats())
    by = {(n, tuple(sorted(lab.items()))): v for n, lab, v in samples}
    assert by[("persona_ptf_stage_feeds_total", (("pipeline", "m"), ("stage", "inc")))] == 5
    assert by[("persona_ptf_gate_credits_available", (("gate", "m.g0"), ("pipeline", "m")))] == 3
    assert by[("persona_ptf_batches_done_total", (("pipeline", "m"),))] == 1
    assert by[("persona_ptf_batches_quiescing", (("pipeline", "m"),))] == 0
    assert by[("persona_ptf_state_entries", (("pipeline", "m"),))] == 0


def test_gate_operations_for_a_global_gate_with_remote_consumers() -> None:
    """A global gate is a gate whose partition consumers are remote: here two 'workers'
    pull partitions, run them as local batches and send back one result feed each."""
    from persona.ptf import Gate, GateClosed, GateState, GateTimeout

    source = Gate(GateState("global1", "aggregate", size=3, link=None))
    sink = Gate(GateState("global2", "batch"))
    done: list[int] = []
    sink.on_complete = done.append
    bid = source.batch_enqueue([f"c{i}" for i in range(8)])

    def worker() -> None:
        local_first = Gate(GateState("first", "plain"))
        local_last = Gate(GateState("last", "batch"))
        try:
            while True:
                part = source.partition_dequeue(timeout=0.5)
                local_first.partition_enqueue(part)
                for _ in part.payloads:  # the local "stage"
                    f = local_first.dequeue(timeout=T)
                    f.payload = f.payload.upper()
                    local_last.enqueue(f)
                feeds = local_last.batch_dequeue_any(timeout=T)
                sink.enqueue(part.result([f.payload for f in feeds]))
        except GateTimeout:
            return

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert done == [bid]
    out = sink.batch_dequeue(bid, timeout=T)
    assert [f.payload for f in out] == [["C0", "C1", "C2"], ["C3", "C4", "C5"], ["C6", "C7"]]
    assert [f.meta for f in out] == [((bid, 3),)] * 3
    with pytest.raises(PipelineError, match="plain dequeue on a gate serving aggregate"):
        source.dequeue(timeout=0)
    source.close()
    with pytest.raises(GateClosed):
        source.partition_dequeue()


# -- quiescence: a failed or cancelled batch finishes only when no stage call of it runs ---

class Blocker:
    """Stage calls that block on ``release`` and record their side effect when let go."""

    def __init__(self, expect: int) -> None:
        self.release = threading.Event()
        self.all_inside = threading.Event()
        self.expect = expect
        self.inside = 0
        self.effects: list[Any] = []
        self.lock = threading.Lock()

    def block(self, x: Any) -> Any:
        with self.lock:
            self.inside += 1
            if self.inside == self.expect:
                self.all_inside.set()
        assert self.release.wait(T)
        self.effects.append(x)  # e.g. a chunk file stored by a write stage
        return x


def quiescence_spec(layout: str, blocker: Blocker, check: Any, after: Any) -> PipelineSpec:
    """``check`` then the blocking stage (3 replicas) then ``after``; ``layout`` puts the
    blocking calls in a later stage, in the failing stage itself, or in a local pipeline."""
    if layout == "later":
        return PipelineSpec.chain("q", [StageSpec("check", check), StageSpec(
            "write", blocker.block, replicas=3), StageSpec("after", after)])
    if layout == "same":
        def check_or_block(x: int) -> int:
            return check(x) if x == 0 else blocker.block(x)
        return PipelineSpec.chain("q", [StageSpec("write", check_or_block, replicas=3),
                                        StageSpec("after", after)])
    inner = PipelineSpec.chain("in", [StageSpec("write", blocker.block)], credits=None)
    gates = tuple(GateSpec(f"q.g{i}", 2 if i == 2 else None) for i in range(4))
    return PipelineSpec("q", "q.g0", "q.g3", gates,
                        (StageSpec("check", check, "q.g0", "q.g1"),
                         StageSpec("after", after, "q.g2", "q.g3")),
                        (CreditLinkSpec("q.g0", "q.g3", 2),),
                        (LocalPipelineSpec("loc", "q.g1", "q.g2", inner, partition_size=1,
                                           replicas=3, credits=1),))


@pytest.mark.parametrize("layout", ["later", "same", "local"])
def test_failed_batch_finishes_only_when_its_stage_calls_are_over(layout: str) -> None:
    bad = 3 if layout != "same" else 0  # the feed that raises, once the others are inside
    blocker = Blocker(expect=3 if layout != "same" else 2)
    checked: list[int] = []
    after_calls: list[int] = []

    def check(x: int) -> int:
        checked.append(x)
        if x == bad:
            assert blocker.all_inside.wait(T)
            raise ValueError("corrupt chunk")
        return x

    def after(x: Any) -> Any:
        after_calls.append(x)
        return x

    with Pipeline(quiescence_spec(layout, blocker, check, after)) as p:
        h = p.submit(range(8))
        assert blocker.all_inside.wait(T)
        with pytest.raises(TimeoutError):  # failed, but feeds are still inside a stage
            h.result(timeout=0.3)
        with pytest.raises(TimeoutError):
            h.exception(timeout=0.05)
        assert not h.done()
        waiting = p.stats()["batches_quiescing"]
        assert list(waiting) == [h.id] and len(waiting[h.id]) == blocker.expect, waiting
        p.check()
        blocker.release.set()
        with pytest.raises(StageError, match="corrupt chunk") as e:
            h.result(T)
        effects_at_result = list(blocker.effects)  # every side effect happened before ...
        assert e.value.context["batch"] == h.id
        assert sorted(effects_at_result) == ([0, 1, 2] if layout != "same" else [1, 2])
        good = p.submit(range(10, 14))  # the pipeline serves other batches on
        want = [[x] for x in range(10, 14)] if layout == "local" else list(range(10, 14))
        assert good.result(T) == want
        p.drain(T)
        assert p.stats()["batches_quiescing"] == {}
    assert sorted(blocker.effects) == sorted(effects_at_result + list(range(10, 14)))  # none after
    # feeds that finished the blocking stage after the failure were not enqueued downstream
    assert sorted(after_calls) == want  # (replicas finish in any order)
    if layout != "same":  # no stage call of the failed batch started after the failure
        assert checked == [0, 1, 2, 3, 10, 11, 12, 13]


def test_cancel_returns_at_once_but_result_waits_for_running_stage_calls() -> None:
    blocker = Blocker(expect=2)
    after_calls: list[Any] = []

    def write(x: tuple[str, int]) -> tuple[str, int]:
        return blocker.block(x) if x[0] == "a" else x

    def after(x: Any) -> Any:
        after_calls.append(x)
        return x

    spec = PipelineSpec.chain("qc", [StageSpec("write", write, replicas=3),
                                     StageSpec("after", after)], credits=2)
    with Pipeline(spec) as p:
        a = p.submit([("a", 0), ("a", 1)])
        assert blocker.all_inside.wait(T)
        t0 = time.perf_counter()
        assert a.cancel()
        assert time.perf_counter() - t0 < 1.0  # cancel does not wait for the stage calls
        assert not a.cancel()  # already failing
        b = p.submit([("b", i) for i in range(5)])  # runs while a is still quiescing
        assert b.result(T) == [("b", i) for i in range(5)]
        with pytest.raises(TimeoutError):
            a.result(timeout=0.3)
        assert not a.done() and list(p.stats()["batches_quiescing"]) == [a.id]
        blocker.release.set()
        with pytest.raises(BatchCancelled):
            a.result(T)
        effects_at_result = list(blocker.effects)
        assert sorted(effects_at_result) == [("a", 0), ("a", 1)]
        p.drain(T)
        stats = p.stats()
    assert blocker.effects == effects_at_result
    assert after_calls == [("b", i) for i in range(5)]  # a's feeds never went downstream
    assert stats["batches_failed"] == 1 and stats["batches_done"] == 1
    assert stats["gates"][0]["credits_available"] == 2


def test_stop_finishes_a_quiescing_batch_with_its_own_error() -> None:
    blocker = Blocker(expect=1)
    p = Pipeline(PipelineSpec.chain("qs", [StageSpec("write", blocker.block)])).start()
    h = p.submit([1])
    assert blocker.all_inside.wait(T)
    assert h.cancel()
    p.stop(timeout=0.1)  # the call is still blocked: stop gives up on it after its timeout
    with pytest.raises(BatchCancelled):
        h.result(T)
    blocker.release.set()


def test_threaded_gate_wakes_blocked_producers_and_consumers() -> None:
    """Capacity 1 between two producers and two consumers, timed waits: every wake-up must
    reach a waiter (a gate skips notify only when nobody waits) and no feed is lost."""
    from persona.ptf import Gate, GateState
    from persona.ptf.feed import Feed

    g = Gate(GateState("cap1", capacity=1))
    n = 300
    got: list[int] = []
    lock = threading.Lock()

    def produce(base: int) -> None:
        for i in range(n):
            if random.random() < 0.05:
                time.sleep(0.0005)
            g.enqueue(Feed(((base, n),), (i,), base * 1000 + i), timeout=T)

    def consume() -> None:
        for _ in range(n):
            f = g.dequeue(timeout=T)
            if random.random() < 0.05:
                time.sleep(0.0005)
            with lock:
                got.append(f.payload)

    threads = [threading.Thread(target=produce, args=(b,)) for b in (1, 2)]
    threads += [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert not any(t.is_alive() for t in threads)
    assert sorted(got) == sorted(b * 1000 + i for b in (1, 2) for i in range(n))
    assert g.state_entries() == 0 and g._readers == 0 and g._writers == 0


def test_timed_dequeue_takes_exactly_one_feed_when_woken() -> None:
    """A timed wait checks its (feed-taking) condition once per wake-up, never twice."""
    from persona.ptf import Gate, GateState
    from persona.ptf.feed import Feed

    g = Gate(GateState("timed"))
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(g.dequeue(timeout=T)))
    t.start()
    deadline = time.monotonic() + T
    while not g._readers and time.monotonic() < deadline:
        time.sleep(0.001)
    f0, f1 = Feed(((1, 2),), (0,), "a"), Feed(((1, 2),), (1,), "b")
    g.enqueue_many([f0, f1])
    t.join(T)
    assert got == [f0] and g.state.buffered == 1
    assert g.dequeue(timeout=0) is f1
    with pytest.raises(PipelineError, match="timed out"):
        g.dequeue(timeout=0.01)
