"""persona serve end to end: a real server on a loopback port, real requests on the bundled sample.

In-process servers (a Service on its own event-loop thread) for most tests; `persona serve`
subprocesses for kill -9 / restart and SIGTERM. Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("grpc")
pytest.importorskip("prometheus_client")

DATA = Path(__file__).resolve().parents[1] / "persona" / "data"
R1, R2, REF = DATA / "sample_R1.fastq.gz", DATA / "sample_R2.fastq.gz", DATA / "sample_reference.fasta"
PERSONA = [sys.executable, "-m", "persona.cli"]
WAIT = 120  # seconds: the bound on any one request in these tests


def write_config(path: Path, root: Path, refs: Path, *, extra: str = "") -> Path:
    path.write_text(f"""\
align:
  references_url: "{refs}"
  threads: 2
service:
  listen: "127.0.0.1:0"
  metrics_listen: "127.0.0.1:0"
  db_path: "{root / 'state' / 'service.db'}"
  roots: "{root},{DATA}"
{extra}""")
    return path


def cli(config: Path, *args: str, cwd: Path | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    r = subprocess.run([*PERSONA, "--config", str(config), args[0], "-q", *args[1:]], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=WAIT)
    assert r.returncode == 0, r.stderr


def body(sam: Path) -> list[str]:
    """A SAM file's lines but its @PG lines (their CL names the command, which differs by design)."""
    return [ln for ln in sam.read_text().splitlines() if not ln.startswith("@PG")]


def big_fastq(dst: Path, copies: int) -> tuple[Path, Path]:
    """The sample's pairs ``copies`` times over, read names made unique: a request that takes a while."""
    outs = []
    for src, name in ((R1, "big_R1.fastq.gz"), (R2, "big_R2.fastq.gz")):
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


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> Path:
    """One reference store for the module, the sample reference registered once (as the CLI does)."""
    from persona.align.reference import add_reference

    d = tmp_path_factory.mktemp("refs")
    add_reference("sample_reference", str(REF), store_url=str(d))
    return d


class Server:
    """A Service on an event loop of its own thread."""

    def __init__(self, root: Path, refs: Path, **kw) -> None:
        from persona.config import load_config
        from persona.service.server import Service

        self.config_path = write_config(root / "persona.yaml", root, refs)
        self.config = load_config(self.config_path, env={})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = Service(self.config, **kw)
        self.address = self.call(self.service.start())

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, token: str | None = None):
        from persona.service.client import Client

        return Client(self.address, self.service.token if token is None else token)

    def close(self) -> None:
        try:
            self.call(self.service.stop(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture
def server(tmp_path, refs):
    s = Server(tmp_path, refs)
    yield s
    s.close()


def test_import_align_export_through_the_service_equals_the_cli(server, tmp_path):
    from persona.apps.align import AlignRequest
    from persona.apps.export import ExportRequest
    from persona.apps.importer import ImportRequest

    with server.client() as c:
        rid = c.submit(ImportRequest(inputs=(str(R1), str(R2)), output=str(tmp_path / "svc")),
                       AlignRequest(dataset=str(tmp_path / "svc"), reference="sample_reference"),
                       ExportRequest(dataset=str(tmp_path / "svc"), output=str(tmp_path / "svc.sam")))
        st = c.wait(rid, timeout=WAIT)
    assert st["state"] == "done", st["error"]
    assert [s["kind"] for s in st["summaries"]] == ["import", "align", "export"]
    assert st["summaries"][0]["records"] == 8000 and st["records_total_done"] >= 3 * 8000

    cfg = server.config_path
    cli(cfg, "import", str(R1), str(R2), "-o", str(tmp_path / "cli"))
    cli(cfg, "align", str(tmp_path / "cli"), "-r", "sample_reference")
    cli(cfg, "export", str(tmp_path / "cli"), str(tmp_path / "cli.sam"))
    assert body(tmp_path / "svc.sam") == body(tmp_path / "cli.sam")
    assert len(body(tmp_path / "svc.sam")) > 8000


def test_concurrent_requests_of_different_kinds(server, tmp_path):
    from persona.apps.align import AlignRequest
    from persona.apps.export import ExportRequest
    from persona.apps.importer import ImportRequest
    from persona.apps.stats import StatsRequest

    cfg = server.config_path
    cli(cfg, "import", str(R1), str(R2), "-o", str(tmp_path / "a"))
    cli(cfg, "import", str(R1), str(R2), "-o", str(tmp_path / "b"))
    cli(cfg, "align", str(tmp_path / "b"), "-r", "sample_reference")
    with server.client() as c:
        ids = [c.submit(AlignRequest(dataset=str(tmp_path / "a"), reference="sample_reference")),
               c.submit(ImportRequest(inputs=(str(R1), str(R2)), output=str(tmp_path / "c"))),
               c.submit(ExportRequest(dataset=str(tmp_path / "b"), output=str(tmp_path / "b.sam"))),
               c.submit(StatsRequest(dataset=str(tmp_path / "b")))]
        finals = [c.wait(i, timeout=WAIT) for i in ids]
        assert [f["state"] for f in finals] == ["done"] * 4, [f["error"] for f in finals]
        rows, token = c.list(page_size=2)
        assert len(rows) == 2 and token
        rest, token2 = c.list(page_size=10, page_token=token)
        assert [r["id"] for r in rows + rest] == ids[::-1] and token2 == ""
        assert [r["id"] for r in c.list(kind="stats")[0]] == [ids[3]]
    # the align that ran beside the others wrote what it writes alone (b was aligned alone)
    c2 = tmp_path / "a.sam"
    cli(cfg, "export", str(tmp_path / "a"), str(c2))
    assert body(c2) == body(tmp_path / "b.sam")


def test_watch_from_two_clients(server, tmp_path):
    from persona.apps.align import AlignRequest

    cfg = server.config_path
    cli(cfg, "import", str(R1), str(R2), "-o", str(tmp_path / "w"), "-c", "1000")
    with server.client() as c:
        rid = c.submit(AlignRequest(dataset=str(tmp_path / "w"), reference="sample_reference"))
    seen: dict[int, list] = {0: [], 1: []}

    def watch(k: int) -> None:
        with server.client() as c:
            for st in c.watch(rid, timeout=WAIT):
                seen[k].append(st)

    threads = [threading.Thread(target=watch, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT + 10)
    for k in (0, 1):
        states = [s["state"] for s in seen[k]]
        assert states[-1] == "done", states
        records = [s["records_done"] for s in seen[k] if s["state"] == "running"]
        assert records == sorted(records)
        assert seen[k][-1]["records_done"] == 8000 and seen[k][-1]["feeds_done"] > 1


def test_cancel_leaves_no_partial_dataset(server, tmp_path):
    from persona.agd import Dataset
    from persona.apps.importer import ImportRequest

    r1, r2 = big_fastq(tmp_path, 4)
    out = tmp_path / "cancelled"
    with server.client() as c:
        rid = c.submit(ImportRequest(inputs=(str(r1), str(r2)), output=str(out), chunk_size=500, threads=1))
        deadline = time.monotonic() + WAIT
        for st in c.watch(rid, timeout=WAIT):
            if st["records_done"] > 0 or st["state"] != "running" and st["state"] != "queued":
                break
        assert st["state"] == "running", st
        assert c.cancel(rid)
        final = c.wait(rid, timeout=max(1, deadline - time.monotonic()))
        assert final["state"] == "cancelled" and final["cancel_requested"]
        assert not c.cancel(rid)  # already finished
    with pytest.raises(Exception):
        Dataset.open(str(out))
    assert not out.exists() or list(out.iterdir()) == []


def test_auth_paths_and_errors(server, tmp_path):
    from persona.apps.importer import ImportRequest
    from persona.apps.stats import StatsRequest
    from persona.service.client import ServiceError

    for token in ("", "wrong"):
        with server.client(token=token) as c:
            for call in (lambda: c.submit(StatsRequest(dataset=str(tmp_path))), lambda: c.get("x"),
                         lambda: list(c.watch("x", timeout=10)), lambda: c.list(), lambda: c.cancel("x"),
                         lambda: c.cluster_status()):
                with pytest.raises(ServiceError) as e:
                    call()
                assert e.value.code == "UNAUTHENTICATED"
    with server.client() as c:
        for bad in (ImportRequest(inputs=(str(R1),), output=str(tmp_path / ".." / "escape")),
                    ImportRequest(inputs=("/etc/hostname",), output=str(tmp_path / "x")),
                    ImportRequest(inputs=("-",), output=str(tmp_path / "x"))):
            with pytest.raises(ServiceError) as e:
                c.submit(bad)
            assert e.value.code == "INVALID_ARGUMENT"
        with pytest.raises(ServiceError) as e:
            c.get("nosuchrequest")
        assert e.value.code == "NOT_FOUND"
        assert c.list()[0] == []
        # a request that fails says why
        rid = c.submit(StatsRequest(dataset=str(tmp_path / "missing")))
        final = c.wait(rid, timeout=WAIT)
        assert final["state"] == "failed" and final["error"]
        # idempotency: the same key gives the same request
        key = "k-1"
        assert c.submit(StatsRequest(dataset=str(tmp_path / "missing")), idempotency_key=key) == \
            c.submit(StatsRequest(dataset=str(tmp_path / "missing")), idempotency_key=key)


def test_metrics_scrape(server, tmp_path):
    from persona.apps.importer import ImportRequest

    with server.client() as c:
        rid = c.submit(ImportRequest(inputs=(str(R1), str(R2)), output=str(tmp_path / "m")))
        assert c.wait(rid, timeout=WAIT)["state"] == "done"
    text = urllib.request.urlopen(f"http://{server.service.metrics.address}/metrics", timeout=10).read().decode()
    assert 'persona_requests{kind="import",state="done"} 1.0' in text
    assert 'persona_requests_finished_total{kind="import",state="done"} 1.0' in text
    assert 'persona_records_processed_total{kind="import"} 8000.0' in text
    assert 'persona_request_duration_seconds_count{kind="import"} 1.0' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus): the scrape was not linted")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_submit_status_watch_cancel(server, tmp_path, capsys):
    from persona.cli import main

    cfg = str(server.config_path)
    svc = ["--address", server.address, "--token", server.service.token]
    ds = tmp_path / "clids"
    rc = main(["--config", cfg, "submit", "-q", *svc, "import", str(R1), str(R2), "-o", str(ds),
               "+", "align", str(ds), "-r", str(REF), "+", "export", str(ds), str(tmp_path / "c.sam")])
    assert rc == 0
    rid = capsys.readouterr().out.strip()
    assert (tmp_path / "c.sam").stat().st_size > 0
    assert main(["--config", cfg, "status", *svc, rid]) == 0
    assert f"{rid}  done  import+align+export" in capsys.readouterr().out
    assert main(["--config", cfg, "status", *svc]) == 0
    out = capsys.readouterr().out
    assert "embedded" in out and rid in out
    assert main(["--config", cfg, "watch", "-q", *svc, rid]) == 0
    assert main(["--config", cfg, "cancel", "-q", *svc, rid]) == 0  # already finished: nothing to do
    assert main(["--config", cfg, "submit", *svc, "--detach", "stats", str(ds)]) == 0
    assert len(capsys.readouterr().out.strip()) == 16
    # align-sort given a FASTA path registers it, as align does
    rc = main(["--config", cfg, "submit", "-q", *svc, "align-sort", str(ds), "-r", str(REF),
               "-o", str(tmp_path / "as")])
    assert rc == 0, capsys.readouterr().err
    from persona.agd import Dataset
    from persona.agd.dataset import find_manifests

    names = find_manifests(Dataset.open(tmp_path / "as").store) if (tmp_path / "as").exists() else []
    assert names and Dataset.open(tmp_path / "as", names[0]).manifest.sort == "coordinate"
    assert main(["--config", cfg, "status", "--token", "wrong", "--address", server.address]) == 1


# -- persona serve as a process: kill -9 and restart, SIGTERM drains ---------------------------
class Process:
    def __init__(self, root: Path, config: Path) -> None:
        self.root, self.config = root, config
        self.addr_file = root / f"addr-{time.monotonic_ns()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
        self.log = open(root / "serve.log", "ab")
        self.proc = subprocess.Popen([*PERSONA, "--config", str(config), "serve", "--address-file",
                                      str(self.addr_file)], cwd=root, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.addr_file.exists():
            assert self.proc.poll() is None, (root / "serve.log").read_text()
            assert time.monotonic() < deadline, "persona serve did not start"
            time.sleep(0.1)
        self.address = self.addr_file.read_text().strip()

    def client(self):
        from persona.config import load_config
        from persona.service.client import Client

        return Client(self.address, config=load_config(self.config, env={}))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def test_kill_9_mid_request_then_restart_completes_it(tmp_path, refs):
    from persona.apps.align import AlignRequest

    cfg = write_config(tmp_path / "persona.yaml", tmp_path, refs)
    r1, r2 = big_fastq(tmp_path, 3)
    for name in ("svc", "cli"):
        cli(cfg, "import", str(r1), str(r2), "-o", str(tmp_path / name), "-c", "1000")
    p = Process(tmp_path, cfg)
    try:
        with p.client() as c:
            rid = c.submit(AlignRequest(dataset=str(tmp_path / "svc"), reference="sample_reference"))
            for st in c.watch(rid, timeout=WAIT):
                if st["feeds_done"] >= 2 or st["state"] not in ("queued", "running"):
                    break
            assert st["state"] == "running" and st["feeds_done"] < 24, st
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(30)
        p.log.close()
        p = Process(tmp_path, cfg)
        with p.client() as c:
            final = c.wait(rid, timeout=WAIT)
        assert final["state"] == "done", final["error"]
        assert final["attempts"] == 2 and final["summaries"][0]["records"] == 24000
    finally:
        p.stop()
    cli(cfg, "align", str(tmp_path / "cli"), "-r", "sample_reference")
    cli(cfg, "export", str(tmp_path / "svc"), str(tmp_path / "svc.sam"))
    cli(cfg, "export", str(tmp_path / "cli"), str(tmp_path / "cli.sam"))
    assert body(tmp_path / "svc.sam") == body(tmp_path / "cli.sam")


def test_sigterm_drains(tmp_path, refs):
    from persona.apps.align import AlignRequest

    cfg = write_config(tmp_path / "persona.yaml", tmp_path, refs)
    cli(cfg, "import", str(R1), str(R2), "-o", str(tmp_path / "d"), "-c", "1000")
    p = Process(tmp_path, cfg)
    try:
        with p.client() as c:
            rid = c.submit(AlignRequest(dataset=str(tmp_path / "d"), reference="sample_reference"))
            for st in c.watch(rid, timeout=WAIT):
                if st["state"] == "running" or st["state"] in ("done", "failed"):
                    break
            p.proc.send_signal(signal.SIGTERM)
            assert p.proc.wait(WAIT) == 0, (tmp_path / "serve.log").read_text()
    finally:
        p.stop()
    from persona.service.db import RequestTable

    row = RequestTable(tmp_path / "state" / "service.db").get(rid)
    assert row is not None and row["state"] == "done" and row["attempts"] == 1
