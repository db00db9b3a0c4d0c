"""Checking a dataset end to end, and rebuilding a lost manifest from chunk headers.

Thesis §3.2.1: "If the manifest is ever lost or corrupted, it can be regenerated
by scanning the chunk files and the metadata contained in their respective
headers." :func:`repair_manifest` does exactly that; :func:`verify_dataset`
decodes every chunk file and reports every problem it finds (it does not stop
at the first), each naming the chunk key.
"""
from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from persona.agd.chunk import decode_chunk
from persona.agd.columns import (
    BASE,
    METADATA,
    QUAL,
    RESULTS,
    ColumnValue,
    column_sort_key,
    decode_column,
    encode_column,
    is_alignment_column,
)
from persona.agd.dataset import Dataset
from persona.agd.format import HEADER_SIZE, ChunkHeader, RecordType
from persona.agd.integrity import check_chunk_header
from persona.agd.manifest import ChunkRef, Manifest, manifest_key, manifest_problems
from persona.agd.pairing_detect import names_look_paired
from persona.agd.ragged import RaggedArray
from persona.agd.records import FLAG_SECONDARY, FLAG_SUPPLEMENTARY, FLAG_UNMAPPED, Alignments
from persona.errors import ChunkFormatError, DatasetError, PersonaError
from persona.storage import Store, open_store

log = logging.getLogger(__name__)

_CHUNK_FILE = re.compile(r"(?P<name>.+)_(?P<first>\d+)\.(?P<column>[A-Za-z0-9_]+)")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where (store key) and what."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_dataset`; ``ok`` when no problem was found."""

    dataset: str
    chunks_checked: int = 0
    files_checked: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (
            f"dataset {self.dataset!r}: {self.chunks_checked} chunks, {self.files_checked} files, "
            f"{self.records} records: " + ("OK" if self.ok else f"{len(self.problems)} problems")
        )
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def _open_for_verify(location: Store | str | os.PathLike[str], name: str | None = None) -> Dataset:
    """The dataset at ``location`` without refusing a malformed manifest (verify reports it)."""
    try:
        return Dataset.open(location, name, validate=False)  # type: ignore[call-arg]
    except TypeError:  # a Dataset.open without the switch: it does not validate either
        return Dataset.open(location, name)


def _read_file(ds: Dataset, chunk_idx: int, column: str, key: str) -> bytes:
    """One chunk file's bytes, checked against the manifest's checksum where the reader does."""
    read_file = getattr(ds, "read_file", None)
    if read_file is not None:
        return read_file(chunk_idx, column)
    return ds.store.get(key)


def verify_dataset(
    ds: Dataset | Store | str | os.PathLike[str], columns: list[str] | None = None, *, deep: bool = False,
    name: str | None = None,
) -> VerifyReport:
    """Decode every chunk file of every column (or of ``columns``) and check it against
    the manifest: the manifest itself (gaps, overlaps, empty or duplicate chunks, ...), each
    file's checksum where the manifest records one, header ordinals, dataset name and record
    type, clean decoding, record counts. Every problem is reported (it does not stop at the
    first), each naming the key.

    ``deep`` adds per-record checks across the columns of each chunk (:func:`deep_problems`):
    base and quality lengths agree, qualities are Phred+33, alignments are consistent with the
    reads and the reference, mates of a paired dataset have one name. ``ds`` may also be a
    location (with ``name`` where it holds several datasets); the manifest is then read without
    :meth:`Dataset.open`'s strictness, so that its problems are reported here instead of refused.
    """
    if not isinstance(ds, Dataset):
        ds = _open_for_verify(ds, name)
    report = VerifyReport(ds.name)
    mkey = manifest_key(ds.name)
    for problem in manifest_problems(ds.manifest):
        report.problems.append(Problem(mkey, problem))
    for i, ref in enumerate(ds.chunks):
        report.chunks_checked += 1
        report.records += ref.num_records
        values: dict[str, ColumnValue] = {}
        for column in columns or ds.columns:
            key = ds.chunk_key(i, column)
            report.files_checked += 1
            try:
                buf = _read_file(ds, i, column, key)
                header, records = decode_chunk(buf, key)
                check_chunk_header(header, ref, column, ds.name, key)
                value = decode_column(column, records, key=key, record_type=header.record_type)
                if column == BASE and header.record_type is RecordType.TEXT:
                    try:  # text bases (the original's base_decompression output) must still be bases
                        encode_column(BASE, value)
                    except ValueError as e:
                        raise ChunkFormatError(str(e)) from None
                if len(value) != ref.num_records:
                    raise ChunkFormatError(f"{len(value)} records, manifest says {ref.num_records}")
                values[column] = value
            except PersonaError as e:
                report.problems.append(Problem(key, e.message))
        if deep and values:
            report.problems.extend(deep_problems(ds, i, values))
    return report


# -- verify --deep: per-record checks across one chunk's columns ---------------------------------
#: at most this many records are named per (file, check); the rest are counted
MAX_NAMED_RECORDS = 5
_CIGAR_OP = re.compile(rb"(\d+)([MIDNSHP=X])")
_CIGAR = re.compile(rb"(?:\d+[MIDNSHP=X])+")
_QUERY_OPS = frozenset(b"MIS=X")
_REF_OPS = frozenset(b"MDN=X")


def _named(key: str, what: str, bad: list[int], first: int) -> Problem:
    shown = ", ".join(f"{j} (ordinal {first + j})" for j in bad[:MAX_NAMED_RECORDS])
    more = f" and {len(bad) - MAX_NAMED_RECORDS} more" if len(bad) > MAX_NAMED_RECORDS else ""
    return Problem(key, f"{what}: record {shown}{more}")


def _cigar_spans(cigar: bytes) -> tuple[int, int] | None:
    """(query length, reference length) of a CIGAR; None when it is malformed."""
    if not _CIGAR.fullmatch(cigar):
        return None
    q = r = 0
    for n, op in _CIGAR_OP.findall(cigar):
        if op[0] in _QUERY_OPS:
            q += int(n)
        if op[0] in _REF_OPS:
            r += int(n)
    return q, r


def _alignment_problems(ds: Dataset, key: str, first: int, column: str, aln: Alignments,
                        base_lengths: np.ndarray | None) -> list[Problem]:
    contigs = {c.index: c.length for c in ds.manifest.reference_contigs}
    fields = aln.fields
    present = aln.present if aln.present is not None else np.ones(len(fields), dtype=bool)
    secondary = column != RESULTS
    bad: dict[str, list[int]] = defaultdict(list)
    for j in range(len(fields)):
        if not present[j]:
            continue
        row = fields[j]
        flag, mapq, rid, pos = int(row["flag"]), int(row["mapq"]), int(row["ref_index"]), int(row["position"])
        nrid = int(row["next_ref_index"])
        cigar = bytes(aln.cigars[j])
        if not 0 <= mapq <= 255:
            bad["MAPQ outside 0..255"].append(j)
        if secondary and not flag & (FLAG_SECONDARY | FLAG_SUPPLEMENTARY):
            bad["a secondary-column record flagged neither secondary (0x100) nor supplementary (0x800)"].append(j)
        if not secondary and flag & (FLAG_SECONDARY | FLAG_SUPPLEMENTARY):
            bad["the primary record flagged secondary or supplementary"].append(j)
        if contigs and not (rid == -1 or rid in contigs):
            bad["reference index not in the manifest's reference_contigs"].append(j)
        if contigs and not (nrid == -1 or nrid in contigs):
            bad["mate reference index not in the manifest's reference_contigs"].append(j)
        if flag & FLAG_UNMAPPED:
            if cigar:
                bad["an unmapped record with a CIGAR"].append(j)
            continue
        if rid < 0 or pos < 0:
            bad["a mapped record without reference index or position"].append(j)
            continue
        if not cigar:
            bad["a mapped record without CIGAR"].append(j)
            continue
        spans = _cigar_spans(cigar)
        if spans is None:
            bad["malformed CIGAR"].append(j)
            continue
        qlen, rlen = spans
        if base_lengths is not None and base_lengths[j] and qlen != base_lengths[j]:
            bad["CIGAR query length differs from the read's length"].append(j)
        if rid in contigs and pos + rlen > contigs[rid]:
            bad["alignment runs past the end of its reference contig"].append(j)
    return [_named(key, what, js, first) for what, js in bad.items()]


def deep_problems(ds: Dataset, chunk_idx: int, values: dict[str, ColumnValue]) -> list[Problem]:
    """Per-record problems of one chunk, from its decoded column ``values`` (those that decoded):
    base and qual lengths equal per read (empty qualities allowed: a SAM record without QUAL);
    qualities Phred+33 (``!``..``~``); read names without line breaks; for a paired dataset,
    records 2i and 2i+1 named as mates; alignments (``results``, ``secondary<N>``) with MAPQ
    0..255, reference indices in the manifest's contigs, a well-formed CIGAR on every mapped
    record whose query length is the read's length and which ends inside its contig, and no
    CIGAR on unmapped ones. Each problem names the file's key and up to
    :data:`MAX_NAMED_RECORDS` records (index in the chunk and ordinal)."""
    ref = ds.chunks[chunk_idx]
    out: list[Problem] = []
    base = values.get(BASE)
    qual = values.get(QUAL)
    names = values.get(METADATA)
    base_lengths = np.diff(base.offsets).astype(np.int64) if isinstance(base, RaggedArray) else None
    if isinstance(qual, RaggedArray):
        qkey = ds.chunk_key(chunk_idx, QUAL)
        qlens = np.diff(qual.offsets).astype(np.int64)
        if base_lengths is not None:
            bad = np.flatnonzero((qlens != base_lengths) & (qlens != 0))
            if bad.size:
                out.append(_named(qkey, "quality string length differs from the read's length",
                                  bad.tolist(), ref.first))
        data = np.asarray(qual.data)
        wrong = (data < 33) | (data > 126)
        if wrong.any():
            recs = np.unique(np.searchsorted(qual.offsets[1:], np.flatnonzero(wrong), side="right"))
            out.append(_named(qkey, "quality characters outside Phred+33 ('!'..'~')", recs.tolist(), ref.first))
    if isinstance(names, RaggedArray):
        nkey = ds.chunk_key(chunk_idx, METADATA)
        data = np.asarray(names.data)
        wrong = (data == 10) | (data == 13)
        if wrong.any():
            recs = np.unique(np.searchsorted(names.offsets[1:], np.flatnonzero(wrong), side="right"))
            out.append(_named(nkey, "read name holds a line break", recs.tolist(), ref.first))
        if ds.manifest.paired and len(names) % 2 == 0:
            bad_pairs = [j for j in range(0, len(names) - 1, 2)
                         if not names_look_paired([bytes(names[j]), bytes(names[j + 1])])]
            if bad_pairs:
                out.append(_named(nkey, "paired dataset, but records 2i and 2i+1 are not named as mates",
                                  bad_pairs, ref.first))
    for column, value in values.items():
        if isinstance(value, Alignments) and is_alignment_column(column):
            out.extend(_alignment_problems(ds, ds.chunk_key(chunk_idx, column), ref.first, column, value,
                                           base_lengths))
    return out


def _read_headers(store: Store, name: str) -> dict[str, dict[int, ChunkHeader]]:
    """column -> {first ordinal in the file name: header} for the chunk files of ``name``."""
    found: dict[str, dict[int, ChunkHeader]] = defaultdict(dict)
    for key in store.list(f"{name}_"):
        m = _CHUNK_FILE.fullmatch(key)
        if m is None or m["name"] != name:
            continue
        header = ChunkHeader.unpack(store.get_range(key, 0, HEADER_SIZE), key)
        if header.first_ordinal != int(m["first"]):
            raise ChunkFormatError(f"header says first record {header.first_ordinal}, file name says {m['first']}",
                                   key=key)
        found[m["column"]][header.first_ordinal] = header
    return found


def _guess_paired(store: Store, first_key: str) -> bool | None:
    """Paired if the reads of the first chunk come in pairs of equal names (``x/1``, ``x/2``)."""
    try:
        _, names = decode_chunk(store.get(first_key), first_key)
    except PersonaError:
        return None
    if len(names) == 0:
        return None
    sample = min(len(names), 4000)
    return names_look_paired([bytes(names[i]) for i in range(sample - sample % 2)]) and len(names) % 2 == 0


def repair_manifest(store_or_url: Store | str | os.PathLike[str], name: str | None = None, *,
                    reference: str | None = None, references_url: str | None = None) -> Manifest:
    """Rebuild and write the manifest of the dataset whose chunk files are in the store.

    * It never turns an interrupted write into a dataset that looks complete: a
      writer's claim (``<name>_writer.json``: an import, align, ... records its
      intent there before writing anything) or chunk files under attempt keys
      (``<name>_<first>~<attempt>.<column>``) mean the last write never committed:
      repair refuses and says so (``persona gc`` removes those files; run the
      command again). A live writer's claim is refused as busy.
    * Columns are those with a file for every chunk (incomplete columns are left
      out and logged); records come from the header ordinals; checksums are
      recomputed from the files.
    * Fields are kept from the current manifest when one is still readable
      (sort, reference, reference_contigs, paired, provenance, extensions);
      otherwise ``paired`` is guessed from the read names, and the reference's
      contigs are rebuilt from the reference registry when ``reference`` names it.
      What could not be rebuilt is listed in ``extra["repaired"]["unrecovered"]``
      (and logged), so ``info`` and the CLI can say it.
    """
    from persona.agd.transaction import WriterClaim, checksum, claim_key, new_attempt_id, read_manifest

    store = open_store(store_or_url)
    if name is None:
        names = sorted({m["name"] for k in store.list() if "/" not in k and (m := _CHUNK_FILE.fullmatch(k))
                        and "~" not in m["name"]}
                       | {k[: -len("_writer.json")] for k in store.list() if k.endswith("_writer.json")})
        if not names:
            raise DatasetError("no AGD chunk files found", store=store.url)
        if len(names) > 1:
            raise DatasetError(f"chunk files of several datasets ({', '.join(names)}); choose one with --name",
                               store=store.url)
        name = names[0]
    claim = WriterClaim(store, name, app="repair-manifest", attempt=new_attempt_id())
    holder = claim.holder()
    if holder is not None:
        if not WriterClaim.is_stale(holder):
            raise DatasetError(f"dataset {name!r} is being written by {WriterClaim.describe(holder)}; "
                               "repair it only once that has finished", store=store.url)
        raise DatasetError(
            f"dataset {name!r}: the files are those of an interrupted {holder.get('app', 'write')} "
            f"({WriterClaim.describe(holder)}) that never committed; its output is incomplete and is not "
            "made into a dataset. Run the command again (it removes them), or 'persona gc' to remove them",
            store=store.url)
    attempts = sorted({k for k in store.list(f"{name}_") if "~" in k and k.split("~")[0].startswith(f"{name}_")})
    try:
        current = read_manifest(store, name)
    except PersonaError:
        current = None  # unreadable: rebuilt from the chunk files
    claim.acquire()
    try:
        headers = _read_headers(store, name)
        if not headers:
            if attempts:
                raise DatasetError(f"dataset {name!r}: only files of an interrupted write that never committed "
                                   f"({len(attempts)} files, e.g. {attempts[0]}); nothing to repair. 'persona gc' "
                                   "removes them", store=store.url)
            raise DatasetError(f"no chunk files of dataset {name!r}", store=store.url)
        all_firsts = sorted(set().union(*(set(h) for h in headers.values())))
        columns = sorted((c for c, h in headers.items() if set(h) == set(all_firsts)), key=column_sort_key)
        for c in set(headers) - set(columns):
            log.warning(
                "repair %s: column %r has %d of %d chunk files; left out", name, c, len(headers[c]), len(all_firsts)
            )
        if not columns:
            raise DatasetError(f"no column of {name!r} has all {len(all_firsts)} chunks", store=store.url)
        records = []
        for first in all_firsts:
            spans = {(headers[c][first].first_ordinal, headers[c][first].last_ordinal) for c in columns}
            if len(spans) != 1:
                raise ChunkFormatError(f"columns disagree on the records of chunk {first}: {sorted(spans)}",
                                       key=f"{name}_{first}")
            lo, hi = spans.pop()
            path = f"{name}_{first}"
            sums = {c: checksum(store.get(f"{path}.{c}")) for c in columns}
            records.append(ChunkRef(lo, hi, path, {}, sums))
        expect = 0
        for ref in records:
            if ref.first != expect:
                raise DatasetError(f"chunk files leave records [{expect}, {ref.first}) missing", store=store.url)
            expect = ref.last
        unrecovered: list[str] = []
        fields: dict[str, Any] = {}
        if current is not None:
            fields = {"sort": current.sort, "reference": current.reference,
                      "reference_contigs": current.reference_contigs, "paired": current.paired,
                      "provenance": current.provenance, "extra": dict(current.extra)}
        else:
            fields = {"sort": None, "paired": (_guess_paired(store, f"{records[0].path}.{METADATA}")
                                               if METADATA in columns else None)}
            unrecovered.append("sort")
            unrecovered.append("provenance")
        aligned = any(is_alignment_column(c) for c in columns)
        if aligned and not fields.get("reference_contigs"):
            if reference is not None:
                from persona.align.reference import reference_info
                from persona.config import get_config

                info = reference_info(reference, references_url or get_config().align.references_url)
                fields["reference"] = reference
                fields["reference_contigs"] = info.manifest_contigs()
            else:
                unrecovered.append("reference_contigs (pass the reference: repair-manifest --reference NAME)")
                unrecovered.append("reference")
        extra = dict(fields.pop("extra", {}) or {})
        if unrecovered:
            for what in unrecovered:
                log.warning("repair %s: could not rebuild %s", name, what)
        extra["repaired"] = {"unrecovered": unrecovered}
        manifest = Manifest(name=name, columns=columns, records=records, extra=extra,
                            generation=(current.generation + 1 if current is not None else 1)).with_updates(**fields)
        claim.verify()
        store.put(manifest_key(name), manifest.to_json())
        return manifest
    finally:
        claim.release()
