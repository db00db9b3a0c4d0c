"""A sort (or align-sort) step split across workers: phase 1 as partitions, then one merge task.

:mod:`persona.apps.sort` sorts groups of ``group_chunks`` consecutive chunks into runs (phase 1),
then k-way merges the runs into the new dataset (phase 2). The coordinator splits that as the
thesis' global gates split a batch (§4.5.2):

* **runs partitions**: the groups, ``max(1, round(P / group_chunks))`` per partition (P =
  ``service.partition_size`` chunks). A partition attempt sorts its groups into runs on the output
  store under keys ``<name>.sortrun-<step id>-<run>-<block>-<attempt>`` (attempt-unique; not shaped
  like the dataset's chunk files, so the merge's transaction, which removes dead attempts' chunk
  files when it claims the name, keeps them) and reports each run's block keys, sizes and columns.
  It opens no transaction: nothing of the output is visible. Align-sort partitions align their
  groups in memory as ``persona align-sort`` does.
* **merge task** (one, a whole partition once every runs partition is in): the sort as
  ``persona sort`` runs it minus phase 1, merging the reported runs; its own transaction commits the
  new dataset (duplicate marking with ``markdup`` included) and it removes the runs it merged. A
  failed merge leaves the runs for its retry.

The groups and the runs are exactly the local sort's (same group boundaries, same stable sort, same
merge order), so the output is byte-identical to ``persona sort``. The coordinator removes every key
under the step's run prefix when the step ends (done, failed or cancelled), which takes the runs of
revoked or losing attempts too; a discarded report's runs are removed when it arrives.

Not split:

* **markdup** (a standalone pass over a coordinate-sorted dataset): a duplicate set is decided from
  both mates' unclipped 5' ends, and mates lie anywhere in the dataset, so deciding needs every
  read-end of every pair before any chunk's flags can be written; a partition of chunks cannot
  decide its reads alone. The coordinate sort's merge marks duplicates in one pass instead
  (``sort --markdup``), split as above.
* **stats** and **export** write one ordered output (a report, a SAM/BAM/CRAM file or stream): they
  run whole on one worker.
* **import** reads one FASTQ/SAM stream whose record boundaries are found only by reading it.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from persona.errors import DatasetError, StoreKeyError

#: the kinds split here
KINDS = ("sort", "align-sort")


def run_prefix(name: str, step_id: str) -> str:
    """Every run key of step ``step_id`` writing dataset ``name`` starts with this."""
    return f"{name}.sortrun-{step_id}-"


@dataclasses.dataclass
class SortSplit:
    """The coordinator's plan of one split sort step."""

    request: Any  # the SortRequest (group_chunks fixed, so every worker forms the same groups)
    store: str
    name: str
    chunks: int
    groups: list[tuple[int, int]]  # (first chunk, stop chunk) per group, as SortJob forms them
    parts: list[tuple[int, int]]  # (first group, stop group) per runs partition
    prefix: str  # of every run key of the step (run_prefix)

    def task(self, index: int) -> dict[str, Any]:
        g0, g1 = self.parts[index]
        return {"phase": "runs", "groups": [g0, g1]}

    def chunk_range(self, index: int) -> tuple[int, int]:
        g0, g1 = self.parts[index]
        return self.groups[g0][0], self.groups[g1 - 1][1]

    def merge_task(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """The merge: every group's run (block keys, sizes, columns) from the runs partitions' results."""
        runs: list[Any] = [None] * len(self.groups)
        for r in results:
            for run in r.get("runs", []):
                runs[int(run["run"])] = {"keys": run["keys"], "sizes": run["sizes"], "columns": run["columns"]}
        missing = [i for i, r in enumerate(runs) if r is None]
        if missing:
            raise DatasetError(f"sort merge: no run reported for groups {missing[:5]}", store=self.store)
        return {"phase": "merge", "runs": runs}


def plan(request: Any, config: Any, partition_size: int, step_id: str) -> SortSplit | None:
    """The split of sort step ``request`` (resolved with ``config``), or None when it has one group
    (sorted in memory, no runs: it runs whole)."""
    from persona.agd import Dataset
    from persona.storage import open_store

    r = request.resolved(config)
    ds = Dataset.open(r.dataset, r.input_name)
    n = len(ds.chunks)
    g = int(r.group_chunks)
    groups = [(s, min(n, s + g)) for s in range(0, n, g)]
    if len(groups) <= 1:
        return None
    out = r.output or ds.store.url
    store_url = out if "://" in out else open_store(out).url
    same = store_url == ds.store.url
    name = r.name or (f"{ds.name}_sorted" if same else ds.name)
    per = max(1, round(partition_size / g))
    parts = [(s, min(len(groups), s + per)) for s in range(0, len(groups), per)]
    # the request as sent: group_chunks and name fixed (a worker's config cannot change them)
    fixed = dataclasses.replace(request, group_chunks=g, name=name)
    return SortSplit(fixed, store_url, name, n, groups, parts, run_prefix(name, step_id))


def remove_runs(store_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (the step's runs, whichever attempt wrote them), and the
    partial objects of killed puts of such keys."""
    from persona.storage import open_store

    store = open_store(store_url)
    n = 0
    try:
        for key in store.list(prefix):
            with contextlib.suppress(StoreKeyError, FileNotFoundError):
                store.delete(key)
                n += 1
        # and what a killed attempt's put left staged (the step has ended: no live put of these keys)
        n += len(store.remove_temporaries(prefix))
    finally:
        with contextlib.suppress(Exception):
            store.close()
    return n


# -- the worker's side -------------------------------------------------------------------------
class SortPartPlan:
    """Duck-types a request for :meth:`Runtime.submit`: plans the step's job (SortJob or
    AlignSortJob) and sets it to one part of the split (``task``: runs of some groups, or the merge)."""

    def __init__(self, request: Any, task: dict[str, Any], *, step_id: str, attempt: str) -> None:
        self.request, self.task, self.step_id, self.attempt = request, task, step_id, attempt
        self.kind = request.kind

    def resolved(self, config: Any) -> "SortPartPlan":
        self.request = self.request.resolved(config)
        return self

    def plan(self, runtime: Any, request_id: str) -> Any:
        job = self.request.plan(runtime, request_id)
        if self.task.get("phase") == "runs":
            g0, g1 = (int(x) for x in self.task["groups"])
            if not 0 <= g0 < g1 <= len(job.groups):
                raise DatasetError(f"sort partition groups [{g0}, {g1}) outside the {len(job.groups)} groups of "
                                   f"{job.ds.name!r}", store=job.ds.store.url)
            job.runs_only = tuple(range(g0, g1))
            job.attempt = self.attempt
            job.run_prefix = run_prefix(job.name, self.step_id)
        elif self.task.get("phase") == "merge":
            runs = self.task["runs"]
            if len(runs) != len(job.groups):
                raise DatasetError(f"sort merge: {len(runs)} runs for {len(job.groups)} groups of {job.ds.name!r}",
                                   store=job.ds.store.url)
            job.runs_given = True
            job.run_keys = [list(r["keys"]) for r in runs]
            job.run_columns = [list(r["columns"]) for r in runs]
            job.block_sizes = {k: int(s) for r in runs for k, s in zip(r["keys"], r["sizes"])}
        else:
            raise DatasetError(f"unknown sort partition task {self.task.get('phase')!r}")
        return job


def runs_result(job: Any) -> dict[str, Any]:
    """A runs partition's report: its runs (block keys, sizes, columns), and the keys as ``files``
    (what the coordinator deletes if it discards the result)."""
    runs = [{"run": g, "keys": list(job.run_keys[g]), "sizes": [job.block_sizes[k] for k in job.run_keys[g]],
             "columns": list(job.run_columns[g])} for g in job.runs_only]
    feeds = sum(job.groups[g][1] - job.groups[g][0] for g in job.runs_only)
    records = sum(job.ds.chunks[i].num_records for g in job.runs_only for i in range(*job.groups[g]))
    return {"store": job.store.url, "runs": runs, "feeds": feeds, "records": records,
            "files": [[g, "sortrun", k, ""] for g in job.runs_only for k in job.run_keys[g]]}
