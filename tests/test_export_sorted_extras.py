"""A coordinate-sorted export with supplementary (and secondary) alignments: every record at its own
coordinate, ``@HD SO:coordinate``, indexable, Picard-valid, the same records as the unsorted export,
and the same output whether the extras stay in memory or spill to temporary runs."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, require_tool
from persona.agd.records import Alignments
from persona.align.reference import add_reference
from persona.apps import export_sorted
from persona.apps.align import align_dataset
from persona.apps.export_sam import export_sam
from persona.apps.export_sorted import SortedExtras
from persona.apps.importer import ImportRequest
from persona.apps.sort import SortRequest
from persona.runtime import Runtime

REF = FIXTURES / "measles" / "MH356245.1.fasta"
COMP = str.maketrans("ACGT", "TGCA")


def _rc(s: str) -> str:
    return s.translate(COMP)[::-1]


@pytest.fixture(scope="module")
def sorted_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reads simulated on measles, half reverse-complemented; one in five is a chimera of two
    distant pieces (minimap2 gives it a supplementary alignment); aligned with 2 secondaries kept,
    then coordinate-sorted."""
    d = tmp_path_factory.mktemp("sortedextras")
    ref = "".join(REF.read_text().split("\n")[1:])
    rng = random.Random(11)
    reads = []
    for i in range(1500):
        start = rng.randrange(0, len(ref) - 200)
        a = ref[start:start + 150]
        if i % 5 == 0:  # chimera: the second half comes from far away
            far = (start + 7000) % (len(ref) - 200)
            a = a[:75] + ref[far:far + 75]
        reads.append((f"r{i}", a if i % 2 else _rc(a)))
    (d / "r.fq").write_text("".join(f"@{n}\n{s}\n+\n{'I' * len(s)}\n" for n, s in reads))
    add_reference("measles", REF, d / "refs")
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(d / "r.fq"),), output=str(d / "agd"), name="ds",
                             chunk_size=200))
        align_dataset(d / "agd", "measles", references_url=str(d / "refs"), secondary=2, runtime=rt, name="ds")
        rt.run(SortRequest(dataset=str(d / "agd"), input_name="ds", group_chunks=3))
    return d


def _records(path: Path) -> list[str]:
    return subprocess.run(["samtools", "view", str(path)], check=True, capture_output=True,
                          text=True).stdout.splitlines()


def _check_sorted(lines: list[str], contigs: list[str]) -> None:
    order = {c: i for i, c in enumerate(contigs)}
    keys = [(order.get(f[2], len(order)), int(f[3])) if f[2] != "*" else (len(order), 0)
            for f in (ln.split("\t") for ln in lines)]
    assert keys == sorted(keys), "records are not in coordinate order"


def test_sorted_export_places_extras_at_their_coordinates(sorted_ds: Path, tmp_path: Path) -> None:
    require_tool("samtools")
    bam = tmp_path / "sorted.bam"
    s = export_sam(sorted_ds / "agd", bam, name="ds_sorted")
    assert s.sort_order == "coordinate"
    header = subprocess.run(["samtools", "view", "-H", str(bam)], check=True, capture_output=True,
                            text=True).stdout
    assert header.splitlines()[0].startswith("@HD\tVN:1.6\tSO:coordinate")
    lines = _records(bam)
    flags = [int(ln.split("\t")[1]) for ln in lines]
    n_supp = sum(1 for f in flags if f & 0x800)
    n_sec = sum(1 for f in flags if f & 0x100)
    assert n_supp >= 50, f"the chimeras should give supplementary alignments, got {n_supp}"
    assert s.secondary_records == n_supp + n_sec
    _check_sorted(lines, ["MH356245.1"])
    # the same records as the unsorted (aligned) dataset's export, record for record
    unsorted = tmp_path / "unsorted.bam"
    export_sam(sorted_ds / "agd", unsorted, name="ds", read_group={"ID": "ds_sorted"})
    assert sorted(_records(unsorted)) == sorted(lines)
    # samtools sort agrees on the (contig, position) sequence, and the index works
    st = tmp_path / "st.bam"
    subprocess.run(["samtools", "sort", "-o", str(st), str(unsorted)], check=True)
    assert [ln.split("\t")[2:4] for ln in _records(st)] == [ln.split("\t")[2:4] for ln in lines]
    assert (tmp_path / "sorted.bam.bai").exists()
    region = subprocess.run(["samtools", "view", "-c", str(bam), "MH356245.1:7000-7100"], check=True,
                            capture_output=True, text=True).stdout.strip()
    expect = sum(1 for ln in lines if (f := ln.split("\t"))[2] != "*"
                 and int(f[3]) <= 7100 and int(f[3]) + 500 >= 7000)
    assert 0 < int(region) <= expect


def test_sorted_sam_export_and_picard(sorted_ds: Path, tmp_path: Path) -> None:
    from test_export_sam import picard_validate

    sam = tmp_path / "sorted.sam"
    export_sam(sorted_ds / "agd", sam, fmt="sam", name="ds_sorted")
    text = sam.read_text().splitlines()
    assert text[0].startswith("@HD\tVN:1.6\tSO:coordinate")
    _check_sorted([ln for ln in text if not ln.startswith("@")], ["MH356245.1"])
    bam = tmp_path / "sorted.bam"
    export_sam(sorted_ds / "agd", bam, name="ds_sorted")
    assert picard_validate(bam) == []


def test_spilled_extras_give_the_same_output(sorted_ds: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool("samtools")
    in_memory = tmp_path / "mem.bam"
    export_sam(sorted_ds / "agd", in_memory, name="ds_sorted")
    spills: list[int] = []

    class Tiny(SortedExtras):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            kw["memory_limit"] = 4096  # a few records per run
            super().__init__(*a, **kw)

        def _spill(self) -> None:
            spills.append(len(self._mem))
            super()._spill()

    monkeypatch.setattr(export_sorted, "SortedExtras", Tiny)
    spilled = tmp_path / "spill.bam"
    export_sam(sorted_ds / "agd", spilled, name="ds_sorted")
    assert len(spills) > 5
    assert _records(spilled) == _records(in_memory)


def _fake_alignments(keys: list[tuple[int, int, int]]) -> Alignments:
    """Records of (ref, pos, flag)."""
    al = Alignments.empty(len(keys))
    al.fields["ref_index"] = [k[0] for k in keys]
    al.fields["position"] = [k[1] for k in keys]
    al.fields["flag"] = [k[2] for k in keys]
    return al


@pytest.mark.parametrize("limit", [1 << 20, 40])
def test_extras_go_to_the_chunk_of_their_coordinate(limit: int) -> None:
    """Two chunks of primaries; extras before, inside, between, after them and at equal keys,
    as SAM lines (the record text says where it came from)."""
    chunks = [[(0, 10, 0), (0, 20, 0), (0, 30, 0)], [(0, 40, 0), (1, 5, 0), (-1, -1, 4)]]
    extras = {0: [(1, 7, 0x800), (0, 20, 0x800)], 1: [(0, 2, 0x100), (0, 35, 0x800), (2, 1, 0x800)]}

    def encode(i: int):  # type: ignore[no-untyped-def]
        recs = chunks[i] + extras[i]
        al = _fake_alignments(recs)
        data = "".join(f"{i}:{r}:{p}:{f}\n" for r, p, f in recs).encode()
        return al, data, None

    sx = SortedExtras(2, "sam", encode, memory_limit=limit)
    sx.build()
    out = []
    for i in range(2):
        al = _fake_alignments(chunks[i])
        data = "".join(f"{i}:{r}:{p}:{f}\n" for r, p, f in chunks[i]).encode()
        merged, n = sx.merge_into(i, al, data, None)
        out.append((merged.decode().split(), n))
    sx.close()
    assert out[0] == (["1:0:2:256", "0:0:10:0", "0:0:20:0", "0:0:20:2048", "0:0:30:0", "1:0:35:2048"], 3)
    assert out[1] == (["1:0:40:0", "1:1:5:0", "0:1:7:2048", "1:2:1:2048", "1:-1:-1:4"], 2)


@pytest.fixture(scope="module")
def full_bam(sorted_ds: Path) -> Path:
    """The whole sorted export (extras at their coordinates), indexed: what samtools view queries."""
    require_tool("samtools")
    bam = sorted_ds / "full.bam"
    if not bam.exists():
        export_sam(sorted_ds / "agd", bam, name="ds_sorted")
    assert (sorted_ds / "full.bam.bai").exists()
    return bam


def _view(bam: Path, *regions: str) -> list[str]:
    cmd = ["samtools", "view", *(["-M"] if len(regions) > 1 else []), str(bam), *regions]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()


@pytest.mark.parametrize("regions", [
    ("MH356245.1:7000-7400",),                       # chimeras' far halves: supplementaries of reads elsewhere
    ("MH356245.1:150-160",),
    ("MH356245.1:2000-2600", "MH356245.1:9000-9300"),
    ("MH356245.1:4000-5000", "MH356245.1:4800-9100"),  # overlapping regions: each record once (view -M)
    ("MH356245.1",),
])
def test_region_export_has_extras_as_samtools_view(sorted_ds: Path, full_bam: Path, tmp_path: Path,
                                                   regions: tuple[str, ...]) -> None:
    """persona export ds out.bam REGION...: the records samtools view returns for the regions from the
    whole sorted export, secondary and supplementary ones included, record for record, in order."""
    from persona.apps.export import ExportRequest

    out = tmp_path / "r.bam"
    with Runtime(threads=2) as rt:
        s = rt.run(ExportRequest(dataset=str(sorted_ds / "agd"), name="ds_sorted", output=str(out),
                                 regions=regions))
    theirs = _view(full_bam, *regions)
    extras = [ln for ln in theirs if int(ln.split("\t")[1]) & 0x900]
    assert extras, "the region should hold secondary/supplementary records"
    assert _view(out) == theirs
    assert s.records == len(theirs) and s.secondary_records == len(extras)


def test_region_reads_chunks_of_overlapping_extras(sorted_ds: Path, full_bam: Path) -> None:
    """The sort records each chunk's extras' own range: a region export reads the chunks whose extras
    may overlap (their primaries elsewhere), not every chunk."""
    from persona.agd import Dataset
    from persona.apps.region import plan_extras, plan_regions

    ds = Dataset.open(sorted_ds / "agd", "ds_sorted")
    er = ds.manifest.extra["extras_ranges"]
    sec = sorted(c for c in ds.columns if c.startswith("secondary") and not c.endswith("_tags"))
    assert sorted(er["columns"]) == sec and len(er["ranges"]) == len(ds.chunks) >= 6
    regions, primary = plan_regions(ds, ["MH356245.1:7200-7250"])
    extra = plan_extras(ds, regions, sec)
    assert len(primary) <= 2 and 1 <= len(extra) < len(ds.chunks)
    assert set(extra) - set(primary), "the far halves' reads lie in other chunks"


def test_region_old_manifest_scans_all_extras(sorted_ds: Path, full_bam: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A dataset sorted before extras_ranges existed: every chunk's extra columns are scanned (a log
    line says so) and the output is the same."""
    import json
    import logging
    import shutil

    from persona.apps.export import ExportRequest

    old = tmp_path / "old"
    shutil.copytree(sorted_ds / "agd", old)
    mf = old / "ds_sorted_metadata.json"
    m = json.loads(mf.read_text())
    del m["extras_ranges"]
    mf.write_text(json.dumps(m, indent=4))
    out = tmp_path / "o.bam"
    with caplog.at_level(logging.WARNING, logger="persona.apps.region"):
        with Runtime(threads=2) as rt:
            rt.run(ExportRequest(dataset=str(old), name="ds_sorted", output=str(out),
                                 regions=("MH356245.1:7000-7400",)))
    assert any("reads the extra columns of all" in r.getMessage() for r in caplog.records)
    assert _view(out) == _view(full_bam, "MH356245.1:7000-7400")


def test_bed_export_has_extras_as_samtools_view(sorted_ds: Path, full_bam: Path, tmp_path: Path) -> None:
    """-L BED on a dataset with extras: the secondary/supplementary records overlapping its intervals
    too, as samtools view -L gives them from the whole sorted export."""
    from persona.apps.export import ExportRequest

    bed = tmp_path / "x.bed"
    bed.write_text("MH356245.1\t7100\t7200\nMH356245.1\t300\t320\nMH356245.1\t9000\t9001\n")
    out = tmp_path / "b.bam"
    with Runtime(threads=2) as rt:
        rt.run(ExportRequest(dataset=str(sorted_ds / "agd"), name="ds_sorted", output=str(out),
                             regions_file=str(bed)))
    theirs = subprocess.run(["samtools", "view", "-L", str(bed), str(full_bam)], check=True, capture_output=True,
                            text=True).stdout.splitlines()
    assert any(int(ln.split("\t")[1]) & 0x900 for ln in theirs)
    assert _view(out) == theirs


def test_build_from_other_sources_places_extras_alike() -> None:
    """SortedExtras.build_from (a region export: the extras come from other chunks than the ones they
    are merged into) places every extra where build() does when sources and output chunks coincide,
    and with a single output chunk, all of them in it in coordinate order."""
    from persona.apps.export_sorted import alignment_keys

    chunks = [[(0, 10, 0), (0, 20, 0), (0, 30, 0)], [(0, 40, 0), (1, 5, 0), (-1, -1, 4)]]
    extras = {0: [(1, 7, 0x800), (0, 20, 0x800)], 1: [(0, 2, 0x100), (0, 35, 0x800), (2, 1, 0x800)]}

    def source(j: int):  # type: ignore[no-untyped-def]
        recs = extras[j]
        al = _fake_alignments(recs)
        return alignment_keys(al), [f"{j}:{r}:{p}:{f}\n".encode() for r, p, f in recs]

    def merged(sx: SortedExtras, which: list[int]) -> list[tuple[list[str], int]]:
        out = []
        for k, i in enumerate(which):
            al = _fake_alignments(chunks[i])
            data = "".join(f"{i}:{r}:{p}:{f}\n" for r, p, f in chunks[i]).encode()
            m, n = sx.merge_into(k, al, data, None)
            out.append((m.decode().split(), n))
        sx.close()
        return out

    firsts = np.array([alignment_keys(_fake_alignments(c[:1]))[0] for c in chunks], dtype=np.uint64)
    sx = SortedExtras(2, "sam", lambda i: (None, b"", None), memory_limit=1 << 20)
    sx.build_from(firsts, 2, source)
    assert merged(sx, [0, 1]) == [
        (["1:0:2:256", "0:0:10:0", "0:0:20:0", "0:0:20:2048", "0:0:30:0", "1:0:35:2048"], 3),
        (["1:0:40:0", "1:1:5:0", "0:1:7:2048", "1:2:1:2048", "1:-1:-1:4"], 2)]
    one = SortedExtras(1, "sam", lambda i: (None, b"", None), memory_limit=40)  # spilled
    one.build_from(firsts[1:], 2, source)
    got = merged(one, [1])
    assert got == [(["1:0:2:256", "0:0:20:2048", "1:0:35:2048", "1:0:40:0", "1:1:5:0", "0:1:7:2048", "1:2:1:2048",
                     "1:-1:-1:4"], 5)]
