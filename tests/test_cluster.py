"""The cluster: a coordinator and 2-3 worker processes on loopback, real align requests on the
bundled sample (tens of chunks, a few chunks per partition), faults injected with real signals.

Every wait is bounded (``WAIT`` per request, ``poll`` loops with a deadline). The output of every
faulty run is compared byte for byte with the same align run by the CLI (the fault-free run).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("grpc")

from test_service import DATA, PERSONA, REF, R1, R2, big_fastq, body  # noqa: E402

pytestmark = pytest.mark.cluster
WAIT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(cond, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}


class Cluster:
    """A coordinator subprocess and worker subprocesses sharing one config and one file store."""

    def __init__(self, root: Path, refs: Path, *, lease: int = 2, partition: int = 2, speculate_min: float = 60.0,
                 listen_host: str = "127.0.0.1", extra: str = "") -> None:
        self.root = root
        self.worker_port = free_port()
        self.worker_host = "127.0.0.1"
        self.config = root / "cluster.yaml"
        self.config.write_text(f"""\
align:
  references_url: "{refs}"
  threads: 1
service:
  listen: "127.0.0.1:0"
  worker_listen: "{listen_host}:{self.worker_port}"
  metrics_listen: null
  db_path: "{root / 'state' / 'service.db'}"
  roots: "{root},{DATA}"
  lease_seconds: {lease}
  partition_size: {partition}
  speculate_factor: 2.0
  speculate_min_seconds: {speculate_min}
{extra}""")
        self.coord: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.address = ""

    def start_coordinator(self) -> None:
        addr = self.root / f"coord-{len(self.logs)}.addr"
        log = self.root / f"coord-{len(self.logs)}.log"
        self.logs.append(log)
        self.coord = subprocess.Popen([*PERSONA, "--config", str(self.config), "coordinator", "--address-file",
                                       str(addr)], env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
        poll(lambda: addr.exists() or self.coord.poll() is not None, 60, "the coordinator to listen")
        assert self.coord.poll() is None, log.read_text()
        self.address = addr.read_text().split()[0]

    def start_worker(self, *, credits: int = 1, prefix: tuple[str, ...] = (), address: str | None = None,
                     args: tuple[str, ...] = ()) -> subprocess.Popen:
        log = self.root / f"worker-{len(self.workers)}.log"
        p = subprocess.Popen([*prefix, *PERSONA, "--config", str(self.config), "worker", "--coordinator",
                              address or f"{self.worker_host}:{self.worker_port}", "-t", "1", "--credits",
                              str(credits), *args], env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.workers.append(p)
        return p

    def up(self, workers: int = 2, **worker_kw) -> list[subprocess.Popen]:
        """Start the coordinator and ``workers`` workers; wait until they registered; the workers."""
        self.start_coordinator()
        procs = [self.start_worker(**worker_kw) for _ in range(workers)]
        self.wait_workers(workers)
        return procs

    def client(self):
        from persona.config import load_config
        from persona.service.client import Client

        return Client(self.address, config=load_config(self.config, env={}))

    def wait_workers(self, n: int) -> None:
        with self.client() as c:
            poll(lambda: len(c.cluster_status()["workers"]) >= n, 60, f"{n} workers to register")

    def kill_coordinator(self) -> None:
        assert self.coord is not None
        self.coord.kill()
        self.coord.wait(10)

    def close(self) -> None:
        procs = [p for p in self.workers if p.poll() is None] + ([self.coord] if self.coord else [])
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(10)

    def log(self) -> str:
        return "\n".join(p.read_text() for p in self.logs if p.exists())


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> Path:
    from persona.align.reference import add_reference

    d = tmp_path_factory.mktemp("refs")
    add_reference("sample_reference", str(REF), store_url=str(d))
    return d


@pytest.fixture(scope="module")
def sample(tmp_path_factory, refs) -> dict[str, Path]:
    """An imported dataset (20,000 records in 40 chunks) and its CLI alignment (the fault-free run)."""
    d = tmp_path_factory.mktemp("sample")
    r1, r2 = big_fastq(d, 5)
    cfg = d / "cli.yaml"
    cfg.write_text(f'align:\n  references_url: "{refs}"\n  threads: 1\n')
    run = lambda *a: subprocess.run([*PERSONA, "--config", str(cfg), *a, "-q"], env=env(), check=True,  # noqa: E731
                                    capture_output=True, timeout=WAIT)
    run("import", str(r1), str(r2), "-o", str(d / "ds"), "-c", "500")
    shutil.copytree(d / "ds", d / "aligned")
    run("align", str(d / "aligned"), "-r", "sample_reference")
    return {"dataset": d / "ds", "aligned": d / "aligned"}


def fresh(sample, tmp_path: Path, name: str = "ds") -> Path:
    dst = tmp_path / name
    shutil.copytree(sample["dataset"], dst)
    return dst


def results(path: Path) -> list[bytes]:
    """Every chunk's ``results`` file as its bytes (the canonical, decompressed column content)."""
    from persona.agd import Dataset

    ds = Dataset.open(str(path))
    return [bytes(ds.read_file(i, "results")) for i in range(len(ds.chunks))]


def assert_like_cli(sample, path: Path) -> None:
    from persona.agd import Dataset

    ds = Dataset.open(str(path))
    ref = Dataset.open(str(sample["aligned"]))
    assert ds.columns == ref.columns
    assert results(path) == results(sample["aligned"])
    leftovers = [p.name for p in path.iterdir() if "~" in p.name or p.name.endswith("_writer.json")]
    assert not leftovers, leftovers


def align_request(path: Path):
    from persona.apps.align import AlignRequest

    return AlignRequest(dataset=str(path), reference="sample_reference")


def progress(c, rid: str) -> int:
    return c.get(rid)["feeds_done"]


@pytest.fixture
def cluster(tmp_path, refs):
    made: list[Cluster] = []

    def make(**kw) -> Cluster:
        cl = Cluster(tmp_path, refs, **kw)
        made.append(cl)
        return cl

    yield make
    for cl in made:
        cl.close()


# -- the bookkeeping, deterministic -----------------------------------------------------------
def gates(**kw):
    from persona.service.gates import GlobalGates

    return GlobalGates(lease_seconds=kw.pop("lease", 10), **kw)


def gate(step_id: str, n: int):
    from persona.service.gates import Partition, StepGate

    return StepGate(step_id, step_id, {"kind": "align"}, [Partition(i, i, i + 1) for i in range(n)])


def test_round_robin_serves_a_small_request_behind_a_large_one():
    g = gates()
    w = g.register("h", 1, 1, 1, now=0)
    g.add(gate("large", 50))
    g.add(gate("small", 2))
    order = []
    for t in range(6):
        (h,) = g.pull(w.worker_id, 5, now=t)
        order.append(h.gate.step_id)
        assert g.report(w.worker_id, h.attempt, True, "", {}, now=t + 0.5).action == "accepted"
    assert order[:4] == ["large", "small", "large", "small"]
    assert g.gates["small"].state == "done" and g.gates["large"].remaining == 46


def test_credits_leases_and_late_results():
    g = gates(lease=10)
    a = g.register("a", 1, 1, 2, now=0)
    b = g.register("b", 2, 1, 1, now=0)
    g.add(gate("s", 4))
    ha = g.pull(a.worker_id, 5, now=0)
    assert len(ha) == 2  # its credits, not the 5 asked for
    assert g.pull(a.worker_id, 5, now=0) == []
    g.heartbeat(b.worker_id, "running", [], now=9)
    lost = g.expire(now=11)
    assert [w.worker_id for w in lost] == [a.worker_id] and g.requeued == 2
    hb = g.pull(b.worker_id, 1, now=11)
    assert hb[0].partition.index == ha[0].partition.index  # re-queued first in line
    late = g.report(a.worker_id, ha[0].attempt, True, "", {}, now=12)
    assert late.action == "discarded"
    assert g.report(b.worker_id, hb[0].attempt, True, "", {}, now=12).action == "accepted"
    # the same report again (its answer lost, the worker retried): not discarded, its files stay
    assert g.report(b.worker_id, hb[0].attempt, True, "", {}, now=13).action == "duplicate"
    known, _ = g.heartbeat(a.worker_id, "running", [ha[1].attempt], now=12)
    assert not known


def test_straggler_gets_a_speculative_copy_and_the_loser_is_dropped():
    g = gates(lease=100, speculate_factor=2.0, speculate_min=1.0)
    a = g.register("a", 1, 1, 1, now=0)
    b = g.register("b", 2, 1, 1, now=0)
    g.add(gate("s", 3))
    (h1,) = g.pull(a.worker_id, 1, now=0)
    (h2,) = g.pull(b.worker_id, 1, now=0)
    assert g.report(b.worker_id, h2.attempt, True, "", {}, now=1).action == "accepted"
    (h3,) = g.pull(b.worker_id, 1, now=1)
    assert g.report(b.worker_id, h3.attempt, True, "", {}, now=2).action == "accepted"
    assert g.pull(b.worker_id, 1, now=2) == []  # not late yet (median 1.5 s x 2)
    (spec,) = g.pull(b.worker_id, 1, now=5)
    assert spec.speculative and spec.partition is h1.partition and g.speculated == 1
    assert g.report(b.worker_id, spec.attempt, True, "", {}, now=6).action == "accepted"
    assert g.gates["s"].state == "done"
    _, drop = g.heartbeat(a.worker_id, "running", [h1.attempt], now=6)
    assert drop == [h1.attempt]
    assert g.report(a.worker_id, h1.attempt, True, "", {}, now=7).action == "discarded"


def test_failures_retry_then_fail_the_step_and_transient_ones_count_little():
    g = gates()
    w = g.register("a", 1, 1, 1, now=0)
    g.add(gate("s", 1))
    for _ in range(10):  # a busy dataset (a lost worker's claim not yet run out): retried
        (h,) = g.pull(w.worker_id, 1, now=0)
        assert g.report(w.worker_id, h.attempt, False, "busy", {"transient": True}, now=0).action == "retry"
    actions = []
    for _ in range(3):
        (h,) = g.pull(w.worker_id, 1, now=0)
        actions.append(g.report(w.worker_id, h.attempt, False, "bad chunk", {}, now=0).action)
    assert actions == ["retry", "retry", "failed"]


# -- the cluster, real processes ---------------------------------------------------------------
def test_worker_api_needs_the_worker_credential(cluster, sample, tmp_path):
    import grpc

    from persona.service.proto import modules

    cl = cluster()
    cl.start_coordinator()
    pb2, pb2_grpc = modules()
    client_token = (tmp_path / "state" / "token").read_text().strip()
    worker_token = (tmp_path / "state" / "worker-token").read_text().strip()
    assert client_token != worker_token
    with grpc.insecure_channel(f"127.0.0.1:{cl.worker_port}") as ch:
        stub = pb2_grpc.WorkerServiceStub(ch)
        for bad in (client_token, ""):
            with pytest.raises(grpc.RpcError) as e:
                stub.Register(pb2.RegisterRequest(host="x", pid=1, threads=1, credits=1),
                              metadata=[("authorization", f"Bearer {bad}")], timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:  # the Reports stream too
                list(stub.Reports(iter([pb2.ReportRequest(worker_id="x", attempt="a")]),
                                  metadata=[("authorization", f"Bearer {bad}")], timeout=10))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        r = stub.Register(pb2.RegisterRequest(host="x", pid=1, threads=1, credits=1),
                          metadata=[("authorization", f"Bearer {worker_token}")], timeout=10)
        assert r.worker_id and r.lease_seconds == 2
    with grpc.insecure_channel(cl.address) as ch:  # and the worker token opens nothing on the client API
        with pytest.raises(grpc.RpcError) as e:
            pb2_grpc.PersonaStub(ch).ClusterStatus(pb2.ClusterStatusRequest(),
                                                  metadata=[("authorization", f"Bearer {worker_token}")], timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_two_workers_align_like_the_cli_then_a_sigkilled_worker_is_replaced(cluster, sample, tmp_path):
    cl = cluster(lease=2)
    _, victim = cl.up(2)
    ds = fresh(sample, tmp_path, "a")
    with cl.client() as c:
        st = c.wait(c.submit(align_request(ds)), timeout=WAIT)
        assert st["state"] == "done", st["error"]
        chunks = st["summaries"][0]["chunks"]
        assert chunks >= 30 and st["summaries"][0]["partitions"] == (chunks + 1) // 2
        assert_like_cli(sample, ds)

        # a worker SIGKILLed mid-request: its leases expire, its partitions run elsewhere
        ds2 = fresh(sample, tmp_path, "b")
        rid = c.submit(align_request(ds2))
        poll(lambda: progress(c, rid) >= 4, WAIT, "partitions to finish")
        victim.kill()
        victim.wait(10)
        killed_at = time.monotonic()
        cl.start_worker()  # a restarted worker rejoins
        st = c.wait(rid, timeout=WAIT)
        assert st["state"] == "done", st["error"]
        assert_like_cli(sample, ds2)
        workers = poll(lambda: [w for w in c.cluster_status()["workers"]] if len(c.cluster_status()["workers"]) == 2
                       else None, 3 * 2 + 10, "the dead worker's lease to expire")
        assert len(workers) == 2 and time.monotonic() - killed_at < WAIT
    assert "lost (no heartbeat" in cl.log()


def test_a_chain_of_kinds_runs_on_the_workers_as_the_cli_runs_it(cluster, tmp_path):
    """import and export run whole on a worker, align in partitions across both: the export is the CLI's."""
    from persona.apps.export import ExportRequest
    from persona.apps.importer import ImportRequest

    cl = cluster(partition=1)
    cl.start_coordinator()
    metrics = f"127.0.0.1:{free_port()}"
    cl.start_worker(args=("--metrics-listen", metrics))
    cl.start_worker()
    cl.wait_workers(2)
    ds = tmp_path / "chain"
    with cl.client() as c:
        st = c.wait(c.submit(ImportRequest(inputs=(str(R1), str(R2)), output=str(ds), chunk_size=1000),
                             align_request(ds), ExportRequest(dataset=str(ds), output=str(tmp_path / "chain.sam"))),
                    timeout=WAIT)
    assert st["state"] == "done", st["error"]
    assert [s["kind"] for s in st["summaries"]] == ["import", "align", "export"]
    assert st["summaries"][1]["partitions"] == st["summaries"][1]["chunks"] >= 4
    run = lambda *a: subprocess.run([*PERSONA, "--config", str(cl.config), *a, "-q"], env=env(),  # noqa: E731
                                    check=True, capture_output=True, timeout=WAIT)
    run("import", str(R1), str(R2), "-o", str(tmp_path / "cli"), "-c", "1000")
    run("align", str(tmp_path / "cli"), "-r", "sample_reference")
    run("export", str(tmp_path / "cli"), str(tmp_path / "cli.sam"))
    assert body(tmp_path / "chain.sam") == body(tmp_path / "cli.sam")
    import urllib.request

    scrape = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    assert 'persona_records_processed_total{kind="align"}' in scrape  # the worker counts what it ran


def all_columns(path: Path, name: str) -> dict[str, list[bytes]]:
    """Every column's chunk files (decompressed) of dataset ``name`` at ``path``."""
    from persona.agd import Dataset

    ds = Dataset.open(str(path), name)
    return {c: [bytes(ds.read_file(i, c)) for i in range(len(ds.chunks))] for c in ds.columns}


def test_sort_split_plan_groups_partitions_and_the_merge_task(sample):
    from persona.config import load_config
    from persona.apps.sort import SortRequest
    from persona.errors import DatasetError
    from persona.service import sort_parts

    config = load_config(None, env={})
    req = SortRequest(dataset=str(sample["aligned"]), group_chunks=3)
    split = sort_parts.plan(req, config, 7, "r1.0")  # 40 chunks: 14 groups of 3 (the last of 1), 2 per partition
    assert split is not None and split.chunks == 40 and len(split.groups) == 14 and split.groups[-1] == (39, 40)
    assert split.parts == [(g, g + 2) for g in range(0, 14, 2)]
    assert [split.chunk_range(k) for k in (0, 6)] == [(0, 6), (36, 40)]
    assert split.task(1) == {"phase": "runs", "groups": [2, 4]}
    assert split.request.group_chunks == 3 and split.request.name == "big_sorted"
    assert split.prefix == "big_sorted.sortrun-r1.0-"
    runs = [{"runs": [{"run": g, "keys": [f"k{g}"], "sizes": [1], "columns": ["results"]} for g in range(*p)]}
            for p in split.parts]
    assert [r["keys"] for r in split.merge_task(runs)["runs"]] == [[f"k{g}"] for g in range(14)]
    with pytest.raises(DatasetError, match=r"no run reported for groups \[2, 3\]"):
        split.merge_task(runs[:1] + runs[2:])
    # one group: sorted in memory, nothing to split
    assert sort_parts.plan(SortRequest(dataset=str(sample["aligned"]), group_chunks=64), config, 4, "r2.0") is None


def test_sort_and_align_sort_split_across_two_workers_like_the_cli(cluster, sample, tmp_path):
    """sort and align-sort run phase 1 as partitions on both workers, then one merge: the sorted
    datasets equal `persona sort` / `persona align-sort` byte for byte, and no run is left behind,
    also when a worker is SIGKILLed mid-request (its runs partitions or the merge run again)."""
    from persona.apps.align_sort import AlignSortRequest
    from persona.apps.sort import SortRequest

    cl = cluster(partition=4)
    _, victim = cl.up(2)
    srt, asrt, killed = tmp_path / "srt", tmp_path / "asrt", tmp_path / "killed"
    cli_srt, cli_asrt = tmp_path / "cli-srt", tmp_path / "cli-asrt"
    for src, dst in ((sample["aligned"], srt), (sample["dataset"], asrt), (sample["aligned"], cli_srt),
                     (sample["dataset"], cli_asrt), (sample["dataset"], killed)):
        shutil.copytree(src, dst)
    with cl.client() as c:
        rids = [c.submit(SortRequest(dataset=str(srt), name="sorted", markdup=True)),
                c.submit(AlignSortRequest(dataset=str(asrt), name="sorted", reference="sample_reference"))]
        # the local runs meanwhile (they wait on the disk as much as on the CPU)
        clis = [subprocess.Popen([*PERSONA, "--config", str(cl.config), *args, "-t", "1", "-q"], env=env())
                for args in (("sort", str(cli_srt), "--out-name", "sorted", "--markdup"),
                             ("align-sort", str(cli_asrt), "-r", "sample_reference", "--out-name", "sorted"))]
        sts = [c.wait(rid, timeout=WAIT) for rid in rids]
        workers = c.cluster_status()["workers"]
        rid = c.submit(AlignSortRequest(dataset=str(killed), name="sorted", reference="sample_reference"))
        poll(lambda: progress(c, rid) >= 4, WAIT, "runs partitions to finish")
        victim.kill()
        sts.append(c.wait(rid, timeout=WAIT))
    assert [p.wait(WAIT) for p in clis] == [0, 0]
    for st in sts:
        assert st["state"] == "done", st["error"]
        # 40 chunks in groups of 4, one group per partition: 10 runs partitions and the merge
        assert st["summaries"][0]["partitions"] == 11 and st["summaries"][0]["runs"] == 10
    assert len(workers) == 2 and all(w["partitions_done"] >= 2 for w in workers), workers
    assert "lost (no heartbeat" in cl.log()
    for ours, cli in ((srt, cli_srt), (asrt, cli_asrt), (killed, cli_asrt)):
        got, want = all_columns(ours, "sorted"), all_columns(cli, "sorted")
        assert got.keys() == want.keys() and got == want
        leftovers = [p.name for p in ours.iterdir() if "sortrun" in p.name or "~" in p.name
                     or p.name.endswith("_writer.json")]
        assert not leftovers, leftovers


def test_split_align_sort_cancelled_or_resumed_after_a_coordinator_restart(cluster, sample, tmp_path):
    """A split align-sort cancelled mid-phase-1 leaves its input as it was (no run, no staged put, no
    output); another one whose coordinator is SIGKILLed after some runs partitions committed resumes
    from them on the restarted coordinator and writes what `persona align-sort` writes."""
    from persona.apps.align_sort import AlignSortRequest
    from persona.service.db import RequestTable

    cl = cluster(partition=4)
    cl.up(2)
    gone, resumed, cli = tmp_path / "gone", tmp_path / "resumed", tmp_path / "cli"
    for dst in (gone, resumed, cli):
        shutil.copytree(sample["dataset"], dst)
    before = sorted(p.name for p in gone.iterdir())
    local = subprocess.Popen([*PERSONA, "--config", str(cl.config), "align-sort", str(cli), "-r", "sample_reference",
                              "--out-name", "sorted", "-t", "1", "-q"], env=env())
    with cl.client() as c:
        rid = c.submit(AlignSortRequest(dataset=str(gone), name="sorted", reference="sample_reference"))
        poll(lambda: progress(c, rid) >= 2, WAIT, "runs partitions to finish")
        assert c.cancel(rid)
        assert c.wait(rid, timeout=WAIT)["state"] == "cancelled"
        poll(lambda: all(w["running_requests"] == 0 for w in c.cluster_status()["workers"]), 30,
             "the workers to drop the cancelled partitions")
        rid = c.submit(AlignSortRequest(dataset=str(resumed), name="sorted", reference="sample_reference"))
        poll(lambda: progress(c, rid) >= 16, WAIT, "runs partitions to finish")  # chunks: 4 partitions
    poll(lambda: sorted(p.name for p in gone.iterdir()) == before, 30, "the cancelled request's runs to go")
    cl.kill_coordinator()
    table = RequestTable(tmp_path / "state" / "service.db")
    committed = len(table.partitions(f"{rid}.0"))
    table.close()
    assert 1 <= committed < 11  # some runs partitions (4 had reported), not the merge
    cl.start_coordinator()
    with cl.client() as c:
        st = c.wait(rid, timeout=WAIT)
    assert st["state"] == "done", st["error"]
    assert st["attempts"] == 2 and st["summaries"][0]["runs"] == 10
    assert "resuming request" in cl.log()
    assert local.wait(WAIT) == 0
    got, want = all_columns(resumed, "sorted"), all_columns(cli, "sorted")
    assert got.keys() == want.keys() and got == want
    leftovers = [p.name for p in resumed.iterdir() if "sortrun" in p.name or "~" in p.name
                 or p.name.endswith("_writer.json")]
    assert not leftovers, leftovers


def test_small_request_behind_a_large_one_is_not_starved(cluster, sample, tmp_path):
    cl = cluster(partition=1)
    cl.up(1, credits=1)
    large, small = fresh(sample, tmp_path, "large"), tmp_path / "small"
    with cl.client() as c:
        subprocess.run([*PERSONA, "--config", str(cl.config), "import", str(R1), str(R2), "-o", str(small), "-c",
                        "4000", "-q"], env=env(), check=True, timeout=WAIT)
        big = c.submit(align_request(large))
        poll(lambda: progress(c, big) >= 1, WAIT, "the large request to start")
        little = c.submit(align_request(small))
        st = c.wait(little, timeout=WAIT)
        assert st["state"] == "done", st["error"]
        assert c.get(big)["state"] == "running" and c.get(big)["feeds_done"] < 70
        assert c.wait(big, timeout=WAIT)["state"] == "done"


def test_straggler_partition_is_speculatively_rerun(cluster, sample, tmp_path):
    cl = cluster(lease=30, speculate_min=1.0)
    _, slow = cl.up(2)
    ds = fresh(sample, tmp_path, "s")
    with cl.client() as c:
        rid = c.submit(align_request(ds))
        poll(lambda: progress(c, rid) >= 20, WAIT, "partitions to finish")
        os.kill(slow.pid, signal.SIGSTOP)  # a straggler: alive (lease held), but making no progress
        try:
            st = c.wait(rid, timeout=WAIT)
        finally:
            os.kill(slow.pid, signal.SIGCONT)
        assert st["state"] == "done", st["error"]
    # the straggler, running again, drops its copy (told so by a heartbeat) or finishes it: either way
    # its result reaches the coordinator, is discarded, and its files are gone by then
    poll(lambda: " discarded: " in cl.log(), 60, "the straggler's late result to be discarded")
    poll(lambda: not [p for p in ds.iterdir() if "~" in p.name], 30, "the straggler's files to be removed")
    assert_like_cli(sample, ds)
    assert "straggler: partition" in cl.log()


def test_cancel_releases_everything_and_leaves_no_partial_output(cluster, sample, tmp_path):
    cl = cluster()
    cl.up(2)
    ds = fresh(sample, tmp_path, "c")
    before = sorted(p.name for p in ds.iterdir())
    with cl.client() as c:
        rid = c.submit(align_request(ds))
        poll(lambda: progress(c, rid) >= 4, WAIT, "partitions to finish")
        assert c.cancel(rid)
        st = c.wait(rid, timeout=WAIT)
        assert st["state"] == "cancelled"
        poll(lambda: all(w["running_requests"] == 0 for w in c.cluster_status()["workers"]), 30,
             "the workers to drop the cancelled partitions")
    poll(lambda: sorted(p.name for p in ds.iterdir()) == before, 30, "the partial output to be removed")
    from persona.agd import Dataset

    assert "results" not in Dataset.open(str(ds)).columns


def test_sigterm_drains_a_worker(cluster, sample, tmp_path):
    cl = cluster(lease=5)  # long enough that a loaded machine never loses a healthy worker here
    _, leaving = cl.up(2)
    ds = fresh(sample, tmp_path, "t")
    with cl.client() as c:
        rid = c.submit(align_request(ds))
        poll(lambda: progress(c, rid) >= 4, WAIT, "partitions to finish")
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(60) == 0
        poll(lambda: len(c.cluster_status()["workers"]) == 1, 10, "the drained worker to leave")
        st = c.wait(rid, timeout=WAIT)
        assert st["state"] == "done", st["error"]
    assert_like_cli(sample, ds)
    assert "lost (no heartbeat" not in cl.log()  # it left; nothing had to expire


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns():
    """A network namespace joined to this one by a veth pair: ``(namespace, host-side link, host address)``."""
    if os.geteuid() != 0:
        pytest.skip("the network-partition test needs root (ip netns)")
    if shutil.which("ip") is None:
        pytest.skip("the network-partition test needs the ip command (iproute2)")
    tag = f"{os.getpid() % 10000}"
    ns, host_if, ns_if = f"persona-{tag}", f"pvh{tag}", f"pvw{tag}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{subnet}.1/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{subnet}.2/24", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_if, f"{subnet}.1"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)


def test_network_partition_moves_partitions_and_discards_late_results(cluster, sample, tmp_path, netns):
    ns, host_if, host_addr = netns
    cl = cluster(lease=2, listen_host="0.0.0.0")
    cl.start_coordinator()
    cl.start_worker(address=f"127.0.0.1:{cl.worker_port}")
    cut = cl.start_worker(address=f"{host_addr}:{cl.worker_port}", prefix=("ip", "netns", "exec", ns))
    cl.wait_workers(2)
    ds = fresh(sample, tmp_path, "n")
    with cl.client() as c:
        rid = c.submit(align_request(ds))

        def cut_is_busy() -> bool:
            return any(w["worker_id"].split("/")[1] == str(cut.pid) and w["running_requests"]
                       for w in c.cluster_status()["workers"])

        poll(lambda: progress(c, rid) >= 2 and cut_is_busy(), WAIT, "the namespaced worker to hold partitions")
        _ip("link", "set", host_if, "down")
        try:
            st = c.wait(rid, timeout=WAIT)  # its partitions move to the worker on loopback
            assert st["state"] == "done", st["error"]
            assert "lost (no heartbeat" in cl.log()
        finally:
            _ip("link", "set", host_if, "up")
        # back on the network: its late result is discarded, never committed; it registers again
        poll(lambda: " discarded: " in cl.log(), 60, "the late result to arrive and be discarded")
        poll(lambda: len(c.cluster_status()["workers"]) == 2, 60, "the namespaced worker to rejoin")
    assert cut.poll() is None
    poll(lambda: not [p for p in ds.iterdir() if "~" in p.name], 30, "the discarded attempt's files to go")
    assert_like_cli(sample, ds)


def test_coordinator_killed_and_restarted_resumes_from_committed_partitions(cluster, sample, tmp_path):
    cl = cluster()
    cl.up(2)
    ds = fresh(sample, tmp_path, "k")
    with cl.client() as c:
        rid = c.submit(align_request(ds))
        poll(lambda: progress(c, rid) >= 20, WAIT, "partitions to finish")
    cl.kill_coordinator()
    from persona.service.db import RequestTable

    table = RequestTable(tmp_path / "state" / "service.db")
    done_before = len(table.partitions(f"{rid}.0"))
    table.close()
    assert done_before >= 10
    cl.start_coordinator()  # the workers re-register with the new one
    with cl.client() as c:
        st = c.wait(rid, timeout=WAIT)
        assert st["state"] == "done", st["error"]
        assert st["attempts"] == 2
    assert_like_cli(sample, ds)
    assert "resuming request" in cl.log()
