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

from persona.agd.chunk import decode_chunk
from persona.agd.columns import (
    BASE,
    METADATA,
    column_record_type,
    column_sort_key,
    decode_column,
    encode_column,
)
from persona.agd.dataset import Dataset
from persona.agd.format import HEADER_SIZE, ChunkHeader, RecordType
from persona.agd.manifest import ChunkRef, Manifest, manifest_key
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


def verify_dataset(
    ds: Dataset | Store | str | os.PathLike[str], columns: list[str] | None = None
) -> VerifyReport:
    """Decode every chunk file of every column (or of ``columns``) and check it against
    the manifest: ordinals in the header, record type, clean decoding, equal record
    counts across columns, chunks contiguous from record 0. ``ds`` may also be a
    location for :meth:`Dataset.open` (a missing or bad manifest then raises)."""
    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    report = VerifyReport(ds.name)
    mkey = manifest_key(ds.name)
    expect = 0
    for ref in ds.chunks:
        if ref.first != expect:
            report.problems.append(Problem(mkey, f"chunk {ref.path} starts at {ref.first}, expected {expect}"))
        expect = ref.last
    for i, ref in enumerate(ds.chunks):
        report.chunks_checked += 1
        report.records += ref.num_records
        for column in columns or ds.columns:
            key = ds.chunk_key(i, column)
            report.files_checked += 1
            try:
                buf = ds.store.get(key)
                header, records = decode_chunk(buf, key)
                if (header.first_ordinal, header.last_ordinal) != (ref.first, ref.last):
                    raise ChunkFormatError(
                        f"header holds records [{header.first_ordinal}, {header.last_ordinal}) "
                        f"but the manifest says [{ref.first}, {ref.last})"
                    )
                expected_type = column_record_type(column)
                if header.record_type != expected_type and not (
                    column == BASE and header.record_type is RecordType.TEXT
                ):
                    raise ChunkFormatError(
                        f"record type {header.record_type.name}, expected {expected_type.name} for {column!r}"
                    )
                value = decode_column(column, records, key=key, record_type=header.record_type)
                if column == BASE and header.record_type is RecordType.TEXT:
                    try:  # text bases (the original's base_decompression output) must still be bases
                        encode_column(BASE, value)
                    except ValueError as e:
                        raise ChunkFormatError(str(e)) from None
                if len(value) != ref.num_records:
                    raise ChunkFormatError(f"{len(value)} records, manifest says {ref.num_records}")
            except PersonaError as e:
                report.problems.append(Problem(key, e.message))
    return report


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
    if len(names) == 0 or len(names) % 2:
        return False if len(names) else None

    def base(n: bytes) -> bytes:
        n = n.split()[0] if n.strip() else n
        return n[:-2] if n[-2:] in (b"/1", b"/2") else n

    sample = min(len(names), 2000)
    return all(base(names[i]) == base(names[i + 1]) for i in range(0, sample - 1, 2))


def repair_manifest(store_or_url: Store | str | os.PathLike[str], name: str | None = None) -> Manifest:
    """Rebuild and write the manifest of the dataset whose chunk files are in the store.

    Columns are those with a file for every chunk (incomplete columns are left
    out and logged); records come from the header ordinals; ``paired`` is guessed
    from the read names; ``sort`` and ``reference`` cannot be recovered (None).
    """
    store = open_store(store_or_url)
    if name is None:
        names = sorted({m["name"] for k in store.list() if "/" not in k and (m := _CHUNK_FILE.fullmatch(k))})
        if not names:
            raise DatasetError("no AGD chunk files found", store=store.url)
        if len(names) > 1:
            raise DatasetError(f"chunk files of several datasets ({', '.join(names)}); pass name=", store=store.url)
        name = names[0]
    headers = _read_headers(store, name)
    if not headers:
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
        records.append(ChunkRef(lo, hi, f"{name}_{first}"))
    expect = 0
    for ref in records:
        if ref.first != expect:
            raise DatasetError(f"chunk files leave records [{expect}, {ref.first}) missing", store=store.url)
        expect = ref.last
    paired = _guess_paired(store, f"{records[0].path}.{METADATA}") if METADATA in columns else None
    manifest = Manifest(name=name, columns=columns, records=records, sort=None, paired=paired)
    store.put(manifest_key(name), manifest.to_json())
    return manifest

