"""Writes as transactions: writer claims, attempt-unique chunk keys, one atomic commit.

Every write of a new dataset or of new columns goes through one
:class:`Transaction` (ARCHITECTURE.md, "Integrity"):

1. **Claim.** The writer creates ``<name>_writer.json`` with the store's
   exclusive create (:meth:`Store.put_if_absent`). A second writer fails at once
   with :class:`~persona.errors.DatasetBusyError` naming the holder. A claim
   whose holder is dead (same host, process gone) or whose lease ran out (a
   holder renews it every ``ttl / 3`` s) is broken safely: the breaker first wins
   ``<name>_writer.<attempt>.broken`` (exclusive), so two recoverers never delete
   each other's fresh claim.
2. **Write.** Chunk files go under attempt-unique keys
   ``<name>_<first>~<attempt>.<column>``; a crashed, retried or racing attempt
   never overwrites a file another attempt (or the committed dataset) uses.
   Each file's CRC-32 is recorded.
3. **Commit.** The writer checks that it still holds the claim and that the
   manifest is still the generation it started from, then replaces the
   manifest in one atomic put (generation + 1) listing the new keys and their
   checksums. Superseded files (a rewritten column's old files) are deleted only
   after that. Where the store copies cheaply (hard links on ``file://``), the
   new files then get their original names ``<name>_<first>.<column>`` in a second
   commit, so a dataset written with ``--compression gzip`` stays readable by
   the original Persona.
4. **Abort** (or a crash) deletes only this attempt's keys; the committed state
   is untouched. Leftovers of dead attempts are removed by the next writer
   (:meth:`Transaction.begin`) or by ``persona gc`` (:func:`collect_garbage`).

A reader that opened the previous manifest keeps reading it until the superseded
files are removed; it then gets a clear error and opens the dataset again.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from persona.agd.manifest import ChunkRef, Manifest, chunk_path, manifest_key
from persona.errors import (
    ChunkFormatError,
    ConcurrentWriteError,
    DatasetBusyError,
    DatasetError,
    ManifestError,
    StoreKeyError,
)
from persona.storage import Store

log = logging.getLogger(__name__)

CLAIM_SUFFIX = "_writer.json"
DEFAULT_CLAIM_TTL = 60.0

_CHUNK_KEY = r"_(\d+)(?:~([0-9a-f]+))?\.([A-Za-z0-9_]+)$"


def claim_key(name: str) -> str:
    return f"{name}{CLAIM_SUFFIX}"


def new_attempt_id() -> str:
    return uuid.uuid4().hex[:12]


def checksum(data: bytes | bytearray | memoryview) -> str:
    """The checksum recorded in the manifest for one chunk file (zlib's CRC-32 releases the GIL)."""
    return f"crc32:{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def check_checksum(data: bytes | bytearray | memoryview, expected: str | None, key: str) -> None:
    """Raise :class:`ChunkFormatError` naming ``key`` when ``data`` does not match ``expected``."""
    if not expected:
        return
    algo, _, _ = expected.partition(":")
    if algo != "crc32":
        raise ChunkFormatError(f"unknown checksum algorithm {algo!r} in the manifest", key=key)
    got = checksum(data)
    if got != expected:
        raise ChunkFormatError(f"checksum mismatch: the manifest records {expected}, the file has {got} "
                               "(the file was changed or damaged after it was written)", key=key)


def chunk_key_re(name: str) -> re.Pattern[str]:
    """Matches the chunk file keys of dataset ``name``: groups first ordinal, attempt, column."""
    return re.compile("^" + re.escape(name) + _CHUNK_KEY)


def read_manifest(store: Store, name: str) -> Manifest | None:
    """The committed manifest of ``name``, or None if there is none."""
    key = manifest_key(name)
    try:
        raw = store.get(key)
    except StoreKeyError:
        return None
    return Manifest.from_json(raw, key=f"{store.url}/{key}")


# -- writer claims -------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterClaim:
    """The one-writer-per-dataset claim (see the module docstring)."""

    def __init__(self, store: Store, name: str, *, app: str, attempt: str,
                 ttl: float = DEFAULT_CLAIM_TTL, request_id: str | None = None) -> None:
        self.store = store
        self.name = name
        self.key = claim_key(name)
        self.app = app
        self.attempt = attempt
        self.ttl = ttl
        self.request_id = request_id
        self.held = False
        self._breakers: list[str] = []
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"app": self.app, "attempt": self.attempt, "request": self.request_id,
                           "host": socket.gethostname(), "pid": os.getpid(), "since": now,
                           "expires": now + self.ttl}, indent=1).encode()

    def holder(self) -> dict[str, Any] | None:
        """The claim's content, or None if the dataset is not claimed."""
        try:
            raw = self.store.get(self.key)
        except StoreKeyError:
            return None
        try:
            body = json.loads(raw)
            return body if isinstance(body, dict) else {"attempt": "?", "unreadable": True}
        except ValueError:
            return {"attempt": "?", "unreadable": True}

    @staticmethod
    def is_stale(holder: Mapping[str, Any]) -> bool:
        """A claim whose process is gone (same host) or whose lease expired."""
        if holder.get("unreadable"):
            return True
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _pid_alive(int(holder["pid"])):
                return True
        expires = holder.get("expires")
        return isinstance(expires, (int, float)) and expires < time.time()

    @staticmethod
    def describe(holder: Mapping[str, Any]) -> str:
        since = holder.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
        return (f"{holder.get('app', '?')} (attempt {holder.get('attempt', '?')}, pid {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')}, since {when})")

    def acquire(self) -> None:
        """Take the claim or raise :class:`DatasetBusyError` naming the live holder."""
        for _ in range(20):
            if self.store.put_if_absent(self.key, self._body()):
                self.held = True
                self._start_renewer()
                return
            holder = self.holder()
            if holder is None:
                continue  # released meanwhile: try again
            if not self.is_stale(holder):
                raise DatasetBusyError(f"dataset {self.name!r} is being written by {self.describe(holder)}; "
                                       "try again when it has finished", store=self.store.url)
            self._break(holder)
        raise DatasetBusyError(f"could not claim dataset {self.name!r}: the claim keeps changing",
                               store=self.store.url)

    def _break(self, holder: Mapping[str, Any]) -> None:
        breaker = f"{self.name}_writer.{holder.get('attempt', 'x')}.broken"
        if not self.store.put_if_absent(breaker, self._body()):
            # Someone else is breaking this stale claim; wait for them to take over.
            time.sleep(0.05)
            return
        self._breakers.append(breaker)
        log.warning("breaking the stale writer claim of dataset %r held by %s", self.name, self.describe(holder))
        with contextlib.suppress(StoreKeyError):
            self.store.delete(self.key)

    def _start_renewer(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"claim-{self.name}", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            holder = self.holder()
            if holder is None or holder.get("attempt") != self.attempt:
                return  # lost: commit will notice
            with contextlib.suppress(Exception):
                self.store.put(self.key, self._body())

    def verify(self) -> None:
        """Raise :class:`ConcurrentWriteError` unless this attempt still holds the claim."""
        holder = self.holder()
        if not self.held or holder is None or holder.get("attempt") != self.attempt:
            who = "nobody" if holder is None else self.describe(holder)
            raise ConcurrentWriteError(f"lost the writer claim of dataset {self.name!r} (now held by {who}); "
                                       "nothing was committed", store=self.store.url)

    def release(self) -> None:
        """Give the claim back (idempotent; never deletes another attempt's claim)."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=5)
        if self.held:
            holder = self.holder()
            if holder is not None and holder.get("attempt") == self.attempt:
                with contextlib.suppress(StoreKeyError):
                    self.store.delete(self.key)
            self.held = False
        for b in self._breakers:
            with contextlib.suppress(StoreKeyError):
                self.store.delete(b)
        self._breakers = []


# -- garbage -----------------------------------------------------------------------------
def unreferenced_keys(store: Store, name: str, manifest: Manifest | None,
                      keep_attempts: Iterable[str] = ()) -> list[str]:
    """Chunk-file keys of ``name`` that the committed manifest does not reference."""
    pattern = chunk_key_re(name)
    used = set()
    if manifest is not None:
        for ref in manifest.records:
            used.update(ref.key(c) for c in manifest.columns)
    keep = set(keep_attempts)
    out = []
    for key in store.list(f"{name}_"):
        m = pattern.match(key)
        if m and key not in used and (m.group(2) is None or m.group(2) not in keep):
            out.append(key)
    return out


def remove_dead_temporaries(store: Store, name: str, keep_attempts: Iterable[str] = ()) -> list[str]:
    """Remove what killed puts of ``name``'s chunk files and manifest left staged in the store
    (a ``file://`` store's hidden temporary files); the caller holds the writer claim."""
    pattern = chunk_key_re(name)
    keep = set(keep_attempts)
    manifest = manifest_key(name)

    def dead(key: str) -> bool:
        m = pattern.match(key)
        return key == manifest or (m is not None and (m.group(2) is None or m.group(2) not in keep))

    return store.remove_temporaries(name, match=dead)


def remove_dead_attempts(store: Store, name: str, manifest: Manifest | None,
                         keep_attempts: Iterable[str] = ()) -> list[str]:
    """Remove every leftover of ``name``'s dead attempts (the chunk files ``manifest`` does not
    reference, and what killed puts left staged); returns their keys. The caller holds the writer claim."""
    keys = unreferenced_keys(store, name, manifest, keep_attempts)
    for key in keys:
        with contextlib.suppress(StoreKeyError):
            store.delete(key)
    return keys + remove_dead_temporaries(store, name, keep_attempts)


def original_names(store: Store, name: str) -> Manifest:
    """Give every chunk file of ``name`` its original name ``<name>_<first>.<column>`` (copying the
    files where the store cannot link them), in a transaction: the layout the original Persona
    reads. Stores with cheap copies (``file://``) already commit under those names."""
    txn = Transaction(store, name, app="gc", new=False, canonical_names=True).begin()
    try:
        return txn.commit([])
    except BaseException:
        if txn.state == "open":
            txn.abort()
        raise


def collect_garbage(store: Store, name: str) -> list[str]:
    """Remove the leftovers of dead attempts of dataset ``name``; returns the deleted keys.

    Takes the writer claim first (so a running writer's files are never touched:
    :class:`DatasetBusyError` then), breaking a stale one.
    """
    claim = WriterClaim(store, name, app="gc", attempt=new_attempt_id())
    claim.acquire()
    try:
        return remove_dead_attempts(store, name, read_manifest(store, name))
    finally:
        claim.release()


# -- transactions ------------------------------------------------------------------------
class Transaction:
    """One attempt at writing a new dataset (``new=True``) or new/rewritten columns of an
    existing one. Thread-safe: stages write chunk files from several threads.

    Use :meth:`begin` (or the context manager, which aborts unless committed), then
    :meth:`put_file` / :meth:`write_encoded` for every chunk file, then :meth:`commit`.
    """

    def __init__(self, store: Store, name: str, *, app: str, new: bool, overwrite: bool = False,
                 attempt: str | None = None, request_id: str | None = None,
                 claim_ttl: float = DEFAULT_CLAIM_TTL, canonical_names: bool | None = None) -> None:
        if not name or "/" in name:
            raise DatasetError(f"bad dataset name {name!r}: non-empty, no '/'")
        self.store = store
        self.name = name
        self.app = app
        self.new = new
        self.overwrite = overwrite
        self.attempt = attempt or new_attempt_id()
        self.claim = WriterClaim(store, name, app=app, attempt=self.attempt, ttl=claim_ttl, request_id=request_id)
        self.canonical_names = store.cheap_copy if canonical_names is None else canonical_names
        self.base: Manifest | None = None
        self.state = "new"
        self._lock = threading.Lock()
        self._written: list[str] = []
        # new dataset: first ordinal -> ChunkRef; columns: (chunk index, column) -> key
        self._chunks: dict[int, ChunkRef] = {}
        self._files: dict[tuple[int, str], str] = {}
        self._sums: dict[tuple[int, str], str] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def begin(self) -> "Transaction":
        """Claim the dataset, read the committed state and clear dead attempts' leftovers."""
        if self.state != "new":
            return self
        self.claim.acquire()
        try:
            self.base = read_manifest(self.store, self.name)
            if self.new and self.base is not None and not self.overwrite:
                raise DatasetError(f"dataset {self.name!r} already exists (choose another name, or overwrite it)",
                                   store=self.store.url)
            if not self.new and self.base is None:
                raise ManifestError(f"dataset {self.name!r} has no manifest; it is missing or incomplete",
                                    store=self.store.url)
            # We hold the claim: whatever the manifest does not reference is a dead attempt's.
            remove_dead_attempts(self.store, self.name, self.base, keep_attempts=(self.attempt,))
        except BaseException:
            self.claim.release()
            raise
        self.state = "open"
        return self

    def _check_open(self) -> None:
        if self.state != "open":
            raise DatasetError(f"dataset writer for {self.name!r} is already {self.state}")

    def __enter__(self) -> "Transaction":
        return self.begin()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.state in ("open", "new"):
            self.abort()

    # -- writing ---------------------------------------------------------------------------
    def attempt_path(self, first: int) -> str:
        return f"{chunk_path(self.name, first)}~{self.attempt}"

    def put_file(self, key: str, data: bytes | bytearray | memoryview) -> str:
        """Store one file of this attempt; returns its checksum."""
        self._check_open()
        with self._lock:
            self._written.append(key)  # before the put: abort removes partial writes too
        self.store.put(key, data)
        return checksum(data)

    def write_encoded(self, first: int, num_records: int, files: Mapping[str, bytes | memoryview]) -> ChunkRef:
        """New dataset: store one chunk whose column files are encoded (each holds
        ``num_records`` records starting at ``first``)."""
        if not self.new:
            raise DatasetError("write_encoded is for new datasets; use put_column_file")
        path = self.attempt_path(first)
        with self._lock:
            if first in self._chunks:
                raise DatasetError(f"chunk {first} of {self.name!r} written twice")
            self._chunks[first] = ChunkRef(first, first + num_records, path)
        sums = {c: self.put_file(f"{path}.{c}", data) for c, data in files.items()}
        ref = ChunkRef(first, first + num_records, path, {}, sums)
        with self._lock:
            self._chunks[first] = ref
        return ref

    def put_column_file(self, chunk_idx: int, column: str, data: bytes | memoryview) -> str:
        """Existing dataset: store the file of ``column`` for chunk ``chunk_idx``; returns its key."""
        if self.new:
            raise DatasetError("put_column_file is for existing datasets; use write_encoded")
        self._check_open()
        assert self.base is not None
        ref = self.base.records[chunk_idx]
        key = f"{chunk_path(self.name, ref.first)}~{self.attempt}.{column}"
        sum_ = self.put_file(key, data)
        with self._lock:
            self._files[(chunk_idx, column)] = key
            self._sums[(chunk_idx, column)] = sum_
        return key

    @property
    def chunks(self) -> list[ChunkRef]:
        with self._lock:
            return sorted(self._chunks.values(), key=lambda r: r.first)

    # -- commit ----------------------------------------------------------------------------
    def _new_manifest(self, columns: Sequence[str], fields: dict[str, Any]) -> Manifest:
        chunks = self.chunks
        expect = 0
        for ref in chunks:
            if ref.first != expect:
                what = "gap" if ref.first > expect else "overlap"
                raise DatasetError(f"chunks of {self.name!r} have a {what} at record {expect} (next chunk {ref.path})")
            missing = [c for c in columns if c not in ref.checksums]
            if missing:
                raise DatasetError(f"chunk {ref.first} of {self.name!r} lacks columns {missing}")
            expect = ref.last
        return Manifest(name=self.name, columns=list(columns), records=chunks).with_updates(**fields)

    def _columns_manifest(self, columns: Sequence[str], fields: dict[str, Any]) -> tuple[Manifest, list[str]]:
        assert self.base is not None
        base = self.base
        missing = [f"{r.path}.{c}" for c in columns for i, r in enumerate(base.records)
                   if (i, c) not in self._files]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DatasetError(f"cannot commit columns: {len(missing)} chunk files missing: {shown}",
                               store=self.store.url)
        dropping = [c for c in fields.pop("_drop_columns", ()) if c in base.columns]
        superseded = [r.key(c) for r in base.records for c in dropping]
        records = []
        for i, r in enumerate(base.records):
            files = {c: k for c, k in r.files.items() if c not in columns and c not in dropping}
            sums = {c: s for c, s in r.checksums.items() if c not in columns and c not in dropping}
            for c in columns:
                if c in base.columns:
                    superseded.append(r.key(c))
                files[c] = self._files[(i, c)]
                sums[c] = self._sums[(i, c)]
            records.append(ChunkRef(r.first, r.last, r.path, files, sums))
        drop = set(fields.pop("_dropped", ()))
        cols = [c for c in base.columns if c not in drop] + [c for c in columns if c not in base.columns]
        return base.with_updates(columns=cols, records=records, **fields), superseded

    def commit(self, columns: Sequence[str], *, drop_columns: Sequence[str] = (),
               provenance: Mapping[str, Any] | list[Mapping[str, Any]] | None = None, **fields: Any) -> Manifest:
        """Make this attempt's files the dataset's: one atomic manifest replacement.

        ``columns``: a new dataset's columns, or the columns this attempt wrote.
        ``drop_columns``: columns to remove from the manifest (their files go too).
        ``fields``: manifest updates (sort, reference, reference_contigs, paired, extra).
        ``provenance``: an entry (or a list of entries) appended to the manifest's provenance list.
        """
        self._check_open()
        if "extra" in fields and self.base is not None and not self.new:
            fields["extra"] = {**self.base.extra, **fields["extra"]}
        superseded: list[str] = []
        if self.new:
            manifest = self._new_manifest(columns, fields)
            if self.base is not None:  # overwrite: every old file goes after the commit
                superseded = [r.key(c) for r in self.base.records for c in self.base.columns]
        else:
            fields["_drop_columns"] = [c for c in drop_columns if c not in columns]
            fields["_dropped"] = list(fields["_drop_columns"])
            manifest, superseded = self._columns_manifest(columns, fields)
        prov = list(self.base.provenance) if (self.base is not None and not self.new) else []
        if isinstance(provenance, list):
            prov.extend(dict(p) for p in provenance)
        elif provenance is not None:
            prov.append(dict(provenance))
        manifest = manifest.with_updates(provenance=prov,
                                         generation=(self.base.generation if self.base else 0) + 1)
        self._publish(manifest)
        self.state = "committed"
        try:
            self._delete(superseded)
            if self.canonical_names:
                manifest = self._canonicalize(manifest)
        finally:
            self.claim.release()
        return manifest

    def _publish(self, manifest: Manifest) -> None:
        """Compare-and-swap the manifest: still our claim, still the generation we began from."""
        self.claim.verify()
        current = read_manifest(self.store, self.name)
        expected = self.base.generation if self.base is not None else None
        got = current.generation if current is not None else None
        if got != expected:
            raise ConcurrentWriteError(f"dataset {self.name!r} changed while it was being written "
                                       f"(generation {got}, expected {expected}); nothing was committed",
                                       store=self.store.url)
        self.store.put(manifest_key(self.name), manifest.to_json())

    def _delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self.store.delete(key)
            except StoreKeyError:
                pass
            except Exception as exc:  # noqa: BLE001 - garbage is collected later; never undo a commit
                log.warning("could not remove superseded file %s: %s", key, exc)

    def _canonicalize(self, manifest: Manifest) -> Manifest:
        """Give this attempt's files the original names ``<name>_<first>.<column>`` (a second
        commit; a crash in between leaves the first one committed and unreferenced copies)."""
        moves: list[tuple[str, str]] = []
        records = []
        for r in manifest.records:
            canon = chunk_path(self.name, r.first)
            for c in manifest.columns:
                key = r.key(c)
                if key != f"{canon}.{c}":
                    moves.append((key, f"{canon}.{c}"))
            records.append(ChunkRef(r.first, r.last, canon, {}, dict(r.checksums)))
        if not moves:
            return manifest
        try:
            for src, dst in moves:
                self.store.copy(src, dst)
            renamed = manifest.with_updates(records=records, generation=manifest.generation + 1)
            self.base = manifest
            self._publish(renamed)
        except Exception as exc:  # noqa: BLE001 - the first commit stands
            log.warning("dataset %r: could not give chunk files their original names: %s", self.name, exc)
            self._delete(dst for _, dst in moves if dst not in {r.key(c) for r in manifest.records
                                                                for c in manifest.columns})
            return manifest
        self._delete(src for src, _ in moves)
        return renamed

    # -- abort -----------------------------------------------------------------------------
    def abort(self) -> None:
        """Delete this attempt's files and release the claim; idempotent; the committed state stays."""
        if self.state == "committed":
            raise DatasetError(f"transaction on dataset {self.name!r} is already committed; cannot abort")
        if self.state == "aborted":
            return
        was_open = self.state == "open"
        self.state = "aborted"
        if was_open:
            with self._lock:
                keys, self._written = self._written, []
            self._delete(keys)
        self.claim.release()
