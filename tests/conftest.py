"""Shared fixtures: where the real test data lives, scratch stores, tool checks.

Real data comes in two sizes:

* the full sets (``yeast``, ``human``, ``measles``) in ``shared/data`` beside the repository
  (``../shared/data``, or ``PERSONA_TEST_DATA``), described in its README;
* small real subsets of each, with matching reference pieces, in ``tests/fixtures/`` (made by
  ``tests/fixtures/make_fixtures.sh``, described in ``tests/fixtures/README.md``), so the suite runs
  in a clone of the repository alone.

The fixtures ``yeast``, ``human`` and ``measles`` give the full sets when ``shared/data`` is there.
When it is absent, a test marked ``small_data`` (its checks hold on any real subset) gets the
small set instead, and every other test that uses a data set is skipped with the reason shown;
with ``PERSONA_REQUIRE_SHARED_DATA=1`` (``.ci/run`` sets it) such a test fails instead.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DATA_SETS = ("yeast", "human", "measles")
REQUIRE_SHARED = os.environ.get("PERSONA_REQUIRE_SHARED_DATA", "") not in ("", "0")


def find_shared_data() -> Path | None:
    """The full real data sets: ``PERSONA_TEST_DATA``, else ``shared/data`` beside the repository."""
    env = os.environ.get("PERSONA_TEST_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    # CI clones the repo with shared/ beside it; developers' work trees sit the same way.
    for cand in (REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


SHARED_DATA = find_shared_data()
MISSING = ("needs the full real data sets of ../shared/data, absent here "
           "(set PERSONA_TEST_DATA to their directory); tests marked small_data run on tests/fixtures")


def full_sets(root: Path) -> dict[str, dict[str, Path]]:
    y, h, m = root / "yeast_SRR5204809", root / "human_NA12878_chr20", root / "measles_SRR7517498"
    return {
        "yeast": {"r1": y / "SRR5204809_R1.fastq.gz", "r2": y / "SRR5204809_R2.fastq.gz", "ref": y / "sacCer3.fa.gz"},
        "human": {
            "bam": h / "NA12878_S1.chr20.10_10p1mb.bam",
            "r1": h / "NA12878_S1.chr20.10_10p1mb_R1.fastq.gz",
            "r2": h / "NA12878_S1.chr20.10_10p1mb_R2.fastq.gz",
            "ref": h / "hg19_chr20_9995001-11095000.fa",
        },
        "measles": {"r1": m / "SRR7517498_R1.fastq.gz", "r2": m / "SRR7517498_R2.fastq.gz",
                    "ref": m / "MH356245.1.fasta"},
    }


def small_sets(root: Path = FIXTURES) -> dict[str, dict[str, Path]]:
    """The small real subsets in tests/fixtures (same keys as the full sets)."""
    y, h, m = root / "yeast", root / "human", root / "measles"
    return {
        "yeast": {"r1": y / "SRR5204809_R1.fastq.gz", "r2": y / "SRR5204809_R2.fastq.gz",
                  "ref": y / "sacCer3_chrI_III_VI.fa.gz"},
        "human": {
            "bam": h / "NA12878_S1.chr20.10_10p1mb.sub.bam",
            "r1": h / "NA12878_S1.chr20.10_10p1mb.sub_R1.fastq.gz",
            "r2": h / "NA12878_S1.chr20.10_10p1mb.sub_R2.fastq.gz",
            "ref": h / "hg19_chr20_9995001-11095000.fa.gz",
        },
        "measles": {"r1": m / "SRR7517498_R1.fastq.gz", "r2": m / "SRR7517498_R2.fastq.gz",
                    "ref": m / "MH356245.1.fasta"},
    }


def data_set(name: str) -> dict[str, Path]:
    """The full set ``name`` when shared/data is there, else its small subset from tests/fixtures."""
    return (full_sets(SHARED_DATA) if SHARED_DATA is not None else small_sets())[name]


def _needs_shared_data(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if "shared_data" in names:
        return True
    if item.get_closest_marker("small_data") is not None:
        return False
    if names & set(DATA_SETS):
        return True
    # a data set taken by name with request.getfixturevalue(<parameter>)
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v in DATA_SETS for v in callspec.params.values())


def pytest_report_header(config: pytest.Config) -> str:
    if SHARED_DATA is not None:
        return f"test data: full sets in {SHARED_DATA}"
    what = "FAIL (PERSONA_REQUIRE_SHARED_DATA=1)" if REQUIRE_SHARED else "are skipped"
    return (f"test data: ../shared/data absent: small sets in {FIXTURES}; "
            f"tests needing the full sets {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA is not None or REQUIRE_SHARED:
        return
    skip = pytest.mark.skip(reason=MISSING)
    for item in items:
        if _needs_shared_data(item):
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if SHARED_DATA is None and REQUIRE_SHARED and _needs_shared_data(item):
        pytest.fail("PERSONA_REQUIRE_SHARED_DATA=1 and ../shared/data is absent: this test needs its full "
                    "real data sets (set PERSONA_TEST_DATA to their directory)", pytrace=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if SHARED_DATA is None:
        if REQUIRE_SHARED:
            pytest.fail("PERSONA_REQUIRE_SHARED_DATA=1 and ../shared/data is absent", pytrace=False)
        pytest.skip(MISSING)
    return SHARED_DATA


@pytest.fixture(scope="session")
def yeast() -> dict[str, Path]:
    """S. cerevisiae 2x50 pairs and sacCer3 (small: 4,000 pairs on chrI, chrIII, chrVI)."""
    return data_set("yeast")


@pytest.fixture(scope="session")
def human() -> dict[str, Path]:
    """NA12878 chr20 BAM, its 2x101 pairs and the 1.1 Mb reference slice (small: reads of 11 kb)."""
    return data_set("human")


@pytest.fixture(scope="session")
def measles() -> dict[str, Path]:
    """Measles 2x151 pairs and MH356245.1 (small: 2,000 random pairs)."""
    return data_set("measles")


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
        pytest.fail(f"{name} is not installed; run deploy/test.sh (or deploy/setup.sh with its --apt list)")
    return path
