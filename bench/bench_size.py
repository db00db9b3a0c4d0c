"""Dataset size of FASTQ imports: AGD (per column) vs the FASTQ.gz inputs vs BAM.

For each input set the reads are imported with ``import_fastq`` at several
compression settings, and compared with the FASTQ.gz files and with an
unaligned BAM of the same reads (``samtools import -1 R1 -2 R2``, default BGZF
level); for the human set also with the provided aligned BAM (which carries
alignments and tags too). Goals at the default setting: AGD <= 0.9 x BAM and
<= 1.0 x FASTQ.gz. The last line is one JSON object.

    python bench/bench_size.py            # yeast, human, measles, 2M simulated pairs
    python bench/bench_size.py --quick    # the three real sets, fewer variants (< 1 min)
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, emit_json, real_sets, require, run, simulated_pairs, table

from persona.apps.import_fastq import import_fastq

COLUMNS = ("base", "qual", "metadata")

# name -> (compression, level). "default" is import_fastq's per-column zstd
# settings (IMPORT_ZSTD_LEVELS); "zstd-N" is level N for every column (3 is the
# AGD codec's default); "qual19" is the defaults with level 19 for qualities.
VARIANTS: dict[str, tuple[str, Any]] = {
    "default": ("zstd", None),
    "zstd-3": ("zstd", 3),
    "zstd-1": ("zstd", 1),
    "zstd-9": ("zstd", 9),
    "qual19": ("zstd", {"qual": 19}),
    "gzip": ("gzip", None),
}
QUICK_VARIANTS = ("default", "zstd-3", "gzip")
SLOW_VARIANTS = ("qual19",)  # minutes on large sets: only run on the small real ones


def column_sizes(store: Path) -> dict[str, int]:
    sizes = dict.fromkeys(COLUMNS, 0)
    for f in store.iterdir():
        col = f.name.rsplit(".", 1)[-1]
        if col in sizes:
            sizes[col] += f.stat().st_size
    sizes["manifest"] = sum(f.stat().st_size for f in store.glob("*_metadata.json"))
    return sizes


def unaligned_bam(label: str, r1: Path, r2: Path) -> Path:
    """``samtools import`` of the pair, cached in bench/out."""
    bam = OUT / "size" / f"{label}.unaligned.bam"
    if not bam.exists():
        require("samtools")
        bam.parent.mkdir(parents=True, exist_ok=True)
        tmp = bam.with_suffix(".tmp.bam")
        run(["samtools", "import", "-1", str(r1), "-2", str(r2), "-o", str(tmp)])
        tmp.rename(bam)
    return bam


def measure(label: str, paths: dict[str, Path], variants: list[str]) -> dict[str, Any]:
    r1, r2 = paths["r1"], paths["r2"]
    fastq_gz = r1.stat().st_size + r2.stat().st_size
    bam = unaligned_bam(label, r1, r2).stat().st_size
    result: dict[str, Any] = {"fastq_gz": fastq_gz, "bam_unaligned": bam, "variants": {}}
    if "bam" in paths:
        result["bam_aligned"] = paths["bam"].stat().st_size
    for v in variants:
        compression, level = VARIANTS[v]
        store = OUT / "size" / f"{label}_{v}"
        shutil.rmtree(store, ignore_errors=True)
        import_fastq(r1, r2, out=store, compression=compression, level=level)
        sizes = column_sizes(store)
        total = sum(sizes.values())
        shutil.rmtree(store)
        result["variants"][v] = {
            **sizes,
            "total": total,
            "vs_bam": round(total / bam, 3),
            "vs_fastq_gz": round(total / fastq_gz, 3),
            **({"vs_aligned_bam": round(total / result["bam_aligned"], 3)} if "bam_aligned" in result else {}),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="real sets only, fewer variants")
    args = ap.parse_args()
    sets: dict[str, dict[str, Path]] = dict(real_sets())
    if not args.quick:
        sets["sim2M"] = simulated_pairs()
    results = {}
    for label, paths in sets.items():
        variants = list(QUICK_VARIANTS if args.quick else VARIANTS)
        if label.startswith("sim"):
            variants = [v for v in variants if v not in SLOW_VARIANTS]
        print(f"[{label}] {', '.join(variants)} ...", file=sys.stderr, flush=True)
        results[label] = measure(label, paths, variants)
    rows = []
    for label, r in results.items():
        for v, s in r["variants"].items():
            rows.append([label, v, s["base"], s["qual"], s["metadata"], s["total"], r["fastq_gz"],
                         r["bam_unaligned"], s["vs_bam"], s["vs_fastq_gz"], s.get("vs_aligned_bam", "")])
    print(table(["set", "variant", "base B", "qual B", "metadata B", "AGD B", "FASTQ.gz B", "BAM B",
                 "AGD/BAM", "AGD/FASTQ.gz", "AGD/aligned BAM"], rows))
    print("goals at default: AGD/BAM <= 0.9, AGD/FASTQ.gz <= 1.0")
    default = {k: r["variants"]["default"] for k, r in results.items()}
    emit_json({
        "bench": "size",
        "sets": results,
        "max_vs_bam": max(d["vs_bam"] for d in default.values()),
        "max_vs_fastq_gz": max(d["vs_fastq_gz"] for d in default.values()),
        "goal_vs_bam": 0.9,
        "goal_vs_fastq_gz": 1.0,
    })


if __name__ == "__main__":
    main()
