"""Import FASTQ / FASTQ.gz reads (single, paired or interleaved) into a new AGD dataset.

The import runs as a streaming job in the runtime's ``import`` pipeline (see
:mod:`persona.apps.importer` for the stages, bounding and transactions); this
module keeps the per-column compression settings and the :func:`import_fastq`
convenience function.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import zstandard

from persona.agd import READ_COLUMNS, CompressionType, Manifest
from persona.formats.fastq import PathLike
from persona.storage import Store


Progress = Callable[[int], None]
ColumnLevel = int | zstandard.ZstdCompressionParameters | None
Level = ColumnLevel | Mapping[str, ColumnLevel]

# Default zstd settings per column, chosen with bench/bench_size.py on the yeast,
# human, measles and 2M simulated pairs. AGD/BAM (unaligned, samtools import)
# with these settings: 0.85, 0.77, 0.89, 0.90; with zstd 3 for every column
# (the codec default): 0.89, 0.86, 0.97, 0.95.
# * base: level 7. 3-bit packed bases compress poorly at low levels (the codes
#   straddle byte boundaries); level 7 is 3-21% smaller than level 3 on every
#   set (the simulated set needs it to stay below 0.9x BAM) at ~450 MB of FASTQ
#   per second and core.
# * qual: level 1 is both smaller and 2-3x faster than level 3 on qualities;
#   with the double-fast strategy and 7-byte minimum matches it is another
#   1-2% smaller at the same speed.
# * metadata: level 1 (read names compress well; higher levels are no smaller).
IMPORT_ZSTD_LEVELS: dict[str, ColumnLevel] = {
    "base": 7,
    "qual": zstandard.ZstdCompressionParameters.from_level(1, strategy=zstandard.STRATEGY_DFAST, min_match=7),
    "metadata": 1,
}


def column_level(level: Level, column: str, compression: str) -> ColumnLevel:
    """The compression level (or zstd parameters) for ``column``.

    None means the import defaults for zstd (:data:`IMPORT_ZSTD_LEVELS`) and the
    codec's default for gzip; a mapping may name some columns, the others keep
    those defaults.
    """
    zstd = CompressionType.parse(compression) is CompressionType.ZSTD
    default = IMPORT_ZSTD_LEVELS.get(column) if zstd else None
    if isinstance(level, Mapping):
        return level.get(column, default)
    return default if level is None else level


def import_fastq(
    r1: PathLike,
    r2: PathLike | None = None,
    *,
    out: str | os.PathLike[str] | Store,
    name: str | None = None,
    chunk_size: int | None = None,
    compression: str | None = None,
    level: Level = None,
    threads: int = 0,
    queue_depth: int | None = None,
    interleaved: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    runtime: Any = None,
) -> Manifest:
    """Import ``r1`` (and its mate file ``r2``; ``-`` is standard input) into a new dataset in
    store ``out``.

    A chunk holds ``chunk_size`` reads, or ``chunk_size`` pairs interleaved as
    ``2 * chunk_size`` records (record 2i = read 1, 2i+1 = read 2);
    ``interleaved`` reads the pairs from ``r1`` alone (mates alternating). Columns are
    ``base`` (3-bit packed), ``qual`` and ``metadata`` (header without ``@``).
    ``name`` defaults to the file name without ``_R1`` and FASTQ suffixes;
    ``level`` is one compression level for all columns or a ``{column: level}``
    mapping (None: :data:`IMPORT_ZSTD_LEVELS` for zstd, the codec default for
    gzip; zstd also takes ``zstandard.ZstdCompressionParameters``);
    ``queue_depth`` (with the runtime's threads) bounds the chunks in memory;
    ``None`` arguments take the configured defaults (``agd.*``, ``import.*``);
    ``progress(n)`` is called with the number of records of each chunk once it
    is stored. The manifest has ``sort: "queryname"`` (as the original
    writes after import) and ``paired: true`` for pairs. On error nothing of the
    dataset remains: chunk files written so far are deleted, no manifest is written.
    """
    from persona.apps.importer import ImportRequest, import_files

    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if queue_depth is not None and queue_depth <= 0:
        raise ValueError(f"queue_depth must be positive, got {queue_depth}")
    comp = CompressionType.parse(compression or "zstd")
    for c in READ_COLUMNS:
        lv = column_level(level, c, compression or "zstd")
        if isinstance(lv, zstandard.ZstdCompressionParameters) and comp is not CompressionType.ZSTD:
            raise ValueError(f"zstd parameters given for column {c!r} compressed with {compression}")
    inputs = (os.fspath(r1),) if r2 is None else (os.fspath(r1), os.fspath(r2))
    loc = out.url if isinstance(out, Store) else os.fspath(out)
    req = ImportRequest(inputs=inputs, output=loc, name=name, format="fastq", chunk_size=chunk_size,
                        compression=compression, level=level, interleaved=interleaved,  # type: ignore[arg-type]
                        overwrite=overwrite, queue_depth=queue_depth)
    summary = import_files(req, runtime=runtime, progress=progress, threads=threads)
    assert summary.manifest is not None
    return summary.manifest
