"""The compute node's reference cache: index files fetched from a store, kept on local disk.

References may live in any store (``ceph://``, ``s3://``, ``file://``). An aligner needs its index
as a local file, and fetching a multi-GB index for every job would dominate short jobs, so each
machine keeps a :class:`NodeCache`: one directory (``storage.reference_cache.dir``) shared by every
process on the machine, bounded in size (``storage.reference_cache.max_mb``).

* Entries are content-addressed: ``<sha256>.<suffix>``, the digest ``reference.json`` records for
  the index. The same index reached through two URLs is one entry; a reference re-added under the
  same name has another digest, so a stale entry is never used.
* Every use is checked, cheaply: next to each entry a *stamp* ``<sha256>.stamp`` records what
  the file was when its SHA-256 was last verified (at the fetch, or by a full re-hash): size,
  ``mtime_ns``, ``ctime_ns``, inode, device, and the digest. A use whose ``stat`` matches the
  stamp trusts the file without reading it; any difference, a missing or unreadable stamp, or a
  *racy* stamp (the file changed less than :data:`RACY_NS` before the stamp was written, within
  the file system's timestamp granularity) means a full re-hash, as before. A damaged entry is
  deleted and fetched again (``refetched`` says so); a sound one is stamped afresh.

  What this detects: any change made through the file system. A write changes ``mtime`` and
  ``ctime``; a same-size in-place overwrite that puts ``mtime`` back (``touch -r``, ``os.utime``)
  still moves ``ctime``, which no user call can set; a replacement by another file changes the
  inode; truncation changes the size. What it does not: changes below the file system (bit rot
  on the disk, writes to the raw device) and a change made with the system clock set back to the
  recorded ``ctime``. :meth:`NodeCache.verify` re-hashes every entry whatever its stamp, for a
  periodic scrub.
* A cold machine fetches once: the fetcher holds the entry's lock file (``flock``, exclusive)
  while it downloads into a temporary file in the same directory, checks it, fsyncs it and
  renames it into place; every other process waiting for the same entry then finds it there.
* While an entry is in use its lock is held shared, so eviction (least recently used first, by
  the stamp's mtime, which every use touches: touching the entry itself would move its ``ctime``
  and void the stamp) never deletes a file someone is loading. Eviction
  runs after each fetch, under the directory's lock, until the total fits the bound; entries in
  use are skipped, so an index larger than the bound is still served (with a warning).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from persona.errors import StoreError
from persona.storage.base import Store
from persona.storage.lazy import BlockReader

__all__ = ["CacheIntegrityError", "NodeCache", "node_cache"]

log = logging.getLogger(__name__)

_FETCH_BLOCK = 8 << 20
_ENTRY = re.compile(r"^([0-9a-f]{64})(\.[A-Za-z0-9]+)?$")
_NOT_ENTRIES = (".lock", ".stamp")  # an entry's lock file and stamp share its digest
#: a stamp written less than this after the file's last change (``ctime``) is not trusted: a
#: change within the same timestamp tick would leave ``ctime`` as recorded (git's "racy clean")
RACY_NS = 1_000_000_000
_STAMP_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino", "dev", "sha256")


class CacheIntegrityError(StoreError, ValueError):
    """The object in the store does not match the digest or size its description records."""

    transient = False


@dataclass
class CacheUse:
    """What one :meth:`NodeCache.open` did: the local path, and whether it fetched."""

    path: Path
    fetched: bool
    refetched: bool  # a damaged local copy was found, dropped and fetched again


def _stat_fields(st: os.stat_result, sha256: str) -> dict[str, int | str]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
            "dev": st.st_dev, "sha256": sha256}


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class NodeCache:
    """A size-bounded, checksum-verified, machine-wide cache directory; see the module docstring."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.dir = Path(os.path.expanduser(os.fspath(directory)))
        self.max_bytes = int(max_bytes)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fetches = 0  # by this object (tests and metrics)
        self.hashes = 0  # full re-hashes of a cached entry (no stamp, or it did not match)
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------------ public
    @contextlib.contextmanager
    def open(self, store: Store, key: str, *, sha256: str, size: int, suffix: str = "") -> Iterator[CacheUse]:
        """The local copy of ``key`` of ``store`` (fetched if need be), held while the block runs.

        ``sha256`` and ``size`` are what the object must be (from ``reference.json``); a fetched
        object that differs raises :class:`CacheIntegrityError` and nothing is cached.
        """
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            raise CacheIntegrityError(f"not a SHA-256 digest: {sha256!r}", key=key, store=store.url)
        path = self.dir / f"{sha256}{suffix}"
        with open(self.dir / f"{sha256}.lock", "a+b") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)  # one fetcher (or checker) per entry on the machine
            fetched = refetched = False
            stamp = self._stamp_path(sha256)
            if path.exists() and not self._stamp_holds(path, stamp, sha256, size):
                with self._count_lock:
                    self.hashes += 1
                digest, got = _sha256(path)
                if digest != sha256 or got != size:
                    log.warning("reference cache: %s is damaged (sha256 %s..., %d bytes); fetching it again",
                                path, digest[:12], got)
                    stamp.unlink(missing_ok=True)
                    path.unlink()
                    refetched = True
                else:
                    self._write_stamp(path, stamp, sha256)
            if not path.exists():
                self._fetch(store, key, sha256, size, path)
                self._write_stamp(path, stamp, sha256)
                fetched = True
            with contextlib.suppress(FileNotFoundError):
                os.utime(stamp)  # the LRU clock
            # In use from here: shared, so eviction leaves it alone. (flock's EX -> SH change is
            # not atomic; holding the directory lock across it keeps an evictor out of the gap.)
            with open(self.dir / ".lock", "a+b") as dirlock:
                fcntl.flock(dirlock, fcntl.LOCK_SH)
                fcntl.flock(lockf, fcntl.LOCK_SH)
            if fetched:
                self.evict(keep=path)
            try:
                yield CacheUse(path, fetched, refetched)
            finally:
                fcntl.flock(lockf, fcntl.LOCK_UN)

    def check_local(self, path: str | os.PathLike[str], *, sha256: str, size: int) -> bool:
        """Whether the index file ``path`` of a local reference store (not a cache entry) has ``sha256``
        and ``size``: hashed on its first use, then trusted while a stamp under ``<cache>/local/`` says
        the file is as it was when hashed (the same rules as the entries' stamps: any change through
        the file system voids it). A mismatch is never stamped."""
        path = Path(os.path.abspath(os.fspath(path)))
        tag = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
        stamp = self.dir / "local" / f"{sha256}-{tag}.stamp"
        if self._stamp_holds(path, stamp, sha256, size):
            return True
        digest, got = _sha256(path)
        with self._count_lock:
            self.hashes += 1
        if digest != sha256 or got != size:
            stamp.unlink(missing_ok=True)
            return False
        with contextlib.suppress(OSError):
            stamp.parent.mkdir(exist_ok=True)
            self._write_stamp(path, stamp, sha256)
        return True

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, last use) of every cached entry, least recently used first (the last use:
        its stamp's mtime; the entry's own for an entry without a stamp)."""
        out = []
        for p in self.dir.iterdir():
            m = _ENTRY.match(p.name)
            if m and not p.name.endswith(_NOT_ENTRIES):
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    try:
                        used = self._stamp_path(m.group(1)).stat().st_mtime
                    except FileNotFoundError:
                        used = st.st_mtime
                    out.append((p, st.st_size, used))
        return sorted(out, key=lambda e: e[2])

    def verify(self) -> list[Path]:
        """Re-hash every entry not in use, whatever its stamp (a scrub, for damage below the file
        system); damaged entries are deleted. Returns the deleted paths."""
        bad: list[Path] = []
        for path, size, _ in self.entries():
            digest = _ENTRY.match(path.name).group(1)  # type: ignore[union-attr]
            with open(self.dir / f"{digest}.lock", "a+b") as lockf:
                try:
                    fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use or being fetched: checked when next opened
                if not path.exists():
                    continue
                got, n = _sha256(path)
                with self._count_lock:
                    self.hashes += 1
                stamp = self._stamp_path(digest)
                if got != digest:
                    log.warning("reference cache: %s is damaged (sha256 %s...); deleted", path, got[:12])
                    stamp.unlink(missing_ok=True)
                    path.unlink(missing_ok=True)
                    bad.append(path)
                else:
                    self._write_stamp(path, stamp, digest)
        return bad

    # ------------------------------------------------------------------ stamps
    def _stamp_path(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.stamp"

    def _stamp_holds(self, path: Path, stamp: Path, sha256: str, size: int) -> bool:
        """Whether ``path`` is as it was when its digest was verified (see the module docstring)."""
        try:
            rec = json.loads(stamp.read_bytes())
            st = path.stat()
            fields = {k: rec[k] for k in _STAMP_FIELDS}
            stamped = int(rec["stamped_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            return False  # no stamp, or not one of ours: hash
        if fields != _stat_fields(st, sha256) or st.st_size != size:
            return False
        return int(fields["ctime_ns"]) + RACY_NS <= stamped

    def _write_stamp(self, path: Path, stamp: Path, sha256: str) -> None:
        """Record ``path``'s stat as verified (atomically; not fsynced: a stamp lost in a crash only
        costs one re-hash)."""
        rec = dict(_stat_fields(path.stat(), sha256), stamped_ns=time.time_ns())
        tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            tmp.write_text(json.dumps(rec))
            os.replace(tmp, stamp)
        except OSError as exc:  # a stamp is an optimisation: without it the next use re-hashes
            log.warning("reference cache: cannot write %s (%s)", stamp, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used entries not in use until the total fits ``max_bytes``."""
        removed: list[Path] = []
        with open(self.dir / ".lock", "a+b") as dirlock:
            fcntl.flock(dirlock, fcntl.LOCK_EX)
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            for path, size, _ in entries:
                if total <= self.max_bytes:
                    break
                if keep is not None and path == keep:
                    continue
                digest = _ENTRY.match(path.name).group(1)  # type: ignore[union-attr]
                with open(self.dir / f"{digest}.lock", "a+b") as lockf:
                    try:
                        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # in use or being fetched
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        total -= size
                        removed.append(path)
                    self._stamp_path(digest).unlink(missing_ok=True)
            if total > self.max_bytes:
                log.warning("reference cache %s holds %d MiB, over its bound of %d MiB: the rest is in use",
                            self.dir, total >> 20, self.max_bytes >> 20)
        return removed

    # ------------------------------------------------------------------ fetching
    def _fetch(self, store: Store, key: str, sha256: str, size: int, path: Path) -> None:
        h = hashlib.sha256()
        got = 0
        fd, tmp = tempfile.mkstemp(prefix=".fetch-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                # Ranged reads, two blocks ahead: the download overlaps the hashing and the disk.
                for block in BlockReader(store, key, block_size=_FETCH_BLOCK, prefetch=2):
                    h.update(block)
                    f.write(block)
                    got += len(block)
                f.flush()
                os.fsync(f.fileno())
            if got != size or h.hexdigest() != sha256:
                raise CacheIntegrityError(
                    f"the stored object is {got} bytes with sha256 {h.hexdigest()[:12]}..., but its description "
                    f"says {size} bytes, sha256 {sha256[:12]}... (damaged in the store?)", key=key, store=store.url)
            os.replace(tmp, path)  # atomic: others see nothing or the whole, checked file
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with self._count_lock:
            self.fetches += 1
        log.info("reference cache: fetched %s from %s (%d MiB)", key, store.url.split("?")[0], got >> 20)


_caches: dict[tuple[str, int], NodeCache] = {}
_caches_lock = threading.Lock()


def node_cache(directory: str | os.PathLike[str] | None = None, max_mb: int | None = None) -> NodeCache | None:
    """The process's :class:`NodeCache` for the configured ``storage.reference_cache`` (or the
    arguments); None when the config turns the cache off (``dir: null``)."""
    if directory is None or max_mb is None:
        from persona.config import get_config

        cfg = get_config().storage.reference_cache
        directory = cfg.dir if directory is None else directory
        max_mb = cfg.max_mb if max_mb is None else max_mb
        if directory is None:
            return None
    key = (os.path.expanduser(os.fspath(directory)), int(max_mb))
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            try:
                cache = _caches[key] = NodeCache(key[0], key[1] << 20)
            except OSError as exc:  # an unwritable cache directory must not stop the aligner
                log.warning("reference cache %s unusable (%s): fetching indexes to temporary files", key[0], exc)
                return None
        return cache
