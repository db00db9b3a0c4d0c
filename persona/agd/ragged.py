"""``RaggedArray``: the in-memory form of one AGD column of one chunk.

A column holds N variable-length records. We keep them as one contiguous
``uint8`` payload plus an absolute ``uint64`` offset table of N+1 entries
(``offsets[0] == 0``, record *i* is ``data[offsets[i]:offsets[i+1]]``). This is
the layout the Cython kernels consume directly (no per-record Python objects),
and it maps one-to-one onto AGD's on-disk "relative index + data" layout: the
relative index is ``np.diff(offsets)``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


class RaggedArray:
    """N byte records stored contiguously. Immutable by convention.

    Contract: ``offsets`` is a 1-D ``uint64`` array of length N+1, starting at
    0, non-decreasing, ending at ``len(data)``; ``data`` is a 1-D ``uint8``
    array. Constructors validate this; kernels may assume it.
    """

    __slots__ = ("offsets", "data")

    def __init__(self, offsets: np.ndarray, data: np.ndarray, *, validate: bool = True) -> None:
        offsets = np.ascontiguousarray(offsets, dtype=np.uint64)
        data = np.ascontiguousarray(data, dtype=np.uint8)
        if validate:
            if offsets.ndim != 1 or offsets.size == 0:
                raise ValueError("offsets must be a 1-D array of N+1 entries")
            if offsets[0] != 0 or int(offsets[-1]) != data.size:
                raise ValueError(
                    f"offsets must start at 0 and end at len(data)={data.size}, "
                    f"got {int(offsets[0])}..{int(offsets[-1])}"
                )
            if offsets.size > 1 and np.any(offsets[1:] < offsets[:-1]):
                raise ValueError("offsets must be non-decreasing")
        self.offsets = offsets
        self.data = data

    # -- construction -------------------------------------------------------
    @classmethod
    def from_list(cls, records: Iterable[bytes | str]) -> "RaggedArray":
        items = [r.encode() if isinstance(r, str) else bytes(r) for r in records]
        offsets = np.zeros(len(items) + 1, dtype=np.uint64)
        if items:
            np.cumsum([len(r) for r in items], out=offsets[1:])
        data = np.frombuffer(b"".join(items), dtype=np.uint8).copy()
        return cls(offsets, data, validate=False)

    @classmethod
    def from_lengths(cls, lengths: np.ndarray, data: np.ndarray | bytes | memoryview) -> "RaggedArray":
        """Build from a relative index (record lengths), as stored in AGD chunks."""
        lengths = np.asarray(lengths)
        offsets = np.zeros(lengths.size + 1, dtype=np.uint64)
        np.cumsum(lengths, dtype=np.uint64, out=offsets[1:])
        if not isinstance(data, np.ndarray):
            data = np.frombuffer(data, dtype=np.uint8)
        return cls(offsets, data)

    @classmethod
    def empty(cls) -> "RaggedArray":
        return cls(np.zeros(1, dtype=np.uint64), np.zeros(0, dtype=np.uint8), validate=False)

    @classmethod
    def concat(cls, parts: Sequence["RaggedArray"]) -> "RaggedArray":
        if not parts:
            return cls.empty()
        data = np.concatenate([p.data for p in parts]) if parts else np.zeros(0, np.uint8)
        offs = [np.zeros(1, dtype=np.uint64)]
        base = np.uint64(0)
        for p in parts:
            offs.append(p.offsets[1:] + base)
            base += np.uint64(p.data.size)
        return cls(np.concatenate(offs), data, validate=False)

    # -- access ---------------------------------------------------------------
    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, i: int) -> bytes:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range for {n} records")
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RaggedArray):
            return NotImplemented
        return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.data, other.data)

    def __repr__(self) -> str:
        return f"RaggedArray(n={len(self)}, nbytes={self.data.size})"

    @property
    def lengths(self) -> np.ndarray:
        """Per-record byte lengths (``uint64``); as ``uint32`` this is AGD's relative index."""
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.data.size)

    def slice(self, start: int, stop: int) -> "RaggedArray":
        """Records ``[start, stop)`` as a new array sharing no memory with this one."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return RaggedArray(self.offsets[start : stop + 1] - np.uint64(lo), self.data[lo:hi].copy(), validate=False)

    def tolist(self) -> list[bytes]:
        return list(self)
