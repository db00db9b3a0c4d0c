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

``--scale K``: memory against dataset size instead. The input dataset and a dataset of K copies of it
(each copy on its own renamed copy of the reference's contigs, read names suffixed: K times the
records at the same depth) are sorted (``persona sort``) and the sorted ones duplicate-marked
(``persona markdup``), each under ``/usr/bin/time``: peak RSS must stay flat (bounded by the
configuration: sort.group_chunks, sort.merge_memory, markdup.window), not grow K times.

    python bench/bench_sort.py --scale 4     # 2M and 8M records
    python bench/bench_sort.py --quick --scale 4
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
    walls, rss = timed_runs(cmd, runs, before)
    return statistics.median(walls), max(rss)


def timed_runs(cmd: list[str], runs: int, before: list[str] | None = None) -> tuple[list[float], list[float]]:
    """Wall seconds and peak RSS (MiB, GNU time) of each of ``runs`` runs of ``cmd`` (``before`` run first)."""
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
    return walls, rss


def replicated(agd: Path, name: str, copies: int) -> str:
    """A dataset ``<name>_x<copies>`` beside ``name``: ``copies`` copies of its records, copy k on contigs
    renamed ``<contig>_k`` (reference indexes shifted), read names suffixed ``_k`` (cached)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import numpy as np

    from persona.agd import Dataset
    from persona.agd.chunk import encode_chunk
    from persona.agd.columns import RESULTS, decode_column, encode_column
    from persona.agd.format import CompressionType
    from persona.agd.ragged import RaggedArray
    from persona.agd.transaction import Transaction

    out = f"{name}_x{copies}"
    if (agd / f"{out}_metadata.json").exists():
        return out
    ds = Dataset.open(agd, name)
    m = ds.manifest
    contigs = sorted(m.reference_contigs, key=lambda c: c.index)
    nc = len(contigs)
    txn = Transaction(ds.store, out, app="bench-replicate", new=True, overwrite=True)
    txn.begin()
    first = 0
    for k in range(copies):
        print(f"replicating {name}: copy {k + 1} of {copies} ...", file=sys.stderr, flush=True)
        for i in range(len(ds.chunks)):
            files = {}
            n = ds.chunks[i].num_records
            for c in ds.columns:
                h, raw = ds.read_raw(i, c)
                if c == RESULTS:
                    res = decode_column(RESULTS, raw)
                    f = res.fields
                    for col in ("ref_index", "next_ref_index"):
                        f[col] = np.where(f[col] >= 0, f[col] + k * nc, f[col])
                    raw = encode_column(RESULTS, res)
                elif c == "metadata":
                    raw = RaggedArray.from_list([bytes(x) + b"_%d" % k for x in raw])
                files[c] = encode_chunk(raw, record_type=h.record_type, first_ordinal=first, name=out,
                                        compression=CompressionType.ZSTD, level=1)
            txn.write_encoded(first, n, files)
            first += n
    rc = [{"name": f"{c.name}_{k}", "length": c.length, "index": k * nc + c.index}
          for k in range(copies) for c in contigs]
    txn.commit(list(ds.columns), sort=m.sort, reference=f"{m.reference}_x{copies}", reference_contigs=rc,
               paired=m.paired, extra=dict(m.extra))
    return out


def scale(inp: dict[str, Path], copies: int, threads: int) -> dict[str, float]:
    """Peak RSS (MiB) and seconds of persona sort and markdup on the dataset and on ``copies`` copies."""
    agd = inp["agd"]
    big = replicated(agd, "aligned", copies)
    rows, res = [], {}
    for label, name in (("1x", "aligned"), (f"{copies}x", big)):
        sort_w, sort_m = timed_process([*PERSONA, "sort", str(agd), "-n", name, "--out-name", f"{name}_s",
                                        "--overwrite", "-t", str(threads), "--quiet"], 1)
        md_w, md_m = timed_process([*PERSONA, "markdup", str(agd), "-n", f"{name}_s", "-t", str(threads),
                                    "--quiet"], 1)
        rows += [[f"persona sort, {label}", sort_w, sort_m], [f"persona markdup, {label}", md_w, md_m]]
        res.update({f"sort_{label}_s": round(sort_w, 2), f"sort_{label}_peak_mib": round(sort_m, 1),
                    f"markdup_{label}_s": round(md_w, 2), f"markdup_{label}_peak_mib": round(md_m, 1)})
    print(table(["run", "seconds", "peak MiB"], rows))
    return res


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
    ap.add_argument("--scale", type=int, default=0, metavar="K",
                    help="peak memory of sort and markdup on the input and on K copies of it (flat = bounded)")
    args = ap.parse_args()
    require("samtools")
    runs = args.runs or 3
    t = args.threads
    inp = aligned_inputs(args.quick, args.pairs, t)
    if args.scale:
        records = int(subprocess.run(["samtools", "view", "-c", str(inp["bam"])], capture_output=True, text=True,
                                     check=True).stdout)
        print(f"{records} and {args.scale * records} records, {t} threads")
        res = scale(inp, args.scale, t)
        growth = {k: round(res[f"{k}_{args.scale}x_peak_mib"] / res[f"{k}_1x_peak_mib"], 3) for k in ("sort", "markdup")}
        emit_json({"bench": "sort_scale", "records": records, "copies": args.scale, "threads": t,
                   "quick": args.quick, **res, "peak_growth": growth})
        return
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
