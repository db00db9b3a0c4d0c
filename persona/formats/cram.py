"""CRAM output through htslib (pysam): BAM records re-encoded against the reference.

CRAM stores bases as differences from the reference, so writing it needs the
reference FASTA the data was aligned to; the reference registry records where
that FASTA came from (``ReferenceInfo.source``). htslib checks each ``@SQ``'s
``M5`` against the FASTA it is given, so a wrong reference is refused rather
than silently producing unreadable files.
"""
from __future__ import annotations

import os
import shutil
from typing import IO, Any

from persona.errors import DatasetError, InputFormatError


def reference_fasta(reference: str | None, references_url: str | None) -> str:
    """The FASTA of registered reference ``reference`` (for CRAM), or an error saying what to do."""
    if not reference:
        raise DatasetError("CRAM export needs the reference the dataset was aligned to, and the dataset names "
                           "none; pass --reference FASTA")
    if os.path.isfile(reference):
        return reference
    from persona.align.reference import reference_info
    from persona.config import get_config

    info = reference_info(reference, references_url or get_config().align.references_url)
    if not os.path.isfile(info.source):
        raise DatasetError(f"reference {reference!r} was added from {info.source}, which is no longer there; "
                           "CRAM export needs that FASTA: pass --reference FASTA")
    return info.source


def bam_to_cram(bam: str | os.PathLike[str], out: IO[bytes], fasta: str, *, threads: int = 1) -> int:
    """Re-encode the BAM file ``bam`` as CRAM into the binary stream ``out``; returns the records written.

    The FASTA is indexed (``.fai``) next to a private copy when it has no index and its
    directory is not writable.
    """
    import pysam

    fasta = _indexed(fasta)
    tmp_out = f"{os.fspath(bam)}.cram"
    n = 0
    try:
        with pysam.AlignmentFile(os.fspath(bam), "rb", check_sq=False) as src, \
                pysam.AlignmentFile(tmp_out, "wc", template=src, reference_filename=fasta,
                                    threads=max(1, threads)) as dst:
            for rec in src.fetch(until_eof=True):
                dst.write(rec)
                n += 1
    except (OSError, ValueError) as e:
        raise InputFormatError(f"cannot write CRAM against {fasta}: {e}") from None
    with open(tmp_out, "rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)
    os.unlink(tmp_out)
    return n


def _indexed(fasta: str) -> str:
    """``fasta`` with its ``.fai`` (made beside it, as samtools faidx does), or an indexed private copy
    where that is not possible: a read-only or package directory, a gzip (not bgzip) file."""
    if os.path.exists(fasta + ".fai"):
        return fasta
    import pysam

    import persona

    package_dir = os.path.dirname(os.path.abspath(persona.__file__))
    in_package = os.path.abspath(fasta).startswith(package_dir + os.sep)
    try:
        if in_package or not os.access(os.path.dirname(os.path.abspath(fasta)), os.W_OK):
            raise PermissionError(fasta)
        pysam.faidx(fasta)
        return fasta
    except Exception:  # noqa: BLE001 - read-only directory or gzip (not bgzip): index a private copy
        import gzip
        import tempfile

        d = tempfile.mkdtemp(prefix="persona-cram-ref-")
        copy = os.path.join(d, "ref.fa")
        opener: Any = gzip.open if _is_gzip(fasta) else open
        with opener(fasta, "rb") as src, open(copy, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        pysam.faidx(copy)
        return copy


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"
