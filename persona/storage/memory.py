"""MemoryStore: objects in a dict in this process (tests, scratch datasets, fused pipelines).

``MemoryStore("x")`` and ``open_store("memory://x")`` name a process-wide
bucket: every store opened with the same name sees the same objects, the way
two opens of one directory do. ``MemoryStore()`` is a private anonymous bucket.
Data lives until :meth:`MemoryStore.drop` is called for the name.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from typing import Any

from persona.storage.base import Store, StoreUsageError, validate_key

__all__ = ["MemoryStore"]


class _Bucket:
    """The shared state behind every MemoryStore of one name."""

    __slots__ = ("lock", "objects")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, bytes] = {}


_buckets: dict[str, _Bucket] = {}
_buckets_lock = threading.Lock()
_anonymous = itertools.count()


class MemoryStore(Store):
    """A bucket of immutable ``bytes`` under one lock; puts copy their input.

    Names are non-empty and contain no ``/`` (a path after the name in a URL
    selects a child store instead).
    """

    cheap_copy = True

    def __init__(self, name: str | None = None, *, read_only: bool = False) -> None:
        if name is None:
            self.name = f"anonymous-{next(_anonymous)}"
            self._bucket = _Bucket()  # not registered: private to this object
        else:
            if not name or "/" in name:
                raise StoreUsageError(f"bad memory store name {name!r}")
            self.name = name
            with _buckets_lock:
                self._bucket = _buckets.setdefault(name, _Bucket())
        if read_only:
            self.supports_writes = False
            self.supports_deletes = False

    @property
    def url(self) -> str:
        return f"memory://{self.name}"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Store:
        """``memory://name`` or ``memory://name/prefix`` (a child store of bucket ``name``)."""
        rest = url[len("memory://") :] if url.startswith("memory://") else url
        name, _, prefix = rest.partition("/")
        if not name:
            raise StoreUsageError("memory store URL needs a name: memory://<name>", store=url)
        store = cls(name, **options)
        prefix = prefix.rstrip("/")
        return store.child(validate_key(prefix)) if prefix else store

    @staticmethod
    def drop(name: str) -> None:
        """Forget the named bucket (its data goes once no open store refers to it)."""
        with _buckets_lock:
            _buckets.pop(name, None)

    def _get(self, key: str) -> bytes:
        with self._bucket.lock:
            return self._bucket.objects[key]  # bytes are immutable: no copy needed

    def _get_range(self, key: str, start: int, length: int | None) -> bytes:
        with self._bucket.lock:
            data = self._bucket.objects[key]
        return data[start:] if length is None else data[start : start + length]

    def _put(self, key: str, data: memoryview) -> None:
        copy = data.tobytes()  # the caller may reuse its buffer; copy outside the lock
        with self._bucket.lock:
            self._bucket.objects[key] = copy

    def _put_if_absent(self, key: str, data: memoryview) -> bool:
        copy = data.tobytes()
        with self._bucket.lock:
            if key in self._bucket.objects:
                return False
            self._bucket.objects[key] = copy
            return True

    def _copy(self, src: str, dst: str) -> None:
        with self._bucket.lock:
            self._bucket.objects[dst] = self._bucket.objects[src]

    def _exists(self, key: str) -> bool:
        with self._bucket.lock:
            return key in self._bucket.objects

    def _delete(self, key: str) -> None:
        with self._bucket.lock:
            del self._bucket.objects[key]

    def _list(self, prefix: str) -> Iterable[str]:
        with self._bucket.lock:
            return [k for k in self._bucket.objects if k.startswith(prefix)]

    def _size(self, key: str) -> int:
        with self._bucket.lock:
            return len(self._bucket.objects[key])
