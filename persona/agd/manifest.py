"""The dataset manifest ``<name>_metadata.json`` (thesis §3.2.1 "Chunk Directory and Manifest File").

JSON object, written like the original's ``json.dump(..., indent=4)``::

    {"name": "ds", "version": 1,
     "records": [{"first": 0, "last": 100000, "path": "ds_0"}, ...],   # sorted, last exclusive
     "columns": ["base", "qual", "metadata", "results"],
     "sort": "queryname",                       # optional: queryname | coordinate | ...
     "reference": "/ref/index",                 # optional, after alignment
     "reference_contigs": [{"name": "chr1", "length": 248956422, "index": 0}],
     "paired": true}                            # our extension (optional)

Keys we do not know (``ceph_pool``, ``namespace``, ...) are kept in ``extra`` and
written back unchanged, so rewriting a manifest never loses information.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from persona.errors import ManifestError

MANIFEST_SUFFIX = "_metadata.json"
_KNOWN = ("name", "version", "records", "columns", "sort", "reference", "reference_contigs", "paired",
          "generation", "provenance")


def manifest_key(name: str) -> str:
    """Store key of dataset ``name``'s manifest."""
    return f"{name}{MANIFEST_SUFFIX}"


def chunk_path(name: str, first_ordinal: int) -> str:
    """The ``path`` of a chunk in the manifest: ``<name>_<first>`` (chunk keys add ``.<column>``)."""
    return f"{name}_{first_ordinal}"


@dataclass(frozen=True)
class ChunkRef:
    """One chunk: records ``[first, last)``; its column files are ``<path>.<column>``.

    Our extensions (optional in the JSON, ignored by the original's readers):
    ``files`` maps a column to the key of its file when that is not
    ``<path>.<column>`` (a column rewritten by a transaction whose files keep their
    attempt-unique keys), and ``checksums`` maps a column to the checksum of its
    file (``crc32:<8 hex>``), checked on every read.
    """

    first: int
    last: int
    path: str
    files: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    checksums: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_records(self) -> int:
        return self.last - self.first

    def key(self, column: str) -> str:
        """Store key of this chunk's ``column`` file. Absolute paths (the original's manifests
        sometimes hold them) keep only their file name: the key is relative to the store."""
        if column in self.files:
            return self.files[column]
        path = self.path.rsplit("/", 1)[-1] if self.path.startswith("/") else self.path
        return f"{path}.{column}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"first": self.first, "last": self.last, "path": self.path}
        if self.files:
            d["files"] = dict(sorted(self.files.items()))
        if self.checksums:
            d["checksums"] = dict(sorted(self.checksums.items()))
        return d


@dataclass(frozen=True)
class Contig:
    """A reference sequence; ``index`` is what ``ref_index`` in alignments refers to."""

    name: str
    length: int
    index: int
    #: MD5 of the upper-case sequence (the SAM header's ``@SQ M5``), when the reference was added by us
    md5: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Manifest:
    """An AGD dataset's manifest. ``records`` are sorted by ``first`` and do not overlap."""

    name: str
    columns: list[str] = field(default_factory=list)
    records: list[ChunkRef] = field(default_factory=list)
    version: int = 1
    sort: str | None = "queryname"
    reference: str | None = None
    reference_contigs: list[Contig] = field(default_factory=list)
    paired: bool | None = None
    #: bumped by every commit; a writer commits only over the generation it started from
    generation: int = 0
    #: one entry per app run that wrote this dataset (app, versions, parameters, inputs, times)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_records(self) -> int:
        return sum(r.last - r.first for r in self.records)

    def with_updates(self, **changes: Any) -> "Manifest":
        """A copy with fields replaced; raises TypeError for unknown field names."""
        if "reference_contigs" in changes:
            changes["reference_contigs"] = [_as_contig(c) for c in changes["reference_contigs"]]
        return replace(self, **changes)

    # -- JSON -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "records": [r.to_dict() for r in self.records],
            "columns": list(self.columns),
        }
        if self.sort is not None:
            d["sort"] = self.sort
        if self.reference is not None:
            d["reference"] = self.reference
        if self.reference_contigs:
            d["reference_contigs"] = [
                {"name": c.name, "length": c.length, "index": c.index, **({"md5": c.md5} if c.md5 else {})}
                for c in self.reference_contigs
            ]
        if self.paired is not None:
            d["paired"] = self.paired
        if self.generation:
            d["generation"] = self.generation
        if self.provenance:
            d["provenance"] = self.provenance
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=4).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str, key: str | None = None) -> "Manifest":
        """Parse and validate a manifest; :class:`ManifestError` names ``key`` and the problem."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"manifest is not valid JSON: {e}", key=key) from None
        return cls.from_dict(obj, key)

    @classmethod
    def from_dict(cls, obj: Any, key: str | None = None) -> "Manifest":
        if not isinstance(obj, dict):
            raise ManifestError(f"manifest must be a JSON object, got {type(obj).__name__}", key=key)

        def need(k: str, typ: type | tuple[type, ...], where: Mapping[str, Any] = obj, ctx: str = "") -> Any:
            if k not in where:
                raise ManifestError(f"manifest lacks {ctx}{k!r}", key=key)
            v = where[k]
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise ManifestError(f"manifest {ctx}{k!r} has the wrong type {type(v).__name__}", key=key)
            return v

        name = need("name", str)
        version = obj.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version != 1:
            raise ManifestError(f"unsupported manifest version {version!r} (expected 1)", key=key)
        columns = need("columns", list)
        if not all(isinstance(c, str) and c for c in columns):
            raise ManifestError("manifest 'columns' must be a list of non-empty strings", key=key)
        if len(set(columns)) != len(columns):
            raise ManifestError(f"manifest 'columns' lists a column twice: {columns}", key=key)
        records = []
        for i, r in enumerate(need("records", list)):
            if not isinstance(r, dict):
                raise ManifestError(f"manifest records[{i}] is not an object", key=key)
            ctx = f"records[{i}]."
            first, last = need("first", int, r, ctx), need("last", int, r, ctx)
            path = need("path", str, r, ctx)
            if first < 0 or last < first:
                raise ManifestError(f"manifest records[{i}] has an invalid range [{first}, {last})", key=key)
            files = r.get("files") or {}
            checksums = r.get("checksums") or {}
            for what, m in (("files", files), ("checksums", checksums)):
                if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                      for k, v in m.items()):
                    raise ManifestError(f"manifest {ctx}{what} must map column names to strings", key=key)
            records.append(ChunkRef(first, last, path, dict(files), dict(checksums)))
        records.sort(key=lambda r: r.first)
        for a, b in zip(records, records[1:]):
            if b.first < a.last:
                raise ManifestError(
                    f"manifest chunks {a.path} [{a.first}, {a.last}) and {b.path} [{b.first}, {b.last}) overlap",
                    key=key,
                )
        sort = obj.get("sort")
        if sort is not None and not isinstance(sort, str):
            raise ManifestError("manifest 'sort' must be a string", key=key)
        reference = obj.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise ManifestError("manifest 'reference' must be a string", key=key)
        contigs = []
        raw_contigs = obj.get("reference_contigs") or []
        if not isinstance(raw_contigs, list):
            raise ManifestError("manifest 'reference_contigs' must be a list", key=key)
        for i, c in enumerate(raw_contigs):
            if not isinstance(c, dict):
                raise ManifestError(f"manifest reference_contigs[{i}] is not an object", key=key)
            ctx = f"reference_contigs[{i}]."
            index = c.get("index", i)
            if not isinstance(index, int) or isinstance(index, bool):
                raise ManifestError(f"manifest {ctx}'index' must be an integer", key=key)
            md5 = c.get("md5")
            if md5 is not None and (not isinstance(md5, str) or not re.fullmatch(r"[0-9a-f]{32}", md5)):
                raise ManifestError(f"manifest {ctx}'md5' must be 32 lower-case hex digits", key=key)
            contigs.append(Contig(need("name", str, c, ctx), need("length", int, c, ctx), index, md5))
        paired = obj.get("paired")
        if paired is not None and not isinstance(paired, bool):
            raise ManifestError("manifest 'paired' must be true or false", key=key)
        generation = obj.get("generation", 0)
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise ManifestError("manifest 'generation' must be a non-negative integer", key=key)
        provenance = obj.get("provenance") or []
        if not isinstance(provenance, list) or not all(isinstance(p, dict) for p in provenance):
            raise ManifestError("manifest 'provenance' must be a list of objects", key=key)
        extra = {k: v for k, v in obj.items() if k not in _KNOWN}
        return cls(
            generation=generation,
            provenance=list(provenance),
            name=name,
            columns=list(columns),
            records=records,
            version=version,
            sort=sort,
            reference=reference,
            reference_contigs=contigs,
            paired=paired,
            extra=extra,
        )


def _as_contig(c: Contig | Mapping[str, Any] | tuple[str, int, int]) -> Contig:
    if isinstance(c, Contig):
        return c
    if isinstance(c, Mapping):
        return Contig(str(c["name"]), int(c["length"]), int(c["index"]), c.get("md5"))
    name, length, index = c
    return Contig(str(name), int(length), int(index))


def _checksum_form_ok(value: object) -> bool:
    """``<algorithm>:<hex digits>``, e.g. ``crc32:0a1b2c3d`` (lower case)."""
    if not isinstance(value, str):
        return False
    algo, sep, digits = value.partition(":")
    return (bool(sep) and bool(algo) and bool(digits)
            and all(ch in "abcdefghijklmnopqrstuvwxyz0123456789" for ch in algo)
            and all(ch in "0123456789abcdef" for ch in digits))


def manifest_problems(manifest: Manifest) -> list[str]:
    """Every problem :func:`validate_manifest` would refuse ``manifest`` for, in order (empty
    when it is well formed). For ``verify``, which reports them all."""
    return _manifest_problems(manifest)


def validate_manifest(manifest: Manifest, key: str | None = None) -> None:
    """Check that ``manifest`` describes a well-formed dataset; raise :class:`ManifestError` at
    the first problem, naming ``key`` (default: the manifest's own key) and what is wrong.

    Refused: an empty name; a column listed twice or unnamed; chunks out of order,
    overlapping, or leaving records out (they must cover ``[0, N)`` exactly, in order); a
    chunk holding no records (the original never writes one, and its ``<name>_<first>`` path
    would be the next chunk's); two chunks with one path, or two chunk files with one key;
    ``files`` or ``checksums`` naming a column the manifest does not list, or a checksum not
    of the form ``<algorithm>:<hex>``; a paired dataset with a chunk of an odd number of
    records (it would split a pair); reference contigs with a repeated name or index, or a
    length < 1. Pure: reads nothing but ``manifest``.
    """
    for problem in _manifest_problems(manifest):
        raise ManifestError(problem, key=key if key is not None else manifest_key(manifest.name))


def _manifest_problems(manifest: Manifest) -> list[str]:
    out: list[str] = []
    if not manifest.name:
        out.append("manifest 'name' is empty")
    seen_cols: set[str] = set()
    for c in manifest.columns:
        if not isinstance(c, str) or not c:
            out.append(f"manifest 'columns' holds {c!r}, not a column name")
        elif c in seen_cols:
            out.append(f"manifest 'columns' lists column {c!r} twice: {list(manifest.columns)}")
        seen_cols.add(c)
    expect = 0
    prev: ChunkRef | None = None
    paths: dict[str, int] = {}
    file_keys: dict[str, str] = {}
    for i, ref in enumerate(manifest.records):
        where = f"chunk {ref.path!r} (records[{i}], [{ref.first}, {ref.last}))"
        if ref.first < 0 or ref.last < ref.first:
            out.append(f"{where} has an invalid range")
            continue
        if ref.first > expect:
            after = f"after chunk {prev.path!r}" if prev is not None else "at the start"
            out.append(f"records [{expect}, {ref.first}) are in no chunk: a gap {after}, before {where}")
        elif ref.first < expect and prev is not None:
            out.append(f"{where} overlaps or comes before chunk {prev.path!r} [{prev.first}, {prev.last})")
        if ref.last == ref.first:
            out.append(f"{where} holds no records")
        elif manifest.paired and ref.num_records % 2:
            out.append(f"{where} holds an odd number of records, but the dataset is paired (mates interleaved)")
        if not ref.path:
            out.append(f"records[{i}] has an empty path")
        elif ref.path in paths:
            out.append(f"{where} has the same path as records[{paths[ref.path]}]")
        else:
            paths[ref.path] = i
        files = getattr(ref, "files", None) or {}
        checksums = getattr(ref, "checksums", None) or {}
        for what, mapping in (("files", files), ("checksums", checksums)):
            for c in mapping:
                if c not in seen_cols:
                    out.append(f"{where}: '{what}' names column {c!r}, which the manifest does not list")
        for c, cs in checksums.items():
            if not _checksum_form_ok(cs):
                out.append(f"{where}: checksum of column {c!r} is {cs!r}, not '<algorithm>:<hex>'")
        for c in dict.fromkeys(manifest.columns):
            fkey = ref.key(c)
            if fkey in file_keys:
                out.append(f"{where}: file {fkey!r} of column {c!r} is also the file of {file_keys[fkey]}")
            else:
                file_keys[fkey] = f"column {c!r} of chunk {ref.path!r}"
        expect = max(expect, ref.last)
        prev = ref
    names: set[str] = set()
    indices: set[int] = set()
    for contig in manifest.reference_contigs:
        if contig.name in names:
            out.append(f"reference contig {contig.name!r} is listed twice")
        if contig.index in indices:
            out.append(f"reference contig index {contig.index} is used twice (contig {contig.name!r})")
        if contig.length < 1:
            out.append(f"reference contig {contig.name!r} has length {contig.length}")
        names.add(contig.name)
        indices.add(contig.index)
    return out
