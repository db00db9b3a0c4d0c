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

``--aligner snap`` measures our SNAP-style kernel instead, beside ``snap-aligner`` (SNAP 2.0.2)
with the same seed length (``--seed-len``, default 20) and thread count, on the same reads:
``snap-aligner paired``/``single`` (FASTQ.gz in, SAM out, index load included) against
``persona align --aligner snap`` on the imported dataset (paired, then every read single-end),
plus the bare kernel loop (framework overhead), index build time and size, and the peak memory
(RSS) of a process holding the loaded index after aligning the set, ours vs snap-aligner's; and the
index build itself (fresh processes: wall time and peak RSS of ours at the default seed-memory budget
and at a small one that takes several passes, checked to give the same bytes, beside ``snap-aligner
index``) for the human chr20 reference and, in the full run, sacCer3.
Sets: the yeast pairs (2x50) and wgsim pairs (2x101, 0.1 % SNPs, 15 % indels) on sacCer3
(``--quick``: 20,000 yeast pairs and 40,000 wgsim pairs, one run each).
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
    shared_data,
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


#: runs a command from a small fresh process, so its peak RSS is its own (a child forked from this big
#: process would report this process's RSS at fork time as its ru_maxrss)
_RSS_WRAPPER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, usage = os.wait4(p.pid, 0)
rc = os.waitstatus_to_exitcode(status)
if rc:
    sys.exit(f"{sys.argv[1]} failed ({rc}): {err[-2000:].decode(errors='replace')}")
print(usage.ru_maxrss / 1024)
"""


def _peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a command run to completion."""
    import subprocess
    import time

    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *cmd], capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-2000:])
    return time.perf_counter() - t, float(p.stdout.split()[-1])


#: peak RSS (VmHWM, MiB) of a fresh process before loading the index and after aligning the set with it
_SNAP_RSS_PROBE = """
import sys
from persona.agd import Dataset
from persona.align.base import AlignerOptions
from persona.align.reference import acquire_reference
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
ds = Dataset.open(sys.argv[4])
cols = [(ds.read_column(i, "base"), ds.read_column(i, "qual")) for i in range(len(ds.chunks))]
base = hwm()
ref = acquire_reference(sys.argv[1], sys.argv[2], aligner="snap", options=AlignerOptions(preset=sys.argv[3]))
for b, q in cols:
    ref.aligner.align(b, q, paired=True)
print(base, hwm())
"""


def _wgsim_pairs(ref_fa: Path, pairs: int) -> tuple[Path, Path]:
    """``pairs`` wgsim pairs 2x101 (0.1 % SNPs, 15 % of them indels, 0.2 % base errors), gzip'ed, cached."""
    d = OUT / f"wgsim_{pairs}"
    outs = (d / "R1.fastq.gz", d / "R2.fastq.gz")
    if not outs[1].exists():
        d.mkdir(parents=True, exist_ok=True)
        run([require("wgsim"), "-S", "11", "-N", str(pairs), "-1", "101", "-2", "101", "-e", "0.002", "-r", "0.001",
             "-R", "0.15", str(ref_fa), str(d / "R1.fq"), str(d / "R2.fq")])
        for fq, gz in zip((d / "R1.fq", d / "R2.fq"), outs):
            run(f"gzip -1 -c {fq} > {gz}.tmp && mv {gz}.tmp {gz} && rm {fq}", shell=True)
    return outs


def _plain_fasta(ref_fasta: Path) -> Path:
    out = OUT / "sacCer3.fa"
    if not out.exists():
        with gzip.open(ref_fasta, "rb") as f, open(out.with_suffix(".tmp"), "wb") as g:
            shutil.copyfileobj(f, g)
        out.with_suffix(".tmp").rename(out)
    return out


def snap_reference(ref_fasta: Path, seed: int, threads: int) -> dict[str, object]:
    """Our snap index and snap-aligner's of sacCer3 with seed length ``seed`` (built once; build times)."""
    import time

    snap = require("snap-aligner")
    name, preset = "sacCer3", f"s{seed}"
    info = reference_info(name, REFS) if (REFS / name / "reference.json").exists() else None
    t_ours = None
    if info is None or f"snap-{preset}" not in info.indexes:
        t = time.perf_counter()
        add_reference(name, ref_fasta, REFS, aligner="snap", preset=preset)
        t_ours = time.perf_counter() - t
        info = reference_info(name, REFS)
    sdir = OUT / f"snap_aligner_idx_s{seed}"
    t_theirs = None
    if not (sdir / "GenomeIndex").exists():
        shutil.rmtree(sdir, ignore_errors=True)
        t_theirs = _peak_rss_mb([snap, "index", str(_plain_fasta(ref_fasta)), str(sdir), "-s", str(seed),
                                 "-t" + str(threads)])[0]
    return {"name": name, "preset": preset, "dir": sdir, "build_s": t_ours, "snap_build_s": t_theirs,
            "index_mb": info.indexes[f"snap-{preset}"]["size"] / 2**20,
            "snap_index_mb": sum(f.stat().st_size for f in sdir.iterdir()) / 2**20}


def snap_kernel(aligner: object, items: list[tuple[object, object]], threads: int, paired: bool) -> None:
    """The bare kernel loop: ``threads`` threads take work items in turn (one Mapper per thread)."""
    it = iter(items)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                item = next(it, None)
            if item is None:
                return
            aligner.align(item[0], item[1], paired=paired)  # type: ignore[attr-defined]

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


_SNAP_BUILD = """
import sys
from persona.align import snap_backend as sb
sb.build_index(sys.argv[1], sys.argv[2], sys.argv[3], memory_mb=float(sys.argv[4]))
"""


def bench_snap_build(label: str, fasta: Path, seed: int, threads: int, small_mb: int) -> dict[str, object]:
    """Index build of ``fasta`` (seed ``seed``): wall time and peak RSS of a fresh process building ours
    with the default seed-memory budget and with ``small_mb`` (several passes; the same bytes), beside
    ``snap-aligner index`` (``threads`` threads) with the same seed length."""
    import hashlib

    snap = require("snap-aligner")
    from persona.align import snap_backend as sb

    d = OUT / f"snap_build_{label}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    out: dict[str, object] = {}
    digests = []
    for key, budget in (("default", sb.INDEX_MEMORY_MB), ("small", small_mb)):
        idx = d / f"{key}.snapidx"
        secs, rss = _peak_rss_mb([sys.executable, "-c", _SNAP_BUILD, str(fasta), str(idx), f"s{seed}", str(budget)])
        h = hashlib.sha256()
        with open(idx, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        digests.append(h.hexdigest())
        out[f"persona_{key}_s"], out[f"persona_{key}_rss_mb"] = round(secs, 2), round(rss, 1)
        out[f"persona_{key}_budget_mb"] = budget
        out["persona_index_mb"] = round(idx.stat().st_size / 2**20, 1)
        idx.unlink()
    out["identical"] = digests[0] == digests[1]
    plain = d / "ref.fa"
    with gzip.open(fasta, "rb") if str(fasta).endswith(".gz") else open(fasta, "rb") as f, open(plain, "wb") as g:
        shutil.copyfileobj(f, g)
    secs, rss = _peak_rss_mb([snap, "index", str(plain), str(d / "snapidx"), "-s", str(seed), f"-t{threads}"])
    out["snap_s"], out["snap_rss_mb"] = round(secs, 2), round(rss, 1)
    shutil.rmtree(d, ignore_errors=True)
    return out


def bench_snap_set(label: str, r1: Path, r2: Path, ref: dict[str, object], threads: int, runs: int,
                   chunk_pairs: int) -> dict[str, float]:
    import subprocess

    snap = require("snap-aligner")
    name, preset = str(ref["name"]), str(ref["preset"])
    ds_dir = OUT / f"align_{label}"
    shutil.rmtree(ds_dir, ignore_errors=True)
    import_fastq(r1, r2, out=ds_dir, name=label, chunk_size=chunk_pairs)
    ds = Dataset.open(ds_dir)
    reads = ds.num_records
    work_item = 2048
    sam = OUT / f"snap_{label}.sam"
    theirs_rss: list[float] = []

    def binary_paired() -> None:
        theirs_rss.append(_peak_rss_mb([snap, "paired", str(ref["dir"]), str(r1), str(r2), "-o", str(sam),
                                        "-t", str(threads)])[1])

    def binary_single() -> None:
        _peak_rss_mb([snap, "single", str(ref["dir"]), str(r1), str(r2), "-o", str(sam), "-t", str(threads)])

    def cold_cache() -> None:
        refmod._default_cache.clear()

    def ours(paired: bool) -> None:
        align_dataset(ds_dir, name, aligner="snap", options=AlignerOptions(preset=preset), references_url=REFS,
                      threads=threads, work_item_reads=work_item, paired=paired)

    binary_paired()  # warm the page cache for both
    t_bin_p = median_time(binary_paired, runs)
    t_ours_p = median_time(lambda: ours(True), runs, setup=cold_cache)
    t_bin_s = median_time(binary_single, runs)
    t_ours_s = median_time(lambda: ours(False), runs, setup=cold_cache)
    held = acquire_reference(name, REFS, aligner="snap", options=AlignerOptions(preset=preset))
    try:
        items = []
        for i in range(len(ds.chunks)):
            b, q = ds.read_column(i, "base"), ds.read_column(i, "qual")
            items += [(b.slice(lo, min(lo + work_item, len(b))), q.slice(lo, min(lo + work_item, len(b))))
                      for lo in range(0, len(b), work_item)]
        t_kernel = median_time(lambda: snap_kernel(held.aligner, items, threads, True), runs)
        t_warm = median_time(lambda: ours(True), runs)
    finally:
        release_reference(held)
    # snap-aligner with its index loaded and one read: the index's own memory (plus a small process)
    one = OUT / f"snap_{label}_one.fq"
    with gzip.open(r1, "rt") as f:
        one.write_text("".join(itertools.islice(f, 4)))
    snap_index_rss = _peak_rss_mb([snap, "single", str(ref["dir"]), str(one), "-o", str(sam), "-t", "1"])[1]
    one.unlink()
    probe = subprocess.run([sys.executable, "-c", _SNAP_RSS_PROBE, name, str(REFS), preset, str(ds_dir)],
                           check=True, capture_output=True, text=True).stdout.split()
    base_mb, ours_mb = float(probe[0]), float(probe[1])
    sam.unlink(missing_ok=True)
    return {
        "reads": reads,
        "snap_paired_reads_s": round(reads / t_bin_p), "persona_paired_reads_s": round(reads / t_ours_p),
        "ratio_paired": round(t_bin_p / t_ours_p, 3),
        "snap_single_reads_s": round(reads / t_bin_s), "persona_single_reads_s": round(reads / t_ours_s),
        "ratio_single": round(t_bin_s / t_ours_s, 3),
        "kernel_paired_reads_s": round(reads / t_kernel), "persona_warm_paired_reads_s": round(reads / t_warm),
        "ratio_warm_vs_kernel": round(t_kernel / t_warm, 3),
        # ours: the index's share of the process (RSS growth from loading it and aligning the set);
        # snap-aligner: the whole process (index, reads, SAM buffers)
        # snap_index_rss_mb: snap-aligner aligning one read (its index loaded, no big batches)
        "snap_peak_rss_mb": round(min(theirs_rss), 1), "snap_index_rss_mb": round(snap_index_rss, 1),
        "persona_index_rss_mb": round(ours_mb - base_mb, 1),
        "persona_peak_rss_mb": round(ours_mb, 1), "persona_before_index_mb": round(base_mb, 1),
        "ratio_memory": round((ours_mb - base_mb) / snap_index_rss, 3),
    }


def main_snap(args: argparse.Namespace) -> None:
    yeast = real_sets()["yeast"]
    ref = snap_reference(yeast["ref"], args.seed_len, args.threads)
    runs = 1 if args.quick else args.runs
    if args.quick:  # under a minute: small sets, one run each (the full run gives the medians)
        q1, q2 = head_pairs(yeast["r1"], yeast["r2"], 20_000, OUT / "align_yeast20k_fastq")
        sets = [("yeast20k", q1, q2), ("wgsim40k", *_wgsim_pairs(_plain_fasta(yeast["ref"]), 40_000))]
        args.chunk_pairs = min(args.chunk_pairs, 10_000)
    else:
        sets = [("yeast", yeast["r1"], yeast["r2"]),
                ("wgsim1M", *_wgsim_pairs(_plain_fasta(yeast["ref"]), 1_000_000))]
    results = {}
    for label, r1, r2 in sets:
        results[label] = bench_snap_set(label, r1, r2, ref, args.threads, runs, args.chunk_pairs)
        shutil.rmtree(OUT / f"align_{label}", ignore_errors=True)
    # index build in bounded memory: the human chr20 reference (1.3 Mb of bases in 63 Mb), and sacCer3
    # (full run only: about 45 s)
    chr20 = shared_data() / "human_NA12878_chr20" / "ucsc.hg19.chr20.unittest.fasta.gz"
    builds = {"hg19chr20": bench_snap_build("hg19chr20", chr20, args.seed_len, args.threads, 8)}
    if not args.quick:
        builds["sacCer3"] = bench_snap_build("sacCer3", yeast["ref"], args.seed_len, args.threads, 32)
    headers = ["set", "reads", "snap paired r/s", "ours paired r/s", "ratio", "snap single r/s",
               "ours single r/s", "ratio", "kernel r/s", "ours warm r/s", "snap RSS MB", "snap 1-read RSS MB", "ours index RSS MB"]
    rows = [[k, v["reads"], v["snap_paired_reads_s"], v["persona_paired_reads_s"], v["ratio_paired"],
             v["snap_single_reads_s"], v["persona_single_reads_s"], v["ratio_single"], v["kernel_paired_reads_s"],
             v["persona_warm_paired_reads_s"], v["snap_peak_rss_mb"], v["snap_index_rss_mb"],
             v["persona_index_rss_mb"]]
            for k, v in results.items()]
    print(f"aligner=snap seed={args.seed_len} threads={args.threads} runs={runs} (median); index: ours "
          f"{ref['index_mb']:.0f} MB (built in {ref['build_s'] or 0:.1f} s), snap-aligner {ref['snap_index_mb']:.0f} MB "
          f"(built in {ref['snap_build_s'] or 0:.1f} s; 0: cached); goals: ratios >= 1.0, memory <= 1.0x")
    print(table(headers, rows))
    build_rows = [[k, v["persona_default_s"], v["persona_default_rss_mb"], v["persona_small_s"],
                   v["persona_small_rss_mb"], v["identical"], v["snap_s"], v["snap_rss_mb"]]
                  for k, v in builds.items()]
    print(table(["index build", "ours s", "ours RSS MB", "ours small-budget s", "ours small-budget RSS MB",
                 "same bytes", "snap-aligner s", "snap-aligner RSS MB"], build_rows))
    emit_json({"bench": "align", "aligner": "snap", "index_builds": builds, "seed_len": args.seed_len,
               "threads": args.threads,
               "quick": args.quick, "index_mb": round(ref["index_mb"], 1),  # type: ignore[arg-type]
               "snap_index_mb": round(ref["snap_index_mb"], 1),  # type: ignore[arg-type]
               "index_build_s": ref["build_s"], "snap_index_build_s": ref["snap_build_s"], "sets": results,
               "goal_ratio": 1.0, "goal_memory": 1.0})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="first 40,000 yeast pairs, median of 3 runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunk-pairs", type=int, default=25_000, help="pairs per AGD chunk (I/O size)")
    ap.add_argument("--aligner", choices=["minimap2", "snap"], default="minimap2",
                    help="snap: our SNAP-style kernel beside snap-aligner (see above)")
    ap.add_argument("--seed-len", type=int, default=20, help="--aligner snap: seed length (both indexes)")
    args = ap.parse_args()
    if args.aligner == "snap":
        main_snap(args)
        return
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
