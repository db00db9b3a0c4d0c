"""Reference genomes: build aligner indexes once, store them, load them once per process.

A reference lives in a reference store (any :class:`~persona.storage.Store`)
under its name::

    <name>/reference.json          name, source, FASTA sha256, contig table, indexes
    <name>/minimap2-<preset>.mmi   minimap2 index built for <preset> (one file per aligner+preset)

:func:`add_reference` validates the FASTA (:mod:`persona.align.fasta`), builds
the index in a scratch directory and puts it into the store (index first,
``reference.json`` last, so a half-added reference is never visible).

:func:`acquire_reference` / :func:`use_reference` give a loaded
:class:`~persona.align.base.Aligner`. Loads are cached per process: one load
per (store, name, aligner, preset, options), shared by every request; the
entry is reference-counted and kept while any request holds it; the most
recently released ``MAX_IDLE`` entries stay loaded so back-to-back requests
do not reload. An index whose SHA-256 does not match ``reference.json`` is
refused (a truncated or corrupt index must not reach the aligner's C code).
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona.agd.manifest import Contig
from persona.align.base import Aligner, AlignerOptions, backend_module, make_aligner
from persona.align.fasta import read_contig_table
from persona.errors import ReferenceNotFoundError, StoreKeyError
from persona.storage import Store, open_store

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_COPY_BLOCK = 64 << 20
#: released references kept loaded for the next request
MAX_IDLE = 1


@dataclass(frozen=True)
class ReferenceInfo:
    """The content of ``<name>/reference.json``."""

    name: str
    source: str
    sha256: str
    contigs: list[Contig]
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({
            "name": self.name, "version": 1, "source": self.source, "sha256": self.sha256,
            "contigs": [{"name": c.name, "length": c.length, "index": c.index, **({"md5": c.md5} if c.md5 else {})}
                        for c in self.contigs],
            "indexes": self.indexes,
        }, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> ReferenceInfo:
        try:
            obj = json.loads(data)
            return cls(obj["name"], obj["source"], obj["sha256"],
                       [Contig(c["name"], int(c["length"]), int(c["index"]), c.get("md5")) for c in obj["contigs"]],
                       dict(obj.get("indexes", {})))
        except (ValueError, KeyError, TypeError) as e:
            raise ReferenceNotFoundError(f"unreadable reference description: {e}", key=key) from None

    def manifest_contigs(self) -> list[dict[str, Any]]:
        """``reference_contigs`` as an AGD manifest stores them."""
        return [{"name": c.name, "length": c.length, "index": c.index, **({"md5": c.md5} if c.md5 else {})}
                for c in self.contigs]


def index_id(aligner: str, preset: str) -> str:
    """The stored index's id: ``<family>-<preset>``; backends of one family (minimap2, mappy) share it."""
    family = getattr(backend_module(aligner), "INDEX_FAMILY", aligner)
    return f"{family}-{preset}"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ReferenceNotFoundError(
            f"invalid reference name {name!r}: use letters, digits, '.', '_', '-' (max 128)")
    return name


def _store(store: Store | str | os.PathLike[str]) -> Store:
    if isinstance(store, Store):
        return store
    s = os.fspath(store)
    return open_store(os.path.expanduser(s) if "://" not in s else s)


def reference_info(name: str, store: Store | str | os.PathLike[str]) -> ReferenceInfo:
    """The description of reference ``name``; :class:`ReferenceNotFoundError` if there is none."""
    st = _store(store)
    key = f"{_check_name(name)}/reference.json"
    try:
        data = st.get(key)
    except StoreKeyError:
        known = list_references(st)
        raise ReferenceNotFoundError(
            f"reference {name!r} does not exist in {st.url}"
            + (f"; known: {', '.join(known)}" if known else "; add it with `persona reference add`"),
            key=key) from None
    return ReferenceInfo.from_json(data, key)


def list_references(store: Store | str | os.PathLike[str]) -> list[str]:
    """Names of the references in ``store``, sorted."""
    st = _store(store)
    return sorted(k[: -len("/reference.json")] for k in st.list() if k.endswith("/reference.json")
                  and k.count("/") == 1)


def add_reference(name: str, fasta: str | os.PathLike[str], store_url: Store | str | os.PathLike[str], *,
                  aligner: str = "minimap2", preset: str = "sr", overwrite: bool = False) -> ReferenceInfo:
    """Validate ``fasta``, build the ``aligner`` index for ``preset`` and store both under ``name``.

    Adding another preset/aligner to an existing reference of the same FASTA
    extends it; a different FASTA under an existing name needs ``overwrite``.
    """
    st = _store(store_url)
    _check_name(name)
    backend = backend_module(aligner)
    summary = read_contig_table(fasta)
    old: ReferenceInfo | None = None
    if st.exists(f"{name}/reference.json"):
        old = reference_info(name, st)
        if old.sha256 != summary.sha256 and not overwrite:
            raise ReferenceNotFoundError(
                f"reference {name!r} already exists with a different FASTA ({old.source}); "
                "choose another name or overwrite it", key=f"{name}/reference.json")
        if old.sha256 != summary.sha256:
            old = None
    iid = index_id(aligner, preset)
    key = f"{name}/{iid}{backend.INDEX_SUFFIX}"
    aligner = getattr(backend, "INDEX_FAMILY", aligner)
    with tempfile.TemporaryDirectory(prefix="persona-ref-") as tmp:
        out = Path(tmp) / f"index{backend.INDEX_SUFFIX}"
        backend.build_index(fasta, out, preset)
        digest, size = _sha256_file(out)
        with open(out, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            st.put(key, view)  # no second in-memory copy of a (possibly multi-GB) index
    indexes = dict(old.indexes) if old is not None else {}
    indexes[iid] = {"aligner": aligner, "preset": preset, "key": key, "sha256": digest, "size": size}
    info = ReferenceInfo(name, str(Path(fasta).resolve()), summary.sha256, summary.contigs, indexes)
    st.put(f"{name}/reference.json", info.to_json())
    return info


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


# ----------------------------------------------------------------------- cache
@dataclass
class LoadedReference:
    """A loaded index: ``aligner`` aligns against it; hold it via :func:`use_reference`."""

    key: tuple[Any, ...]
    info: ReferenceInfo
    aligner: Aligner
    refs: int = 0

    @property
    def contigs(self) -> list[Contig]:
        return self.info.contigs


#: number of index loads this process did, over every cache (tests check sharing with it)
load_count = 0
_count_lock = threading.Lock()


def _cache_key(st: Store, info: ReferenceInfo, aligner: str, options: AlignerOptions) -> tuple[Any, ...]:
    # the index digest is part of the key: a reference re-added under the same name is loaded afresh
    digest = info.indexes.get(index_id(aligner, options.preset), {}).get("sha256")
    return (st.url, info.name, aligner, options.preset, digest,
            tuple(sorted((k, repr(v)) for k, v in options.extra.items())))


class ReferenceCache:
    """Loaded indexes shared by every holder, reference-counted; up to ``max_idle`` unused
    ones stay loaded for the next request. A :class:`~persona.runtime.Runtime` owns one; the
    module functions use the process default."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._cache: dict[tuple[Any, ...], LoadedReference] = {}
        self._idle: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[Any, ...], threading.Lock] = {}

    def acquire(self, name: str, store: Store | str | os.PathLike[str], *, aligner: str = "minimap2",
                options: AlignerOptions | None = None) -> LoadedReference:
        """Load (or share the loaded) ``aligner`` index of ``name``; pair with :meth:`release`.

        The returned object's aligner carries ``options`` (secondary count etc.);
        the index itself is shared with every holder that loaded the same preset
        and pass-through options.
        """
        global load_count
        st = _store(store)
        options = options or AlignerOptions()
        info = reference_info(name, st)  # small JSON read per request: notices a re-added reference
        key = _cache_key(st, info, aligner, options)
        with self._lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:  # one loader per key; others wait and share
            with self._lock:
                entry = self._cache.get(key)
                if entry is not None:
                    entry.refs += 1
                    self._idle.pop(key, None)
            if entry is None:
                index = _load_index(st, info, aligner, options)
                with _count_lock:
                    load_count += 1
                entry = LoadedReference(key, info, make_aligner(aligner, index, info.contigs, options), refs=1)
                with self._lock:
                    self._cache[key] = entry
        if entry.aligner.options != options:  # same index, other per-request options (e.g. secondary)
            return LoadedReference(key, entry.info, entry.aligner.with_options(options))
        return entry

    def release(self, ref: LoadedReference) -> None:
        """Drop one hold on a loaded reference; unused ones beyond ``max_idle`` are unloaded."""
        with self._lock:
            entry = self._cache.get(ref.key)
            if entry is None or entry.refs <= 0:
                return
            entry.refs -= 1
            if entry.refs == 0:
                self._idle[ref.key] = None
                while len(self._idle) > self.max_idle:
                    old, _ = self._idle.popitem(last=False)
                    self._cache.pop(old, None)
                    self._load_locks.pop(old, None)

    def loaded(self) -> int:
        with self._lock:
            return len(self._cache)

    def clear(self) -> None:
        """Unload every idle index."""
        with self._lock:
            for k in list(self._idle):
                self._cache.pop(k, None)
            self._idle.clear()


_default_cache = ReferenceCache()


def acquire_reference(name: str, store: Store | str | os.PathLike[str], *, aligner: str = "minimap2",
                      options: AlignerOptions | None = None) -> LoadedReference:
    """:meth:`ReferenceCache.acquire` on the process default cache."""
    return _default_cache.acquire(name, store, aligner=aligner, options=options)


def release_reference(ref: LoadedReference) -> None:
    """:meth:`ReferenceCache.release` on the process default cache."""
    _default_cache.release(ref)


@contextmanager
def use_reference(name: str, store: Store | str | os.PathLike[str], *, aligner: str = "minimap2",
                  options: AlignerOptions | None = None) -> Iterator[LoadedReference]:
    """``with use_reference(...) as ref: ref.aligner.align(...)``: acquire, then release."""
    ref = acquire_reference(name, store, aligner=aligner, options=options)
    try:
        yield ref
    finally:
        release_reference(ref)


def _load_index(st: Store, info: ReferenceInfo, aligner: str, options: AlignerOptions) -> Any:
    iid = index_id(aligner, options.preset)
    desc = info.indexes.get(iid)
    if desc is None:
        have = ", ".join(sorted(info.indexes)) or "none"
        raise ReferenceNotFoundError(
            f"reference {info.name!r} has no {aligner} index for preset {options.preset!r} (has: {have}); "
            f"build one with add_reference({info.name!r}, FASTA, ..., aligner={aligner!r}, preset={options.preset!r})")
    key = desc["key"]
    backend = backend_module(aligner)

    local = st.path_of(key)
    if local is not None and os.path.isfile(local):
        _verify_local(Path(local), desc, key)
        return backend.load_index(local, options)
    # A remote reference store (ceph://, s3://): the machine's reference cache (fetched once per
    # machine, checked on every use), unless the config turns it off.
    from persona.storage.refcache import CacheIntegrityError, node_cache

    cache = node_cache() if local is None and not st.url.startswith("memory://") else None
    if cache is not None and desc.get("sha256") and desc.get("size") is not None:
        try:
            with cache.open(st, key, sha256=desc["sha256"], size=int(desc["size"]),
                            suffix=backend.INDEX_SUFFIX) as use:
                return backend.load_index(use.path, options)
        except StoreKeyError:
            raise ReferenceNotFoundError(f"index of reference {info.name!r} is missing", key=key) from None
        except CacheIntegrityError as e:
            raise ReferenceNotFoundError(f"index is corrupt: {e}", key=key) from None
    with tempfile.TemporaryDirectory(prefix="persona-idx-") as tmp:
        path = Path(tmp) / f"index{backend.INDEX_SUFFIX}"
        try:
            size = st.size(key)
            with open(path, "wb") as f:
                f.writelines(st.get_range(key, start, _COPY_BLOCK) for start in range(0, size, _COPY_BLOCK))
        except StoreKeyError:
            raise ReferenceNotFoundError(f"index of reference {info.name!r} is missing", key=key) from None
        _verify(path, desc, key)
        return backend.load_index(path, options)  # the backend reads it all; the file may go


def _verify_local(path: Path, desc: dict[str, Any], key: str) -> None:
    """:func:`_verify` for an index in a local reference store: hashed once, then trusted by its stamp
    in the machine's reference cache while the file is unchanged (a multi-GB index costs seconds to
    hash on every load otherwise); without a cache, hashed every time."""
    from persona.storage.refcache import node_cache

    cache = node_cache()
    if cache is None or not desc.get("sha256") or desc.get("size") is None:
        return _verify(path, desc, key)
    if not cache.check_local(path, sha256=str(desc["sha256"]), size=int(desc["size"])):
        _verify(path, desc, key)  # hashes again, and raises naming what differs


def _verify(path: Path, desc: dict[str, Any], key: str) -> None:
    digest, size = _sha256_file(path)
    if size != desc.get("size") or digest != desc.get("sha256"):
        raise ReferenceNotFoundError(
            f"index is corrupt: {size} bytes, sha256 {digest[:12]}..., expected {desc.get('size')} bytes, "
            f"sha256 {str(desc.get('sha256'))[:12]}...", key=key)
