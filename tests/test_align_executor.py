"""The shared aligner executor: in-order gathering, determinism, errors, sharing."""
from __future__ import annotations

import gzip
import itertools
import threading

import pytest

from persona.agd.ragged import RaggedArray
from persona.align.base import Aligner, AlignerOptions, AlignResult, make_aligner
from persona.align.executor import AlignerExecutor, shared_executor
from persona.align.fasta import read_contig_table
from persona.align.minimap2 import build_index, load_index
from persona.agd.records import Alignments
from persona.errors import AlignerError

N_PAIRS = 1500


@pytest.fixture(scope="module")
def measles_block(measles, tmp_path_factory) -> tuple[Aligner, RaggedArray, RaggedArray]:
    tmp = tmp_path_factory.mktemp("exec")
    build_index(measles["ref"], tmp / "m.mmi")
    al = make_aligner("minimap2", load_index(tmp / "m.mmi", AlignerOptions(secondary=1)),
                      read_contig_table(measles["ref"]).contigs, AlignerOptions(secondary=1))
    reads, names = [], []
    with gzip.open(measles["r1"], "rt") as f1, gzip.open(measles["r2"], "rt") as f2:
        for a, b in itertools.islice(zip(zip(*[f1] * 4), zip(*[f2] * 4)), N_PAIRS):
            reads += [a[1].strip(), b[1].strip()]
            names += [a[0][1:].split()[0]] * 2
    return al, RaggedArray.from_list(reads), RaggedArray.from_list(names)


def same(a: AlignResult, b: AlignResult) -> bool:
    return a.primary == b.primary and len(a.secondary) == len(b.secondary) and all(
        x == y for x, y in zip(a.secondary, b.secondary))


@pytest.mark.small_data
def test_results_independent_of_threads_and_work_items(measles_block) -> None:
    al, bases, names = measles_block
    reference = al.align(bases, None, names, paired=True)  # one block, calling thread
    for threads, item in [(1, 1), (2, 7), (3, 500), (2, 10_000)]:
        ex = AlignerExecutor(threads)
        try:
            got = ex.align(al, bases, None, names, paired=True, work_item_reads=item)
        finally:
            ex.close()
        assert same(got, reference), (threads, item)
        assert len(got.primary) == len(bases)


@pytest.mark.small_data
def test_concurrent_chunks_share_one_pool(measles_block) -> None:
    al, bases, names = measles_block
    ex = AlignerExecutor(2)
    n = len(bases) // 4
    parts = [(bases.slice(i * n, (i + 1) * n), names.slice(i * n, (i + 1) * n)) for i in range(4)]
    expected = [al.align(b, None, nm, paired=True) for b, nm in parts]
    results: dict[int, AlignResult] = {}

    def stage(i: int) -> None:  # four "align stages" of different requests at once
        results[i] = ex.align(al, parts[i][0], None, parts[i][1], paired=True, work_item_reads=64, key=f"c{i}")

    threads = [threading.Thread(target=stage, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ex.close()
    assert all(same(results[i], expected[i]) for i in range(4))
    assert {t.name for t in ex._workers} == {"aligner-0", "aligner-1"}


class Failing(Aligner):
    """An aligner that fails on a read containing 'X' (to test error propagation)."""

    name = "failing"

    def align_single(self, bases, quals=None, names=None):
        if any(b"X" in r for r in bases):
            raise ValueError("bad read")
        return AlignResult(Alignments.empty(len(bases)))

    def align_paired(self, bases, quals=None, names=None):
        return self.align_single(bases)


def test_failing_work_item_fails_only_its_chunk() -> None:
    al = Failing([], AlignerOptions())
    ex = AlignerExecutor(2)
    bad = ex.submit(al, RaggedArray.from_list([b"A"] * 50 + [b"X"] + [b"A"] * 50), work_item_reads=10, key="bad.base")
    good = ex.submit(al, RaggedArray.from_list([b"A"] * 101), work_item_reads=10, key="good.base")
    with pytest.raises(AlignerError, match="bad read") as ei:
        bad.result(timeout=10)
    assert "bad.base" in str(ei.value)
    assert len(good.result(timeout=10)) == 101
    ex.close()
    with pytest.raises(AlignerError, match="closed"):
        ex.submit(al, RaggedArray.from_list([b"A"]))


@pytest.mark.small_data
def test_pairs_never_split_and_bad_arguments(measles_block) -> None:
    al, bases, names = measles_block
    ex = AlignerExecutor(1)
    b = bases.slice(0, 20)
    # an odd work-item size is rounded up to whole pairs
    assert same(ex.align(al, b, None, names.slice(0, 20), paired=True, work_item_reads=3),
                al.align(b, None, names.slice(0, 20), paired=True))
    with pytest.raises(AlignerError, match="odd number"):
        ex.submit(al, bases.slice(0, 3), paired=True)
    with pytest.raises(AlignerError, match="work_item_reads"):
        ex.submit(al, b, work_item_reads=0)
    empty = ex.align(al, RaggedArray.empty())
    assert len(empty.primary) == 0 and len(empty.secondary) == 1
    ex.close()


def test_empty_chunk_and_shared_executor() -> None:
    ex = shared_executor(2)
    assert shared_executor(2) is ex and ex.threads == 2
    assert len(ex.submit(Failing([], AlignerOptions()), RaggedArray.empty()).result(timeout=10)) == 0
