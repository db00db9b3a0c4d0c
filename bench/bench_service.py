"""persona serve: small-request latency through a warm service vs the one-shot CLI, and align
throughput / latency percentiles at 1, 2, 4 (8 without --quick) concurrent requests.

    python bench/bench_service.py [--quick] [--copies N]

Input: the bundled sample (persona/data), its pairs repeated ``--copies`` times for the concurrency
runs. One `persona serve` subprocess on loopback; the same machine and thread budget for the CLI.

The cluster (``--part cluster``, or ``all``, the default; ``--part capacity`` / ``--part scaleout``
run one measurement alone):

* coordinator capacity: partitions per second one coordinator process hands out and takes back
  (the report on each worker's Reports stream, as persona worker sends it, which pulls the next
  partitions; the partition record) to no-op workers (8 threads in 2 processes, each its own gRPC
  channel on loopback), once with one result per report (credits 1: what 1,000 workers whose
  partitions end at different times send) and once with 4 (credits 4: a worker's results that
  finish together go in one report), and the arithmetic for 1,000
  workers at the thesis' chunk size (100,000 reads), per-machine align rate (1354 Mbases/s over 32
  machines, §6.2) and P = 4 chunks per partition;
* scale-out: align requests on 1 and on 2 `persona worker` processes of one aligner thread, each
  pinned to its own core (taskset), interleaved (1, 2, 2, 1, ...), medians of 3 (quick: 1); the
  coordinator's share of the CPU the two-worker runs used, and each worker's CPU / wall; efficiency =
  speed-up / 2. The cluster parts keep their datasets in /dev/shm where writable (``--scratch``):
  two workers writing to one local disk wait on each other's fsyncs, which is not what a cluster's
  workers (each its own machine, a shared Ceph/S3 store) do;
* recovery: a worker SIGKILLed mid-request; seconds until the coordinator re-queued its partitions
  (against the lease period) and the request's slowdown against the fault-free 2-worker run.

Last line: a JSON object.
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_json, table  # noqa: E402

DATA = REPO / "persona" / "data"
R1, R2, REF = DATA / "sample_R1.fastq.gz", DATA / "sample_R2.fastq.gz", DATA / "sample_reference.fasta"
PERSONA = [sys.executable, "-m", "persona.cli"]


def repeat_fastq(dst: Path, copies: int) -> tuple[Path, Path]:
    outs = []
    for src, name in ((R1, "r1.fq.gz"), (R2, "r2.fq.gz")):
        lines = gzip.open(src, "rt").read().splitlines()
        out = dst / name
        with gzip.open(out, "wt", compresslevel=1) as f:
            for c in range(copies):
                for i in range(0, len(lines), 4):
                    head = lines[i].split(None, 1)
                    head[0] = f"{head[0]}_c{c}"
                    f.write(" ".join(head) + "\n" + lines[i + 1] + "\n+\n" + lines[i + 3] + "\n")
        outs.append(out)
    return outs[0], outs[1]


def cli(cfg: Path, *args: str) -> None:
    subprocess.run([*PERSONA, "--config", str(cfg), args[0], "-q", *args[1:]], check=True, timeout=3600)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# -- the cluster ---------------------------------------------------------------------------------
THESIS_CHUNK_READS = 100_000
THESIS_MACHINE_BASES_S = 1354e6 / 32  # align, 32 machines (thesis §6.2, Figure 6.3)
THESIS_READ_LEN = 101


def _capacity_coordinator(cfg: str, partitions: int, addr_file: str) -> None:
    """Child process: a coordinator whose one open step has ``partitions`` partitions of no work."""
    import asyncio

    from persona.config import load_config
    from persona.service.coordinator import Coordinator
    from persona.service.gates import Partition, StepGate

    async def run() -> None:
        svc = Coordinator(load_config(cfg, env={}))
        await svc.start()
        gate = StepGate("capacity.0", "capacity", {"kind": "stats", "dataset": "none"},
                        [Partition(i, i, i + 1) for i in range(partitions)], whole=True)
        svc.gates.add(gate)
        svc._work.set()
        Path(addr_file + ".tmp").write_text(str(svc.worker_address))
        os.replace(addr_file + ".tmp", addr_file)
        deadline = time.monotonic() + 180  # never outlive the benchmark that started it
        while gate.remaining and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await svc.stop(0)

    try:  # as `persona coordinator` runs
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


def _noop_workers(address: str, token: str, n: int, deadline: float, credits: int = 1) -> tuple[int, float]:
    """``n`` no-op workers (threads) of ``credits`` credits each: register, Pull up to their credits,
    then Report all they hold done in one round trip that pulls as many again (as persona worker
    does with results that finish together), until nothing is left or the deadline; returns the
    partitions reported and the seconds it took."""
    import grpc

    from persona.service.convert import to_struct
    from persona.service.proto import modules

    pb2, pb2_grpc = modules()
    md = [("authorization", f"Bearer {token}")]
    done = [0] * n

    def loop(k: int) -> None:
        import queue

        with grpc.insecure_channel(address) as ch:
            stub = pb2_grpc.WorkerServiceStub(ch)
            wid = stub.Register(pb2.RegisterRequest(host="noop", pid=k, threads=1, credits=credits), metadata=md,
                                timeout=30).worker_id
            empty = to_struct({})
            parts: list[Any] = []
            # the reports go on one Reports stream, as persona worker sends them
            q: queue.Queue[Any] = queue.Queue()
            answers = stub.Reports(iter(q.get, None), metadata=md)
            try:
                while time.monotonic() < deadline:
                    try:
                        if not parts:
                            parts = list(stub.Pull(pb2.PullRequest(worker_id=wid, max_partitions=credits),
                                                   metadata=md, timeout=30).partitions)
                            if not parts:
                                return
                        more = [pb2.PartitionResult(attempt=p.attempt, ok=True, result=empty) for p in parts[1:]]
                        held = len(parts)
                        q.put(pb2.ReportRequest(worker_id=wid, attempt=parts[0].attempt, ok=True, result=empty,
                                                pull=held, more=more))
                        parts = list(next(answers).partitions)
                    except (grpc.RpcError, StopIteration):  # the coordinator stops once every partition is in
                        return
                    done[k] += held
            finally:
                q.put(None)
                answers.cancel()

    ths = [threading.Thread(target=loop, args=(k,)) for k in range(n)]
    t = time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return sum(done), time.perf_counter() - t


def _cluster_cfg(root: Path, *, lease: int, partition: int) -> tuple[Path, int]:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    cfg = root / f"cluster-{port}.yaml"
    cfg.write_text(f"align:\n  references_url: \"{root / 'refs'}\"\n  threads: 1\n"
                   f"service:\n  listen: \"127.0.0.1:0\"\n  worker_listen: \"127.0.0.1:{port}\"\n"
                   f"  metrics_listen: null\n  db_path: \"{root / f'state-{port}' / 'db'}\"\n  roots: \"{root}\"\n"
                   f"  lease_seconds: {lease}\n  partition_size: {partition}\n  speculate_min_seconds: 600.0\n")
    return cfg, port


def _wait_file(path: Path, proc: subprocess.Popen, what: str) -> str:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{what} did not start")
        time.sleep(0.05)
    return path.read_text()


def capacity(root: Path, quick: bool, credits: int = 1) -> dict[str, float]:
    cfg, _ = _cluster_cfg(root, lease=30, partition=1)
    partitions = 20000 if quick else 100000
    addr = root / f"capacity-{credits}.addr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    proc = subprocess.Popen([sys.executable, __file__, "--capacity-coordinator", str(cfg), str(partitions), str(addr)],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        address = _wait_file(addr, proc, "the capacity coordinator")
        token = (root / f"state-{address.rsplit(':', 1)[1]}" / "worker-token").read_text().strip()
        # 8 no-op workers in 2 processes (4 threads each): their own gRPC cost is not one GIL's; each
        # child prints its count and the seconds from its first pull to its last report
        seconds = 2 if quick else 20
        cpu0 = _cpu_of(proc.pid)
        kids = [subprocess.Popen([sys.executable, __file__, "--noop-workers", address, token, "4", str(seconds),
                                  str(credits)],
                                 env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [k.communicate(timeout=seconds + 120)[0].split() for k in kids]
        n = sum(int(o[-2]) for o in outs)
        wall = max(float(o[-1]) for o in outs)
        cpu = _cpu_of(proc.pid) - cpu0
    finally:
        proc.terminate()  # it stops by itself once every partition is in; not when the time ran out
        proc.wait(60)
    rate = n / wall
    # on a shared machine the wall rate is what the neighbours leave; the coordinator's own CPU per
    # partition says what one core of its own would serve
    return {"partitions": n, "seconds": wall, "partitions_s": rate, "coordinator_cpu_s": cpu,
            "partitions_per_cpu_s": n / cpu if cpu > 0 else 0.0}


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _coordinator(cfg: Path, root: Path, tag: str) -> tuple[subprocess.Popen, str, Path]:
    addr, log = root / f"{tag}.addr", root / f"{tag}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    proc = subprocess.Popen([*PERSONA, "--config", str(cfg), "coordinator", "--address-file", str(addr)], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    return proc, _wait_file(addr, proc, "persona coordinator").split()[0], log


def _worker(cfg: Path, port: int, k: int) -> subprocess.Popen:
    """Worker ``k``: one aligner thread, pinned to core ``k`` where taskset and enough cores allow
    (the scale-out question: one core -> two)."""
    import shutil

    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    cores = sorted(os.sched_getaffinity(0))
    pin = shutil.which("taskset") is not None and len(cores) >= 2
    return subprocess.Popen([*(["taskset", "-c", str(cores[k % len(cores)])] if pin else []), *PERSONA, "--config",
                             str(cfg), "worker", "--coordinator", f"127.0.0.1:{port}", "-t", "1", "--credits", "1"],
                            env=env, stderr=subprocess.DEVNULL)


def _cluster_runs(cfg: Path, root: Path, src: Path, *, repeats: int, kill_after: int,
                  recovery: bool = True) -> dict[str, Any]:
    """One coordinator and two workers (one aligner thread each, pinned to a core each).

    Scale-out: ``repeats`` rounds, each one align of a copy of ``src`` on one worker and one on two,
    the order alternating (1, 2, then 2, 1, ...) so that a drift of the machine's load falls on both
    alike; the second worker sits out a one-worker run SIGSTOPped (its index stays loaded) and
    declared lost, then is resumed and registers again. Medians; also the coordinator's share of the
    CPU the two-worker runs used (it shares the workers' cores: unavoidable on two).

    Recovery (``recovery``): one more align on two with the second SIGKILLed once ``kill_after``
    chunks are done: seconds until the coordinator re-queued its partitions, and that request's time."""
    import shutil
    import signal

    from persona.config import load_config
    from persona.service.client import Client

    config = load_config(cfg, env={})
    port = int(config.service.worker_listen.rsplit(":", 1)[1])
    coord, address, log = _coordinator(cfg, root, "cluster")
    workers: list[subprocess.Popen] = []
    out: dict[str, Any] = {"runs_1": [], "runs_2": []}
    serial = iter(range(1_000_000))

    def align(c: Any) -> tuple[str, float]:
        ds = root / f"align-{next(serial)}"
        shutil.copytree(src, ds)
        return c.submit({"kind": "align", "dataset": str(ds), "reference": "sample_reference"}), time.perf_counter()

    def done(c: Any, rid: str, t: float) -> float:
        st = c.wait(rid, timeout=3600)
        assert st["state"] == "done", st["error"]
        out["records"] = st["records_total_done"]
        return time.perf_counter() - t

    def registered(c: Any, n: int) -> None:
        deadline = time.monotonic() + 120
        while len(c.cluster_status()["workers"]) != n:
            if time.monotonic() > deadline:
                sys.exit(f"the cluster never had {n} workers")
            time.sleep(0.05)

    try:
        c = Client(address, config=config)
        workers = [_worker(cfg, port, 0), _worker(cfg, port, 1)]
        registered(c, 2)
        done(c, *align(c))  # warm both (each loads the index once: a service keeps it loaded)
        cpu_coord = cpu_all = 0.0
        for i in range(repeats):
            for n in ((1, 2) if i % 2 == 0 else (2, 1)):
                if n == 1:
                    workers[1].send_signal(signal.SIGSTOP)
                    registered(c, 1)  # lost: nothing is handed to it while it is stopped
                    w0 = _cpu_of(workers[0].pid)
                    out["runs_1"].append(done(c, *align(c)))
                    out.setdefault("cpu_1", []).append(_cpu_of(workers[0].pid) - w0)
                    out.setdefault("busy_1", []).append(out["cpu_1"][-1] / out["runs_1"][-1])
                    workers[1].send_signal(signal.SIGCONT)
                    registered(c, 2)
                else:
                    pids = [coord.pid, workers[0].pid, workers[1].pid]
                    before = [_cpu_of(pid) for pid in pids]
                    parts0 = sum(w["partitions_done"] for w in c.cluster_status()["workers"])
                    out["runs_2"].append(done(c, *align(c)))
                    used = [_cpu_of(pid) - b for pid, b in zip(pids, before)]
                    # each worker's share of the partitions (the one that rejoined counts from 0)
                    out.setdefault("partitions_2", []).append(
                        sorted(w["partitions_done"] for w in c.cluster_status()["workers"]))
                    out.setdefault("partitions_before_2", []).append(parts0)
                    cpu_coord += used[0]
                    cpu_all += sum(used)
                    out.setdefault("cpu_2", []).append(sum(used[1:]))
                    out.setdefault("busy_2", []).append(sum(used[1:]) / 2 / out["runs_2"][-1])
        out["seconds_1"] = statistics.median(out["runs_1"])
        out["seconds_2"] = statistics.median(out["runs_2"])
        out["coordinator_cpu_share"] = cpu_coord / cpu_all if cpu_all else 0.0
        if recovery:
            rid, t = align(c)
            while c.get(rid)["feeds_done"] < kill_after:
                time.sleep(0.02)
            seen = log.read_text().count("lost (no heartbeat")
            workers[-1].kill()
            killed = time.perf_counter()
            while log.read_text().count("lost (no heartbeat") <= seen:
                if time.perf_counter() - killed > 120:
                    sys.exit("the killed worker was never declared lost")
                time.sleep(0.02)
            out["recovery_s"] = time.perf_counter() - killed
            out["seconds_killed"] = done(c, rid, t)
        c.close()
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGCONT)
                w.terminate()
        for w in workers:
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                w.kill()
        coord.terminate()
        coord.wait(60)
    return out


#: the thesis' partition size (chunks per partition) and the credits of the batched capacity run
THESIS_P = 4
BATCH_CREDITS = 4


def capacity_bench(root: Path, quick: bool) -> dict[str, Any]:
    """Coordinator capacity, one result per report and ``BATCH_CREDITS`` per report, and the arithmetic."""
    single = capacity(root, quick, 1)
    batched = capacity(root, quick, BATCH_CREDITS)
    p = THESIS_P
    chunks_s_per_worker = THESIS_MACHINE_BASES_S / THESIS_READ_LEN / THESIS_CHUNK_READS
    need = 1000 * chunks_s_per_worker / p
    for label, cap in (("one result per report (credits 1)", single),
                       (f"{BATCH_CREDITS} results per report (credits {BATCH_CREDITS})", batched)):
        print(f"coordinator capacity, {label}: {cap['partitions_s']:,.0f} partitions/s ({cap['partitions']} "
              f"partitions to 8 no-op workers in 2 processes over gRPC on loopback, each handed out, reported on "
              f"the Reports stream and recorded); the coordinator used {cap['coordinator_cpu_s']:.2f} CPU s: "
              f"{cap['partitions_per_cpu_s']:,.0f} partitions per CPU second")
    print(f"1,000 workers at the thesis' rate: {THESIS_MACHINE_BASES_S / 1e6:.1f} Mbases/s per machine / "
          f"{THESIS_READ_LEN} bases / {THESIS_CHUNK_READS:,} reads per chunk = {chunks_s_per_worker:.2f} chunks/s "
          f"per worker; at P = {p} chunks per partition: 1,000 x {chunks_s_per_worker:.2f} / {p} = {need:,.0f} "
          f"partitions/s needed")
    for label, cap in (("credits 1", single), (f"credits {BATCH_CREDITS}", batched)):
        print(f"  {label}: capacity / need = {cap['partitions_s'] / need:.2f} (goal >= 1); feeds 1,000 workers from "
              f"P = {math.ceil(1000 * chunks_s_per_worker / cap['partitions_s'])}; with a core of its own: "
              f"{cap['partitions_per_cpu_s'] / need:.2f}")
    # the headline is one result per report: 1,000 workers' partitions end at different times
    return {"capacity_partitions_s": single["partitions_s"], "partitions_s_needed_1000_workers": need,
            "capacity_partitions_per_cpu_s": single["partitions_per_cpu_s"],
            "capacity_over_need": single["partitions_s"] / need,
            "capacity_batched_credits": BATCH_CREDITS, "capacity_batched_partitions_s": batched["partitions_s"],
            "capacity_batched_partitions_per_cpu_s": batched["partitions_per_cpu_s"],
            "capacity_batched_over_need": batched["partitions_s"] / need}


def _scale_src(root: Path, copies: int) -> Path:
    r1, r2 = repeat_fastq(root, copies)
    src = root / "scale-src"
    cli_cfg, _ = _cluster_cfg(root, lease=2, partition=2)
    cli(cli_cfg, "import", str(r1), str(r2), "-o", str(src), "-c", "500")
    return src


def _print_scaleout(r: dict[str, Any], repeats: int) -> float:
    one, two = r["seconds_1"], r["seconds_2"]
    eff = one / two / 2
    r["cpu_ratio"] = statistics.median(r["cpu_2"]) / statistics.median(r["cpu_1"])
    print(f"scale-out on align ({r['records']:,.0f} records, median of {repeats} interleaved runs each; workers of one "
          f"aligner thread pinned to a core each): 1 worker {one:.2f} s "
          f"({', '.join(f'{x:.2f}' for x in r['runs_1'])}), "
          f"2 workers {two:.2f} s ({', '.join(f'{x:.2f}' for x in r['runs_2'])}): efficiency {eff:.2f} of linear "
          f"(goal >= 0.9); the coordinator used {100 * r['coordinator_cpu_share']:.1f} % of the CPU of the 2-worker "
          f"runs, on the workers' {os.cpu_count()} cores; a worker's CPU / wall: 1 worker "
          f"{statistics.median(r['busy_1']):.2f}, 2 workers {statistics.median(r['busy_2']):.2f} each (below 1: it "
          f"waited, on the disk, the coordinator or the machine's other load: load average now "
          f"{os.getloadavg()[0]:.1f}); the workers' CPU seconds per request: 1 worker "
          f"{statistics.median(r['cpu_1']):.2f}, 2 workers {statistics.median(r['cpu_2']):.2f} together "
          f"({r['cpu_ratio']:.2f}x: splitting adds that much work); partitions done per worker after each "
          f"2-worker run "
          f"(cumulative since it registered): {r['partitions_2']}")
    return eff


def scaleout_bench(root: Path, quick: bool) -> dict[str, Any]:
    """``--part scaleout``: the scale-out measurement alone (the lead's re-run on a quiet machine)."""
    repeats = 3
    src = _scale_src(root, 2 if quick else 12)
    cfg, _ = _cluster_cfg(root, lease=2, partition=THESIS_P)
    r = _cluster_runs(cfg, root, src, repeats=repeats, kill_after=4, recovery=False)
    eff = _print_scaleout(r, repeats)
    return {"scale_out_1_s": r["seconds_1"], "scale_out_2_s": r["seconds_2"], "scale_out_efficiency": eff,
            "scale_out_runs_1_s": r["runs_1"], "scale_out_runs_2_s": r["runs_2"],
            "coordinator_cpu_share": r["coordinator_cpu_share"], "records": r["records"],
            "partitions_per_worker_2": r["partitions_2"], "worker_busy_1": statistics.median(r["busy_1"]),
            "worker_cpu_2_over_1": r["cpu_ratio"],
            "worker_busy_2": statistics.median(r["busy_2"])}


def cluster_bench(root: Path, quick: bool) -> dict[str, Any]:
    cap = capacity_bench(root, quick)
    repeats = 1 if quick else 3
    src = _scale_src(root, 1 if quick else 6)
    cfg, _ = _cluster_cfg(root, lease=2, partition=THESIS_P)
    r = _cluster_runs(cfg, root, src, repeats=repeats, kill_after=4)
    eff = _print_scaleout(r, repeats)
    two, hurt = r["seconds_2"], r["seconds_killed"]
    print(f"recovery: worker SIGKILLed; its partitions re-queued after {r['recovery_s']:.2f} s (lease 2 s: "
          f"{r['recovery_s'] / 2:.2f} lease periods, goal <= 2); request {hurt:.2f} s vs {two:.2f} s fault-free "
          f"({hurt / two:.2f}x)")
    return {**cap, "scale_out_1_s": r["seconds_1"], "scale_out_2_s": two, "scale_out_efficiency": eff,
            "coordinator_cpu_share": r["coordinator_cpu_share"], "recovery_s": r["recovery_s"],
            "recovery_lease_periods": r["recovery_s"] / 2, "recovery_slowdown": hurt / two}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--capacity-coordinator":
        _capacity_coordinator(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    if len(sys.argv) == 7 and sys.argv[1] == "--noop-workers":
        count, secs = _noop_workers(sys.argv[2], sys.argv[3], int(sys.argv[4]), time.monotonic() + float(sys.argv[5]),
                                    int(sys.argv[6]))
        print(count, secs)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="under a minute: fewer levels and repeats")
    ap.add_argument("--copies", type=int, default=0, help="sample copies per align request (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=0, help="aligner threads (0: the cores allowed)")
    ap.add_argument("--part", choices=["all", "service", "cluster", "capacity", "scaleout"], default="all",
                    help="persona serve's benchmarks, the cluster's (capacity, scale-out, recovery), both (all), or "
                         "one cluster measurement alone")
    ap.add_argument("--scratch", default=None,
                    help="where the cluster parts put their datasets (default /dev/shm where writable: the workers "
                         "of a real cluster do not share one local disk's fsyncs, so the scale-out measures CPU)")
    a = ap.parse_args()
    scratch = a.scratch or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    if a.part in ("cluster", "capacity", "scaleout"):
        print(f"cluster datasets under {scratch or tempfile.gettempdir()}")
        with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=scratch) as tmp:
            root = Path(tmp)
            cfg, _ = _cluster_cfg(root, lease=2, partition=2)
            if a.part == "capacity":
                emit_json({"bench": "service-capacity", **capacity_bench(root, a.quick)})
                return
            cli(cfg, "reference", "add", "sample_reference", str(REF))
            part = scaleout_bench if a.part == "scaleout" else cluster_bench
            emit_json({"bench": f"service-{a.part}", **part(root, a.quick)})
        return
    copies = a.copies or (1 if a.quick else 2)
    levels = [1, 2, 4] if a.quick else [1, 2, 4, 8]
    repeats = 3 if a.quick else 5
    from persona.service.client import Client

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        root = Path(tmp)
        cfg = root / "persona.yaml"
        cfg.write_text(f"align:\n  references_url: \"{root / 'refs'}\"\n  threads: {a.threads}\n"
                       f"service:\n  listen: \"127.0.0.1:0\"\n  metrics_listen: null\n"
                       f"  db_path: \"{root / 'state' / 'db'}\"\n  roots: \"{root},{DATA}\"\n")
        cli(cfg, "reference", "add", "sample_reference", str(REF))
        cli(cfg, "import", str(R1), str(R2), "-o", str(root / "small"), "-c", "2000")
        r1, r2 = repeat_fastq(root, copies)
        top = max(levels)
        cli(cfg, "import", str(r1), str(r2), "-o", str(root / "ds0"), "-c", "2000")
        for k in range(1, top):  # the same dataset, one copy per concurrent request
            shutil.copytree(root / "ds0", root / f"ds{k}")

        # the one-shot CLI: a fresh process per request (start-up, index load)
        cli_lat = []
        for _ in range(repeats):
            t = time.perf_counter()
            cli(cfg, "align", str(root / "small"), "-r", "sample_reference")
            cli_lat.append(time.perf_counter() - t)

        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
        addr_file = root / "addr"
        proc = subprocess.Popen([*PERSONA, "--config", str(cfg), "serve", "--address-file", str(addr_file)],
                                env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not addr_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("persona serve did not start")
                time.sleep(0.05)
            address = addr_file.read_text().strip()
            token = (root / "state" / "token").read_text().strip()
            c = Client(address, token)
            small = {"kind": "align", "dataset": str(root / "small"), "reference": "sample_reference"}
            c.wait(c.submit(small), timeout=600)  # warm: the index loaded once
            svc_lat = []
            for _ in range(repeats):
                t = time.perf_counter()
                st = c.wait(c.submit(small), timeout=600)
                svc_lat.append(time.perf_counter() - t)
                assert st["state"] == "done", st["error"]

            rows, conc = [], {}
            for n in levels:
                lat: list[float] = []
                records = 0
                lock = threading.Lock()

                def one(k: int) -> None:
                    nonlocal records
                    t = time.perf_counter()
                    st = c.wait(c.submit({"kind": "align", "dataset": str(root / f"ds{k}"),
                                          "reference": "sample_reference"}), timeout=3600)
                    assert st["state"] == "done", st["error"]
                    with lock:
                        lat.append(time.perf_counter() - t)
                        records += st["records_total_done"]

                t0 = time.perf_counter()
                ths = [threading.Thread(target=one, args=(k,)) for k in range(n)]
                for th in ths:
                    th.start()
                for th in ths:
                    th.join(3600)
                wall = time.perf_counter() - t0
                conc[n] = {"throughput_records_s": records / wall, "p50_s": pct(lat, 50), "p99_s": pct(lat, 99),
                           "latencies_s": sorted(lat)}
                rows.append([n, f"{records / wall:,.0f}", f"{pct(lat, 50):.2f}", f"{pct(lat, 99):.2f}"])
            c.close()
        finally:
            proc.terminate()
            proc.wait(120)

    clus: dict[str, Any] = {}
    if a.part == "all":
        with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=scratch) as tmp:
            croot = Path(tmp)
            ccfg, _ = _cluster_cfg(croot, lease=2, partition=2)
            cli(ccfg, "reference", "add", "sample_reference", str(REF))
            clus = cluster_bench(croot, a.quick)
    base = conc[1]["throughput_records_s"]
    print(table(["concurrent", "records/s", "p50 s", "p99 s"], rows))
    print(f"throughput at 4 concurrent / 1: {conc[4]['throughput_records_s'] / base:.2f} (goal >= 0.95)")
    m_cli, m_svc = statistics.median(cli_lat), statistics.median(svc_lat)
    print(f"small align (8000 pairs): one-shot CLI {m_cli:.2f} s, warm service {m_svc:.2f} s "
          f"({m_cli / m_svc:.1f}x)")
    emit_json({"bench": "service", "copies": copies, "small_cli_s": m_cli, "small_service_s": m_svc,
               "small_speedup": m_cli / m_svc, "concurrency": conc,
               "throughput_4_over_1": conc[4]["throughput_records_s"] / base, "cluster": clus})


if __name__ == "__main__":
    main()
