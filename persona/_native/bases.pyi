"""3-bit compacted bases (AGD COMPACTED_BASES) and per-record base/quality transforms.

Columns are passed as ``(offsets uint64[N+1], data uint8[])`` (RaggedArray layout).
"""
import numpy as np
import numpy.typing as npt

BASES_PER_WORD: int  # 21
END_CODE: int  # 7

def packed_size(offsets: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Offsets of the packed form of records with these text offsets."""

def pack_bases(
    offsets: npt.NDArray[np.uint64], data: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    """Text bases (ACGTN, any case) -> packed words; ValueError names record and character."""

def unpack_bases(
    offsets: npt.NDArray[np.uint64], data: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    """Packed words -> uppercase text bases; ValueError names the malformed record."""

def reverse_complement(
    offsets: npt.NDArray[np.uint64],
    data: npt.NDArray[np.uint8],
    mask: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint8]:
    """Per-record reverse complement (only where ``mask`` is true); same offsets."""

def reverse_records(
    offsets: npt.NDArray[np.uint64],
    data: npt.NDArray[np.uint8],
    mask: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint8]:
    """Per-record reversal (only where ``mask`` is true); same offsets."""
