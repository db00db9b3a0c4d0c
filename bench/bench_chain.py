"""The whole chain: paired FASTQ.gz -> coordinate-sorted, duplicate-marked, indexed BAM, 2 threads, same reads.

Contenders (each a sequence of processes under ``/usr/bin/time``: wall seconds summed, peak RSS the
largest of its steps; a pipeline is one step):

* persona: ``persona align-sort R1 R2 -o DS --markdup --bam out.bam``: import, align, sort, mark
  duplicates and export in one process (the BAM indexed, as export does for coordinate-sorted output),
  with the default aligner (our minimap2 binding), and again with ``--aligner snap`` (our SNAP-style
  kernel);
* ``minimap2 -ax sr | samtools fixmate -m | samtools sort | samtools markdup`` (then ``samtools index``,
  so both ends have an indexed BAM);
* ``minimap2 -ax sr | bamsormadup`` (biobambam2; it writes the index itself with ``index=1``);
* ``snap-aligner paired | samtools fixmate -m | sort | markdup`` (+ index): the same chain with SNAP, so
  the snap row has a like-for-like reference too.

The issue's goal compares persona with the faster of the two minimap2 chains. Every contender gets a
prebuilt index (persona's registered reference, minimap2's ``.mmi``, snap-aligner's index directory at
the seed length ours picks, 20 for sacCer3), so no index building is timed. Reads: ~1M simulated pairs
of sacCer3 (art_illumina, ``bench/_common.py``); ``--quick``: the first 20,000 pairs of the real yeast
set (under a minute).

A last row runs import -> align-sort --markdup -> export as three requests on one warm in-process
Runtime, as ``persona serve`` runs them (no interpreter start, imports or reference load in the time):
what a chain costs a running service. The duplicate count of each output is printed too (they should
agree closely: samtools markdup and bamsormadup are not Picard).

    python bench/bench_chain.py --quick
    python bench/bench_chain.py --runs 3

Ratios are the reference's seconds over ours. The last line is a JSON object.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from _common import OUT, emit_json, real_sets, require, simulated_pairs, table

PERSONA = [sys.executable, "-m", "persona.cli"]


def inputs(quick: bool, pairs: int) -> dict[str, Path]:
    # quick: real yeast reads (nothing to simulate); else the simulated set (made once, minutes)
    src = real_sets()["yeast"] if quick else simulated_pairs(1_000_000)
    n = 20_000 if quick else pairs
    d = OUT / (f"chain_yeast_{n}" if quick else f"chain_{n}")
    d.mkdir(parents=True, exist_ok=True)
    out = {"dir": d, "r1": d / "r1.fq.gz", "r2": d / "r2.fq.gz", "ref": d / "ref.fa", "mmi": d / "ref.mmi",
           "refs": d / "refs"}
    for mate in ("r1", "r2"):
        if not quick and n >= 1_000_000 and not out[mate].exists():
            out[mate].symlink_to(src[mate])  # the whole simulated set: no copy
        if not out[mate].exists():
            tmp = out[mate].with_suffix(".tmp")
            with gzip.open(src[mate], "rt") as fin, gzip.open(tmp, "wt", compresslevel=6) as dst:
                for i, line in enumerate(fin):
                    if i >= 4 * n:
                        break
                    dst.write(line)
            tmp.rename(out[mate])
    if not out["ref"].exists():
        with gzip.open(real_sets()["yeast"]["ref"], "rb") as src, open(out["ref"], "wb") as dst:
            shutil.copyfileobj(src, dst)
    if not out["mmi"].exists():
        subprocess.run([require("minimap2"), "-x", "sr", "-d", str(out["mmi"]), str(out["ref"])], check=True,
                       capture_output=True)
    if not (out["refs"] / "sacCer3" / "reference.json").exists():
        subprocess.run([*PERSONA, "reference", "add", "sacCer3", str(out["ref"]), "--store", str(out["refs"]),
                        "--quiet"], check=True)
    if not (out["refs"] / "sacCer3" / "snap-sr.snapidx").exists():
        subprocess.run([*PERSONA, "reference", "add", "sacCer3", str(out["ref"]), "--aligner", "snap", "--store",
                        str(out["refs"]), "--quiet"], check=True)
    out["snapidx"] = d / "snap_aligner_s20"
    if not (out["snapidx"] / "GenomeIndex").exists():
        shutil.rmtree(out["snapidx"], ignore_errors=True)
        subprocess.run([require("snap-aligner"), "index", str(out["ref"]), str(out["snapidx"]), "-s", "20", "-t2"],
                       check=True, capture_output=True)
    return out


def timed(cmd: list[str] | str) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one step (a shell pipeline when ``cmd`` is a string)."""
    argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else cmd
    r = subprocess.run(["/usr/bin/time", "-f", "%e %M", *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{r.stderr[-3000:]}")
    wall, kb = r.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kb) / 1024


def chain(steps: list[list[str] | str], before: list[str] | None = None) -> tuple[float, float]:
    if before:
        subprocess.run(before, check=False)
    walls, peaks = zip(*(timed(s) for s in steps))
    return sum(walls), max(peaks)


def warm_chain(inp: dict[str, Path], threads: int, runs: int) -> float:
    """Median seconds of import -> align-sort --markdup -> export as requests on one warm Runtime."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import time

    from persona.apps.align_sort import AlignSortRequest
    from persona.apps.export import ExportRequest
    from persona.apps.importer import ImportRequest
    from persona.runtime import Runtime

    d = inp["dir"]
    loc = str(d / "agd_warm")
    small = {m: d / f"warmup_{m}.fq.gz" for m in ("r1", "r2")}
    for m, path in small.items():  # 2,000 pairs to warm up on
        if not path.exists():
            with gzip.open(inp[m], "rt") as fin, gzip.open(path, "wt") as dst:
                for i, line in enumerate(fin):
                    if i >= 8000:
                        break
                    dst.write(line)

    def chain_once(r1: Path, r2: Path) -> float:
        t0 = time.perf_counter()
        rt.run(ImportRequest(inputs=(str(r1), str(r2)), output=loc, name="reads", overwrite=True,
                             exclusive_location=False, read_group={"ID": "sim", "SM": "sim", "LB": "lib1"}))
        rt.run(AlignSortRequest(dataset=loc, input_name="reads", reference="sacCer3",
                                references_url=str(inp["refs"]), markdup=True, name="sorted", overwrite=True))
        rt.run(ExportRequest(dataset=loc, name="sorted", output=str(d / "warm.bam")))
        return time.perf_counter() - t0

    with Runtime(threads=threads) as rt:
        chain_once(small["r1"], small["r2"])  # warm-up: pipelines built, reference loaded
        walls = [chain_once(inp["r1"], inp["r2"]) for _ in range(runs)]
    return statistics.median(walls)


def duplicates(bam: Path) -> int:
    return int(subprocess.run(["samtools", "view", "-c", "-f", "0x400", str(bam)], capture_output=True, text=True,
                              check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20,000 pairs, one run (under a minute)")
    ap.add_argument("--pairs", type=int, default=1_000_000, help="pairs of the simulated set to use")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    for tool in ("minimap2", "samtools", "bamsormadup", "snap-aligner"):
        require(tool)
    t = str(args.threads)
    runs = args.runs or (1 if args.quick else 3)
    inp = inputs(args.quick, args.pairs)
    d = inp["dir"]
    rg = "@RG\\tID:sim\\tSM:sim\\tLB:lib1\\tPL:ILLUMINA"

    def ours(aligner: str) -> list[list[str] | str]:
        return [[*PERSONA, "align-sort", str(inp["r1"]), str(inp["r2"]), "-o", str(d / f"agd_{aligner}"),
                 "--out-name", "sorted", "--overwrite", "-r", "sacCer3", "--store", str(inp["refs"]), "--aligner",
                 aligner, "--markdup", "-M", str(d / f"ours_{aligner}.metrics"), "--bam", str(d / f"ours_{aligner}.bam"),
                 "-t", t, "--quiet", "-R", rg]]

    def samtools_tail(aligner_cmd: str, out: str) -> list[list[str] | str]:
        return [f"{aligner_cmd} | samtools fixmate -m -@ {t} -u - - | samtools sort -@ {t} -u -T {d}/st_{out} - "
                f"| samtools markdup -@ {t} - {d}/{out}.bam 2>/dev/null", f"samtools index -@ {t} {d}/{out}.bam"]

    mm2 = f"minimap2 -t {t} -ax sr {inp['mmi']} {inp['r1']} {inp['r2']} 2>/dev/null"
    snap = f"snap-aligner paired {inp['snapidx']} {inp['r1']} {inp['r2']} -t {t} -o -sam - 2>/dev/null"
    contenders: dict[str, list[list[str] | str]] = {
        "persona": ours("minimap2"),
        "persona_snap": ours("snap"),
        "samtools": samtools_tail(mm2, "samtools"),
        "bamsormadup": [f"{mm2} | bamsormadup threads={t} inputformat=sam tmpfile={d}/bsmd index=1 "
                        f"indexfilename={d}/bamsormadup.bam.bai > {d}/bamsormadup.bam 2>/dev/null"],
        "snap_samtools": samtools_tail(snap, "snap_samtools"),
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in contenders}
    for _ in range(runs):  # interleaved, so load changes on the shared machine hit all alike
        for key, steps in contenders.items():
            results[key].append(chain(steps))
            print(f"{key}: {results[key][-1][0]:.2f} s, {results[key][-1][1]:.0f} MiB", file=sys.stderr, flush=True)
    med = {k: (statistics.median(w for w, _ in v), max(m for _, m in v)) for k, v in results.items()}
    warm = warm_chain(inp, args.threads, 1 if args.quick else min(runs, 2))
    bams = {"persona": d / "ours_minimap2.bam", "persona_snap": d / "ours_snap.bam", "samtools": d / "samtools.bam",
            "bamsormadup": d / "bamsormadup.bam", "snap_samtools": d / "snap_samtools.bam"}
    dups = {k: duplicates(p) for k, p in bams.items()}
    records = int(subprocess.run(["samtools", "view", "-c", "-F", "0x900", str(bams["persona"])], capture_output=True,
                                 text=True, check=True).stdout)
    ours_s, snap_s = med["persona"][0], med["persona_snap"][0]
    faster = min(med["samtools"][0], med["bamsormadup"][0])
    labels = {"persona": "persona align-sort R1 R2 --markdup --bam (minimap2)",
              "persona_snap": "persona align-sort ... --aligner snap",
              "samtools": "minimap2 | fixmate | sort | markdup (+ index)",
              "bamsormadup": "minimap2 | bamsormadup",
              "snap_samtools": "snap-aligner | fixmate | sort | markdup (+ index)"}
    rows = [[labels[k], med[k][0], med[k][1], med[k][0] / ours_s, med[k][0] / snap_s, dups[k]] for k in contenders]
    rows.append(["persona, import + align-sort + export on a warm runtime", warm, float("nan"), warm / ours_s,
                 warm / snap_s, ""])
    print(f"{records} primary records, {t} threads, median of {runs} run(s)")
    print(table(["chain (FASTQ.gz -> sorted, duplicate-marked, indexed BAM)", "seconds", "peak MiB",
                 "s / persona", "s / persona snap", "duplicates"], rows))
    print(f"persona (minimap2) vs the faster minimap2 chain: {faster / ours_s:.2f}x; persona snap: "
          f"{faster / snap_s:.2f}x, and vs snap-aligner's chain {med['snap_samtools'][0] / snap_s:.2f}x")
    emit_json({"bench": "chain", "records": records, "threads": args.threads, "runs": runs, "quick": args.quick,
               **{f"{k}_s": round(med[k][0], 2) for k in contenders},
               **{f"{k}_peak_mib": round(med[k][1], 1) for k in contenders},
               "duplicates": dups, "ratio_vs_faster": round(faster / ours_s, 3),
               "ratio_snap_vs_faster": round(faster / snap_s, 3),
               "ratio_snap_vs_snap_samtools": round(med["snap_samtools"][0] / snap_s, 3),
               "persona_warm_runtime_s": round(warm, 2), "ratio_warm_vs_faster": round(faster / warm, 3),
               "ratio_vs_samtools": round(med["samtools"][0] / ours_s, 3),
               "ratio_vs_bamsormadup": round(med["bamsormadup"][0] / ours_s, 3)})


if __name__ == "__main__":
    main()
