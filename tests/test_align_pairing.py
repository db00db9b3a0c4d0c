"""SAM pair semantics (persona.align.pairing): flags, mate fields, TLEN, proper pairs."""
from __future__ import annotations

import pytest

from persona.align.pairing import RecordSink, add_pair, add_single, choose_primaries, is_proper, template_length

# Hit = (ref_index, start, end, reverse, mapq, cigar, on_primary_chain, score)
FWD = (0, 100, 150, False, 60, b"50M", True, 100)
REV = (0, 200, 250, True, 50, b"50M", True, 100)
GAP = 100


def rows(sink: RecordSink) -> list[dict[str, int]]:
    prim, _ = sink.to_alignments()
    return [dict(zip(prim.fields.dtype.names, map(int, r))) for r in prim.fields]


def test_proper_pair_rule() -> None:
    assert is_proper(FWD, REV, GAP) and is_proper(REV, FWD, GAP)
    assert not is_proper(FWD, (0, 200, 250, False, 60, b"50M", True, 100), GAP)  # same strand
    assert not is_proper(FWD, (1, 200, 250, True, 60, b"50M", True, 100), GAP)  # other contig
    assert not is_proper((0, 400, 450, False, 1, b"", True, 100), REV, GAP)  # reverse mate starts first (RF)
    assert not is_proper(FWD, (0, 251, 301, True, 1, b"", True, 100), GAP)  # gap 101 > 100
    assert is_proper(FWD, (0, 250, 300, True, 1, b"", True, 100), GAP)  # gap exactly 100
    assert is_proper(FWD, (0, 100, 140, True, 1, b"", True, 100), GAP)  # same start: still FR


def test_template_length_is_5prime_to_5prime_and_antisymmetric() -> None:
    assert template_length(FWD, REV) == 150 and template_length(REV, FWD) == -150
    assert template_length(FWD, (1, 300, 350, True, 1, b"", True, 100)) == 0
    # reverse read starting before its forward mate: the 5' ends decide the sign
    r = (0, 90, 140, True, 1, b"", True, 100)
    f = (0, 100, 150, False, 1, b"", True, 100)
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
    sec = (0, 5000, 5050, False, 0, b"50M", False, 100)
    sup = (1, 10, 30, True, 3, b"30S20M", True, 100)
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
    # read 2 has no secondaries: absent rows (unmapped fields, no CIGAR), read 1's are present
    assert list(s0.present) == [True, False] and list(s1.present) == [True, False]
    assert f0["flag"][1] == 0x4 and f0["ref_index"][1] == -1 and s0.cigars[1] == b""


@pytest.mark.parametrize("order", [0, 1])
def test_primary_pair_chosen_like_mm_pair(order: int) -> None:
    far = (0, 90000, 90050, False, 60, b"50M", True, 100)  # another primary-chain hit
    hits1 = [far, FWD] if order == 0 else [FWD, far]
    assert choose_primaries(hits1, [REV], GAP) == (FWD, REV, True)
    # with one primary-chain hit each the backend's choice stands; proper only if FR and close
    assert choose_primaries([far], [REV], GAP) == (far, REV, False)
    assert choose_primaries([FWD], [REV], GAP) == (FWD, REV, True)
    assert choose_primaries([], [REV], GAP) == (None, REV, False)


def test_pair_below_score_threshold_is_not_lifted() -> None:
    """A proper combination scoring more than pe_bonus (33) below the best hits is not chosen."""
    best1 = (0, 100, 214, True, 60, b"114M", True, 228)
    sup1 = (0, 19, 60, False, 38, b"110S41M", True, 82)
    best2 = (0, 19, 135, True, 1, b"35S116M", True, 232)
    sup2 = (0, 100, 139, False, 9, b"39M112S", True, 78)
    # (best1, sup2) is FR and close, but 228 + 78 < 228 + 232 - 33: minimap2 keeps the first hits
    assert choose_primaries([best1, sup1], [best2, sup2], GAP) == (best1, best2, False)
    sink = RecordSink(0)
    add_pair(sink, [best1, sup1], [best2, sup2], GAP)
    assert [r["flag"] for r in rows(sink)] == [113, 177]
    # a close enough score makes the proper pair win
    good2 = (0, 100, 139, False, 9, b"39M112S", True, 200)
    assert choose_primaries([best1, sup1], [best2, good2], GAP) == (best1, good2, True)


def test_fast_path_equals_general_path() -> None:
    """The inlined one-hit-per-mate path gives what the general path (via a secondary sink) gives."""
    import itertools

    hits = [(c, s, s + 50, r, 7, b"50M", True, 100) for c in (0, 1) for s in (0, 40, 100, 260) for r in (False, True)]
    for a, b in itertools.product(hits, repeat=2):
        fast = RecordSink(0)
        add_pair(fast, [a], [b], GAP)
        general = RecordSink(1)
        add_pair(general, [a], [b], GAP)
        assert fast.rows == general.rows and fast.cigars == general.cigars, (a, b)


def _hits():
    from hypothesis import strategies as st

    hit = st.builds(
        lambda c, s, ln, r, q, prim, sc: (c, s, s + ln, r, q, f"{ln}M".encode(), prim, sc),
        st.integers(0, 1), st.integers(0, 1000), st.integers(1, 150), st.booleans(), st.integers(0, 60),
        st.booleans(), st.integers(0, 300))
    return st.lists(hit, max_size=4)


def test_mate_fields_are_sam_consistent() -> None:
    """Whatever the hits, the two records of a pair describe each other (SAM §1.4 mate fields)."""
    from hypothesis import given, settings

    @settings(max_examples=300, deadline=None)
    @given(_hits(), _hits())
    def check(h1, h2) -> None:
        sink = RecordSink(2)
        add_pair(sink, h1, h2, GAP)
        r1, r2 = rows(sink)
        for me, mate in ((r1, r2), (r2, r1)):
            assert me["flag"] & 0x1
            assert bool(me["flag"] & 0x8) == bool(mate["flag"] & 0x4)
            if not mate["flag"] & 0x4:
                assert bool(me["flag"] & 0x20) == bool(mate["flag"] & 0x10)
                assert (me["next_ref_index"], me["next_position"]) == (mate["ref_index"], mate["position"])
            if me["flag"] & 0x4:
                assert me["mapq"] == 0 and not me["flag"] & 0x12
            if me["flag"] & 0x2:
                assert not (me["flag"] | mate["flag"]) & 0xC and mate["flag"] & 0x2
        assert r1["template_length"] == -r2["template_length"]
        assert (r1["flag"] & 0xC0, r2["flag"] & 0xC0) == (0x40, 0x80)
        _, secs = sink.to_alignments()
        for s in secs:
            for f, present in zip(map(int, s.fields["flag"]), s.present):
                assert (f & 0x900 and not f & 0x4) if present else f == 0x4  # real, or absent

    check()
