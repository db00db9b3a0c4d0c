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
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from persona.errors import StoreError
from persona.storage.base import PrefixStore, Store, StoreUsageError, validate_key

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_PREFETCH", "PREFETCH_THREADS", "BlockReader", "iter_objects"]

DEFAULT_BLOCK_SIZE = 4 << 20
DEFAULT_PREFETCH = 2
#: threads of the shared pool that runs reads on stores without native asynchronous reads
PREFETCH_THREADS = 8

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


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

    One ``size`` call (a stat) happens at construction when ``length`` is None.
    """

    def __init__(self, store: Store, key: str, block_size: int | None = None,
                 prefetch: int | None = None, *, start: int = 0, length: int | None = None) -> None:
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
        end = store.size(key) if length is None else start + length
        if length is None:
            end = max(end, start)
        self.start, self.end = start, end
        self._next = start  # offset of the next block to request
        self._pending: deque[tuple[int, int, Future[bytes]]] = deque()
        self._cur = memoryview(b"")  # read(): what is left of the current block
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
    def _fill(self) -> None:
        while not self._closed and len(self._pending) < self.prefetch and self._next < self.end:
            length = min(self.block_size, self.end - self._next)
            self._pending.append((self._next, length, read_async(self.store, self.key, self._next, length)))
            self._next += length
        held = len(self._pending) + (1 if len(self._cur) else 0)
        self.peak_blocks = max(self.peak_blocks, held)

    def _take(self) -> bytes | None:
        if self._closed:
            raise StoreUsageError("block reader is closed", key=self.key, store=self.store.url)
        if not self._pending:
            return None
        offset, length, fut = self._pending.popleft()
        data = fut.result()  # the store's error, naming key and URL
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
        for _, _, fut in self._pending:
            fut.cancel()
        self._pending.clear()
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
