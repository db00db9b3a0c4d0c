"""Storage layer: one :class:`Store` interface, backends chosen by URL scheme.

>>> store = open_store("memory://doc")
>>> store.put("ds/a.base", b"ACGT")
>>> list(store.list("ds/"))
['ds/a.base']

Bare paths and ``file://`` URLs are directories (:class:`FileStore`),
``memory://name`` is in-process (:class:`MemoryStore`), ``ceph://pool/ns`` and
``s3://bucket/prefix`` load optional backends on first use.

:class:`BlockReader` / :func:`iter_objects` (:mod:`persona.storage.lazy`) read large objects a few
blocks ahead (bounded memory); :mod:`persona.storage.refcache` keeps a compute node's local copies
of reference indexes fetched from a store.
"""
from persona.errors import StoreError, StoreKeyError, StoreUnavailableError
from persona.storage.base import (
    InvalidKeyError,
    PrefixStore,
    Store,
    StoreUsageError,
    join_key,
    validate_key,
    validate_prefix,
)
from persona.storage.file import FileStore
from persona.storage.lazy import BlockReader, iter_objects
from persona.storage.memory import MemoryStore
from persona.storage.registry import open_store, register_store, registered_schemes, split_scheme

__all__ = [
    "BlockReader",
    "FileStore",
    "InvalidKeyError",
    "MemoryStore",
    "PrefixStore",
    "Store",
    "StoreError",
    "StoreKeyError",
    "StoreUnavailableError",
    "StoreUsageError",
    "iter_objects",
    "join_key",
    "open_store",
    "register_store",
    "registered_schemes",
    "split_scheme",
    "validate_key",
    "validate_prefix",
]
