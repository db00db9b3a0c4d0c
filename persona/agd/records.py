"""Alignment records in memory: a numpy structured array plus a CIGAR column.

One row per read. This mirrors the proto3 ``Alignment`` message of the original
(``protos/persona/agd/v1/alignment.proto``): positions are 0-based within the
contig, ``ref_index`` indexes the manifest's ``reference_contigs``, -1 means
"none" (unmapped read / mate). The CIGAR strings live in a separate
:class:`~persona.agd.ragged.RaggedArray` because they vary in length.

A row may be *absent* ("no alignment": a read with fewer secondary alignments
than there are ``secondary<N>`` columns). ``Alignments.present`` (bool, one per
row) tells which rows are real; on disk an absent row is a zero-length record
(a real ``Alignment`` message never is: its position sub-messages are always
written). Absent rows' fields are ignored by the encoder; decoded and
aligner-made absent rows hold :data:`ABSENT_ROW` and an empty CIGAR.
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

#: The fields an absent row holds when decoded or made by an aligner: those of an
#: unmapped read (flag 0x4, no position, no mate), so code that ignores
#: ``present`` sees an unmapped record, never a fake alignment.
ABSENT_ROW = (FLAG_UNMAPPED, 0, -1, -1, -1, -1, 0)


@dataclass
class Alignments:
    """A block of alignment records: ``fields`` (ALIGNMENT_DTYPE, N rows) + ``cigars`` (N records).

    ``present`` (bool[N]) marks the rows that hold an alignment; None (the
    default) means every row does. Primary ``results`` rows are always present.
    ``tags`` (N records, or None: no tags known) holds each record's optional
    SAM fields as BAM binary aux bytes (the ``tags`` / ``<column>_tags`` columns,
    see :mod:`persona.agd.columns`); equality ignores it.
    """

    fields: np.ndarray
    cigars: RaggedArray
    present: np.ndarray = None  # type: ignore[assignment]  # filled in by __post_init__
    tags: RaggedArray | None = None

    def __post_init__(self) -> None:
        if self.fields.dtype != ALIGNMENT_DTYPE:
            raise ValueError(f"fields must have ALIGNMENT_DTYPE, got {self.fields.dtype}")
        if len(self.fields) != len(self.cigars):
            raise ValueError(f"{len(self.fields)} records but {len(self.cigars)} CIGARs")
        if self.tags is not None and len(self.tags) != len(self.fields):
            raise ValueError(f"{len(self.fields)} records but {len(self.tags)} tag records")
        if self.present is None:
            self.present = np.ones(len(self.fields), dtype=bool)
        else:
            self.present = np.asarray(self.present)
            if self.present.dtype != np.bool_ or self.present.shape != (len(self.fields),):
                raise ValueError(f"present must be a bool array of {len(self.fields)} entries, "
                                 f"got {self.present.dtype} {self.present.shape}")

    @property
    def all_present(self) -> bool:
        """Whether every row holds an alignment."""
        return bool(self.present.all())

    @classmethod
    def absent(cls, n: int) -> Alignments:
        """N absent rows (no alignment): :data:`ABSENT_ROW` fields, empty CIGARs, ``present`` all False."""
        f = np.empty(n, dtype=ALIGNMENT_DTYPE)
        f[:] = ABSENT_ROW
        return cls(f, RaggedArray(np.zeros(n + 1, np.uint64), np.zeros(0, np.uint8), validate=False),
                   np.zeros(n, dtype=bool))

    def __len__(self) -> int:
        return len(self.fields)

    @classmethod
    def empty(cls, n: int) -> Alignments:
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
        if not np.array_equal(self.present, other.present):
            return False
        if self.all_present:
            return np.array_equal(self.fields, other.fields) and self.cigars == other.cigars
        # absent rows carry no information: compare the present rows only
        keep = self.present
        return np.array_equal(self.fields[keep], other.fields[keep]) and [
            self.cigars[int(i)] for i in np.flatnonzero(keep)] == [other.cigars[int(i)] for i in np.flatnonzero(keep)]
