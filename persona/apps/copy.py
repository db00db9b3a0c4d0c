"""``persona cp`` and ``persona rm``: copying a dataset between stores, deleting one safely.

:func:`copy_dataset` copies an AGD dataset from any store to any other (``file://`` <->
``ceph://`` <-> ``s3://`` <-> ``memory://``), chunk file by chunk file, ``threads`` files in
flight, and commits like every other write (ARCHITECTURE.md, "Integrity"):

1. it takes the destination's writer claim (:class:`~persona.agd.transaction.WriterClaim`);
   a live writer there makes it fail at once with :class:`~persona.errors.DatasetBusyError`;
2. every file is read from the source and checked against the CRC-32 its manifest records
   (a damaged source chunk fails the copy with :class:`~persona.errors.ChunkFormatError`
   naming the key), then written under an attempt key ``<name>_<first>~<attempt>.<column>``;
   the attempt id is derived from the source (URL, name, generation) and the columns, so a
   copy started again after an interruption (killed, connection lost) uses the same keys and
   **resumes**: a file already there whose checksum matches is not copied again;
3. the manifest goes last, as one compare-and-swap commit (generation + 1); so an interrupted
   copy never looks complete, and an existing dataset of that name (``overwrite``) stays intact
   until the commit replaces it; its superseded files, and the leftovers of other attempts, go
   after the commit;
4. on stores with cheap copies (``file://``: hard links) the files then get their original
   names ``<name>_<first>.<column>`` (:func:`~persona.agd.transaction.original_names`).

``columns`` copies a subset (``base,qual`` to a cold tier): the copy's manifest lists only
those. The copy is a plain module rather than a runtime job: it has no stages to share with
the other apps, and its only resources are a thread pool and two stores.

:func:`remove_dataset` deletes a dataset: it takes the writer claim (refusing while a live
writer holds it), deletes the manifest first (so nothing half-deleted ever looks complete),
then every chunk file of the name (committed or left over), then the claim.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from persona.agd.dataset import Dataset, find_manifests
from persona.agd.manifest import ChunkRef, Manifest, chunk_path, manifest_key
from persona.agd.transaction import (
    WriterClaim,
    check_checksum,
    checksum,
    chunk_key_re,
    claim_key,
    new_attempt_id,
    original_names,
    read_manifest,
    unreferenced_keys,
)
from persona.errors import ConcurrentWriteError, DatasetError, ManifestError, StoreKeyError
from persona.storage import Store, open_store

__all__ = ["CopySummary", "RemoveSummary", "copy_dataset", "remove_dataset"]

log = logging.getLogger(__name__)


@dataclass
class CopySummary:
    """What a copy did: files and bytes copied, files found already copied (a resumed copy)."""

    source: str
    destination: str
    name: str
    columns: list[str]
    chunks: int
    records: int
    files_copied: int = 0
    files_skipped: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0
    generation: int = 0
    removed: list[str] = field(default_factory=list)

    @property
    def resumed(self) -> bool:
        return self.files_skipped > 0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("source", "destination", "name", "columns", "chunks", "records",
                                              "files_copied", "files_skipped", "bytes_copied", "seconds",
                                              "generation")}


@dataclass
class RemoveSummary:
    location: str
    name: str
    had_manifest: bool
    deleted: list[str]


def _plain_url(store: Store) -> str:
    return store.url.split("?", 1)[0]


def _copy_attempt(src: Store, manifest: Manifest, columns: Sequence[str], dst_name: str) -> str:
    """The attempt id of a copy: the same for the same source state, so a rerun resumes."""
    h = hashlib.sha256()
    for part in (_plain_url(src), manifest.name, str(manifest.generation), ",".join(columns), dst_name):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _existing_matches(dst: Store, key: str, expected: str, size: int | None) -> bool:
    """Whether ``key`` holds a file whose checksum is ``expected`` (a resumed copy skips it)."""
    try:
        if size is not None and dst.size(key) != size:
            return False
        data = dst.get(key)
    except StoreKeyError:
        return False
    return checksum(data) == expected


def copy_dataset(
    source: str | os.PathLike[str] | Store,
    destination: str | os.PathLike[str] | Store,
    *,
    name: str | None = None,
    columns: Sequence[str] | None = None,
    threads: int = 4,
    overwrite: bool = False,
    verify_destination: bool = False,
    progress: Callable[[int], None] | None = None,
    _after_file: Callable[[int], None] | None = None,
) -> CopySummary:
    """Copy dataset ``name`` (the only one at ``source`` when None) to ``destination``.

    ``columns``: the columns to copy (default all). ``threads``: files in flight (memory is
    about ``2 * threads`` chunk files). ``overwrite``: replace a dataset of that name at the
    destination (it stays intact until the commit). ``verify_destination``: read every file
    back from the destination and check its checksum (the source is always checked).
    ``progress`` gets the bytes of each file copied. See the module docstring for the commit.
    """
    t0 = time.perf_counter()
    ds = Dataset.open(source, name)
    src, manifest = ds.store, ds.manifest
    dst = open_store(destination)
    # The copy keeps the name: every chunk header carries it (a renamed copy would not verify).
    dname = manifest.name
    if columns is None:
        cols = list(manifest.columns)
    else:
        cols = list(dict.fromkeys(columns))
        unknown = [c for c in cols if c not in manifest.columns]
        if unknown:
            raise DatasetError(f"dataset {manifest.name!r} has no column(s) {', '.join(unknown)} "
                               f"(it has {', '.join(manifest.columns)})", store=src.url)
        if not cols:
            raise DatasetError("no columns to copy")
    if _plain_url(src) == _plain_url(dst):
        raise DatasetError(f"source and destination are the same dataset ({manifest.name!r} in {src.url})")
    threads = max(1, int(threads))
    attempt = _copy_attempt(src, manifest, cols, dname)
    summary = CopySummary(_plain_url(src), _plain_url(dst), dname, cols, len(manifest.records),
                          manifest.num_records)

    claim = WriterClaim(dst, dname, app="cp", attempt=new_attempt_id())
    claim.acquire()
    try:
        base = read_manifest(dst, dname)
        if base is not None and not overwrite:
            raise DatasetError(f"dataset {dname!r} already exists in {_plain_url(dst)} (remove it with "
                               "persona rm, or replace it: --overwrite)", store=dst.url)
        records = _copy_files(ds, dst, dname, cols, attempt, threads, summary, verify_destination, progress,
                              _after_file)
        new = manifest.with_updates(
            name=dname, columns=cols, records=records,
            generation=(base.generation if base is not None else 0) + 1,
            provenance=[*manifest.provenance, {
                "app": "cp", "from": f"{_plain_url(src)} {manifest.name} (generation {manifest.generation})",
                "columns": cols, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}],
        )
        # Compare-and-swap: still our claim, still the generation we found.
        claim.verify()
        current = read_manifest(dst, dname)
        if (current.generation if current else None) != (base.generation if base else None):
            raise ConcurrentWriteError(f"dataset {dname!r} changed during the copy; nothing was committed",
                                       store=dst.url)
        dst.put(manifest_key(dname), new.to_json())
        summary.generation = new.generation
        # After the commit: what the new manifest does not reference (the old dataset's files,
        # other attempts' leftovers) goes.
        for key in unreferenced_keys(dst, dname, new):
            with contextlib.suppress(StoreKeyError):
                dst.delete(key)
            summary.removed.append(key)
    finally:
        claim.release()
    if dst.cheap_copy:
        try:
            summary.generation = original_names(dst, dname).generation
        except Exception as exc:  # noqa: BLE001 - the copy stands under its attempt keys
            log.warning("dataset %r: could not give the copied files their original names: %s", dname, exc)
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _copy_files(ds: Dataset, dst: Store, dname: str, cols: Sequence[str], attempt: str, threads: int,
                summary: CopySummary, verify_destination: bool, progress: Callable[[int], None] | None,
                after_file: Callable[[int], None] | None) -> list[ChunkRef]:
    src, manifest = ds.store, ds.manifest
    lock = threading.Lock()
    sums: dict[tuple[int, str], str] = {}
    # One listing says which files an earlier attempt left (a resumed copy); the others need no
    # round trip to find out they are not there yet.
    present = {k for k in dst.list(f"{dname}_") if f"~{attempt}." in k} if dst.supports_listing else None

    def one(i: int, ref: ChunkRef, col: str) -> None:
        src_key = ref.key(col)
        dst_key = f"{chunk_path(dname, ref.first)}~{attempt}.{col}"
        expected = ref.checksums.get(col)
        maybe_there = present is None or dst_key in present
        if expected and maybe_there and _existing_matches(dst, dst_key, expected, None):
            with lock:
                summary.files_skipped += 1
                sums[(i, col)] = expected
            return
        data = src.get(src_key)  # StoreKeyError names the key when a source file is missing
        check_checksum(data, expected, f"{_plain_url(src)}/{src_key}")
        got = expected or checksum(data)
        dst.put(dst_key, data)
        if verify_destination and not _existing_matches(dst, dst_key, got, len(data)):
            raise DatasetError(f"the copy of {src_key} reads back different from {_plain_url(dst)} "
                               f"(expected {got})", key=dst_key, store=dst.url)
        with lock:
            summary.files_copied += 1
            summary.bytes_copied += len(data)
            sums[(i, col)] = got
            n = summary.files_copied
        if progress is not None:
            progress(len(data))
        if after_file is not None:
            after_file(n)

    jobs = [(i, ref, col) for i, ref in enumerate(manifest.records) for col in cols]
    # A bounded window of files in flight: memory stays about 2 * threads chunk files.
    with ThreadPoolExecutor(threads, thread_name_prefix="cp") as pool:
        pending: set[Future[None]] = set()
        try:
            for job in jobs:
                if len(pending) >= 2 * threads:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                pending.add(pool.submit(one, *job))
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    return [ChunkRef(r.first, r.last, f"{chunk_path(dname, r.first)}~{attempt}", {},
                     {c: sums[(i, c)] for c in cols}) for i, r in enumerate(manifest.records)]


def remove_dataset(location: str | os.PathLike[str] | Store, name: str | None = None) -> RemoveSummary:
    """Delete dataset ``name`` (the only one at ``location`` when None): manifest first, then every
    chunk file of the name, under its writer claim (:class:`~persona.errors.DatasetBusyError`
    while a live writer holds it). With no manifest left (an interrupted ``rm``, a copy that never
    committed) ``name`` must be given and the leftovers of that name are removed."""
    store = open_store(location)
    if name is None:
        names = find_manifests(store)
        if not names:
            raise ManifestError("no dataset manifest here; pass the name to remove the leftovers of one",
                                store=store.url)
        if len(names) > 1:
            raise DatasetError(f"several datasets in one location ({', '.join(names)}); choose one with --name",
                               store=store.url)
        name = names[0]
    if not name or "/" in name:
        raise DatasetError(f"bad dataset name {name!r}")
    claim = WriterClaim(store, name, app="rm", attempt=new_attempt_id())
    claim.acquire()
    deleted: list[str] = []
    try:
        manifest = read_manifest(store, name)
        pattern = chunk_key_re(name)
        keys = [k for k in store.list(f"{name}_") if pattern.match(k)]
        if manifest is None and not keys:
            raise ManifestError(f"no dataset {name!r} here (no manifest, no chunk files)", store=store.url)
        if manifest is not None:
            # keys the manifest names in another form (absolute paths of original manifests)
            keys += [r.key(c) for r in manifest.records for c in manifest.columns]
            store.delete(manifest_key(name))  # first: from here on nothing looks complete
            deleted.append(manifest_key(name))
        for key in dict.fromkeys(keys):
            with contextlib.suppress(StoreKeyError):
                store.delete(key)
                deleted.append(key)
        # breaker markers of claims broken long ago
        for key in store.list(f"{name}_writer."):
            if key.endswith(".broken") and key != claim_key(name):
                with contextlib.suppress(StoreKeyError):
                    store.delete(key)
    finally:
        claim.release()
    return RemoveSummary(_plain_url(store), name, manifest is not None, deleted)
