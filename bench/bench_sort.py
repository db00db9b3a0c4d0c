"""Sort benchmark: ``persona sort`` (AGD -> coordinate-sorted AGD) vs ``samtools sort -@T`` (BAM -> BAM,
and SAM -> BAM, the conversion the thesis counts), same records, same threads, medians; also the sort
request on a warm runtime, as the service runs it (no interpreter start or imports in the time).

Input: simulated pairs (art_illumina on sacCer3; 1M pairs, 2M records) aligned by minimap2, in
minimap2's order; ``--quick``: the real yeast set (100k pairs). The aligned SAM/BAM and the AGD
dataset imported from it are cached in ``bench/out/``.

    python bench/bench_sort.py --quick       # < 1 min once the inputs are cached
    python bench/bench_sort.py               # 2M records

Each contender runs as its own process under ``/usr/bin/time`` (wall time, peak RSS). The last
line is a JSON object.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import OUT, emit_json, real_sets, require, run, simulated_pairs, table

PERSONA = [sys.executable, "-m", "persona.cli"]


def aligned_inputs(quick: bool, pairs: int, threads: int) -> dict[str, Path]:
    """minimap2-aligned SAM and BAM of the benchmark reads, and the AGD dataset imported from them."""
    d = OUT / ("sort_quick" if quick else f"sort_{pairs}")
    d.mkdir(parents=True, exist_ok=True)
    sam, bam, agd = d / "aligned.sam", d / "aligned.bam", d / "agd"
    if quick:
        s = real_sets()["yeast"]
        r1, r2, ref_gz = s["r1"], s["r2"], s["ref"]
    else:
        sim = simulated_pairs(pairs)
        r1, r2 = sim["r1"], sim["r2"]
        ref_gz = real_sets()["yeast"]["ref"]
    ref = d / "ref.fa"
    if not ref.exists():
        with gzip.open(ref_gz, "rb") as src, open(ref, "wb") as dst:
            shutil.copyfileobj(src, dst)
    if not sam.exists():
        print(f"aligning {r1.name} with minimap2 into {sam} ...", file=sys.stderr, flush=True)
        tmp = sam.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            subprocess.run([require("minimap2"), "-t", str(threads), "-ax", "sr", "--secondary=no", str(ref),
                            str(r1), str(r2)], check=True, stdout=out, stderr=subprocess.DEVNULL)
        tmp.rename(sam)
    if not bam.exists():
        run(["samtools", "view", "-@", str(threads), "-b", "-o", str(bam), str(sam)])
    if not (agd / "aligned_metadata.json").exists():
        shutil.rmtree(agd, ignore_errors=True)
        run([*PERSONA, "import", str(bam), "-o", str(agd), "-n", "aligned", "--quiet", "-t", str(threads)])
    return {"sam": sam, "bam": bam, "agd": agd, "dir": d}


def timed_process(cmd: list[str], runs: int, before: list[str] | None = None) -> tuple[float, float]:
    """Median wall seconds and the largest peak RSS (MiB) of ``runs`` runs of ``cmd``."""
    walls, rss = [], []
    for _ in range(runs):
        if before:
            subprocess.run(before, check=False, capture_output=True)
        r = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
        wall, kb = r.stderr.strip().splitlines()[-1].split()
        walls.append(float(wall))
        rss.append(int(kb) / 1024)
    return statistics.median(walls), max(rss)


def in_process(agd: Path, threads: int, runs: int) -> float:
    """Median seconds of the sort request on a warm Runtime (a worker of the service: no interpreter
    start, imports or pipeline construction in the time)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from persona.apps.sort import SortRequest
    from persona.runtime import Runtime

    with Runtime(threads=threads) as rt:
        req = SortRequest(dataset=str(agd), input_name="aligned", name="sorted_warm", overwrite=True)
        rt.run(req)  # warm-up: pipeline built, modules loaded
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            rt.run(req)
            walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the yeast set (200k records), 3 runs")
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    require("samtools")
    runs = args.runs or 3
    t = args.threads
    inp = aligned_inputs(args.quick, args.pairs, t)
    d = inp["dir"]
    records = int(subprocess.run(["samtools", "view", "-c", str(inp["bam"])], capture_output=True, text=True,
                                 check=True).stdout)
    rm_ours = [*PERSONA, "gc", str(inp["agd"]), "--quiet"]
    ours = [*PERSONA, "sort", str(inp["agd"]), "-n", "aligned", "--out-name", "sorted", "--overwrite", "-t", str(t),
            "--quiet"]
    ours_w, ours_m = timed_process(ours, runs, before=rm_ours)
    inproc = in_process(inp["agd"], t, runs)
    st_bam_w, st_bam_m = timed_process(["samtools", "sort", "-@", str(t), "-o", str(d / "st.bam"), str(inp["bam"])],
                                       runs)
    st_sam_w, st_sam_m = timed_process(["samtools", "sort", "-@", str(t), "-o", str(d / "st2.bam"), str(inp["sam"])],
                                       runs)
    rows = [["persona sort (AGD -> AGD)", ours_w, ours_m, 1.0],
            ["persona sort, warm runtime (service)", inproc, float("nan"), ours_w / inproc],
            [f"samtools sort -@{t} (BAM -> BAM)", st_bam_w, st_bam_m, st_bam_w / ours_w],
            [f"samtools sort -@{t} (SAM -> BAM)", st_sam_w, st_sam_m, st_sam_w / ours_w]]
    print(f"{records} records, {t} threads, median of {runs} runs")
    print(table(["contender", "seconds", "peak MiB", "theirs/ours"], rows))
    emit_json({"bench": "sort", "records": records, "threads": t, "runs": runs, "quick": args.quick,
               "persona_s": round(ours_w, 3), "persona_peak_mib": round(ours_m, 1),
               "samtools_bam_s": round(st_bam_w, 3), "samtools_bam_peak_mib": round(st_bam_m, 1),
               "samtools_sam_s": round(st_sam_w, 3), "persona_warm_runtime_s": round(inproc, 3),
               "ratio_warm_vs_samtools_bam": round(st_bam_w / inproc, 3),
               "ratio_vs_samtools_bam": round(st_bam_w / ours_w, 3),
               "ratio_vs_samtools_sam": round(st_sam_w / ours_w, 3)})


if __name__ == "__main__":
    main()
