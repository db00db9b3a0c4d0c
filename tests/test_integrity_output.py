"""Issue 8, outputs: regular files are replaced by temp file + rename (an error leaves the old
file intact); anything else (``-``, FIFOs, devices, symbolic links) is written in place and
never replaced."""
from __future__ import annotations

import io
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from persona.formats.output import open_output, replaces_by_rename


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".part"))


def test_new_file_is_written_via_rename(tmp_path: Path) -> None:
    out = tmp_path / "o.sam"
    with open_output(out) as f:
        f.write(b"abc")
        assert not out.exists()  # not visible until complete
        assert leftovers(tmp_path)
    assert out.read_bytes() == b"abc" and not leftovers(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_regular_file_is_replaced_keeping_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "o.sam"
    out.write_bytes(b"old")
    out.chmod(0o640)
    ino = out.stat().st_ino
    with open_output(str(out), "w") as f:
        f.write("new")
    assert out.read_bytes() == b"new" and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert out.stat().st_ino != ino  # replaced by rename, not rewritten


def test_error_mid_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    out = tmp_path / "o.bam"
    out.write_bytes(b"previous complete output")
    with pytest.raises(RuntimeError, match="boom"), open_output(out) as f:
        f.write(b"partial" * 1000)
        raise RuntimeError("boom")
    assert out.read_bytes() == b"previous complete output"
    assert not leftovers(tmp_path)


def test_interrupt_mid_write_removes_the_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "o.bam"
    with pytest.raises(KeyboardInterrupt), open_output(out) as f:
        f.write(b"x")
        raise KeyboardInterrupt
    assert not out.exists() and not leftovers(tmp_path)


def test_symlink_target_is_written_in_place(tmp_path: Path) -> None:
    target = tmp_path / "real.sam"
    target.write_bytes(b"old content, longer than the new one")
    link = tmp_path / "link.sam"
    link.symlink_to(target)
    assert not replaces_by_rename(link)
    with open_output(link) as f:
        f.write(b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"


def test_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.sam"
    link.symlink_to(tmp_path / "missing.sam")
    with open_output(link) as f:
        f.write(b"x")
    assert link.is_symlink() and (tmp_path / "missing.sam").read_bytes() == b"x"


def test_dev_null_is_written_not_replaced() -> None:
    before = os.stat("/dev/null")
    with open_output("/dev/null") as f:
        f.write(b"discarded")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


def test_dev_stdout_symlink_is_not_replaced(tmp_path: Path) -> None:
    """The reported bug: ``persona export ds /dev/stdout`` replaced the symlink with a file.
    Here a link like /dev/stdout (to a device) in a scratch directory."""
    link = tmp_path / "stdout"
    link.symlink_to("/dev/null")
    with open_output(link) as f:
        f.write(b"x")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    with open_output(fifo) as f:
        f.write(b"through the pipe\n" * 1000)
    t.join(timeout=10)
    assert not t.is_alive() and got == [b"through the pipe\n" * 1000]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not leftovers(tmp_path)


def test_dash_is_stdout_and_is_not_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    fake = io.TextIOWrapper(raw, encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", fake)
    with open_output("-") as f:
        f.write(b"bytes to stdout")
    assert not fake.closed and not raw.closed and raw.getvalue() == b"bytes to stdout"
    with open_output("-", "w") as f:
        f.write(" and text")
    assert raw.getvalue() == b"bytes to stdout and text"


def test_bad_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"), open_output(tmp_path / "x", "ab"):
        pass
