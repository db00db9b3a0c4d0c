"""Helpers shared by the benchmarks: timing with medians, tables, the JSON last line,
real data locations and simulated reads cached in ``bench/out/`` (git-ignored).
"""
from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# `persona bench` passes its input cache (default ~/.cache/persona/bench); run alone, bench/out/
OUT = Path(os.environ["PERSONA_BENCH_CACHE"]) if os.environ.get("PERSONA_BENCH_CACHE") else BENCH / "out"


def shared_data() -> Path:
    """The real test data (``PERSONA_TEST_DATA`` or ``../shared/data`` beside the repo)."""
    env = os.environ.get("PERSONA_TEST_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    sys.exit("test data not found: set PERSONA_TEST_DATA to shared/data")


def real_sets() -> dict[str, dict[str, Path]]:
    d = shared_data()
    return {
        "yeast": {
            "r1": d / "yeast_SRR5204809/SRR5204809_R1.fastq.gz",
            "r2": d / "yeast_SRR5204809/SRR5204809_R2.fastq.gz",
            "ref": d / "yeast_SRR5204809/sacCer3.fa.gz",
        },
        "human": {
            "r1": d / "human_NA12878_chr20/NA12878_S1.chr20.10_10p1mb_R1.fastq.gz",
            "r2": d / "human_NA12878_chr20/NA12878_S1.chr20.10_10p1mb_R2.fastq.gz",
            "bam": d / "human_NA12878_chr20/NA12878_S1.chr20.10_10p1mb.bam",
        },
        "measles": {
            "r1": d / "measles_SRR7517498/SRR7517498_R1.fastq.gz",
            "r2": d / "measles_SRR7517498/SRR7517498_R2.fastq.gz",
        },
    }


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"{tool} is not installed; run deploy/setup.sh")
    return path


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn: Callable[[], Any], runs: int, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of ``runs`` calls (``setup`` runs untimed before each)."""
    return median_wall_cpu(fn, runs, setup)[0]


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its waited-for children so far."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def median_wall_cpu(fn: Callable[[], Any], runs: int,
                    setup: Callable[[], Any] | None = None) -> tuple[float, float]:
    """Median wall time and median CPU time (all threads and child processes) of
    ``runs`` calls. CPU / wall shows how many cores a contender really got, which
    matters on a shared machine."""
    walls, cpus = [], []
    for _ in range(runs):
        if setup is not None:
            setup()
        c0, t0 = _cpu_seconds(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_seconds() - c0)
    return statistics.median(walls), statistics.median(cpus)


def run(cmd: Sequence[str] | str, *, stdout: Any = subprocess.DEVNULL, shell: bool = False) -> None:
    subprocess.run(cmd, check=True, stdout=stdout, stderr=subprocess.PIPE, shell=shell)


def gunzipped_size(path: Path) -> int:
    """Uncompressed size of a gzip file (streamed; the ISIZE trailer is only mod 2^32 and per member)."""
    n = 0
    with gzip.open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += len(block)
    return n


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def emit_json(obj: dict[str, Any]) -> None:
    """The benchmark's machine-readable result: always the LAST line of output."""
    print(json.dumps(obj, sort_keys=True), flush=True)


def simulated_pairs(pairs: int = 2_000_000, read_len: int = 100, seed: int = 7) -> dict[str, Path]:
    """``pairs`` simulated read pairs (art_illumina, HiSeq 2500 profile) of sacCer3, gzip'ed.

    Cached in ``bench/out/sim_<pairs>/``; made once (a few minutes). art_illumina gives
    realistic per-position quality profiles, which matter for compression figures
    (wgsim's constant qualities would flatter every compressor). art draws a coverage,
    not a count, so the files hold about -- not exactly -- ``pairs`` pairs.
    """
    d = OUT / f"sim_{pairs}"
    r1, r2 = d / "sim_R1.fastq.gz", d / "sim_R2.fastq.gz"
    if r1.exists() and r2.exists():
        return {"r1": r1, "r2": r2}
    require("art_illumina")
    d.mkdir(parents=True, exist_ok=True)
    ref = d / "sacCer3.fa"
    with gzip.open(real_sets()["yeast"]["ref"], "rb") as src, open(ref, "wb") as dst:
        shutil.copyfileobj(src, dst)
    genome = sum(len(line.strip()) for line in open(ref, "rb") if not line.startswith(b">"))
    coverage = pairs * 2 * read_len / genome
    print(f"simulating ~{pairs} pairs ({coverage:.1f}x of sacCer3) with art_illumina into {d} ...",
          file=sys.stderr, flush=True)
    run(["art_illumina", "-ss", "HS25", "-i", str(ref), "-p", "-l", str(read_len), "-f", f"{coverage:.3f}",
         "-m", "300", "-s", "30", "-rs", str(seed), "-na", "-q", "-o", str(d / "sim_")])
    for mate, final in (("1", r1), ("2", r2)):
        tmp = final.with_suffix(".tmp")
        run(f"gzip -6 -c {d / ('sim_' + mate + '.fq')} > {tmp}", shell=True)
        tmp.rename(final)
        (d / f"sim_{mate}.fq").unlink()
    ref.unlink()
    return {"r1": r1, "r2": r2}


if __name__ == "__main__":  # ``python bench/_common.py`` pre-builds the simulated set
    print(simulated_pairs())
