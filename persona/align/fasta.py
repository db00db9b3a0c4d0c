"""FASTA validation and the contig table of a reference.

:func:`read_contig_table` reads a FASTA (plain, gzip or BGZF) once, checks it
and returns its contigs in file order; ``Contig.index`` is the position in
that order, which is what ``ref_index`` in alignment records refers to and
what minimap2 numbers its sequences by.

Rejected, with an :class:`~persona.errors.InputFormatError` naming the file,
the line and the contig: no sequence at all, text before the first ``>``, an
empty name, a duplicate name, a character outside the IUPAC nucleotide
alphabet (upper or lower case, plus ``*`` and ``-`` which some tools emit are
*not* accepted), an empty contig.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from persona.agd.manifest import Contig
from persona.errors import InputFormatError

_VALID = b"ACGTNacgtnRYSWKMBDHVryswkmbdhvUu"
_EOL = b"\r\n"


@dataclass(frozen=True)
class FastaSummary:
    """What :func:`read_contig_table` learned: contigs and the SHA-256 of the (uncompressed) text."""

    contigs: list[Contig]
    sha256: str

    @property
    def total_length(self) -> int:
        return sum(c.length for c in self.contigs)


def _open(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_contig_table(path: str | Path) -> FastaSummary:
    """Validate ``path`` and return its contig table (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"FASTA file {path} does not exist", file=str(path))
    contigs: list[Contig] = []
    seen: dict[str, int] = {}
    digest = hashlib.sha256()
    md5 = hashlib.md5()  # the SAM spec's M5: upper-case sequence, no line breaks
    name: str | None = None
    name_line = 0
    length = 0
    lineno = 0

    def close_contig(lineno: int) -> None:
        nonlocal md5
        if name is None:
            return
        if length == 0:
            raise InputFormatError(f"contig {name!r} (line {name_line}) has no sequence", file=str(path),
                                   line=lineno)
        contigs.append(Contig(name, length, len(contigs), md5.hexdigest()))

    try:
        with _open(path) as f:
            for lineno, raw in enumerate(f, 1):
                digest.update(raw)
                line = raw.rstrip(_EOL)
                if line.startswith(b">"):
                    close_contig(lineno)
                    fields = line[1:].split(None, 1)
                    if not fields:
                        raise InputFormatError("empty contig name", file=str(path), line=lineno)
                    name = fields[0].decode("utf-8", "replace")
                    if name in seen:
                        raise InputFormatError(
                            f"duplicate contig name {name!r} (first at line {seen[name]})",
                            file=str(path), line=lineno)
                    seen[name] = lineno
                    name_line = lineno
                    length = 0
                    md5 = hashlib.md5()
                    continue
                if not line:
                    continue
                if name is None:
                    raise InputFormatError("sequence before the first '>' header line", file=str(path),
                                           line=lineno)
                bad = line.translate(None, _VALID)
                if bad:
                    col = line.index(bad[:1]) + 1
                    raise InputFormatError(
                        f"invalid character {bad[:1].decode('latin-1')!r} in contig {name!r}",
                        file=str(path), line=lineno, column=col)
                length += len(line)
                md5.update(line.upper())
            close_contig(lineno)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputFormatError(f"cannot read FASTA {path}: {e}", file=str(path)) from None
    if not contigs:
        raise InputFormatError("no contigs (no '>' header line)", file=str(path))
    return FastaSummary(contigs, digest.hexdigest())
