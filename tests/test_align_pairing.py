"""SAM pair semantics (persona.align.pairing): flags, mate fields, TLEN, proper pairs."""
from __future__ import annotations

import pytest

from persona.align.pairing import RecordSink, add_pair, add_single, choose_primaries, is_proper, template_length

# Hit = (ref_index, start, end, reverse, mapq, cigar, on_primary_chain)
FWD = (0, 100, 150, False, 60, b"50M", True)
REV = (0, 200, 250, True, 50, b"50M", True)
GAP = 100


def rows(sink: RecordSink) -> list[dict[str, int]]:
    prim, _ = sink.to_alignments()
    return [dict(zip(prim.fields.dtype.names, map(int, r))) for r in prim.fields]


def test_proper_pair_rule() -> None:
    assert is_proper(FWD, REV, GAP) and is_proper(REV, FWD, GAP)
    assert not is_proper(FWD, (0, 200, 250, False, 60, b"50M", True), GAP)  # same strand
    assert not is_proper(FWD, (1, 200, 250, True, 60, b"50M", True), GAP)  # other contig
    assert not is_proper((0, 400, 450, False, 1, b"", True), REV, GAP)  # reverse mate starts first (RF)
    assert not is_proper(FWD, (0, 251, 301, True, 1, b"", True), GAP)  # gap 101 > 100
    assert is_proper(FWD, (0, 250, 300, True, 1, b"", True), GAP)  # gap exactly 100
    assert is_proper(FWD, (0, 100, 140, True, 1, b"", True), GAP)  # same start: still FR


def test_template_length_is_5prime_to_5prime_and_antisymmetric() -> None:
    assert template_length(FWD, REV) == 150 and template_length(REV, FWD) == -150
    assert template_length(FWD, (1, 300, 350, True, 1, b"", True)) == 0
    # reverse read starting before its forward mate: the 5' ends decide the sign
    r = (0, 90, 140, True, 1, b"", True)
    f = (0, 100, 150, False, 1, b"", True)
    assert template_length(f, r) == 40 and template_length(r, f) == -40


def test_proper_pair_records() -> None:
    sink = RecordSink(0)
    add_pair(sink, [FWD], [REV], GAP)
    r1, r2 = rows(sink)
    assert r1["flag"] == 0x1 | 0x2 | 0x20 | 0x40 == 99
    assert r2["flag"] == 0x1 | 0x2 | 0x10 | 0x80 == 147
    assert (r1["next_ref_index"], r1["next_position"], r1["template_length"]) == (0, 200, 150)
    assert (r2["next_ref_index"], r2["next_position"], r2["template_length"]) == (0, 100, -150)
    assert (r1["mapq"], r2["mapq"]) == (60, 50)


def test_one_mate_unmapped_is_placed_at_its_mate() -> None:
    sink = RecordSink(0)
    add_pair(sink, [], [REV], GAP)
    r1, r2 = rows(sink)
    assert r1["flag"] == 0x1 | 0x4 | 0x20 | 0x40
    assert (r1["ref_index"], r1["position"], r1["mapq"]) == (0, 200, 0)
    assert (r1["next_ref_index"], r1["next_position"], r1["template_length"]) == (0, 200, 0)
    assert r2["flag"] == 0x1 | 0x8 | 0x10 | 0x80
    assert (r2["next_ref_index"], r2["next_position"]) == (0, 200)
    assert sink.cigars == [b"", b"50M"]


def test_both_unmapped_and_single_end() -> None:
    sink = RecordSink(0)
    add_pair(sink, [], [], GAP)
    assert [r["flag"] for r in rows(sink)] == [77, 141]
    assert all(r["ref_index"] == -1 and r["next_ref_index"] == -1 for r in rows(sink))
    single = RecordSink(0)
    add_single(single, [REV])
    add_single(single, [])
    a, b = rows(single)
    assert (a["flag"], a["position"], a["next_position"]) == (0x10, 200, -1)
    assert (b["flag"], b["ref_index"]) == (0x4, -1)


def test_secondary_columns_and_placeholders() -> None:
    sec = (0, 5000, 5050, False, 0, b"50M", False)
    sup = (1, 10, 30, True, 3, b"30S20M", True)
    sink = RecordSink(2)
    add_pair(sink, [FWD, sec, sup], [REV], GAP)
    prim, (s0, s1) = sink.to_alignments()
    assert len(prim) == len(s0) == len(s1) == 2
    f0, f1 = s0.fields, s1.fields
    assert f0["flag"][0] == 0x1 | 0x100 | 0x20 | 0x40 and f0["position"][0] == 5000
    assert f0["next_position"][0] == 200 and f0["template_length"][0] == 249 - 5000 - 1
    assert f1["flag"][0] == 0x1 | 0x800 | 0x10 | 0x20 | 0x40 and f1["ref_index"][0] == 1
    assert f1["template_length"][0] == 0  # other contig than the mate
    assert s1.cigars[0] == b"30S20M"
    # read 2 has no secondaries: placeholders "secondary + unmapped", no position
    assert list(f0["flag"][1:]) == [0x104] and list(f1["flag"][1:]) == [0x104]
    assert f0["ref_index"][1] == -1 and s0.cigars[1] == b""


@pytest.mark.parametrize("order", [0, 1])
def test_primary_prefers_proper_combination(order: int) -> None:
    far = (0, 90000, 90050, False, 60, b"50M", True)  # a supplementary-like primary-chain hit
    hits1 = [far, FWD] if order == 0 else [FWD, far]
    p1, p2 = choose_primaries(hits1, [REV], GAP)
    assert p1 == FWD and p2 == REV
    # with one primary-chain hit each the backend's choice stands even if not proper
    assert choose_primaries([far], [REV], GAP) == (far, REV)


def test_fast_path_equals_general_path() -> None:
    """The inlined one-hit-per-mate path gives what the general path (via a secondary sink) gives."""
    import itertools

    hits = [(c, s, s + 50, r, 7, b"50M", True) for c in (0, 1) for s in (0, 40, 100, 260) for r in (False, True)]
    for a, b in itertools.product(hits, repeat=2):
        fast = RecordSink(0)
        add_pair(fast, [a], [b], GAP)
        general = RecordSink(1)
        add_pair(general, [a], [b], GAP)
        assert fast.rows == general.rows and fast.cigars == general.cigars, (a, b)
