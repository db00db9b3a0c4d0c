"""Alignment records in memory: a numpy structured array plus a CIGAR column.

One row per read. This mirrors the proto3 ``Alignment`` message of the original
(``protos/persona/agd/v1/alignment.proto``): positions are 0-based within the
contig, ``ref_index`` indexes the manifest's ``reference_contigs``, -1 means
"none" (unmapped read / mate). The CIGAR strings live in a separate
:class:`~persona.agd.ragged.RaggedArray` because they vary in length.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persona.agd.ragged import RaggedArray

ALIGNMENT_DTYPE = np.dtype(
    [
        ("flag", np.uint32),
        ("mapq", np.int32),
        ("ref_index", np.int32),
        ("position", np.int64),
        ("next_ref_index", np.int32),
        ("next_position", np.int64),
        ("template_length", np.int64),
    ]
)

# SAM flag bits (the original's sam_flags.h uses the same values).
FLAG_PAIRED = 0x1
FLAG_PROPER_PAIR = 0x2
FLAG_UNMAPPED = 0x4
FLAG_MATE_UNMAPPED = 0x8
FLAG_REVERSE = 0x10
FLAG_MATE_REVERSE = 0x20
FLAG_READ1 = 0x40
FLAG_READ2 = 0x80
FLAG_SECONDARY = 0x100
FLAG_QCFAIL = 0x200
FLAG_DUPLICATE = 0x400
FLAG_SUPPLEMENTARY = 0x800


@dataclass
class Alignments:
    """A block of alignment records: ``fields`` (ALIGNMENT_DTYPE, N rows) + ``cigars`` (N records)."""

    fields: np.ndarray
    cigars: RaggedArray

    def __post_init__(self) -> None:
        if self.fields.dtype != ALIGNMENT_DTYPE:
            raise ValueError(f"fields must have ALIGNMENT_DTYPE, got {self.fields.dtype}")
        if len(self.fields) != len(self.cigars):
            raise ValueError(f"{len(self.fields)} records but {len(self.cigars)} CIGARs")

    def __len__(self) -> int:
        return len(self.fields)

    @classmethod
    def empty(cls, n: int) -> "Alignments":
        """N unmapped records (flag 0x4, positions -1, no CIGAR)."""
        f = np.zeros(n, dtype=ALIGNMENT_DTYPE)
        f["flag"] = FLAG_UNMAPPED
        f["ref_index"] = -1
        f["position"] = -1
        f["next_ref_index"] = -1
        f["next_position"] = -1
        return cls(f, RaggedArray(np.zeros(n + 1, np.uint64), np.zeros(0, np.uint8), validate=False))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Alignments):
            return NotImplemented
        return np.array_equal(self.fields, other.fields) and self.cigars == other.cigars
