"""BGZF writer: blocked gzip (SAM spec §4.1), compressed on a thread pool.

A BGZF file is a series of gzip members ("blocks"), each holding at most
64 KiB of input, with a ``BC`` extra field giving the compressed block size,
followed by a fixed 28-byte empty block that marks the end of file. Any gzip
reader can read it; htslib/pysam can also seek in it.

Compression is the slow part of writing BAM, so blocks are deflated on a
thread pool: CPython's ``zlib`` releases the GIL while it compresses and while
it computes CRC32, so N threads use N cores. Blocks are submitted in groups
(one pool task per ~0.5 MiB of input) to keep per-task overhead small, and
written in submission order, so the output is identical whatever the thread
count. The number of groups in flight is bounded, so memory stays bounded.

Deflate backend: libdeflate (the library htslib/samtools use; about 2x faster
than zlib at the same level) when the system has ``libdeflate.so.0``, called
through ``ctypes`` (which also releases the GIL); otherwise CPython's ``zlib``.
Set ``PERSONA_BGZF_DEFLATE=zlib`` to force zlib. Both produce valid raw
deflate streams; the bytes differ, the decompressed content does not.
"""
from __future__ import annotations

import collections
import ctypes
import ctypes.util
import os
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

# Input bytes per block. htslib uses 0xff00 (not 0x10000) so that even
# incompressible input, stored raw with deflate's per-block overhead, fits the
# 16-bit BSIZE field.
BLOCK_INPUT_SIZE = 0xFF00
MAX_BLOCK_SIZE = 0x10000
BLOCKS_PER_TASK = 8
# The standard BGZF end-of-file marker: an empty block (SAM spec §4.1.2).
EOF_BLOCK = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

_HEADER = struct.Struct("<4BI2BH2BHH")  # ID1 ID2 CM FLG MTIME XFL OS XLEN SI1 SI2 SLEN BSIZE
_TRAILER = struct.Struct("<II")  # CRC32 ISIZE


_MAX_CDATA = MAX_BLOCK_SIZE - _HEADER.size - _TRAILER.size


class _LibDeflate:
    """Thin ctypes binding of libdeflate's one-shot deflate and CRC32 (thread-safe per thread)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.libdeflate_alloc_compressor.restype = ctypes.c_void_p
        lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
        lib.libdeflate_free_compressor.restype = None
        lib.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
        lib.libdeflate_deflate_compress.restype = ctypes.c_size_t
        lib.libdeflate_deflate_compress.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
        lib.libdeflate_crc32.restype = ctypes.c_uint32
        lib.libdeflate_crc32.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
        self.lib = lib
        self._local = threading.local()

    def _state(self, level: int) -> "_CompressorState":
        # A libdeflate compressor must not be shared between threads: one per (thread, level).
        states = getattr(self._local, "states", None)
        if states is None:
            states = self._local.states = {}
        st = states.get(level)
        if st is None:
            st = states[level] = _CompressorState(self.lib, level)
        return st

    def deflate(self, data: bytes, level: int) -> bytes | None:
        """Raw deflate of ``data``, or None if it does not fit in one BGZF block."""
        st = self._state(level)
        n = self.lib.libdeflate_deflate_compress(st.handle, data, len(data), st.out, _MAX_CDATA)
        return ctypes.string_at(st.out, n) if n else None

    def crc32(self, data: bytes) -> int:
        return int(self.lib.libdeflate_crc32(0, data, len(data)))


class _CompressorState:
    def __init__(self, lib: ctypes.CDLL, level: int) -> None:
        self.lib = lib
        self.handle = lib.libdeflate_alloc_compressor(level)
        if not self.handle:
            raise MemoryError(f"libdeflate could not allocate a level-{level} compressor")
        self.out = ctypes.create_string_buffer(_MAX_CDATA)

    def __del__(self) -> None:  # runs when the owning thread's locals go away
        if getattr(self, "handle", None):
            self.lib.libdeflate_free_compressor(self.handle)
            self.handle = None


def _load_libdeflate() -> _LibDeflate | None:
    if os.environ.get("PERSONA_BGZF_DEFLATE", "").lower() == "zlib":
        return None
    for name in ("libdeflate.so.0", ctypes.util.find_library("deflate")):
        if not name:
            continue
        try:
            return _LibDeflate(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
    return None


_LIBDEFLATE = _load_libdeflate()
#: The deflate implementation BGZF blocks are compressed with by default.
DEFAULT_BACKEND = "libdeflate" if _LIBDEFLATE is not None else "zlib"
BACKENDS = ("libdeflate", "zlib") if _LIBDEFLATE is not None else ("zlib",)


def compress_block(data: bytes, level: int = 6, backend: str | None = None) -> bytes:
    """One complete BGZF block holding ``data`` (at most :data:`BLOCK_INPUT_SIZE` bytes)."""
    if len(data) > BLOCK_INPUT_SIZE:
        raise ValueError(f"BGZF block input of {len(data)} bytes exceeds {BLOCK_INPUT_SIZE}")
    backend = backend or DEFAULT_BACKEND
    cdata: bytes | None
    if backend == "libdeflate":
        if _LIBDEFLATE is None:
            raise ValueError("libdeflate is not available on this system")
        cdata = _LIBDEFLATE.deflate(data, level)
        crc = _LIBDEFLATE.crc32(data)
    elif backend == "zlib":
        cdata = zlib.compress(data, level, wbits=-15)
        crc = zlib.crc32(data)
    else:
        raise ValueError(f"unknown deflate backend {backend!r}; choose from {BACKENDS}")
    if cdata is None or len(cdata) > _MAX_CDATA:
        # Incompressible input: store it (deflate level 0 always fits, see BLOCK_INPUT_SIZE).
        cdata = zlib.compress(data, 0, wbits=-15)
    bsize = len(cdata) + _HEADER.size + _TRAILER.size - 1
    header = _HEADER.pack(31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, bsize)
    return b"".join((header, cdata, _TRAILER.pack(crc, len(data))))


def compress_blocks(data: bytes | bytearray | memoryview, level: int = 6, backend: str | None = None) -> bytes:
    """``data`` as consecutive BGZF blocks (cut every :data:`BLOCK_INPUT_SIZE` bytes; the last one
    short); no EOF marker. Releases the GIL while deflating, so several threads use several cores."""
    mv = memoryview(data).cast("B")
    return b"".join([compress_block(bytes(mv[i : i + BLOCK_INPUT_SIZE]), level, backend)
                     for i in range(0, len(mv), BLOCK_INPUT_SIZE)])


def _compress_blocks(blocks: list[bytes], level: int, backend: str) -> bytes:
    return b"".join([compress_block(b, level, backend) for b in blocks])


class BgzfWriter:
    """Write a BGZF stream to a path or a binary file object.

    ``level`` is the zlib level (0-9; 6 is the zlib and samtools default).
    ``threads`` is the number of compression threads, as samtools ``-@``:
    0 compresses in the calling thread. Call :meth:`close` (or use ``with``)
    to drain the pool and append the EOF block; ``backend`` picks the deflate
    implementation (default :data:`DEFAULT_BACKEND`); a file object passed in is
    left open, a path is closed. On an exception inside ``with``, the pool is
    stopped and no EOF block is written, so the result is visibly incomplete.
    """

    def __init__(
        self,
        out: str | os.PathLike[str] | BinaryIO,
        *,
        level: int = 6,
        threads: int = 0,
        backend: str | None = None,
    ) -> None:
        self.backend = backend or DEFAULT_BACKEND
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown or unavailable deflate backend {self.backend!r}; choose from {BACKENDS}")
        if not 0 <= level <= 9:
            raise ValueError(f"compression level must be 0..9, got {level}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        if isinstance(out, (str, os.PathLike)):
            self._file: BinaryIO = open(Path(out), "wb")
            self._owns_file = True
        else:
            self._file = out
            self._owns_file = False
        self.level = level
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="bgzf") if threads > 0 else None
        self._max_inflight = 2 * threads + 1
        self._inflight: collections.deque[Future[bytes]] = collections.deque()
        self._pending = bytearray()
        self._batch: list[bytes] = []
        self._closed = False
        self.bytes_in = 0
        self.bytes_out = 0

    # -- writing -------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append uncompressed bytes (any buffer; copied, so the caller may reuse it)."""
        if self._closed:
            raise ValueError("write to a closed BgzfWriter")
        mv = memoryview(data).cast("B")
        self.bytes_in += len(mv)
        pos = 0
        if self._pending:
            take = min(BLOCK_INPUT_SIZE - len(self._pending), len(mv))
            self._pending += mv[:take]
            pos = take
            if len(self._pending) < BLOCK_INPUT_SIZE:
                return
            self._add_block(bytes(self._pending))
            self._pending.clear()
        end = len(mv)
        while end - pos >= BLOCK_INPUT_SIZE:
            self._add_block(bytes(mv[pos : pos + BLOCK_INPUT_SIZE]))
            pos += BLOCK_INPUT_SIZE
        if pos < end:
            self._pending += mv[pos:end]

    def flush(self) -> None:
        """End the current block (even if short) and write out everything compressed so far."""
        if self._pending:
            self._add_block(bytes(self._pending))
            self._pending.clear()
        self._submit_batch()
        while self._inflight:
            self._write_out(self._inflight.popleft().result())
        self._file.flush()

    def close(self) -> None:
        """Flush, append the EOF block, stop the pool; idempotent."""
        if self._closed:
            return
        try:
            self.flush()
            self._write_out(EOF_BLOCK)
            self._file.flush()
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Stop the pool and release the file without the EOF block (on errors)."""
        if not self._closed:
            self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> "BgzfWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals -------------------------------------------------------------
    def _add_block(self, block: bytes) -> None:
        self._batch.append(block)
        if len(self._batch) >= BLOCKS_PER_TASK:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        if self._pool is None:
            self._write_out(_compress_blocks(batch, self.level, self.backend))
            return
        self._inflight.append(self._pool.submit(_compress_blocks, batch, self.level, self.backend))
        # Bound memory: wait for the oldest group once enough are queued.
        while len(self._inflight) > self._max_inflight:
            self._write_out(self._inflight.popleft().result())

    def _write_out(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes_out += len(data)
