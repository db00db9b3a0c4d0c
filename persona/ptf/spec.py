"""Pipelines described as data: specs, YAML loading and the builder's validation.

A :class:`PipelineSpec` is a linear chain ``ingress -> stage -> gate -> ... ->
egress`` in which every gate and stage has an id (the label in logs and
metrics). A :class:`LocalPipelineSpec` takes the place of a stage: it is an
inner chain, replicated, fed with partitions of ``partition_size`` feeds from
its input gate and delivering one aggregate feed per partition to its output
gate. :func:`plan` checks the deadlock and boundedness rules listed in
:mod:`persona.ptf` and returns the ordered chain the runtime builds.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from persona.errors import ConfigError
from persona.ptf.feed import aggregate_arity
from persona.ptf.gate_state import AGGREGATE, BATCH, PLAIN


@dataclass(frozen=True)
class GateSpec:
    """A gate. ``capacity`` bounds its buffer (only if its consumer dequeues plainly)."""

    id: str
    capacity: int | None = None


@dataclass(frozen=True)
class StageSpec:
    """A stage: ``fn(payload) -> payload`` run by ``replicas`` threads.

    With ``aggregate=S`` the stage dequeues groups of S feeds of one batch and
    ``fn`` receives the list of their payloads (positions kS..kS+S-1, in order;
    the last group may be short) and returns one payload. ``fn`` may be a
    callable or a ``"package.module:attribute"`` string (YAML). ``input`` /
    ``output`` are gate ids (filled in by :meth:`PipelineSpec.chain`).
    """

    id: str
    fn: Callable[[Any], Any] | str
    input: str | None = None
    output: str | None = None
    replicas: int = 1
    aggregate: int | None = None


@dataclass(frozen=True)
class CreditLinkSpec:
    """Downstream gate grants ``credits`` open batches to the upstream gate (§4.4.3)."""

    upstream: str
    downstream: str
    credits: int


@dataclass(frozen=True)
class LocalPipelineSpec:
    """A replicated local pipeline between two outer gates (thesis §4.5).

    Each of ``replicas`` copies of ``pipeline`` pulls partitions of
    ``partition_size`` feeds from ``input`` while it has fewer than ``credits``
    partitions in flight, runs them as local batches and enqueues one feed per
    partition into ``output`` whose payload is the list of the partition's
    results (outer arity ``ceil(A / partition_size)``).
    """

    id: str
    input: str
    output: str
    pipeline: PipelineSpec
    partition_size: int = 1
    replicas: int = 1
    credits: int = 2


Consumer = Union[StageSpec, LocalPipelineSpec]


@dataclass(frozen=True)
class PipelineSpec:
    """A whole pipeline: gates, stages (or local pipelines), credit links."""

    id: str
    ingress: str
    egress: str
    gates: tuple[GateSpec, ...]
    stages: tuple[StageSpec, ...] = ()
    credit_links: tuple[CreditLinkSpec, ...] = ()
    local_pipelines: tuple[LocalPipelineSpec, ...] = ()

    @classmethod
    def chain(cls, id: str, steps: Sequence[StageSpec], *, capacity: int = 16,
              credits: int | None = 4) -> PipelineSpec:
        """A linear pipeline from stage specs, generating gates ``<id>.g0 .. <id>.gN``.

        Gates before plain stages get ``capacity``; with ``credits`` a credit link
        from the egress to the ingress bounds the open batches (needed when a
        stage aggregates). ``input``/``output`` of the given stages are replaced.
        """
        if not steps:
            raise ConfigError("a pipeline needs at least one stage", key=f"{id}.stages")
        names = [f"{id}.g{i}" for i in range(len(steps) + 1)]
        gates = [GateSpec(names[0])]
        for i, st in enumerate(steps[1:], start=1):
            gates.append(GateSpec(names[i], None if st.aggregate else capacity))
        gates.append(GateSpec(names[-1]))
        stages = tuple(StageSpec(s.id, s.fn, names[i], names[i + 1], s.replicas, s.aggregate)
                       for i, s in enumerate(steps))
        links = (CreditLinkSpec(names[0], names[-1], credits),) if credits else ()
        return cls(id, names[0], names[-1], tuple(gates), stages, links)

    # -- data round trip -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML-able if every ``fn`` is a string)."""
        return {
            "id": self.id, "ingress": self.ingress, "egress": self.egress,
            "gates": [{"id": g.id, **({"capacity": g.capacity} if g.capacity else {})}
                      for g in self.gates],
            "stages": [{k: v for k, v in vars(s).items() if v is not None} for s in self.stages],
            "credit_links": [vars(c).copy() for c in self.credit_links],
            "local_pipelines": [
                {"id": lp.id, "input": lp.input, "output": lp.output,
                 "partition_size": lp.partition_size, "replicas": lp.replicas,
                 "credits": lp.credits, "pipeline": lp.pipeline.to_dict()}
                for lp in self.local_pipelines],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "pipeline") -> PipelineSpec:
        """Parse plain data; errors name the key path."""
        known = {"id", "ingress", "egress", "gates", "stages", "credit_links", "local_pipelines"}
        _no_unknown(d, known, where)
        pid = _req(d, "id", str, where)
        gates = tuple(_build(GateSpec, g, f"{where}.gates[{i}]", {"id": str, "capacity": int})
                      for i, g in enumerate(d.get("gates") or ()))
        stages = tuple(_build(StageSpec, s, f"{where}.stages[{i}]",
                              {"id": str, "fn": str, "input": str, "output": str,
                               "replicas": int, "aggregate": int})
                       for i, s in enumerate(d.get("stages") or ()))
        links = tuple(_build(CreditLinkSpec, c, f"{where}.credit_links[{i}]",
                             {"upstream": str, "downstream": str, "credits": int})
                      for i, c in enumerate(d.get("credit_links") or ()))
        locals_: list[LocalPipelineSpec] = []
        for i, lp in enumerate(d.get("local_pipelines") or ()):
            w = f"{where}.local_pipelines[{i}]"
            inner = dict(lp)
            sub = inner.pop("pipeline", None)
            if not isinstance(sub, Mapping):
                raise ConfigError("missing or not a mapping", key=f"{w}.pipeline")
            sp = cls.from_dict(sub, f"{w}.pipeline")
            kw = _check(inner, w, {"id": str, "input": str, "output": str,
                                   "partition_size": int, "replicas": int, "credits": int})
            locals_.append(LocalPipelineSpec(pipeline=sp, **kw))
        return cls(pid, _req(d, "ingress", str, where), _req(d, "egress", str, where),
                   gates, stages, links, tuple(locals_))

    @classmethod
    def from_yaml(cls, source: str | Path) -> PipelineSpec:
        """Load from a YAML file path or YAML text (top-level key ``pipeline``)."""
        text = source.read_text() if isinstance(source, Path) else source
        if isinstance(source, str) and "\n" not in source and Path(source).is_file():
            text = Path(source).read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}", key=str(source)[:80]) from e
        if not isinstance(data, Mapping) or not isinstance(data.get("pipeline"), Mapping):
            raise ConfigError("expected a mapping with key 'pipeline'", key="pipeline")
        return cls.from_dict(data["pipeline"])

    def egress_arity(self, arity: int) -> int:
        """How many results a batch of ``arity`` feeds yields at the egress."""
        for c in plan(self).consumers:
            if isinstance(c, LocalPipelineSpec):
                arity = aggregate_arity(arity, c.partition_size)
            elif c.aggregate:
                arity = aggregate_arity(arity, c.aggregate)
        return arity


def _no_unknown(d: Mapping[str, Any], known: set[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError("expected a mapping", key=where)
    for k in d:
        if k not in known:
            raise ConfigError(f"unknown key {k!r} (known: {', '.join(sorted(known))})",
                              key=f"{where}.{k}")


def _req(d: Mapping[str, Any], k: str, t: type, where: str) -> Any:
    if k not in d:
        raise ConfigError("missing", key=f"{where}.{k}")
    if not isinstance(d[k], t):
        raise ConfigError(f"expected {t.__name__}, got {d[k]!r}", key=f"{where}.{k}")
    return d[k]


def _check(d: Mapping[str, Any], where: str, types: dict[str, type]) -> dict[str, Any]:
    _no_unknown(d, set(types), where)
    for k, v in d.items():
        if not isinstance(v, types[k]) or isinstance(v, bool):
            raise ConfigError(f"expected {types[k].__name__}, got {v!r}", key=f"{where}.{k}")
    return dict(d)


def _build(cls: type, d: Any, where: str, types: dict[str, type]) -> Any:
    try:
        return cls(**_check(d, where, types))
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"missing field: {e}", key=where) from e


def resolve_callable(fn: Callable[[Any], Any] | str, where: str) -> Callable[[Any], Any]:
    """A callable, or ``"package.module:attr"`` imported."""
    if callable(fn):
        return fn
    mod, sep, attr = fn.partition(":")
    if not sep or not mod or not attr:
        raise ConfigError(f"fn must be 'module:attribute', got {fn!r}", key=where)
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {fn!r}: {e}", key=where) from e
    if not callable(obj):
        raise ConfigError(f"{fn!r} is not callable", key=where)
    return obj


@dataclass
class Plan:
    """The validated chain: ``gates[i]`` is consumed by ``consumers[i]``, which feeds
    ``gates[i+1]``; ``modes[gate] = (mode, size)`` says how each gate is dequeued."""

    spec: PipelineSpec
    gates: list[GateSpec]
    consumers: list[Consumer]
    modes: dict[str, tuple[str, int | None]] = field(default_factory=dict)


def plan(spec: PipelineSpec, *, local: bool = False) -> Plan:
    """Validate ``spec`` against the builder's rules and order it; raises ConfigError."""
    w = spec.id
    gates = {}
    for g in spec.gates:
        if g.id in gates:
            raise ConfigError(f"duplicate gate id {g.id!r}", key=f"{w}.gates")
        if g.capacity is not None and g.capacity < 1:
            raise ConfigError("capacity must be >= 1", key=f"{w}.gates.{g.id}")
        gates[g.id] = g
    consumers: dict[str, Consumer] = {}
    producers: dict[str, str] = {}
    ids: set[str] = set()
    all_consumers: list[Consumer] = [*spec.stages, *spec.local_pipelines]
    for c in all_consumers:
        if c.id in ids or c.id in gates:
            raise ConfigError(f"duplicate id {c.id!r}", key=w)
        ids.add(c.id)
        cw = f"{w}.{c.id}"
        if isinstance(c, StageSpec):
            if c.input is None or c.output is None:
                raise ConfigError("stage needs input and output gates", key=cw)
            if c.replicas < 1:
                raise ConfigError("replicas must be >= 1", key=f"{cw}.replicas")
            if c.aggregate is not None and c.aggregate < 1:
                raise ConfigError("aggregate size must be >= 1", key=f"{cw}.aggregate")
        else:
            if local:
                raise ConfigError("local pipelines cannot nest", key=cw)
            for k in ("partition_size", "replicas", "credits"):
                if getattr(c, k) < 1:
                    raise ConfigError(f"{k} must be >= 1", key=f"{cw}.{k}")
            plan(c.pipeline, local=True)
        inp, out = c.input, c.output
        for role, gid in (("input", inp), ("output", out)):
            if gid not in gates:
                raise ConfigError(f"unknown gate {gid!r}", key=f"{cw}.{role}")
        assert inp is not None and out is not None  # both are gate ids (checked above)
        if inp in consumers:
            raise ConfigError(f"gate {inp!r} has two consumers", key=cw)
        if out in producers:
            raise ConfigError(f"gate {out!r} has two producers", key=cw)
        consumers[inp] = c
        producers[out] = c.id
    for k in ("ingress", "egress"):
        if getattr(spec, k) not in gates:
            raise ConfigError(f"unknown gate {getattr(spec, k)!r}", key=f"{w}.{k}")
    if spec.ingress in producers:
        raise ConfigError("the ingress gate cannot have a producer", key=f"{w}.ingress")
    if spec.egress in consumers:
        raise ConfigError("the egress gate cannot have a consumer", key=f"{w}.egress")
    order: list[str] = [spec.ingress]
    chain: list[Consumer] = []
    while order[-1] != spec.egress:
        nc = consumers.get(order[-1])
        if nc is None:
            raise ConfigError(f"gate {order[-1]!r} has no consumer; chain does not reach "
                              f"egress {spec.egress!r}", key=w)
        chain.append(nc)
        nxt = nc.output
        assert nxt is not None  # checked above
        if nxt in order:
            raise ConfigError(f"cycle through gate {nxt!r}", key=w)
        order.append(nxt)
    if len(order) != len(gates):
        unused = sorted(set(gates) - set(order))
        raise ConfigError(f"gates not on the ingress->egress chain: {unused}", key=w)
    modes: dict[str, tuple[str, int | None]] = {spec.egress: (BATCH, None)}
    for gid, c in zip(order, chain):
        if isinstance(c, LocalPipelineSpec):
            modes[gid] = (AGGREGATE, c.partition_size)
        elif c.aggregate:
            modes[gid] = (AGGREGATE, c.aggregate)
        else:
            modes[gid] = (PLAIN, None)
    for gid in order:
        g = gates[gid]
        if g.capacity is not None and modes[gid][0] != PLAIN:
            raise ConfigError(  # thesis §4.4.3
                "a gate with a capacity must be followed by a plain dequeue: a bounded buffer "
                "before an aggregate/partition/batch dequeue can deadlock; use a credit link",
                key=f"{w}.gates.{gid}")
        if g.capacity is not None and gid == spec.ingress:
            raise ConfigError("the ingress gate takes whole batches; it cannot have a capacity",
                              key=f"{w}.gates.{gid}")
    _check_links(spec, order, gates)
    return Plan(spec, [gates[g] for g in order], chain, modes)


def _check_links(spec: PipelineSpec, order: list[str], gates: dict[str, GateSpec]) -> None:
    w = spec.id
    idx = {g: i for i, g in enumerate(order)}
    spans: list[tuple[int, int]] = []
    ups: set[str] = set()
    downs: set[str] = set()
    for i, ln in enumerate(spec.credit_links):
        lw = f"{w}.credit_links[{i}]"
        for end in (ln.upstream, ln.downstream):
            if end not in idx:
                raise ConfigError(f"unknown gate {end!r} (credit links stay within one "
                                  f"pipeline level)", key=lw)
        u, d = idx[ln.upstream], idx[ln.downstream]
        if u >= d:
            raise ConfigError("upstream gate must come before the downstream gate", key=lw)
        if ln.credits < 1:
            raise ConfigError("credits must be >= 1", key=f"{lw}.credits")
        if gates[ln.upstream].capacity is not None:
            # Feeds of credit-less batches would fill it and block the remaining feeds of
            # batches that hold credits: those could then never close downstream.
            raise ConfigError("the upstream gate of a credit link cannot have a capacity",
                              key=lw)
        if ln.upstream in ups or ln.downstream in downs:
            raise ConfigError("a gate grants credits to at most one gate and receives "
                              "them from at most one", key=lw)
        ups.add(ln.upstream)
        downs.add(ln.downstream)
        for (u2, d2) in spans:
            nested = (u2 <= u and d <= d2) or (u <= u2 and d2 <= d)
            disjoint = d <= u2 or d2 <= u
            if not (nested or disjoint):
                raise ConfigError("credit links must be nested or disjoint", key=lw)
        spans.append((u, d))
    for gid in order[1:-1]:
        i = idx[gid]
        if gates[gid].capacity is None and not any(u < i <= d for u, d in spans):
            raise ConfigError("gate is unbounded: give it a capacity (plain consumer) or put "
                              "it inside a credit link", key=f"{w}.gates.{gid}")
