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


def _bed(path: Path) -> Path:
    path.write_text("# intervals\ntrack name=t\nbrowser position MH356245.1:1-100\n"
                    "MH356245.1\t999\t1100\tname1\t0\t+\n"   # BED: 0-based, end exclusive, extra columns
                    "  MH356245.1 4000 4000\n"               # zero length: records strictly across 4000
                    "MH356245.1\t7000\n"                     # CHROM POS: one base, 1-based
                    "chrUn\t10\t500\n"                       # not in the reference: ignored, as samtools does
                    "\n"
                    "MH356245.1\t12000\t12300\n"
                    "MH356245.1\t12200\t12600\n")
    return path


@pytest.mark.parametrize("regions", [(), ("MH356245.1:1050-7000",),
                                     ("MH356245.1:3000-5000", "MH356245.1:11000-12100")])
def test_bed_equals_samtools(sorted_ds: tuple[Path, Path], tmp_path: Path, regions: tuple[str, ...]) -> None:
    """-L BED (with REGIONs: records overlapping a region and a BED interval) equals samtools view -L."""
    loc, full = sorted_ds
    bed = _bed(tmp_path / "r.bed")
    out = tmp_path / "b.bam"
    with Runtime(threads=2) as rt:
        s = rt.run(ExportRequest(dataset=str(loc), name="ds_sorted", output=str(out), regions=regions,
                                 regions_file=str(bed)))
    # without -M (samtools 1.16 cannot combine it with -L and regions); these regions are disjoint, so
    # samtools writes each record once, as we do
    theirs = subprocess.run(["samtools", "view", "-L", str(bed), str(full), *regions], check=True,
                            capture_output=True, text=True).stdout.splitlines()
    assert len(theirs) > 10 and _view(out) == theirs
    assert s.records == len(theirs)
    if not regions:  # the chunks read: those the intervals choose
        ds = Dataset.open(loc, "ds_sorted")
        sel, chosen = plan_regions(ds, [], str(bed))
        assert sel.bed is not None and len(sel.bed) == 5 and len(chosen) < len(ds.chunks) / 2


def test_bed_cli_and_errors(sorted_ds: tuple[Path, Path], tmp_path: Path) -> None:
    from persona.cli import main
    from persona.errors import ConfigError

    loc, full = sorted_ds
    bed = _bed(tmp_path / "r.bed")
    out = tmp_path / "c.bam"
    assert main(["export", str(loc), str(out), "-n", "ds_sorted", "-L", str(bed), "--quiet"]) == 0
    assert _view(out) == subprocess.run(["samtools", "view", "-L", str(bed), str(full)], check=True,
                                        capture_output=True, text=True).stdout.splitlines()
    ds = Dataset.open(loc, "ds_sorted")
    for text, why in (("MH356245.1\t500\t400\n", "line 1: the end \\(400\\) must not be less than the start"),
                      ("# ok\nMH356245.1\tten\t20\n", "line 2: expected CHROM BEG END"),
                      ("MH356245.1\t0\n", "line 1: the position must be >= 1")):
        (tmp_path / "bad.bed").write_text(text)
        with pytest.raises(ConfigError, match=f"bad.bed.*{why}"):
            plan_regions(ds, [], str(tmp_path / "bad.bed"))
    with pytest.raises(ConfigError, match="nothere.bed"):
        plan_regions(ds, [], str(tmp_path / "nothere.bed"))
