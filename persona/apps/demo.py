"""The embedded default job: the whole chain on the bundled sample, local files, one process.

import FASTQ pair -> index the reference -> align-sort --markdup (align, sort by coordinate and mark
duplicates in one request: thesis §5.7's fused pipeline, duplicates marked during the merge) ->
export an indexed BAM -> summary.
Each step calls the same library function as its CLI command, so the demo is
also a smoke test of a fresh installation.
"""
from __future__ import annotations

import tempfile
import time
from importlib import resources
from pathlib import Path


def sample_files() -> dict[str, Path]:
    """Paths of the bundled sample (installed as package data)."""
    root = Path(str(resources.files("persona") / "data"))
    files = {
        "r1": root / "sample_R1.fastq.gz",
        "r2": root / "sample_R2.fastq.gz",
        "reference": root / "sample_reference.fasta",
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"bundled sample missing (broken install?): {', '.join(missing)}")
    return files


def run_demo(workdir: str | None = None, *, out=print, runtime=None) -> int:
    from persona.align.reference import add_reference
    from persona.apps.align_sort import AlignSortRequest
    from persona.apps.export_sam import export_sam
    from persona.apps.import_fastq import import_fastq
    from persona.apps.info import dataset_info
    from persona.apps.stats import alignment_stats
    from persona.runtime import default_runtime

    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="persona-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    files = sample_files()
    dataset = str(base / "dataset")
    refs = str(base / "references")
    bam = str(base / "sample.bam")
    timings: list[tuple[str, float]] = []

    def step(label: str, fn, *a, **kw):
        t0 = time.perf_counter()
        result = fn(*a, **kw)
        timings.append((label, time.perf_counter() - t0))
        return result

    out(f"persona demo: working in {base}")
    step("import", import_fastq, files["r1"], files["r2"], out=dataset, name="sample", chunk_size=1000,
         runtime=runtime)
    step("reference", add_reference, "measles", files["reference"], store_url=refs)
    rt = runtime or default_runtime()
    sorted_ds = str(base / "sorted")
    step("align-sort", rt.run, AlignSortRequest(dataset=dataset, output=sorted_ds, reference="measles",
                                                references_url=refs, markdup=True,
                                                metrics=str(base / "duplicate_metrics.txt")))
    # primary records only, so the BAM is coordinate-sorted and gets its .bai
    step("export", export_sam, sorted_ds, bam, fmt="bam", read_group={"PL": "ILLUMINA"}, runtime=runtime,
         secondary=False)
    info = dataset_info(sorted_ds)
    stats = alignment_stats(sorted_ds, runtime=runtime)

    out("")
    out(f"{'step':<10} {'seconds':>8}")
    for label, secs in timings:
        out(f"{label:<10} {secs:>8.2f}")
    out(f"{'total':<10} {sum(s for _, s in timings):>8.2f}")
    out("")
    out(f"reads            {stats.total:,} ({info['chunks']} chunks, {info['bytes_total']:,} bytes AGD)")
    out(f"mapped           {stats.mapped:,} ({stats.pct(stats.mapped, stats.total):.2f}%)")
    out(f"properly paired  {stats.properly_paired:,} ({stats.pct(stats.properly_paired, stats.paired):.2f}%)")
    out(f"duplicates       {stats.duplicates:,} ({stats.pct(stats.duplicates, stats.total):.2f}%)")
    out(f"BAM              {bam} (coordinate-sorted, indexed)")
    return 0
