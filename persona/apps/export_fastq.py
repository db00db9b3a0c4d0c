"""Export an AGD dataset's reads to FASTQ (one file, or two for pairs), optionally gzip'ed.

Pipeline of plain threads, like the import: ``threads`` workers read a chunk's
``metadata``/``base``/``qual`` columns, decode them (unpack bases), format
FASTQ text (GIL-free kernel) and, for gzip output, compress it as one gzip
member per chunk (a concatenation of members is a valid gzip file that every
reader accepts); this thread writes the results in chunk order. At most
``threads + 1`` chunks are in memory.

For well-formed input, FASTQ -> AGD -> FASTQ reproduces the file byte for byte
(headers, bases including N, qualities), except what AGD does not keep: text
after the ``+`` separator, ``\\r`` line ends and lower-case bases (AGD packs
bases as upper case).
"""
from __future__ import annotations

import gzip as _gzip
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from persona.agd import BASE, METADATA, QUAL, Dataset, RaggedArray
from persona.errors import DatasetError
from persona.formats.fastq import PathLike, format_records
from persona.storage import Store

try:
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - only where isal is missing
    _igzip = None

GZIP_LEVEL = 6  # zlib scale; igzip gets the matching level of its 0..3 scale


def _gzip_member(data: bytes | memoryview) -> bytes:
    if _igzip is not None:
        return _igzip.compress(data, compresslevel=2)
    return _gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def _format_chunk(ds: Dataset, idx: int, outputs: int, interleaved: bool, gzip: bool) -> list[bytes]:
    """One chunk's output text per output file (gzip members if asked)."""
    cols = ds.read_chunk(idx, [METADATA, BASE, QUAL])
    meta, bases, qual = cols[METADATA], cols[BASE], cols[QUAL]
    assert isinstance(meta, RaggedArray) and isinstance(bases, RaggedArray) and isinstance(qual, RaggedArray)
    if interleaved and len(meta) % 2:
        raise DatasetError(
            f"paired dataset chunk {ds.chunks[idx].path} holds an odd number of records ({len(meta)})",
            key=ds.chunk_key(idx, METADATA),
        )
    try:
        if outputs == 1:
            texts = [format_records(meta, bases, qual).data]
        else:
            texts = [format_records(meta, bases, qual, 0, 2).data, format_records(meta, bases, qual, 1, 2).data]
    except ValueError as e:
        raise DatasetError(f"chunk {ds.chunks[idx].path}: {e}", key=ds.chunk_key(idx, QUAL)) from None
    return [_gzip_member(t) if gzip else bytes(t) for t in texts]


def export_fastq(
    dataset_location: str | os.PathLike[str] | Store,
    out1: PathLike,
    out2: PathLike | None = None,
    *,
    gzip: bool = False,
    name: str | None = None,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the reads of a dataset as FASTQ; returns the number of records written.

    A paired dataset goes to ``out1`` (read 1) and ``out2`` (read 2), or
    interleaved into ``out1`` alone. ``out2`` with a single-end dataset is an
    error. Files appear complete or not at all (written under a temporary name,
    renamed at the end). ``progress(n)`` gets the record count of each chunk written.
    """
    ds = Dataset.open(dataset_location, name)
    missing = [c for c in (BASE, QUAL, METADATA) if c not in ds.columns]
    if missing:
        raise DatasetError(f"dataset {ds.name!r} lacks read columns {missing} needed for FASTQ export")
    if out2 is not None and not ds.paired:
        raise DatasetError(f"dataset {ds.name!r} is not paired; cannot write a second FASTQ file")
    finals = [Path(out1)] + ([Path(out2)] if out2 is not None else [])
    temps = [p.with_name(f".{p.name}.{os.getpid()}.part") for p in finals]
    workers = threads if threads > 0 else (os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastq-export")
    inflight: deque[tuple[int, Future[list[bytes]]]] = deque()
    files = [open(t, "wb") for t in temps]
    written = 0
    ok = False

    def write_next() -> None:
        nonlocal written
        idx, fut = inflight.popleft()
        for f, data in zip(files, fut.result()):
            f.write(data)
        written += ds.chunks[idx].num_records
        if progress is not None:
            progress(ds.chunks[idx].num_records)

    try:
        for idx in range(len(ds.chunks)):
            inflight.append((idx, pool.submit(_format_chunk, ds, idx, len(files), ds.paired, gzip)))
            if len(inflight) > workers:
                write_next()
        while inflight:
            write_next()
        for f in files:
            f.close()
        for t, p in zip(temps, finals):
            os.replace(t, p)
        ok = True
        return written
    finally:
        if not ok:
            for _, fut in inflight:
                fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for f in files:
            f.close()
        if not ok:
            for t in temps:
                t.unlink(missing_ok=True)
