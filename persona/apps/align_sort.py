"""Fused align-sort (thesis §5.7): align a dataset's reads and sort them by coordinate in one request.

Phase 1 of the sort (:mod:`persona.apps.sort`) takes its groups of chunks from the
aligner instead of from the store: each chunk's ``base`` (and ``qual``, ``metadata``)
files are read once, the reads are aligned on the runtime's shared aligner executor,
and the alignments stay in memory, encoded as the ``results`` (``secondary<N>``,
``tags``) records an align would have written, next to the chunk's other columns.
The group is then sorted and written as one intermediate run (or, for a dataset of one
group, streamed straight to the output), and the merge proceeds as a sort's does. No
``results`` column is ever written to the input dataset: the input is only read.

The output is the dataset ``persona align DS`` then ``persona sort DS`` would make:
the same columns with the same records in the same order (the same keys, the same
stable tie-break: input order), its manifest recording the reference, its contigs and
the read group. With ``markdup`` duplicates are marked during the merge
(:class:`persona.apps.markdup.MergeMarker`), so FASTQ import -> sorted, duplicate-marked
dataset is one request more.

Memory is that of a sort: ``threads`` groups of ``group_chunks`` chunks in phase 1, each
group's alignments included; the merge's blocks are bounded by ``merge_memory``.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from persona.agd import BASE, METADATA, QUAL
from persona.agd.columns import (
    RESULTS,
    column_record_type,
    column_sort_key,
    decode_column,
    encode_column,
    is_alignment_column,
    is_secondary_column,
    is_tags_column,
    tags_column,
)
from persona.agd.format import RecordType
from persona.agd.ragged import RaggedArray
from persona.agd.records import Alignments
from persona.align.base import AlignerOptions
from persona.align.reference import LoadedReference
from persona.apps.align import AlignJob, aligner_version
from persona.apps.sort import SortJob, SortRequest, SortSummary
from persona.errors import ConfigError

if TYPE_CHECKING:
    from persona.config import Config
    from persona.runtime import Runtime


@dataclass
class AlignSortRequest(SortRequest):
    """Align ``dataset`` against ``reference`` and sort it by coordinate into a new dataset (fields as in
    :class:`~persona.apps.sort.SortRequest` and :class:`~persona.apps.align.AlignRequest`; ``markdup``:
    mark duplicates during the merge)."""

    kind: ClassVar[str] = "align-sort"

    reference: str = ""
    aligner: str | None = None
    preset: str | None = None
    secondary: int = 0
    work_item_reads: int | None = None
    references_url: str | None = None
    #: True/False: treat the dataset as pairs / single reads whatever its manifest says
    paired: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: @RG tags recorded in the manifest (as ``persona align -R``)
    read_group: dict[str, str] = field(default_factory=dict)

    def resolved(self, config: "Config") -> "AlignSortRequest":
        if not self.reference:
            raise ConfigError("align-sort needs a reference (-r)", key="reference")
        if (self.order or "coordinate").lower() != "coordinate":
            raise ConfigError("align-sort sorts by coordinate", key="order")
        if self.secondary < 0:
            raise ConfigError(f"secondary must be >= 0, got {self.secondary}", key="secondary")
        r = super().resolved(config)
        a = config.align
        return replace(r, aligner=self.aligner or a.aligner,
                       preset=self.preset or self.options.get("preset") or a.preset,
                       work_item_reads=self.work_item_reads or a.work_item_reads,
                       references_url=self.references_url or a.references_url)

    def plan(self, runtime: "Runtime", request_id: str) -> "AlignSortJob":  # type: ignore[override]
        return AlignSortJob(self, request_id, runtime)


@dataclass
class AlignSortSummary(SortSummary):
    reference: str = ""


class AlignSortJob(SortJob):
    """A sort whose phase 1 aligns its groups in memory (see the module docstring)."""

    kind: ClassVar[str] = "align-sort"
    request: AlignSortRequest

    def __init__(self, request: AlignSortRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        self.paired = AlignJob._check_dataset(self.ds, request.paired)
        opts = AlignerOptions.from_dict({**request.options, "preset": request.preset})
        if request.secondary:
            opts = AlignerOptions(opts.preset, request.secondary, opts.use_names, opts.extra)
        self.opts = opts
        self.reference: LoadedReference | None = None
        self.make_tags = False
        self.align_columns: tuple[str, ...] = (BASE,)

    def input_columns(self) -> list[str]:
        # the old alignment (if any) is replaced, as align replaces it; results stands for the new one
        return [c for c in self.ds.columns if not (is_alignment_column(c) or is_tags_column(c))] + [RESULTS]

    def library_override(self) -> str | None:
        from persona.apps.markdup import library_of

        # align -R gives every record this read group (the tags column is made anew by the aligner)
        return library_of(self.request.read_group) if self.request.read_group else None

    def _check_input(self) -> None:
        for c in (BASE, QUAL):
            if c not in self.columns:
                from persona.errors import DatasetError

                raise DatasetError(f"dataset {self.ds.name!r} cannot be aligned: it has no {c!r} column",
                                   store=self.ds.store.url)
        super()._check_input()

    # -- planning ----------------------------------------------------------------------------
    def begin(self) -> None:
        r = self.request
        assert r.references_url is not None and r.aligner is not None
        self.reference = self.runtime.references.acquire(r.reference, r.references_url, aligner=r.aligner,
                                                         options=self.opts)
        aligner = self.reference.aligner
        self.make_tags = bool(getattr(aligner, "makes_tags", False))
        self.align_columns = ((BASE,) + ((QUAL,) if aligner.uses_quals else ())
                              + ((METADATA,) if self.opts.use_names and METADATA in self.ds.columns else ()))
        super().begin()

    def record_type(self, column: str) -> RecordType:
        t = self.record_types.get(column)
        if t is None:
            t = self.record_types[column] = column_record_type(column)
        return t

    def _choose_run_block(self) -> int:
        from persona.apps.sort import DEFAULT_MERGE_MEMORY, DEFAULT_PREFETCH, MAX_RUN_BLOCK, MIN_RUN_BLOCK

        ref = self.ds.chunks[0]
        size = 0
        for c in self.columns:
            if c in self.ds.columns:
                h = self.ds.read_header(0, c)
                size += 4 * h.num_records + len(self.ds.read_file(0, c)) * 4
        # the alignment columns, not written yet: a proto record, a CIGAR and (minimap2) tags
        per_record = max(16, size // max(1, ref.num_records)) + 96
        k = max(1, len(self.groups))
        budget = int(self.request.merge_memory or DEFAULT_MERGE_MEMORY)
        b = budget // (k * ((self.request.prefetch or DEFAULT_PREFETCH) + 1) * per_record)
        return int(min(MAX_RUN_BLOCK, max(MIN_RUN_BLOCK, b)))

    # -- phase 1: align in memory ------------------------------------------------------------
    def _align_chunk(self, i: int, raw: dict[str, RaggedArray], types: dict[str, RecordType]) -> dict[str, RaggedArray]:
        """The encoded alignment columns of chunk ``i`` (results, secondary<N>, their tags)."""
        assert self.reference is not None and self.request.work_item_reads is not None
        decoded = {}
        for c in self.align_columns:
            decoded[c] = decode_column(c, raw[c], key=self.ds.chunk_key(i, c), record_type=types[c])
        result = self.runtime.executor.align(
            self.reference.aligner, decoded[BASE], decoded.get(QUAL), decoded.get(METADATA), paired=self.paired,
            work_item_reads=self.request.work_item_reads, key=self.ds.chunk_key(i, BASE))
        out: dict[str, RaggedArray] = {}
        for c, v in zip((RESULTS, *(f"secondary{k}" for k in range(len(result.secondary)))),
                        (result.primary, *result.secondary)):
            out[c] = encode_column(c, v)
            if self.make_tags:
                out[tags_column(c)] = v.tags if v.tags is not None else _no_tags(len(v))
        return out

    def _group_loads(self, run: int) -> "dict[str, Future[RaggedArray]]":
        start, stop = self.groups[run]
        carried = [c for c in self.columns if c != RESULTS]
        pool = self.column_pool

        def load(c: str) -> list[tuple[RecordType, RaggedArray]]:
            out = []
            for i in range(start, stop):
                h, rec = self.ds.read_raw(i, c)
                out.append((h.record_type, rec))
            return out

        loads = {c: pool.submit(load, c) for c in carried}
        typed = {c: f.result() for c, f in loads.items()}
        raw = {c: [rec for _, rec in v] for c, v in typed.items()}
        per_chunk = [self._align_chunk(i, {c: raw[c][i - start] for c in self.align_columns},
                                       {c: typed[c][i - start][0] for c in self.align_columns})
                     for i in range(start, stop)]
        names = set().union(*(p.keys() for p in per_chunk))
        extra = max([self.opts.secondary] + [sum(map(is_secondary_column, p)) for p in per_chunk])
        names |= {f"secondary{k}" for k in range(extra)}
        if self.make_tags:
            names |= {f"secondary{k}_tags" for k in range(extra)} | {"tags"}
        out: dict[str, Future[RaggedArray]] = {}
        for c in carried:
            out[c] = _done(raw[c][0] if len(raw[c]) == 1 else RaggedArray.concat(raw[c]))
        for c in sorted(names, key=column_sort_key):
            parts = [p.get(c) if c in p else _absent(self.ds.chunks[start + j].num_records)
                     for j, p in enumerate(per_chunk)]
            out[c] = _done(parts[0] if len(parts) == 1 else RaggedArray.concat(parts))
        return out

    def _columns_known(self) -> None:
        names: set[str] = set()
        for cols in self.run_columns:
            names |= set(cols)
        extra = max([self.opts.secondary] + [int(c[len("secondary"):]) + 1 for c in names
                                             if is_secondary_column(c)])
        names |= {f"secondary{k}" for k in range(extra)}
        if self.make_tags:
            names |= {f"secondary{k}_tags" for k in range(extra)} | {"tags"}
        self.columns = sorted(names, key=column_sort_key)
        for c in self.columns:
            if c not in self.ds.columns or is_alignment_column(c) or is_tags_column(c):
                self.record_types[c] = column_record_type(c)

    # -- end ---------------------------------------------------------------------------------
    def manifest_fields(self) -> dict[str, Any]:
        assert self.reference is not None
        m = self.ds.manifest
        info = self.reference.info
        extra = {k: v for k, v in m.extra.items() if k not in ("coordinate_ranges", "reference_uri")}
        if self.request.read_group:
            extra["read_group"] = dict(self.request.read_group)
        if info.source.startswith("/"):
            extra["reference_uri"] = "file://" + info.source
        align_entry = self.provenance(
            aligner=self.request.aligner, aligner_options=self.opts.to_dict(),
            aligner_version=aligner_version(self.request.aligner or ""),
            reference={"name": info.name, "checksum": getattr(info, "sha256", None) or
                       getattr(info, "fasta_sha256", None)})
        align_entry["app"] = "align"
        return {"reference": self.request.reference, "reference_contigs": info.manifest_contigs(),
                "paired": False if m.paired else m.paired, "extra": {**extra, **self._range_extra()},
                "provenance": [*m.provenance, align_entry]}

    def commit(self, outputs: list[Any]) -> AlignSortSummary:  # type: ignore[override]
        try:
            s = super().commit(outputs)
        finally:
            self._release()
        return AlignSortSummary(**{**s.__dict__, "reference": self.request.reference})

    def abort(self, error: BaseException | None) -> None:
        try:
            super().abort(error)
        finally:
            self._release()

    def _release(self) -> None:
        if self.reference is not None:
            self.runtime.references.release(self.reference)
            self.reference = None


def _done(value: Any) -> "Future[Any]":
    f: Future[Any] = Future()
    f.set_result(value)
    return f


def _absent(n: int) -> RaggedArray:
    """``n`` zero-length records: absent secondary alignments, or no tags."""
    return RaggedArray(np.zeros(n + 1, np.uint64), np.zeros(0, np.uint8), validate=False)


_no_tags = _absent


def align_sort(request: AlignSortRequest, *, runtime: "Runtime | None" = None, progress: Any = None,
               threads: int = 0) -> AlignSortSummary:
    from persona.runtime import run_request

    s = run_request(request, threads=threads, runtime=runtime, progress=progress)
    assert isinstance(s, AlignSortSummary)
    return s
