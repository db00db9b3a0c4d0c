"""Bounded resource pools (thesis §5.4.1 buffer pools).

A :class:`ResourcePool` owns at most ``size`` objects made by ``factory``;
:meth:`ResourcePool.acquire` hands one out wrapped in a :class:`PooledResource`
that knows its pool, so a release always returns it to the pool it came from.
``acquire`` blocks while all are out, which is what bounds memory whatever the
dataset size. :class:`Buffer` is a growable byte buffer whose capacity
survives :meth:`Buffer.clear`, so a recycled buffer does not reallocate.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

from persona.errors import PipelineError

T = TypeVar("T")


class Buffer:
    """A growable uint8 buffer: ``view()`` is the filled part; capacity only grows."""

    __slots__ = ("_data", "size")

    def __init__(self, capacity: int = 0) -> None:
        self._data = np.empty(capacity, dtype=np.uint8)
        self.size = 0

    @property
    def capacity(self) -> int:
        return int(self._data.shape[0])

    def reserve(self, n: int) -> None:
        """Make room for ``n`` bytes in total, keeping the content."""
        if n > self._data.shape[0]:
            new = np.empty(max(n, 2 * self._data.shape[0]), dtype=np.uint8)
            new[: self.size] = self._data[: self.size]
            self._data = new

    def extend(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append bytes."""
        arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        n = self.size + arr.shape[0]
        self.reserve(n)
        self._data[self.size:n] = arr
        self.size = n

    def view(self) -> np.ndarray:
        """The filled bytes (a view, no copy)."""
        return self._data[: self.size]

    def clear(self) -> None:
        """Empty the buffer; its capacity is kept for reuse."""
        self.size = 0


class PooledResource(Generic[T]):
    """One object lent by a pool. Release it (or use ``with``) exactly once."""

    __slots__ = ("value", "pool", "_released")

    def __init__(self, value: T, pool: ResourcePool[T]) -> None:
        self.value = value
        self.pool = pool
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Return the object to the pool it came from."""
        if self._released:
            raise PipelineError("resource released twice", pool=self.pool.name)
        self._released = True
        self.pool._put(self.value)

    def __enter__(self) -> T:
        return self.value

    def __exit__(self, *exc: object) -> None:
        self.release()


class ResourcePool(Generic[T]):
    """At most ``size`` objects, created lazily by ``factory``; ``reset`` runs on release."""

    def __init__(self, factory: Callable[[], T], size: int, *, name: str = "pool",
                 reset: Callable[[T], None] | None = None) -> None:
        if size < 1:
            raise ValueError(f"pool {name!r}: size must be >= 1, got {size}")
        self.name = name
        self.size = size
        self._factory = factory
        self._reset = reset
        self._free: list[T] = []
        self._created = 0
        self._cond = threading.Condition()
        self.waits = 0

    def acquire(self, timeout: float | None = None) -> PooledResource[T]:
        """Take a free object (or create one while fewer than ``size`` exist); blocks otherwise."""
        with self._cond:
            if not self._free and self._created >= self.size:
                self.waits += 1
                if not self._cond.wait_for(lambda: bool(self._free), timeout):
                    raise PipelineError("timed out waiting for a pooled resource",
                                        pool=self.name, size=self.size)
            if self._free:
                return PooledResource(self._free.pop(), self)
            self._created += 1
        try:
            return PooledResource(self._factory(), self)
        except BaseException:
            with self._cond:
                self._created -= 1
                self._cond.notify()
            raise

    def _put(self, value: T) -> None:
        if self._reset is not None:
            self._reset(value)
        with self._cond:
            self._free.append(value)
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        """``size``, ``created``, ``free``, ``in_use``, ``waits`` (for metrics)."""
        with self._cond:
            return {"size": self.size, "created": self._created, "free": len(self._free),
                    "in_use": self._created - len(self._free), "waits": self.waits}


def dispose(payload: object) -> int:
    """Release every not-yet-released :class:`PooledResource` inside a dead feed's payload
    (looking into lists, tuples and dict values). The runtime calls this for feeds of
    failed or cancelled batches, so pools do not leak. Returns how many were released."""
    if isinstance(payload, PooledResource):
        if payload.released:
            return 0
        payload.release()
        return 1
    if isinstance(payload, (list, tuple)):
        return sum(dispose(p) for p in payload)
    if isinstance(payload, dict):
        return sum(dispose(p) for p in payload.values())
    return 0


def buffer_pool(size: int, capacity: int = 0, name: str = "buffers") -> ResourcePool[Buffer]:
    """A pool of :class:`Buffer` objects, cleared (capacity kept) when released."""
    return ResourcePool(lambda: Buffer(capacity), size, name=name, reset=Buffer.clear)
