"""Export an AGD dataset's reads to FASTQ (one file, or two for pairs), optionally gzip'ed.

The export runs as a job in the runtime's ``export`` pipeline (see
:mod:`persona.apps.export`): chunks are read, decoded, formatted as FASTQ text
(GIL-free kernel) and, for gzip output, compressed as one gzip member per chunk
(a concatenation of members is a valid gzip file that every reader accepts), then
written in chunk order. Memory is bounded by the pipeline's gates.

For well-formed input, FASTQ -> AGD -> FASTQ reproduces the file byte for byte
(headers, bases including N, qualities), except what AGD does not keep: text
after the ``+`` separator, ``\\r`` line ends and lower-case bases (AGD packs
bases as upper case).
"""
from __future__ import annotations

import gzip as _gzip
import os
from collections.abc import Callable
from typing import Any

from persona.formats.fastq import PathLike
from persona.storage import Store

try:
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - only where isal is missing
    _igzip = None

GZIP_LEVEL = 6  # zlib scale; igzip gets the matching level of its 0..3 scale


def gzip_member(data: bytes | memoryview) -> bytes:
    if _igzip is not None:
        return _igzip.compress(data, compresslevel=2)
    return _gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def export_fastq(
    dataset_location: str | os.PathLike[str] | Store,
    out1: PathLike,
    out2: PathLike | None = None,
    *,
    gzip: bool = False,
    name: str | None = None,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
    runtime: Any = None,
) -> int:
    """Write the reads of a dataset as FASTQ; returns the number of records written.

    A paired dataset goes to ``out1`` (read 1) and ``out2`` (read 2), or
    interleaved into ``out1`` alone (``-``: standard output). ``out2`` with a
    single-end dataset is an error. Files appear complete or not at all (written
    under a temporary name, renamed at the end). ``progress(n)`` gets the record
    count of each chunk written.
    """
    from persona.apps.export import ExportRequest, export_dataset

    loc = dataset_location.url if isinstance(dataset_location, Store) else os.fspath(dataset_location)
    req = ExportRequest(dataset=loc, output=os.fspath(out1), output2=None if out2 is None else os.fspath(out2),
                        format="fastq", name=name, gzip=gzip)
    return export_dataset(req, runtime=runtime, progress=progress, threads=threads).records
