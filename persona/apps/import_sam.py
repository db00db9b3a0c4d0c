"""Import a SAM or BAM file into a new AGD dataset (read with pysam).

What is stored, per primary record, in file order:

* ``base``: SEQ in the ORIGINAL sequencing orientation: records with flag
  0x10 are reverse-complemented back (AGD stores reads as sequenced; the
  exporter flips them again). Characters other than A/C/G/T/N (IUPAC codes,
  ``=``) cannot be held by AGD's 3-bit bases and are stored as ``N``; the
  summary counts them (``bases_replaced``).
* ``qual``: QUAL as Phred+33 text, reversed for flag 0x10.
* ``metadata``: QNAME.
* ``results``: one Alignment per record (flag, MAPQ, ref index, 0-based
  position, mate ref index and position, TLEN, CIGAR). Written only when the
  header has ``@SQ`` lines; a file without them (an unmapped BAM) becomes an
  unaligned dataset (base, qual, metadata), ready to be aligned.

Choices (documented contract):

* Secondary (0x100) and supplementary (0x800) records are skipped: AGD's
  ``results`` column holds exactly one record per read. The summary counts them.
* A record without SEQ (``*``) is stored with an empty sequence and empty
  qualities (counted in ``empty_sequence``); exporting gives ``*`` back. A record
  with SEQ but no QUAL stores empty qualities (counted in ``missing_quality``).
* Optional tags are carried: every record's optional fields, byte for byte as
  in a BAM record (read group ``RG`` included), go into the ``tags`` column, so
  an export gives back the same tags.
* Records keep file order. The manifest says ``paired: true`` only if every
  record is paired and they come as read1, read2 with equal names, adjacent
  (a queryname-grouped file). A coordinate-sorted BAM of pairs is not
  interleaved: the import collates it (``ImportRequest.collate``, on by default
  for such a file): the records are imported under a staging name, then
  sorted by read name (``persona sort --order queryname``: bounded memory)
  into the dataset, so that mates sit side by side and align as pairs.
* ``sort`` is the header's ``@HD SO`` (``unknown`` without one); ``reference``
  is the first ``@SQ UR`` (else ``AS``, else the input file name) and
  ``reference_contigs`` the ``@SQ`` lines.
* ``chunk_size`` is records per chunk, rounded up to even so a chunk never
  splits a pair.
* A truncated or corrupt file raises :class:`InputFormatError` naming the file
  and the record number (1-based, counting all records read); whatever was
  written is removed, no dataset appears. A BAM without the BGZF EOF marker is
  treated as truncated.
"""
from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pysam

from persona._native import bases as bases_kernel
from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.agd.records import (
    ALIGNMENT_DTYPE,
    FLAG_PAIRED,
    FLAG_READ1,
    FLAG_READ2,
    FLAG_REVERSE,
    FLAG_SECONDARY,
    FLAG_SUPPLEMENTARY,
    Alignments,
)
from persona.errors import InputFormatError
from persona.formats.bgzf import EOF_BLOCK
from persona.formats.sam import locate_sam_error
from persona.storage import Store

_SORT_ORDERS = ("coordinate", "queryname", "unsorted", "unknown")
# Bytes AGD's 3-bit bases can hold; anything else becomes N.
_VALID_BASE = np.zeros(256, dtype=bool)
_VALID_BASE[np.frombuffer(b"ACGTN", np.uint8)] = True


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_sam` stored and what it left out."""

    name: str
    location: str
    records: int
    chunks: int
    columns: tuple[str, ...]
    paired: bool
    sort: str
    skipped_secondary: int
    skipped_supplementary: int
    empty_sequence: int
    missing_quality: int
    bases_replaced: int


def dataset_name(path: Path) -> str:
    stem = path.name
    for ext in (".gz", ".bam", ".sam", ".cram"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "dataset"


class _PairCheck:
    """Streams over primary records: are they read1/read2 mates, adjacent, in that order?"""

    def __init__(self) -> None:
        self.ok = True
        self.count = 0
        self._prev_name: str | None = None

    def add(self, flag: int, name: str) -> None:
        if not self.ok:
            return
        role = flag & (FLAG_PAIRED | FLAG_READ1 | FLAG_READ2)
        if self.count % 2 == 0:
            self.ok = role == FLAG_PAIRED | FLAG_READ1
            self._prev_name = name
        else:
            self.ok = role == FLAG_PAIRED | FLAG_READ2 and name == self._prev_name
        self.count += 1

    @property
    def paired(self) -> bool:
        return self.ok and self.count > 0 and self.count % 2 == 0


class _ChunkBuilder:
    """Collects one chunk's records as Python lists, then builds the column values."""

    def __init__(self, aligned: bool) -> None:
        self.aligned = aligned
        self.names: list[bytes] = []
        self.seqs: list[bytes] = []
        self.quals: list[bytes] = []
        self.rows: list[tuple[int, int, int, int, int, int, int]] = []
        self.cigars: list[bytes] = []
        self.aux: list[bytes] = []

    def __len__(self) -> int:
        return len(self.names)

    def columns(self) -> tuple[dict[str, Any], int]:
        """Column values (sequencing orientation) and the number of bases replaced by N."""
        seqs = RaggedArray.from_list(self.seqs)
        quals = RaggedArray.from_list(self.quals)
        invalid = ~_VALID_BASE[seqs.data]
        replaced = int(invalid.sum())
        if replaced:
            seqs.data[invalid] = ord("N")
        values: dict[str, Any] = {"metadata": RaggedArray.from_list(self.names)}
        fields = np.array(self.rows, dtype=ALIGNMENT_DTYPE) if self.rows else np.zeros(0, ALIGNMENT_DTYPE)
        rev = (fields["flag"] & FLAG_REVERSE) != 0
        if rev.any():
            # Back to the orientation the read was sequenced in (empty quals stay empty).
            seqs = RaggedArray(seqs.offsets, bases_kernel.reverse_complement(seqs.offsets, seqs.data, rev),
                               validate=False)
            quals = RaggedArray(quals.offsets, bases_kernel.reverse_records(quals.offsets, quals.data, rev),
                                validate=False)
        values["base"] = seqs
        values["qual"] = quals
        if self.aligned:
            values["results"] = Alignments(fields, RaggedArray.from_list(self.cigars))
        values["tags"] = RaggedArray.from_list(self.aux)
        return values, replaced


_INT_RANGES = (("c", -128, 127), ("C", 0, 255), ("s", -32768, 32767), ("S", 0, 65535),
               ("i", -2**31, 2**31 - 1), ("I", 0, 2**32 - 1))


def encode_aux(tags: list[tuple[str, Any, str]]) -> bytes:
    """BAM aux bytes (SAM spec §4.2.4) of ``AlignedSegment.get_tags(with_value_type=True)``:
    the optional fields byte for byte as in the BAM record, types as the input had them."""
    out = bytearray()
    for tag, value, typ in tags:
        t = tag.encode()
        if typ in ("c", "C", "s", "S", "i", "I"):
            out += t + typ.encode() + struct.pack("<" + {"c": "b", "C": "B", "s": "h", "S": "H", "i": "i",
                                                          "I": "I"}[typ], int(value))
        elif typ == "A":
            out += t + b"A" + str(value).encode()[:1]
        elif typ in ("f", "d"):
            out += t + b"f" + struct.pack("<f", float(value))
        elif typ in ("Z", "H"):
            out += t + typ.encode() + str(value).encode() + b"\0"
        elif typ == "B":
            sub = getattr(value, "typecode", None)
            code = {"b": "c", "B": "C", "h": "s", "H": "S", "i": "i", "I": "I", "l": "i", "L": "I",
                    "f": "f"}.get(sub or "", None)
            vals = list(value)
            if code is None:  # a plain list: the smallest integer type that holds it, or float
                if all(isinstance(v, int) for v in vals):
                    lo, hi = (min(vals), max(vals)) if vals else (0, 0)
                    code = next(c for c, a, b in _INT_RANGES if a <= lo and hi <= b)
                else:
                    code = "f"
            fmt = {"c": "b", "C": "B", "s": "h", "S": "H", "i": "i", "I": "I", "f": "f"}[code]
            out += t + b"B" + code.encode() + struct.pack("<i", len(vals)) + struct.pack(f"<{len(vals)}{fmt}", *vals)
        else:
            raise InputFormatError(f"tag {tag} has an unknown type {typ!r}")
    return bytes(out)


def _check_bgzf_eof(path: Path) -> None:
    """A BGZF file (BAM, bgzipped SAM) must end with the EOF block, else it was cut short.

    Checked here rather than left to htslib, which only warns and then reads
    whatever complete blocks there are (a cut at a block boundary would lose
    records silently).
    """
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(16)
        if not (head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"):
            return  # not BGZF (plain SAM or gzip): nothing to check
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - len(EOF_BLOCK)))
        if f.read() != EOF_BLOCK:
            raise InputFormatError("no BGZF EOF marker: the file is truncated", file=str(path))


def _open(path: Path) -> pysam.AlignmentFile:
    _check_bgzf_eof(path)
    try:
        return pysam.AlignmentFile(str(path), "r", check_sq=False)
    except (OSError, ValueError) as e:
        raise InputFormatError(f"cannot read SAM/BAM input: {e}", file=str(path)) from None


def _header_fields(af: pysam.AlignmentFile, path: Path) -> dict[str, Any]:
    try:
        header = af.header.to_dict()
    except ValueError as e:  # UnicodeDecodeError among them: a header that is not UTF-8 text
        located = locate_sam_error(path) if str(path) != "-" else None
        if located is not None:
            raise located from None
        raise InputFormatError(f"cannot read the SAM/BAM header: {e}", file=str(path)) from None
    so = header.get("HD", {}).get("SO", "unknown")
    sq = header.get("SQ", [])
    fields: dict[str, Any] = {"sort": so if so in _SORT_ORDERS else "unknown"}
    if sq:
        fields["reference_contigs"] = [
            Contig(s["SN"], int(s["LN"]), i, s["M5"].lower() if _is_md5(s.get("M5")) else None)
            for i, s in enumerate(sq)]
        ref = next((s["UR"] for s in sq if s.get("UR")), None) or next((s["AS"] for s in sq if s.get("AS")), None)
        fields["reference"] = ref or path.name
    # What a lossless round trip needs from the header: read groups, the @PG chain, @CO lines.
    extra: dict[str, Any] = {}
    rgs = [{k: str(v) for k, v in rg.items()} for rg in header.get("RG", []) if rg.get("ID")]
    if rgs:
        extra["read_groups"] = rgs
        if len(rgs) == 1:
            extra["read_group"] = rgs[0]
    if header.get("CO"):
        extra["comments"] = [str(c) for c in header["CO"]]
    if extra:
        fields["extra"] = extra
    pgs = [{k: str(v) for k, v in pg.items()} for pg in header.get("PG", [])]
    fields["_imported_pg"] = _pg_chain_order(pgs)
    return fields


def _is_md5(value: Any) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"[0-9a-fA-F]{32}", value))


def _pg_chain_order(pgs: list[dict[str, str]]) -> list[dict[str, str]]:
    """@PG lines, each after the one its PP names (the chain's order, first program first)."""
    by_id = {p.get("ID"): p for p in pgs}
    out: list[dict[str, str]] = []
    seen: set[str | None] = set()

    def add(p: dict[str, str], depth: int = 0) -> None:
        if p.get("ID") in seen or depth > len(pgs):
            return
        parent = by_id.get(p.get("PP"))
        if parent is not None:
            add(parent, depth + 1)
        seen.add(p.get("ID"))
        out.append(p)

    for p in pgs:
        add(p)
    return out


class SamSource:
    """Reads one SAM/BAM (``-``: standard input) into chunks of column values, in file order.

    :meth:`open` reads the header, :meth:`chunks` yields ``(first ordinal, values)``
    per chunk (parsing and the per-chunk column building run in the caller's
    thread), :meth:`manifest_fields` is known once the input ended (pairing is
    decided over every record). Errors raise :class:`InputFormatError` naming the
    file and record.
    """

    def __init__(self, path: str, *, chunk_size: int = 100_000) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.path = Path(path) if path != "-" else Path("-")
        self.label = "<stdin>" if path == "-" else str(path)
        self.chunk_size = chunk_size + chunk_size % 2
        self.counts = {"secondary": 0, "supplementary": 0, "empty": 0, "noqual": 0, "replaced": 0}
        self._pairs = _PairCheck()
        self._af: pysam.AlignmentFile | None = None
        self._fields: dict[str, Any] = {}
        self.aligned = False
        self.records = 0
        if path != "-":
            # the header tells which columns there are: read it now (cheap), again at open
            af = _open(self.path)
            try:
                self._fields = _header_fields(af, self.path)
            finally:
                _close(af)
            self.aligned = "reference_contigs" in self._fields

    def peek_paired(self, records: int = 2000) -> bool:
        """Whether most of the first ``records`` primary records of the file are paired (0x1);
        False for standard input, which cannot be read twice."""
        if str(self.path) == "-":
            return False
        af = _open(self.path)
        try:
            seen = paired = 0
            for rec in af.fetch(until_eof=True):
                if rec.flag & (FLAG_SECONDARY | FLAG_SUPPLEMENTARY):
                    continue
                seen += 1
                paired += bool(rec.flag & FLAG_PAIRED)
                if seen >= records:
                    break
        except (OSError, ValueError):
            return False  # the import proper names the bad record
        finally:
            _close(af)
        return seen > 0 and paired * 2 > seen

    @property
    def sort_order(self) -> str:
        """The header's ``@HD SO`` (``unknown`` without one)."""
        return str(self._fields.get("sort") or "unknown")

    @property
    def columns(self) -> list[str]:
        # every optional field of every record is kept, byte for byte, in ``tags``
        return ["base", "qual", "metadata"] + (["results"] if self.aligned else []) + ["tags"]

    def open(self) -> None:
        if self._af is None:
            self._af = _open(self.path) if str(self.path) != "-" else _open_stdin()
            self._fields = _header_fields(self._af, self.path)
            self.aligned = "reference_contigs" in self._fields

    def close(self) -> None:
        if self._af is not None:
            _close(self._af)
            self._af = None

    def chunks(self) -> Iterator[tuple[int, dict[str, Any]]]:
        self.open()
        assert self._af is not None
        counts = self.counts
        pairs = self._pairs
        aligned = self.aligned
        chunk = _ChunkBuilder(aligned)
        first = 0
        n_read = 0
        try:
            for rec in self._af.fetch(until_eof=True):
                n_read += 1
                flag = rec.flag
                if flag & FLAG_SECONDARY:
                    counts["secondary"] += 1
                    continue
                if flag & FLAG_SUPPLEMENTARY:
                    counts["supplementary"] += 1
                    continue
                qname = rec.query_name or ""
                seq = rec.query_sequence
                qual = rec.query_qualities_str if seq else None
                if not seq:
                    counts["empty"] += 1
                elif qual is None:
                    counts["noqual"] += 1
                pairs.add(flag, qname)
                chunk.names.append(qname.encode())
                chunk.seqs.append(seq.encode() if seq else b"")
                chunk.quals.append(qual.encode() if qual else b"")
                chunk.aux.append(encode_aux(rec.get_tags(with_value_type=True)))
                if aligned:
                    chunk.rows.append((flag, rec.mapping_quality, rec.reference_id, rec.reference_start,
                                       rec.next_reference_id, rec.next_reference_start, rec.template_length))
                    chunk.cigars.append((rec.cigarstring or "").encode())
                else:
                    chunk.rows.append((flag, 0, -1, -1, -1, -1, 0))
                if len(chunk) == self.chunk_size:
                    values, replaced = chunk.columns()
                    counts["replaced"] += replaced
                    yield first, values
                    first += len(chunk)
                    chunk = _ChunkBuilder(aligned)
        except (OSError, ValueError) as e:
            if str(self.path) != "-":
                located = locate_sam_error(self.path)  # SAM text: name the line and what is wrong
                if located is not None:
                    raise located from None
            raise InputFormatError(
                f"cannot read SAM/BAM input (truncated or corrupt): {e}", file=self.label, record=n_read + 1
            ) from None
        if len(chunk):
            values, replaced = chunk.columns()
            counts["replaced"] += replaced
            yield first, values
            first += len(chunk)
        self.records = first

    def manifest_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self._fields.items() if not k.startswith("_")} | {"paired": self._pairs.paired}

    @property
    def imported_programs(self) -> list[dict[str, str]]:
        """The input's @PG lines in chain order (first program first)."""
        return list(self._fields.get("_imported_pg", []))


def _close(af: pysam.AlignmentFile) -> None:
    try:
        af.close()
    except OSError:  # pysam may report a stale errno when closing after a read error
        pass


def _open_stdin() -> pysam.AlignmentFile:
    try:
        return pysam.AlignmentFile("-", "r", check_sq=False)
    except (OSError, ValueError) as e:
        raise InputFormatError(f"cannot read SAM/BAM input: {e}", file="<stdin>") from None


def import_sam(
    path: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | Store,
    name: str | None = None,
    chunk_size: int = 100_000,
    compression: str = "zstd",
    runtime: Any = None,
    collate: bool | None = None,
) -> ImportSummary:
    """Import ``path`` (SAM or BAM, detected from content) as dataset ``name`` in store ``out``
    (a path, store URL or :class:`~persona.storage.Store`); ``name`` defaults to the file name
    without its extension. ``collate``: see :attr:`~persona.apps.importer.ImportRequest.collate`.

    See the module docstring for what is stored. Raises
    :class:`~persona.errors.InputFormatError` for unreadable input (no dataset
    is left behind) and :class:`~persona.errors.DatasetError` if the dataset exists.
    """
    from persona.apps.importer import ImportRequest, import_files

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    loc = out.url if isinstance(out, Store) else os.fspath(out)
    s = import_files(ImportRequest(inputs=(os.fspath(path),), output=loc, name=name, format="sam",
                                   chunk_size=chunk_size, compression=compression, collate=collate),
                     runtime=runtime)
    return ImportSummary(name=s.name, location=s.location, records=s.records, chunks=s.chunks,
                         columns=s.columns, paired=s.paired, sort=s.sort, skipped_secondary=s.skipped_secondary,
                         skipped_supplementary=s.skipped_supplementary, empty_sequence=s.empty_sequence,
                         missing_quality=s.missing_quality, bases_replaced=s.bases_replaced)
