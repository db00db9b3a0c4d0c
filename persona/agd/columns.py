"""Column codecs: what a column's records mean, by the column's name.

=====================  =================  =========================================
column                 record type        in memory (decoded value)
=====================  =================  =========================================
``base``               COMPACTED_BASES    RaggedArray of text bases (A,C,G,T,N)
``qual``               TEXT               RaggedArray of Phred+33 qualities
``metadata``           TEXT               RaggedArray of read names (no ``@``)
``results``            STRUCTURED         :class:`Alignments`
``tags``               STRUCTURED         RaggedArray of BAM aux bytes (see below)
``secondary<N>``       STRUCTURED         :class:`Alignments`
``secondary<N>_tags``  STRUCTURED         RaggedArray of BAM aux bytes (see below)
anything else          STRUCTURED         RaggedArray, bytes passed through
=====================  =================  =========================================

**Optional tags.** ``tags`` holds one record per read: the optional SAM fields
of the read's primary record (the ``results`` row, or the read's record in an
imported SAM/BAM), byte for byte as they follow QUAL in a BAM record (SAM spec
§4.2.4: two tag characters, a type character, the value; integers stored in
the smallest type that holds them, as htslib does), without ``RG`` (export
writes ``RG:Z`` from the read group, then these bytes). ``secondary<N>_tags``
does the same for the ``secondary<N>`` column's rows (zero-length for absent
rows). Export copies the bytes into BAM records and renders them in SAM text.
The align app (minimap2 backend) computes them in the kernel: minimap2's
``NM ms AS nn tp cm s1 s2 de SA MD`` on mapped records, ``MC`` and ``MQ`` on
primary records whose mate is mapped, ``rl`` on every record. An import can
fill ``tags`` directly with a BAM record's aux bytes.

**Supplementary alignments** live in the ``secondary<N>`` columns: align
always keeps every supplementary alignment of a read (flag 0x800) plus up to
``--secondary`` secondary alignments (0x100), in minimap2's order, so a
default align (no ``--secondary``) writes as many ``secondary<N>`` columns as
the read with the most supplementary alignments needs (often one or two, none
when no read has one). Export writes them after their read's primary record.

In ``secondary<N>`` columns a zero-length record means "no alignment" (the
read has fewer than N+1 secondary alignments): it decodes to an absent row
(``Alignments.present`` false, fields :data:`~persona.agd.records.ABSENT_ROW`)
and absent rows encode to zero-length records. ``results`` is unchanged:
every read has a primary record, and a zero-length record there is what
protobuf makes of it (a message of default values), never an absent row.

Unknown names are opaque byte columns, as the original writer treats any
non-text, non-base column (e.g. ``prot``) as STRUCTURED.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from persona._native import alignment_codec, bases
from persona.agd.format import RecordType
from persona.agd.ragged import RaggedArray
from persona.agd.records import ABSENT_ROW, ALIGNMENT_DTYPE, Alignments
from persona.errors import ChunkFormatError

BASE = "base"
QUAL = "qual"
METADATA = "metadata"
RESULTS = "results"
TAGS = "tags"
READ_COLUMNS = (BASE, QUAL, METADATA)
_SECONDARY = re.compile(r"secondary\d+")
_SECONDARY_TAGS = re.compile(r"secondary\d+_tags")

ColumnValue = RaggedArray | Alignments


def secondary_column(i: int) -> str:
    """Name of the i-th secondary results column (``secondary0``, ...)."""
    return f"secondary{i}"


def is_secondary_column(name: str) -> bool:
    return _SECONDARY.fullmatch(name) is not None


def is_alignment_column(name: str) -> bool:
    return name == RESULTS or is_secondary_column(name)


def tags_column(name: str) -> str:
    """The tag column of alignment column ``name``: ``tags`` for ``results``, ``secondary<N>_tags``."""
    if name == RESULTS:
        return TAGS
    if not is_secondary_column(name):
        raise ValueError(f"{name!r} is not an alignment column")
    return f"{name}_tags"


def is_tags_column(name: str) -> bool:
    """``tags`` or ``secondary<N>_tags``."""
    return name == TAGS or _SECONDARY_TAGS.fullmatch(name) is not None


def column_record_type(name: str) -> RecordType:
    """The record type the header of a chunk of column ``name`` carries."""
    if name == BASE:
        return RecordType.COMPACTED_BASES
    if name in (QUAL, METADATA):
        return RecordType.TEXT
    return RecordType.STRUCTURED


def column_sort_key(name: str) -> tuple[int, int, str]:
    """Canonical column order: base, qual, metadata, results, tags, secondary0, secondary0_tags, ..,
    others by name."""
    fixed = {BASE: 0, QUAL: 1, METADATA: 2, RESULTS: 3}
    if name in fixed:
        return (fixed[name], 0, "")
    if name == TAGS:
        return (3, 1, "")
    if is_secondary_column(name):
        return (4, int(name[len("secondary") :]), "")
    if _SECONDARY_TAGS.fullmatch(name):
        return (4, int(name[len("secondary") : -len("_tags")]), "tags")
    return (5, 0, name)


def _as_ragged(value: object) -> RaggedArray:
    if isinstance(value, RaggedArray):
        return value
    if isinstance(value, Iterable) and not isinstance(value, (bytes, str)):
        return RaggedArray.from_list(value)  # type: ignore[arg-type]
    raise TypeError(f"expected a RaggedArray or a sequence of bytes, got {type(value).__name__}")


def encode_column(name: str, value: ColumnValue | Iterable[bytes | str]) -> RaggedArray:
    """The on-disk records of a column (still uncompressed), from its in-memory value.

    Raises ``ValueError`` (bad bases) or ``TypeError`` (wrong value kind).
    """
    if is_alignment_column(name):
        if not isinstance(value, Alignments):
            raise TypeError(f"column {name!r} takes Alignments, got {type(value).__name__}")
        if name == RESULTS and not value.all_present:
            raise ValueError(f"column {name!r}: every read needs a primary record, "
                             f"but row {int(np.argmin(value.present))} is absent")
        offsets, data = alignment_codec.encode_alignments(
            value.fields, value.cigars.offsets, value.cigars.data,
            None if value.all_present else value.present,
        )
        return RaggedArray(offsets, data, validate=False)
    ragged = _as_ragged(value)
    if name == BASE:
        try:
            offsets, data = bases.pack_bases(ragged.offsets, ragged.data)
        except ValueError as e:
            raise ValueError(f"column {name!r}: {e}") from None
        return RaggedArray(offsets, data, validate=False)
    return ragged


_TEXT_BASES = np.zeros(256, dtype=bool)
_TEXT_BASES[np.frombuffer(b"ACGTN", np.uint8)] = True


def decode_column(
    name: str,
    ragged: RaggedArray,
    key: str | None = None,
    record_type: RecordType | None = None,
) -> ColumnValue:
    """The in-memory value of a column from its on-disk records.

    ``record_type`` is the chunk header's; a ``base`` chunk stored as TEXT (the
    original's base_decompression output) is passed through. Malformed records
    raise :class:`ChunkFormatError` naming ``key`` and the record. Decoded bases and
    alignments are fresh arrays; TEXT columns are returned as given (typically
    read-only views of the chunk buffer: copy before modifying).
    """
    try:
        if is_alignment_column(name):
            fields, cig_offsets, cig_data = alignment_codec.decode_alignments(ragged.offsets, ragged.data)
            cigars = RaggedArray(cig_offsets, cig_data, validate=False)
            fields = fields.view(ALIGNMENT_DTYPE)
            if name == RESULTS:
                return Alignments(fields, cigars)
            present = ragged.offsets[1:] != ragged.offsets[:-1]
            if not present.all():
                fields[~present] = ABSENT_ROW
            return Alignments(fields, cigars, present)
        if name == BASE and record_type is not RecordType.TEXT:
            offsets, data = bases.unpack_bases(ragged.offsets, ragged.data)
            return RaggedArray(offsets, data, validate=False)
    except ValueError as e:
        raise ChunkFormatError(f"column {name!r}: {e}", key=key) from None
    if name == BASE and len(ragged.data):
        # text bases (the original's base_decompression output): only A, C, G, T, N may appear
        bad = ~_TEXT_BASES[np.asarray(ragged.data, dtype=np.uint8)]
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            rec = int(np.searchsorted(ragged.offsets, at, side="right")) - 1
            raise ChunkFormatError(f"column 'base': record {rec}: byte {int(ragged.data[at])!r} is not a base "
                                   "(text bases hold A, C, G, T, N)", key=key)
    return ragged


def empty_value(name: str) -> ColumnValue:
    """A zero-record value of column ``name``."""
    if is_alignment_column(name):
        return Alignments(np.zeros(0, ALIGNMENT_DTYPE), RaggedArray.empty())
    return RaggedArray.empty()
