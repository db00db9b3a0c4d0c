"""Pipeline specs: YAML, round trips and the builder's deadlock/boundedness rules."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from persona.errors import ConfigError
from persona.ptf import (CreditLinkSpec, GateSpec, LocalPipelineSpec, Pipeline, PipelineSpec,
                         StageSpec, plan)
from persona.ptf import testing as ptft

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "configs" / "pipelines" / "example.yaml"


def ident(x: object) -> object:
    return x


def chain(gates: list[GateSpec], stages: Sequence[tuple[str, str, str, int | None]],
          links: tuple[CreditLinkSpec, ...] = ()) -> PipelineSpec:
    return PipelineSpec("p", gates[0].id, gates[-1].id, tuple(gates),
                        tuple(StageSpec(s, ident, i, o, aggregate=a) for s, i, o, a in stages),
                        links)


def test_example_yaml_runs_and_round_trips() -> None:
    spec = PipelineSpec.from_yaml(EXAMPLE)
    assert PipelineSpec.from_dict(spec.to_dict()) == spec
    with Pipeline(spec) as p:
        got = p.submit(range(10)).result(timeout=30)
    crcs = [ptft.crc32(ptft.compress(ptft.block(i))) for i in range(10)]
    assert got == [sum(crcs[0:4]), sum(crcs[4:8]), sum(crcs[8:10])]


def test_chain_helper_bounds_every_gate() -> None:
    spec = PipelineSpec.chain("c", [StageSpec("a", ident), StageSpec("b", sum, aggregate=2),
                                    StageSpec("c", ident)], capacity=3, credits=2)
    pl = plan(spec)
    assert [g.capacity for g in pl.gates] == [None, None, 3, None]
    assert spec.egress_arity(5) == 3


def test_capacity_before_aggregate_is_rejected() -> None:  # thesis §4.4.3
    spec = chain([GateSpec("a"), GateSpec("b", capacity=4), GateSpec("c")],
                 [("s1", "a", "b", None), ("s2", "b", "c", 2)],
                 (CreditLinkSpec("a", "c", 2),))
    with pytest.raises(ConfigError, match="can deadlock") as e:
        Pipeline(spec)
    assert "p.gates.b" in str(e.value)


def test_aggregate_gate_without_credit_link_is_unbounded() -> None:
    spec = chain([GateSpec("a"), GateSpec("b"), GateSpec("c")],
                 [("s1", "a", "b", None), ("s2", "b", "c", 2)])
    with pytest.raises(ConfigError, match="unbounded"):
        plan(spec)


def test_credit_link_upstream_with_capacity_is_rejected() -> None:
    spec = chain([GateSpec("a"), GateSpec("b", capacity=2), GateSpec("c"), GateSpec("d")],
                 [("s1", "a", "b", None), ("s2", "b", "c", None), ("s3", "c", "d", 2)],
                 (CreditLinkSpec("a", "d", 2), CreditLinkSpec("b", "c", 1)))
    with pytest.raises(ConfigError, match="upstream gate of a credit link"):
        plan(spec)


def test_overlapping_links_and_reversed_links_are_rejected() -> None:
    gates = [GateSpec(x) for x in "abcd"]
    stages = [("s1", "a", "b", None), ("s2", "b", "c", None), ("s3", "c", "d", None)]
    with pytest.raises(ConfigError, match="nested or disjoint"):
        plan(chain(gates, stages, (CreditLinkSpec("a", "c", 1), CreditLinkSpec("b", "d", 1))))
    with pytest.raises(ConfigError, match="before the downstream"):
        plan(chain(gates, stages, (CreditLinkSpec("c", "a", 1),)))
    with pytest.raises(ConfigError, match="credits must be"):
        plan(chain(gates, stages, (CreditLinkSpec("a", "d", 0),)))
    # nested is fine
    plan(chain(gates, stages, (CreditLinkSpec("a", "d", 2), CreditLinkSpec("b", "c", 1))))


def test_chain_shape_errors() -> None:
    g = [GateSpec("a"), GateSpec("b"), GateSpec("c")]
    with pytest.raises(ConfigError, match="two consumers"):
        plan(chain(g, [("s1", "a", "b", None), ("s2", "a", "c", None)]))
    with pytest.raises(ConfigError, match="not on the ingress->egress chain"):
        plan(PipelineSpec("p", "a", "c", (*g, GateSpec("z")),
                          (StageSpec("s1", ident, "a", "b"), StageSpec("s2", ident, "b", "c")),
                          (CreditLinkSpec("a", "c", 1),)))
    with pytest.raises(ConfigError, match="unknown gate 'q'"):
        plan(chain(g, [("s1", "a", "q", None)]))
    with pytest.raises(ConfigError, match="duplicate"):
        plan(chain(g, [("s1", "a", "b", None), ("s1", "b", "c", None)]))


def test_local_pipeline_rules() -> None:
    inner = PipelineSpec.chain("in", [StageSpec("x", ident)], credits=None)
    lp = LocalPipelineSpec("lp", "a", "b", inner, partition_size=2)
    outer = PipelineSpec("o", "a", "c", (GateSpec("a"), GateSpec("b", capacity=2), GateSpec("c")),
                         (StageSpec("s", ident, "b", "c"),), (), (lp,))
    assert plan(outer).modes["a"] == ("aggregate", 2)
    assert outer.egress_arity(5) == 3
    bad = PipelineSpec("o", "a", "c", (GateSpec("a"), GateSpec("b", capacity=2), GateSpec("c")),
                       (StageSpec("s", ident, "b", "c"),), (CreditLinkSpec("a", "in.g1", 1),),
                       (lp,))
    with pytest.raises(ConfigError, match="within one pipeline level"):
        plan(bad)


def test_yaml_errors_name_the_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipeline\.stages\[0\]\.replicas"):
        PipelineSpec.from_yaml("pipeline:\n  id: x\n  ingress: a\n  egress: b\n  gates: []\n"
                               "  stages:\n    - {id: s, fn: 'm:f', replicas: two}\n")
    with pytest.raises(ConfigError, match=r"pipeline\.colour"):
        PipelineSpec.from_yaml("pipeline:\n  id: x\n  ingress: a\n  egress: b\n  colour: red\n")
    path = tmp_path / "p.yaml"
    path.write_text("pipeline:\n  id: x\n  ingress: a\n  egress: b\n"
                    "  gates: [{id: a}, {id: b}]\n"
                    "  stages: [{id: s, fn: 'no.such.module:f', input: a, output: b}]\n")
    with pytest.raises(ConfigError, match="cannot import"):
        Pipeline(PipelineSpec.from_yaml(path))
