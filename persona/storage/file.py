"""FileStore: a directory on a local or shared file system (the default backend).

Each key is a file under the root directory (``a/b`` -> ``<root>/a/b``). Writes
go to a temporary file in the destination directory, are fsynced, and renamed
over the destination, so readers (threads or other processes on a shared file
system) see whole objects only. Keys cannot leave the root, not even through a
symlink inside it. A key cannot be both an object and a "directory" of other
keys (``a`` and ``a/b``), as on any file system.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from persona.storage.base import InvalidKeyError, Store, StoreUsageError, validate_key

__all__ = ["FileStore"]

# Temporary files of in-flight puts; list() hides them and keys may not use the prefix.
_TMP_PREFIX = ".persona-tmp-"
#: a staged put: the key's last component, then "." and a uuid4 hex
_TMP_NAME = re.compile(re.escape(_TMP_PREFIX) + r"(.+)\.[0-9a-f]{32}")


class FileStore(Store):
    """Keys as files under ``root``; the directory is created on first write.

    ``fsync=False`` skips the fsyncs that make a put durable across a power
    loss (atomicity against concurrent readers is kept); use it for scratch
    data only. ``read_only=True`` refuses puts and deletes.
    """

    cheap_copy = True

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, read_only: bool = False) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        self.fsync = fsync
        self.read_only = read_only
        if read_only:
            self.supports_writes = False
            self.supports_deletes = False

    # ----------------------------------------------------------------- identity
    @property
    def url(self) -> str:
        return "file://" + quote(str(self.root))

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FileStore:
        """A bare path (``~`` expanded) or ``file://[localhost]/path``; relative paths are from the CWD."""
        if url.startswith("file://"):
            rest = url[len("file://") :]
            if rest.startswith("localhost/"):
                rest = rest[len("localhost") :]
            path = unquote(rest)
        else:
            path = url
        if not path:
            raise StoreUsageError("file store URL has no path", store=url)
        return cls(path, **options)

    def child(self, prefix: str) -> FileStore:
        self._check_open()
        return FileStore(self._resolve(validate_key(prefix)), fsync=self.fsync, read_only=self.read_only)

    # ----------------------------------------------------------------- mapping
    def _resolve(self, key: str) -> Path:
        """The path of ``key``, refusing keys that resolve outside the root through symlinks."""
        parts = key.split("/")
        if parts[-1].startswith(_TMP_PREFIX):
            raise InvalidKeyError(f"store key may not start with {_TMP_PREFIX!r}", key=key, store=self.url)
        path = self.root.joinpath(*parts)
        # realpath resolves only the components that exist, which is all a symlink escape needs.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root + os.sep):
            raise InvalidKeyError("store key resolves outside the store root", key=key, store=self.url)
        return path

    def _path_of(self, key: str) -> str | None:
        return str(self._resolve(key))

    # ------------------------------------------------------------------- reads
    def _get(self, key: str) -> bytes:
        path = self._resolve(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (IsADirectoryError, NotADirectoryError) as exc:
            # "a" is a directory of keys, or "a/b" where "a" is an object: no such key either way.
            raise FileNotFoundError(str(path)) from exc

    def _get_range(self, key: str, start: int, length: int | None) -> bytes:
        path = self._resolve(key)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read() if length is None else f.read(length)
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise FileNotFoundError(str(path)) from exc

    def _exists(self, key: str) -> bool:
        return self._resolve(key).is_file()

    def _size(self, key: str) -> int:
        path = self._resolve(key)
        try:
            st = path.stat()
        except NotADirectoryError as exc:
            raise FileNotFoundError(str(path)) from exc
        if not path.is_file():
            raise FileNotFoundError(str(path))
        return st.st_size

    def _list(self, prefix: str) -> Iterable[str]:
        # Only walk the directory the prefix points into, not the whole tree.
        head, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*head.split("/")) if head else self.root
        base = head + "/" if head else ""
        real_root = os.path.realpath(self.root)
        real_start = os.path.realpath(start)
        if real_start != real_root and not real_start.startswith(real_root + os.sep):
            return []  # the prefix runs through a symlink out of the root
        out: list[str] = []
        self._walk(start, base, prefix, real_root, out)
        return out

    def _walk(self, directory: Path, base: str, prefix: str, real_root: str, out: list[str]) -> None:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            name = entry.name
            if name.startswith(_TMP_PREFIX):
                continue
            key = base + name
            if entry.is_dir(follow_symlinks=False):
                # Descend only where some key below could still match the prefix.
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    self._walk(Path(entry.path), key + "/", prefix, real_root, out)
            elif key.startswith(prefix) and entry.is_file():
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if not real.startswith(real_root + os.sep):
                        continue  # get() would refuse it; do not advertise it
                out.append(key)

    def _remove_temporaries(self, prefix: str, match: Callable[[str], bool] | None,
                            min_age: float) -> list[str]:
        # A killed put leaves ``<dir>/.persona-tmp-<name>.<32 hex>``; the key it was for is <dir>/<name>.
        head, _, _ = prefix.rpartition("/")
        directory = self.root.joinpath(*head.split("/")) if head else self.root
        real_root = os.path.realpath(self.root)
        real_dir = os.path.realpath(directory)
        if real_dir != real_root and not real_dir.startswith(real_root + os.sep):
            return []
        base = head + "/" if head else ""
        now = time.time()
        out: list[str] = []
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return out
        for entry in entries:
            m = _TMP_NAME.fullmatch(entry.name)
            if m is None or not entry.is_file(follow_symlinks=False):
                continue
            key = base + m.group(1)
            if not key.startswith(prefix) or (match is not None and not match(key)):
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                    continue
                os.unlink(entry.path)
                out.append(key)
        return out

    # ------------------------------------------------------------------ writes
    def _put(self, key: str, data: memoryview) -> None:
        # A unique temporary name per call lets concurrent puts of one key proceed; the last rename wins.
        path = self._resolve(key)
        tmp = self._write_tmp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._sync_dir(path.parent)  # make the rename itself durable

    def _write_tmp(self, path: Path, data: memoryview) -> Path:
        directory = path.parent
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp

    def _sync_dir(self, directory: Path) -> None:
        if self.fsync:
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _put_if_absent(self, key: str, data: memoryview) -> bool:
        # The whole object is written to a temporary file first, then hard-linked to the key:
        # link(2) fails with EEXIST when the key exists, so the create is atomic and exclusive
        # and no reader ever sees a partial object (also on NFS, unlike O_EXCL on old servers).
        path = self._resolve(key)
        tmp = self._write_tmp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._sync_dir(path.parent)
        return True

    def _copy(self, src: str, dst: str) -> None:
        # A hard link to a temporary name, renamed over dst: no bytes move, dst is replaced
        # atomically, and src and dst stay independent keys (objects are never modified in place).
        spath, dpath = self._resolve(src), self._resolve(dst)
        if not spath.is_file():
            raise FileNotFoundError(str(spath))
        dpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = dpath.parent / f"{_TMP_PREFIX}{dpath.name}.{uuid.uuid4().hex}"
        try:
            os.link(spath, tmp)
        except OSError:  # no hard links here (another file system, some FUSE mounts): copy
            self._put(dst, memoryview(self._get(src)))
            return
        try:
            os.replace(tmp, dpath)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._sync_dir(dpath.parent)

    def _delete(self, key: str) -> None:
        path = self._resolve(key)
        if path.is_dir():
            raise FileNotFoundError(str(path))
        try:
            os.unlink(path)
        except NotADirectoryError as exc:
            raise FileNotFoundError(str(path)) from exc
