"""FASTQ files <-> AGD read columns (``metadata``, ``base``, ``qual``).

Reading is in two steps so that the expensive one runs in parallel:

1. :func:`iter_text_chunks` (sequential, cheap): decompress the file in large
   blocks and cut the text after every ``4 * records`` lines, so each
   :class:`TextChunk` holds exactly ``records`` FASTQ records (the last one
   fewer) and knows its first line number. Only newlines are counted here.
2. :func:`scan_chunk` validates the records and finds their fields,
   :func:`gather_chunk` / :func:`gather_pair` copy them into
   :class:`FastqColumns` (interleaving mates); :func:`parse_chunk` /
   :func:`parse_pair` do both. GIL-free kernels, any thread. Errors raise
   :class:`~persona.errors.InputFormatError` naming the file and line.

Writing is :func:`format_records` (columns -> FASTQ text). gzip input is read
with python-isal (igzip) when it is installed, which decompresses several
times faster than zlib; the standard gzip module is the fallback.
"""
from __future__ import annotations

import gzip as _gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from persona._native import fastq as _k
from persona.agd.ragged import RaggedArray
from persona.errors import InputFormatError

try:  # optional accelerator, same API as the standard gzip module
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib

    _GZIP_ERRORS: tuple[type[BaseException], ...] = (
        OSError, EOFError, zlib.error, _isal_zlib.error
    )
except ImportError:  # pragma: no cover - exercised only where isal is missing
    _igzip = None
    _GZIP_ERRORS = (OSError, EOFError, zlib.error)

BLOCK_SIZE = 4 << 20  # decompressed bytes per read: large, so per-call overhead vanishes
GZIP_MAGIC = b"\x1f\x8b"

PathLike = str | os.PathLike[str]


def is_gzip(path: PathLike) -> bool:
    """Whether ``path`` starts with the gzip magic (the name's suffix is not trusted)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


class _PeekedStream(io.RawIOBase):
    """A non-seekable binary stream (standard input, a pipe) with its first bytes read back in."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._raw.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:  # the caller's stream stays open (never close stdin)
        super().close()


def open_input(path: PathLike | BinaryIO) -> BinaryIO:
    """Open a FASTQ file for binary reading, decompressing gzip/BGZF transparently. A binary
    stream (``sys.stdin.buffer``, a pipe) is read as it is, gzip detected from its first bytes."""
    if hasattr(path, "read"):
        raw: BinaryIO = path  # type: ignore[assignment]
        head = raw.read(2)
        stream: BinaryIO = io.BufferedReader(_PeekedStream(head, raw), buffer_size=1 << 20)  # type: ignore[arg-type]
        if head == GZIP_MAGIC:
            if _igzip is not None:
                return _igzip.open(stream, "rb")  # type: ignore[return-value]
            return _gzip.open(stream, "rb")  # type: ignore[return-value]
        return stream
    if is_gzip(path):
        if _igzip is not None:
            return _igzip.open(path, "rb")  # type: ignore[return-value]
        return _gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


@dataclass(frozen=True)
class TextChunk:
    """Raw FASTQ text of up to ``records`` whole records, cut on a record boundary.

    ``first_line`` is the 1-based file line of ``text[0]``; ``final`` marks the
    last chunk of the file (it may be empty, and it is the only one that may end
    in an incomplete record, which parsing reports as truncated).
    """

    text: bytes | bytearray
    first_line: int
    final: bool
    index: int

    @property
    def nbytes(self) -> int:
        return len(self.text)


def iter_text_chunks(path: PathLike | BinaryIO, records: int, *, block_size: int = BLOCK_SIZE) -> Iterator[TextChunk]:
    """Cut the (decompressed) text of ``path`` into chunks of ``records`` records.

    Yields every non-final chunk with exactly ``4 * records`` lines, then one
    final chunk (possibly empty) with the rest. Memory: one chunk plus one block.
    Corrupt or truncated gzip data raises :class:`InputFormatError` naming the file.
    """
    if records <= 0:
        raise ValueError(f"records per chunk must be positive, got {records}")
    source = "<stdin>" if hasattr(path, "read") else os.fspath(path)  # type: ignore[arg-type]
    lines_per_chunk = 4 * records
    # The chunk being assembled is a list of pieces (views of decompressed
    # blocks) joined once when complete: one copy per byte in all.
    pieces: list[memoryview] = []
    lines = 0  # newlines in ``pieces``
    first_line = 1
    index = 0
    with open_input(path) as f:
        while True:
            try:
                block = f.read(block_size)
            except _GZIP_ERRORS as e:
                raise InputFormatError(
                    f"{source}: corrupt or truncated compressed data after line {first_line + lines}: {e}",
                ) from None
            if not block:
                break
            view = memoryview(block)
            start = 0
            while True:
                found, end = _k.find_lines(block, start, lines_per_chunk - lines)
                lines += found
                if lines < lines_per_chunk:
                    pieces.append(view[start:])
                    break
                pieces.append(view[start:end])
                yield TextChunk(b"".join(pieces), first_line, False, index)
                pieces = []
                index += 1
                first_line += lines_per_chunk
                lines = 0
                start = end
    yield TextChunk(b"".join(pieces), first_line, True, index)


@dataclass(frozen=True)
class FastqColumns:
    """The three read columns of one chunk, as text (bases not yet packed)."""

    metadata: RaggedArray
    bases: RaggedArray
    qual: RaggedArray

    def __len__(self) -> int:
        return len(self.metadata)

    def as_dict(self) -> dict[str, RaggedArray]:
        """Keyed by AGD column name."""
        return {"base": self.bases, "qual": self.qual, "metadata": self.metadata}


def _columns(cols: tuple) -> FastqColumns:  # type: ignore[type-arg]
    (mo, md), (so, sd), (qo, qd) = cols
    return FastqColumns(
        RaggedArray(mo, md, validate=False),
        RaggedArray(so, sd, validate=False),
        RaggedArray(qo, qd, validate=False),
    )


def scan_chunk(chunk: TextChunk, source: str) -> np.ndarray:
    """Validate every record of a chunk; returns the span table for :func:`gather_chunk`.

    The chunk must parse completely (it was cut on a record boundary); errors
    raise :class:`InputFormatError` naming ``source`` and the line.
    """
    pos, consumed = _k.scan_fastq(chunk.text, source, chunk.first_line, chunk.final)
    if consumed != len(chunk.text):
        # Only possible if a record is malformed so that line counting went astray.
        line = chunk.first_line + 4 * len(pos)
        err = InputFormatError(f"{source}:{line}: malformed FASTQ record (not 4 lines)")
        err.file, err.line = source, line  # type: ignore[attr-defined]
        raise err
    return pos


def gather_chunk(chunk: TextChunk, pos: np.ndarray) -> FastqColumns:
    """Columns of a scanned single-end chunk."""
    return _columns(_k.gather_columns(chunk.text, pos))


def check_pair(chunk1: TextChunk, pos1: np.ndarray, chunk2: TextChunk, pos2: np.ndarray,
               source1: str, source2: str, pairs_before: int = 0) -> None:
    """Raise :class:`InputFormatError` unless two scanned mate chunks pair up.

    Mates must have the same name (up to the first blank, ignoring a trailing
    ``/1``/``/2``) and both chunks the same number of records. ``pairs_before``
    (pairs in earlier chunks) only makes error messages exact.
    """
    bad = _k.first_name_mismatch(chunk1.text, pos1, chunk2.text, pos2)
    if bad >= 0:
        line1 = chunk1.first_line + 4 * bad
        line2 = chunk2.first_line + 4 * bad
        n1 = bytes(chunk1.text[pos1[bad, 0] : pos1[bad, 1]])
        n2 = bytes(chunk2.text[pos2[bad, 0] : pos2[bad, 1]])
        err = InputFormatError(
            f"{source2}:{line2}: read name {_k.read_name(n2).decode(errors='replace')!r} does not match "
            f"its mate {_k.read_name(n1).decode(errors='replace')!r} at {source1}:{line1} "
            f"(pair {pairs_before + bad + 1})"
        )
        err.file, err.line = source2, line2  # type: ignore[attr-defined]
        raise err
    if len(pos1) != len(pos2):
        (short, s_chunk, s_n), (long_, l_chunk, _) = sorted(
            [(source1, chunk1, len(pos1)), (source2, chunk2, len(pos2))], key=lambda t: t[2]
        )
        line = l_chunk.first_line + 4 * s_n
        err = InputFormatError(
            f"{long_}:{line}: paired files have different record counts: record "
            f"{pairs_before + s_n + 1} of {long_} has no mate, {short} ends after "
            f"{pairs_before + s_n} records (line {s_chunk.first_line + 4 * s_n - 1})"
        )
        err.file, err.line = long_, line  # type: ignore[attr-defined]
        raise err


def check_interleaved(chunk: TextChunk, pos: np.ndarray, source: str, pairs_before: int = 0) -> None:
    """Raise :class:`InputFormatError` unless the records of an interleaved chunk pair up:
    an even count, and records 2i and 2i+1 with the same name (as :func:`check_pair`)."""
    if len(pos) % 2:
        line = chunk.first_line + 4 * (len(pos) - 1)
        err = InputFormatError(f"{source}:{line}: interleaved FASTQ has an odd number of records: "
                               f"the last read (record {2 * pairs_before + len(pos)}) has no mate")
        err.file, err.line = source, line  # type: ignore[attr-defined]
        raise err
    bad = _k.first_name_mismatch(chunk.text, np.ascontiguousarray(pos[0::2]), chunk.text,
                                 np.ascontiguousarray(pos[1::2]))
    if bad >= 0:
        line1 = chunk.first_line + 8 * bad
        line2 = line1 + 4
        n1 = bytes(chunk.text[pos[2 * bad, 0] : pos[2 * bad, 1]])
        n2 = bytes(chunk.text[pos[2 * bad + 1, 0] : pos[2 * bad + 1, 1]])
        err = InputFormatError(
            f"{source}:{line2}: read name {_k.read_name(n2).decode(errors='replace')!r} does not match "
            f"its mate {_k.read_name(n1).decode(errors='replace')!r} at line {line1} "
            f"(pair {pairs_before + bad + 1}; interleaved input has mates in consecutive records)"
        )
        err.file, err.line = source, line2  # type: ignore[attr-defined]
        raise err


# Field numbers of gather_field, by AGD column name.
FIELDS = {"metadata": _k.FIELD_METADATA, "base": _k.FIELD_BASES, "qual": _k.FIELD_QUAL}


def gather_field(column: str, chunk1: TextChunk, pos1: np.ndarray,
                 chunk2: TextChunk | None = None, pos2: np.ndarray | None = None) -> RaggedArray:
    """One column (``metadata``, ``base`` as text, or ``qual``) of scanned chunk(s);
    two chunks (already checked with :func:`check_pair`) are interleaved."""
    offsets, data = _k.gather_field(FIELDS[column], chunk1.text, pos1,
                                    None if chunk2 is None else chunk2.text, pos2)
    return RaggedArray(offsets, data, validate=False)


def gather_pair(chunk1: TextChunk, pos1: np.ndarray, chunk2: TextChunk, pos2: np.ndarray,
                source1: str, source2: str, pairs_before: int = 0) -> FastqColumns:
    """Interleaved columns of two scanned mate chunks (record 2i = read 1, 2i+1 = read 2),
    after :func:`check_pair`."""
    check_pair(chunk1, pos1, chunk2, pos2, source1, source2, pairs_before)
    return _columns(_k.gather_columns(chunk1.text, pos1, chunk2.text, pos2))


def parse_chunk(chunk: TextChunk, source: str) -> FastqColumns:
    """Parse one single-end chunk into columns; errors name ``source`` and the line."""
    return gather_chunk(chunk, scan_chunk(chunk, source))


def parse_pair(chunk1: TextChunk, chunk2: TextChunk, source1: str, source2: str,
               pairs_before: int = 0) -> FastqColumns:
    """Parse mate chunks into interleaved columns; see :func:`gather_pair`."""
    pos1 = scan_chunk(chunk1, source1)
    pos2 = scan_chunk(chunk2, source2)
    return gather_pair(chunk1, pos1, chunk2, pos2, source1, source2, pairs_before)


def read_fastq(path: PathLike) -> FastqColumns:
    """All records of a (small) FASTQ file as one set of columns."""
    text = bytearray()
    with open_input(path) as f:
        while block := f.read(BLOCK_SIZE):
            text += block
    return parse_chunk(TextChunk(text, 1, True, 0), os.fspath(path))


def format_records(metadata: RaggedArray, bases: RaggedArray, qual: RaggedArray,
                   start: int = 0, step: int = 1) -> np.ndarray:
    """FASTQ text (``uint8`` array) of records ``start, start+step, ...`` of the columns.

    ``bases`` is text (decoded), not 3-bit packed.
    """
    return _k.format_fastq(metadata.offsets, metadata.data, bases.offsets, bases.data,
                           qual.offsets, qual.data, start, step)


def default_name(path: PathLike) -> str:
    """Dataset name from a FASTQ file name: ``x_R1.fastq.gz`` -> ``x``."""
    name = Path(path).name
    for suffix in (".gz", ".bgz", ".fastq", ".fq"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for tag in ("_R1_001", "_R1", "_1", ".R1", ".1"):
        if name.endswith(tag) and len(name) > len(tag):
            return name[: -len(tag)]
    return name
