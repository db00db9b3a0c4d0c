"""SAM text: the header Persona writes, and SAM record lines for an AGD chunk.

The header always has ``@HD`` (VN:1.6, SO from the dataset's sort order),
one ``@SQ`` per reference contig, one ``@RG`` (every record carries its ID as
an ``RG:Z`` tag) and one ``@PG`` for Persona. Records come from the decoded
AGD columns of one chunk through the Cython kernel
:func:`persona._native.bam.format_sam` (one call per chunk, GIL released).
"""
from __future__ import annotations

import gzip
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from persona._native import bam as _kernel
from persona.agd.ragged import RaggedArray
from persona.agd.records import Alignments
from persona.errors import ConfigError, InputFormatError

SAM_VERSION = "1.6"
#: Manifest ``sort`` values and the @HD SO value each one becomes.
SORT_ORDERS = {"coordinate": "coordinate", "queryname": "queryname", "unsorted": "unsorted", "unknown": "unknown"}
_BAD_VALUE = re.compile(r"[\t\n\r]")
_RG_ID = re.compile(r"^[!-~]+$")
_RG_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9]$")


@dataclass(frozen=True)
class ReadGroup:
    """The ``@RG`` line: ID and SM default to the dataset name; LB and PL are optional.

    PL should be one of the SAM spec's platform names (ILLUMINA, ONT, PACBIO, ...);
    Picard flags other values.
    """

    id: str
    sample: str
    library: str | None = None
    platform: str | None = None
    #: further @RG tags (PU, CN, DS, DT, PI, PM, ...) as (tag, value), in the order given
    other: tuple[tuple[str, str], ...] = ()

    @classmethod
    def for_dataset(cls, dataset_name: str, options: "ReadGroup | Mapping[str, str] | None" = None) -> "ReadGroup":
        """The read group to write: ``options`` (a ReadGroup, or a mapping with keys
        ``id``/``sample``/``library``/``platform`` or their SAM tags ``ID``/``SM``/``LB``/``PL``)
        over defaults ID = SM = dataset name."""
        if isinstance(options, ReadGroup):
            rg = options
        else:
            opts = dict(options or {})
            aliases = {"ID": "id", "SM": "sample", "LB": "library", "PL": "platform"}
            norm: dict[str, str] = {}
            other: list[tuple[str, str]] = []
            for key, value in opts.items():
                field = aliases.get(key, key)
                if field in ("id", "sample", "library", "platform"):
                    norm[field] = value
                elif _RG_TAG.match(key):
                    other.append((key, str(value)))
                else:
                    raise ConfigError(f"unknown read group option {key!r} (a two-letter @RG tag such as PU, CN)",
                                      key="read_group")
            rg = cls(
                id=norm.get("id") or dataset_name,
                sample=norm.get("sample") or dataset_name,
                library=norm.get("library"),
                platform=norm.get("platform"),
                other=tuple(other),
            )
        rg.validate()
        return rg

    def validate(self) -> None:
        if not _RG_ID.match(self.id):
            raise ConfigError(f"read group ID {self.id!r} must be printable text without spaces", key="read_group.id")
        for name in ("sample", "library", "platform"):
            value = getattr(self, name)
            if value is not None and (not value or _BAD_VALUE.search(value)):
                raise ConfigError(f"read group {name} {value!r} is empty or has a tab/newline", key=f"read_group.{name}")
        for tag, value in self.other:
            if not value or _BAD_VALUE.search(value):
                raise ConfigError(f"read group {tag} {value!r} is empty or has a tab/newline", key=f"read_group.{tag}")

    def header_line(self) -> str:
        fields = [f"ID:{self.id}", f"SM:{self.sample}"]
        if self.library:
            fields.append(f"LB:{self.library}")
        if self.platform:
            fields.append(f"PL:{self.platform}")
        fields.extend(f"{k}:{v}" for k, v in self.other)
        return "@RG\t" + "\t".join(fields)


def contig_pairs(contigs: Iterable[Any] | None) -> list[tuple[str, int]]:
    """``(name, length)`` per contig, in index order, from Contig objects, dicts or pairs."""
    out: list[tuple[str, int]] = []
    for c in contigs or ():
        if isinstance(c, Mapping):
            out.append((str(c["name"]), int(c["length"])))
        elif hasattr(c, "name") and hasattr(c, "length"):
            out.append((str(c.name), int(c.length)))
        else:
            name, length = c
            out.append((str(name), int(length)))
    return out


def default_command_line() -> str:
    """The running command, as one header-safe line (for @PG CL)."""
    return _BAD_VALUE.sub(" ", " ".join(shlex.quote(a) for a in sys.argv)) or "persona"


def build_header(
    *,
    contigs: Sequence[tuple[str, int]],
    sort: str | None,
    read_group: ReadGroup,
    version: str,
    command_line: str | None = None,
    md5s: Sequence[str | None] | None = None,
    reference_uri: str | None = None,
    group_order: str | None = None,
    read_groups: Sequence[ReadGroup] = (),
    comments: Sequence[str] = (),
) -> str:
    """The SAM header text (each line ending in a newline).

    ``sort`` is the manifest's sort order; values outside SAM's SO vocabulary
    (and None) become ``unknown``; ``group_order`` adds ``GO`` (``query`` for
    datasets whose reads come grouped by name, as import keeps them).
    ``md5s`` (one per contig, None where unknown) and ``reference_uri`` give the
    ``@SQ`` lines ``M5`` and ``UR``. ``read_groups`` are further ``@RG`` lines
    (an imported BAM's), ``comments`` the ``@CO`` lines.
    """
    so = SORT_ORDERS.get(sort or "unknown", "unknown")
    hd = f"@HD\tVN:{SAM_VERSION}\tSO:{so}"
    if group_order in ("none", "query", "reference") and so in ("unsorted", "unknown"):
        hd += f"\tGO:{group_order}"
    lines = [hd]
    for i, (name, length) in enumerate(contigs):
        if not name or _BAD_VALUE.search(name) or length <= 0:
            raise ValueError(f"reference contig {name!r} (length {length}) cannot be written to a SAM header")
        sq = f"@SQ\tSN:{name}\tLN:{length}"
        if md5s is not None and i < len(md5s) and md5s[i]:
            sq += f"\tM5:{md5s[i]}"
        if reference_uri and not _BAD_VALUE.search(reference_uri):
            sq += f"\tUR:{reference_uri}"
        lines.append(sq)
    lines.append(read_group.header_line())
    lines.extend(rg.header_line() for rg in read_groups if rg.id != read_group.id)
    cl = _BAD_VALUE.sub(" ", command_line if command_line is not None else default_command_line())
    lines.append(f"@PG\tID:persona\tPN:persona\tVN:{version}\tCL:{cl}")
    lines.extend(f"@CO\t{_BAD_VALUE.sub(' ', c)}" for c in comments)
    return "\n".join(lines) + "\n"


def contig_names(contigs: Sequence[tuple[str, int]]) -> RaggedArray:
    """Contig names as a RaggedArray, the form the SAM kernel takes."""
    return RaggedArray.from_list([name.encode() for name, _ in contigs])


def format_records(
    metadata: RaggedArray,
    bases: RaggedArray,
    quals: RaggedArray,
    alignments: Alignments,
    names: RaggedArray,
    read_group_id: str,
) -> bytes:
    """SAM lines for one chunk (see :mod:`persona._native.bam` for the per-field rules).

    ``bases``/``quals`` are in sequencing orientation; reverse-strand records
    are flipped here. ``alignments.tags`` (BAM aux bytes per record), when set,
    is rendered in SAM syntax after ``RG:Z``. Raises ``ValueError`` naming the bad record's index.
    """
    return _kernel.format_sam(
        metadata.data, metadata.offsets,
        bases.data, bases.offsets,
        quals.data, quals.offsets,
        np.ascontiguousarray(alignments.fields),
        alignments.cigars.data, alignments.cigars.offsets,
        names.data, names.offsets,
        read_group_id.encode(),
        *((alignments.tags.data, alignments.tags.offsets) if alignments.tags is not None else ()),
    )


# -- checking SAM text, line by line ---------------------------------------------------------
_CIGAR_TOKEN = re.compile(rb"(\d+)([MIDNSHP=X])")
_CIGAR_FULL = re.compile(rb"(?:\d+[MIDNSHP=X])+")
_TAG = re.compile(rb"[A-Za-z][A-Za-z0-9]:[AcCsSiIfdZHB]:")
_INT = re.compile(rb"[-+]?\d+")
_QUERY_OPS = frozenset(b"MIS=X")
_HEADER_TAG = re.compile(rb"@[A-Za-z][A-Za-z]")
_MANDATORY = ("QNAME", "FLAG", "RNAME", "POS", "MAPQ", "CIGAR", "RNEXT", "PNEXT", "TLEN", "SEQ", "QUAL")


def _int_field(value: bytes, name: str, lo: int, hi: int) -> str | None:
    if not _INT.fullmatch(value):
        return f"{name} {value.decode(errors='replace')!r} is not a number"
    v = int(value)
    if not lo <= v <= hi:
        return f"{name} {v} is out of range [{lo}, {hi}]"
    return None


def check_sam_header_line(line: bytes) -> str | None:
    """What is wrong with one ``@`` header line (no newline), or None."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"header line is not UTF-8 text (byte {e.start + 1})"
    if line.startswith(b"@CO"):
        return None
    if not _HEADER_TAG.match(line):
        return f"header line starts with {line[:3].decode(errors='replace')!r}, not @ and a two-letter type"
    fields = line.split(b"\t")
    if len(fields) > 1 and fields[0] == b"@SQ":
        tags = {f[:2]: f[3:] for f in fields[1:] if len(f) >= 3 and f[2:3] == b":"}
        if b"SN" not in tags or not tags[b"SN"]:
            return "@SQ line without SN (the contig name)"
        ln = tags.get(b"LN")
        if ln is None:
            return f"@SQ line for {tags[b'SN'].decode(errors='replace')!r} without LN (the contig length)"
        return _int_field(ln, "@SQ LN", 1, (1 << 31) - 1)
    return None


def check_sam_record_line(line: bytes) -> str | None:
    """What is wrong with one SAM alignment line (no newline), or None when it is well formed.

    Checks what htslib refuses (so the line named is the one it stopped at): the 11 mandatory
    columns, FLAG/POS/MAPQ/PNEXT/TLEN numbers in range, a well-formed CIGAR whose query length
    equals the SEQ length, a QUAL of printable characters as long as SEQ (none without SEQ),
    optional fields of the form ``TAG:TYPE:VALUE``, and a QNAME pysam can decode (UTF-8). What
    htslib lets through (odd SEQ letters, unparsable tag values, empty names) is not reported.
    """
    fields = line.split(b"\t")
    if len(fields) < 11:
        return (f"{len(fields)} tab-separated columns; a SAM record has at least 11 "
                f"({', '.join(_MANDATORY)})")
    qname, flag, _rname, pos, mapq, cigar, _rnext, pnext, tlen, seq, qual = fields[:11]
    try:
        qname.decode("utf-8")
    except UnicodeDecodeError:
        return "QNAME is not UTF-8 text"
    for value, name, lo, hi in ((flag, "FLAG", 0, 0xFFFF), (pos, "POS", 0, (1 << 31) - 1),
                                (mapq, "MAPQ", 0, 255), (pnext, "PNEXT", 0, (1 << 31) - 1),
                                (tlen, "TLEN", -(1 << 31) + 1, (1 << 31) - 1)):
        err = _int_field(value, name, lo, hi)
        if err:
            return err
    if cigar != b"*" and not _CIGAR_FULL.fullmatch(cigar):
        return f"CIGAR {cigar.decode(errors='replace')!r} is malformed"
    if qual != b"*":
        if any(c < 33 or c > 126 for c in qual):
            return "QUAL holds characters outside '!'..'~'"
        if seq == b"*":
            return "QUAL is given but SEQ is *"
        if len(qual) != len(seq):
            return f"QUAL has {len(qual)} characters but SEQ has {len(seq)}"
    if cigar != b"*" and seq != b"*":
        qlen = sum(int(n) for n, op in _CIGAR_TOKEN.findall(cigar) if op[0] in _QUERY_OPS)
        if qlen != len(seq):
            return f"CIGAR {cigar.decode(errors='replace')} covers {qlen} query bases but SEQ has {len(seq)}"
    for i, opt in enumerate(fields[11:], start=12):
        if not _TAG.match(opt):
            return f"optional field {i} {opt[:20].decode(errors='replace')!r} is not TAG:TYPE:VALUE"
    return None


def _open_sam_text(path: str | bytes | Any) -> Any:
    """A binary line reader over SAM text (plain, gzip or BGZF); None for BAM or unreadable files."""
    try:
        f = open(path, "rb")
    except OSError:
        return None
    head = f.read(2)
    f.seek(0)
    if head == b"\x1f\x8b":
        g = gzip.GzipFile(fileobj=f, mode="rb")
        try:
            magic = g.peek(4)[:4]
        except (OSError, EOFError):
            f.close()
            return None
        if magic == b"BAM\x01":
            f.close()
            return None
        return g
    return f


def locate_sam_error(path: Any, max_lines: int | None = None) -> InputFormatError | None:
    """The first malformed line of the SAM text file ``path`` as an :class:`InputFormatError`
    naming the file, the 1-based line number and what is wrong; None when every line checked is
    well formed, or ``path`` is BAM (binary) or cannot be read.

    For callers whose parser (htslib) failed without saying where: ``import_sam`` calls it when
    reading fails, so the user is told the line rather than a record count.
    """
    reader = _open_sam_text(path)
    if reader is None:
        return None
    in_header = True
    n = 0
    try:
        with reader:
            for n, raw in enumerate(reader, start=1):
                if max_lines is not None and n > max_lines:
                    return None
                line = raw.rstrip(b"\n")
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.startswith(b"@") and in_header:
                    err = check_sam_header_line(line)
                    what = "header line"
                else:
                    in_header = False
                    err = "empty line" if not line else check_sam_record_line(line)
                    what = "SAM record"
                if err:
                    return InputFormatError(f"malformed {what}: {err}", file=os.fspath(path), line=n)
    except (OSError, EOFError) as e:  # a damaged gzip stream: say where it stopped
        return InputFormatError(f"cannot read SAM input after line {n}: {e}", file=os.fspath(path))
    return None
