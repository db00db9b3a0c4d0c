"""Giving freed heap back to the system (glibc's ``malloc_trim``).

glibc raises its mmap threshold after large blocks are freed, so later buffers of a few hundred KB
to a few MB come from the heap; a long run of differently sized ones (a merge decoding many runs'
compressed blocks, one step of a chain after another) leaves free pages the process still holds,
and peak RSS then grows with the number of runs instead of staying within the configured budget.
:func:`trim` returns those pages; it costs well under a millisecond per call at the rates used.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_libc: "ctypes.CDLL | None | bool" = False  # False: not looked up yet; None: not glibc


def trim() -> None:
    """Return free heap pages to the system (a no-op where the C library has no ``malloc_trim``)."""
    global _libc
    if _libc is False:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = lib
        except (OSError, AttributeError):
            _libc = None
    if _libc is not None:
        _libc.malloc_trim(0)  # type: ignore[union-attr]
