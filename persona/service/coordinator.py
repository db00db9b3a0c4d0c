"""``persona coordinator``: the client API, the durable request table and the global gates.

The coordinator runs no pipeline itself. Each step of a request becomes a
:class:`~persona.service.gates.StepGate`: an align step is split into partitions of
``service.partition_size`` chunks; a sort or align-sort step into partitions of its phase-1
groups, then one merge task (:mod:`persona.service.sort_parts`, which also says why markdup,
export, stats and import are not split); every other kind is one partition holding the whole step.
Workers (:mod:`persona.service.worker`) register over the worker API (``WorkerService`` in
``protos/persona/v1/persona.proto``, on its own port ``service.worker_listen``, mutual TLS when the
``worker_tls_*`` keys are set, and its own credential ``service.worker_token``: a client token
opens nothing there), renew a lease with heartbeats, pull partitions as their credits allow and
report each attempt's result (on a ``Reports`` stream, or unary ``Report``; a report pulls the
next partitions in the same round trip, and
carries every result of the worker that finished while its previous report was in flight: the
accepted ones are recorded in one transaction per event-loop tick, a group commit).

Align output is one column transaction held by the coordinator: it claims the dataset when the
step starts; workers write each chunk's files under their partition attempt's unique key
(``<name>_<first>~<attempt>.<column>``) and report the keys and checksums; an accepted result is
recorded in the request table (``partitions``) before it is acknowledged; when every partition is
in, the coordinator adopts the files into its transaction and commits the manifest once. A result
from a revoked attempt (its worker's lease expired, the request was cancelled, a speculative copy
won) is discarded and its files deleted, so nothing is committed twice.

After a crash, the restarted coordinator resumes each running request: the step's committed
partitions (the table) are kept, their files survive the new transaction's cleanup, and only the
others are handed out again.

Fair share, credits, leases and straggler copies are the bookkeeping of
:class:`~persona.service.gates.GlobalGates`; this module does the I/O around it on one asyncio loop
(no locks: every gate call runs on the loop).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from pathlib import Path
from typing import Any

from persona.agd.transaction import Transaction, chunk_key_re, remove_dead_attempts, unreferenced_keys
from persona.errors import BatchCancelled, PersonaError, StoreKeyError
from persona.service import sort_parts
from persona.service.gates import GlobalGates, Partition, StepGate, new_attempt
from persona.service.proto import modules
from persona.service.server import Service, _committed_by, load_or_create_token, token_file

log = logging.getLogger(__name__)

#: seconds a Pull waits for work before answering empty (a long poll)
PULL_WAIT = 0.5


def worker_token_file(db_path: str | os.PathLike[str]) -> Path:
    return token_file(db_path, "worker-token")


def load_or_create_worker_token(db_path: str | os.PathLike[str]) -> str:
    """The worker credential beside the request table (made once, mode 0600)."""
    return load_or_create_token(db_path, "worker-token")


class PartitionedColumns(Transaction):
    """The coordinator's column transaction of a partitioned align step: files written by workers
    under their attempts' keys are adopted (:meth:`adopt`) rather than written here, and
    :meth:`begin` keeps the files of ``keep`` (the partitions committed before a restart)."""

    def __init__(self, *args: Any, keep: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.keep = keep

    def begin(self) -> "PartitionedColumns":
        if self.state != "new":
            return self
        self.claim.acquire()
        try:
            from persona.agd.transaction import read_manifest
            from persona.errors import ManifestError

            self.base = read_manifest(self.store, self.name)
            if self.base is None:
                raise ManifestError(f"dataset {self.name!r} has no manifest; it is missing or incomplete",
                                    store=self.store.url)
            remove_dead_attempts(self.store, self.name, self.base, keep_attempts=(self.attempt, *self.keep))
        except BaseException:
            self.claim.release()
            raise
        self.state = "open"
        return self

    def adopt(self, chunk_idx: int, column: str, key: str, sum_: str) -> None:
        self._check_open()
        with self._lock:
            self._files[(chunk_idx, column)] = key
            self._sums[(chunk_idx, column)] = sum_


def delete_attempt_files(store: Any, name: str, manifest: Any, attempts: set[str]) -> int:
    """Remove the chunk files of ``attempts`` that ``manifest`` does not reference."""
    pattern = chunk_key_re(name)
    n = 0
    for key in unreferenced_keys(store, name, manifest):
        m = pattern.match(key)
        if m and m.group(2) in attempts:
            with contextlib.suppress(StoreKeyError):
                store.delete(key)
                n += 1

    def staged(key: str) -> bool:  # what a killed put of one of their files left
        m = pattern.match(key)
        return m is not None and m.group(2) in attempts

    return n + len(store.remove_temporaries(name, match=staged))


class StepHandle:
    """What :class:`~persona.service.server.Live` expects of a running step: progress and cancel."""

    def __init__(self, coordinator: "Coordinator", step_id: str) -> None:
        self.coordinator = coordinator
        self.step_id = step_id
        self.done_feeds = 0
        self.done_records = 0
        self.finished = asyncio.get_running_loop().create_future()

    @property
    def job(self) -> "StepHandle":
        return self

    def done(self) -> bool:
        return self.finished.done()

    def cancel(self) -> None:
        self.coordinator._close_step(self.step_id, "cancelled", "cancelled")


class Coordinator(Service):
    """The client API and request table of :class:`Service`, with steps run by remote workers."""

    def __init__(self, config: Any = None, *, worker_token: str | None = None, worker_listen: str | None = None,
                 **kw: Any) -> None:
        super().__init__(config, **kw)
        sc = self.config.service
        self.worker_token = worker_token or sc.worker_token or load_or_create_worker_token(self.db_path)
        if hmac.compare_digest(self.worker_token.encode(), self.token.encode()):
            raise PersonaError("service.worker_token must differ from the client token")
        self.partition_size = int(sc.partition_size)
        self.gates = GlobalGates(lease_seconds=sc.lease_seconds, speculate_factor=sc.speculate_factor,
                                 speculate_min=sc.speculate_min_seconds)
        self._open = asyncio.Semaphore(max(1, int(sc.max_open_requests)))
        self._steps: dict[str, tuple[StepGate, StepHandle, Any]] = {}
        self._work = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._pending: list[tuple[tuple[str, int, str, dict[str, Any]], asyncio.Future[bool]]] = []
        self._flushing = False
        self.worker_listen = worker_listen or sc.worker_listen
        self.worker_address: str | None = None
        self._worker_server: Any = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> str:
        """Listen on the worker API (``service.worker_listen``; mutual TLS when the worker_tls keys
        are set), then on the client API; returns the client API's ``HOST:PORT``."""
        import grpc

        from persona.service import security

        self._worker_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        modules()[1].add_WorkerServiceServicer_to_server(WorkerServicer(self), self._worker_server)
        port = security.add_port(self._worker_server, self.worker_listen,
                                 security.worker_api_server_credentials(self.config))
        self.worker_address = f"{self.worker_listen.rpartition(':')[0] or '127.0.0.1'}:{port}"
        await self._worker_server.start()
        address = await super().start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="lease-ticker")
        return address

    async def stop(self, grace: float = 2.0) -> None:
        """Stop now; running requests stay 'running' in the table and resume at the next start."""
        if self._ticker is not None:
            self._ticker.cancel()
        if not self._stopping:
            # the steps wait on workers, not on a local runtime: interrupt them
            for lv in list(self._live.values()):
                if lv.task is not None:
                    lv.task.cancel()
        await super().stop(grace)
        if self._worker_server is not None:
            await self._worker_server.stop(grace)
            self._worker_server = None

    async def _tick(self) -> None:
        period = max(0.05, min(1.0, self.gates.lease_seconds / 4))
        while True:
            await asyncio.sleep(period)
            steps = {sid: g.step.get("kind", "") for sid, g in self.gates.gates.items()}
            for w in self.gates.expire(time.time()):
                log.warning("worker %s lost (no heartbeat for %.1f s): its partitions are re-queued",
                            w.worker_id, self.gates.lease_seconds)
                self.metrics.worker_lost(w.worker_id)
                for sid in w.attempts.values():
                    self.metrics.partitions_requeued(steps.get(sid, ""), "lease_expired")
                self._work.set()

    def cluster_status(self) -> dict[str, Any]:
        st = super().cluster_status()
        st["workers"] = [{"worker_id": w.worker_id, "host": w.host, "threads": w.threads, "state": w.state,
                          "running_requests": len(set(w.attempts.values())), "last_heartbeat": w.last_heartbeat,
                          "partitions_done": w.done}
                         for w in self.gates.workers.values()]
        return st

    # -- requests ----------------------------------------------------------------------------
    async def _run(self, live: Any) -> None:
        # global credits: at most service.max_open_requests requests hold partitions at once
        async with self._open:
            await super()._run(live)

    async def _run_step(self, live: Any, i: int, *, resumed: bool) -> dict[str, Any]:
        d = live.steps[i]
        kind = d["kind"]
        step_id = f"{live.id}.{i}"
        request = await asyncio.to_thread(self._prepare, d)
        if await asyncio.to_thread(_step_committed, request, step_id):
            log.info("request %s step %d (%s) had committed before the restart", live.id, i, kind)
            self.table.drop_partitions(step_id)
            return {"request_id": step_id, "kind": kind, "committed_before_restart": True}
        if live.cancel_requested:
            raise BatchCancelled("request cancelled", request=live.id)
        if kind == "align":
            return await self._run_align(live, step_id, request)
        if kind in sort_parts.KINDS:
            return await self._run_sort(live, step_id, request)
        return await self._run_whole(live, step_id, request)

    async def _run_whole(self, live: Any, step_id: str, request: Any) -> dict[str, Any]:
        step = request.to_dict()
        gate = StepGate(step_id, live.id, step, [Partition(0, 0, 0)], whole=True)
        handle = await self._open_gate(live, gate, None)
        await self._wait(live, gate, handle)
        result = dict(gate.partitions[0].result or {})
        live.feeds_done, live.records_done = int(result.get("feeds", 0)), int(result.get("records", 0))
        live.records_total_done += live.records_done
        self.table.drop_partitions(step_id)
        return result.get("summary") or {"request_id": step_id, "kind": request.kind}

    async def _run_sort(self, live: Any, step_id: str, request: Any) -> dict[str, Any]:
        """A sort split as :mod:`persona.service.sort_parts` says: runs partitions, then one merge."""
        split = await asyncio.to_thread(sort_parts.plan, request, self.config, self.partition_size, step_id)
        if split is None:
            return await self._run_whole(live, step_id, request)
        step = split.request.to_dict()
        parts = []
        for k in range(len(split.parts)):
            start, stop = split.chunk_range(k)
            parts.append(Partition(k, start, stop, task=split.task(k)))
        _resume(parts, self.table.partitions(step_id))  # committed before a restart
        try:
            gate = StepGate(step_id, live.id, step, parts)
            handle = await self._open_gate(live, gate, None)
            _count_done(handle, parts)
            await self._wait(live, gate, handle)
            merge = Partition(len(parts), 0, split.chunks,
                              task=split.merge_task([p.result or {} for p in parts]))
            mgate = StepGate(step_id, live.id, step, [*parts, merge], whole=True)
            mhandle = await self._open_gate(live, mgate, None)
            await self._wait(live, mgate, mhandle)
        except BaseException as exc:
            if not (self._stopping and not live.cancel_requested) and not isinstance(exc, asyncio.CancelledError):
                # cancelled or failed: no runs stay behind (stopping: they stay for the resume)
                await asyncio.to_thread(sort_parts.remove_runs, split.store, split.prefix)
                self.table.drop_partitions(step_id)
            raise
        result = dict(merge.result or {})
        live.feeds_done, live.records_done = int(result.get("feeds", 0)), int(result.get("records", 0))
        live.records_total_done += live.records_done
        # what revoked or losing attempts wrote (the merge removed the runs it merged)
        await asyncio.to_thread(sort_parts.remove_runs, split.store, split.prefix)
        self.table.drop_partitions(step_id)
        return {**(result.get("summary") or {"request_id": step_id, "kind": request.kind}),
                "partitions": len(parts) + 1}

    async def _run_align(self, live: Any, step_id: str, request: Any) -> dict[str, Any]:
        from persona.agd import Dataset

        started = time.time()
        committed = self.table.partitions(step_id)
        ds = await asyncio.to_thread(Dataset.open, request.dataset, request.name)
        keep = tuple(a for a, _ in committed.values())
        txn = PartitionedColumns(ds.store, ds.name, app="align", new=False, attempt=new_attempt(),
                                 request_id=step_id, keep=keep)
        await asyncio.to_thread(txn.begin)
        attempts: set[str] = set(keep)
        try:
            ds = Dataset(ds.store, txn.base)
            n = len(ds.chunks)
            parts = [Partition(k, s, min(n, s + self.partition_size))
                     for k, s in enumerate(range(0, n, self.partition_size))]
            _resume(parts, committed)
            gate = StepGate(step_id, live.id, request.to_dict(), parts, generation=txn.base.generation)
            handle = await self._open_gate(live, gate, attempts)
            _count_done(handle, parts)
            await self._wait(live, gate, handle)
            live.records_total_done += live.records_done
            summary = await asyncio.to_thread(self._commit_align, live, step_id, request, ds, txn, gate, started)
            # what losing attempts (revoked, speculative twins) had written so far goes now; what they
            # write later is deleted when their result is discarded, or by the dataset's next writer
            await asyncio.to_thread(delete_attempt_files, ds.store, ds.name, None,
                                    attempts - {p.done_attempt for p in gate.partitions})
        except BaseException as exc:
            stopping = self._stopping and not live.cancel_requested
            if txn.state == "open":
                await asyncio.to_thread(txn.abort)  # releases the claim; deletes nothing of the workers'
            if not stopping and not isinstance(exc, asyncio.CancelledError):
                # cancelled or failed: no partial output stays behind
                await asyncio.to_thread(delete_attempt_files, ds.store, ds.name, txn.base, attempts)
                self.table.drop_partitions(step_id)
            raise
        self.table.drop_partitions(step_id)
        return summary

    def _commit_align(self, live: Any, step_id: str, request: Any, ds: Any, txn: PartitionedColumns,
                      gate: StepGate, started: float) -> dict[str, Any]:
        from persona.agd import RESULTS
        from persona.agd.columns import is_secondary_column, is_tags_column, tags_column
        from persona.agd.records import Alignments
        from persona.apps.align import _no_tags
        from persona.apps.job import provenance_entry

        results = [p.result or {} for p in gate.partitions]
        info = next((r["info"] for r in results if r.get("info")), None)
        if info is None:
            raise PersonaError(f"align step {step_id}: no partition reported the reference", request=live.id)
        for r in results:
            for chunk, column, key, sum_ in r.get("files", []):
                txn.adopt(int(chunk), column, key, sum_)
        n_extra = max([int(info["secondary"])] + [int(r.get("n_secondary", 0)) for r in results])
        base_cols = (RESULTS, *(f"secondary{i}" for i in range(n_extra)))
        out_cols = tuple(c for b in base_cols for c in ((b, tags_column(b)) if info["make_tags"] else (b,)))
        for chunk in range(len(ds.chunks)):
            for c in out_cols:
                if (chunk, c) in txn._files:
                    continue
                nrec = ds.chunks[chunk].num_records
                value = _no_tags(nrec) if is_tags_column(c) else Alignments.absent(nrec)
                txn.put_column_file(chunk, c, ds.encode_column_file(chunk, c, value))
        stale = [c for c in ds.columns if (is_secondary_column(c) or is_tags_column(c)) and c not in out_cols]
        extra: dict[str, Any] = {"read_group": dict(request.read_group)} if request.read_group else {}
        if info.get("reference_uri"):
            extra["reference_uri"] = info["reference_uri"]
        prov = provenance_entry(
            request, step_id, started, aligner=info.get("aligner"), aligner_options=info.get("aligner_options"),
            aligner_version=info.get("aligner_version"), reference=info.get("reference"),
            inputs=[{"dataset": ds.store.url, "name": ds.name, "generation": ds.manifest.generation}],
            partitions={"size": self.partition_size, "count": len(gate.partitions)})
        manifest = txn.commit(list(out_cols), drop_columns=stale, reference=request.reference, extra=extra,
                              reference_contigs=info["contigs"], provenance=prov)
        return {"request_id": step_id, "kind": "align", "seconds": time.time() - started, "dataset": ds.store.url,
                "name": manifest.name, "reference": request.reference, "records": manifest.num_records,
                "chunks": len(manifest.records), "columns": list(out_cols), "partitions": len(gate.partitions)}

    async def _open_gate(self, live: Any, gate: StepGate, attempts: set[str] | None) -> StepHandle:
        handle = StepHandle(self, gate.step_id)
        self._steps[gate.step_id] = (gate, handle, attempts)
        self.gates.add(gate)
        live.handle, live.step_started = handle, time.time()
        live.bump()
        self._work.set()
        if gate.state == "done":
            handle.finished.set_result(None)
        return handle

    async def _wait(self, live: Any, gate: StepGate, handle: StepHandle) -> None:
        try:
            await handle.finished
        finally:
            self._steps.pop(gate.step_id, None)
            self.gates.close(gate.step_id, "cancelled" if live.cancel_requested else "failed", "stopped")
            live.feeds_done, live.records_done = handle.done_feeds, handle.done_records
        if gate.state == "cancelled" or live.cancel_requested:
            raise BatchCancelled("request cancelled", request=live.id)
        if gate.state == "failed":
            raise PersonaError(gate.error or "step failed", request=live.id)

    def _close_step(self, step_id: str, state: str, error: str) -> None:
        entry = self._steps.get(step_id)
        self.gates.close(step_id, state, error)
        if entry is not None and not entry[1].finished.done():
            entry[1].finished.set_result(None)

    # -- the worker API (called on the loop by WorkerServicer) --------------------------------
    def w_register(self, host: str, pid: int, threads: int, credits: int) -> Any:
        w = self.gates.register(host, pid, threads, credits, time.time())
        self.metrics.worker_heartbeat(w.worker_id)
        log.info("worker %s registered (%d threads, %d credits)", w.worker_id, threads, w.credits)
        self._work.set()
        return w

    async def w_pull(self, worker_id: str, n: int, wait: float = PULL_WAIT) -> list[Any] | None:
        deadline = time.monotonic() + wait
        while True:
            if self.state != "running" and self.state != "draining":
                return []
            out = self.gates.pull(worker_id, n, time.time())
            if out is None or out:
                for h in out or ():
                    if h.speculative:
                        self.metrics.partitions_requeued(h.gate.step.get("kind", ""), "straggler")
                        log.info("straggler: partition %d of %s also given to %s", h.partition.index,
                                 h.gate.step_id, worker_id)
                    entry = self._steps.get(h.gate.step_id)
                    if entry is not None and entry[2] is not None:
                        entry[2].add(h.attempt)
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._work.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._work.wait(), min(left, 0.1))

    async def w_report(self, worker_id: str, attempt: str, ok: bool, error: str, result: dict[str, Any]) -> bool:
        out = self.gates.report(worker_id, attempt, ok, error, result, time.time())
        if out.action == "duplicate":
            return True
        if out.action == "discarded":
            log.info("result of attempt %s from %s discarded: %s", attempt, worker_id, out.reason)
            await asyncio.to_thread(self._delete_reported, result)
            return False
        gate, part = out.gate, out.partition
        assert gate is not None and part is not None
        entry = self._steps.get(gate.step_id)
        if out.action == "retry":
            log.warning("partition %d of %s failed on %s (retrying): %s", part.index, gate.step_id, worker_id, error)
            self._work.set()
            return True
        if out.action == "failed":
            where = "" if gate.whole else f"partition {part.index} (chunks [{part.start}, {part.stop})) failed: "
            self._close_step(gate.step_id, "failed", f"{where}{error} (after {part.failures} attempts)")
            return True
        if not gate.whole:
            result = {**result, "range": [part.start, part.stop]}
        try:
            fresh = await self._record(gate.step_id, part.index, attempt, result)
        except Exception as exc:  # noqa: BLE001 - not durable: run it again
            log.warning("cannot record partition %d of %s: %s", part.index, gate.step_id, exc)
            self.gates.unaccept(gate, part)
            return False
        if not fresh:
            return False
        if entry is not None:
            handle = entry[1]
            handle.done_feeds += int(result.get("feeds", 0))
            handle.done_records += int(result.get("records", 0))
            live = self._live.get(gate.request_id)
            if live is not None:
                live.bump()
            if gate.state == "done" and not handle.finished.done():
                handle.finished.set_result(None)
        return True

    async def _record(self, step_id: str, index: int, attempt: str, result: dict[str, Any]) -> bool:
        """Record an accepted partition before it is acknowledged (a coordinator crash keeps it: see
        :mod:`persona.service.db`). The reports of one event-loop tick are written in one
        transaction (a group commit), and each reply waits for its row."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(((step_id, index, attempt, result), fut))
        if not self._flushing:
            self._flushing = True
            # a task: it starts after this tick's other reports have queued their rows
            asyncio.get_running_loop().create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # one more tick: reports whose RPCs arrived together join
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    # on the loop: no fsync at synchronous=NORMAL (see persona.service.db), so a thread
                    # hop would cost more than the write
                    fresh = self.table.commit_partitions([row for row, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each waiter gets the error
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                else:
                    for (_, f), ok in zip(batch, fresh):
                        if not f.done():
                            f.set_result(ok)
        finally:
            self._flushing = False

    def _delete_reported(self, result: dict[str, Any]) -> None:
        """A discarded align attempt's files (its report lists them)."""
        files = result.get("files") or []
        if not files:
            return
        from persona.storage import open_store

        try:
            store = open_store(result["store"])
        except Exception:  # noqa: BLE001 - garbage: the next writer removes it
            return
        try:
            used = _committed_keys(store, {key for _, _, key, _ in files})
            for _, _, key, _ in files:
                if key in used:  # a late copy of a result whose step committed: its files are the dataset's
                    continue
                with contextlib.suppress(StoreKeyError):
                    store.delete(key)
        finally:
            with contextlib.suppress(Exception):
                store.close()


def _resume(parts: list[Partition], committed: dict[int, tuple[str, dict[str, Any]]]) -> None:
    """Mark the partitions whose results the table accepted before a restart as done (same range only)."""
    for k, (attempt, result) in committed.items():
        if k < len(parts) and result.get("range") == [parts[k].start, parts[k].stop]:
            parts[k].done_attempt, parts[k].result = attempt, result


def _count_done(handle: StepHandle, parts: list[Partition]) -> None:
    """Progress starts at what the done partitions already did."""
    for p in parts:
        if p.done:
            handle.done_feeds += p.stop - p.start
            handle.done_records += int(p.result.get("records", 0))


def _committed_keys(store: Any, keys: set[str]) -> set[str]:
    """Which of chunk-file ``keys`` (``<name>_<first>~<attempt>.<column>``) a committed manifest references."""
    from persona.agd.transaction import read_manifest

    used: set[str] = set()
    for name in {k.rsplit("_", 1)[0] for k in keys if "~" in k and "_" in k}:
        try:
            m = read_manifest(store, name)
        except Exception:  # noqa: BLE001 - unreadable: keep everything of it
            used |= {k for k in keys if k.startswith(f"{name}_")}
            continue
        if m is not None:
            used |= {ref.key(c) for ref in m.records for c in m.columns} & keys
    return used


def _step_committed(request: Any, step_id: str) -> bool:
    """Whether the step's output had committed before a restart (its provenance names the step)."""
    if request.kind != "align":
        return _committed_by(request, step_id, None)
    from persona.agd import Dataset

    try:
        ds = Dataset.open(request.dataset, request.name)
    except Exception:  # noqa: BLE001
        return False
    return any(p.get("request_id") == step_id for p in ds.manifest.provenance)


# -- the worker API servicer ---------------------------------------------------------------
def _worker_rpc(fn: Any) -> Any:
    import functools

    import grpc

    @functools.wraps(fn)
    async def unary(self: "WorkerServicer", request: Any, context: Any) -> Any:
        from persona.service import security

        if not security.token_ok(context.invocation_metadata(), self.coordinator.worker_token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong worker credential")
        try:
            return await fn(self, request, context)
        except PersonaError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    return unary


class WorkerServicer(modules()[1].WorkerServiceServicer):  # type: ignore[misc]
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    @_worker_rpc
    async def Register(self, request: Any, context: Any) -> Any:
        w = self.coordinator.w_register(request.host, request.pid, request.threads, request.credits)
        return modules()[0].RegisterResponse(worker_id=w.worker_id, lease_seconds=self.coordinator.gates.lease_seconds)

    @_worker_rpc
    async def Heartbeat(self, request: Any, context: Any) -> Any:
        known, drop = self.coordinator.gates.heartbeat(request.worker_id, request.state, list(request.attempts),
                                                       time.time())
        if request.state == "stopped":
            self.coordinator.metrics.worker_removed(request.worker_id)
            self.coordinator._work.set()
        elif known:
            self.coordinator.metrics.worker_heartbeat(request.worker_id)
        return modules()[0].HeartbeatResponse(known=known, lease_seconds=self.coordinator.gates.lease_seconds,
                                              drop=drop)

    @staticmethod
    def _partitions(out: list[Any]) -> list[Any]:
        from persona.service.convert import step_to_message

        pb2 = modules()[0]
        for h in out:
            if "step" not in h.gate.cache:
                h.gate.cache["step"] = step_to_message(h.gate.step)
        return [pb2.Partition(request_id=h.gate.request_id, step_id=h.gate.step_id, index=h.partition.index,
                              attempt=h.attempt, step=h.gate.cache["step"], chunk_start=h.partition.start,
                              chunk_stop=h.partition.stop, whole=h.gate.whole, generation=h.gate.generation,
                              task=WorkerServicer._task(h.partition))
                for h in out]

    @staticmethod
    def _task(part: Partition) -> Any:
        if part.task is None:
            return None
        from persona.service.convert import to_struct

        return to_struct(part.task)

    @_worker_rpc
    async def Pull(self, request: Any, context: Any) -> Any:
        pb2 = modules()[0]
        out = await self.coordinator.w_pull(request.worker_id, max(1, request.max_partitions))
        if out is None:
            return pb2.PullResponse(known=False)
        return pb2.PullResponse(known=True, partitions=self._partitions(out))

    @_worker_rpc
    async def Report(self, request: Any, context: Any) -> Any:
        return await self._report(request)

    async def Reports(self, request_iterator: Any, context: Any) -> Any:
        import grpc

        from persona.service import security

        if not security.token_ok(context.invocation_metadata(), self.coordinator.worker_token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong worker credential")
        async for request in request_iterator:
            try:
                yield await self._report(request)
            except PersonaError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _report(self, request: Any) -> Any:
        from persona.service.convert import _ints, from_struct

        c = self.coordinator
        results = [(request.attempt, request.ok, request.error, request.result),
                   *((m.attempt, m.ok, m.error, m.result) for m in request.more)]
        # together: each takes its gate decision in order, then all are recorded in one group commit
        reports = [c.w_report(request.worker_id, attempt, ok, error, _ints(from_struct(res)))
                   for attempt, ok, error, res in results]
        oks = [await reports[0]] if len(reports) == 1 else await asyncio.gather(*reports)
        out: list[Any] | None = []
        if request.pull > 0:  # the next partitions in the same round trip (no waiting for work here)
            out = await c.w_pull(request.worker_id, request.pull, wait=0.0)
        return modules()[0].ReportResponse(accepted=oks[0], known=out is not None, more_accepted=oks[1:],
                                           partitions=self._partitions(out or []))


# -- persona coordinator ---------------------------------------------------------------------
def run_coordinator(config: Any = None, *, listen: str | None = None, worker_listen: str | None = None,
                    db_path: str | None = None, roots: str | None = None, address_file: str | None = None) -> int:
    """Run the coordinator until SIGTERM/SIGINT drained it."""
    import signal
    import sys

    from persona.service.server import token_file

    async def main() -> None:
        svc = Coordinator(config, listen=listen, worker_listen=worker_listen, db_path=db_path, roots=roots)
        try:
            address = await svc.start()
        except BaseException:
            await svc.stop(0)
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, svc.on_signal)
        print(f"persona coordinator: clients on {address}, workers on {svc.worker_address}; request table "
              f"{svc.db_path}; client token "
              f"{'from config' if svc.config.service.token else token_file(svc.db_path)}; worker token "
              f"{'from config' if svc.config.service.worker_token else worker_token_file(svc.db_path)}",
              file=sys.stderr, flush=True)
        if address_file:
            tmp = f"{address_file}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{address}\n{svc.worker_address}\n")
            os.replace(tmp, address_file)
        await svc.wait_stopped()

    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())
    return 0
