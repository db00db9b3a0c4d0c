"""Alignment throughput: ``persona align`` vs the minimap2 binary, and framework overhead.

For each input set, with the same thread count (default 2) and the same index
(the ``.mmi`` that ``persona reference add`` stored):

* **binary**: ``minimap2 -a -x sr -t T ref.mmi R1.fq.gz R2.fq.gz > /dev/null``
  (FASTQ.gz in, SAM out; its time includes loading the index);
* **persona**: :func:`persona.apps.align.align_dataset` on the imported AGD
  dataset (AGD in, ``results`` column out), index loaded inside the timed call;
* **kernel**: the bare mappy loop over the same decoded reads, T threads, each
  calling ``Aligner.map(r1, r2, name)`` and only consuming the hits (mappy
  loaded from the same ``.mmi``); its counterpart **persona (warm)** runs
  ``align_dataset`` with the index already loaded, so the ratio is the cost of
  the framework (pipeline, decode, record building, encode, write) around the
  kernel;
* **mm2 kernel**: the bare loop over persona's own native kernel
  (:mod:`persona._native.mm2`, GIL released): T threads, each with its own
  ``Mapper``, mapping pre-sliced work items of the same size; persona(warm)
  against it is the framework's overhead around the very code it runs.

Reads/s count reads (2 per pair). Goals: persona/binary >= 1.0, persona(warm)/kernel >= 0.97.

    python bench/bench_align.py            # real yeast + 1M simulated pairs (ART 2x101 on sacCer3)
    python bench/bench_align.py --quick    # the first 40,000 yeast pairs, median of 3 (< 1 min)
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import shutil
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mappy
from _common import (
    OUT,
    emit_json,
    median_time,
    real_sets,
    require,
    run,
    simulated_pairs,
    table,
)

from persona.agd import Dataset
from persona.align import reference as refmod
from persona.align.base import AlignerOptions
from persona.align.reference import (
    acquire_reference,
    add_reference,
    reference_info,
    release_reference,
)
from persona.apps.align import align_dataset
from persona.apps.import_fastq import import_fastq

REFS = OUT / "align_refs"


def head_pairs(r1: Path, r2: Path, n: int, d: Path) -> tuple[Path, Path]:
    """The first ``n`` pairs of a FASTQ.gz pair, gzip'ed into ``d`` (cached)."""
    d.mkdir(parents=True, exist_ok=True)
    outs = (d / "R1.fastq.gz", d / "R2.fastq.gz")
    for src, dst in zip((r1, r2), outs):
        if not dst.exists():
            with gzip.open(src, "rt") as f, gzip.open(dst.with_suffix(".tmp"), "wt", compresslevel=1) as g:
                g.writelines(itertools.chain.from_iterable(itertools.islice(zip(*[f] * 4), n)))
            dst.with_suffix(".tmp").rename(dst)
    return outs


def reference(ref_fasta: Path) -> tuple[str, Path]:
    """The sacCer3 reference in the bench's reference store (built once) and its .mmi path."""
    name = "sacCer3"
    if not (REFS / name / "reference.json").exists():
        add_reference(name, ref_fasta, REFS)
    info = reference_info(name, REFS)
    return name, REFS / info.indexes["minimap2-sr"]["key"]


def decoded_pairs(ds: Dataset) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for i in range(len(ds.chunks)):
        b = ds.read_column(i, "base")
        m = ds.read_column(i, "metadata")
        out += [(b[j], b[j + 1], m[j].split(None, 1)[0]) for j in range(0, len(b), 2)]
    return out


def kernel(index: mappy.Aligner, pairs: list[tuple[bytes, bytes, bytes]], threads: int, item: int) -> None:
    """The bare mappy loop: ``threads`` threads take work items of ``item`` pairs in turn."""
    items = iter(range(0, len(pairs), item))
    lock = threading.Lock()

    def work() -> None:
        buf = mappy.ThreadBuffer()
        amap = index.map
        while True:
            with lock:
                lo = next(items, None)
            if lo is None:
                return
            for s1, s2, name in pairs[lo : lo + item]:
                for _ in amap(s1, s2, name=name, buf=buf):
                    pass

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def mm2_kernel(index: object, items: list[tuple[object, object, object, object]], threads: int) -> None:
    """The bare native-kernel loop: ``threads`` threads, one Mapper each, take work items in turn."""
    it = iter(items)
    lock = threading.Lock()

    def work() -> None:
        mapper = index.mapper()  # type: ignore[attr-defined]
        while True:
            with lock:
                item = next(it, None)
            if item is None:
                return
            mapper.map(*item, True, 0)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def mm2_items(ds: Dataset, item_reads: int) -> list[tuple[object, object, object, object]]:
    """The dataset's bases and names cut into work items of ``item_reads`` reads, as the executor does."""
    out = []
    for i in range(len(ds.chunks)):
        b = ds.read_column(i, "base")
        m = ds.read_column(i, "metadata")
        for lo in range(0, len(b), item_reads):
            hi = min(lo + item_reads, len(b))
            bb, mm = b.slice(lo, hi), m.slice(lo, hi)
            out.append((bb.offsets, bb.data, mm.offsets, mm.data))
    return out


def bench_set(label: str, r1: Path, r2: Path, ref_fasta: Path, threads: int, runs: int,
              chunk_pairs: int) -> dict[str, float]:
    mm2 = require("minimap2")
    name, mmi = reference(ref_fasta)
    ds_dir = OUT / f"align_{label}"
    shutil.rmtree(ds_dir, ignore_errors=True)
    import_fastq(r1, r2, out=ds_dir, name=label, chunk_size=chunk_pairs)
    ds = Dataset.open(ds_dir)
    reads = ds.num_records
    work_item = 512

    def binary() -> None:
        run([mm2, "-a", "-x", "sr", "-t", str(threads), str(mmi), str(r1), str(r2)])

    def cold_cache() -> None:
        refmod._default_cache.clear()

    def ours() -> None:
        align_dataset(ds_dir, name, references_url=REFS, threads=threads, work_item_reads=work_item)

    binary()  # warm the page cache for both
    t_bin = median_time(binary, runs)
    t_cold = median_time(ours, runs, setup=cold_cache)
    held = acquire_reference(name, REFS, options=AlignerOptions())
    try:
        t_warm = median_time(ours, runs)
        pairs = decoded_pairs(ds)
        native_idx = held.aligner._index  # the very index object persona uses
        items = mm2_items(ds, work_item)
        t_mm2 = median_time(lambda: mm2_kernel(native_idx, items, threads), runs)
    finally:
        release_reference(held)
    idx = mappy.Aligner(fn_idx_in=str(mmi), preset="sr")  # the same .mmi through mappy
    t_kernel = median_time(lambda: kernel(idx, pairs, threads, work_item // 2), runs)
    return {
        "reads": reads,
        "binary_reads_s": round(reads / t_bin),
        "persona_reads_s": round(reads / t_cold),
        "persona_warm_reads_s": round(reads / t_warm),
        "kernel_reads_s": round(reads / t_kernel),
        "mm2_kernel_reads_s": round(reads / t_mm2),
        "ratio_vs_binary": round(t_bin / t_cold, 3),
        "ratio_vs_kernel": round(t_kernel / t_warm, 3),
        "ratio_vs_mm2_kernel": round(t_mm2 / t_warm, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="first 40,000 yeast pairs, median of 3 runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunk-pairs", type=int, default=25_000, help="pairs per AGD chunk (I/O size)")
    args = ap.parse_args()
    yeast = real_sets()["yeast"]
    sets: list[tuple[str, Path, Path]] = []
    if args.quick:
        q1, q2 = head_pairs(yeast["r1"], yeast["r2"], 40_000, OUT / "align_yeast40k_fastq")
        sets.append(("yeast40k", q1, q2))
        runs = 3
        args.chunk_pairs = min(args.chunk_pairs, 10_000)
    else:
        sets.append(("yeast", yeast["r1"], yeast["r2"]))
        sim = simulated_pairs(1_000_000, read_len=101)
        sets.append(("sim1M", sim["r1"], sim["r2"]))
        runs = args.runs
    results = {}
    for label, r1, r2 in sets:
        results[label] = bench_set(label, r1, r2, yeast["ref"], args.threads, runs, args.chunk_pairs)
        shutil.rmtree(OUT / f"align_{label}", ignore_errors=True)
    headers = ["set", "reads", "binary r/s", "persona r/s", "kernel r/s", "mm2 kernel r/s",
               "persona warm r/s", "vs binary", "vs kernel", "vs mm2 kernel"]
    rows = [[k, v["reads"], v["binary_reads_s"], v["persona_reads_s"], v["kernel_reads_s"],
             v["mm2_kernel_reads_s"], v["persona_warm_reads_s"], v["ratio_vs_binary"], v["ratio_vs_kernel"],
             v["ratio_vs_mm2_kernel"]] for k, v in results.items()]
    print(f"threads={args.threads} runs={runs} (median) chunk={args.chunk_pairs} pairs; "
          "goals: vs binary >= 1.0, vs kernel >= 0.97")
    print(table(headers, rows))
    emit_json({"bench": "align", "threads": args.threads, "quick": args.quick, "chunk_pairs": args.chunk_pairs,
               "sets": results,
               "goal_vs_binary": 1.0, "goal_vs_kernel": 0.97})


if __name__ == "__main__":
    main()
