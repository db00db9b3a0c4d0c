"""Checks of one chunk file's header against the manifest that names it.

A chunk header repeats what the manifest says about the chunk: its records
(``first_ordinal``/``last_ordinal``), the dataset it belongs to (``string_id``,
the dataset name cut to 32 bytes) and the kind of records its column holds.
:func:`check_chunk_header` refuses a file where any of these disagree, so a
chunk file of another dataset or another chunk is never read as this one's.
"""
from __future__ import annotations

from persona.agd.columns import BASE, METADATA, QUAL, RESULTS, is_secondary_column
from persona.agd.format import ChunkHeader, CompressionType, RecordType, string_id_for
from persona.agd.manifest import ChunkRef
from persona.errors import ChunkFormatError

#: the record types a header may carry for each known column (unknown columns: any)
_ALLOWED_TYPES: dict[str, tuple[RecordType, ...]] = {
    # a TEXT base column is the original's base_decompression output
    BASE: (RecordType.COMPACTED_BASES, RecordType.TEXT),
    QUAL: (RecordType.TEXT,),
    METADATA: (RecordType.TEXT,),
    RESULTS: (RecordType.STRUCTURED,),
}


def allowed_record_types(column: str) -> tuple[RecordType, ...] | None:
    """Record types a chunk of ``column`` may have; None for columns we do not interpret."""
    if column in _ALLOWED_TYPES:
        return _ALLOWED_TYPES[column]
    if is_secondary_column(column):
        return (RecordType.STRUCTURED,)
    return None


def check_chunk_header(header: ChunkHeader, ref: ChunkRef, column: str, dataset_name: str,
                       key: str | None = None) -> None:
    """Raise :class:`ChunkFormatError` naming ``key`` unless ``header`` (of the ``column`` file of
    chunk ``ref``) agrees with the manifest: the same records ``[ref.first, ref.last)`` (so the
    same record count), the dataset name ``dataset_name`` as its ``string_id`` (compared as the
    header stores it: cut to 32 UTF-8 bytes), and a record type ``column`` can hold (text bases
    only in gzip or uncompressed chunks: the original writes them, and it cannot write zstd)."""
    if (header.first_ordinal, header.last_ordinal) != (ref.first, ref.last):
        raise ChunkFormatError(
            f"header holds records [{header.first_ordinal}, {header.last_ordinal}) "
            f"({header.num_records} records) but the manifest says chunk {ref.path!r} holds "
            f"[{ref.first}, {ref.last}) ({ref.num_records} records)",
            key=key,
        )
    expected = string_id_for(dataset_name)
    if header.string_id != expected:
        raise ChunkFormatError(
            f"header names dataset {header.string_id!r} but the manifest is that of {dataset_name!r}: "
            "a chunk file of another dataset",
            key=key,
        )
    allowed = allowed_record_types(column)
    if column == BASE and header.record_type is RecordType.TEXT and header.compression is CompressionType.ZSTD:
        # text bases come only from the original's base_decompression, which cannot write zstd:
        # here the record type (outside the frame's checksum) was damaged
        allowed = (RecordType.COMPACTED_BASES,)
    if allowed is not None and header.record_type not in allowed:
        raise ChunkFormatError(
            f"record type {header.record_type.name}, expected {' or '.join(t.name for t in allowed)} "
            f"for {column!r}",
            key=key,
        )
