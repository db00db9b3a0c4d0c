"""The Runtime and the app contract: requests as plain data, jobs in long-lived pipelines,
concurrent mixed requests byte-identical to running alone, failures and cancels isolated."""
from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import threading
from pathlib import Path

import pytest

from persona.agd import Dataset
from persona.align.reference import add_reference
from persona.apps.align import AlignRequest
from persona.apps.demo import sample_files
from persona.apps.export import ExportRequest
from persona.apps.importer import ImportRequest
from persona.apps.job import request_from_dict
from persona.apps.stats import StatsRequest
from persona.errors import BatchCancelled, InputFormatError, PersonaError, PipelineError
from persona.runtime import Runtime, thread_budget


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runtime")
    files = sample_files()
    add_reference("measles", files["reference"], tmp / "refs")
    return {"tmp": tmp, "refs": tmp / "refs", **files}


def _import(sample, rt: Runtime, where: str, chunk: int = 500) -> Path:
    loc = sample["tmp"] / where
    rt.run(ImportRequest(inputs=(str(sample["r1"]), str(sample["r2"])), output=str(loc), name="s",
                         chunk_size=chunk))
    return loc


def _files(loc: Path) -> dict[str, bytes]:
    ds = Dataset.open(loc)
    return {f"{i}.{c}": ds.read_file(i, c) for i in range(len(ds.chunks)) for c in ds.columns}


def test_requests_round_trip_as_plain_data(sample) -> None:
    reqs = [ImportRequest(inputs=("a.fq", "b.fq"), output="/x", name="n", chunk_size=5),
            AlignRequest(dataset="/x", reference="r", secondary=2, replicas={"align": 3}),
            ExportRequest(dataset="/x", output="-", format="bam", read_group={"ID": "a"}),
            StatsRequest(dataset="/x")]
    for r in reqs:
        d = r.to_dict()
        assert json.loads(json.dumps(d)) == d  # JSON-serialisable
        assert request_from_dict(d) == r
    with pytest.raises(PersonaError, match="unknown request kind"):
        request_from_dict({"kind": "nope"})
    with pytest.raises(PersonaError, match="unknown fields"):
        request_from_dict({"kind": "stats", "dataset": "x", "bogus": 1})


def test_config_defaults_fill_requests_in_one_place(sample) -> None:
    from persona.config import load_config

    cfg = load_config(overrides={"align.work_item_reads": 777, "agd.chunk_size": 1234})
    r = AlignRequest(dataset="/x", reference="r").resolved(cfg)
    assert r.work_item_reads == 777 and r.aligner == "minimap2" and r.preset == "sr"
    i = ImportRequest(inputs=(str(sample["r1"]),), output="/x").resolved(cfg)
    assert i.chunk_size == 1234 and i.compression == "zstd" and i.name


def test_thread_budget_follows_affinity() -> None:
    import os

    assert thread_budget(3) == 3
    assert 1 <= thread_budget(0) <= len(os.sched_getaffinity(0))


def test_one_pipeline_per_kind_shared_by_requests(sample) -> None:
    with Runtime(threads=2) as rt:
        a = _import(sample, rt, "p1")
        b = _import(sample, rt, "p2")
        assert _files(a) == _files(b)
        assert len([k for k in rt._pipelines if (k[0] if isinstance(k, tuple) else k) == "import"]) == 1
        rt.run(AlignRequest(dataset=str(a), reference="measles", references_url=str(sample["refs"])))
        rt.run(AlignRequest(dataset=str(b), reference="measles", references_url=str(sample["refs"])))
        ex = rt.executor
        assert ex is rt.executor  # one aligner pool for every request
        assert _files(a) == _files(b)
        stats = rt.run(StatsRequest(dataset=str(a))).stats
        assert stats.total == 8000 and stats.mapped > 7800


def test_mixed_concurrent_requests_identical_to_alone_with_failure_and_cancel(sample, tmp_path: Path) -> None:
    """import, align and export at once on one runtime, with one request failing and one cancelled:
    every survivor's output is byte-identical to running it alone."""
    refs = str(sample["refs"])
    with Runtime(threads=2) as rt:
        # alone
        base = _import(sample, rt, "alone_imp")
        aligned = tmp_path / "alone_aln"
        shutil.copytree(base, aligned)
        rt.run(AlignRequest(dataset=str(aligned), reference="measles", references_url=refs))
        rt.run(ExportRequest(dataset=str(aligned), output=str(tmp_path / "alone.sam"), command_line="x"))
        alone_import, alone_align = _files(base), _files(aligned)
        alone_sam = (tmp_path / "alone.sam").read_bytes()
        # a bad FASTQ: fails in its third chunk
        bad = tmp_path / "bad.fq"
        lines = gzip.open(sample["r1"], "rt").read().splitlines()[:8000]
        lines[4 * 1100 + 1] = "ACGT!"  # record 1101 has a bad base and a length mismatch
        bad.write_text("\n".join(lines) + "\n")
        # together
        aln2 = tmp_path / "aln2"
        shutil.copytree(base, aln2)
        aln3 = tmp_path / "aln3"
        shutil.copytree(base, aln3)
        before3 = _files(aln3)
        handles = {
            "import": rt.submit(ImportRequest(inputs=(str(sample["r1"]), str(sample["r2"])),
                                              output=str(tmp_path / "imp2"), name="s", chunk_size=500)),
            "align": rt.submit(AlignRequest(dataset=str(aln2), reference="measles", references_url=refs)),
            "export": rt.submit(ExportRequest(dataset=str(aligned), output=str(tmp_path / "two.sam"),
                                              command_line="x")),
            "bad": rt.submit(ImportRequest(inputs=(str(bad),), output=str(tmp_path / "bad"), chunk_size=500)),
            "cancel": rt.submit(AlignRequest(dataset=str(aln3), reference="measles", references_url=refs,
                                             work_item_reads=10)),
        }
        handles["cancel"].cancel()
        with pytest.raises(InputFormatError, match="bad.fq:4402"):
            handles["bad"].result(timeout=120)
        with pytest.raises(BatchCancelled):
            handles["cancel"].result(timeout=120)
        for k in ("import", "align", "export"):
            handles[k].result(timeout=300)
        assert _files(tmp_path / "imp2") == alone_import
        assert _files(aln2) == alone_align
        assert (tmp_path / "two.sam").read_bytes() == alone_sam
        assert _files(aln3) == before3  # the cancelled align left the dataset as it was
        assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())
        rt.drain(timeout=60)
        for p in rt._pipelines.values():
            assert p.stats()["batches"] == {}


def test_done_callback_lets_asyncio_await_without_a_thread(sample) -> None:
    async def main(rt: Runtime) -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        h = rt.submit(StatsRequest(dataset=str(_import(sample, rt, "cb"))))
        h.add_done_callback(lambda handle: loop.call_soon_threadsafe(fut.set_result, handle.state))
        return await asyncio.wait_for(fut, 60)

    with Runtime(threads=1) as rt:
        with pytest.raises(PersonaError):  # stats of an unaligned dataset fails at planning
            asyncio.run(main(rt))
        loc = _import(sample, rt, "cb2")
        rt.run(AlignRequest(dataset=str(loc), reference="measles", references_url=str(sample["refs"])))

        async def ok() -> str:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future = loop.create_future()
            h = rt.submit(StatsRequest(dataset=str(loc)))
            h.add_done_callback(lambda handle: loop.call_soon_threadsafe(fut.set_result, handle.state))
            return await asyncio.wait_for(fut, 60)

        assert asyncio.run(ok()) == "done"


def test_stop_is_idempotent_and_refuses_new_requests(sample) -> None:
    rt = Runtime(threads=1)
    assert rt.start() is rt.start() is rt
    rt.stop()
    rt.stop()
    with pytest.raises(PipelineError):
        rt.start()
    with pytest.raises(PipelineError, match="stopped|no new requests"):
        rt.submit(StatsRequest(dataset=str(sample["tmp"])))


def test_provenance_recorded_and_exported_as_pg_chain(sample, tmp_path: Path) -> None:
    with Runtime(threads=2) as rt:
        loc = _import(sample, rt, "prov")
        rt.run(AlignRequest(dataset=str(loc), reference="measles", references_url=str(sample["refs"])))
        m = Dataset.open(loc).manifest
        assert [p["app"] for p in m.provenance] == ["import", "align"]
        imp, aln = m.provenance
        assert imp["inputs"][0]["size"] > 0 and imp["persona_version"]
        assert aln["aligner"] == "minimap2" and aln["reference"]["name"] == "measles"
        assert aln["reference"]["checksum"]
        rt.run(ExportRequest(dataset=str(loc), output=str(tmp_path / "o.sam"), command_line="persona export"))
    pg = [ln for ln in (tmp_path / "o.sam").read_text().splitlines() if ln.startswith("@PG")]
    ids = [dict(f.split(":", 1) for f in ln.split("\t")[1:])["ID"] for ln in pg]
    assert ids[0] == "persona-import" and "minimap2" in ids and ids[-1] == "persona"
    for prev, line in zip(ids, pg[1:]):
        assert f"PP:{prev}" in line


def test_sigterm_handler_drains(sample) -> None:
    import signal

    rt = Runtime(threads=1)
    old = signal.getsignal(signal.SIGTERM)
    try:
        rt.install_signal_handlers()
        loc = _import(sample, rt, "term")
        h = rt.submit(AlignRequest(dataset=str(loc), reference="measles", references_url=str(sample["refs"])))
        signal.raise_signal(signal.SIGTERM)
        h.result(timeout=120)  # the running request finishes
        for _ in range(200):
            if rt.state == "stopped":
                break
            threading.Event().wait(0.05)
        assert rt.state == "stopped"
        assert "results" in Dataset.open(loc).columns
    finally:
        signal.signal(signal.SIGTERM, old)
        rt.stop()
