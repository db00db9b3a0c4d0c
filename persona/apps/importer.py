"""Import as jobs: FASTQ(.gz) (single, paired, interleaved, or standard input) and SAM/BAM -> a new dataset.

Both are *streaming* jobs: the number of chunks is known only when the input
ends, so the request's thread reads the input and puts one feed per chunk into
the runtime's ``import`` pipeline while earlier chunks are already being
converted and written (PTF streaming ingress; the arity is declared at the end)::

    source (request thread)       ->  check         ->  encode                ->  write
    decompress, cut on record         mate names        gather each column,       store the chunk
    boundaries, scan (validate) the   and counts        pack 3-bit bases,         files (transaction)
    records; the mate file alongside                    compress

* The columns of a chunk are gathered and compressed in parallel on the
  runtime's compute pool (zstd, deflate and the gather kernels release the GIL),
  and the mate file is read and scanned alongside the first (the executor
  pattern: stage threads hand out work items and wait).
* The source never runs more than a window of chunks ahead of the writer
  (``import.queue_depth`` + threads + 1 chunks), so memory is bounded whatever
  the input size.
* The dataset is written in one transaction (:mod:`persona.agd.transaction`):
  claimed first (a second import of the same name fails at once), chunk files
  under attempt-unique keys, the manifest (with a provenance entry) written last.
  A failure or interrupt removes what this attempt wrote; an existing dataset of
  the same name is replaced only with ``overwrite`` and only at commit.
* Errors name the file and line (FASTQ) or record (SAM/BAM); the first error in
  file order is the one reported.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import zstandard

from persona import counters
from persona.agd import READ_COLUMNS, CompressionType, Manifest, encode_column_chunk
from persona.agd.ragged import RaggedArray
from persona.agd.transaction import Transaction
from persona.apps.job import FeedDescriptor, Job, Request, StagePlan, Summary, Work, file_fingerprint
from persona.errors import ConfigError, DatasetError, InputFormatError
from persona.storage import Store, open_store

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from persona.config import Config
    from persona.runtime import Runtime

FASTQ_SUFFIXES = (".fastq", ".fq", ".fastq.gz", ".fq.gz", ".fastq.bgz", ".fq.bgz")
SAM_SUFFIXES = (".sam", ".bam", ".sam.gz")
FORMATS = ("fastq", "sam", "bam")


def detect_format(inputs: list[str], fmt: str | None) -> str:
    """``fastq`` or ``sam`` (SAM and BAM are read alike) from ``fmt`` or the first input's name/content."""
    if fmt is not None:
        f = fmt.lower()
        if f not in FORMATS:
            raise ConfigError(f"input format must be one of {', '.join(FORMATS)}, got {fmt!r}", key="format")
        return "sam" if f in ("sam", "bam") else "fastq"
    first = inputs[0]
    low = first.lower()
    if low.endswith(SAM_SUFFIXES):
        return "sam"
    if low.endswith(FASTQ_SUFFIXES):
        return "fastq"
    if first == "-":
        raise ConfigError("reading standard input needs a format: -f fastq, sam or bam", key="format")
    # By content: BAM/BGZF magic, '@' of FASTQ, '@HD'/'@SQ' or a SAM line
    try:
        with open(first, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputFormatError(f"cannot read {first}: {e.strerror or e}", file=first) from None
    if head[:2] == b"\x1f\x8b":
        import gzip

        try:
            with gzip.open(first, "rb") as g:
                head = g.read(4)
        except OSError:
            head = b""
    if head[:4] == b"BAM\x01" or head[:3] in (b"@HD", b"@SQ", b"@RG", b"@PG", b"@CO"):
        return "sam"
    if head[:1] == b"@":
        return "fastq"
    raise ConfigError(f"cannot tell the format of {first}: expected FASTQ(.gz), SAM or BAM "
                      f"({', '.join(FASTQ_SUFFIXES + SAM_SUFFIXES)}); pass -f", key="format")


def _split_output(output: str, name: str | None) -> tuple[str, str | None]:
    return output, name


@dataclass
class ImportRequest(Request):
    """Import ``inputs`` (R1 [R2] FASTQ, an interleaved FASTQ, one SAM/BAM; ``-`` is standard input)
    into a new dataset ``name`` at ``output`` (a directory or store URL). ``None``: configured defaults."""

    kind: ClassVar[str] = "import"

    inputs: tuple[str, ...]
    output: str
    name: str | None = None
    format: str | None = None
    chunk_size: int | None = None
    compression: str | None = None
    level: int | None = None
    #: FASTQ: one input holding both mates, alternating (as ``bwa mem -p`` reads)
    interleaved: bool = False
    overwrite: bool = False
    #: refuse to add a dataset to a location that already holds another one
    exclusive_location: bool = False
    read_group: dict[str, str] = field(default_factory=dict)
    threads: int | None = None
    queue_depth: int | None = None
    #: SAM/BAM of pairs whose mates are not adjacent: sort the dataset by read name so that mates sit
    #: side by side (align then aligns them as pairs). None: when the header says SO:coordinate and
    #: the records are paired (not for standard input, which is read once)
    collate: bool | None = None

    def resolved(self, config: "Config") -> "ImportRequest":
        if not self.inputs:
            raise ConfigError("import needs at least one input", key="inputs")
        inputs = tuple(os.fspath(i) for i in self.inputs)
        fmt = detect_format(list(inputs), self.format)
        compression = (self.compression or config.agd.compression).lower()
        try:
            CompressionType.parse(compression)
        except Exception:  # noqa: BLE001
            raise ConfigError(f"unknown compression {compression!r} (zstd, gzip, none)", key="compression") from None
        chunk_size = self.chunk_size if self.chunk_size is not None else config.agd.chunk_size
        if chunk_size <= 0:
            raise ConfigError(f"chunk size must be positive, got {chunk_size}", key="chunk_size")
        level = self.level
        if level is None:
            level = {"zstd": config.agd.zstd_level, "gzip": config.agd.gzip_level}.get(compression)
        threads = self.threads if self.threads is not None else config.import_.threads
        if threads < 0:
            raise ConfigError(f"threads must be >= 0, got {threads}", key="threads")
        depth = self.queue_depth if self.queue_depth is not None else config.import_.queue_depth
        if depth <= 0:
            raise ConfigError(f"queue depth must be positive, got {depth}", key="queue_depth")
        if fmt == "sam" and len(inputs) != 1:
            raise ConfigError("SAM/BAM import takes exactly one input file", key="inputs")
        if fmt == "fastq" and len(inputs) > 2:
            raise ConfigError("FASTQ import takes one file (single-end or --interleaved) or two (paired)",
                              key="inputs")
        if self.interleaved and len(inputs) != 1:
            raise ConfigError("--interleaved takes one FASTQ input", key="inputs")
        for p in inputs:
            if p != "-" and not os.path.isfile(p) and not Path(p).is_fifo():
                what = "FASTQ" if fmt == "fastq" else "SAM/BAM"
                raise FileNotFoundError(f"{what} file not found: {p}")
        if inputs.count("-") > 1:
            raise ConfigError("standard input can be read only once", key="inputs")
        return replace(self, inputs=inputs, format=fmt, compression=compression, chunk_size=chunk_size,
                       level=level, threads=threads, queue_depth=depth, name=self.name or default_name(inputs, fmt))

    def plan(self, runtime: "Runtime", request_id: str) -> "ImportJob":
        return (ImportSamJob if self.format == "sam" else ImportFastqJob)(self, request_id, runtime)


def default_name(inputs: tuple[str, ...], fmt: str) -> str:
    if inputs[0] == "-":
        return "stdin"
    if fmt == "sam":
        from persona.apps.import_sam import dataset_name

        return dataset_name(Path(inputs[0]))
    from persona.formats.fastq import default_name as fq_name

    return fq_name(inputs[0])


@dataclass
class ImportSummary(Summary):
    """What an import stored (and, for SAM/BAM, what it left out)."""

    name: str = ""
    location: str = ""
    records: int = 0
    chunks: int = 0
    columns: tuple[str, ...] = ()
    paired: bool = False
    sort: str = ""
    skipped_secondary: int = 0
    skipped_supplementary: int = 0
    empty_sequence: int = 0
    missing_quality: int = 0
    bases_replaced: int = 0
    #: a coordinate-sorted SAM/BAM of pairs was sorted by read name (mates side by side)
    collated: bool = False
    manifest: Manifest | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if k != "manifest"}


class ImportJob(Job):
    """What both imports share: the transaction, the column stages, the write stage."""

    kind: ClassVar[str] = "import"
    streaming: ClassVar[bool] = True
    stages = (StagePlan("check", 1), StagePlan("encode", 1), StagePlan("write", 1))
    capacity: ClassVar[int] = 2
    request: ImportRequest
    columns: tuple[str, ...] = READ_COLUMNS

    def __init__(self, request: ImportRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        self.store: Store = runtime.store(request.output) if "://" in request.output else open_store(request.output)
        assert request.name is not None
        self.name = request.name
        if "/" in self.name or not self.name:
            raise DatasetError(f"bad dataset name {self.name!r}: non-empty, no '/'")
        if request.exclusive_location:
            from persona.agd.dataset import find_manifests

            others = [n for n in find_manifests(self.store) if n != self.name]
            if others:
                raise DatasetError(f"{request.output} already holds dataset(s) {', '.join(others)}; importing "
                                   f"{self.name!r} there would make the location ambiguous (choose another "
                                   "location, or allow several datasets per location)", store=self.store.url)
        self.txn: Transaction | None = None
        self.window = threading.BoundedSemaphore((request.queue_depth or 2) + runtime.threads + 1)
        self.records = 0
        self.chunks = 0
        self.paired = False
        self.fields: dict[str, Any] = {}

    def begin(self) -> None:
        self.txn = Transaction(self.store, self.name, app="import", new=True, overwrite=self.request.overwrite,
                               attempt=self.attempt, request_id=self.request_id)
        self.txn.begin()

    def descriptor(self, index: int) -> FeedDescriptor:
        return FeedDescriptor(self.request_id, self.store.url, self.name, index, self.columns)

    def level_of(self, column: str) -> Any:
        from persona.apps.import_fastq import column_level

        return column_level(self.request.level, column, self.request.compression or "zstd")

    def _encode(self, w: Work, column: str, value: Any) -> None:
        w.out_files[column] = self._encoded(w, column, value)

    def _encoded(self, w: Work, column: str, value: Any) -> bytes:
        if column == "base" and isinstance(value, RaggedArray) and len(value):
            counters.add("bases", ("import", "encode"), int(value.offsets[-1]))
        return encode_column_chunk(column, value, first_ordinal=w.first, name=self.name,
                                   compression=self.request.compression or "zstd", level=self.level_of(column))

    def encode_parallel(self, w: Work, values: dict[str, Callable[[], Any]]) -> None:
        """Gather (``values[c]()``) and compress every column of the chunk, the columns in parallel on
        the runtime's pool (zstd, deflate and the gather kernels release the GIL); the biggest here."""
        cols = list(values)
        futures = {c: self.runtime.compute.submit(lambda c=c: self._encoded(w, c, values[c]())) for c in cols[1:]}
        try:
            w.out_files[cols[0]] = self._encoded(w, cols[0], values[cols[0]]())
        finally:
            for c, f in futures.items():
                exc = f.exception()
                if exc is None:
                    w.out_files[c] = f.result()
        for f in futures.values():
            f.result()  # re-raise the first task's error

    def stage_write(self, w: Work) -> Work:
        assert self.txn is not None
        try:
            if w.n:
                self.txn.write_encoded(w.first, w.n, w.out_files)
            w.out = w.n
            w.out_files = {}
            self.advance(w.n)
        finally:
            self.window.release()
        return w

    def produce_into(self, put: Callable[[Work], None], items: Iterator[Work]) -> None:
        """Put the source's works, never more than the window ahead of the writer."""
        for w in items:
            while not self.window.acquire(timeout=0.5):
                if self.cancelled():
                    return
            put(w)

    def cancelled(self) -> bool:
        h = self.runtime.handle_of(self.request_id)
        return h is not None and (h.cancelled or (h._batch is not None and h._batch.done()))

    def commit(self, outputs: list[Any]) -> ImportSummary:
        assert self.txn is not None
        self.records = sum(outputs)
        entry = self.provenance(inputs=[file_fingerprint(p) if p != "-" else {"path": "-"}
                                        for p in self.request.inputs])
        manifest = self.txn.commit(list(self.columns), provenance=[*self.earlier_provenance(), entry],
                                   **self.fields)
        return ImportSummary(**self.summary_base(), name=self.name, location=self.store.url,
                             records=manifest.num_records, chunks=len(manifest.records),
                             columns=tuple(manifest.columns), paired=bool(manifest.paired),
                             sort=manifest.sort or "", manifest=manifest, **self.extra_summary())

    def extra_summary(self) -> dict[str, Any]:
        return {}

    def earlier_provenance(self) -> list[dict[str, Any]]:
        """Provenance that precedes this import (an imported BAM's @PG chain)."""
        return []

    def abort(self, error: BaseException | None) -> None:
        if self.txn is not None and self.txn.state in ("open", "new"):
            self.txn.abort()


class ImportWork(Work):
    """An import feed: the chunk's first ordinal, record count and its column files so far."""

    __slots__ = ("first", "out_files", "text", "positions")

    def __init__(self, desc: FeedDescriptor, first: int) -> None:
        super().__init__(desc)
        self.first = first
        self.out_files: dict[str, bytes] = {}
        self.text: tuple[Any, ...] = ()
        self.positions: tuple[Any, ...] = ()


class ImportFastqJob(ImportJob):
    """FASTQ: the source cuts and scans; the stages check mates and gather + compress each column."""

    def __init__(self, request: ImportRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        r = request
        self.sources = tuple("<stdin>" if p == "-" else p for p in r.inputs)
        self.paired = len(r.inputs) == 2 or r.interleaved
        self.fields = {"sort": "queryname", "paired": True if self.paired else None}
        if r.read_group:
            self.fields["extra"] = {"read_group": dict(r.read_group)}

    def produce(self, put: Callable[[Work], None]) -> None:
        self.produce_into(put, self._works())

    def _works(self) -> Iterator[Work]:
        from persona.formats.fastq import iter_text_chunks, scan_chunk

        r = self.request
        assert r.chunk_size is not None
        size = r.chunk_size * (2 if r.interleaved else 1)
        iters = [iter_text_chunks(_input(p), size) for p in r.inputs]
        per_chunk = r.chunk_size * (2 if self.paired else 1)
        index = 0
        def read(k: int) -> tuple[Any, Any]:
            chunk = next(iters[k])
            return chunk, scan_chunk(chunk, self.sources[k])

        try:
            while True:
                if len(iters) == 2:  # the mate file is read and scanned alongside, on the runtime's pool
                    mate = self.runtime.compute.submit(read, 1)
                    try:
                        first = read(0)
                    finally:
                        mate.exception()  # wait for it either way (its generator is ours); R1's error first
                    pairs = [first, mate.result()]
                else:
                    pairs = [read(0)]
                chunks = [c for c, _ in pairs]
                positions = tuple(p for _, p in pairs)
                w = ImportWork(self.descriptor(index), index * per_chunk)
                w.text, w.positions = tuple(chunks), positions
                w.n = sum(len(p) for p in positions)
                if w.n:
                    yield w
                if any(c.final for c in chunks):
                    return  # the other file may go on: the check stage reports that
                index += 1
        finally:
            for it in iters:
                it.close()  # type: ignore[attr-defined]

    def stage_check(self, w: ImportWork) -> ImportWork:  # type: ignore[override]
        from persona.formats.fastq import check_pair, check_interleaved

        r = self.request
        assert r.chunk_size is not None
        if len(w.text) == 2:
            check_pair(w.text[0], w.positions[0], w.text[1], w.positions[1], self.sources[0], self.sources[1],
                       w.desc.chunk * r.chunk_size)
        elif r.interleaved:
            check_interleaved(w.text[0], w.positions[0], self.sources[0], w.desc.chunk * r.chunk_size)
        return w

    def _gather(self, w: ImportWork, column: str) -> Any:
        from persona.formats.fastq import gather_field

        if len(w.text) == 2:
            return gather_field(column, w.text[0], w.positions[0], w.text[1], w.positions[1])
        return gather_field(column, w.text[0], w.positions[0])

    def stage_encode(self, w: ImportWork) -> ImportWork:  # type: ignore[override]
        if w.n:
            self.encode_parallel(w, {c: (lambda c=c: self._gather(w, c)) for c in self.columns})
        w.text = w.positions = ()
        return w


def _input(path: str) -> Any:
    """A path, or standard input's binary stream for ``-``."""
    if path == "-":
        import sys

        return sys.stdin.buffer
    return path


class ImportSamJob(ImportJob):
    """SAM/BAM through pysam: the source parses records into chunks; stages compress the columns."""

    def __init__(self, request: ImportRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        from persona.apps.import_sam import SamSource

        self.source = SamSource(request.inputs[0], chunk_size=request.chunk_size or 100_000)
        self.columns = tuple(self.source.columns)
        self.final_name = self.name
        self.collate = request.collate
        if self.collate is None:
            self.collate = self.source.sort_order == "coordinate" and self.source.peek_paired()
        if self.collate:
            # records go to a staging dataset first; commit sorts them by name into the dataset
            from persona.agd.transaction import read_manifest

            if not request.overwrite and read_manifest(self.store, self.final_name) is not None:
                raise DatasetError(f"dataset {self.final_name!r} already exists (pass overwrite to replace it)",
                                   store=self.store.url)
            self.name = f"{self.final_name}.collate-{self.attempt[:8]}"
            from persona.apps.pipeline import staging_owner

            # held until the staging dataset is removed: `persona gc` leaves it alone meanwhile
            self.staging_owner = staging_owner(self.store, self.name)
            self.staging_owner.acquire()

    def begin(self) -> None:
        self.source.open()
        self.columns = tuple(self.source.columns)  # standard input: known once the header is read
        try:
            super().begin()
        except BaseException:
            self.source.close()
            raise

    def produce(self, put: Callable[[Work], None]) -> None:
        try:
            self.produce_into(put, self._works())
        finally:
            self.source.close()

    def _works(self) -> Iterator[Work]:
        for index, (first, values) in enumerate(self.source.chunks()):
            w = ImportWork(self.descriptor(index), first)
            w.data = values
            w.n = len(values["metadata"])
            yield w

    def stage_check(self, w: ImportWork) -> ImportWork:  # type: ignore[override]
        return w

    def stage_encode(self, w: ImportWork) -> ImportWork:  # type: ignore[override]
        data = w.data
        self.encode_parallel(w, {c: (lambda c=c: data[c]) for c in data})
        w.data = None
        return w

    def commit(self, outputs: list[Any]) -> ImportSummary:
        self.fields = self.source.manifest_fields()
        if self.request.read_group:  # -R overrides the input's read group
            extra = dict(self.fields.get("extra") or {})
            extra["read_group"] = dict(self.request.read_group)
            self.fields["extra"] = extra
        summary = super().commit(outputs)
        if not self.collate:
            return summary
        return self._collate(summary)

    def _collate(self, staged: ImportSummary) -> ImportSummary:
        """Sort the staging dataset by read name into the dataset, then remove the staging one."""
        from persona.agd import Dataset
        from persona.apps.copy import remove_dataset
        from persona.apps.sort import SortRequest

        try:
            self.runtime.run(SortRequest(dataset=self.request.output, input_name=self.name, name=self.final_name,
                                         order="queryname", overwrite=self.request.overwrite,
                                         compression=self.request.compression, level=self.request.level))
        finally:
            try:
                remove_dataset(self.store, self.name)
            except Exception as e:  # noqa: BLE001 - the import itself succeeded or failed already
                log.warning("could not remove the staging dataset %s (persona gc will): %s", self.name, e)
            self._release_owner()
        ds = Dataset.open(self.store, self.final_name)
        m = ds.manifest
        return replace(staged, name=self.final_name, records=m.num_records, chunks=len(m.records),
                       columns=tuple(m.columns), paired=bool(ds.paired), sort=m.sort or "", manifest=m,
                       collated=True)

    def abort(self, error: BaseException | None) -> None:
        try:
            super().abort(error)
            if self.collate and self.txn is not None and self.txn.state not in ("open", "new"):
                from persona.apps.copy import remove_dataset

                with contextlib.suppress(Exception):
                    remove_dataset(self.store, self.name)
        finally:
            self._release_owner()

    def _release_owner(self) -> None:
        owner = getattr(self, "staging_owner", None)
        if owner is not None and owner.held:
            owner.release()
            with contextlib.suppress(Exception):
                self.store.delete(owner.key)

    def earlier_provenance(self) -> list[dict[str, Any]]:
        pgs = self.source.imported_programs
        return [{"app": "imported", "imported_pg": pgs, "source": self.request.inputs[0]}] if pgs else []

    def extra_summary(self) -> dict[str, Any]:
        c = self.source.counts
        return {"skipped_secondary": c["secondary"], "skipped_supplementary": c["supplementary"],
                "empty_sequence": c["empty"], "missing_quality": c["noqual"], "bases_replaced": c["replaced"]}


def import_files(request: ImportRequest, *, runtime: "Runtime | None" = None, progress: Any = None,
                 threads: int = 0) -> ImportSummary:
    from persona.runtime import run_request

    summary = run_request(request, threads=threads, runtime=runtime, progress=progress)
    assert isinstance(summary, ImportSummary)
    return summary


_ = (zstandard,)
