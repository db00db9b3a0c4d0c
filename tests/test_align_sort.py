"""persona align-sort: the fused pipeline gives exactly align then sort (every column, byte for byte,
and the same export); with --markdup exactly sort then markdup (flags and metrics)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, require_tool
from persona.agd import Dataset
from persona.align.reference import add_reference
from persona.apps.align import AlignRequest
from persona.apps.align_sort import AlignSortRequest, AlignSortSummary
from persona.apps.export import ExportRequest
from persona.apps.importer import ImportRequest
from persona.apps.markdup import MarkdupRequest, read_metrics
from persona.apps.sort import SortRequest
from persona.errors import PersonaError
from persona.runtime import Runtime

REF = FIXTURES / "measles" / "MH356245.1.fasta"


@pytest.fixture(scope="module")
def reads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Simulated pairs on measles (deep: many duplicates by position) with a registered reference."""
    wgsim = require_tool("wgsim")
    d = tmp_path_factory.mktemp("alignsort")
    r1, r2 = d / "r1.fq", d / "r2.fq"
    subprocess.run([wgsim, "-N", "2500", "-1", "120", "-2", "120", "-d", "300", "-S", "11", "-e", "0.002",
                    str(REF), str(r1), str(r2)], check=True, capture_output=True)
    for r in (r1, r2):  # PCR duplicates: copies of 300 pairs, half of them with lower qualities
        lines = r.read_text().splitlines()
        extra = []
        for k in range(300):
            name, seq, _, qual = lines[4 * k:4 * k + 4]
            extra += [name.replace("@", "@dup", 1), seq, "+", qual if k % 2 else "5" * len(qual)]
        r.write_text("\n".join(lines + extra) + "\n")
    add_reference("measles", REF, d / "refs")
    return {"r1": r1, "r2": r2, "refs": d / "refs", "dir": d}


def _import(reads: dict[str, Path], loc: Path) -> None:
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(reads["r1"]), str(reads["r2"])), output=str(loc), name="ds",
                             chunk_size=700, read_group={"ID": "g1", "SM": "s", "LB": "libA"}))


def _columns(loc: Path, name: str) -> dict[str, bytes]:
    ds = Dataset.open(loc, name)
    out = {}
    for c in ds.columns:
        parts = [ds.read_raw(i, c)[1] for i in range(len(ds.chunks))]
        out[c] = b"".join(p.lengths.astype(np.uint32).tobytes() for p in parts) + b"|" + \
            b"".join(bytes(p.data) for p in parts)
    return out


def _view(bam: Path) -> list[str]:
    return subprocess.run(["samtools", "view", str(bam)], check=True, capture_output=True, text=True).stdout.splitlines()


@pytest.mark.parametrize(("groups", "secondary"), [(2, 0), (100, 0), (1, 2)])  # runs / one group / secondaries
def test_align_sort_equals_align_then_sort(reads: dict[str, Path], tmp_path: Path, groups: int,
                                           secondary: int) -> None:
    require_tool("samtools")
    a, b = tmp_path / "a", tmp_path / "b"
    _import(reads, a)
    _import(reads, b)
    with Runtime(threads=2) as rt:
        rt.run(AlignRequest(dataset=str(a), reference="measles", references_url=str(reads["refs"]),
                            work_item_reads=500, secondary=secondary))
        rt.run(SortRequest(dataset=str(a), input_name="ds", group_chunks=groups, run_block=301))
        s = rt.run(AlignSortRequest(dataset=str(b), input_name="ds", reference="measles", secondary=secondary,
                                    references_url=str(reads["refs"]), work_item_reads=500, group_chunks=groups,
                                    run_block=301))
    assert isinstance(s, AlignSortSummary)
    assert s.records == 5_600 and s.runs == {2: 2, 100: 1, 1: 4}[groups]
    assert ("secondary1" in s.columns) == (secondary == 2)
    # the input is only read: no results column was written to it
    assert "results" not in Dataset.open(b, "ds").columns
    ca, cb = _columns(a, "ds_sorted"), _columns(b, "ds_sorted")
    assert sorted(ca) == sorted(cb)
    for c in ca:
        assert ca[c] == cb[c], c
    ma, mb = Dataset.open(a, "ds_sorted").manifest, Dataset.open(b, "ds_sorted").manifest
    assert mb.sort == "coordinate" and mb.reference == ma.reference == "measles"
    assert mb.extra["coordinate_ranges"] == ma.extra["coordinate_ranges"]
    assert mb.extra["read_group"]["LB"] == "libA"
    with Runtime(threads=2) as rt:
        rt.run(ExportRequest(dataset=str(a), name="ds_sorted", output=str(tmp_path / "a.bam")))
        rt.run(ExportRequest(dataset=str(b), name="ds_sorted", output=str(tmp_path / "b.bam")))
    va, vb = _view(tmp_path / "a.bam"), _view(tmp_path / "b.bam")
    assert len(va) >= 5_600 and va == vb


def test_align_sort_markdup_equals_sort_then_markdup(reads: dict[str, Path], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _import(reads, a)
    _import(reads, b)
    with Runtime(threads=2) as rt:
        rt.run(AlignRequest(dataset=str(a), reference="measles", references_url=str(reads["refs"])))
        rt.run(SortRequest(dataset=str(a), input_name="ds", group_chunks=2))
        md = rt.run(MarkdupRequest(dataset=str(a), name="ds_sorted", metrics=str(tmp_path / "a.txt")))
        s = rt.run(AlignSortRequest(dataset=str(b), input_name="ds", reference="measles", group_chunks=2,
                                    references_url=str(reads["refs"]), markdup=True,
                                    metrics=str(tmp_path / "b.txt")))
    assert md.duplicates > 100  # deep coverage: many pairs share both ends
    assert s.duplicates == md.duplicates
    fa = np.concatenate([Dataset.open(a, "ds_sorted").read_column(i, "results").fields["flag"]
                         for i in range(len(Dataset.open(a, "ds_sorted").chunks))])
    db = Dataset.open(b, "ds_sorted")
    fb = np.concatenate([db.read_column(i, "results").fields["flag"] for i in range(len(db.chunks))])
    assert np.array_equal(fa, fb)
    assert int(((fb & 0x400) != 0).sum()) == md.duplicates
    ra, rb = read_metrics(str(tmp_path / "a.txt")), read_metrics(str(tmp_path / "b.txt"))
    assert ra == rb and ra[0]["LIBRARY"] == "libA"
    assert db.manifest.provenance[-1]["app"] == "align-sort" and db.manifest.provenance[-1]["duplicates"] == s.duplicates
    db.verify() if hasattr(db, "verify") else None


def test_align_sort_errors(reads: dict[str, Path], tmp_path: Path) -> None:
    loc = tmp_path / "a"
    _import(reads, loc)
    with Runtime(threads=2) as rt:
        with pytest.raises(PersonaError, match="reference"):
            rt.run(AlignSortRequest(dataset=str(loc), input_name="ds"))
        with pytest.raises(PersonaError, match="nope"):
            rt.run(AlignSortRequest(dataset=str(loc), input_name="ds", reference="nope",
                                    references_url=str(reads["refs"])))
    # nothing left behind by the failed request: no output dataset, no runs
    leftovers = [p.name for p in loc.iterdir() if "sorted" in p.name or p.name.endswith(".sortrun")]
    assert leftovers == []


def test_align_sort_cli(reads: dict[str, Path], tmp_path: Path) -> None:
    from persona.cli import main

    loc = tmp_path / "a"
    _import(reads, loc)
    out = tmp_path / "out"
    assert main(["align-sort", str(loc), "-r", "measles", "--store", str(reads["refs"]), "-o", str(out),
                 "--markdup", "-M", str(tmp_path / "m.txt"), "--quiet"]) == 0
    ds = Dataset.open(out, "ds")
    assert ds.manifest.sort == "coordinate" and ds.num_records == 5_600
    assert read_metrics(str(tmp_path / "m.txt"))[0]["LIBRARY"] == "libA"


def test_failure_leaves_nothing(reads: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the merge (here: while deciding duplicates at the commit) removes the runs and the
    output's chunk files; the input is untouched."""
    from persona.apps import markdup as md_mod

    loc = tmp_path / "a"
    _import(reads, loc)
    before = sorted(p.name for p in loc.iterdir())

    def boom(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("decider on fire")

    monkeypatch.setattr(md_mod.MergeMarker, "finish", boom)
    with Runtime(threads=2) as rt:
        with pytest.raises(Exception, match="decider on fire"):
            rt.run(AlignSortRequest(dataset=str(loc), input_name="ds", reference="measles", group_chunks=1,
                                    references_url=str(reads["refs"]), markdup=True))
    assert sorted(p.name for p in loc.iterdir()) == before
