"""Shared fixtures: where the real test data lives, scratch stores, tool checks."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _shared_data() -> Path:
    env = os.environ.get("PERSONA_TEST_DATA")
    if env:
        return Path(env)
    # CI clones the repo with shared/ beside it; developers' work trees sit the same way.
    for cand in (REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    raise RuntimeError("test data not found: set PERSONA_TEST_DATA to shared/data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _shared_data()


@pytest.fixture(scope="session")
def yeast(shared_data: Path) -> dict[str, Path]:
    d = shared_data / "yeast_SRR5204809"
    return {"r1": d / "SRR5204809_R1.fastq.gz", "r2": d / "SRR5204809_R2.fastq.gz", "ref": d / "sacCer3.fa.gz"}


@pytest.fixture(scope="session")
def human(shared_data: Path) -> dict[str, Path]:
    d = shared_data / "human_NA12878_chr20"
    return {
        "bam": d / "NA12878_S1.chr20.10_10p1mb.bam",
        "r1": d / "NA12878_S1.chr20.10_10p1mb_R1.fastq.gz",
        "r2": d / "NA12878_S1.chr20.10_10p1mb_R2.fastq.gz",
        "ref": d / "hg19_chr20_9995001-11095000.fa",
    }


@pytest.fixture(scope="session")
def measles(shared_data: Path) -> dict[str, Path]:
    d = shared_data / "measles_SRR7517498"
    return {"r1": d / "SRR7517498_R1.fastq.gz", "r2": d / "SRR7517498_R2.fastq.gz", "ref": d / "MH356245.1.fasta"}


def fastq_head(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` records of the FASTQ(.gz) ``src``, written as plain FASTQ to ``dst``."""
    import gzip
    import itertools

    with gzip.open(src, "rt") as f:
        dst.write_text("".join(itertools.chain.from_iterable(itertools.islice(zip(*[f] * 4), n))))
    return dst


def require_tool(name: str) -> str:
    """Path of an external reference tool; fails (not skips) when missing: CI installs them."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run deploy/setup.sh")
    return path
