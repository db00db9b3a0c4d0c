"""The align application: pipeline, manifest, determinism, bad input, SAM validity."""
from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import fastq_head, require_tool
from persona.agd import Dataset, DatasetWriter, RaggedArray
from persona.align.reference import add_reference
from persona.apps.align import align_dataset, align_pipeline_spec
from persona.apps.import_fastq import import_fastq
from persona.errors import DatasetError, ReferenceNotFoundError, StageError

N_PAIRS = 2000
CHUNK_PAIRS = 300  # 7 chunks, the last one short


@pytest.fixture(scope="module")
def env(human, tmp_path_factory) -> dict[str, Path]:
    """A 2,000-pair human dataset (7 chunks) and a reference store with its slice reference."""
    tmp = tmp_path_factory.mktemp("align_app")
    r1 = fastq_head(human["r1"], tmp / "r1.fq", N_PAIRS)
    r2 = fastq_head(human["r2"], tmp / "r2.fq", N_PAIRS)
    import_fastq(r1, r2, out=tmp / "template", name="na12878", chunk_size=CHUNK_PAIRS)
    add_reference("chr20slice", human["ref"], tmp / "refs")
    return {"tmp": tmp, "template": tmp / "template", "refs": tmp / "refs", "r1": r1, "r2": r2}


def fresh(env: dict[str, Path], name: str) -> Path:
    dst = env["tmp"] / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(env["template"], dst)
    return dst


def results_bytes(location: Path) -> list[bytes]:
    ds = Dataset.open(location)
    return [ds.store.get(ds.chunk_key(i, c)) for i in range(len(ds.chunks)) for c in ds.columns
            if c == "results" or c.startswith("secondary")]


@pytest.mark.small_data
def test_align_updates_manifest(env) -> None:
    loc = fresh(env, "basic")
    m = align_dataset(loc, "chr20slice", references_url=env["refs"], work_item_reads=128)
    # tags: the kernel's optional SAM fields; secondary<N> (+ _tags) only where reads have supplementary hits
    assert m.columns[:5] == ["base", "qual", "metadata", "results", "tags"]
    assert all(c.startswith("secondary") for c in m.columns[5:])
    assert m.reference == "chr20slice"
    assert [(c.name, c.length, c.index) for c in m.reference_contigs] == [("chr20_9995001_11095000", 1_100_000, 0)]
    ds = Dataset.open(loc)
    assert ds.manifest == m and len(ds.chunks) == 7
    flags = [int(f) for i in range(len(ds.chunks)) for f in ds.read_column(i, "results").fields["flag"]]
    assert len(flags) == 2 * N_PAIRS
    assert all(f & 0x1 for f in flags) and sum(1 for f in flags if f & 0x40) == N_PAIRS
    assert sum(1 for f in flags if not f & 0x4) / len(flags) > 0.95
    assert sum(1 for f in flags if f & 0x2) / len(flags) > 0.9


@pytest.mark.small_data
def test_results_identical_whatever_threads_replicas_items_and_concurrency(env) -> None:
    base = fresh(env, "det0")
    align_dataset(base, "chr20slice", references_url=env["refs"], threads=1, work_item_reads=10_000,
                  replicas={"align": 1})
    expected = results_bytes(base)
    runs = [dict(threads=2, work_item_reads=7, replicas={"align": 3, "read": 2, "encode": 2, "write": 2}),
            dict(threads=3, work_item_reads=64)]
    for i, kw in enumerate(runs):
        loc = fresh(env, f"det{i + 1}")
        align_dataset(loc, "chr20slice", references_url=env["refs"], **kw)
        assert results_bytes(loc) == expected, kw
    # concurrent requests share one pool and one loaded index
    locs = [fresh(env, f"conc{i}") for i in range(3)]
    errors: list[BaseException] = []

    def run(loc: Path) -> None:
        try:
            align_dataset(loc, "chr20slice", references_url=env["refs"], threads=2, work_item_reads=50)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=run, args=(loc,)) for loc in locs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert all(results_bytes(loc) == expected for loc in locs)


@pytest.mark.small_data
def test_secondary_columns(env) -> None:
    loc = fresh(env, "sec")
    m = align_dataset(loc, "chr20slice", references_url=env["refs"], secondary=2)
    assert [c for c in m.columns if c.startswith("secondary")][:4] == [
        "secondary0", "secondary0_tags", "secondary1", "secondary1_tags"]
    ds = Dataset.open(loc)
    s0 = ds.read_column(0, "secondary0")
    assert len(s0) == ds.chunks[0].num_records
    # re-aligning without secondaries retracts the old secondary columns
    m2 = align_dataset(loc, "chr20slice", references_url=env["refs"])
    kept = [c for c in m2.columns if c.startswith("secondary")]  # supplementary alignments only
    assert len(kept) < len([c for c in m.columns if c.startswith("secondary")])
    for c in ds.columns:
        if c not in m2.columns:
            assert not list(loc.glob(f"*.{c}"))  # their files are gone too


@pytest.mark.small_data
def test_missing_reference_leaves_dataset_untouched(env) -> None:
    loc = fresh(env, "noref")
    before = Dataset.open(loc).manifest
    with pytest.raises(ReferenceNotFoundError, match="reference 'hg38' does not exist.*known: chr20slice"):
        align_dataset(loc, "hg38", references_url=env["refs"])
    assert Dataset.open(loc).manifest == before


@pytest.mark.small_data
def test_dataset_without_qual_is_refused(env, tmp_path: Path) -> None:
    w = DatasetWriter(tmp_path / "ds", "noqual", columns=["base", "metadata"])
    w.write_chunk(0, {"base": RaggedArray.from_list([b"ACGT"]), "metadata": RaggedArray.from_list([b"r"])})
    w.commit()
    with pytest.raises(DatasetError, match="no 'qual' column"):
        align_dataset(tmp_path / "ds", "chr20slice", references_url=env["refs"])


@pytest.mark.small_data
def test_corrupt_chunk_fails_request_names_chunk_and_cleans_up(env) -> None:
    loc = fresh(env, "corrupt")
    before = Dataset.open(loc).manifest
    victim = loc / f"{before.records[3].path}.base"
    victim.write_bytes(victim.read_bytes()[:70])
    with pytest.raises(StageError) as ei:
        align_dataset(loc, "chr20slice", references_url=env["refs"])
    # the manifest's checksum catches it as the chunk is read, before decoding
    assert f"{before.records[3].path}.base" in str(ei.value) and "stage=read" in str(ei.value)
    assert "checksum mismatch" in str(ei.value)
    assert Dataset.open(loc).manifest == before
    assert not list(loc.glob("*.results"))


@pytest.mark.small_data
def test_overwrite_false_and_bad_replicas(env) -> None:
    loc = fresh(env, "twice")
    align_dataset(loc, "chr20slice", references_url=env["refs"])
    with pytest.raises(DatasetError, match="already aligned"):
        align_dataset(loc, "chr20slice", references_url=env["refs"], overwrite=False)
    with pytest.raises(DatasetError, match="unknown align stage"):
        align_pipeline_spec({"sort": 2})


@pytest.mark.tools
@pytest.mark.small_data
def test_exported_bam_passes_picard_and_matches_flagstat(env) -> None:
    from persona.apps.export_sam import export_sam
    from persona.apps.stats import alignment_stats

    picard = require_tool("PicardCommandLine")
    samtools = require_tool("samtools")
    loc = fresh(env, "bam")
    align_dataset(loc, "chr20slice", references_url=env["refs"])
    bam = env["tmp"] / "out.bam"
    export_sam(loc, bam, fmt="bam", read_group={"PL": "ILLUMINA", "LB": "lib1"})
    v = subprocess.run([picard, "ValidateSamFile", f"I={bam}", "MODE=SUMMARY"],  # default mode: NM is there
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    fs = subprocess.run([samtools, "flagstat", "-O", "tsv", str(bam)], capture_output=True, text=True,
                        check=True).stdout
    rows = [line.split("\t") for line in fs.strip().splitlines()]
    got = {r[2]: int(r[0]) for r in rows if r[0].isdigit()}
    st = alignment_stats(str(loc))
    # flagstat's total and mapped count the supplementary records too; its primary lines are ours
    assert got["primary"] == st.total == 2 * N_PAIRS
    assert got["total (QC-passed reads + QC-failed reads)"] == st.total + st.secondary + st.supplementary
    assert got["primary mapped"] == st.mapped
    assert got["properly paired"] == st.properly_paired
    assert got["with itself and mate mapped"] == st.both_mapped
    assert got["singletons"] == st.singletons
    assert got["with mate mapped to a different chr"] == st.mate_other_contig


@pytest.mark.slow
@pytest.mark.tools
@pytest.mark.parametrize("which", ["yeast", "human"])
def test_full_set_validates_and_agrees_with_minimap2_binary(which: str, request, tmp_path: Path) -> None:
    """The issue's validation on the whole real sets: Picard, flagstat, and >= 99.9% identical primaries."""
    import numpy as np
    import pysam

    from persona.apps.export_sam import export_sam
    from persona.apps.stats import alignment_stats

    files = request.getfixturevalue(which)
    picard, samtools, mm2 = (require_tool(t) for t in ("PicardCommandLine", "samtools", "minimap2"))
    import_fastq(files["r1"], files["r2"], out=tmp_path / "ds", name=which, chunk_size=20_000)
    add_reference(which, files["ref"], tmp_path / "refs")
    align_dataset(tmp_path / "ds", which, references_url=tmp_path / "refs")
    bam = tmp_path / "out.bam"
    export_sam(tmp_path / "ds", bam, fmt="bam", read_group={"PL": "ILLUMINA", "LB": "lib1"})
    v = subprocess.run([picard, "ValidateSamFile", f"I={bam}", "MODE=SUMMARY"],  # default mode: NM is there
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    fs = subprocess.run([samtools, "flagstat", "-O", "tsv", str(bam)], capture_output=True, text=True,
                        check=True).stdout
    got = {r[2]: int(r[0]) for r in (line.split("\t") for line in fs.strip().splitlines()) if r[0].isdigit()}
    st = alignment_stats(str(tmp_path / "ds"))
    assert (got["primary mapped"], got["properly paired"], got["singletons"]) == (
        st.mapped, st.properly_paired, st.singletons)
    assert got["supplementary"] == st.supplementary
    sam = tmp_path / "bin.sam"
    with open(sam, "wb") as out:
        subprocess.run([mm2, "-a", "-x", "sr", "-t", "2", str(files["ref"]), str(files["r1"]), str(files["r2"])],
                       stdout=out, stderr=subprocess.DEVNULL, check=True)
    with pysam.AlignmentFile(str(sam)) as f:
        theirs = np.array([(r.reference_id, r.reference_start) for r in f
                           if not (r.is_secondary or r.is_supplementary)])
    ds = Dataset.open(tmp_path / "ds")
    ours = np.concatenate([ds.read_column(i, "results").fields[["ref_index", "position"]]
                           for i in range(len(ds.chunks))])
    same = (ours["ref_index"] == theirs[:, 0]) & (ours["position"] == theirs[:, 1])
    assert same.mean() >= 0.999, same.mean()
