"""Independent pure-Python references of AGD's byte layout, for checking the kernels.

Written from the format description (persona-original.md §1), not from our
kernels, so a test comparing the two can catch a kernel that drifts.
"""
from __future__ import annotations

import struct

BASE_CODE = {"A": 0, "C": 1, "T": 2, "G": 3, "N": 4}


def ref_pack(seq: bytes) -> bytes:
    """3-bit bases as the original's IntoBases: 21 per LE uint64, base i at bits [3i, 3i+3), END 7."""
    codes = [BASE_CODE[chr(c).upper()] for c in seq] + [7]
    words = []
    for i in range(0, len(codes), 21):
        w = 0
        for j, c in enumerate(codes[i : i + 21]):
            w |= c << (3 * j)
        words.append(w)
    return struct.pack(f"<{len(words)}Q", *words)
