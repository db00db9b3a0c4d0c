"""The app contract: requests, jobs, feed descriptors and summaries (ARCHITECTURE.md, "Jobs and the Runtime").

Every application is

* a **request**: a dataclass of plain, serialisable data (what a gRPC message
  carries; :meth:`Request.to_dict` / :func:`request_from_dict`), with ``None``
  meaning "the configured default";
* a **planner** (:meth:`Request.plan`) that resolves locations, formats and
  config defaults (:meth:`Request.resolved`) and turns the request into a
  :class:`Job`;
* the **job**: the pipeline kind it runs in (one long-lived pipeline per kind
  per :class:`~persona.runtime.Runtime`, each request a batch in it), its feeds
  as plain :class:`FeedDescriptor` s (request id, dataset location, chunk index,
  columns: never live objects, so a partition can go to another machine),
  ``commit()``, ``abort()`` and a typed summary.

The pipeline of a kind is a chain of named stages (:attr:`Job.stages`). A stage
is a plain function over one :class:`Work` (a descriptor plus the buffers the
stages fill in); it finds the job of its request in the process's job table,
so one pipeline serves every request of its kind at once.
"""
from __future__ import annotations

import dataclasses
import json
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from persona.errors import PersonaError

if TYPE_CHECKING:
    from persona.config import Config
    from persona.runtime import Runtime

Progress = Callable[[int], None]


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class FeedDescriptor:
    """What one feed is about, as plain data: enough for any machine to do its part."""

    request_id: str
    location: str
    name: str
    chunk: int
    columns: tuple[str, ...] = ()


class Work:
    """The payload of one feed: its descriptor plus the buffers its stages fill in."""

    __slots__ = ("desc", "data", "out", "n")

    def __init__(self, desc: FeedDescriptor, data: Any = None) -> None:
        self.desc = desc
        self.data: Any = data  # stage to stage: raw bytes, decoded columns, results, file bytes
        self.out: Any = None  # what the feed leaves at the egress (small: counts, checksums)
        self.n = 0  # records this feed covers (progress)

    @property
    def job(self) -> "Job":
        return job_of(self.desc.request_id)


# -- the job table -----------------------------------------------------------------------
_jobs: dict[str, "Job"] = {}
_jobs_lock = threading.Lock()


def register_job(job: "Job") -> None:
    with _jobs_lock:
        if job.request_id in _jobs:
            raise PersonaError(f"request {job.request_id} is already running")
        _jobs[job.request_id] = job


def unregister_job(job: "Job") -> None:
    with _jobs_lock:
        if _jobs.get(job.request_id) is job:
            del _jobs[job.request_id]


def job_of(request_id: str) -> "Job":
    try:
        return _jobs[request_id]
    except KeyError:
        raise PersonaError(f"no running request {request_id}") from None


def running_jobs() -> list["Job"]:
    with _jobs_lock:
        return list(_jobs.values())


# -- requests ----------------------------------------------------------------------------
_REQUESTS: dict[str, type["Request"]] = {}


@dataclass
class Request:
    """Base of every app request. Subclasses are dataclasses of plain data and set ``kind``."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            _REQUESTS[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"kind": ..., field: value, ...}`` (JSON-serialisable)."""
        d = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def resolved(self, config: "Config") -> "Request":
        """A copy with every ``None`` filled from ``config`` and locations resolved (override)."""
        return self

    def plan(self, runtime: "Runtime", request_id: str) -> "Job":  # pragma: no cover - abstract
        raise NotImplementedError


#: where each kind's request class lives (imported on first use)
KIND_MODULES = {"import": "persona.apps.importer", "align": "persona.apps.align", "export": "persona.apps.export",
                "stats": "persona.apps.stats", "sort": "persona.apps.sort", "markdup": "persona.apps.markdup",
                "align-sort": "persona.apps.align_sort"}


def request_class(kind: str) -> type["Request"]:
    if kind not in _REQUESTS and kind in KIND_MODULES:
        import importlib

        importlib.import_module(KIND_MODULES[kind])
    cls = _REQUESTS.get(kind)
    if cls is None:
        raise PersonaError(f"unknown request kind {kind!r} (known: {sorted(KIND_MODULES)})")
    return cls


def request_from_dict(d: Mapping[str, Any]) -> Request:
    """The request a :meth:`Request.to_dict` produced (unknown kinds and fields are errors)."""
    kind = d.get("kind")
    cls = request_class(str(kind))
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names) - {"kind"}
    if unknown:
        raise PersonaError(f"request {kind}: unknown fields {sorted(unknown)}")
    args = {}
    for k, v in d.items():
        if k == "kind":
            continue
        args[k] = tuple(v) if isinstance(v, list) and "tuple" in str(names[k].type) else v
    return cls(**args)


# -- jobs --------------------------------------------------------------------------------
@dataclass
class StagePlan:
    """One stage of a kind's pipeline: its name and replica count."""

    name: str
    replicas: int = 1


@dataclass
class Summary:
    """Base of app summaries: request id, kind, seconds."""

    request_id: str = ""
    kind: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Job:
    """One planned request. Subclasses set ``kind``, ``stages`` and implement
    ``stage_<name>(work)`` for each stage, :meth:`feeds` (or :meth:`produce` for a
    source whose length is known only at its end), :meth:`commit` and :meth:`abort`."""

    kind: ClassVar[str] = ""
    stages: ClassVar[tuple[StagePlan, ...]] = ()
    #: bounded gates between stages (feeds in flight per gate)
    capacity: ClassVar[int] = 2
    #: True: the feed count is known only when :meth:`produce` returns (streaming ingress)
    streaming: ClassVar[bool] = False

    def __init__(self, request: Request, request_id: str, runtime: "Runtime") -> None:
        self.request = request
        self.request_id = request_id
        self.runtime = runtime
        self.attempt = uuid.uuid4().hex[:12]
        self.progress: Progress | None = None
        self.started = time.time()
        self.done_feeds = 0
        self.done_records = 0
        self._progress_lock = threading.Lock()

    # -- planning --------------------------------------------------------------------------
    def begin(self) -> None:
        """Claim outputs, open inputs (before any feed flows). Default: nothing."""

    def feeds(self) -> Iterable[FeedDescriptor]:
        """The batch's feeds as plain descriptors (non-streaming jobs)."""
        return ()

    def produce(self, put: Callable[[Work], None]) -> None:
        """Streaming jobs: read the source and ``put`` one :class:`Work` per feed, in order."""
        for d in self.feeds():
            put(Work(d))

    def work_for(self, desc: FeedDescriptor) -> Work:
        return Work(desc)

    # -- running ---------------------------------------------------------------------------
    def run_stage(self, name: str, work: Work) -> Work:
        return getattr(self, f"stage_{name}")(work)

    def advance(self, records: int) -> None:
        """Count one finished feed of ``records`` records (thread-safe) and report progress."""
        with self._progress_lock:
            self.done_feeds += 1
            self.done_records += records
        if self.progress is not None and records:
            self.progress(records)

    def commit(self, outputs: list[Any]) -> Summary:  # pragma: no cover - abstract
        """Make the job's output visible (``outputs``: each feed's ``Work.out``, in order)."""
        raise NotImplementedError

    def abort(self, error: BaseException | None) -> None:
        """Remove everything this attempt wrote; the previous committed state stays. Idempotent."""

    def summary_base(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "kind": self.request.kind, "seconds": time.time() - self.started}

    def provenance(self, **extra: Any) -> dict[str, Any]:
        """This run's provenance entry for the manifest (see :func:`provenance_entry`)."""
        return provenance_entry(self.request, self.request_id, self.started, **extra)


_SCAN_LOCK = threading.Lock()  # guards the creation of each job's scan (once per job)


class DatasetReadJob(Job):
    """A job whose feeds are the chunks of one dataset (``self.ds``), read and decoded by its first
    two stages: ``read`` (the chunk files of ``read_columns``, checksums checked) and ``decode``.

    On a remote store (``store.remote``: Ceph, S3) the read stage goes through one
    :class:`~persona.storage.lazy.ObjectScan` over this job's feeds: each chunk file arrives in
    blocks (``storage.read_block_kb``, ``storage.read_prefetch`` in flight), its CRC-32 computed as
    they come, and the next feed's reads start before this one is assembled. Local stores read
    each file whole (one ``read`` of a local file is already as fast as it gets)."""

    ds: Any
    read_columns: tuple[str, ...] = ()
    _scan: Any = None
    _scan_at: dict[tuple[int, tuple[str, ...]], int] | None = None

    def feeds(self) -> list[FeedDescriptor]:
        return [FeedDescriptor(self.request_id, self.ds.store.url, self.ds.name, i, tuple(self.read_columns))
                for i in range(len(self.ds.chunks))]

    def stage_read(self, w: Work) -> Work:
        if getattr(self.ds.store, "remote", False):
            w.data = self._read_lazily(w.desc)
        else:
            w.data = {c: self.ds.read_file(w.desc.chunk, c) for c in w.desc.columns}
        return w

    def _read_lazily(self, desc: FeedDescriptor) -> dict[str, Any]:
        from persona.agd.transaction import check_checksum
        from persona.storage.lazy import ObjectScan

        for c in desc.columns:
            if c not in self.ds.columns:
                self.ds.read_file(desc.chunk, c)  # the dataset's own error: no such column
        with _SCAN_LOCK:
            if self._scan is None:
                order = list(self.feeds())
                self._scan_at = {(d.chunk, d.columns): p for p, d in enumerate(order)}
                self._scan = ObjectScan(self.ds.store, [tuple(self.ds.chunk_key(d.chunk, c) for c in d.columns)
                                                        for d in order])
            scan, at = self._scan, self._scan_at
        assert at is not None
        p = at.get((desc.chunk, desc.columns))
        if p is None:  # not one of the planned feeds (a retry with other columns): read it whole
            return {c: self.ds.read_file(desc.chunk, c) for c in desc.columns}
        ref = self.ds.chunks[desc.chunk]
        out: dict[str, Any] = {}
        for c, (buf, crc) in zip(desc.columns, scan.read(p)):
            expected = ref.checksums.get(c)
            if expected and expected != f"crc32:{crc:08x}":
                check_checksum(buf, expected, ref.key(c))  # raises, naming the file and both sums
            out[c] = buf
        return out

    def stage_decode(self, w: Work) -> Work:
        w.data = {c: self.ds.decode_file(w.desc.chunk, c, buf) for c, buf in w.data.items()}
        return w


def dispatch(stage: str) -> Callable[[Work], Work]:
    """The stage function of one named stage: runs the job's ``stage_<name>`` on the work."""

    def run(work: Work) -> Work:
        return work.job.run_stage(stage, work)

    run.__name__ = f"stage_{stage}"
    run.__qualname__ = f"dispatch.{stage}"
    return run


_cmdline: list[str] | None = None


def set_command_line(argv: list[str] | None) -> None:
    """The command line recorded in provenance (the CLI sets it)."""
    global _cmdline
    _cmdline = None if argv is None else list(argv)


def provenance_entry(request: Request, request_id: str, started: float, **extra: Any) -> dict[str, Any]:
    """A provenance record: app, versions, parameters, start/end, host, command line."""
    import persona

    entry: dict[str, Any] = {
        "app": request.kind,
        "id": f"persona-{request.kind}-{request_id[:8]}",
        "persona_version": persona.__version__,
        "request_id": request_id,
        "parameters": json.loads(json.dumps({k: v for k, v in request.to_dict().items() if k != "kind"},
                                            default=str)),
        "started": _iso(started),
        "finished": _iso(time.time()),
        "host": socket.gethostname(),
    }
    if _cmdline:
        entry["command_line"] = " ".join(_cmdline)
    entry.update({k: v for k, v in extra.items() if v is not None})
    return entry


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An input file's name, size and modification time (cheap; no full read)."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except OSError:
        return {"path": p}
    return {"path": os.path.abspath(p), "size": st.st_size, "mtime": _iso(st.st_mtime)}


_counter = itertools.count()


def chunked(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges of ``size`` over ``range(n)``."""
    for s in range(0, n, size):
        yield s, min(n, s + size)
