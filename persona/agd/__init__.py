"""AGD, the Aggregate Genomic Data format (thesis ch. 3): chunked, columnar, self-describing.

A dataset is a manifest (``<name>_metadata.json``) plus one chunk file per
(chunk, column) (``<name>_<first>.<column>``). Each chunk file is a 56-byte
header and a (compressed) payload of a uint32 relative index and the records.
Byte-compatible with the original AGD v0.1; zstd compression is our extension.

Layers, bottom up: :mod:`~persona.agd.format` (header), :mod:`~persona.agd.chunk`
(one file), :mod:`~persona.agd.columns` (what records mean), :mod:`~persona.agd.manifest`,
:mod:`~persona.agd.dataset` (a dataset in a store), :mod:`~persona.agd.verify`.
"""
from persona.agd.chunk import decode_chunk, encode_chunk
from persona.agd.columns import (
    BASE,
    METADATA,
    QUAL,
    READ_COLUMNS,
    RESULTS,
    column_record_type,
    decode_column,
    encode_column,
    is_alignment_column,
    secondary_column,
)
from persona.agd.dataset import Dataset, DatasetWriter, encode_column_chunk, find_manifests
from persona.agd.format import HEADER_SIZE, ChunkHeader, CompressionType, RecordType
from persona.agd.manifest import ChunkRef, Contig, Manifest, chunk_path, manifest_key
from persona.agd.ragged import RaggedArray
from persona.agd.records import ABSENT_ROW, ALIGNMENT_DTYPE, Alignments
from persona.agd.verify import Problem, VerifyReport, repair_manifest, verify_dataset

__all__ = [
    "ABSENT_ROW",
    "ALIGNMENT_DTYPE",
    "Alignments",
    "BASE",
    "ChunkHeader",
    "ChunkRef",
    "CompressionType",
    "Contig",
    "Dataset",
    "DatasetWriter",
    "HEADER_SIZE",
    "METADATA",
    "Manifest",
    "Problem",
    "QUAL",
    "READ_COLUMNS",
    "RESULTS",
    "RaggedArray",
    "RecordType",
    "VerifyReport",
    "chunk_path",
    "column_record_type",
    "decode_chunk",
    "decode_column",
    "encode_chunk",
    "encode_column",
    "encode_column_chunk",
    "find_manifests",
    "is_alignment_column",
    "manifest_key",
    "repair_manifest",
    "secondary_column",
    "verify_dataset",
]
