"""The aligner executor (thesis §5.4.2, Figure 5.4): one thread pool per process.

Every align stage of every concurrent request hands its chunks to the same
:class:`AlignerExecutor`. A chunk (sized for I/O) is split into work items of
``work_item_reads`` reads (sized for computation); the pool's threads take
work items first come, first served from one queue, and the chunk's
:class:`ChunkJob` gathers their results in input order. The stage blocks on
the job only once per chunk, so a single stage replica keeps every aligner
thread busy, and the compute size bounds load imbalance whatever the chunk
size.

Contracts:

- Work items never straddle a pair: for paired input the item size is rounded
  up to an even number of reads.
- A failing work item fails its chunk (the job raises the first error, naming
  the chunk); the other items of that chunk are skipped, other chunks go on.
- :func:`shared_executor` returns the process-wide executor; it is created on
  first use with one thread per core unless told otherwise, and lives as long
  as the process (daemon threads; :meth:`AlignerExecutor.close` for tests).
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

from persona.agd.ragged import RaggedArray
from persona.align.base import Aligner, AlignResult
from persona.errors import AlignerError, PersonaError

#: reads per work item unless the caller says otherwise (the original used 5000 for SNAP)
DEFAULT_WORK_ITEM_READS = 512


class ChunkJob:
    """Results of one chunk being aligned; :meth:`result` blocks until every work item is done."""

    def __init__(self, n_items: int, key: str | None) -> None:
        self.key = key
        self._parts: list[AlignResult | None] = [None] * n_items
        self._left = n_items
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        if n_items == 0:
            self._done.set()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _finish(self, i: int, part: AlignResult | None, error: BaseException | None) -> None:
        with self._lock:
            if error is not None and self._error is None:
                self._error = error
            self._parts[i] = part
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> AlignResult:
        """The chunk's results in input order; raises the first work item's error."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"alignment of chunk {self.key} not done after {timeout} s")
        if self._error is not None:
            err = self._error
            if isinstance(err, PersonaError):
                raise err
            raise AlignerError(f"aligner failed: {err!r}", key=self.key) from err
        return AlignResult.concat([p for p in self._parts if p is not None])


class AlignerExecutor:
    """A pool of ``threads`` aligner threads fed from one FIFO queue of work items."""

    def __init__(self, threads: int = 0, *, name: str = "aligner") -> None:
        self.threads = threads if threads > 0 else (os.cpu_count() or 1)
        self._queue: queue.SimpleQueue[tuple[Callable[[], AlignResult], ChunkJob, int] | None] = queue.SimpleQueue()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(self.threads)
        ]
        for t in self._workers:
            t.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, job, i = item
            if job.failed:  # a sibling work item failed: do not waste time on this chunk
                job._finish(i, None, None)
                continue
            try:
                part = fn()
            except BaseException as e:  # noqa: BLE001 - reported through the job, the thread lives on
                job._finish(i, None, e)
            else:
                job._finish(i, part, None)

    def submit(self, aligner: Aligner, bases: RaggedArray, quals: RaggedArray | None = None,
               names: RaggedArray | None = None, *, paired: bool = False,
               work_item_reads: int = DEFAULT_WORK_ITEM_READS, key: str | None = None) -> ChunkJob:
        """Split one chunk into work items and queue them; returns the chunk's job at once."""
        if self._closed:
            raise AlignerError("the aligner executor is closed", key=key)
        if work_item_reads <= 0:
            raise AlignerError(f"work_item_reads must be > 0, got {work_item_reads}", key=key)
        n = len(bases)
        if quals is not None and len(quals) != n:
            raise AlignerError(f"{n} base records but {len(quals)} quality records", key=key)
        if names is not None and len(names) != n:
            raise AlignerError(f"{n} base records but {len(names)} name records", key=key)
        if paired and n % 2:
            raise AlignerError(f"paired chunk has an odd number of reads ({n})", key=key)
        step = work_item_reads + (work_item_reads % 2 if paired else 0)
        starts = list(range(0, n, step)) or [0]  # an empty chunk is one empty work item
        job = ChunkJob(len(starts), key)
        for i, lo in enumerate(starts):
            hi = min(lo + step, n)
            self._queue.put((_work_item(aligner, bases, quals, names, lo, hi, paired), job, i))
        return job

    def align(self, aligner: Aligner, bases: RaggedArray, quals: RaggedArray | None = None,
              names: RaggedArray | None = None, *, paired: bool = False,
              work_item_reads: int = DEFAULT_WORK_ITEM_READS, key: str | None = None) -> AlignResult:
        """:meth:`submit` and wait: what an align stage calls once per chunk."""
        return self.submit(aligner, bases, quals, names, paired=paired,
                           work_item_reads=work_item_reads, key=key).result()

    def close(self) -> None:
        """Stop the threads after the queued work items; idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join()


def _work_item(aligner: Aligner, bases: RaggedArray, quals: RaggedArray | None, names: RaggedArray | None,
               lo: int, hi: int, paired: bool) -> Callable[[], AlignResult]:
    # slices are taken in the aligner thread, so the submitting stage returns at once
    def run() -> AlignResult:
        b = bases.slice(lo, hi)
        q = quals.slice(lo, hi) if quals is not None else None
        nm = names.slice(lo, hi) if names is not None else None
        return aligner.align(b, q, nm, paired=paired)

    return run


_shared: dict[int, AlignerExecutor] = {}
_shared_lock = threading.Lock()


def shared_executor(threads: int = 0) -> AlignerExecutor:
    """The process-wide executor with ``threads`` threads (0: one per core), created on first use.

    Every caller asking for the same size gets the same pool, so all align
    stages and requests of a process share it.
    """
    n = threads if threads > 0 else (os.cpu_count() or 1)
    with _shared_lock:
        ex = _shared.get(n)
        if ex is None or ex._closed:
            ex = _shared[n] = AlignerExecutor(n)
        return ex
