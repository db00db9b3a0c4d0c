"""persona sort: coordinate and queryname order against samtools and Picard, every column carried,
runs removed, the manifest's sort and provenance."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, require_tool
from persona.agd import Dataset
from persona.agd.ragged import RaggedArray
from persona.apps.export_sam import export_sam
from persona.apps.importer import ImportRequest
from persona.apps.sort import SortRequest, SortSummary
from persona.errors import PersonaError
from persona.runtime import Runtime

REF = FIXTURES / "measles" / "MH356245.1.fasta"


def _fastq(path: Path, reads: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"@{n}\n{s}\n+\n{'I' * len(s)}\n" for n, s in reads))


@pytest.fixture(scope="session")
def aligned_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """minimap2-aligned simulated pairs on measles (many ties), plus unmapped pairs and pairs with
    one unmapped mate (placed at its mate)."""
    wgsim, mm2 = require_tool("wgsim"), require_tool("minimap2")
    d = tmp_path_factory.mktemp("sortdata")
    r1, r2 = d / "r1.fq", d / "r2.fq"
    subprocess.run([wgsim, "-N", "3000", "-1", "150", "-2", "150", "-S", "7", "-e", "0.002", "-r", "0.001",
                    str(REF), str(r1), str(r2)], check=True, capture_output=True)
    rng = random.Random(3)
    ref = "".join(REF.read_text().split("\n")[1:])
    rnd = lambda: "".join(rng.choice("ACGT") for _ in range(150))  # noqa: E731
    extra1, extra2 = [], []
    for i in range(60):
        extra1.append((f"rand{i}", rnd() if i < 30 else ref[i * 100:i * 100 + 150]))
        extra2.append((f"rand{i}", rnd()))
    with r1.open("a") as f:
        f.write("".join(f"@{n}\n{s}\n+\n{'I' * len(s)}\n" for n, s in extra1))
    with r2.open("a") as f:
        f.write("".join(f"@{n}\n{s}\n+\n{'I' * len(s)}\n" for n, s in extra2))
    sam = d / "aln.sam"
    with sam.open("w") as out:
        subprocess.run([mm2, "-ax", "sr", "--secondary=no", str(REF), str(r1), str(r2)], check=True, stdout=out,
                       stderr=subprocess.DEVNULL)
    return sam


@pytest.fixture()
def dataset(aligned_sam: Path, tmp_path: Path) -> Path:
    loc = tmp_path / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(aligned_sam),), output=str(loc), name="ds", chunk_size=500))
    return loc


def _sort(loc: Path, **kw: object) -> SortSummary:
    with Runtime(threads=2) as rt:
        s = rt.run(SortRequest(dataset=str(loc), input_name="ds", group_chunks=3, run_block=97, **kw))
    assert isinstance(s, SortSummary)
    return s


def _sam_fields(bam: Path, cols: str) -> list[str]:
    out = subprocess.run(["samtools", "view", str(bam)], check=True, capture_output=True, text=True).stdout
    idx = [int(c) - 1 for c in cols.split(",")]
    return ["\t".join(line.split("\t")[i] for i in idx) for line in out.splitlines()]


def test_coordinate_equals_samtools_sort(dataset: Path, tmp_path: Path) -> None:
    require_tool("samtools")
    s = _sort(dataset)
    assert s.runs == 5 and s.records == 6120 and s.name == "ds_sorted"
    export_sam(dataset, tmp_path / "orig.bam", name="ds")
    e = export_sam(dataset, tmp_path / "ours.bam", name="ds_sorted")
    assert e.sort_order == "coordinate"
    subprocess.run(["samtools", "sort", "-o", str(tmp_path / "theirs.bam"), str(tmp_path / "orig.bam")], check=True,
                   capture_output=True)
    ours, theirs = _sam_fields(tmp_path / "ours.bam", "3,4"), _sam_fields(tmp_path / "theirs.bam", "3,4")
    assert ours == theirs
    # the tie-breaks too (strand, then input order): the same records in the same order
    assert _sam_fields(tmp_path / "ours.bam", "1,2,3,4,6") == _sam_fields(tmp_path / "theirs.bam", "1,2,3,4,6")
    # unmapped reads with a mapped mate sit at their mate; fully unmapped ones come last
    flags_ref = _sam_fields(tmp_path / "ours.bam", "2,3")
    tail = [f for f in flags_ref if f.endswith("\t*")]
    assert tail and flags_ref[-len(tail):] == tail
    # the whole records are the same multiset
    assert sorted(_sam_fields(tmp_path / "ours.bam", "1,2,3,4,5,6,7,8,9,10,11")) == \
        sorted(_sam_fields(tmp_path / "orig.bam", "1,2,3,4,5,6,7,8,9,10,11"))


def test_manifest_provenance_and_no_runs_left(dataset: Path) -> None:
    _sort(dataset)
    ds = Dataset.open(dataset, "ds_sorted")
    src = Dataset.open(dataset, "ds")
    assert ds.manifest.sort == "coordinate"
    assert ds.manifest.provenance[-1]["app"] == "sort"
    assert ds.manifest.provenance[-1]["parameters"]["order"] == "coordinate"
    assert ds.manifest.reference_contigs == src.manifest.reference_contigs
    assert [c.num_records for c in ds.chunks] == [c.num_records for c in src.chunks]
    assert not [p for p in dataset.iterdir() if "sortrun" in p.name]


def test_validate_sam_file(dataset: Path, tmp_path: Path) -> None:
    picard = require_tool("PicardCommandLine")
    _sort(dataset)
    bam = tmp_path / "ours.bam"
    export_sam(dataset, bam, name="ds_sorted")
    r = subprocess.run([picard, "ValidateSamFile", f"I={bam}", "MODE=SUMMARY", "IGNORE_WARNINGS=true"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No errors found" in r.stdout + r.stderr


def test_queryname(dataset: Path, tmp_path: Path) -> None:
    s = _sort(dataset, order="queryname", name="qs")
    assert s.order == "queryname"
    e = export_sam(dataset, tmp_path / "q.bam", name="qs")
    assert e.sort_order == "queryname"
    recs = _sam_fields(tmp_path / "q.bam", "1,2")
    keys = [(r.split("\t")[0].encode(), 0 if int(r.split("\t")[1]) & 0x40 else 1) for r in recs]
    assert keys == sorted(keys)
    assert len(recs) == 6120
    picard = require_tool("PicardCommandLine")
    r = subprocess.run([picard, "ValidateSamFile", f"I={tmp_path / 'q.bam'}", "MODE=SUMMARY",
                        "IGNORE_WARNINGS=true"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_column_carried(dataset: Path) -> None:
    """An opaque column (and any other) moves with its read."""
    ds = Dataset.open(dataset, "ds")
    for i, _ in enumerate(ds.chunks):
        names = ds.read_column(i, "metadata")
        ds.write_column_chunk(i, "prot", RaggedArray.from_list([b"x" + n for n in names.tolist()]))
    ds.commit_columns(["prot"])
    _sort(dataset)
    out = Dataset.open(dataset, "ds_sorted")
    assert "prot" in out.columns
    for i, _ in enumerate(out.chunks):
        c = out.read_chunk(i, ["metadata", "prot", "base", "qual"])
        assert [b"x" + n for n in c["metadata"].tolist()] == c["prot"].tolist()
        assert np.array_equal(c["base"].lengths, c["qual"].lengths)


def test_failure_removes_runs_and_output(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from persona.apps import sort as sort_mod

    calls = {"n": 0}
    orig = sort_mod.SortJob.stage_write

    def failing(self, w):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return orig(self, w)

    monkeypatch.setattr(sort_mod.SortJob, "stage_write", failing)
    with pytest.raises(Exception, match="disk on fire"):
        _sort(dataset)
    assert not [p for p in dataset.iterdir() if "sortrun" in p.name or p.name.startswith("ds_sorted")]


def test_refusals(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(PersonaError, match="into itself"):
        _sort(dataset, name="ds")
    with pytest.raises(PersonaError, match="order"):
        _sort(dataset, order="random")
    _fastq(tmp_path / "u.fq", [("a", "ACGT"), ("b", "ACGA")])
    with Runtime(threads=1) as rt:
        rt.run(ImportRequest(inputs=(str(tmp_path / "u.fq"),), output=str(tmp_path / "u"), name="u"))
        with pytest.raises(PersonaError, match="not aligned"):
            rt.run(SortRequest(dataset=str(tmp_path / "u")))
        s = rt.run(SortRequest(dataset=str(tmp_path / "u"), order="queryname"))
    assert s.records == 2


def test_sort_cli(dataset: Path, tmp_path: Path) -> None:
    from persona.cli import main

    assert main(["sort", str(dataset), "-n", "ds", "-o", str(tmp_path / "out"), "--order", "queryname",
                 "--quiet"]) == 0
    ds = Dataset.open(tmp_path / "out")
    assert ds.name == "ds" and ds.manifest.sort == "queryname" and ds.num_records == 6120


def test_one_group_equals_many_runs(dataset: Path) -> None:
    """A dataset of one group is sorted in memory without runs: the same output as a multi-run merge."""
    with Runtime(threads=2) as rt:
        a = rt.run(SortRequest(dataset=str(dataset), input_name="ds", name="one", group_chunks=100))
        b = rt.run(SortRequest(dataset=str(dataset), input_name="ds", name="many", group_chunks=2, run_block=50))
    assert a.runs == 1 and b.runs == 7
    one, many = Dataset.open(dataset, "one"), Dataset.open(dataset, "many")
    assert [c.num_records for c in one.chunks] == [c.num_records for c in many.chunks]
    for i, _ in enumerate(one.chunks):
        for c in one.columns:
            assert one.read_column(i, c) == many.read_column(i, c)


def test_crashed_runs_removed_by_next_writer(dataset: Path) -> None:
    """Runs are keyed like an attempt's chunk files: a dead sort's leftovers go with the next writer."""
    leftover = dataset / "ds_sorted_0000000000~0123456789ab.sortrun"
    leftover.write_bytes(b"run of a crashed sort")
    _sort(dataset)
    assert not leftover.exists()
    assert Dataset.open(dataset, "ds_sorted").num_records == 6120


def test_ranged_run_reads_on_an_object_store(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs on a memory:// store (an object store: zstd runs), each block read back in several ranged
    reads: the same sorted records as on the local disk."""
    from persona.apps import sort as sort_mod

    _sort(dataset)
    monkeypatch.setattr(sort_mod, "READ_PART", 4096)
    calls = {"n": 0}
    from persona.storage.memory import MemoryStore

    orig = MemoryStore.get_range

    def counting(self, key, start, length=None):  # type: ignore[no-untyped-def]
        if key.endswith(".sortrun"):
            calls["n"] += 1
        return orig(self, key, start, length)

    monkeypatch.setattr(MemoryStore, "get_range", counting)
    with Runtime(threads=2) as rt:
        rt.run(SortRequest(dataset=str(dataset), input_name="ds", output="memory://sorted-ranged", name="m",
                           group_chunks=3, run_block=300))
        mem = Dataset.open(rt.store("memory://sorted-ranged"), "m")
        disk = Dataset.open(dataset, "ds_sorted")
        assert calls["n"] > 20
        assert mem.num_records == disk.num_records
        for c in disk.columns:
            a = RaggedArray.concat([disk.read_raw(i, c)[1] for i in range(len(disk.chunks))])
            b = RaggedArray.concat([mem.read_raw(i, c)[1] for i in range(len(mem.chunks))])
            assert a == b, c
        assert not [k for k in rt.store("memory://sorted-ranged").list() if k.endswith(".sortrun")]
