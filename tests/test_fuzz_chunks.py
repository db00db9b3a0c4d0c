"""Fuzzing real chunk files (issue 8): bit flips, truncation, insertion, deletion, overwrites and
header field changes of chunk files of every column and compression.

Asserted for every mutant: reading it (decode, header check against the manifest, column
decode) raises only project errors (``PersonaError``), never hangs, and, when the payload is
checksummed (zstd frames with their content checksum, gzip's CRC), either fails or yields
exactly the original content: no silent change. Uncompressed chunks have no checksum of their
own (the manifest's file checksum covers them); they are checked for errors and hangs only.

Bounded for CI (``max_examples`` per test, a few seconds in all). A longer campaign:
``PERSONA_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_chunks.py`` prints the outcome counts
(error / identical / changed) per compression.
"""
from __future__ import annotations

import gzip
import itertools
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona.agd import ALIGNMENT_DTYPE, Alignments, RaggedArray
from persona.agd.chunk import decode_chunk
from persona.agd.columns import column_record_type, decode_column, encode_column
from persona.agd.dataset import encode_column_chunk
from persona.agd.format import HEADER, HEADER_SIZE
from persona.agd.integrity import check_chunk_header
from persona.agd.manifest import ChunkRef
from persona.errors import ChunkFormatError, PersonaError

pytestmark = pytest.mark.native

LONG = int(os.environ.get("PERSONA_FUZZ_EXAMPLES", "0"))
EXAMPLES = LONG or 150
HANG_SECONDS = 10
FIRST = 1000
NAME = "fuzzed"
COLUMNS = ("base", "qual", "metadata", "results")
OUTCOMES: dict[str, Counter[str]] = {}


def _real_reads(n: int) -> dict[str, list[bytes]] | None:
    here = Path(__file__).resolve().parent.parent
    for cand in (os.environ.get("PERSONA_TEST_DATA"), here.parent / "shared" / "data",
                 here.parent.parent / "shared" / "data", here / "tests" / "fixtures"):
        r1 = next((p for p in (Path(cand) / "yeast_SRR5204809" / "SRR5204809_R1.fastq.gz",
                               Path(cand) / "yeast" / "SRR5204809_R1.fastq.gz") if p.is_file()), None) if cand else None
        if r1 is not None:
            with gzip.open(r1, "rb") as f:
                recs = list(itertools.islice(zip(*[f] * 4), n))
            return {"metadata": [r[0][1:].rstrip(b"\n") for r in recs], "base": [r[1].rstrip(b"\n") for r in recs],
                    "qual": [r[3].rstrip(b"\n") for r in recs]}
    return None


def _values(n: int = 60) -> dict[str, object]:
    """Column values of one chunk: real yeast reads when the shared data is there, else synthetic."""
    reads = _real_reads(n)
    rng = np.random.default_rng(8)
    if reads is None:
        base = [bytes(rng.choice(list(b"ACGTN"), size=50).tolist()) for _ in range(n)]
        reads = {"base": base, "qual": [bytes(rng.integers(35, 74, size=50).tolist()) for _ in base],
                 "metadata": [f"read{i}".encode() for i in range(n)]}
    f = np.zeros(n, dtype=ALIGNMENT_DTYPE)
    f["flag"] = rng.choice([0, 4, 16, 99, 147, 2048 | 16], n)
    f["mapq"] = rng.integers(0, 61, n)
    f["ref_index"] = rng.integers(-1, 17, n)
    f["position"] = rng.integers(-1, 10**6, n)
    f["next_ref_index"] = rng.integers(-1, 17, n)
    f["next_position"] = rng.integers(-1, 10**6, n)
    f["template_length"] = rng.integers(-500, 500, n)
    cig = RaggedArray.from_list([f"{rng.integers(1, 30)}S{rng.integers(1, 60)}M".encode() for _ in range(n)])
    return {**reads, "results": Alignments(f, cig)}


VALUES = _values()
REF = ChunkRef(FIRST, FIRST + len(VALUES["base"]), f"{NAME}_{FIRST}")  # type: ignore[arg-type]
FILES = {(c, comp): encode_column_chunk(c, VALUES[c], first_ordinal=FIRST, name=NAME,  # type: ignore[arg-type]
                                        compression=comp)
         for c in COLUMNS for comp in ("zstd", "gzip", "uncompressed")}


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


def read_back(buf: bytes, column: str) -> tuple[object, bytes]:
    """What a reader gets from a chunk file: the decoded value and the re-encoded records.

    Text bases (a base chunk with record type TEXT, the original's decompressed form) are
    checked to be bases, as ``verify`` does (``encode_column`` refuses anything else)."""
    key = f"{NAME}_{FIRST}.{column}"
    header, records = decode_chunk(buf, key)
    check_chunk_header(header, REF, column, NAME, key)
    value = decode_column(column, records, key=key, record_type=header.record_type)
    try:
        return value, encode_column(column, value).data.tobytes()
    except ValueError as e:
        raise ChunkFormatError(str(e), key=key) from None


ORIGINAL = {c: read_back(FILES[(c, "zstd")], c)[1] for c in COLUMNS}

# -- mutations -------------------------------------------------------------------------------
_FIELDS = ("version_major", "version_minor", "record_type", "compression", "segment_start", "padding",
           "first_ordinal", "last_ordinal", "string_id")


def _set_field(buf: bytes, field: int, value: int) -> bytes:
    parts = list(HEADER.unpack_from(buf, 0))
    if _FIELDS[field] == "string_id":
        parts[field] = (value % (1 << 32)).to_bytes(4, "little") + parts[field][4:]
    else:
        width = {0: 8, 1: 8, 2: 8, 3: 8, 4: 16, 5: 16, 6: 64, 7: 64}[field]
        parts[field] = value % (1 << width)
    return HEADER.pack(*parts) + buf[HEADER_SIZE:]


@st.composite
def mutations(draw: st.DrawFn, size: int) -> tuple:
    kind = draw(st.sampled_from(["flip", "flip", "flips", "truncate", "insert", "delete", "overwrite", "field"]))
    if kind == "flip":
        return ("flip", draw(st.integers(0, size * 8 - 1)))
    if kind == "flips":
        return ("flips", tuple(draw(st.lists(st.integers(0, size * 8 - 1), min_size=2, max_size=8))))
    if kind == "truncate":
        return ("truncate", draw(st.integers(0, size - 1)))
    if kind == "insert":
        return ("insert", draw(st.integers(0, size)), draw(st.binary(min_size=1, max_size=16)))
    if kind == "delete":
        at = draw(st.integers(0, size - 1))
        return ("delete", at, draw(st.integers(1, min(32, size - at))))
    if kind == "overwrite":
        at = draw(st.integers(0, size - 1))
        return ("overwrite", at, draw(st.binary(min_size=1, max_size=min(16, size - at))))
    field = draw(st.integers(0, len(_FIELDS) - 1))
    return ("field", field, draw(st.one_of(st.integers(0, 3), st.integers(0, 1 << 64), st.just(FIRST - 1),
                                           st.just(REF.last + 1))))


def mutate(buf: bytes, m: tuple) -> bytes:
    kind = m[0]
    b = bytearray(buf)
    if kind == "flip":
        b[m[1] // 8] ^= 1 << (m[1] % 8)
    elif kind == "flips":
        for bit in m[1]:
            b[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        del b[m[1]:]
    elif kind == "insert":
        b[m[1]:m[1]] = m[2]
    elif kind == "delete":
        del b[m[1]:m[1] + m[2]]
    elif kind == "overwrite":
        b[m[1]:m[1] + len(m[2])] = m[2]
    else:
        return _set_field(buf, m[1], m[2])
    return bytes(b)


def check(column: str, comp: str, m: tuple) -> str:
    """The outcome of reading one mutant: 'error', 'identical' or 'changed' (asserting the rules)."""
    buf = mutate(FILES[(column, comp)], m)
    try:
        with no_hang():
            _, got = read_back(buf, column)
    except PersonaError:
        return "error"
    except Hang:
        pytest.fail(f"reading a mutated {comp} {column} chunk hangs: {m}")
    except Exception as e:  # noqa: BLE001 - the point: only project errors may escape
        pytest.fail(f"reading a mutated {comp} {column} chunk raised {type(e).__name__}: {e} (mutation {m})")
    if got == ORIGINAL[column]:
        return "identical"
    if comp != "uncompressed":
        pytest.fail(f"a mutated {comp} {column} chunk decoded to other content without an error: {m}")
    return "changed"


def _record(comp: str, outcome: str) -> None:
    OUTCOMES.setdefault(comp, Counter())[outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def report_outcomes(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if LONG:
        line = (f"fuzz chunk outcomes ({LONG} examples per test): "
                + "; ".join(f"{comp}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                            for comp, c in sorted(OUTCOMES.items())))
        capman = request.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled():
            print("\n" + line)


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("comp", ["zstd", "gzip", "uncompressed"])
@pytest.mark.parametrize("column", COLUMNS)
def test_mutated_chunks(column: str, comp: str) -> None:
    size = len(FILES[(column, comp)])

    @SETTINGS
    @given(mutations(size))
    def run(m: tuple) -> None:
        _record(comp, check(column, comp, m))

    run()


def test_every_single_bit_flip_of_checksummed_chunks() -> None:
    """Exhaustive over a small chunk: every bit of every checksummed file, header included."""
    counts: Counter[str] = Counter()
    for column in COLUMNS:
        for comp in ("zstd", "gzip"):
            size = len(FILES[(column, comp)])
            for bit in range(0, size * 8, 1 if LONG else 13):
                counts[check(column, comp, ("flip", bit))] += 1
    assert counts["changed"] == 0 and counts["error"] > 0
    for k, v in counts.items():
        OUTCOMES.setdefault("single-bit flips (zstd+gzip)", Counter())[k] += v


def test_the_original_reads_back() -> None:
    for column in COLUMNS:
        for comp in ("zstd", "gzip", "uncompressed"):
            assert read_back(FILES[(column, comp)], column)[1] == ORIGINAL[column]
            assert decode_chunk(FILES[(column, comp)])[0].record_type == column_record_type(column)
