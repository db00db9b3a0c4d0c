"""Fuzzing FASTQ and SAM input (issue 8): mutated real files (bit flips, truncation, insertion,
deletion, line damage, damaged gzip) are read or imported; asserted: success or a project error
(``PersonaError``, in practice ``InputFormatError`` naming file and line/record), never another
exception, never a hang.

Bounded for CI; ``PERSONA_FUZZ_EXAMPLES=N`` runs N examples per test and prints outcome counts.
"""
from __future__ import annotations

import gzip
import itertools
import os
import signal
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona.errors import PersonaError

pytestmark = pytest.mark.native

LONG = int(os.environ.get("PERSONA_FUZZ_EXAMPLES", "0"))
EXAMPLES = LONG or 100
HANG_SECONDS = 20
OUTCOMES: dict[str, Counter[str]] = {}
REPO = Path(__file__).resolve().parent.parent


def _find(*names: str) -> Path | None:
    """The first of ``names`` (paths relative to a data directory) in the full shared data or,
    without it, in tests/fixtures (its small real subsets)."""
    roots = [os.environ.get("PERSONA_TEST_DATA"), REPO.parent / "shared" / "data",
             REPO.parent.parent / "shared" / "data", REPO / "tests" / "fixtures"]
    for root in roots:
        for name in names:
            if root and (Path(root) / name).is_file():
                return Path(root) / name
    return None


def _fastq_text(n: int = 40) -> bytes:
    path = _find("measles_SRR7517498/SRR7517498_R1.fastq.gz", "measles/SRR7517498_R1.fastq.gz")
    if path is not None:
        with gzip.open(path, "rb") as f:
            return b"".join(itertools.chain.from_iterable(itertools.islice(zip(*[f] * 4), n)))
    return b"".join(b"@r%d extra\nACGTNACGTA\n+\nIIIIIIIII#\n" % i for i in range(n))


def _sam_text(n: int = 40) -> bytes:
    path = _find("human_NA12878_chr20/NA12878_S1.chr20.10_10p1mb.bam", "human/NA12878_S1.chr20.10_10p1mb.sub.bam")
    header = b"@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chr20\tLN:63025520\n"
    if path is not None:
        import pysam

        with pysam.AlignmentFile(str(path)) as f:
            recs = [r.to_string() for r in itertools.islice(f, n)]
            header = str(f.header).encode()
        return header + "".join(r + "\n" for r in recs).encode()
    return header + b"".join(b"r%d\t99\tchr20\t%d\t60\t10M\t=\t%d\t30\tACGTACGTAC\tIIIIIIIIII\tNM:i:0\n"
                             % (i, 100 + i, 120 + i) for i in range(n))


FASTQ = _fastq_text()
SAM = _sam_text()


class Hang(Exception):
    pass


@contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    def fire(*_: object) -> None:
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def text_mutations(draw: st.DrawFn, size: int) -> tuple:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "line", "newline", "tab"]))
    at = draw(st.integers(0, size - 1))
    if kind == "flip":
        return ("flip", at, draw(st.integers(0, 7)))
    if kind == "truncate":
        return ("truncate", at)
    if kind == "insert":
        return ("insert", at, draw(st.binary(min_size=1, max_size=12)))
    if kind == "delete":
        return ("delete", at, draw(st.integers(1, 40)))
    if kind == "line":  # a whole line replaced by printable junk
        return ("line", at, draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                         max_size=30)).encode())
    return (kind, at)


def mutate(buf: bytes, m: tuple) -> bytes:
    b = bytearray(buf)
    kind, at = m[0], m[1]
    if kind == "flip":
        b[at] ^= 1 << m[2]
    elif kind == "truncate":
        del b[at:]
    elif kind == "insert":
        b[at:at] = m[2]
    elif kind == "delete":
        del b[at:at + m[2]]
    elif kind == "newline":
        b[at:at] = b"\n"
    elif kind == "tab":
        b[at:at] = b"\t"
    else:
        start = b.rfind(b"\n", 0, at) + 1
        end = b.find(b"\n", at)
        b[start:end if end >= 0 else len(b)] = m[2]
    return bytes(b)


def outcome(kind: str, fn, *args) -> str:  # type: ignore[no-untyped-def]
    try:
        with no_hang():
            fn(*args)
    except PersonaError:
        result = "error"
    except Hang:
        pytest.fail(f"{kind}: no answer within {HANG_SECONDS} s")
    except Exception as e:  # noqa: BLE001 - the point: only project errors may escape
        pytest.fail(f"{kind}: {type(e).__name__}: {e}")
    else:
        result = "read"
    OUTCOMES.setdefault(kind, Counter())[result] += 1
    return result


@pytest.fixture(scope="module", autouse=True)
def report_outcomes(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if LONG:
        line = f"fuzz input outcomes ({LONG} examples per test): " + "; ".join(
            f"{k}: " + ", ".join(f"{o} {n}" for o, n in sorted(c.items())) for k, c in sorted(OUTCOMES.items()))
        capman = request.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled():
            print("\n" + line)


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _read_fastq(path: Path) -> None:
    from persona.formats.fastq import iter_text_chunks, parse_chunk

    for chunk in iter_text_chunks(path, 7):
        parse_chunk(chunk, str(path))


@pytest.mark.parametrize("compressed", [False, True])
def test_fuzzed_fastq_is_read_or_refused(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / ("in.fq.gz" if compressed else "in.fq")
    base = gzip.compress(FASTQ, mtime=0) if compressed else FASTQ

    @SETTINGS
    @given(text_mutations(len(base)))
    def run(m: tuple) -> None:
        path.write_bytes(mutate(base, m))
        outcome("fastq.gz" if compressed else "fastq", _read_fastq, path)

    run()


def test_fuzzed_fastq_pairs_are_imported_or_refused(tmp_path: Path) -> None:
    from persona.apps.import_fastq import import_fastq

    r2 = tmp_path / "r2.fq"
    r2.write_bytes(FASTQ.replace(b"\n+\n", b"\n+\n"))

    @settings(SETTINGS, max_examples=max(10, EXAMPLES // 4))
    @given(text_mutations(len(FASTQ)))
    def run(m: tuple) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            r1 = Path(d) / "r1.fq"
            r1.write_bytes(mutate(FASTQ, m))
            outcome("import fastq pairs", lambda: import_fastq(r1, r2, out=Path(d) / "ds", chunk_size=8))

    run()


def test_fuzzed_sam_is_imported_or_refused(tmp_path: Path) -> None:
    from persona.apps.import_sam import import_sam

    @SETTINGS
    @given(text_mutations(len(SAM)))
    def run(m: tuple) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            path = Path(d) / "in.sam"
            path.write_bytes(mutate(SAM, m))
            outcome("import sam", lambda: import_sam(path, out=Path(d) / "ds", chunk_size=16))

    run()


def test_fuzzed_sam_lines_are_located_or_accepted(tmp_path: Path) -> None:
    """The line checker never raises on any input; what it reports names a line in the file."""
    from persona.formats.sam import locate_sam_error

    @SETTINGS
    @given(text_mutations(len(SAM)))
    def run(m: tuple) -> None:
        path = tmp_path / "in.sam"
        text = mutate(SAM, m)
        path.write_bytes(text)
        with no_hang():
            err = locate_sam_error(path)
        if err is not None and "line" in err.context:
            assert 1 <= err.context["line"] <= text.count(b"\n") + 1

    run()
