"""Prometheus metrics of a real service: a scrape over HTTP after a real request, linted by
``promtool check metrics`` (Debian's prometheus package; deploy/test.sh installs it)."""
from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import require_tool

pytest.importorskip("grpc")
pytest.importorskip("prometheus_client")

DATA = Path(__file__).resolve().parents[1] / "persona" / "data"


def _config(root: Path):
    from persona.config import load_config

    path = root / "persona.yaml"
    path.write_text(f"""\
align:
  references_url: "{root / 'refs'}"
  threads: 1
service:
  listen: "127.0.0.1:0"
  metrics_listen: "127.0.0.1:0"
  db_path: "{root / 'state' / 'service.db'}"
  roots: "{root},{DATA}"
""")
    return load_config(path, env={})


@pytest.fixture
def service(tmp_path):
    from persona.service.server import Service

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    svc = Service(_config(tmp_path))
    svc.address_ = asyncio.run_coroutine_threadsafe(svc.start(), loop).result(60)
    yield svc
    try:
        asyncio.run_coroutine_threadsafe(svc.stop(0), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _scrape(address: str) -> str:
    return urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series} in the scrape")


def _value_or_0(text: str, series: str) -> float:
    try:
        return _value(text, series)
    except AssertionError:
        return 0.0


def _fastq_bases(*paths: Path) -> int:
    import gzip

    total = 0
    for p in paths:
        with gzip.open(p, "rt") as f:
            total += sum(len(line.rstrip("\n")) for i, line in enumerate(f) if i % 4 == 1)
    return total


def test_scrape_after_a_request_has_every_family_and_passes_promtool(service, tmp_path):
    from persona.apps.importer import ImportRequest
    from persona.service.client import Client
    from persona.storage import open_store

    promtool = require_tool("promtool")
    r1, r2 = DATA / "sample_R1.fastq.gz", DATA / "sample_R2.fastq.gz"
    before = _scrape(service.metrics.address)  # process-wide counters: compare with what was before
    with Client(service.address_, service.token, timeout=30) as c:
        rid = c.submit(ImportRequest(inputs=(str(r1), str(r2)), output=str(tmp_path / "agd")))
        assert c.wait(rid, timeout=120)["state"] == "done"
    m = service.metrics
    # what a coordinator and its workers report through the functions
    m.worker_heartbeat("node7/worker", at=1_700_000_000.0)
    m.worker_heartbeat("node8/worker")
    m.worker_lost("node8/worker")
    m.partitions_requeued("align", "lease_expired", 3)
    m.partitions_requeued("align", "straggler")
    m.processed("align", "align", records=8000, bases=8000 * 101)
    # an I/O error of a store (a key that is a directory cannot be written) is counted by the store
    st = open_store(str(tmp_path / "store"))
    st.put("a/b", b"x" * 1000)
    with pytest.raises(OSError):
        st.put("a", b"y")
    text = _scrape(service.metrics.address)
    assert _value(text, 'persona_requests{kind="import",state="done"}') == 1
    assert _value(text, 'persona_requests_finished_total{kind="import",state="done"}') == 1
    assert _value(text, 'persona_request_duration_seconds_count{kind="import"}') == 1
    assert _value(text, 'persona_feeds_processed_total{kind="import"}') >= 1
    # the runtime's pipeline, read at scrape time: stages' busy time and feeds, gates' depth
    assert _value(text, 'persona_ptf_batches_done_total{pipeline="import"}') == 1
    stage_lines = [ln for ln in text.splitlines() if ln.startswith("persona_ptf_stage_feeds_total{")]
    assert stage_lines and all('pipeline="import"' in ln for ln in stage_lines)
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in stage_lines) >= 1
    assert any(ln.startswith("persona_ptf_stage_busy_seconds_total{") and float(ln.rsplit(" ", 1)[1]) > 0
               for ln in text.splitlines())
    assert "persona_ptf_gate_depth{" in text
    # liveness: the embedded worker and the two reported
    assert _value(text, f'persona_worker_up{{worker="{service.worker_id}"}}') == 1
    assert _value(text, 'persona_worker_up{worker="node7/worker"}') == 1
    assert _value(text, 'persona_worker_up{worker="node8/worker"}') == 0
    assert _value(text, 'persona_worker_last_heartbeat_timestamp_seconds{worker="node7/worker"}') == 1.7e9
    assert _value(text, 'persona_partitions_requeued_total{kind="align",reason="lease_expired"}') == 3
    delta = lambda series: _value(text, series) - _value_or_0(before, series)  # noqa: E731
    assert delta('persona_bases_processed_total{app="align",stage="align"}') == 808000
    # the import's bases, counted by the app; its files and the 1000 bytes, counted by the file store
    assert delta('persona_bases_processed_total{app="import",stage="encode"}') == _fastq_bases(r1, r2)
    written = sum(p.stat().st_size for p in (tmp_path / "agd").iterdir())
    assert delta('persona_store_bytes_total{op="write",scheme="file"}') >= written + 1000
    assert delta('persona_store_bytes_total{op="read",scheme="file"}') > 0  # the manifest, read back
    assert delta('persona_store_errors_total{op="write",scheme="file"}') == 1
    m.worker_removed("node8/worker")
    assert 'worker="node8/worker"' not in _scrape(service.metrics.address)

    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gauges_follow_the_runtime_at_scrape_time(service, tmp_path):
    """Nothing is cached: a scrape before any request has no pipeline series, one after has them."""
    from persona.apps.importer import ImportRequest

    before = _scrape(service.metrics.address)
    assert "persona_ptf_stage_feeds_total{" not in before
    handle = service.runtime.submit(ImportRequest(inputs=(str(DATA / "sample_R1.fastq.gz"),),
                                                  output=str(tmp_path / "direct")))
    handle.result(120)
    deadline = time.monotonic() + 10
    while "persona_ptf_stage_feeds_total{" not in _scrape(service.metrics.address):
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.cluster
def test_coordinator_reports_worker_liveness(tmp_path):
    """A real coordinator (in-process) and a real worker process: the scrape shows the worker up,
    then down once it was SIGKILLed and its lease ran out."""
    import os
    import signal
    import sys

    from persona.config import load_config
    from persona.service.coordinator import Coordinator

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"""\
align:
  references_url: "{tmp_path / 'refs'}"
  threads: 1
service:
  listen: "127.0.0.1:0"
  worker_listen: "127.0.0.1:0"
  metrics_listen: "127.0.0.1:0"
  db_path: "{tmp_path / 'state' / 'service.db'}"
  roots: "{tmp_path}"
  lease_seconds: 1
""")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    coord = Coordinator(load_config(cfg_path, env={}))
    asyncio.run_coroutine_threadsafe(coord.start(), loop).result(60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    worker = subprocess.Popen([sys.executable, "-m", "persona.cli", "--config", str(cfg_path), "worker",
                               "--coordinator", coord.worker_address, "-t", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up_lines() -> list[str]:
            return [ln for ln in _scrape(coord.metrics.address).splitlines() if ln.startswith("persona_worker_up{")]

        deadline = time.monotonic() + 60
        while not any(ln.endswith(" 1.0") for ln in up_lines()):
            assert time.monotonic() < deadline, "the worker never showed as up"
            time.sleep(0.2)
        (line,) = up_lines()  # the registered worker only: a coordinator has no embedded worker listed
        worker_id = line.split('"')[1]
        assert worker_id != coord.worker_id
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 30
        while f'persona_worker_up{{worker="{worker_id}"}} 0.0' not in _scrape(coord.metrics.address):
            assert time.monotonic() < deadline, "the lost worker still shows as up"
            time.sleep(0.2)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        try:
            asyncio.run_coroutine_threadsafe(coord.stop(0), loop).result(60)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
