"""The one storage interface every Persona backend implements.

A :class:`Store` is a flat map from *keys* to immutable byte objects. Keys are
``/``-separated relative names (``yeast/yeast_0.base``); a backend maps them to
files, RADOS objects or S3 objects. The public methods below validate keys and
arguments once, here, and then call the backend's underscore hooks, so every
backend enforces the same rules and raises the same errors:

* a missing key raises :class:`~persona.errors.StoreKeyError` naming the key
  and the store URL;
* a malformed key raises :class:`InvalidKeyError`;
* misuse (closed store, write to a read-only store, negative range) raises
  :class:`StoreUsageError`;
* an I/O failure raises :class:`~persona.errors.StoreError` (transient).

Writes are atomic: a reader sees either the old object or the new one, never
a torn mix. Backends are thread-safe: one store may be shared by every stage
thread of a pipeline.
"""
from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, Self

from persona import counters
from persona.errors import StoreError, StoreKeyError

__all__ = [
    "InvalidKeyError",
    "PrefixStore",
    "Store",
    "StoreUsageError",
    "as_buffer",
    "join_key",
    "validate_key",
    "validate_prefix",
]

Buffer = bytes | bytearray | memoryview | Any  # anything exposing the buffer protocol


class StoreUsageError(StoreError, ValueError):
    """The store cannot do this at all (closed, read-only, bad argument); retrying will not help."""

    transient = False


class InvalidKeyError(StoreUsageError):
    """A key is not a canonical relative ``/``-separated name, or escapes the store."""


def validate_key(key: object) -> str:
    """Return ``key`` if it is a canonical store key, else raise :class:`InvalidKeyError`.

    A canonical key is a non-empty ``str`` of ``/``-separated components, each
    non-empty and neither ``.`` nor ``..``, with no backslash and no NUL. So a
    key can never be absolute, climb out of its store, or alias another key
    (``a//b`` and ``a/./b`` would both name ``a/b`` on a file system).
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"store key must be str, got {type(key).__name__}", key=repr(key))
    if not key:
        raise InvalidKeyError("store key is empty")
    if "\\" in key or "\x00" in key:
        raise InvalidKeyError("store key contains a backslash or NUL", key=repr(key))
    if key.startswith("/"):
        raise InvalidKeyError("store key must be relative", key=key)
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKeyError(f"store key has an invalid component {part!r}", key=key)
    return key


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it may start a key: ``""``, a key, or a key followed by ``/``."""
    if prefix == "":
        return ""
    if isinstance(prefix, str) and prefix.endswith("/"):
        validate_key(prefix[:-1])
        return prefix
    validate_key(prefix)
    assert isinstance(prefix, str)
    return prefix


def join_key(prefix: str, key: str) -> str:
    """``prefix/key``, or ``key`` when ``prefix`` is empty."""
    return f"{prefix}/{key}" if prefix else key


def as_buffer(data: object) -> memoryview:
    """A flat, contiguous byte view of ``data`` (bytes, bytearray, memoryview, numpy array).

    ``str`` is refused rather than silently encoded: chunk files are binary.
    """
    if isinstance(data, str):
        raise TypeError("store values are bytes-like, not str; encode first")
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"store values must support the buffer protocol, got {type(data).__name__}") from None
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


class Store(ABC):
    """A thread-safe map from keys to byte objects; see the module docstring for the rules.

    Backends subclass this, set the capability flags, implement the abstract
    underscore hooks (which receive already-validated keys) and a
    :meth:`from_url` classmethod used by :func:`persona.storage.open_store`.
    Hooks signal a missing key by raising :class:`FileNotFoundError` or
    :class:`KeyError`; the public methods turn that into
    :class:`~persona.errors.StoreKeyError`.
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True
    supports_partial_reads: bool = True  # get_range reads only the range, not the whole object
    cheap_copy: bool = False  # copy() moves no bytes (hard link, shared buffer)
    #: a read is a network round trip (Ceph, S3): scans read lazily, a few blocks ahead
    #: (:class:`~persona.storage.lazy.ObjectScan`) rather than one whole object at a time
    remote: bool = False
    #: bytes and I/O errors are counted in :mod:`persona.counters` (metrics); False for views of
    #: another store, whose parent counts them
    counts_io: bool = True

    _closed: bool = False

    @property
    def scheme(self) -> str:
        """The URL scheme (``file``, ``memory``, ``ceph``, ``s3``, ...)."""
        url = self.url
        return url.split("://", 1)[0] if "://" in url else "file"

    # ----------------------------------------------------------------- identity
    @property
    @abstractmethod
    def url(self) -> str:
        """A URL that :func:`~persona.storage.open_store` maps back to this store's data."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Store:
        """Open the store a URL of this backend's scheme names; options are backend-specific."""
        raise NotImplementedError(f"{cls.__name__} cannot be opened from a URL")

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self.url}{state}>"

    # ------------------------------------------------------------- public API
    def get(self, key: str) -> bytes:
        """The whole object stored under ``key``."""
        self._check_open()
        validate_key(key)
        with self._translate(key):
            data = self._get(key)
        if self.counts_io:
            counters.add("store_bytes", (self.scheme, "read"), len(data))
        return data

    def get_range(self, key: str, start: int, length: int | None = None) -> bytes:
        """Bytes ``[start, start+length)`` of the object (to its end when ``length`` is None).

        Like a file read, the result is shorter when the object ends first, and
        empty when ``start`` is at or past the end.
        """
        self._check_open()
        validate_key(key)
        if start < 0 or (length is not None and length < 0):
            raise StoreUsageError(f"bad range start={start} length={length}", key=key, store=self.url)
        if length == 0:
            # Still report a missing key, as any other read would.
            if not self.exists(key):
                raise self._missing(key)
            return b""
        with self._translate(key):
            data = self._get_range(key, start, length)
        if self.counts_io:
            counters.add("store_bytes", (self.scheme, "read"), len(data))
        return data

    def put(self, key: str, data: Buffer) -> None:
        """Store ``data`` under ``key`` atomically, replacing any previous object."""
        self._check_open()
        validate_key(key)
        if not self.supports_writes:
            raise StoreUsageError("store is read-only", key=key, store=self.url)
        buf = as_buffer(data)
        with self._translate(key, writing=True):
            self._put(key, buf)
        if self.counts_io:
            counters.add("store_bytes", (self.scheme, "write"), memoryview(buf).nbytes)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        """Store ``data`` under ``key`` only if no object is there (an atomic exclusive create).

        Returns True if this call created the object, False if one already existed
        (which is left untouched). Writer claims and manifest generations are built on it.
        """
        self._check_open()
        validate_key(key)
        if not self.supports_writes:
            raise StoreUsageError("store is read-only", key=key, store=self.url)
        buf = as_buffer(data)
        with self._translate(key, writing=True):
            return self._put_if_absent(key, buf)

    def copy(self, src: str, dst: str) -> None:
        """Make ``dst`` an object with the content of ``src`` (replacing ``dst``); backends
        may do it without moving the bytes (a hard link, a server-side copy)."""
        self._check_open()
        validate_key(src)
        validate_key(dst)
        if not self.supports_writes:
            raise StoreUsageError("store is read-only", key=dst, store=self.url)
        with self._translate(src):
            self._copy(src, dst)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        self._check_open()
        validate_key(key)
        with self._translate(key):
            return self._exists(key)

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; raises StoreKeyError if there is none."""
        self._check_open()
        validate_key(key)
        if not self.supports_deletes:
            raise StoreUsageError("store does not support deletes", key=key, store=self.url)
        with self._translate(key):
            self._delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix`` (a plain string prefix), in sorted order.

        ``prefix`` ``"ds/"`` lists the keys under ``ds``; ``"ds/yeast_"`` also
        matches by name start, which is how a dataset's chunk files are found.
        """
        self._check_open()
        validate_prefix(prefix)
        if not self.supports_listing:
            raise StoreUsageError("store does not support listing", store=self.url)
        with self._translate(prefix):
            keys = sorted(self._list(prefix))
        return iter(keys)

    def remove_temporaries(self, prefix: str = "", *, match: Callable[[str], bool] | None = None,
                           min_age: float = 0.0) -> list[str]:
        """Remove the partial objects a writer killed mid-put left behind; returns their keys.

        A put never shows a partial object under its key, but a backend that stages one (a
        ``file://`` store writes a hidden temporary file, then renames it) keeps the staged bytes
        when the writer dies. This removes those of keys under ``prefix`` (and, with ``match``,
        for which ``match(key)`` holds) that are at least ``min_age`` seconds old. Only call it
        where no live writer can be putting such a key (under the writer claim, or with a
        ``min_age`` no put lasts), as a live put then fails. Backends whose puts are atomic
        (RADOS, S3, memory) stage nothing: no-op.
        """
        self._check_open()
        validate_prefix(prefix)
        if not self.supports_deletes:
            return []
        return self._remove_temporaries(prefix, match, min_age)

    def size(self, key: str) -> int:
        """Length in bytes of the object under ``key``."""
        self._check_open()
        validate_key(key)
        with self._translate(key):
            return self._size(key)

    def path_of(self, key: str) -> str | None:
        """The local file path where ``key`` is (or would be) stored, or None if the backend has none.

        Lets readers mmap chunk files instead of copying them. The file need not exist.
        """
        self._check_open()
        validate_key(key)
        return self._path_of(key)

    def open_file(self, key: str) -> BinaryIO:
        """A readable binary file object for ``key``: the real file where there is one, else a buffer."""
        self._check_open()
        validate_key(key)
        with self._translate(key):
            path = self._path_of(key)
            if path is not None:
                if not os.path.isfile(path):  # a "directory" of keys is not an object either
                    raise self._missing(key)
                return open(path, "rb")  # noqa: SIM115 - the caller owns it
            return io.BytesIO(self._get(key))

    def child(self, prefix: str) -> Store:
        """A store whose keys are this store's keys under ``prefix/`` (shares data, not lifetime)."""
        self._check_open()
        validate_key(prefix)
        return PrefixStore(self, prefix)

    # --------------------------------------------------------------- lifecycle
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release backend resources; idempotent. Later calls raise StoreUsageError."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ backend hooks
    @abstractmethod
    def _get(self, key: str) -> bytes: ...

    def _get_range(self, key: str, start: int, length: int | None) -> bytes:
        data = self._get(key)
        return data[start:] if length is None else data[start : start + length]

    @abstractmethod
    def _put(self, key: str, data: memoryview) -> None: ...

    @abstractmethod
    def _put_if_absent(self, key: str, data: memoryview) -> bool: ...

    def _copy(self, src: str, dst: str) -> None:
        self._put(dst, memoryview(self._get(src)))

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterable[str]:
        """Keys starting with ``prefix``, any order."""

    def _size(self, key: str) -> int:
        return len(self._get(key))

    def _path_of(self, key: str) -> str | None:
        return None

    def _remove_temporaries(self, prefix: str, match: Callable[[str], bool] | None,
                            min_age: float) -> list[str]:
        return []

    def _close(self) -> None:
        return None

    # ---------------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise StoreUsageError("store is closed", store=self.url)

    def _missing(self, key: str) -> StoreKeyError:
        return StoreKeyError("key not found", key=key, store=self.url)

    def _translate(self, key: str, writing: bool = False) -> _ErrorTranslator:
        return _ErrorTranslator(self, key, writing)


class _ErrorTranslator:
    """Maps backend exceptions to Persona's: missing -> StoreKeyError, other I/O -> StoreError."""

    __slots__ = ("store", "key", "writing")

    def __init__(self, store: Store, key: str, writing: bool) -> None:
        self.store = store
        self.key = key
        self.writing = writing  # a put cannot fail for a "missing key": any OSError is I/O

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        if self.store.counts_io and not isinstance(exc, (StoreKeyError, FileNotFoundError, KeyError)) \
                and isinstance(exc, (StoreError, OSError)):
            counters.add("store_errors", (self.store.scheme, "write" if self.writing else "read"), 1)
        if isinstance(exc, StoreKeyError):
            # Raised by a wrapped store (PrefixStore): re-label with the key and URL the caller used.
            if exc.context.get("store") == self.store.url:
                return
            raise self.store._missing(self.key) from exc
        if isinstance(exc, StoreError):
            return
        if isinstance(exc, (FileNotFoundError, KeyError)) and not self.writing:
            raise self.store._missing(self.key) from exc
        if isinstance(exc, OSError):
            raise StoreError(f"I/O error: {exc.strerror or exc}", key=self.key, store=self.store.url) from exc
        return


class PrefixStore(Store):
    """A view of ``parent`` restricted to keys under ``prefix/``; closing it leaves the parent open."""

    counts_io = False  # the parent counts

    def __init__(self, parent: Store, prefix: str) -> None:
        self.parent = parent
        self.prefix = validate_key(prefix)
        self.supports_writes = parent.supports_writes
        self.supports_deletes = parent.supports_deletes
        self.supports_listing = parent.supports_listing
        self.supports_partial_reads = parent.supports_partial_reads
        self.cheap_copy = parent.cheap_copy
        self.remote = parent.remote

    @property
    def url(self) -> str:
        return f"{self.parent.url.rstrip('/')}/{self.prefix}"

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    # The parent's public methods re-check keys and translate errors; a parent
    # StoreKeyError is re-labelled with the child's key and URL by _ErrorTranslator.
    def _get(self, key: str) -> bytes:
        return self.parent.get(self._full(key))

    def _get_range(self, key: str, start: int, length: int | None) -> bytes:
        return self.parent.get_range(self._full(key), start, length)

    def _put(self, key: str, data: memoryview) -> None:
        self.parent.put(self._full(key), data)

    def _put_if_absent(self, key: str, data: memoryview) -> bool:
        return self.parent.put_if_absent(self._full(key), data)

    def _copy(self, src: str, dst: str) -> None:
        self.parent.copy(self._full(src), self._full(dst))

    def _exists(self, key: str) -> bool:
        return self.parent.exists(self._full(key))

    def _delete(self, key: str) -> None:
        self.parent.delete(self._full(key))

    def _list(self, prefix: str) -> Iterable[str]:
        cut = len(self.prefix) + 1
        return [k[cut:] for k in self.parent.list(self._full(prefix) if prefix else self.prefix + "/")]

    def _size(self, key: str) -> int:
        return self.parent.size(self._full(key))

    def _path_of(self, key: str) -> str | None:
        return self.parent.path_of(self._full(key))

    def _remove_temporaries(self, prefix: str, match: Callable[[str], bool] | None,
                            min_age: float) -> list[str]:
        cut = len(self.prefix) + 1
        full = self._full(prefix) if prefix else self.prefix + "/"
        inner = None if match is None else (lambda key: match(key[cut:]))
        return [k[cut:] for k in self.parent.remove_temporaries(full, match=inner, min_age=min_age)]

    def child(self, prefix: str) -> Store:
        self._check_open()
        return self.parent.child(self._full(validate_key(prefix)))
