"""BAM writing: header block, record encoding per chunk, and a BGZF-backed writer.

A BAM file (SAM spec §4.2) is a BGZF stream of: magic ``BAM\\1``, the SAM
header text, the binary reference list, then alignment records. Records for a
whole AGD chunk are encoded in one call to the Cython kernel
:func:`persona._native.bam.encode_bam` and handed to :class:`BgzfWriter`,
which compresses on a thread pool. Reading BAM is left to pysam.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from types import TracebackType

import numpy as np

from persona._native import bam as _kernel
from persona.agd.ragged import RaggedArray
from persona.agd.records import Alignments
from persona.formats.bgzf import BgzfWriter

BAM_MAGIC = b"BAM\x01"


def header_block(header_text: str, contigs: Sequence[tuple[str, int]]) -> bytes:
    """The uncompressed BAM header: magic, l_text + text, n_ref + (l_name, name NUL, l_ref) per contig."""
    text = header_text.encode()
    parts = [BAM_MAGIC, struct.pack("<i", len(text)), text, struct.pack("<i", len(contigs))]
    for name, length in contigs:
        raw = name.encode() + b"\x00"
        parts.append(struct.pack("<i", len(raw)))
        parts.append(raw)
        parts.append(struct.pack("<i", length))
    return b"".join(parts)


def encode_records(
    metadata: RaggedArray,
    bases: RaggedArray,
    quals: RaggedArray,
    alignments: Alignments,
    n_contigs: int,
    read_group_id: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """BAM records for one chunk: ``(data uint8[], offsets uint64[N+1])``.

    ``bases``/``quals`` are in sequencing orientation (AGD's); records with
    flag 0x10 get SEQ reverse-complemented and QUAL reversed. Every record
    gets ``RG:Z:<read_group_id>`` unless it is None/empty, then its optional
    fields from ``alignments.tags`` (BAM aux bytes, copied as they are). Raises
    ``ValueError`` naming the bad record's index within the chunk.
    """
    return _kernel.encode_bam(
        metadata.data, metadata.offsets,
        bases.data, bases.offsets,
        quals.data, quals.offsets,
        np.ascontiguousarray(alignments.fields),
        alignments.cigars.data, alignments.cigars.offsets,
        n_contigs,
        (read_group_id or "").encode(),
        *((alignments.tags.data, alignments.tags.offsets) if alignments.tags is not None else ()),
    )


class BamWriter:
    """Write a BAM file: header at construction, then encoded record blocks, then EOF on close.

    ``level`` and ``threads`` are passed to :class:`BgzfWriter` (threads = extra
    compression threads, as samtools ``-@``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        header_text: str,
        contigs: Sequence[tuple[str, int]],
        *,
        level: int = 6,
        threads: int = 0,
    ) -> None:
        self._bgzf = BgzfWriter(path, level=level, threads=threads)
        self._bgzf.write(header_block(header_text, contigs))
        # htslib starts records in a fresh block; readers do not need it, but it
        # keeps the header separately decompressible, as samtools' output is.
        self._bgzf.flush()
        self.records = 0

    def write_encoded(self, data: np.ndarray, n_records: int) -> None:
        """Append records already encoded by :func:`encode_records`."""
        self._bgzf.write(data)
        self.records += n_records

    def close(self) -> None:
        self._bgzf.close()

    def abort(self) -> None:
        """Stop without the EOF block (used on errors; the caller removes the file)."""
        self._bgzf.abort()

    def __enter__(self) -> "BamWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
