"""Opening an output file without ever destroying what the path names.

:func:`open_output` is how every command writes a user-given output path:

* ``-``: standard output (``sys.stdout.buffer``, or ``sys.stdout`` in text mode),
  flushed at the end and never closed;
* a path that does not exist, or names a regular file: written to a temporary
  file in the same directory, then renamed over the path when the block ends
  without an error, so readers see the old file or the complete new one, never
  a part; on an error (or an interrupt) the temporary file is removed and an
  existing file is left exactly as it was;
* anything else (a FIFO, a character or block device such as ``/dev/null``, a
  symbolic link such as ``/dev/stdout``) is opened and written in place: renaming
  over it would replace the pipe, device or link with a regular file (and leave
  a link's target untouched). A link's target is written through the link.

A new file gets the permissions ``open()`` would give it (0666 less the umask);
a replaced regular file keeps its permission bits.
"""
from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["open_output", "replaces_by_rename"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replaces_by_rename(path: str | os.PathLike[str]) -> bool:
    """True when :func:`open_output` writes ``path`` via a temporary file and a rename: the path
    does not exist (and is not a dangling link) or is a regular file (not through a link)."""
    if os.fspath(path) == "-":
        return False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    return stat.S_ISREG(st.st_mode)


@contextlib.contextmanager
def open_output(path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = False,
                **open_kwargs: Any) -> Iterator[IO[Any]]:
    """A file object for writing ``path`` (see the module docstring for what happens to it).

    ``mode`` is ``"wb"`` (default) or ``"w"`` (text; ``open_kwargs`` such as ``encoding`` are
    passed to :func:`open`). ``fsync`` makes a renamed file durable before the rename.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"open_output writes a new output: mode must be 'wb' or 'w', got {mode!r}")
    p = os.fspath(path)
    if p == "-":
        out: IO[Any] = sys.stdout.buffer if mode == "wb" else sys.stdout
        try:
            yield out
        finally:
            with contextlib.suppress(BrokenPipeError, ValueError):
                out.flush()
        return
    if not replaces_by_rename(p):
        # FIFO, device, socket, symbolic link (to anything): written where it is
        with open(p, mode, **open_kwargs) as f:
            yield f
        return
    try:
        old_mode: int | None = stat.S_IMODE(os.stat(p).st_mode)
    except FileNotFoundError:
        old_mode = None
    directory, base = os.path.split(os.path.abspath(p))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=directory)
    try:
        os.fchmod(fd, old_mode if old_mode is not None else 0o666 & ~_umask())
        f = os.fdopen(fd, mode, **open_kwargs)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
