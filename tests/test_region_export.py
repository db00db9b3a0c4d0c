"""persona export DS out.bam REGION...: exactly the records samtools view gives for the same regions on
an indexed BAM of the whole dataset, reading only the chunks that overlap; clear errors."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import require_tool
from persona.agd import Dataset
from persona.apps.export import ExportRequest
from persona.apps.importer import ImportRequest
from persona.apps.region import plan_regions
from persona.apps.sort import SortRequest
from persona.errors import PersonaError
from persona.runtime import Runtime

from test_sort import aligned_sam  # noqa: F401  (the session fixture: simulated pairs aligned on measles)


@pytest.fixture(scope="module")
def sorted_ds(aligned_sam: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # noqa: F811
    require_tool("samtools")
    tmp_path = tmp_path_factory.mktemp("region")
    loc = tmp_path / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(aligned_sam),), output=str(loc), name="ds", chunk_size=250))
        rt.run(SortRequest(dataset=str(loc), input_name="ds", group_chunks=4))
        rt.run(ExportRequest(dataset=str(loc), name="ds_sorted", output=str(tmp_path / "all.bam")))
    assert (tmp_path / "all.bam.bai").exists()
    return loc, tmp_path / "all.bam"


def _view(bam: Path, *regions: str, multi: bool = False) -> list[str]:
    cmd = ["samtools", "view", *(["-M"] if multi else []), str(bam), *regions]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()


@pytest.mark.parametrize("regions", [
    ("MH356245.1:1000-2000",),   # reads spanning the start (position before 1000) are in
    ("MH356245.1:200-200",),
    ("MH356245.1:15800",),       # to the contig's end (with the unmapped reads placed at their mates)
    ("MH356245.1",),             # the whole contig
    ("MH356245.1:3,000-3,100", "MH356245.1:9000-9500"),
    ("MH356245.1:5000-6000", "MH356245.1:5500-7000"),  # overlapping: each record once, as view -M
])
def test_region_equals_samtools(sorted_ds: tuple[Path, Path], tmp_path: Path, regions: tuple[str, ...]) -> None:
    loc, full = sorted_ds
    out = tmp_path / "r.bam"
    with Runtime(threads=2) as rt:
        s = rt.run(ExportRequest(dataset=str(loc), name="ds_sorted", output=str(out), regions=regions))
    theirs = _view(full, *regions, multi=len(regions) > 1)
    assert theirs and _view(out) == theirs
    assert s.records == len(theirs)


def test_reads_only_overlapping_chunks(sorted_ds: tuple[Path, Path]) -> None:
    loc, full = sorted_ds
    ds = Dataset.open(loc, "ds_sorted")
    ranges = ds.manifest.extra["coordinate_ranges"]
    assert len(ranges) == len(ds.chunks) > 20
    _, chosen = plan_regions(ds, ["MH356245.1:1000-1100"])
    assert 1 <= len(chosen) <= 3
    # a read spanning the region start lies in a chunk whose positions start before it
    first = ranges[chosen[0]]
    assert first[1] < 999
    assert len(_view(full, "MH356245.1:1000-1100")) > 0


def test_region_cli_and_errors(sorted_ds: tuple[Path, Path], tmp_path: Path) -> None:
    from persona.cli import main

    loc, full = sorted_ds
    out = tmp_path / "c.bam"
    assert main(["export", str(loc), str(out), "MH356245.1:2000-2100", "-n", "ds_sorted", "--quiet"]) == 0
    assert _view(out) == _view(full, "MH356245.1:2000-2100")
    # options before the regions, several regions
    assert main(["export", str(loc), str(out), "-n", "ds_sorted", "--quiet", "MH356245.1:2000-2100",
                 "MH356245.1:4000-4100"]) == 0
    assert _view(out) == _view(full, "MH356245.1:2000-2100", "MH356245.1:4000-4100", multi=True)
    with Runtime(threads=2) as rt:
        with pytest.raises(PersonaError, match="no contig 'chrX'.*MH356245.1"):
            rt.run(ExportRequest(dataset=str(loc), name="ds_sorted", output=str(tmp_path / "x.bam"),
                                 regions=("chrX:1-100",)))
        with pytest.raises(PersonaError, match="start must be"):
            rt.run(ExportRequest(dataset=str(loc), name="ds_sorted", output=str(tmp_path / "x.bam"),
                                 regions=("MH356245.1:200-100",)))
        with pytest.raises(PersonaError, match="not sorted by coordinate"):
            rt.run(ExportRequest(dataset=str(loc), name="ds", output=str(tmp_path / "x.bam"),
                                 regions=("MH356245.1:1-100",)))
    assert not (tmp_path / "x.bam").exists()
