"""Choosing a store backend by URL scheme, importing it only when first used.

Backends with optional libraries (python-rados, boto3) are registered by
``"module:Class"`` name with an install hint, so ``import persona.storage``
never needs them and a missing library becomes a
:class:`~persona.errors.StoreUnavailableError` that says how to install it.
"""
from __future__ import annotations

import importlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from persona.errors import StoreUnavailableError
from persona.storage.base import Store, StoreUsageError

__all__ = ["open_store", "register_store", "registered_schemes", "split_scheme"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class _Backend:
    target: str | type[Store]  # "module:Class", or the class itself
    install_hint: str | None


_registry: dict[str, _Backend] = {}
_lock = threading.Lock()


def register_store(scheme: str, target: str | type[Store], install_hint: str | None = None) -> None:
    """Map URLs ``scheme://...`` to a Store class (replacing any earlier entry).

    ``target`` is the class or ``"package.module:ClassName"``, imported on the
    first :func:`open_store` of that scheme. ``install_hint`` is shown when the
    import fails (e.g. ``"pip install 'persona-genomics[s3]'"``).
    """
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise StoreUsageError(f"bad store scheme {scheme!r}: lower-case letters, digits, '+', '.', '-'")
    if isinstance(target, str) and not re.fullmatch(r"[\w.]+:\w+", target):
        raise StoreUsageError(f"bad store target {target!r}: expected 'package.module:ClassName'")
    with _lock:
        _registry[scheme] = _Backend(target, install_hint)


def registered_schemes() -> list[str]:
    """Every scheme :func:`open_store` understands, sorted."""
    with _lock:
        return sorted(_registry)


def split_scheme(url: str) -> tuple[str, str]:
    """``("s3", "s3://bucket/x")`` for a URL, ``("file", path)`` for a bare path."""
    m = _SCHEME.match(url)
    if m is None:
        return "file", url
    scheme = m.group(1).lower()
    return scheme, scheme + url[len(scheme) :]


def _load(scheme: str, backend: _Backend) -> type[Store]:
    if not isinstance(backend.target, str):
        return backend.target
    module_name, _, class_name = backend.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: {backend.install_hint}" if backend.install_hint else ""
        raise StoreUnavailableError(
            f"the {scheme}:// store backend is not available ({exc}){hint}", scheme=scheme, backend=backend.target
        ) from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Store)):
        raise StoreUnavailableError(
            f"{backend.target} is not a Store class", scheme=scheme, backend=backend.target
        )
    return cls


def open_store(location: str | os.PathLike[str] | Store, **options: Any) -> Store:
    """The store a URL or path names; a :class:`Store` is returned unchanged.

    * bare path or ``file://path`` -> :class:`~persona.storage.file.FileStore`
    * ``memory://name[/prefix]`` -> :class:`~persona.storage.memory.MemoryStore` (shared by name)
    * ``ceph://pool/namespace`` -> ``persona.storage.ceph.CephStore`` (python3-rados)
    * ``s3://bucket/prefix`` -> ``persona.storage.s3.S3Store`` (``persona-genomics[s3]``)

    ``options`` go to the backend's ``from_url`` (e.g. ``read_only=True``).
    Raises StoreUsageError for an unknown scheme, StoreUnavailableError when
    the backend's library is missing.
    """
    if isinstance(location, Store):
        return location
    url = os.fspath(location)
    if not isinstance(url, str):
        raise StoreUsageError(f"store location must be a str or path, got {type(url).__name__}")
    if not url:
        raise StoreUsageError("store location is empty")
    scheme, url = split_scheme(url)
    with _lock:
        backend = _registry.get(scheme)
    if backend is None:
        known = ", ".join(registered_schemes())
        raise StoreUsageError(f"unknown store scheme {scheme!r} (known: {known})", store=url)
    return _load(scheme, backend).from_url(url, **options)


register_store("file", "persona.storage.file:FileStore")
register_store("memory", "persona.storage.memory:MemoryStore")
register_store(
    "ceph", "persona.storage.ceph:CephStore",
    "apt-get install python3-rados, then bash deploy/setup.sh (links Debian's rados module into the venv)",
)
register_store("s3", "persona.storage.s3:S3Store", "pip install 'persona-genomics[s3]'")
