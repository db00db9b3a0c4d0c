"""``persona serve --watch``: new FASTQ pairs and AGD datasets under a prefix become requests, once.

The bookkeeping (:class:`Watcher`) is tested on listings alone; the service tests run a real Service
with a trigger on a temporary directory, on loopback, every wait bounded in time.
"""
from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import pytest

from persona.service.triggers import Found, Trigger, TriggerSpec, Watcher, parse_kinds

DATA = Path(__file__).resolve().parents[1] / "persona" / "data"
WAIT = 90


def test_parse_kinds():
    assert parse_kinds("align,sort,markdup") == ("align", "sort", "markdup")
    assert parse_kinds("align-sort-markdup") == ("align", "sort", "markdup")
    assert parse_kinds("import+align") == ("import", "align")
    for bad in ("", "align,frobnicate", "align,import", "sort,sort"):
        with pytest.raises(ValueError):
            parse_kinds(bad)


def test_watcher_pairs_naming_conventions_and_stable_sizes():
    w = Watcher(ignore=["out"])
    listing = {"a/x_R1.fastq.gz": 10, "a/x_R2.fastq.gz": 10, "y_1.fq": 5, "y_2.fq": 5,
               "z_R1_001.fastq": 7, "z_R2_001.fastq": 7, "lonely_R1.fq.gz": 3, "m.1.fq": 1, "m.2.fq": 1,
               "mixed_R1.fq": 1, "mixed_R2.fastq": 1,  # not twins: different extensions
               "ds/yeast_metadata.json": 100, "out/own_metadata.json": 9, "out/own_R1.fq": 1, "out/own_R2.fq": 1}
    first = w.observe(listing)
    # only the manifest is ready at once: a FASTQ needs the same size at two polls
    assert [(f.kind, f.name, f.directory) for f in first] == [("agd", "yeast", "ds")]
    second = w.observe(listing)
    assert sorted((f.name, f.keys) for f in second) == [
        ("m", ("m.1.fq", "m.2.fq")), ("x", ("a/x_R1.fastq.gz", "a/x_R2.fastq.gz")), ("y", ("y_1.fq", "y_2.fq")),
        ("z_001", ("z_R1_001.fastq", "z_R2_001.fastq"))]
    assert w.observe(listing) == []  # each input once
    # a pair still being written: R2 grows between polls, then holds still
    w2 = Watcher()
    assert w2.observe({"s_R1.fq": 4, "s_R2.fq": 0}) == []
    assert w2.observe({"s_R1.fq": 4, "s_R2.fq": 2}) == []  # empty before: not stable
    assert w2.observe({"s_R1.fq": 4, "s_R2.fq": 4}) == []  # grew
    (ready,) = w2.observe({"s_R1.fq": 4, "s_R2.fq": 4})
    assert ready == Found("fastq-pair", "s", "", ("s_R1.fq", "s_R2.fq"))
    # an input that left the listing is forgotten (bounded memory); back again, it is found again
    assert w.observe({}) == [] and not w._reported
    assert [f.name for f in w.observe({"ds/yeast_metadata.json": 100})] == ["yeast"]
    # forget: reported again at the next poll where it is ready
    w2.forget(ready)
    assert w2.observe({"s_R1.fq": 4, "s_R2.fq": 4}) == [ready]


def test_trigger_on_a_memory_store_builds_the_chain():
    from persona.storage import open_store

    st = open_store("memory://trigger-test")
    st.put("runs/s1_R1.fastq.gz", b"x" * 10)
    st.put("runs/s1_R2.fastq.gz", b"y" * 10)
    st.put("agd/done_metadata.json", b"{}")
    spec = TriggerSpec(watch="memory://trigger-test", then=("align", "sort", "markdup"), output="memory://results",
                       reference="sacCer3", poll_seconds=0.1)
    t = Trigger(spec)
    first = t.poll()
    assert [f.kind for f, *_ in first] == ["agd"]
    (f, steps, label, key), = t.poll()
    assert f.kind == "fastq-pair" and key.startswith("trigger:") and "s1" in label
    assert [s["kind"] for s in steps] == ["import", "align", "sort", "markdup"]
    assert steps[0]["inputs"] == ["memory://trigger-test/runs/s1_R1.fastq.gz", "memory://trigger-test/runs/s1_R2.fastq.gz"]
    assert steps[1] == {"kind": "align", "dataset": "memory://results", "name": "s1", "reference": "sacCer3"}
    assert steps[2]["input_name"] == "s1" and steps[3]["name"] == "s1_sorted"
    # the agd input's chain starts at align, on the dataset where it lies
    agd_steps = first[0][1]
    assert agd_steps[0]["dataset"] == "memory://trigger-test/agd" and agd_steps[0]["name"] == "done"
    assert t.key(f) != first[0][3] and t.key(f) == Trigger(spec).key(f)  # keys are stable across instances
    with pytest.raises(ValueError, match="needs a reference"):
        TriggerSpec(watch="x", then=("align",), output="y")
    # the triggers' own outputs are never inputs: output inside the watched prefix, or the prefix itself
    for output, expect in (("memory://trigger-test/agd", ["fastq-pair"]), ("memory://trigger-test", ["fastq-pair"]),
                           ("memory://elsewhere", ["agd", "fastq-pair"])):
        t = Trigger(TriggerSpec(watch="memory://trigger-test", then=("stats",), output=output, poll_seconds=0.1))
        assert sorted(f.kind for _ in range(2) for f, *_ in t.poll()) == expect, output


# -- a real service ---------------------------------------------------------------------------------
def _config(root: Path):
    from persona.config import load_config

    path = root / "persona.yaml"
    path.write_text(f"""\
align:
  references_url: "{root / 'refs'}"
  threads: 1
service:
  listen: "127.0.0.1:0"
  metrics_listen: null
  db_path: "{root / 'state' / 'service.db'}"
  roots: "{root}"
""")
    return load_config(path, env={})


class Served:
    def __init__(self, root: Path, specs: list[TriggerSpec]) -> None:
        from persona.service.server import Service

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = Service(_config(root), triggers=specs)
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(60)

    def rows(self) -> list[dict]:
        return self.service.table.list(limit=100)

    def wait_polls(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while min(t.polls for t in self.service.triggers) < n:
            assert time.monotonic() < deadline, "the trigger did not poll"
            time.sleep(0.05)

    def wait_done(self, count: int) -> list[dict]:
        deadline = time.monotonic() + WAIT
        while True:
            rows = self.rows()
            if len(rows) >= count and all(r["state"] in ("done", "failed", "cancelled") for r in rows):
                return rows
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.service.stop(0), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def test_serve_watch_imports_a_new_pair_once_across_restarts(tmp_path):
    pytest.importorskip("grpc")
    pytest.importorskip("prometheus_client")
    from persona.agd import Dataset

    incoming, agd, out = tmp_path / "incoming", tmp_path / "agd", tmp_path / "out"
    incoming.mkdir()
    specs = [TriggerSpec(watch=str(incoming), then=("import",), output=str(agd), poll_seconds=0.1),
             TriggerSpec(watch=str(agd), then=("export",), output=str(out), export_format="sam", poll_seconds=0.1)]
    out.mkdir()
    s = Served(tmp_path, specs)
    try:
        # R1 complete, R2 not there yet: nothing runs
        shutil.copy(DATA / "sample_R1.fastq.gz", incoming / "run7_R1.fastq.gz")
        s.wait_polls(3)
        assert s.rows() == []
        shutil.copy(DATA / "sample_R2.fastq.gz", incoming / "run7_R2.fastq.gz")
        rows = s.wait_done(2)  # the import, then the export its new dataset triggers
        assert sorted(r["kinds"] for r in rows) == ["export", "import"], rows
        assert all(r["state"] == "done" for r in rows), rows
        assert Dataset.open(str(agd), "run7").manifest.num_records == 8000
        assert sum(1 for ln in (out / "run7.sam").read_text().splitlines() if not ln.startswith("@")) == 8000
        polls = s.service.triggers[0].polls
        s.wait_polls(polls + 3)
        assert len(s.rows()) == 2
    finally:
        s.close()
    # a restart sees the same inputs again: nothing runs twice (the request table remembers)
    s = Served(tmp_path, specs)
    try:
        s.wait_polls(4)
        assert len(s.rows()) == 2
        # a new pair still triggers
        shutil.copy(DATA / "sample_R1.fastq.gz", incoming / "run8_R1.fq.gz")
        shutil.copy(DATA / "sample_R2.fastq.gz", incoming / "run8_R2.fq.gz")
        rows = s.wait_done(4)
        assert sorted(r["kinds"] for r in rows) == ["export", "export", "import", "import"]
        text = s.service.metrics.text().decode()
        assert f'persona_triggered_requests_total{{input="fastq-pair",watch="{incoming}"}} 1.0' in text
    finally:
        s.close()


def test_serve_watch_outside_the_roots_is_not_submitted(tmp_path):
    pytest.importorskip("grpc")
    pytest.importorskip("prometheus_client")
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(DATA / "sample_R1.fastq.gz", elsewhere / "a_R1.fq.gz")
    shutil.copy(DATA / "sample_R2.fastq.gz", elsewhere / "a_R2.fq.gz")
    s = Served(root, [TriggerSpec(watch=str(elsewhere), then=("import",), output=str(root / "agd"),
                                  poll_seconds=0.1)])
    try:
        s.wait_polls(4)
        assert s.rows() == []
        text = s.service.metrics.text().decode()
        assert f'persona_trigger_errors_total{{watch="{elsewhere}"}} 1.0' in text  # logged once, not every poll
    finally:
        s.close()


def test_serve_watch_options_are_checked_before_serving(tmp_path, capsys, monkeypatch):
    from persona.cli import main

    db = str(tmp_path / "db")
    cases = [(["serve", "--then", "align"], "--then needs --watch"),
             (["serve", "--watch", str(tmp_path), "--output", str(tmp_path / "o")], "--watch needs --then"),
             (["serve", "--watch", str(tmp_path), "--then", "align,sort", "--output", str(tmp_path / "o")],
              "--then align needs a reference"),
             (["serve", "--watch", str(tmp_path), "--then", "frob"], "expected kinds"),
             (["serve", "--watch", str(tmp_path), "--then", "import"], "needs --output")]
    for argv, message in cases:
        assert main([*argv, "--db", db, "--listen", "127.0.0.1:0", "--metrics-listen", "none"]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "db").exists()  # nothing was started
    # the environment twins
    monkeypatch.setenv("PERSONA_WATCH", str(tmp_path))
    monkeypatch.setenv("PERSONA_THEN", "import,align")
    monkeypatch.setenv("PERSONA_WATCH_OUTPUT", str(tmp_path / "o"))
    assert main(["serve", "--db", db, "--listen", "127.0.0.1:0", "--metrics-listen", "none"]) == 1
    assert "--then align needs a reference" in capsys.readouterr().err
