"""A small progress bar for long CLI operations (import, align, export).

It draws on stderr only when stderr is a terminal, so logs, pipes and CI
output stay clean; elsewhere it counts silently. ``update`` is thread-safe
(stage threads call it directly) and cheap: the line is redrawn at most every
``min_interval`` seconds.

>>> import io
>>> with Progress(total=3, desc="import", unit="chunk", stream=io.StringIO()) as bar:
...     bar.update(3)
>>> bar.count
3
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

__all__ = ["Progress", "format_count", "format_duration"]


def format_count(n: float) -> str:
    """``950``, ``12.3k``, ``4.56M``: three significant digits with an SI suffix."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.3g}{suffix}" if v < 1000 else f"{v:.0f}{suffix}"
    return f"{n:.0f}" if n == int(n) else f"{n:.3g}"


def format_duration(seconds: float) -> str:
    """``MM:SS``, or ``H:MM:SS`` from an hour on."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Counts work done, drawing ``desc: 42% |████      | 4.2k/10k reads [00:03<00:04, 1.2k reads/s]``.

    ``total`` may be None (unknown): then the line shows count, elapsed time
    and rate only. ``enabled`` forces drawing on or off; by default it is on
    exactly when ``stream`` (stderr) is a TTY. ``close`` (or leaving the
    ``with`` block) draws the final state and ends the line.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        desc: str = "",
        unit: str = "it",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        min_interval: float = 0.1,
        width: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is not None and total < 0:
            raise ValueError(f"progress total must be >= 0, got {total}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.min_interval = min_interval
        self.width = width
        self._clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._start = clock()
        self._last_draw = -float("inf")
        self._last_len = 0
        self._closed = False

    @property
    def count(self) -> int:
        return self._count

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units done; redraw if the last draw is old enough."""
        with self._lock:
            self._count += n
            if not self.enabled or self._closed:
                return
            now = self._clock()
            if now - self._last_draw >= self.min_interval:
                self._draw(now)

    def set_total(self, total: int | None) -> None:
        """Change the total once it becomes known (e.g. after the manifest is read)."""
        with self._lock:
            self.total = total

    def close(self) -> None:
        """Draw the final line and move to the next one; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.enabled:
                self._draw(self._clock())
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def render(self, now: float | None = None) -> str:
        """The status line for the current count (without carriage return or padding)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 0.0)
        rate = self._count / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        rate_text = f"{format_count(rate)} {self.unit}/s" if elapsed > 0 else f"? {self.unit}/s"
        if not self.total:
            return f"{head}{format_count(self._count)} {self.unit} [{format_duration(elapsed)}, {rate_text}]"
        frac = min(self._count / self.total, 1.0)
        if frac >= 1:
            eta = "00:00"
        elif rate > 0:
            eta = format_duration((self.total - self._count) / rate)
        else:
            eta = "?"
        counts = f"{format_count(self._count)}/{format_count(self.total)} {self.unit}"
        tail = f"[{format_duration(elapsed)}<{eta}, {rate_text}]"
        text_len = len(head) + 5 + len(counts) + len(tail) + 4  # "100% " and " |", "| ", " "
        bar_width = max(0, min(40, self._columns() - text_len - 1))
        filled = int(frac * bar_width)
        bar = f"|{'█' * filled}{' ' * (bar_width - filled)}| " if bar_width >= 5 else ""
        return f"{head}{frac * 100:3.0f}% {bar}{counts} {tail}"

    # ------------------------------------------------------------------ private
    def _draw(self, now: float) -> None:
        line = self.render(now)
        # Pad over the previous, possibly longer line instead of relying on terminal escapes.
        pad = " " * max(0, self._last_len - len(line))
        self.stream.write(f"\r{line}{pad}")
        self.stream.flush()
        self._last_len = len(line)
        self._last_draw = now

    def _columns(self) -> int:
        if self.width is not None:
            return self.width
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 80


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False
