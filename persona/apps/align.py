"""The align application (thesis §5.5, Figure 5.5) as a PTF pipeline.

One feed per chunk flows through::

    read  ->  decode  ->  align  ->  encode  ->  write
    store.get of the    decompress,   hand the chunk to the     Alignments ->    store.put of
    base, qual (and     parse, unpack shared executor in work   proto records,   results and
    metadata) files     3-bit bases   items; gather in order    compress         secondary<N>

* ``align`` replicas only split chunks and wait: the work runs on the
  process-wide :class:`~persona.align.executor.AlignerExecutor`, shared with
  every other align stage and request, so the I/O chunk size and the compute
  work-item size are independent (§5.4.2).
* The reference index is loaded once per process and shared
  (:func:`~persona.align.reference.acquire_reference`), held for the request.
* ``secondary<N>`` columns hold one record per read: the read's (N+1)-th
  secondary/supplementary alignment, or a zero-length record when it has none
  (see :mod:`persona.agd.columns`).
* The manifest gains ``results`` (+ ``secondary<N>``), ``reference`` (the
  reference's name) and ``reference_contigs`` only after every chunk file is
  written; if any chunk fails, the files this run wrote are deleted and the
  manifest is untouched (re-aligning first retracts the old columns from the
  manifest, so it never lists half-rewritten columns).
* Paired datasets (manifest ``paired``) are aligned as interleaved pairs; each
  chunk must hold whole pairs.
* Read names (the ``metadata`` column, when present) are passed to the aligner
  so minimap2 breaks ties exactly as the minimap2 binary does. The ``qual``
  column must exist but is read only if the backend uses qualities
  (``Aligner.uses_quals``; minimap2 does not).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from persona.agd import (
    BASE,
    METADATA,
    QUAL,
    RESULTS,
    Dataset,
    Manifest,
    decode_chunk,
    decode_column,
)
from persona.agd.dataset import encode_column_chunk
from persona.agd.manifest import manifest_key
from persona.agd.ragged import RaggedArray
from persona.agd.records import Alignments
from persona.align.base import AlignerOptions, AlignResult
from persona.align.executor import (
    DEFAULT_WORK_ITEM_READS,
    AlignerExecutor,
    shared_executor,
)
from persona.align.reference import (
    LoadedReference,
    acquire_reference,
    release_reference,
)
from persona.errors import DatasetError, StoreKeyError
from persona.ptf import Pipeline, PipelineSpec, StageSpec
from persona.storage import Store

DEFAULT_REFERENCES_URL = "~/.local/share/persona/references"
#: stage replicas unless told otherwise: align replicas only wait on the executor
DEFAULT_REPLICAS = {"read": 1, "decode": 1, "align": 2, "encode": 1, "write": 1}


@dataclass
class AlignRequest:
    """What every feed of one align request shares."""

    dataset: Dataset
    reference: LoadedReference
    executor: AlignerExecutor
    work_item_reads: int
    read_columns: tuple[str, ...]
    out_columns: tuple[str, ...]
    paired: bool
    progress: Callable[[int], None] | None = None


@dataclass
class ChunkFeed:
    """The payload of one feed: a chunk on its way through the pipeline."""

    req: AlignRequest
    index: int
    raw: dict[str, bytes] = field(default_factory=dict)
    columns: dict[str, RaggedArray] = field(default_factory=dict)
    result: AlignResult | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    written: tuple[str, ...] = ()


# -- stages (plain functions over one payload) ---------------------------------------------
def read_stage(feed: ChunkFeed) -> ChunkFeed:
    ds = feed.req.dataset
    for col in feed.req.read_columns:
        key = ds.chunk_key(feed.index, col)
        try:
            feed.raw[col] = ds.store.get(key)
        except StoreKeyError:
            raise DatasetError(f"chunk file of column {col!r} is missing", key=key) from None
    return feed


def decode_stage(feed: ChunkFeed) -> ChunkFeed:
    ds = feed.req.dataset
    ref = ds.chunks[feed.index]
    for col, buf in feed.raw.items():
        key = ds.chunk_key(feed.index, col)
        header, records = decode_chunk(buf, key)
        if (header.first_ordinal, header.last_ordinal) != (ref.first, ref.last):
            raise DatasetError(f"chunk header holds records [{header.first_ordinal}, {header.last_ordinal}) "
                               f"but the manifest says [{ref.first}, {ref.last})", key=key)
        value = decode_column(col, records, key=key, record_type=header.record_type)
        assert isinstance(value, RaggedArray)
        feed.columns[col] = value
    feed.raw = {}
    return feed


def align_stage(feed: ChunkFeed) -> ChunkFeed:
    req = feed.req
    cols = feed.columns
    key = req.dataset.chunk_key(feed.index, BASE)
    feed.result = req.executor.align(req.reference.aligner, cols[BASE], cols.get(QUAL), cols.get(METADATA),
                                     paired=req.paired, work_item_reads=req.work_item_reads, key=key)
    feed.columns = {}
    return feed


def encode_stage(feed: ChunkFeed) -> ChunkFeed:
    req = feed.req
    ds = req.dataset
    ref = ds.chunks[feed.index]
    assert feed.result is not None
    values: list[Alignments] = [feed.result.primary, *feed.result.secondary]
    for col, value in zip(req.out_columns, values):
        feed.files[col] = encode_column_chunk(col, value, first_ordinal=ref.first, name=ds.name,
                                              compression=ds.compression)
    feed.result = None
    return feed


def write_stage(feed: ChunkFeed) -> ChunkFeed:
    ds = feed.req.dataset
    written = []
    for col, data in feed.files.items():
        key = ds.chunk_key(feed.index, col)
        ds.store.put(key, data)
        written.append(key)
    feed.files = {}
    feed.written = tuple(written)
    if feed.req.progress is not None:
        feed.req.progress(ds.chunks[feed.index].num_records)
    return feed


def align_pipeline_spec(replicas: Mapping[str, int] | None = None, *, capacity: int = 2) -> PipelineSpec:
    """The align pipeline of Figure 5.5; ``replicas`` overrides :data:`DEFAULT_REPLICAS` per stage."""
    reps = {**DEFAULT_REPLICAS, **(replicas or {})}
    unknown = set(reps) - set(DEFAULT_REPLICAS)
    if unknown:
        raise DatasetError(f"unknown align stage(s) {sorted(unknown)}; stages: {list(DEFAULT_REPLICAS)}")
    fns = {"read": read_stage, "decode": decode_stage, "align": align_stage, "encode": encode_stage,
           "write": write_stage}
    return PipelineSpec.chain("align", [StageSpec(s, fns[s], replicas=int(reps[s])) for s in DEFAULT_REPLICAS],
                              capacity=capacity, credits=None)


# -- the application ---------------------------------------------------------------------
def _check_dataset(ds: Dataset) -> bool:
    missing = [c for c in (BASE, QUAL) if c not in ds.columns]
    if missing:
        raise DatasetError(f"dataset {ds.name!r} cannot be aligned: it has no {' or '.join(map(repr, missing))} "
                           f"column (it has {ds.columns})", store=ds.store.url)
    if ds.paired:
        for ref in ds.chunks:
            if ref.first % 2 or ref.num_records % 2:
                raise DatasetError(f"paired dataset {ds.name!r}: chunk [{ref.first}, {ref.last}) splits a pair",
                                   key=ref.path)
    return ds.paired


def _retract(ds: Dataset, columns: tuple[str, ...]) -> list[str]:
    """Remove alignment columns from the manifest before rewriting them (see module docstring).

    Returns the retracted columns that this run does not rewrite (their files go after the commit).
    """
    old = [c for c in ds.columns if c in columns or c.startswith("secondary")]
    if not old:
        return []
    manifest = ds.manifest.with_updates(columns=[c for c in ds.columns if c not in old])
    ds.store.put(manifest_key(manifest.name), manifest.to_json())
    ds.manifest = manifest
    return [c for c in old if c not in columns]


def align_dataset(location: str | os.PathLike[str] | Store, reference: str, *, aligner: str = "minimap2",
                  threads: int = 0, work_item_reads: int = DEFAULT_WORK_ITEM_READS, secondary: int = 0,
                  options: AlignerOptions | Mapping[str, Any] | None = None,
                  references_url: str | os.PathLike[str] | Store = DEFAULT_REFERENCES_URL,
                  name: str | None = None, replicas: Mapping[str, int] | None = None,
                  executor: AlignerExecutor | None = None, overwrite: bool = True,
                  progress: Callable[[int], None] | None = None, capacity: int = 2) -> Manifest:
    """Align the reads of the dataset at ``location`` against ``reference``; returns the new manifest.

    ``threads`` sizes the process-wide aligner pool (0: one per core) unless an
    ``executor`` is given. ``options`` (an :class:`AlignerOptions` or its dict)
    sets the preset and backend options; ``secondary`` > 0 overrides its
    secondary count. ``overwrite=False`` refuses a dataset that already has
    ``results``. ``capacity`` bounds each gate of the pipeline (chunks in
    flight between two stages, hence memory). ``progress(n)`` is called with each chunk's record count once
    its columns are written (from a stage thread). Raises :class:`DatasetError` for unusable datasets,
    :class:`~persona.errors.ReferenceNotFoundError` for unknown references and
    :class:`~persona.errors.StageError` naming the failing chunk and stage.
    """
    ds = Dataset.open(location, name)
    paired = _check_dataset(ds)
    if RESULTS in ds.columns and not overwrite:
        raise DatasetError(f"dataset {ds.name!r} is already aligned (against {ds.manifest.reference!r})")
    opts = options if isinstance(options, AlignerOptions) else AlignerOptions.from_dict(options or {})
    if secondary:
        opts = AlignerOptions(opts.preset, secondary, opts.use_names, opts.extra)
    out_columns = (RESULTS, *(f"secondary{i}" for i in range(opts.secondary)))
    ex = executor or shared_executor(threads)
    spec = align_pipeline_spec(replicas, capacity=capacity)
    ref = acquire_reference(reference, references_url, aligner=aligner, options=opts)
    try:
        # qualities are read (and decoded) only for a backend that uses them; minimap2 does not
        read_columns = ((BASE,) + ((QUAL,) if ref.aligner.uses_quals else ())
                        + ((METADATA,) if opts.use_names and METADATA in ds.columns else ()))
        req = AlignRequest(ds, ref, ex, work_item_reads, read_columns, out_columns, paired, progress)
        stale = _retract(ds, out_columns)
        with Pipeline(spec) as pipeline:
            handle = pipeline.submit(ChunkFeed(req, i) for i in range(len(ds.chunks)))
            try:
                handle.result()
            except BaseException:
                # A failed batch is done only once quiescent: no write stage runs for it after
                # result() raised. Interrupted while waiting (KeyboardInterrupt): cancel and wait.
                handle.cancel()
                handle.exception()
                _delete_outputs(ds, out_columns)
                raise
        manifest = ds.commit_columns(list(out_columns), reference=reference,
                                     reference_contigs=ref.info.manifest_contigs())
        _delete_outputs(ds, tuple(stale))
        return manifest
    finally:
        release_reference(ref)


def _delete_outputs(ds: Dataset, columns: tuple[str, ...]) -> None:
    """Best-effort removal of the chunk files of ``columns`` (not in the manifest any more)."""
    for i in range(len(ds.chunks)):
        for col in columns:
            key = ds.chunk_key(i, col)
            try:
                if ds.store.exists(key):
                    ds.store.delete(key)
            except Exception:  # noqa: BLE001 - cleanup must not hide the real error
                pass
