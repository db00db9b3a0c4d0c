"""The align application (thesis §5.5, Figure 5.5) as a PTF pipeline.

A request (:class:`AlignRequest`, plain data) is planned into an
:class:`AlignJob`; every align request of a process is a batch in the one
long-lived align pipeline of its :class:`~persona.runtime.Runtime`. One feed per
chunk flows through::

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
  extra alignment (every supplementary alignment is kept, secondary ones up to
  ``secondary``), or a zero-length record when it has none (see
  :mod:`persona.agd.columns`). How many there are is known only once every
  chunk is aligned: a chunk that needed fewer gets all-absent files for the
  others at commit.
* With a backend that makes tags (minimap2), ``tags`` and ``secondary<N>_tags``
  hold each record's optional SAM fields (NM, MD, AS, SA, MC, MQ, ...) as BAM
  aux bytes, written in the same transaction.
* The output columns are written in one column transaction
  (:mod:`persona.agd.transaction`): under attempt-unique keys, committed with
  ``reference``, ``reference_contigs`` and a provenance entry in one atomic
  manifest replacement after every chunk file is written. Re-aligning an
  aligned dataset keeps the old ``results`` readable until that commit, so an
  interrupted or failed re-align (Ctrl-C, SIGKILL, a bad chunk) leaves the
  previous alignment intact; the old files go only after the commit.
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
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from persona import counters
from persona.agd import BASE, METADATA, QUAL, RESULTS, Dataset, Manifest
from persona.agd.ragged import RaggedArray
from persona.agd.columns import is_secondary_column, is_tags_column, tags_column
from persona.agd.records import Alignments
from persona.agd.transaction import Transaction
from persona.align.base import AlignerOptions
from persona.align.reference import LoadedReference
from persona.apps.job import DatasetReadJob, Request, StagePlan, Summary, Work
from persona.errors import DatasetError
from persona.ptf import PipelineSpec, StageSpec
from persona.storage import Store

if TYPE_CHECKING:
    from persona.config import Config
    from persona.runtime import Runtime

#: stage replicas unless told otherwise: align replicas only wait on the executor
DEFAULT_REPLICAS = {"read": 1, "decode": 1, "align": 2, "encode": 1, "write": 1}


def _location(location: str | os.PathLike[str] | Store) -> str:
    return location.url if isinstance(location, Store) else os.fspath(location)


@dataclass
class AlignRequest(Request):
    """Align the reads of ``dataset`` against the registered ``reference``. ``None`` fields take
    the configuration's ``align.*`` values."""

    kind: ClassVar[str] = "align"

    dataset: str
    reference: str
    name: str | None = None
    aligner: str | None = None
    preset: str | None = None
    secondary: int = 0
    work_item_reads: int | None = None
    references_url: str | None = None
    overwrite: bool = True
    #: True/False: treat the dataset as pairs / single reads whatever its manifest says
    paired: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    capacity: int | None = None
    #: @RG tags (``-R``) recorded in the manifest and written on export
    read_group: dict[str, str] = field(default_factory=dict)

    def resolved(self, config: "Config") -> "AlignRequest":
        a = config.align
        r = replace(self,
                    aligner=self.aligner or a.aligner,
                    preset=self.preset or self.options.get("preset") or a.preset,
                    work_item_reads=self.work_item_reads or a.work_item_reads,
                    references_url=self.references_url or a.references_url,
                    capacity=self.capacity or config.ptf.default_capacity)
        r.validate()
        return r

    def validate(self) -> None:
        if self.secondary < 0:
            raise DatasetError(f"secondary must be >= 0, got {self.secondary}")
        if self.work_item_reads is not None and self.work_item_reads <= 0:
            raise DatasetError(f"work_item_reads must be positive, got {self.work_item_reads}")
        if self.capacity is not None and self.capacity <= 0:
            raise DatasetError(f"capacity must be positive, got {self.capacity}")
        unknown = set(self.replicas) - set(DEFAULT_REPLICAS)
        if unknown:
            raise DatasetError(f"unknown align stage(s) {sorted(unknown)}; stages: {list(DEFAULT_REPLICAS)}")
        for k, v in self.replicas.items():
            if int(v) < 1:
                raise DatasetError(f"stage {k!r} needs at least one replica, got {v}")

    def plan(self, runtime: "Runtime", request_id: str) -> "AlignJob":
        return AlignJob(self, request_id, runtime)


@dataclass
class AlignSummary(Summary):
    dataset: str = ""
    name: str = ""
    reference: str = ""
    records: int = 0
    chunks: int = 0
    columns: list[str] = field(default_factory=list)
    manifest: Manifest | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in super().to_dict().items() if k != "manifest"}
        return d


class AlignJob(DatasetReadJob):
    """One align request: a column transaction on its dataset, fed chunk by chunk."""

    kind: ClassVar[str] = "align"
    stages = tuple(StagePlan(s, n) for s, n in DEFAULT_REPLICAS.items())

    request: AlignRequest

    def __init__(self, request: AlignRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        r = request
        self.ds = Dataset.open(r.dataset, r.name)
        self.paired = self._check_dataset(self.ds, r.paired)
        if RESULTS in self.ds.columns and not r.overwrite:
            raise DatasetError(f"dataset {self.ds.name!r} is already aligned (against {self.ds.manifest.reference!r})")
        opts = AlignerOptions.from_dict({**r.options, "preset": r.preset})
        if r.secondary:
            opts = AlignerOptions(opts.preset, r.secondary, opts.use_names, opts.extra)
        self.opts = opts
        self.out_columns: tuple[str, ...] = (RESULTS, *(f"secondary{i}" for i in range(opts.secondary)))
        self.make_tags = False
        #: chunk -> the columns written for it (extra columns vary by chunk; commit fills the gaps)
        self._written: dict[int, tuple[str, ...]] = {}
        self.reference: LoadedReference | None = None
        self.txn: Transaction | None = None
        self.read_columns: tuple[str, ...] = ()
        self.kind_key = (self.kind, tuple(sorted(r.replicas.items())), r.capacity)

    @staticmethod
    def _check_dataset(ds: Dataset, paired: bool | None) -> bool:
        missing = [c for c in (BASE, QUAL) if c not in ds.columns]
        if missing:
            raise DatasetError(f"dataset {ds.name!r} cannot be aligned: it has no "
                               f"{' or '.join(map(repr, missing))} column (it has {ds.columns})", store=ds.store.url)
        explicit = paired is not None
        paired = ds.paired if paired is None else paired
        if not paired and not explicit and RESULTS in ds.columns and ds.chunks:
            # An imported paired SAM/BAM whose mates are not next to each other (a coordinate-sorted
            # file): aligning it read by read would silently lose the pairing.
            flags = ds.read_column(0, RESULTS).fields["flag"]
            if len(flags) and float(((flags & 0x1) != 0).mean()) > 0.5:
                if ds.manifest.sort == "queryname":
                    raise DatasetError(
                        f"dataset {ds.name!r} holds paired reads, but not every read has its mate next to it "
                        "(some mates are missing, as in a region extract): pass --single to align the reads "
                        "one by one", store=ds.store.url)
                raise DatasetError(
                    f"dataset {ds.name!r} holds paired reads whose mates are not next to each other (e.g. a "
                    "coordinate-sorted BAM): sort it by read name first (persona sort DS -o DS2 --order queryname, or "
                    "import the BAM with --collate) and align that, or pass --single to align the reads one by one",
                    store=ds.store.url)
        if paired:
            for ref in ds.chunks:
                if ref.first % 2 or ref.num_records % 2:
                    raise DatasetError(f"paired dataset {ds.name!r}: chunk [{ref.first}, {ref.last}) splits a pair",
                                       key=ref.path)
        return bool(paired)

    # -- planning --------------------------------------------------------------------------
    def begin(self) -> None:
        r = self.request
        assert r.references_url is not None and r.aligner is not None
        self.reference = self.runtime.references.acquire(r.reference, r.references_url, aligner=r.aligner,
                                                         options=self.opts)
        # qualities are read (and decoded) only for a backend that uses them; minimap2 does not
        self.read_columns = ((BASE,) + ((QUAL,) if self.reference.aligner.uses_quals else ())
                             + ((METADATA,) if self.opts.use_names and METADATA in self.ds.columns else ()))
        self.make_tags = bool(getattr(self.reference.aligner, "makes_tags", False))
        self.txn = self.ds.begin_columns(app="align", attempt=self.attempt, request_id=self.request_id)
        self.ds = Dataset(self.ds.store, self.txn.base or self.ds.manifest)  # what is committed now
        self._check_dataset(self.ds, self.request.paired)

    # -- stages ----------------------------------------------------------------------------
    def stage_align(self, w: Work) -> Work:
        cols: dict[str, RaggedArray] = w.data
        assert self.reference is not None and self.request.work_item_reads is not None
        counters.add("bases", ("align", "align"), int(cols[BASE].offsets[-1]) if len(cols[BASE]) else 0)
        w.data = self.runtime.executor.align(
            self.reference.aligner, cols[BASE], cols.get(QUAL), cols.get(METADATA), paired=self.paired,
            work_item_reads=self.request.work_item_reads, key=self.ds.chunk_key(w.desc.chunk, BASE))
        return w

    def _column_values(self, primary: Alignments, extra: list[Alignments]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c, v in zip((RESULTS, *(f"secondary{i}" for i in range(len(extra)))), (primary, *extra)):
            out[c] = v
            if self.make_tags:
                out[tags_column(c)] = v.tags if v.tags is not None else _no_tags(len(v))
        return out

    def stage_encode(self, w: Work) -> Work:
        values = self._column_values(w.data.primary, w.data.secondary)
        w.data = {c: self.ds.encode_column_file(w.desc.chunk, c, v) for c, v in values.items()}
        return w

    def stage_write(self, w: Work) -> Work:
        assert self.txn is not None
        for c, data in w.data.items():
            self.txn.put_column_file(w.desc.chunk, c, data)
        self._written[w.desc.chunk] = tuple(w.data)
        w.data = None
        n = self.ds.chunks[w.desc.chunk].num_records
        w.n = n
        self.advance(n)
        return w

    # -- ending ----------------------------------------------------------------------------
    def commit(self, outputs: list[Any]) -> AlignSummary:
        assert self.txn is not None and self.reference is not None
        self.out_columns = self._fill_extra_columns()
        stale = [c for c in self.ds.columns
                 if (is_secondary_column(c) or is_tags_column(c)) and c not in self.out_columns]
        info = self.reference.info
        extra: dict[str, Any] = {"read_group": dict(self.request.read_group)} if self.request.read_group else {}
        source = self.reference.info.source
        if source.startswith("/"):  # @SQ UR on export: the FASTA the reference was added from
            extra["reference_uri"] = "file://" + source
        manifest = self.txn.commit(
            list(self.out_columns), drop_columns=stale, reference=self.request.reference, extra=extra,
            reference_contigs=info.manifest_contigs(),
            provenance=self.provenance(
                aligner=self.request.aligner, aligner_options=self.opts.to_dict(),
                aligner_version=aligner_version(self.request.aligner or ""),
                reference={"name": info.name, "checksum": getattr(info, "sha256", None) or
                           getattr(info, "fasta_sha256", None)},
                inputs=[{"dataset": self.ds.store.url, "name": self.ds.name,
                         "generation": self.ds.manifest.generation}]))
        self._release()
        return AlignSummary(**self.summary_base(), dataset=self.ds.store.url, name=manifest.name,
                            reference=self.request.reference, records=manifest.num_records,
                            chunks=len(manifest.records), columns=list(self.out_columns), manifest=manifest)

    def _fill_extra_columns(self) -> tuple[str, ...]:
        """The output columns: as many ``secondary<N>`` as the chunk needing most had (at least
        ``secondary``); chunks written with fewer get all-absent files for the others."""
        assert self.txn is not None
        n_extra = max([self.opts.secondary] + [sum(map(is_secondary_column, cols)) for cols in self._written.values()])
        want = self._column_values(Alignments.empty(0), [Alignments.absent(0)] * n_extra)
        for chunk in range(len(self.ds.chunks)):
            have = set(self._written.get(chunk, ()))
            missing = [c for c in want if c not in have]
            if not missing:
                continue
            n = self.ds.chunks[chunk].num_records
            for c in missing:
                value = _no_tags(n) if is_tags_column(c) else Alignments.absent(n)
                self.txn.put_column_file(chunk, c, self.ds.encode_column_file(chunk, c, value))
        return tuple(want)

    def abort(self, error: BaseException | None) -> None:
        if self.txn is not None and self.txn.state in ("open", "new"):
            self.txn.abort()
        self._release()

    def _release(self) -> None:
        if self.reference is not None:
            self.runtime.references.release(self.reference)
            self.reference = None


def _no_tags(n: int) -> RaggedArray:
    """``n`` zero-length tag records."""
    import numpy as np

    return RaggedArray(np.zeros(n + 1, np.uint64), np.zeros(0, np.uint8), validate=False)


def aligner_version(aligner: str) -> str | None:
    """The version of an aligner backend's library (for provenance and ``@PG VN``)."""
    try:
        if aligner == "minimap2":
            from persona._native import mm2

            return str(mm2.MINIMAP2_VERSION)
        if aligner == "mappy":
            from importlib.metadata import version

            return f"mappy {version('mappy')}"
        if aligner == "minibwa":
            from importlib.metadata import version

            return f"minibwa {version('minibwa')}"
    except Exception:  # noqa: BLE001 - provenance is best effort
        return None
    return None


def align_pipeline_spec(replicas: Mapping[str, int] | None = None, *, capacity: int = 2) -> PipelineSpec:
    """The align pipeline of Figure 5.5 (as a Runtime builds it); ``replicas`` overrides
    :data:`DEFAULT_REPLICAS` per stage."""
    from persona.apps.job import dispatch

    reps = {**DEFAULT_REPLICAS, **(replicas or {})}
    unknown = set(reps) - set(DEFAULT_REPLICAS)
    if unknown:
        raise DatasetError(f"unknown align stage(s) {sorted(unknown)}; stages: {list(DEFAULT_REPLICAS)}")
    return PipelineSpec.chain("align", [StageSpec(s, dispatch(s), replicas=int(reps[s])) for s in DEFAULT_REPLICAS],
                              capacity=capacity, credits=None)


def align_dataset(location: str | os.PathLike[str] | Store, reference: str, *, aligner: str | None = None,
                  threads: int = 0, work_item_reads: int | None = None, secondary: int = 0,
                  options: AlignerOptions | Mapping[str, Any] | None = None,
                  references_url: str | os.PathLike[str] | None = None,
                  name: str | None = None, replicas: Mapping[str, int] | None = None,
                  overwrite: bool = True, paired: bool | None = None,
                  progress: Callable[[int], None] | None = None, capacity: int | None = None,
                  runtime: "Runtime | None" = None) -> Manifest:
    """Align the reads of the dataset at ``location`` against ``reference``; returns the new manifest.

    A convenience over :class:`AlignRequest` on a :class:`~persona.runtime.Runtime`:
    ``runtime`` if given, else a runtime of ``threads`` aligner threads (0: the
    process's shared runtime, sized to its CPU budget). ``None`` arguments take
    the configured defaults. ``capacity`` bounds each gate of the pipeline (chunks
    in flight between two stages, hence memory). ``progress(n)`` is called with
    each chunk's record count once its columns are written (from a stage thread).
    Raises :class:`DatasetError` for unusable datasets,
    :class:`~persona.errors.ReferenceNotFoundError` for unknown references and
    :class:`~persona.errors.StageError` naming the failing chunk and stage.
    """
    from persona.runtime import run_request

    opts = options.to_dict() if isinstance(options, AlignerOptions) else dict(options or {})
    req = AlignRequest(dataset=_location(location), reference=reference, name=name, aligner=aligner,
                       preset=opts.pop("preset", None), secondary=secondary or int(opts.pop("secondary", 0) or 0),
                       work_item_reads=work_item_reads,
                       references_url=None if references_url is None else _location(references_url),
                       overwrite=overwrite, paired=paired, options=opts, replicas=dict(replicas or {}),
                       capacity=capacity)
    summary = run_request(req, threads=threads, runtime=runtime, progress=progress)
    assert isinstance(summary, AlignSummary) and summary.manifest is not None
    return summary.manifest
