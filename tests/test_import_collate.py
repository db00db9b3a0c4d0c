"""Importing a coordinate-sorted BAM of pairs collates the mates (sorted by read name, bounded
memory), so the dataset is interleaved and aligns as pairs; every record and tag is kept."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURES, require_tool
from persona.agd import Dataset
from persona.agd.dataset import find_manifests
from persona.align.reference import add_reference
from persona.apps.align import align_dataset
from persona.apps.export_sam import export_sam
from persona.apps.importer import ImportRequest, ImportSummary
from persona.errors import DatasetError
from persona.runtime import Runtime

R1 = FIXTURES / "human" / "NA12878_S1.chr20.10_10p1mb.sub_R1.fastq.gz"
R2 = FIXTURES / "human" / "NA12878_S1.chr20.10_10p1mb.sub_R2.fastq.gz"
REF = FIXTURES / "human" / "hg19_chr20_9995001-11095000.fa.gz"


@pytest.fixture(scope="module")
def sorted_bam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture pairs aligned by minimap2 (every mate there, tags NM/MD/AS/...), sorted by samtools
    (which writes @HD SO:coordinate)."""
    samtools, mm2 = require_tool("samtools"), require_tool("minimap2")
    d = tmp_path_factory.mktemp("collate")
    sam = d / "aln.sam"
    with sam.open("w") as f:
        subprocess.run([mm2, "-ax", "sr", "--MD", str(REF), str(R1), str(R2)], check=True, stdout=f,
                       stderr=subprocess.DEVNULL)
    out = d / "coord.bam"
    subprocess.run([samtools, "sort", "-o", str(out), str(sam)], check=True)
    return out


def _import(bam: Path, loc: Path, **kw: object) -> ImportSummary:
    with Runtime(threads=2) as rt:
        s = rt.run(ImportRequest(inputs=(str(bam),), output=str(loc), name="ds", chunk_size=700, **kw))
    assert isinstance(s, ImportSummary)
    return s


def _view(path: Path, *opts: str) -> list[str]:
    """samtools view lines with the tags in a fixed order (columns 1-11 as they are)."""
    out = subprocess.run(["samtools", "view", *opts, str(path)], check=True, capture_output=True,
                         text=True).stdout
    return sorted("\t".join(f[:11] + sorted(f[11:])) for f in (ln.split("\t") for ln in out.splitlines()))


def test_coordinate_sorted_pairs_are_collated(sorted_bam: Path, tmp_path: Path) -> None:
    s = _import(sorted_bam, tmp_path / "agd")
    assert s.collated and s.name == "ds" and s.sort == "queryname"
    assert find_manifests(Dataset.open(tmp_path / "agd").store) == ["ds"]  # the staging dataset is gone
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "agd").iterdir()) == \
        sorted("ds" for _ in (tmp_path / "agd").iterdir())
    ds = Dataset.open(tmp_path / "agd")
    assert ds.paired and ds.num_records == s.records
    names = [bytes(n) for c in range(len(ds.chunks)) for n in ds.read_column(c, "metadata")]
    assert all(names[i] == names[i + 1] for i in range(0, len(names), 2))
    # nothing lost: the same records and tags as the input (import keeps primary records)
    out = tmp_path / "back.bam"
    export_sam(tmp_path / "agd", out, read_group={"ID": "x"})
    strip = lambda lines: sorted("\t".join(t for t in ln.split("\t") if not t.startswith("RG:Z:x"))  # noqa: E731
                                 for ln in lines)
    assert strip(_view(out)) == strip(_view(sorted_bam, "-F", "0x900"))


def test_collated_dataset_aligns_as_pairs(sorted_bam: Path, tmp_path: Path) -> None:
    _import(sorted_bam, tmp_path / "agd")
    add_reference("chr20slice", REF, tmp_path / "refs")
    align_dataset(tmp_path / "agd", "chr20slice", references_url=str(tmp_path / "refs"))
    ds = Dataset.open(tmp_path / "agd")
    flags = [int(f) for c in range(len(ds.chunks)) for f in ds.read_column(c, "results").fields["flag"]]
    assert all(f & 0x1 for f in flags)
    assert sum(1 for f in flags if f & 0x2) > 0.8 * len(flags)  # aligned as pairs: proper pairs


def test_no_collate_keeps_file_order(sorted_bam: Path, tmp_path: Path) -> None:
    s = _import(sorted_bam, tmp_path / "agd", collate=False)
    assert not s.collated and s.sort == "coordinate" and not s.paired
    with pytest.raises(DatasetError, match="--collate"):
        align_dataset(tmp_path / "agd", "x", references_url=str(tmp_path / "refs"))


def test_collate_refuses_an_existing_dataset_before_reading(sorted_bam: Path, tmp_path: Path) -> None:
    _import(sorted_bam, tmp_path / "agd", collate=False)
    with pytest.raises(DatasetError, match="already exists"):
        _import(sorted_bam, tmp_path / "agd")
    s = _import(sorted_bam, tmp_path / "agd", overwrite=True)
    assert s.collated and Dataset.open(tmp_path / "agd").paired


def test_cli_collates_and_says_so(sorted_bam: Path, tmp_path: Path) -> None:
    import sys

    r = subprocess.run([sys.executable, "-m", "persona", "import", str(sorted_bam), "-o", str(tmp_path / "agd")],
                       capture_output=True, text=True, check=True)
    assert "mates collated" in r.stderr and r.stdout == ""
