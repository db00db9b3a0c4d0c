"""AGD datasets in a store: reading (:class:`Dataset`) and writing (:class:`DatasetWriter`).

A dataset named ``ds`` lives in one store location (a directory, a memory
bucket, a RADOS namespace, an S3 prefix) as ``ds_metadata.json`` plus one file
per (chunk, column): ``ds_<first>.<column>``. The manifest is always written
LAST: a dataset whose manifest is missing is incomplete and cannot be opened,
so a crash mid-write never leaves something that looks like a finished dataset
(thesis §3.2.2: applications append a column, then update the manifest).

Both classes are thread-safe: pipeline stages may read or write different
chunks of one dataset from several threads.
"""
from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zstandard

from persona.agd.chunk import decode_chunk, encode_chunk
from persona.agd.columns import (
    READ_COLUMNS,
    ColumnValue,
    column_record_type,
    decode_column,
    encode_column,
)
from persona.agd.format import HEADER_SIZE, ChunkHeader, CompressionType
from persona.agd.manifest import (
    MANIFEST_SUFFIX,
    ChunkRef,
    Manifest,
    chunk_path,
    manifest_key,
    validate_manifest,
)
from persona.agd.integrity import check_chunk_header
from persona.agd.ragged import RaggedArray
from persona.agd.transaction import Transaction, check_checksum
from persona.errors import (
    ChunkFormatError,
    ConcurrentWriteError,
    DatasetBusyError,
    DatasetError,
    ManifestError,
    StoreKeyError,
)
from persona.storage import Store, open_store

_RAW_CACHE_SIZE = 4  # decoded chunks kept for read_record


def find_manifests(store: Store) -> list[str]:
    """Names of the datasets whose manifests sit at the top level of ``store``."""
    return [k[: -len(MANIFEST_SUFFIX)] for k in store.list() if "/" not in k and k.endswith(MANIFEST_SUFFIX)]


def _split_location(location: str | os.PathLike[str] | Store, name: str | None) -> tuple[Store, str | None]:
    """(store, dataset name) for a store / URL / path, or a path to a manifest file itself."""
    if isinstance(location, Store):
        return location, name
    loc = os.fspath(location).rstrip("/")
    if loc.endswith(MANIFEST_SUFFIX) and not os.path.isdir(loc):
        parent, _, fname = loc.rpartition("/")
        mname = fname[: -len(MANIFEST_SUFFIX)]
        if name is not None and name != mname:
            raise DatasetError(f"manifest {fname} is not that of dataset {name!r}", location=loc)
        return open_store(parent or "."), mname
    return open_store(loc), name


def encode_column_chunk(
    column: str,
    value: ColumnValue | Iterable[bytes],
    *,
    first_ordinal: int,
    name: str,
    compression: CompressionType | str | int = CompressionType.ZSTD,
    level: "int | zstandard.ZstdCompressionParameters | None" = None,
) -> bytes:
    """The file bytes of one column of one chunk (encode + compress); usable in a separate stage.

    ``level`` as in :func:`~persona.agd.chunk.encode_chunk` (an int, or zstd parameters).
    """
    records = encode_column(column, value)
    return encode_chunk(
        records,
        record_type=column_record_type(column),
        first_ordinal=first_ordinal,
        name=name,
        compression=compression,
        level=level,
    )


class Dataset:
    """An AGD dataset opened for reading (and for appending columns).

    ``chunks[i]`` is the i-th chunk; ``read_column(i, "base")`` its decoded bases.
    ``compression`` is used by :meth:`write_column_chunk`; None means "the one the
    dataset's first chunk file uses" (so a gzip dataset stays readable by the
    original), zstd if the dataset has no chunks.
    """

    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        *,
        compression: CompressionType | str | int | None = None,
        level: int | None = None,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self._compression = None if compression is None else CompressionType.parse(compression)
        self._level = level
        self._lock = threading.Lock()
        self._raw_cache: OrderedDict[tuple[int, str], RaggedArray] = OrderedDict()
        self._txn: Transaction | None = None
        self._paired: tuple[bool, str] | None = None

    @classmethod
    def open(cls, location: str | os.PathLike[str] | Store, name: str | None = None, *,
             validate: bool = True, **kwargs: Any) -> "Dataset":
        """Open the dataset in a store URL / path / :class:`Store`, or at the path of its manifest.

        Without ``name`` the location must hold exactly one ``*_metadata.json``.
        Raises :class:`ManifestError` when there is none (an incomplete dataset) or
        it is malformed or inconsistent (gaps, overlaps: :func:`validate_manifest`;
        ``validate=False`` skips that, for ``verify`` and ``repair-manifest``, which
        look further), :class:`DatasetError` when several datasets share the location.
        """
        store, name = _split_location(location, name)
        if name is None:
            names = find_manifests(store)
            if not names:
                raise ManifestError(
                    f"no dataset manifest (*{MANIFEST_SUFFIX}) found; the dataset is missing or incomplete",
                    store=store.url,
                )
            if len(names) > 1:
                raise DatasetError(
                    f"several datasets in one location ({', '.join(names)}); choose one with --name (name= in Python)", store=store.url
                )
            name = names[0]
        key = manifest_key(name)
        try:
            raw = store.get(key)
        except StoreKeyError:
            raise ManifestError("dataset manifest not found; the dataset is missing or incomplete",
                                key=key, store=store.url) from None
        manifest = Manifest.from_json(raw, key=f"{store.url}/{key}")
        if validate:
            validate_manifest(manifest, key=f"{store.url}/{key}")
        return cls(store, manifest, **kwargs)

    # -- description ----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def chunks(self) -> list[ChunkRef]:
        return self.manifest.records

    @property
    def columns(self) -> list[str]:
        return self.manifest.columns

    @property
    def paired(self) -> bool:
        """Whether the reads are interleaved pairs: the manifest's ``paired`` field, or for
        datasets whose manifest does not say (the original Persona's), detected from the read
        names (:func:`~persona.agd.pairing_detect.resolve_paired`; :attr:`paired_reason` says which)."""
        return self.resolve_paired()[0]

    @property
    def paired_reason(self) -> str:
        return self.resolve_paired()[1]

    def resolve_paired(self, override: bool | None = None) -> tuple[bool, str]:
        """``(paired, why)`` with an optional ``--paired``/``--single`` override."""
        if override is not None or self.manifest.paired is not None:
            from persona.agd.pairing_detect import resolve_paired

            return resolve_paired(self, override)
        if self._paired is None:
            from persona.agd.pairing_detect import resolve_paired

            self._paired = resolve_paired(self)
        return self._paired

    @property
    def num_records(self) -> int:
        return self.manifest.num_records

    def __repr__(self) -> str:
        return f"<Dataset {self.name!r} at {self.store.url}: {len(self.chunks)} chunks, columns {self.columns}>"

    def chunk_key(self, chunk_idx: int, column: str) -> str:
        """Store key of one column of one chunk. Absolute paths (old manifests) keep their file name."""
        return self.chunks[chunk_idx].key(column)

    def chunk_of(self, ordinal: int) -> int:
        """Index of the chunk holding record ``ordinal``."""
        firsts = [r.first for r in self.chunks]
        i = bisect.bisect_right(firsts, ordinal) - 1
        if i < 0 or ordinal >= self.chunks[i].last:
            raise IndexError(f"record {ordinal} is not in dataset {self.name!r}")
        return i

    # -- reading ----------------------------------------------------------------
    def _check_column(self, column: str) -> None:
        if column not in self.columns:
            raise DatasetError(f"dataset {self.name!r} has no column {column!r} (it has {self.columns})")

    def _check_header(self, header: ChunkHeader, chunk_idx: int, column: str, key: str) -> None:
        """The header must agree with the manifest: records, count, dataset name, record type."""
        check_chunk_header(header, self.chunks[chunk_idx], column, self.name, key=key)

    def read_file(self, chunk_idx: int, column: str) -> bytes:
        """The bytes of one chunk file, checked against the checksum the manifest records."""
        self._check_column(column)
        ref = self.chunks[chunk_idx]
        key = ref.key(column)
        buf = self.store.get(key)  # StoreKeyError names the key when the file is missing
        check_checksum(buf, ref.checksums.get(column), key)
        return buf

    def decode_file(self, chunk_idx: int, column: str, buf: bytes) -> ColumnValue:
        """Decode the bytes of one chunk file read with :meth:`read_file` (checks the header)."""
        key = self.chunk_key(chunk_idx, column)
        header, records = decode_chunk(buf, key)
        self._check_header(header, chunk_idx, column, key)
        return decode_column(column, records, key=key, record_type=header.record_type)

    def read_header(self, chunk_idx: int, column: str) -> ChunkHeader:
        """The header of one chunk file (a 56-byte ranged read), checked against the manifest."""
        self._check_column(column)
        key = self.chunk_key(chunk_idx, column)
        header = ChunkHeader.unpack(self.store.get_range(key, 0, HEADER_SIZE), key)
        self._check_header(header, chunk_idx, column, key)
        return header

    def read_raw(self, chunk_idx: int, column: str) -> tuple[ChunkHeader, RaggedArray]:
        """Header and still-encoded records of one chunk file, checked against the manifest."""
        key = self.chunk_key(chunk_idx, column)
        buf = self.read_file(chunk_idx, column)
        header, records = decode_chunk(buf, key)
        self._check_header(header, chunk_idx, column, key)
        return header, records

    def read_column(self, chunk_idx: int, column: str) -> ColumnValue:
        """The decoded value of one column of one chunk (RaggedArray or Alignments)."""
        header, records = self.read_raw(chunk_idx, column)
        return decode_column(column, records, key=self.chunk_key(chunk_idx, column), record_type=header.record_type)

    def read_chunk(self, chunk_idx: int, columns: Sequence[str] | None = None) -> dict[str, ColumnValue]:
        """Decoded values of several columns of one chunk (all columns by default)."""
        return {c: self.read_column(chunk_idx, c) for c in (self.columns if columns is None else columns)}

    def iter_chunks(self, columns: Sequence[str] | None = None) -> Iterator[tuple[ChunkRef, dict[str, ColumnValue]]]:
        """Every chunk in order with its decoded columns (one chunk in memory at a time)."""
        for i, ref in enumerate(self.chunks):
            yield ref, self.read_chunk(i, columns)

    def read_record(self, chunk_idx: int, column: str, i: int) -> ColumnValue | bytes:
        """Record ``i`` (0-based within the chunk) of one column, decoded.

        Byte columns give ``bytes``; alignment columns a one-row ``Alignments``.
        Uncompressed chunks are read with ranged gets (header, index, the record);
        compressed ones are decoded whole once and kept in a small cache.
        """
        self._check_column(column)
        ref = self.chunks[chunk_idx]
        if not 0 <= i < ref.num_records:
            raise IndexError(f"record {i} out of range for chunk {ref.path} of {ref.num_records} records")
        key = self.chunk_key(chunk_idx, column)
        header, one = self._read_one(chunk_idx, column, key, i)
        value = decode_column(column, one, key=key, record_type=header.record_type)
        return value[0] if isinstance(value, RaggedArray) else value

    def _read_one(self, chunk_idx: int, column: str, key: str, i: int) -> tuple[ChunkHeader, RaggedArray]:
        header = self.read_header(chunk_idx, column)
        if header.compression is CompressionType.UNCOMPRESSED and self.store.supports_partial_reads:
            n = header.num_records
            index = self.store.get_range(key, header.segment_start, 4 * n)
            if len(index) < 4 * n:
                raise ChunkFormatError(f"file ends inside the index of {n} records", key=key)
            lengths = np.frombuffer(index, dtype="<u4")
            start = header.segment_start + 4 * n + int(lengths[:i].sum(dtype=np.uint64))
            rec = self.store.get_range(key, start, int(lengths[i]))
            if len(rec) != int(lengths[i]):
                raise ChunkFormatError(f"file ends inside record {i}", key=key)
            return header, RaggedArray.from_list([rec])
        cache_key = (chunk_idx, column)
        with self._lock:
            records = self._raw_cache.get(cache_key)
            if records is not None:
                self._raw_cache.move_to_end(cache_key)
        if records is None:
            header, records = self.read_raw(chunk_idx, column)
            with self._lock:
                self._raw_cache[cache_key] = records
                while len(self._raw_cache) > _RAW_CACHE_SIZE:
                    self._raw_cache.popitem(last=False)
        return header, records.slice(i, i + 1)

    # -- appending columns ------------------------------------------------------
    @property
    def compression(self) -> CompressionType:
        """Compression for new column chunks (see the class docstring)."""
        if self._compression is None:
            comp = CompressionType.ZSTD
            if self.chunks and self.columns:
                key = self.chunk_key(0, self.columns[0])
                try:
                    comp = ChunkHeader.unpack(self.store.get_range(key, 0, HEADER_SIZE), key).compression
                except (StoreKeyError, ChunkFormatError):
                    pass
            self._compression = comp
        return self._compression

    def begin_columns(self, *, app: str = "columns", attempt: str | None = None,
                      request_id: str | None = None) -> Transaction:
        """A column transaction on this dataset (claims it; see :mod:`persona.agd.transaction`)."""
        txn = Transaction(self.store, self.name, app=app, new=False, attempt=attempt, request_id=request_id)
        txn.begin()
        if txn.base is not None and txn.base.generation != self.manifest.generation:
            self.manifest = txn.base  # someone committed since we opened: work on what is committed
        return txn

    def encode_column_file(self, chunk_idx: int, column: str, value: ColumnValue | Iterable[bytes]) -> bytes:
        """The file bytes of ``column`` for chunk ``chunk_idx`` (record count checked)."""
        ref = self.chunks[chunk_idx]
        n = len(value)  # type: ignore[arg-type]
        if n != ref.num_records:
            raise DatasetError(
                f"column {column!r} value has {n} records but chunk {ref.path} holds {ref.num_records}",
                key=self.chunk_key(chunk_idx, column),
            )
        return encode_column_chunk(column, value, first_ordinal=ref.first, name=self.name,
                                   compression=self.compression, level=self._level)

    def write_column_chunk(self, chunk_idx: int, column: str, value: ColumnValue | Iterable[bytes]) -> str:
        """Write one chunk of a (new or rewritten) column in this dataset's open column
        transaction (begun on first use); returns its key. The column becomes visible to
        readers only after :meth:`commit_columns`; :meth:`abort_columns` drops it."""
        data = self.encode_column_file(chunk_idx, column, value)
        with self._lock:
            if self._txn is None:
                self._txn = self.begin_columns()
            txn = self._txn
        return txn.put_column_file(chunk_idx, column, data)

    def commit_columns(self, new_columns: Sequence[str], **manifest_updates: Any) -> Manifest:
        """Commit the columns written with :meth:`write_column_chunk` and apply manifest
        updates (sort, reference, reference_contigs, paired, extra, provenance,
        drop_columns); one atomic manifest replacement. Returns the new manifest."""
        with self._lock:
            txn, self._txn = self._txn, None
        if txn is None:
            if new_columns:
                raise DatasetError(f"cannot commit columns {list(new_columns)}: none of their chunk files "
                                   "was written", store=self.store.url)
            txn = self.begin_columns()
        try:
            manifest = txn.commit(list(new_columns), **manifest_updates)
        except (ConcurrentWriteError, DatasetBusyError):
            txn.abort()
            raise
        except (DatasetError, TypeError):
            if txn.state == "open":  # refused before anything changed (files missing, bad field)
                with self._lock:
                    self._txn = txn
            raise
        except BaseException:
            if txn.state == "open":
                txn.abort()
            raise
        self.manifest = manifest
        with self._lock:
            self._raw_cache.clear()
        return manifest

    def abort_columns(self) -> None:
        """Drop the columns written since the last commit (idempotent)."""
        with self._lock:
            txn, self._txn = self._txn, None
        if txn is not None:
            txn.abort()


class DatasetWriter:
    """Writes a new dataset chunk by chunk in one :class:`Transaction`, then commits its
    manifest (:meth:`commit`), or removes what it wrote (:meth:`abort`).

    Chunks may be written in any order and from several threads; at commit they
    must cover records ``[0, N)`` without gaps. Used as a context manager, leaving
    the block without :meth:`commit` (normally or by an exception) aborts. The
    dataset is claimed from construction to commit/abort: a second writer of the
    same name fails at once with :class:`~persona.errors.DatasetBusyError`.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        name: str,
        columns: Sequence[str] = READ_COLUMNS,
        compression: CompressionType | str | int = CompressionType.ZSTD,
        paired: bool | None = None,
        *,
        level: int | None = None,
        overwrite: bool = False,
        app: str = "write",
        attempt: str | None = None,
        request_id: str | None = None,
    ) -> None:
        if not name or "/" in name:
            raise DatasetError(f"bad dataset name {name!r}: non-empty, no '/'")
        if len(set(columns)) != len(columns) or not columns:
            raise DatasetError(f"columns must be distinct and non-empty, got {list(columns)}")
        self.store = open_store(store)
        self.name = name
        self.columns = list(columns)
        self.compression = CompressionType.parse(compression)
        self.level = level
        self.paired = paired
        self.txn = Transaction(self.store, name, app=app, new=True, overwrite=overwrite, attempt=attempt,
                               request_id=request_id)
        self.txn.begin()

    @property
    def attempt(self) -> str:
        return self.txn.attempt

    def write_chunk(self, first_ordinal: int, values: Mapping[str, ColumnValue | Iterable[bytes]]) -> ChunkRef:
        """Encode, compress and store one chunk (every column); returns its manifest entry."""
        if set(values) != set(self.columns):
            raise DatasetError(f"chunk {first_ordinal} has columns {sorted(values)}, expected {self.columns}")
        sizes = {c: len(v) for c, v in values.items()}  # type: ignore[arg-type]
        if len(set(sizes.values())) != 1:
            raise DatasetError(f"chunk {first_ordinal}: columns differ in record count: {sizes}")
        files = {
            c: encode_column_chunk(
                c,
                values[c],
                first_ordinal=first_ordinal,
                name=self.name,
                compression=self.compression,
                level=self.level,
            )
            for c in self.columns
        }
        return self.write_encoded(first_ordinal, next(iter(sizes.values())), files)

    def write_encoded(self, first_ordinal: int, num_records: int, files: Mapping[str, bytes]) -> ChunkRef:
        """Store one chunk whose column files are already encoded (see :func:`encode_column_chunk`)."""
        if set(files) != set(self.columns):
            raise DatasetError(f"chunk {first_ordinal} has columns {sorted(files)}, expected {self.columns}")
        return self.txn.write_encoded(first_ordinal, num_records, files)

    @property
    def chunks(self) -> list[ChunkRef]:
        return self.txn.chunks

    @property
    def _state(self) -> str:
        return self.txn.state

    def commit(self, **manifest_fields: Any) -> Manifest:
        """Write the manifest (last) and return it. ``manifest_fields``: sort, reference,
        reference_contigs, paired, extra, provenance. Chunks must cover ``[0, N)`` exactly."""
        manifest_fields.setdefault("paired", self.paired)
        return self.txn.commit(self.columns, **manifest_fields)

    def abort(self) -> None:
        """Delete every chunk file written so far; idempotent. No manifest is written."""
        self.txn.abort()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.txn.state == "open":
            self.abort()
