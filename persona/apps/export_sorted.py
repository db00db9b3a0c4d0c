"""Secondary and supplementary records of a coordinate-sorted dataset, placed at their own coordinates.

AGD keeps a read's extra alignments (``secondary<N>`` columns: its supplementary
and secondary hits) in the rows of the read, beside the primary. Sort orders
the reads by their primary alignment, so written record by record an extra
record would follow its primary, wherever it maps itself, and the SAM/BAM would
not be coordinate-sorted. This module gives the export what it needs to write
``@HD SO:coordinate`` honestly (and to index the BAM):

* :meth:`SortedExtras.build`, a first pass over the dataset before any record is
  written: every chunk's extra records are encoded as the export encodes them
  (BAM records or SAM lines, tags included), keyed by their own coordinate, and
  the first primary key of every chunk is noted. Chunks are processed in
  parallel on the runtime's compute pool, a bounded number at a time.
* The extras are kept sorted in memory up to ``export.sorted_extras_memory_mb``;
  beyond that they are spilled to sorted runs in a temporary directory and
  merged into one file at the end of the pass, with each chunk's byte range
  noted, so memory stays bounded by configuration whatever the dataset size.
* :meth:`SortedExtras.merge_into`, in the export's encode stage: chunk ``i``'s
  primary records (already in coordinate order) are interleaved with the extras
  whose keys fall in ``[first key of chunk i, first key of chunk i+1)`` (chunk 0
  also takes everything before, the last chunk everything after), each extra
  record after the primaries of an equal key. Records of equal keys keep the
  dataset's order.

Keys are :func:`persona._native.sort.coordinate_keys` (reference index,
position, strand), the key ``persona sort`` orders by; unmapped reads (no
reference) sort last.

A region export (:mod:`persona.apps.region`) uses the same pass over only the chunks it reads, with
``keep`` choosing the extra records that overlap its regions. Whatever chunks take part, the records
come out as in the whole export: the primaries in dataset order and each extra record after every
primary of a key not above its own, extras of equal keys in dataset order. To find the chunks whose
extras may overlap a region, a coordinate sort records each chunk's extras' coordinate range in the
manifest (:func:`extras_range`, ``extra.extras_ranges``).
"""
from __future__ import annotations

import heapq
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np

from persona._native import sort as sort_kernel
from persona.agd.ragged import RaggedArray
from persona.agd.records import Alignments

#: a spilled record: key, sequence number, length of the record bytes
_REC = struct.Struct("<QQI")
#: flags of extra records: secondary, supplementary
EXTRA_FLAGS = 0x100 | 0x800


def extras_range(columns: list[Any]) -> list[int] | None:
    """``[ref, pos, ref, pos, span]`` of one chunk's extra records (its ``secondary<N>`` columns' still
    encoded records): the lowest and the highest (reference, position) of its mapped extra records and
    their longest reference span; None when the chunk has none."""
    from persona._native import markdup as md_kernel
    from persona.agd.columns import decode_column

    lo: tuple[int, int] | None = None
    hi: tuple[int, int] | None = None
    span = 0
    for raw in columns:
        rows = np.flatnonzero(raw.lengths != 0) if len(raw) else np.zeros(0, np.int64)
        if not len(rows):
            continue
        al = decode_column("secondary0", take_rows(raw, rows.astype(np.int64)))  # the present rows only
        f = al.fields
        rows = np.flatnonzero(al.present & (f["ref_index"] >= 0))
        if not len(rows):
            continue
        ref = f["ref_index"][rows].astype(np.int64)
        pos = f["position"][rows].astype(np.int64)
        packed = (ref << 40) | pos
        a, b = int(np.argmin(packed)), int(np.argmax(packed))
        lo = min(lo, (int(ref[a]), int(pos[a]))) if lo is not None else (int(ref[a]), int(pos[a]))
        hi = max(hi, (int(ref[b]), int(pos[b]))) if hi is not None else (int(ref[b]), int(pos[b]))
        spans = md_kernel.reference_lengths(al.cigars.offsets, al.cigars.data)
        span = max(span, int(spans[rows].max()))
    if lo is None or hi is None:
        return None
    return [lo[0], lo[1], hi[0], hi[1], span]


def alignment_keys(al: Alignments) -> np.ndarray:
    """The coordinate keys of ``al``'s records (``uint64``)."""
    f = al.fields
    return sort_kernel.coordinate_keys(np.ascontiguousarray(f["flag"], dtype=np.uint32),
                                       np.ascontiguousarray(f["ref_index"], dtype=np.int32),
                                       np.ascontiguousarray(f["position"], dtype=np.int64))


def take_rows(value: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` (int64, ascending) of a decoded column: a :class:`RaggedArray` or
    :class:`Alignments` (fields, CIGARs, presence and tags)."""
    if isinstance(value, Alignments):
        tags = take_rows(value.tags, rows) if value.tags is not None else None
        return Alignments(value.fields[rows], take_rows(value.cigars, rows), value.present[rows], tags)
    off, data = sort_kernel.ragged_take(np.ascontiguousarray(value.offsets, dtype=np.uint64),
                                        np.ascontiguousarray(value.data, dtype=np.uint8), rows)
    return RaggedArray(off, data, validate=False)


def record_offsets(data: Any, offsets: Any, fmt: str) -> np.ndarray:
    """``uint64[N+1]`` record boundaries of one chunk's encoded records: BAM offsets as the encoder
    gives them; SAM lines found by their newlines."""
    if fmt == "bam":
        return np.asarray(offsets, dtype=np.uint64)
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10).astype(np.uint64) + 1
    return np.concatenate((np.zeros(1, np.uint64), ends))


class SortedExtras:
    """The extra records of one coordinate-sorted export (see the module docstring).

    ``encode_chunk(i)`` returns ``(alignments, data, offsets)``: chunk ``i``'s records with its
    extras interleaved per read (what an export of an unsorted dataset writes), encoded; ``keep``
    (optional) gives a mask over those alignments: only the extra records it selects are kept.
    """

    def __init__(self, n_chunks: int, fmt: str, encode_chunk: Callable[[int], tuple[Alignments, Any, Any]],
                 *, memory_limit: int, submit: Callable[..., Future] | None = None, in_flight: int = 4,
                 keep: Callable[[Alignments], np.ndarray] | None = None) -> None:
        self.n_chunks = n_chunks
        self.fmt = fmt
        self._encode_chunk = encode_chunk
        self._keep = keep
        self.memory_limit = max(1, int(memory_limit))
        self._submit = submit
        self.in_flight = max(1, in_flight)
        self.first_keys = np.zeros(n_chunks, np.uint64)
        self.count = 0
        # in memory: sorted key and record arrays per chunk of output; or one merged file on disk
        self._mem: list[tuple[int, int, bytes]] = []
        self._mem_bytes = 0
        self._seq = 0
        self._tmp: str | None = None
        self._runs: list[str] = []
        self._merged: str | None = None
        self._ranges: list[tuple[int, int, int]] = []  # per chunk: file offset, length, records
        self._by_chunk: list[list[tuple[int, bytes]]] = []
        self._lock = threading.Lock()

    # -- the first pass ---------------------------------------------------------------------
    def build(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Encode every chunk's extras and note each chunk's first primary key."""
        self._in_order(self.n_chunks, self._chunk_extras, lambda i, r: self._absorb(i, *r), cancelled)
        self._finish()

    def build_from(self, first_keys: np.ndarray, n_sources: int,
                   source: Callable[[int], tuple[np.ndarray, list[bytes]]],
                   cancelled: Callable[[], bool] = lambda: False) -> None:
        """The first pass where the output chunks are not the chunks the extras come from (a region
        export): ``first_keys`` are the output chunks' first primary keys; ``source(j)`` gives the
        keys and encoded records of the extras of source ``j`` (sources in dataset order)."""
        self.first_keys = np.asarray(first_keys, dtype=np.uint64)
        self._in_order(n_sources, source, lambda j, r: self._add(*r), cancelled)
        self._finish()

    def _in_order(self, n: int, work: Callable[[int], Any], absorb: Callable[[int, Any], None],
                  cancelled: Callable[[], bool]) -> None:
        """``absorb(i, work(i))`` for i in 0..n-1 in order; ``work`` on the pool when there is one,
        a bounded number ahead (so equal keys keep the dataset's order)."""
        if self._submit is None:
            for i in range(n):
                if cancelled():
                    raise InterruptedError("export cancelled")
                absorb(i, work(i))
            return
        futures: dict[int, Future] = {}
        nxt = 0
        while nxt < n or futures:
            while nxt < n and len(futures) < self.in_flight:
                futures[nxt] = self._submit(work, nxt)
                nxt += 1
            first = min(futures)
            fut = futures.pop(first)
            if cancelled():
                for f in futures.values():
                    f.cancel()
                raise InterruptedError("export cancelled")
            absorb(first, fut.result())

    def _chunk_extras(self, i: int) -> tuple[int, np.ndarray, list[bytes]]:
        al, data, offsets = self._encode_chunk(i)
        return self.extras_of(al, data, offsets)

    def extras_of(self, al: Alignments, data: Any, offsets: Any) -> tuple[int, np.ndarray, list[bytes]]:
        """Of encoded records (``al`` their alignments): the first primary's key, and the keys and
        bytes of the extra records (those ``keep`` selects, where given)."""
        flags = np.asarray(al.fields["flag"])
        keys = alignment_keys(al)
        extra = (flags & EXTRA_FLAGS) != 0
        primary = np.flatnonzero(~extra)
        first = int(keys[primary[0]]) if len(primary) else 0
        if self._keep is not None and extra.any():
            extra &= self._keep(al)
        idx = np.flatnonzero(extra)
        if not len(idx):
            return first, np.zeros(0, np.uint64), []
        off = record_offsets(data, offsets, self.fmt)
        mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        recs = [bytes(mv[int(off[j]):int(off[j + 1])]) for j in idx]
        return first, keys[idx], recs

    def _absorb(self, i: int, first: int, keys: np.ndarray, recs: list[bytes]) -> None:
        self.first_keys[i] = first
        self._add(keys, recs)

    def _add(self, keys: np.ndarray, recs: list[bytes]) -> None:
        for k, r in zip(keys.tolist(), recs):
            self._mem.append((k, self._seq, r))
            self._seq += 1
            self._mem_bytes += len(r) + 64
        self.count += len(recs)
        if self._mem_bytes > self.memory_limit:
            self._spill()

    def _spill(self) -> None:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="persona-extras-")
        self._mem.sort(key=lambda t: (t[0], t[1]))
        path = os.path.join(self._tmp, f"run{len(self._runs):06d}")
        with open(path, "wb") as f:
            for k, s, r in self._mem:
                f.write(_REC.pack(k, s, len(r)))
                f.write(r)
        self._runs.append(path)
        self._mem = []
        self._mem_bytes = 0

    def _bounds(self) -> np.ndarray:
        """The first key each chunk takes (chunk 0: from 0), made non-decreasing."""
        b = np.maximum.accumulate(self.first_keys) if self.n_chunks else self.first_keys
        b = b.copy()
        if self.n_chunks:
            b[0] = 0
        return b

    def _finish(self) -> None:
        bounds = self._bounds()
        if not self._runs:  # everything fits in memory
            self._mem.sort(key=lambda t: (t[0], t[1]))
            self._by_chunk = [[] for _ in range(self.n_chunks)]
            if self.n_chunks:
                keys = np.fromiter((t[0] for t in self._mem), np.uint64, len(self._mem))
                owner = np.searchsorted(bounds, keys, side="right") - 1
                for (k, _, r), c in zip(self._mem, owner.tolist()):
                    self._by_chunk[c].append((k, r))
            self._mem = []
            return
        self._spill()  # the last records join the runs; then one merged file, ranges per chunk
        assert self._tmp is not None
        self._merged = os.path.join(self._tmp, "merged")
        self._ranges = [(0, 0, 0)] * self.n_chunks
        with open(self._merged, "wb") as out:
            chunk, start, n = 0, 0, 0
            for k, s, r in heapq.merge(*(self._read_run(p) for p in self._runs)):
                c = int(np.searchsorted(bounds, np.uint64(k), side="right")) - 1
                if c != chunk:
                    self._ranges[chunk] = (start, out.tell() - start, n)
                    chunk, start, n = c, out.tell(), 0
                out.write(_REC.pack(k, s, len(r)))
                out.write(r)
                n += 1
            self._ranges[chunk] = (start, out.tell() - start, n)
        for p in self._runs:
            os.unlink(p)
        self._runs = []

    @staticmethod
    def _read_run(path: str) -> Iterator[tuple[int, int, bytes]]:
        with open(path, "rb", buffering=1 << 20) as f:
            while True:
                head = f.read(_REC.size)
                if not head:
                    return
                k, s, n = _REC.unpack(head)
                yield k, s, f.read(n)

    def _chunk(self, i: int) -> list[tuple[int, bytes]]:
        if self._merged is None:
            with self._lock:
                got, self._by_chunk[i] = self._by_chunk[i], []
            return got
        off, length, n = self._ranges[i]
        if not n:
            return []
        with open(self._merged, "rb") as f:
            f.seek(off)
            buf = f.read(length)
        out, p = [], 0
        for _ in range(n):
            k, _s, m = _REC.unpack_from(buf, p)
            p += _REC.size
            out.append((k, buf[p:p + m]))
            p += m
        return out

    # -- the export pass --------------------------------------------------------------------
    def merge_into(self, i: int, primary: Alignments, data: Any, offsets: Any) -> tuple[bytes, int]:
        """Chunk ``i``'s encoded primary records (``data``/``offsets`` as the encoder returned
        them) with its extras interleaved by coordinate; returns ``(records, n_extras)``."""
        extras = self._chunk(i)
        if not extras:
            return data, 0
        keys = np.maximum.accumulate(alignment_keys(primary)) if len(primary) else np.zeros(0, np.uint64)
        ekeys = np.fromiter((k for k, _ in extras), np.uint64, len(extras))
        at = np.searchsorted(keys, ekeys, side="right")  # after the primaries of an equal key
        off = record_offsets(data, offsets, self.fmt)
        mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        parts: list[Any] = []
        prev = 0
        for pos, (_, rec) in zip(at.tolist(), extras):
            if pos != prev:
                parts.append(mv[int(off[prev]):int(off[pos])])
                prev = pos
            parts.append(rec)
        parts.append(mv[int(off[prev]):int(off[len(off) - 1])])
        return b"".join(parts), len(extras)

    def close(self) -> None:
        self._mem = []
        self._by_chunk = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
