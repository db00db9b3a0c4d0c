"""Import FASTQ / FASTQ.gz reads (single or paired) into a new AGD dataset.

The import is a small pipeline of plain threads with bounded queues, laid out
as the PTF stages it will become (thesis §5.5; the original's FastqChunker ->
AGDConverter -> compressor -> writer)::

    read (1 thread per input)    check (pool)       encode (pool, 3 tasks     write (this
    decompress, cut every    ->  mate names and  ->  per chunk: one per    ->  thread, in
    4*chunk_size lines, scan     record counts       column) gather, pack      chunk order)
    (validate) the records                           bases, compress

* **read** decompresses in large blocks (igzip/zlib release the GIL), cuts
  the text on record boundaries by counting newlines, and validates the
  records with the GIL-free scan kernel; one thread per input file, so R1 and
  R2 are read in parallel.
* **check** compares mate names and counts; cheap.
* **encode** gathers one column of the chunk (interleaving mates), packs bases
  and compresses (zstd/gzip release the GIL); the columns of a chunk run in
  parallel, so even a one-chunk input uses every core.
* **write** takes chunks in input order, so the first error reported is the
  first one in the file, and stores them with the :class:`~persona.agd.DatasetWriter`.

Memory is bounded by the queue depths (``READ_AHEAD`` chunks per input plus
``threads + 1`` chunks in conversion), not by the input size. On any failure
the chunk files written so far are deleted and no manifest is written.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zstandard

from persona.agd import (
    READ_COLUMNS,
    CompressionType,
    DatasetWriter,
    Manifest,
    encode_column_chunk,
)
from persona.formats.fastq import (
    PathLike,
    TextChunk,
    check_pair,
    default_name,
    gather_field,
    iter_text_chunks,
    scan_chunk,
)
from persona.storage import Store

DEFAULT_CHUNK_SIZE = 100_000
READ_AHEAD = 2  # scanned chunks buffered per input beyond the one being converted

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


class _Failed:
    """Carries an exception from a reader thread to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


@dataclass(frozen=True)
class ScannedChunk:
    """A text chunk whose records have been validated; ``positions`` from :func:`scan_chunk`."""

    chunk: TextChunk
    positions: np.ndarray

    @property
    def final(self) -> bool:
        return self.chunk.final


class ChunkReader(threading.Thread):
    """Stage 1: decompress one FASTQ file, cut it into chunks and scan (validate) them.

    Iterating yields :class:`ScannedChunk` s in order; the last one is ``final``.
    A failure in the thread is re-raised in the consumer. :meth:`stop` makes the
    thread exit promptly even if its queue is full.
    """

    def __init__(self, path: PathLike, records: int, depth: int = READ_AHEAD) -> None:
        super().__init__(name=f"fastq-read-{os.path.basename(os.fspath(path))}", daemon=True)
        self.path = path
        self.source = os.fspath(path)
        self.records = records
        self._queue: queue.Queue[ScannedChunk | _Failed] = queue.Queue(maxsize=depth)
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            for chunk in iter_text_chunks(self.path, self.records):
                if not self._put(ScannedChunk(chunk, scan_chunk(chunk, self.source))):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Failed(e))

    def _put(self, item: ScannedChunk | _Failed) -> bool:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[ScannedChunk]:
        while True:
            item = self._queue.get()
            if isinstance(item, _Failed):
                raise item.exc
            yield item
            if item.final:
                return

    def stop(self) -> None:
        self._halt.set()


@dataclass(frozen=True)
class ConvertedChunk:
    """Stage 2 output: one chunk's column files, each being gathered, encoded and compressed."""

    first_ordinal: int
    num_records: int
    files: dict[str, Future[bytes]]


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


def encode_field(column: str, scanned: tuple[ScannedChunk, ...], *, first_ordinal: int, name: str,
                 compression: str, level: ColumnLevel) -> bytes:
    """Gather one column of a scanned chunk (interleaving mates), encode and compress it.

    Thread-safe, GIL-free in its heavy parts; the three columns of a chunk run
    as three tasks, so gathering, base packing and compression run in parallel.
    """
    value = gather_field(column, scanned[0].chunk, scanned[0].positions,
                         *((scanned[1].chunk, scanned[1].positions) if len(scanned) == 2 else ()))
    return encode_column_chunk(column, value, first_ordinal=first_ordinal, name=name,  # type: ignore[arg-type]
                               compression=compression, level=level)


def convert_chunk(
    scanned: tuple[ScannedChunk, ...],
    sources: tuple[str, ...],
    compressors: ThreadPoolExecutor,
    *,
    first_ordinal: int,
    pairs_before: int,
    name: str,
    compression: str,
    levels: Mapping[str, ColumnLevel],
) -> ConvertedChunk:
    """Stage 2: check that mates pair up, then hand each column to ``compressors``
    (:func:`encode_field`). Raises :class:`~persona.errors.InputFormatError` when
    mate names or record counts differ.
    """
    if len(scanned) == 2:
        a, b = scanned
        check_pair(a.chunk, a.positions, b.chunk, b.positions, sources[0], sources[1], pairs_before)
    n = sum(len(s.positions) for s in scanned)
    if not n:
        return ConvertedChunk(first_ordinal, 0, {})
    files = {
        c: compressors.submit(encode_field, c, scanned, first_ordinal=first_ordinal, name=name,
                              compression=compression, level=levels[c])
        for c in READ_COLUMNS
    }
    return ConvertedChunk(first_ordinal, n, files)


def import_fastq(
    r1: PathLike,
    r2: PathLike | None = None,
    *,
    out: str | os.PathLike[str] | Store,
    name: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compression: str = "zstd",
    level: Level = None,
    threads: int = 0,
    queue_depth: int = READ_AHEAD,
    progress: Progress | None = None,
) -> Manifest:
    """Import ``r1`` (and its mate file ``r2``) into a new dataset in store ``out``.

    A chunk holds ``chunk_size`` reads, or ``chunk_size`` pairs interleaved as
    ``2 * chunk_size`` records (record 2i = read 1, 2i+1 = read 2). Columns are
    ``base`` (3-bit packed), ``qual`` and ``metadata`` (header without ``@``).
    ``name`` defaults to the file name without ``_R1`` and FASTQ suffixes;
    ``level`` is one compression level for all columns or a ``{column: level}``
    mapping (None: :data:`IMPORT_ZSTD_LEVELS` for zstd, the codec default for
    gzip; zstd also takes ``zstandard.ZstdCompressionParameters``);
    ``threads`` (0 = all cores) convert and compress chunks in parallel;
    ``queue_depth`` chunks per input are read ahead, so at most about
    ``queue_depth * inputs + threads + 1`` chunks are in memory at once;
    ``progress(n)`` is called with the number of records of each chunk once it
    is stored. The manifest has ``sort: "queryname"`` (as the original
    writes after import) and ``paired: true`` for pairs. On error nothing of the
    dataset remains: chunk files written so far are deleted, no manifest is written.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if queue_depth <= 0:
        raise ValueError(f"queue_depth must be positive, got {queue_depth}")
    paths = (r1,) if r2 is None else (r1, r2)
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"FASTQ file not found: {os.fspath(p)}")
    sources = tuple(os.fspath(p) for p in paths)
    name = name or default_name(r1)
    workers = threads if threads > 0 else (os.cpu_count() or 1)
    paired = r2 is not None
    per_chunk = chunk_size * (2 if paired else 1)
    levels = {c: column_level(level, c, compression) for c in READ_COLUMNS}
    for c, lv in levels.items():
        if isinstance(lv, zstandard.ZstdCompressionParameters) and \
                CompressionType.parse(compression) is not CompressionType.ZSTD:
            raise ValueError(f"zstd parameters given for column {c!r} compressed with {compression}")
    writer = DatasetWriter(out, name, columns=READ_COLUMNS, compression=compression,
                           paired=True if paired else None)
    readers = [ChunkReader(p, chunk_size, queue_depth) for p in paths]
    converters = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastq-convert")
    compressors = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastq-compress")
    inflight: deque[Future[ConvertedChunk]] = deque()
    written = 0

    def store_next() -> None:
        """Stage 3 (this thread): store the oldest chunk once it is converted."""
        nonlocal written
        done = inflight.popleft().result()
        if done.num_records:
            files = {c: f.result() for c, f in done.files.items()}
            writer.write_encoded(done.first_ordinal, done.num_records, files)
            written += done.num_records
            if progress is not None:
                progress(done.num_records)

    try:
        for r in readers:
            r.start()
        steps = enumerate(zip(*readers))
        while True:
            try:
                step = next(steps, None)
            except BaseException:
                # A reader failed at this step: an error in an earlier chunk comes first.
                while inflight:
                    store_next()
                raise
            if step is None:
                break
            index, scanned = step
            inflight.append(converters.submit(
                convert_chunk, scanned, sources, compressors, first_ordinal=index * per_chunk,
                pairs_before=index * chunk_size, name=name, compression=compression, levels=levels,
            ))
            if len(inflight) > workers:
                store_next()
            if any(s.final for s in scanned):
                # The other file may go on (a record count mismatch): converting
                # this step raises that error, so there is nothing more to read.
                break
        while inflight:
            store_next()
        return writer.commit(sort="queryname")
    except BaseException:
        for f in inflight:
            f.cancel()
        # Workers never touch the store (only this thread writes), so every file
        # written so far is known to the writer and abort removes it.
        writer.abort()
        raise
    finally:
        for r in readers:
            r.stop()
        converters.shutdown(wait=True, cancel_futures=True)
        compressors.shutdown(wait=True, cancel_futures=True)
        for r in readers:
            if r.is_alive():
                r.join()
