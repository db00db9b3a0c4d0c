"""FASTQ.gz -> AGD import throughput against decompression alone (``zcat``, and ``pigz -d`` with the
same threads where pigz is installed).

For each input set: MB of uncompressed FASTQ per second of wall time, for
``import_fastq`` (in-process, default settings, a fresh output directory each
run) and for ``zcat FILE > /dev/null`` on the same files (R1 and R2 one after
the other, times summed). Medians of several runs; prints the ratio
import/zcat (goal >= 0.8) and, as the last line, one JSON object. CPU
seconds (all threads / child processes) are shown too: the import needs about
twice zcat's CPU time and reaches the goal only when it gets the machine's
second core, so on a busy machine read the ``cores`` column and the load average.

    python bench/bench_import.py            # yeast (real) + 2M simulated pairs
    python bench/bench_import.py --quick    # yeast only, fewer runs (< 1 min)
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, emit_json, gunzipped_size, median_wall_cpu, real_sets, require, run, simulated_pairs, table

from persona.apps.import_fastq import import_fastq


def bench_set(label: str, r1: Path, r2: Path, runs: int, threads: int, chunk_size: int) -> dict[str, float]:
    fastq_bytes = gunzipped_size(r1) + gunzipped_size(r2)
    zcat = require("zcat")
    pigz = shutil.which("pigz")
    n_threads = threads or os.cpu_count() or 1

    def decompress_only() -> None:
        for p in (r1, r2):
            run(f"{zcat} {p} > /dev/null", shell=True)

    def pigz_only() -> None:
        for p in (r1, r2):
            run(f"{pigz} -dc -p {n_threads} {p} > /dev/null", shell=True)

    out = OUT / f"import_{label}"

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)

    def ours() -> None:
        import_fastq(r1, r2, out=out, threads=threads, chunk_size=chunk_size)

    decompress_only()  # warm the page cache for both contenders
    # Alternate the contenders run by run, so both see the same background load.
    zc, us, pz = [], [], []
    for _ in range(runs):
        zc.append(median_wall_cpu(decompress_only, 1))
        if pigz:
            pz.append(median_wall_cpu(pigz_only, 1))
        us.append(median_wall_cpu(ours, 1, setup=fresh))
    t_zcat, cpu_zcat = statistics.median(w for w, _ in zc), statistics.median(c for _, c in zc)
    t_ours, cpu_ours = statistics.median(w for w, _ in us), statistics.median(c for _, c in us)
    fresh()
    mb = fastq_bytes / 1e6
    extra: dict[str, float] = {}
    if pz:
        t_pigz = statistics.median(w for w, _ in pz)
        extra = {"pigz_s": round(t_pigz, 4), "pigz_mb_s": round(mb / t_pigz, 1),
                 "ratio_pigz": round(t_pigz / t_ours, 3)}
    return extra | {
        "fastq_mb": round(mb, 2),
        "zcat_s": round(t_zcat, 4),
        "import_s": round(t_ours, 4),
        "zcat_cpu_s": round(cpu_zcat, 3),
        "import_cpu_s": round(cpu_ours, 3),
        "import_cores_used": round(cpu_ours / t_ours, 2),
        "zcat_mb_s": round(mb / t_zcat, 1),
        "import_mb_s": round(mb / t_ours, 1),
        "ratio": round(t_zcat / t_ours, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="yeast only, 3 runs")
    ap.add_argument("--runs", type=int, default=None, help="runs per contender (default 5, quick 3)")
    ap.add_argument("--threads", type=int, default=0, help="import threads (0 = all cores)")
    ap.add_argument("--chunk-size", type=int, default=100_000)
    args = ap.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    sets = {"yeast": real_sets()["yeast"]}
    if not args.quick:
        sets["sim2M"] = simulated_pairs()
    results = {}
    load_before = os.getloadavg()
    for label, paths in sets.items():
        print(f"[{label}] {paths['r1'].name} + {paths['r2'].name}, {runs} runs ...", file=sys.stderr, flush=True)
        results[label] = bench_set(label, paths["r1"], paths["r2"], runs, args.threads, args.chunk_size)
    rows = [[k, v["fastq_mb"], v["zcat_s"], v["zcat_mb_s"], v.get("pigz_mb_s", "-"), v["import_s"],
             v["import_mb_s"], v["ratio"], v.get("ratio_pigz", "-"), v["zcat_cpu_s"], v["import_cpu_s"],
             v["import_cores_used"]]
            for k, v in results.items()]
    print(table(["set", "FASTQ MB", "zcat s", "zcat MB/s", "pigz MB/s", "import s", "import MB/s", "vs zcat",
                 "vs pigz", "zcat CPU s", "import CPU s", "import cores"], rows))
    print(f"load average before: {load_before}, after: {os.getloadavg()} (other processes share the cores)")
    print(f"threads={args.threads or os.cpu_count()} chunk_size={args.chunk_size} runs={runs} "
          "(ratio = import MB/s / zcat MB/s; goal >= 0.8)")
    emit_json({
        "bench": "import_fastq",
        "threads": args.threads or os.cpu_count(),
        "chunk_size": args.chunk_size,
        "runs": runs,
        "sets": results,
        "min_ratio": min(v["ratio"] for v in results.values()),
        "goal_ratio": 0.8,
        "loadavg_before": load_before,
    })


if __name__ == "__main__":
    main()
