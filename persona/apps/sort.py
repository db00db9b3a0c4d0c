"""Sort a dataset by coordinate or query name (thesis §5.6): two phases, one new dataset.

**Phase 1** (the request's thread, ``threads`` groups at a time): the input's
chunks are taken in groups of ``group_chunks`` consecutive chunks. For each
group every column's chunk files are read and decompressed (records stay
column-encoded: 3-bit bases, proto alignments, text), the sort keys are computed
in Cython (:mod:`persona._native.sort`), the group is argsorted (stable) and each
column permuted with a ragged gather (GIL released). The sorted group is one
*run*, written to the output store in blocks of ``run_block`` records under
attempt-unique keys ``<name>_<run><block:09>~<attempt>.sortrun`` (one object per
block: keys, then every column as an AGD chunk; uncompressed on ``file://`` stores, zstd
level 1 on others). A dataset of one group needs no runs: it is sorted in memory and
streamed to the output directly.

**Phase 2** (a streaming job: the output's arity is known only at the end): one
k-way merge over the runs (:class:`persona._native.sort.Merger`, a binary heap,
GIL released) reads each run lazily, ``prefetch`` blocks ahead on an I/O pool
(the thesis's lazy iterators), gathers each output chunk (the input's chunk size)
from the blocks it draws from, and puts it into the runtime's ``sort`` pipeline::

    source (request thread)      ->  encode                  ->  write
    phase 1, then the merge and      compress every column       store the chunk files
    the gather of each chunk         (replicas)                  (transaction)

Order
-----
* ``coordinate``: reference index (unmapped, ref -1, last), position, strand, then
  input order: exactly the comparison ``samtools sort`` makes (its tid is compared
  unsigned; an unmapped read placed at its mate keeps its mate's ref/pos and sorts
  there, as the SAM spec wants). Needs ``results``.
* ``queryname``: the read name as exported (bytewise, as Picard and ``samtools sort -N``),
  then read 1 before read 2, then input order.

Every column is carried, whatever its name (base, qual, metadata, results,
tags, secondary<N>, secondary<N>_tags, others): a column's records are moved as
bytes. The new dataset is written in one transaction (``new=True``) with ``sort``
set and the input's provenance plus this run's entry. Intermediate runs are
removed after the commit and on failure or cancel.

With ``markdup`` (coordinate order), duplicates are marked during the merge, as bamsormadup and
elPrep do (:class:`persona.apps.markdup.MergeMarker`): the encode stage computes each output chunk's
ends from the records it holds anyway, the write stage feeds them to the duplicate decider in output
order, groups are decided as the merge passes them by ``window`` bases; at the commit the results
files of the output chunks holding duplicates (or stale 0x400 flags) are rewritten within the same
uncommitted attempt, then the one manifest commit makes the sorted, duplicate-marked dataset visible.

A coordinate sort records, per output chunk, its first and last (reference, position) and the
longest reference span of its mapped records in the manifest (``extra.coordinate_ranges``), which
region exports use to read only the chunks that overlap (:mod:`persona.apps.region`).

Run blocks are read back in ranged reads of at most :data:`READ_PART` bytes (``Store.get_range``),
``prefetch`` blocks ahead per run on an I/O pool, the same on file, Ceph and S3 stores. Defaults come
from the configuration (``sort.group_chunks``, ``sort.run_block``, ``sort.merge_memory``,
``sort.prefetch``, ``markdup.window``).

Memory is bounded by the parameters, not by the dataset: phase 1 holds
``threads`` groups (two copies each while permuting); the merge holds, per run,
``prefetch + 1`` blocks, and ``run_block`` is chosen so that all runs' blocks fit
``merge_memory`` bytes (never below :data:`MIN_RUN_BLOCK` records); in flight
after the merge are at most ``threads + 2`` output chunks.
"""
from __future__ import annotations

import collections
import contextlib
import os
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from persona._native import markdup as md_kernel
from persona._native import sort as sort_kernel
from persona.agd import Dataset
from persona.agd.chunk import decode_chunk, encode_chunk
from persona.agd.columns import RESULTS, column_sort_key, decode_column, encode_column, is_secondary_column
from persona.agd.manifest import ChunkRef
from persona.agd.records import FLAG_DUPLICATE
from persona.agd.format import CompressionType, RecordType
from persona.heap import trim
from persona.agd.ragged import RaggedArray
from persona.agd.transaction import Transaction
from persona.apps.job import FeedDescriptor, Job, Request, StagePlan, Summary, Work
from persona.apps.export_sorted import extras_range
from persona.apps.markdup import DEFAULT_WINDOW, MergeMarker
from persona.errors import ConfigError, DatasetError, StoreKeyError
from persona.storage import Store, open_store

if TYPE_CHECKING:
    from persona.config import Config
    from persona.runtime import Runtime

ORDERS = ("coordinate", "queryname")
#: chunks per phase-1 group (a run) unless the request says otherwise
DEFAULT_GROUP_CHUNKS = 4
#: bytes all runs' buffered blocks may take during the merge unless the request says otherwise
DEFAULT_MERGE_MEMORY = 256 << 20
#: blocks read ahead per run during the merge
DEFAULT_PREFETCH = 2
#: records per run block: never fewer (a huge run count then costs memory, not correctness)
MIN_RUN_BLOCK = 1024
MAX_RUN_BLOCK = 65536
#: run blocks are read in ranged reads of at most this many bytes
READ_PART = 8 << 20
#: compression of the intermediate runs (fast; they are read once)
RUN_LEVEL = 1


def _sort_levels() -> dict[str, Any]:
    from persona.apps.import_fastq import IMPORT_ZSTD_LEVELS

    return {"qual": IMPORT_ZSTD_LEVELS["qual"]}


#: zstd levels of the output columns where neither request nor config says (others: level 1)
SORT_ZSTD_LEVELS: dict[str, Any] = _sort_levels()


def _location(location: str | os.PathLike[str] | Store) -> str:
    return location.url if isinstance(location, Store) else os.fspath(location)


@dataclass
class SortRequest(Request):
    """Sort ``dataset`` (``input_name`` where its location holds several) by ``order`` into a new
    dataset ``name`` at ``output`` (default: the input's location; name: ``<input>_sorted``).
    ``None``: the documented defaults."""

    kind: ClassVar[str] = "sort"

    dataset: str
    output: str | None = None
    name: str | None = None
    input_name: str | None = None
    order: str = "coordinate"
    group_chunks: int | None = None
    run_block: int | None = None
    merge_memory: int | None = None
    prefetch: int | None = None
    overwrite: bool = False
    threads: int | None = None
    compression: str | None = None
    level: int | None = None
    replicas: dict[str, int] = field(default_factory=dict)
    capacity: int | None = None
    #: mark duplicates during the merge (coordinate order; Picard's rules, see persona.apps.markdup)
    markdup: bool = False
    #: with ``markdup``: a file for Picard-format duplication metrics
    metrics: str | None = None
    #: with ``markdup``: bases past a group before it is decided (None: ``markdup.window``)
    window: int | None = None

    def resolved(self, config: "Config") -> "SortRequest":
        order = (self.order or "coordinate").lower()
        if self.markdup and order != "coordinate":
            raise ConfigError("duplicates are marked during a coordinate sort only (--order coordinate)",
                              key="markdup")
        if order not in ORDERS:
            raise ConfigError(f"sort order must be one of {', '.join(ORDERS)}, got {self.order!r}", key="order")
        for k in ("group_chunks", "run_block", "merge_memory", "prefetch", "threads"):
            v = getattr(self, k)
            if v is not None and (v < 0 or (v == 0 and k != "threads")):
                raise ConfigError(f"{k} must be positive, got {v}", key=k)
        if self.compression is not None:
            try:
                CompressionType.parse(self.compression)
            except Exception:  # noqa: BLE001
                raise ConfigError(f"unknown compression {self.compression!r} (zstd, gzip, none)",
                                  key="compression") from None
        sc = config.sort
        return replace(self, dataset=_location(self.dataset), order=order,
                       group_chunks=self.group_chunks or sc.group_chunks,
                       run_block=self.run_block or sc.run_block or None,
                       merge_memory=self.merge_memory or sc.merge_memory,
                       prefetch=self.prefetch or sc.prefetch,
                       window=self.window if self.window is not None else config.markdup.window,
                       capacity=self.capacity or config.ptf.default_capacity)

    def plan(self, runtime: "Runtime", request_id: str) -> "SortJob":
        return SortJob(self, request_id, runtime)


@dataclass
class SortSummary(Summary):
    name: str = ""
    location: str = ""
    order: str = ""
    records: int = 0
    chunks: int = 0
    runs: int = 0
    run_block: int = 0
    columns: tuple[str, ...] = ()
    #: with markdup: records flagged 0x400, the metrics (one row per library) and their file
    duplicates: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    metrics_file: str | None = None


class SortWork(Work):
    __slots__ = ("first", "values", "files", "range", "ends")

    def __init__(self, desc: FeedDescriptor, first: int, values: dict[str, RaggedArray]) -> None:
        super().__init__(desc)
        self.first = first
        self.values = values
        self.files: dict[str, bytes] = {}
        self.range: list[int] | None = None
        self.ends: Any = None
        self.n = len(next(iter(values.values()))) if values else 0


# -- run blocks: keys then every column, each part length-prefixed -----------------------------
def _pack_block(keys: Any, files: list[bytes]) -> bytes:
    if isinstance(keys, tuple):
        kparts = [keys[0].tobytes(), keys[1].tobytes()]
    else:
        kparts = [keys.tobytes()]
    parts = kparts + files
    out = [struct.pack("<II", len(kparts), len(parts))]
    out += [struct.pack("<Q", len(p)) for p in parts]
    return b"".join(out + parts)


def _unpack_block(buf: bytes) -> tuple[Any, list[memoryview]]:
    nk, n = struct.unpack_from("<II", buf, 0)
    lens = struct.unpack_from(f"<{n}Q", buf, 8)
    at = 8 + 8 * n
    mv = memoryview(buf)
    parts = []
    for ln in lens:
        parts.append(mv[at:at + ln])
        at += ln
    if nk == 2:
        keys: Any = (np.frombuffer(parts[0], dtype=np.uint64), np.frombuffer(parts[1], dtype=np.uint8))
    else:
        keys = np.frombuffer(parts[0], dtype=np.uint64)
    return keys, parts[nk:]


class SortJob(Job):
    kind: ClassVar[str] = "sort"
    streaming: ClassVar[bool] = True
    stages = (StagePlan("encode", 2), StagePlan("write", 1))
    request: SortRequest

    def __init__(self, request: SortRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        r = request
        self.ds = Dataset.open(r.dataset, r.input_name)
        out_loc = r.output or self.ds.store.url
        self.store: Store = runtime.store(out_loc) if "://" in out_loc else open_store(out_loc)
        same = self.store.url == self.ds.store.url
        self.name = r.name or (f"{self.ds.name}_sorted" if same else self.ds.name)
        if same and self.name == self.ds.name:
            raise DatasetError(f"sorting {self.ds.name!r} into itself: choose another name or location",
                               store=self.store.url)
        self.order = r.order
        self.columns = sorted(self.input_columns(), key=column_sort_key)
        self._check_input()
        self.threads = max(1, runtime.threads if not r.threads else r.threads)
        self.chunk_size = max((c.num_records for c in self.ds.chunks), default=0)
        nchunks = len(self.ds.chunks)
        g = int(r.group_chunks or DEFAULT_GROUP_CHUNKS)
        self.groups = [(s, min(nchunks, s + g)) for s in range(0, nchunks, g)]
        self.compression = CompressionType.parse(r.compression) if r.compression else self.ds.compression
        self.level: Any = r.level
        if self.level is None:
            cfg = runtime.config.agd
            self.level = {CompressionType.ZSTD: cfg.zstd_level, CompressionType.GZIP: cfg.gzip_level}.get(
                self.compression)
        self.record_types: dict[str, RecordType] = {}
        self.run_block = int(r.run_block or 0)
        self.run_keys: list[list[str]] = [[] for _ in self.groups]
        #: the columns each run holds (align-sort: a group may have fewer secondary<N> columns)
        self.run_columns: list[list[str]] = [list(self.columns) for _ in self.groups]
        #: runs on a local disk are not compressed (cheaper than zstd there); elsewhere zstd level 1
        self.run_compression = CompressionType.UNCOMPRESSED if self.store.url.startswith("file:") \
            else CompressionType.ZSTD
        self.key_columns = [RESULTS] if self.order == "coordinate" or RESULTS in self.columns else []
        if self.order == "queryname":
            self.key_columns.append("metadata")
        self._pool: ThreadPoolExecutor | None = None
        self.txn: Transaction | None = None
        self.window = threading.BoundedSemaphore(self.threads + 2)
        self._keys_lock = threading.Lock()
        self.block_sizes: dict[str, int] = {}
        #: per output chunk: first (ref, pos), last (ref, pos), longest reference span (region export)
        self.ranges: dict[int, list[int]] = {}
        self.marker: MergeMarker | None = None
        #: the service's split of a sort across workers (:mod:`persona.service.sort_parts`): with
        #: ``runs_only`` this job sorts just those groups into runs, under ``run_prefix`` (keys no
        #: writer of the output dataset removes), and opens no output transaction; with
        #: ``runs_given`` it only merges runs written by such jobs (``run_keys``, ``run_columns``,
        #: ``block_sizes`` set by the caller), removing them after its commit but not on failure
        #: (a retry merges them again)
        self.runs_only: tuple[int, ...] | None = None
        self.runs_given = False
        self.run_prefix: str | None = None
        if r.markdup:
            self.marker = MergeMarker(self.ds.manifest.extra, r.window if r.window is not None else DEFAULT_WINDOW,
                                      self.library_override())

    def input_columns(self) -> list[str]:
        """The columns carried to the output (align-sort: without the old alignment's)."""
        return list(self.ds.columns)

    def library_override(self) -> str | None:
        """The library of every record whatever its read group (align-sort -R), else None."""
        return None

    def _check_input(self) -> None:
        if self.request.markdup:
            for c in ("qual", "metadata"):
                if c not in self.columns:
                    raise DatasetError(f"dataset {self.ds.name!r} has no {c!r} column: duplicate marking needs "
                                       "qualities and read names", store=self.ds.store.url)
        if self.order == "coordinate" and RESULTS not in self.columns:
            raise DatasetError(f"dataset {self.ds.name!r} is not aligned (no 'results' column): "
                               "a coordinate sort needs alignments; align it first or sort by queryname",
                               store=self.ds.store.url)
        if self.order == "queryname" and "metadata" not in self.columns:
            raise DatasetError(f"dataset {self.ds.name!r} has no 'metadata' (read names) column to sort by",
                               store=self.ds.store.url)

    # -- planning ----------------------------------------------------------------------------
    def begin(self) -> None:
        if self.runs_only is None:
            self.txn = Transaction(self.store, self.name, app="sort", new=True, overwrite=self.request.overwrite,
                                   attempt=self.attempt, request_id=self.request_id)
            self.txn.begin()
        if self.ds.chunks:
            for c in self.columns:
                if c in self.ds.columns:
                    self.record_types[c] = self.ds.read_header(0, c).record_type
            if not self.run_block:
                self.run_block = self._choose_run_block()

    def _choose_run_block(self) -> int:
        """Records per run block so that every run's buffered blocks fit ``merge_memory``."""
        ref = self.ds.chunks[0]
        size = 0
        for c in self.columns:
            h = self.ds.read_header(0, c)
            size += 4 * h.num_records
            with contextlib.suppress(Exception):
                size += len(self.ds.read_file(0, c)) * (4 if h.compression is not CompressionType.UNCOMPRESSED else 1)
        per_record = max(16, size // max(1, ref.num_records))
        k = max(1, len(self.groups))
        budget = int(self.request.merge_memory or DEFAULT_MERGE_MEMORY)
        b = budget // (k * ((self.request.prefetch or DEFAULT_PREFETCH) + 1) * per_record)
        return int(min(MAX_RUN_BLOCK, max(MIN_RUN_BLOCK, b)))

    @property
    def column_pool(self) -> ThreadPoolExecutor:
        """Per-column work of a group or an output chunk (reads, gathers), ``threads`` wide."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"sortc-{self.request_id[:6]}")
        return self._pool

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def descriptor(self, index: int) -> FeedDescriptor:
        return FeedDescriptor(self.request_id, self.store.url, self.name, index, tuple(self.columns))

    def run_key(self, run: int, block: int) -> str:
        # Shaped like an attempt's chunk file (column "sortrun"): leftovers of a crashed sort are
        # removed by the next writer of the dataset and by ``persona gc``, as any dead attempt's.
        if self.run_prefix is not None:  # the service's runs: removed by the coordinator
            return f"{self.run_prefix}{run}-{block:09d}-{self.attempt}"
        return f"{self.name}_{run}{block:09d}~{self.attempt}.sortrun"

    # -- phase 1 -----------------------------------------------------------------------------
    def _keys(self, raw: dict[str, RaggedArray], first_chunk: int, stop_chunk: int) -> Any:
        flags = None
        if RESULTS in raw:
            res = decode_column(RESULTS, raw[RESULTS])
            f = res.fields
            flags = np.ascontiguousarray(f["flag"])
            if self.order == "coordinate":
                return sort_kernel.coordinate_keys(flags, np.ascontiguousarray(f["ref_index"]),
                                                   np.ascontiguousarray(f["position"]))
        meta = raw["metadata"]
        if flags is None:  # unaligned: interleaved pairs are read 1, read 2 (export's 77/141)
            n = len(meta)
            flags = np.zeros(n, dtype=np.uint32)
            if self.ds.paired:
                firsts = np.concatenate([np.arange(self.ds.chunks[i].num_records) % 2
                                         for i in range(first_chunk, stop_chunk)])
                flags[:] = np.where(firsts == 0, 0x41, 0x81)
        return sort_kernel.name_keys(meta.offsets, meta.data, flags)

    def _group_loads(self, run: int) -> "dict[str, Future[RaggedArray]]":
        """The still-encoded records of every column of group ``run`` (futures on the column pool;
        the key columns first). Align-sort overrides this: its alignments are made in memory."""
        start, stop = self.groups[run]
        pool = self.column_pool

        def load(c: str) -> RaggedArray:
            parts = [self.ds.read_raw(i, c)[1] for i in range(start, stop)]
            return parts[0] if len(parts) == 1 else RaggedArray.concat(parts)

        # Loads are submitted before the takes that wait on them (FIFO pool: no deadlock).
        return {c: pool.submit(load, c) for c in sorted(self.columns, key=lambda c: c not in self.key_columns)}

    def _sorted_group(self, run: int) -> tuple[Any, dict[str, RaggedArray], int]:
        """Read and sort one group: its sorted keys, columns and record count."""
        start, stop = self.groups[run]
        pool = self.column_pool
        loads = self._group_loads(run)
        self.run_columns[run] = sorted(loads, key=column_sort_key)
        keys = self._keys({c: loads[c].result() for c in self.key_columns}, start, stop)
        if isinstance(keys, tuple):
            perm = sort_kernel.argsort_bytes(keys[0], keys[1])
            koff, kdata = sort_kernel.ragged_take(keys[0], keys[1], perm)
            keys = (koff, kdata)
        else:
            perm = np.argsort(keys, kind="stable")
            keys = keys[perm]
        def take(c: str) -> RaggedArray:
            r = loads[c].result()
            o, d = sort_kernel.ragged_take(r.offsets, r.data, perm)
            return RaggedArray(o, d, validate=False)

        takes = {c: pool.submit(take, c) for c in self.run_columns[run]}
        cols = {c: takes[c].result() for c in self.run_columns[run]}
        del loads
        return keys, cols, len(perm)

    def _phase1_group(self, run: int) -> int:
        """Read, sort and write one group as run ``run``; returns its record count."""
        keys, cols, n = self._sorted_group(run)
        b = self.run_block
        for bi, s in enumerate(range(0, n, b)):
            e = min(n, s + b)
            if isinstance(keys, tuple):
                ko = keys[0][s:e + 1] - keys[0][s]
                kblock: Any = (np.ascontiguousarray(ko), keys[1][int(keys[0][s]):int(keys[0][e])])
            else:
                kblock = keys[s:e]
            files = [encode_chunk(cols[c].slice(s, e), record_type=self.record_type(c), first_ordinal=0,
                                  name=self.name, compression=self.run_compression, level=RUN_LEVEL)
                     for c in self.run_columns[run]]
            key = self.run_key(run, bi)
            block = _pack_block(kblock, files)
            with self._keys_lock:
                self.run_keys[run].append(key)
                self.block_sizes[key] = len(block)
            self.store.put(key, block)
        del keys, cols
        # the group's columns (two copies while permuting) are freed: give their pages back, or the
        # heap's free holes drift upward group after group (phase-1 peak, zstd runs, 10 groups: 406-425
        # MiB with this, 433-454 without, same time; on Ceph from 2M to 8M pairs the sort's median
        # peak grew 1.086x without, 1.058x with)
        trim()
        return n

    def phase1(self, runs: "tuple[int, ...] | None" = None) -> None:
        """Sort groups ``runs`` (all by default) into runs, ``threads`` at a time."""
        if not self.groups:
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix=f"sort1-{self.request_id[:6]}") as pool:
            pending: collections.deque[Future[int]] = collections.deque()
            for run in (range(len(self.groups)) if runs is None else runs):
                if self.cancelled():
                    break
                pending.append(pool.submit(self._phase1_group, run))
                while len(pending) >= self.threads:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()

    # -- phase 2 -----------------------------------------------------------------------------
    def record_type(self, column: str) -> RecordType:
        return self.record_types[column]

    def _read_block(self, run: int, key: str) -> tuple[Any, list[tuple[np.ndarray, np.ndarray]]]:
        keys, parts = _unpack_block(self._get_block(key))
        have: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for c, p in zip(self.run_columns[run], parts):
            _, rec = decode_chunk(p, key)
            have[c] = (rec.offsets, rec.data)
        n = len(keys[0]) - 1 if isinstance(keys, tuple) else len(keys)
        # a column this run lacks (align-sort: a group with fewer secondary<N>): absent records
        empty = (np.zeros(n + 1, np.uint64), np.zeros(0, np.uint8))
        return keys, [have.get(c, empty) for c in self.columns]

    def _get_block(self, key: str) -> bytes:
        """One run block, read in ranged parts of :data:`READ_PART` bytes (works the same on file, Ceph
        and S3 stores; a part at a time keeps each request small)."""
        size = self.block_sizes.get(key)
        if size is None or size <= READ_PART:
            return self.store.get(key)
        buf = bytearray(size)
        for at in range(0, size, READ_PART):
            part = self.store.get_range(key, at, min(size, at + READ_PART) - at)
            buf[at:at + len(part)] = part
        return bytes(buf)

    def _put(self, put: Any, w: SortWork) -> bool:
        while not self.window.acquire(timeout=0.5):
            if self.cancelled():
                return False
        put(w)
        return True

    def produce(self, put: Any) -> None:
        try:
            self._produce(put)
        finally:
            self._close_pool()

    def _produce(self, put: Any) -> None:
        if self.runs_only is not None:
            self.phase1(self.runs_only)
            return
        if len(self.groups) == 1 and not self.runs_given:
            # one run: no intermediate files, the sorted group goes straight to the output
            _, cols, n = self._sorted_group(0)
            self._columns_known()
            for index, s in enumerate(range(0, n, self.chunk_size)):
                e = min(n, s + self.chunk_size)
                if not self._put(put, SortWork(self.descriptor(index), s, {c: v.slice(s, e) for c, v in cols.items()})):
                    return
            return
        if not self.runs_given:
            self.phase1()
        if self.cancelled() or not self.groups:
            return
        self._columns_known()
        k = len(self.groups)
        byte_keys = self.order == "queryname"
        merger = sort_kernel.Merger(k, byte_keys)
        depth = int(self.request.prefetch or DEFAULT_PREFETCH)
        io = ThreadPoolExecutor(min(k, max(2, self.threads)), thread_name_prefix=f"sort2-{self.request_id[:6]}")
        queues: list[collections.deque[Future[Any]]] = [collections.deque() for _ in range(k)]
        nexts = [0] * k

        def refill(run: int) -> None:
            q = queues[run]
            keys = self.run_keys[run]
            while len(q) < depth and nexts[run] < len(keys):
                q.append(io.submit(self._read_block, run, keys[nexts[run]]))
                nexts[run] += 1

        def next_block(run: int) -> Any:
            q = queues[run]
            if not q:
                return None
            blk = q.popleft().result()
            refill(run)
            return blk

        try:
            for r in range(k):
                refill(r)
            current: list[Any] = [None] * k
            for r in range(k):
                current[r] = next_block(r)
                if current[r] is None:
                    merger.finish(r)
                else:
                    merger.set_block(r, current[r][0])
            size = self.chunk_size
            out_run = np.empty(size, dtype=np.int32)
            out_idx = np.empty(size, dtype=np.int64)
            index = 0
            first = 0
            while merger.active:
                # sources of this chunk: the runs' current blocks, then each refill's block
                sources: list[Any] = list(current)
                cur_src = np.arange(k, dtype=np.int32)
                src = np.empty(size, dtype=np.int32)
                n = 0
                while n < size and merger.active:
                    n2, need = merger.merge(out_run, out_idx, n, size)
                    src[n:n2] = cur_src[out_run[n:n2]]
                    n = n2
                    if need >= 0:
                        blk = next_block(need)
                        current[need] = blk
                        if blk is None:
                            merger.finish(need)
                        else:
                            cur_src[need] = len(sources)
                            sources.append(blk)
                            merger.set_block(need, blk[0])
                if n == 0:
                    break
                s_arr = src[:n]
                i_arr = out_idx[:n].copy()

                def gather(ci: int, srcs: list[Any] = sources) -> RaggedArray:
                    o, d = sort_kernel.ragged_gather([None if s is None else s[1][ci] for s in srcs], s_arr, i_arr)
                    return RaggedArray(o, d, validate=False)

                values = dict(zip(self.columns, self.column_pool.map(gather, range(len(self.columns)))))
                del sources
                if not self._put(put, SortWork(self.descriptor(index), first, values)):
                    return
                # the blocks this chunk came from are freed: give their pages back, or with compressed
                # runs (remote stores) the heap's free pages grow with the number of runs (peak 535 ->
                # 640 MiB from 10 to 20 runs; 497 -> 516 with this, at the same speed)
                trim()
                index += 1
                first += n
        finally:
            for q in queues:
                for f in q:
                    f.cancel()
            io.shutdown(wait=True)

    def _columns_known(self) -> None:
        """Phase 1 is over: every output column is known (align-sort learns its secondary<N> here)."""

    def cancelled(self) -> bool:
        h = self.runtime.handle_of(self.request_id)
        return h is not None and (h.cancelled or (h._batch is not None and h._batch.done()))

    # -- stages ------------------------------------------------------------------------------
    def stage_encode(self, w: SortWork) -> SortWork:  # type: ignore[override]
        if self.order == "coordinate" and w.n:
            res = decode_column(RESULTS, w.values[RESULTS])
            f = res.fields
            spans = md_kernel.reference_lengths(res.cigars.offsets, res.cigars.data)
            mapped = f["ref_index"] >= 0
            w.range = [int(f["ref_index"][0]), int(f["position"][0]), int(f["ref_index"][-1]),
                       int(f["position"][-1]), int(spans[mapped].max()) if mapped.any() else 0]
            sec = [c for c in self.columns if is_secondary_column(c)]
            if sec:  # a sixth entry: the chunk's extra records' own range (None: it has none)
                w.range.append(extras_range([w.values[c] for c in sec]))  # type: ignore[arg-type]
            if self.marker is not None:
                w.ends = self.marker.ends(res, w.values)
        for c in self.columns:
            w.files[c] = encode_chunk(w.values[c], record_type=self.record_types[c], first_ordinal=w.first,
                                      name=self.name, compression=self.compression, level=self.level_of(c))
        w.values = {}
        return w

    def stage_write(self, w: SortWork) -> SortWork:  # type: ignore[override]
        assert self.txn is not None
        try:
            self.txn.write_encoded(w.first, w.n, w.files)
            w.out = w.n
            w.files = {}
            if w.range is not None:
                self.ranges[w.desc.chunk] = w.range
            if self.marker is not None and w.n:
                self.marker.add(w.desc.chunk, w.first, w.ends)
                w.ends = None
            self.advance(w.n)
        finally:
            self.window.release()
        return w

    def level_of(self, column: str) -> Any:
        """The output level of ``column``: the request's or configured level, else for zstd
        :data:`SORT_ZSTD_LEVELS` (level 1 but for qualities: as small as import's level 7 for 3-bit
        bases, proto alignments and names, several times faster)."""
        if self.level is not None or self.compression is not CompressionType.ZSTD:
            return self.level
        return SORT_ZSTD_LEVELS.get(column, 1)

    # -- end ---------------------------------------------------------------------------------
    def remove_runs(self) -> None:
        for keys in self.run_keys:
            for key in keys:
                with contextlib.suppress(StoreKeyError, FileNotFoundError):
                    self.store.delete(key)
        self.run_keys = [[] for _ in self.groups]

    def commit(self, outputs: list[Any]) -> SortSummary:
        if self.runs_only is not None:  # runs of some groups: nothing to commit, the merge does
            records = sum(self.ds.chunks[i].num_records for g in self.runs_only for i in range(*self.groups[g]))
            return SortSummary(**self.summary_base(), name=self.name, location=self.store.url, order=self.order,
                               records=records, runs=len(self.runs_only), run_block=self.run_block)
        assert self.txn is not None
        self.remove_runs()
        m = self.ds.manifest
        records = sum(o for o in outputs if o)
        if records != m.num_records:
            raise DatasetError(f"sort wrote {records} records but {self.ds.name!r} holds {m.num_records}",
                               store=self.store.url)
        dups, metrics = self._mark_duplicates()
        entry = self.provenance(inputs=[{"dataset": self.ds.store.url, "name": self.ds.name,
                                         "generation": m.generation, "records": m.num_records}],
                                order=self.order, duplicates=None if metrics is None else dups)
        fields = self.manifest_fields()
        manifest = self.txn.commit(self.columns, sort=self.order, provenance=[*fields.pop("provenance"), entry],
                                   **fields)
        if metrics is not None and self.request.metrics:
            from persona.apps.markdup import write_metrics

            write_metrics(self.request.metrics, metrics, command=f"persona {self.request.kind} --markdup "
                                                                 f"{self.request.dataset}")
        return SortSummary(**self.summary_base(), name=self.name, location=self.store.url, order=self.order,
                           records=manifest.num_records, chunks=len(manifest.records), runs=len(self.groups),
                           run_block=self.run_block, columns=tuple(manifest.columns), duplicates=dups,
                           metrics=[x.__dict__.copy() for x in metrics or []],
                           metrics_file=self.request.metrics if metrics is not None else None)

    def _range_extra(self) -> dict[str, Any]:
        """``coordinate_ranges``: per output chunk ``[ref, pos, ref, pos, span]`` (its first and last
        record's reference and position, and the longest reference span of its mapped records), so a
        region export reads only the chunks that overlap (:mod:`persona.apps.region`)."""
        if self.order != "coordinate":
            return {}
        out: dict[str, Any] = {"coordinate_ranges": [self.ranges[i][:5] for i in sorted(self.ranges)]}
        sec = [c for c in self.columns if is_secondary_column(c)]
        if sec and self.ranges and all(len(r) > 5 for r in self.ranges.values()):
            # ``extras_ranges``: the same per chunk for its secondary/supplementary records, which lie
            # at their own coordinates (export_sorted.extras_range), for the columns named
            out["extras_ranges"] = {"columns": sec, "ranges": [self.ranges[i][5] for i in sorted(self.ranges)]}
        return out

    def _mark_duplicates(self) -> tuple[int, Any]:
        """With ``markdup``: decide what the merge left open, set flag 0x400 on the duplicates (and clear
        it elsewhere) in the output chunks that need it, before the commit; (duplicates, metrics)."""
        if self.marker is None:
            return 0, None
        assert self.txn is not None
        txn = self.txn
        dups, metrics = self.marker.finish()
        chunks = txn.chunks

        def rewrite(ref: Any) -> None:
            lo, hi = np.searchsorted(dups, [ref.first, ref.last])
            if lo == hi and ref.first not in self.marker.flagged:  # type: ignore[union-attr]
                return
            key = f"{ref.path}.{RESULTS}"
            _, raw = decode_chunk(self.store.get(key), key)
            res = decode_column(RESULTS, raw, key=key)
            mask = np.zeros(ref.last - ref.first, dtype=bool)
            mask[dups[lo:hi] - ref.first] = True
            old = res.fields["flag"].copy()
            res.fields["flag"] = np.where(mask, old | FLAG_DUPLICATE, old & ~np.uint32(FLAG_DUPLICATE))
            data = encode_chunk(encode_column(RESULTS, res), record_type=self.record_type(RESULTS),
                                first_ordinal=ref.first, name=self.name, compression=self.compression,
                                level=self.level_of(RESULTS))
            sums = dict(ref.checksums)
            sums[RESULTS] = txn.put_file(key, data)
            # the chunk's results file was replaced within this attempt: its checksum with it
            with txn._lock:
                txn._chunks[ref.first] = ChunkRef(ref.first, ref.last, ref.path, dict(ref.files), sums)

        with ThreadPoolExecutor(self.threads, thread_name_prefix=f"sortmd-{self.request_id[:6]}") as pool:
            list(pool.map(rewrite, chunks))
        return len(dups), metrics

    def manifest_fields(self) -> dict[str, Any]:
        """The output manifest's fields besides columns and sort (align-sort adds its reference)."""
        m = self.ds.manifest
        paired = m.paired if self.order == "queryname" else (False if m.paired else m.paired)
        if self.order == "queryname" and not m.paired and "results" in self.columns:
            # Sorting by name puts mates next to each other (read 1 first): whether they now make
            # interleaved pairs is decided from the names when the dataset is opened (persona info says so)
            paired = None
        extra = {k: v for k, v in m.extra.items() if k not in ("coordinate_ranges", "extras_ranges")}
        return {"reference": m.reference, "reference_contigs": list(m.reference_contigs), "paired": paired,
                "extra": {**extra, **self._range_extra()}, "provenance": list(m.provenance)}

    def abort(self, error: BaseException | None) -> None:
        try:
            if not self.runs_given:
                self.remove_runs()
        finally:
            if self.txn is not None and self.txn.state in ("open", "new"):
                self.txn.abort()


def sort_dataset(request: SortRequest, *, runtime: "Runtime | None" = None, progress: Any = None,
                 threads: int = 0) -> SortSummary:
    from persona.runtime import run_request

    s = run_request(request, threads=threads, runtime=runtime, progress=progress)
    assert isinstance(s, SortSummary)
    return s
