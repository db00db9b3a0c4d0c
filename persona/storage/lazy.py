"""Lazy, asynchronous reads (thesis §5.6.2): an object read block by block, a few blocks ahead.

A scan over a large object, or over the chunk files of a column, should neither load everything
first nor wait for each read in turn. The two readers here keep a fixed number of reads in flight
ahead of the consumer and hold nothing else, so memory is bounded by configuration (block size x
prefetch), never by the object or dataset size:

* :class:`BlockReader` -- one object as consecutive blocks of ``block_size`` bytes (ranged reads,
  :meth:`~persona.storage.base.Store.get_range`); iterate it for blocks, or call :meth:`read` as on
  a file. The sort merge reads its runs this way: one reader per run, each a few blocks deep.
* :func:`iter_objects` -- whole objects (the chunk files of a column, in order), ``prefetch``
  ahead.
* :class:`ObjectScan` -- groups of whole objects in order (a dataset scan: each group the chunk
  files of one chunk), each object assembled from a :class:`BlockReader`'s blocks with its CRC-32
  computed as the blocks arrive, the next ``lookahead`` groups' first blocks already in flight.
  The read stage of the dataset-scanning apps (export, stats, align) reads remote stores this way.

:class:`HeldBytes` counts the bytes the readers hold (blocks requested and not yet released); one
process-wide instance, :data:`HELD`, sums every reader, and its ``peak`` is what the tests bound.

How the reads run: on a store with ``get_async`` (:class:`~persona.storage.ceph.CephStore`:
librados' ``aio_read``, no thread of ours blocks) the read is started there; on every other store
(file, memory, S3: a ranged GET) it runs on a small shared thread pool (``PREFETCH_THREADS``), so
any store works. Errors are the store's own (:class:`~persona.errors.StoreKeyError`,
:class:`~persona.errors.StoreError`, naming key and URL), raised when the consumer reaches the
block that failed. An object that is shorter than its size said (replaced or truncated while
being read) raises :class:`~persona.errors.StoreError` rather than yield short data.
"""
from __future__ import annotations

import threading
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from persona.errors import StoreError
from persona.storage.base import PrefixStore, Store, StoreUsageError, validate_key

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_LOOKAHEAD", "DEFAULT_PREFETCH", "HELD", "PREFETCH_THREADS", "BlockReader",
           "HeldBytes", "ObjectScan", "iter_objects", "read_object"]

DEFAULT_BLOCK_SIZE = 4 << 20
DEFAULT_PREFETCH = 2
#: groups (chunks) of an :class:`ObjectScan` whose reads start before the consumer asks for them
DEFAULT_LOOKAHEAD = 1
#: threads of the shared pool that runs reads on stores without native asynchronous reads
PREFETCH_THREADS = 8

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class HeldBytes:
    """Bytes held by readers: a block counts from the moment its read is requested until the
    consumer is done with it (the next block taken, or the reader closed). ``peak`` is the most
    held at once since the last :meth:`reset_peak`. Thread-safe; a reader may report to several."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.now += n
            if self.now > self.peak:
                self.peak = self.now

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.now


#: every reader of the process reports here (besides any tracker of its own)
HELD = HeldBytes()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="persona-prefetch")
        return _pool


def _native_async(store: Store, key: str) -> tuple[Any, str] | None:
    """(the store whose ``get_async`` to call, the key there), or None if there is none."""
    while isinstance(store, PrefixStore):  # a prefix view of a Ceph store: its parent reads async
        key = f"{store.prefix}/{key}"
        store = store.parent
    fn = getattr(store, "get_async", None)
    return (store, key) if callable(fn) else None


def read_async(store: Store, key: str, start: int = 0, length: int | None = None) -> Future[bytes]:
    """Start reading ``[start, start+length)`` of ``key`` (to the end when None); a future of the bytes."""
    native = _native_async(store, key)
    if native is not None:
        target, tkey = native
        fut: Future[bytes] = target.get_async(tkey, start, length)
        return fut
    if length is None and start == 0:
        return _executor().submit(store.get, key)
    return _executor().submit(store.get_range, key, start, length)


def _configured(block_size: int | None, prefetch: int | None) -> tuple[int, int]:
    """``storage.read_block_kb`` / ``storage.read_prefetch`` for what the caller left None."""
    try:
        from persona.config import get_config

        st = get_config().storage
        cfg_block, cfg_prefetch = st.read_block_kb << 10, st.read_prefetch
    except Exception:  # noqa: BLE001 - an unreadable user config must not break reads: the defaults
        cfg_block, cfg_prefetch = DEFAULT_BLOCK_SIZE, DEFAULT_PREFETCH
    return (cfg_block if block_size is None else block_size, cfg_prefetch if prefetch is None else prefetch)


class BlockReader:
    """The bytes ``[start, start+length)`` of one object (all of it by default), in blocks.

    ``BlockReader(store, key, block_size=None, prefetch=None)`` (None: the configured
    ``storage.read_block_kb`` and ``storage.read_prefetch``, 4 MiB and 2 by default):

    * ``for block in reader`` yields ``bytes`` blocks in order, each ``block_size`` long but
      the last; ``reader.read(n)`` returns up to ``n`` bytes (all that is left for ``n < 0``)
      and ``b""`` at the end, like a binary file. Use one or the other on a reader.
    * ``prefetch`` reads (at least 1) are kept in flight ahead of the consumer, started as
      soon as the reader is made; at most ``prefetch + 1`` blocks are held at any time (those
      in flight plus the one being consumed): ``peak_blocks`` reports the most held.
    * ``close()`` (or leaving a ``with`` block) drops the reads in flight; readers are not
      shared between threads (make one per consumer; the store is shared).
    * ``tracker``: a :class:`HeldBytes` that counts this reader's blocks too (:data:`HELD`
      always does).

    One ``size`` call (a stat) happens at construction when ``length`` is None, unless ``stat``
    is False: then the first block is requested at once, with no stat before it, and the size is
    asked only when that block comes back full. An object no longer than one block (a typical
    chunk file) so costs one request, started without waiting; :attr:`end` is None until known.
    """

    def __init__(self, store: Store, key: str, block_size: int | None = None,
                 prefetch: int | None = None, *, start: int = 0, length: int | None = None,
                 stat: bool = True, tracker: HeldBytes | None = None) -> None:
        validate_key(key)
        if block_size is None or prefetch is None:
            block_size, prefetch = _configured(block_size, prefetch)
        if block_size < 1 or prefetch < 1 or start < 0 or (length is not None and length < 0):
            raise StoreUsageError(f"bad block reader: block_size={block_size} prefetch={prefetch} "
                                  f"start={start} length={length}", key=key, store=store.url)
        self.store = store
        self.key = key
        self.block_size = int(block_size)
        self.prefetch = int(prefetch)
        self._trackers = (HELD,) if tracker is None else (HELD, tracker)
        end: int | None
        if length is not None:
            end = start + length
        elif stat:
            end = max(store.size(key), start)
        else:
            end = None  # probing: learnt from the first block
        self.start, self.end = start, end
        self._next = start  # offset of the next block to request
        self._pending: deque[tuple[int, int, Future[bytes]]] = deque()
        self._cur = memoryview(b"")  # read(): what is left of the current block
        self._handed = 0  # bytes of the block last handed to the consumer (still counted as held)
        self._closed = False
        self.blocks_read = 0
        self.bytes_read = 0
        self.peak_blocks = 0
        self._fill()

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        block = self._take()
        if block is None:
            raise StopIteration
        return block

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (the rest for ``n < 0``); ``b""`` at the end."""
        if n is None or n < 0:
            parts = [bytes(self._cur)]
            self._cur = memoryview(b"")
            while (block := self._take()) is not None:
                parts.append(block)
            return b"".join(parts)
        out: list[bytes] = []
        want = n
        while want > 0:
            if not len(self._cur):
                block = self._take()
                if block is None:
                    break
                self._cur = memoryview(block)
            piece = self._cur[:want]
            out.append(bytes(piece))
            self._cur = self._cur[len(piece):]
            want -= len(piece)
        return b"".join(out)

    def tell(self) -> int:
        """The offset in the object of the next byte :meth:`read` returns."""
        ahead = sum(length for _, length, _ in self._pending)
        return self._next - ahead - len(self._cur)

    # ------------------------------------------------------------------ machinery
    def _count(self, n: int) -> None:
        for t in self._trackers:
            t.add(n)

    def _request(self, length: int) -> None:
        self._pending.append((self._next, length, read_async(self.store, self.key, self._next, length)))
        self._count(length)
        self._next += length

    def _fill(self) -> None:
        if self.end is None:  # probing: only the first block until the size is known
            if not self._closed and not self._pending and self._next == self.start:
                self._request(self.block_size)
        else:
            while not self._closed and len(self._pending) < self.prefetch and self._next < self.end:
                self._request(min(self.block_size, self.end - self._next))
        held = len(self._pending) + (1 if len(self._cur) else 0)
        self.peak_blocks = max(self.peak_blocks, held)

    def _take(self) -> bytes | None:
        if self._closed:
            raise StoreUsageError("block reader is closed", key=self.key, store=self.store.url)
        if self._handed:  # the consumer is done with the previous block
            self._count(-self._handed)
            self._handed = 0
        if not self._pending:
            return None
        offset, length, fut = self._pending.popleft()
        self._handed = length
        try:
            data = fut.result()  # the store's error, naming key and URL
        except BaseException:
            self.close()
            raise
        if self.end is None:  # the probe came back: a short block is the whole rest
            if len(data) < length:
                self.end = offset + len(data)
                self._next = self.end
            else:
                try:
                    self.end = max(self.store.size(self.key), self._next)
                except BaseException:
                    self.close()
                    raise
            length = len(data)
            if not length:
                return None
        if len(data) != length:
            self.close()
            raise StoreError(f"object ended early: {len(data)} bytes at offset {offset}, expected {length} "
                             "(changed or truncated while being read)", key=self.key, store=self.store.url)
        self.blocks_read += 1
        self.bytes_read += length
        self._fill()  # the next read starts before the consumer works on this block
        self.peak_blocks = max(self.peak_blocks, len(self._pending) + 1)
        return data

    def close(self) -> None:
        """Drop the reads in flight (idempotent)."""
        self._closed = True
        for _, length, fut in self._pending:
            fut.cancel()
            self._count(-length)
        self._pending.clear()
        if self._handed:
            self._count(-self._handed)
            self._handed = 0
        self._cur = memoryview(b"")

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_objects(store: Store, keys: Iterable[str], prefetch: int = DEFAULT_PREFETCH) -> Iterator[tuple[str, bytes]]:
    """``(key, bytes)`` for each key in order, with ``prefetch`` whole-object reads in flight ahead.

    Memory: at most ``prefetch + 1`` objects (the chunk files of a column scan). A missing key
    raises :class:`~persona.errors.StoreKeyError` when the scan reaches it.
    """
    if prefetch < 1:
        raise StoreUsageError(f"prefetch must be >= 1, got {prefetch}", store=store.url)
    it = iter(keys)
    pending: deque[tuple[str, Future[bytes]]] = deque()

    def fill() -> None:
        while len(pending) < prefetch:
            key = next(it, None)
            if key is None:
                return
            validate_key(key)
            pending.append((key, read_async(store, key)))

    fill()
    try:
        while pending:
            key, fut = pending.popleft()
            data = fut.result()
            fill()
            yield key, data
    finally:
        for _, fut in pending:
            fut.cancel()


def read_object(reader: BlockReader, tracker: HeldBytes | None = None) -> tuple[bytes | bytearray, int]:
    """All that is left of ``reader``, as one buffer, and its CRC-32 (zlib's, computed block by block
    as the blocks arrive, while the next ones are in flight); closes the reader.

    An object of one block is returned as that block (no copy); a longer one is assembled in one
    ``bytearray`` of its size, counted in :data:`HELD` (and ``tracker``) while it is assembled.
    """
    trackers = (HELD,) if tracker is None else (HELD, tracker)
    try:
        first = reader._take()
        if first is None:
            return b"", 0
        crc = zlib.crc32(first)
        if reader.end is not None and reader.end - reader.start == len(first):
            return first, crc
        assert reader.end is not None  # known once the first block is back
        size = reader.end - reader.start
        buf = bytearray(size)
        for t in trackers:
            t.add(size)
        try:
            buf[:len(first)] = first
            at = len(first)
            del first
            while (block := reader._take()) is not None:
                crc = zlib.crc32(block, crc)
                buf[at:at + len(block)] = block
                at += len(block)
        finally:
            for t in trackers:
                t.add(-size)
        if at != size:  # the size was stated, then fewer blocks came: cannot happen short of a bug
            raise StoreError(f"read {at} bytes of an object of {size}", key=reader.key, store=reader.store.url)
        return buf, crc
    finally:
        reader.close()


class ObjectScan:
    """Groups of whole objects read in order through :class:`BlockReader` s: a dataset scan, each
    group the chunk files (one per column) of one chunk.

    ``ObjectScan(store, groups, block_size=None, prefetch=None, lookahead=1)``; ``groups[p]`` is
    the keys of position ``p``. :meth:`read` ``(p)`` returns ``[(buffer, crc32), ...]`` for the keys
    of group ``p``, in order, and starts the reads of groups ``p+1 .. p+lookahead`` before it
    assembles group ``p``, so the next chunk's first blocks are on their way (``aio_read`` on
    Ceph, a ranged GET on the prefetch pool elsewhere) while the caller decodes this one. No stat
    comes first (readers probe, :class:`BlockReader` ``stat=False``): a chunk file no longer than
    a block costs one request.

    Memory, whatever the dataset: the group being assembled, plus, for at most ``lookahead + 1``
    groups (more only while several threads read at once), ``prefetch + 1`` blocks per object.
    :attr:`held` counts these bytes (``held.peak``). Groups may be read in any order, from several
    threads (a group already read is not started ahead again; read twice, it is read again).
    :meth:`close` drops what is in flight.
    """

    def __init__(self, store: Store, groups: list[tuple[str, ...]] | tuple[tuple[str, ...], ...],
                 block_size: int | None = None, prefetch: int | None = None, *,
                 lookahead: int = DEFAULT_LOOKAHEAD) -> None:
        if lookahead < 0:
            raise StoreUsageError(f"lookahead must be >= 0, got {lookahead}", store=store.url)
        self.store = store
        self.groups = [tuple(g) for g in groups]
        for g in self.groups:
            for k in g:
                validate_key(k)
        self.block_size, self.prefetch = _configured(block_size, prefetch)
        self.lookahead = lookahead
        self.held = HeldBytes()
        self.objects_read = 0
        self.blocks_read = 0
        self._lock = threading.Lock()
        self._started: dict[int, list[BlockReader]] = {}
        self._done: set[int] = set()  # positions read: not started ahead again
        self._closed = False

    def _start(self, p: int) -> list[BlockReader]:
        readers: list[BlockReader] = []
        try:
            for k in self.groups[p]:
                readers.append(BlockReader(self.store, k, self.block_size, self.prefetch, stat=False,
                                           tracker=self.held))
        except BaseException:
            for r in readers:
                r.close()
            raise
        return readers

    def read(self, p: int) -> list[tuple[bytes | bytearray, int]]:
        """The objects of group ``p`` with their CRC-32s (the store's error, naming the key, when
        one is missing or unreadable)."""
        if not 0 <= p < len(self.groups):
            raise IndexError(f"scan position {p} out of range (0..{len(self.groups) - 1})")
        with self._lock:
            if self._closed:
                raise StoreUsageError("object scan is closed", store=self.store.url)
            readers = self._started.pop(p, None)
            if readers is None:
                readers = self._start(p)
            self._done.add(p)
            for q in range(p + 1, min(len(self.groups), p + 1 + self.lookahead)):
                if q not in self._started and q not in self._done:
                    self._started[q] = self._start(q)
        out: list[tuple[bytes | bytearray, int]] = []
        try:
            for r in readers:
                out.append(read_object(r, self.held))
        finally:
            for r in readers:
                r.close()
        with self._lock:
            self.objects_read += len(readers)
            self.blocks_read += sum(r.blocks_read for r in readers)
        return out

    def close(self) -> None:
        """Drop the reads started ahead (idempotent)."""
        with self._lock:
            self._closed = True
            started, self._started = self._started, {}
        for readers in started.values():
            for r in readers:
                r.close()

    def __enter__(self) -> ObjectScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
