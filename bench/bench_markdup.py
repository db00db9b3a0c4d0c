"""Duplicate-marking benchmark: ``persona markdup`` (a coordinate-sorted AGD dataset, flags rewritten in
place) vs ``samtools markdup`` (on the fixmate'd, sorted BAM of the same records), the whole
``samtools fixmate -m | sort | markdup`` tail (from minimap2's name-grouped BAM; against our sort then
markdup of the unsorted dataset), and Picard
MarkDuplicates (on the sorted BAM); sambamba and bamsormadup when installed. Same threads, medians.

Input: as bench_sort (simulated 1M pairs aligned by minimap2; ``--quick``: the real yeast set).
Also reports how many reads each marks and whether Picard's flags equal ours.

    python bench/bench_markdup.py --quick
    python bench/bench_markdup.py

The last line is a JSON object.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from _common import emit_json, require, run, table
from bench_sort import PERSONA, aligned_inputs, timed_process


def dup_flags(bam: Path) -> list[int]:
    out = subprocess.run(["samtools", "view", str(bam)], capture_output=True, text=True, check=True).stdout
    return [int(line.split("\t", 2)[1]) & 0x400 for line in out.splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the yeast set (200k records); Picard once")
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--scale", type=int, default=0, metavar="K",
                    help="peak memory of sort and markdup on the input and on K copies of it (bench_sort --scale)")
    args = ap.parse_args()
    require("samtools")
    if args.scale:
        import bench_sort

        sys.argv = [sys.argv[0], "--scale", str(args.scale), "--threads", str(args.threads)] + \
            (["--quick"] if args.quick else []) + ["--pairs", str(args.pairs)]
        bench_sort.main()
        return
    t, runs = args.threads, args.runs or (1 if args.quick else 3)
    inp = aligned_inputs(args.quick, args.pairs, t)
    d = inp["dir"]
    agd = inp["agd"]
    if not (agd / "sorted_metadata.json").exists():
        run([*PERSONA, "sort", str(agd), "-n", "aligned", "--out-name", "sorted", "--overwrite", "-t", str(t),
             "--quiet"])
    sorted_bam, fixed_bam = d / "sorted.bam", d / "fixmate_sorted.bam"
    if not sorted_bam.exists():
        run([*PERSONA, "export", str(agd), str(sorted_bam), "-n", "sorted", "--no-secondary", "-t", str(t),
             "--quiet"])
    if not fixed_bam.exists():
        run(f"samtools sort -n -@{t} {inp['bam']} | samtools fixmate -m -@{t} - - | "
            f"samtools sort -@{t} -o {fixed_bam} -", shell=True)
    records = int(subprocess.run(["samtools", "view", "-c", str(sorted_bam)], capture_output=True, text=True,
                                 check=True).stdout)
    rows = []
    result: dict[str, object] = {"bench": "markdup", "records": records, "threads": t, "runs": runs,
                                 "quick": args.quick}

    ours_w, ours_m = timed_process([*PERSONA, "markdup", str(agd), "-n", "sorted", "-t", str(t), "--quiet",
                                    "-M", str(d / "ours_metrics.txt")], runs)
    rows.append(["persona markdup (sorted AGD)", ours_w, ours_m, 1.0])
    result.update(persona_s=round(ours_w, 3), persona_peak_mib=round(ours_m, 1))
    # the tail of align-sort-markdup: our sort then markdup, vs samtools' fixmate | sort | markdup
    persona = " ".join(PERSONA)
    tail_w, tail_m = timed_process(["sh", "-c", f"{persona} sort {agd} -n aligned --out-name tail --overwrite -t {t} "
                                                f"--quiet && {persona} markdup {agd} -n tail -t {t} --quiet"],
                                   1 if args.quick else runs)
    rows.append(["persona sort + markdup (unsorted AGD)", tail_w, tail_m, 1.0])
    result.update(persona_sort_markdup_s=round(tail_w, 3))
    # align-sort --markdup's tail proper: duplicates marked during the merge (one request)
    fused_w, fused_m = timed_process([*PERSONA, "sort", str(agd), "-n", "aligned", "--out-name", "fused",
                                      "--overwrite", "--markdup", "-t", str(t), "--quiet"], 1 if args.quick else runs)
    rows.append(["persona sort --markdup (unsorted AGD, in the merge)", fused_w, fused_m, 1.0])
    result.update(persona_sort_markdup_fused_s=round(fused_w, 3), persona_sort_markdup_fused_peak_mib=round(fused_m, 1))
    ours_bam = d / "ours_md.bam"
    run([*PERSONA, "export", str(agd), str(ours_bam), "-n", "sorted", "--no-secondary", "-t", str(t), "--quiet"])
    ours_flags = dup_flags(ours_bam)

    contenders = [
        ("samtools markdup (fixmate'd sorted BAM)", "samtools_markdup",
         ["samtools", "markdup", "-@", str(t), str(fixed_bam), str(d / "st_md.bam")], runs),
        ("samtools fixmate | sort | markdup", "samtools_chain",
         ["sh", "-c", f"samtools sort -n -@{t} {inp['bam']} | samtools fixmate -m -@{t} - - | samtools sort -@{t} - "
                      f"| samtools markdup -@{t} - {d / 'st_chain.bam'}"], 1 if args.quick else runs),
        ("Picard MarkDuplicates", "picard",
         ["PicardCommandLine", "MarkDuplicates", f"I={sorted_bam}", f"O={d / 'picard_md.bam'}",
          f"M={d / 'picard_metrics.txt'}", "VALIDATION_STRINGENCY=SILENT"], 1 if args.quick else runs),
    ]
    if shutil.which("sambamba"):
        contenders.append(("sambamba markdup", "sambamba",
                           ["sambamba", "markdup", "-t", str(t), str(sorted_bam), str(d / "sb_md.bam")], runs))
    if shutil.which("bamsormadup"):
        contenders.append(("bamsormadup", "bamsormadup",
                           ["sh", "-c", f"bamsormadup threads={t} < {inp['bam']} > {d / 'bsmd.bam'}"], runs))
    for label, key, cmd, n in contenders:
        if shutil.which(cmd[0]) is None:
            print(f"{label}: not installed", file=sys.stderr)
            continue
        w, m = timed_process(cmd, n)
        rows.append([label, w, m, w / ours_w])
        result[f"{key}_s"] = round(w, 3)
        result[f"{key}_peak_mib"] = round(m, 1)
        result[f"ratio_vs_{key}"] = round(w / ours_w, 3)
        if key == "samtools_chain":
            result["ratio_sort_markdup_vs_samtools_chain"] = round(w / tail_w, 3)
            result["ratio_sort_markdup_fused_vs_samtools_chain"] = round(w / fused_w, 3)
    picard_flags = dup_flags(d / "picard_md.bam") if (d / "picard_md.bam").exists() else []
    if picard_flags:
        same = sum(a == b for a, b in zip(ours_flags, picard_flags)) / max(1, len(ours_flags))
        result["agreement_with_picard"] = round(same, 6)
        result["picard_duplicates"] = sum(1 for f in picard_flags if f)
    result["persona_duplicates"] = sum(1 for f in ours_flags if f)
    print(f"{records} records, {t} threads, median of {runs} runs")
    print(table(["contender", "seconds", "peak MiB", "theirs/ours"], rows))
    emit_json(result)


if __name__ == "__main__":
    main()
