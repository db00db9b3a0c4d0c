"""Column transactions and writer claims (persona.agd.transaction): the integrity mechanism."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from persona.agd import Dataset, DatasetWriter, RaggedArray
from persona.agd.manifest import manifest_key
from persona.agd.transaction import (
    Transaction,
    WriterClaim,
    claim_key,
    collect_garbage,
    unreferenced_keys,
)
from persona.errors import ChunkFormatError, ConcurrentWriteError, DatasetBusyError, DatasetError
from persona.storage import MemoryStore, open_store


def _reads(n: int, tag: str) -> dict[str, RaggedArray]:
    return {"base": RaggedArray.from_list([b"ACGT" * 3] * n),
            "qual": RaggedArray.from_list([b"IIIIIIIIIIII"] * n),
            "metadata": RaggedArray.from_list([f"{tag}{i}".encode() for i in range(n)])}


def _write(store, name: str, tag: str = "r", chunks: int = 3, n: int = 5, **kw) -> DatasetWriter:
    w = DatasetWriter(store, name, **kw)
    for c in range(chunks):
        w.write_chunk(c * n, _reads(n, f"{tag}{c}_"))
    return w


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path: Path):
    if request.param == "file":
        return open_store(str(tmp_path / "store"))
    st = MemoryStore()
    return st


def _names(ds: Dataset) -> list[bytes]:
    return [bytes(x) for i in range(len(ds.chunks)) for x in ds.read_column(i, "metadata")]


def test_new_dataset_commit_records_checksums_and_generation(store) -> None:
    m = _write(store, "ds").commit()
    assert m.generation == 2  # the commit, then the second one giving the files their original names
    assert all(set(r.checksums) == {"base", "qual", "metadata"} for r in m.records)
    assert all(v.startswith("crc32:") for r in m.records for v in r.checksums.values())
    # original names after commit (file and memory stores copy cheaply)
    assert sorted(k for k in store.list("ds_") if not k.endswith(".json")) == sorted(
        f"ds_{f}.{c}" for f in (0, 5, 10) for c in ("base", "qual", "metadata"))
    assert not store.exists(claim_key("ds"))  # claim released
    ds = Dataset.open(store, "ds")
    assert _names(ds)[:2] == [b"r0_0", b"r0_1"]


def test_abort_removes_only_this_attempt(store) -> None:
    _write(store, "ds").commit()
    before = sorted(store.list())
    w = _write(store, "ds", tag="x", overwrite=True)
    assert any("~" in k for k in store.list("ds_"))  # attempt files are there
    w.abort()
    assert sorted(store.list()) == before
    assert _names(Dataset.open(store, "ds"))[0] == b"r0_0"


def test_second_writer_fails_at_once_naming_holder(store) -> None:
    w = _write(store, "ds")
    with pytest.raises(DatasetBusyError, match=r"being written by write \(attempt .*pid %d" % os.getpid()):
        DatasetWriter(store, "ds")
    w.commit()
    _write(store, "ds", overwrite=True).commit()  # free again


def test_concurrent_writers_one_wins_never_mixed(tmp_path: Path) -> None:
    """Many threads import the same name at once: exactly one commits; the dataset is one input's."""
    loc = str(tmp_path / "race")
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def writer(t: int) -> None:
        barrier.wait()
        try:
            w = _write(loc, "ds", tag=f"t{t}_", chunks=4, n=7)
            time.sleep(0.01)
            w.commit()
            outcomes.append(f"won{t}")
        except (DatasetBusyError, DatasetError) as e:
            outcomes.append(type(e).__name__)

    ts = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) >= 1
    names = _names(Dataset.open(loc, "ds"))
    tags = {n.split(b"_")[0] for n in names}
    assert len(tags) == 1, tags  # one input only
    assert len(names) == 28
    # losers left nothing behind
    assert unreferenced_keys(open_store(loc), "ds", Dataset.open(loc, "ds").manifest) == []


def test_column_rewrite_keeps_old_until_commit(store) -> None:
    _write(store, "ds").commit()
    ds = Dataset.open(store, "ds")
    for i in range(len(ds.chunks)):
        ds.write_column_chunk(i, "extra", RaggedArray.from_list([b"one"] * ds.chunks[i].num_records))
    ds.commit_columns(["extra"])
    old = [ds.store.get(ds.chunk_key(i, "extra")) for i in range(3)]
    # rewrite, interrupted: the old column stays readable and unchanged
    ds2 = Dataset.open(store, "ds")
    ds2.write_column_chunk(0, "extra", RaggedArray.from_list([b"two"] * 5))
    ds2.abort_columns()
    ds3 = Dataset.open(store, "ds")
    assert [ds3.store.get(ds3.chunk_key(i, "extra")) for i in range(3)] == old
    assert bytes(ds3.read_column(0, "extra")[0]) == b"one"
    # rewrite, committed: new values, generation bumped, old files gone
    for i in range(3):
        ds3.write_column_chunk(i, "extra", RaggedArray.from_list([b"two"] * 5))
    m = ds3.commit_columns(["extra"])
    assert m.generation >= 3
    assert bytes(Dataset.open(store, "ds").read_column(2, "extra")[4]) == b"two"
    assert unreferenced_keys(store, "ds", m) == []


def test_commit_refused_when_claim_was_broken(store) -> None:
    _write(store, "ds").commit()
    txn = Transaction(store, "ds", app="t", new=False).begin()
    txn.put_column_file(0, "x", b"data")
    # someone broke our claim (as a recoverer would for a dead holder) and committed
    store.delete(claim_key("ds"))
    other = Transaction(store, "ds", app="other", new=False).begin()
    other.commit([], extra={"by": "other"})
    with pytest.raises(ConcurrentWriteError):
        txn.commit([])
    txn.abort()
    assert Dataset.open(store, "ds").manifest.extra.get("by") == "other"


def test_stale_claim_of_dead_process_is_recovered(tmp_path: Path) -> None:
    loc = str(tmp_path / "s")
    store = open_store(loc)
    _write(store, "ds").commit()
    # a claim whose process is gone, plus its half-written attempt file
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    import socket

    store.put(claim_key("ds"), json.dumps({"app": "align", "attempt": "deadbeef0000", "host": socket.gethostname(),
                                           "pid": dead, "since": time.time(), "expires": time.time() + 600}).encode())
    store.put("ds_0~deadbeef0000.results", b"partial")
    ds = Dataset.open(store, "ds")
    ds.write_column_chunk(0, "extra", RaggedArray.from_list([b"e"] * 5))  # claims: breaks the stale one
    assert not store.exists("ds_0~deadbeef0000.results")  # dead attempt's leftovers collected
    for i in (1, 2):
        ds.write_column_chunk(i, "extra", RaggedArray.from_list([b"e"] * 5))
    ds.commit_columns(["extra"])
    assert not store.exists(claim_key("ds"))
    assert not [k for k in store.list("ds_writer")]


def test_expired_lease_is_recovered_live_one_is_not(store) -> None:
    _write(store, "ds").commit()
    body = {"app": "align", "attempt": "feedface0000", "host": "elsewhere", "pid": 1, "since": time.time()}
    store.put(claim_key("ds"), json.dumps({**body, "expires": time.time() + 600}).encode())
    with pytest.raises(DatasetBusyError, match="align .*elsewhere"):
        Transaction(store, "ds", app="t", new=False).begin()
    store.put(claim_key("ds"), json.dumps({**body, "expires": time.time() - 1}).encode())
    Transaction(store, "ds", app="t", new=False).begin().abort()


def test_claim_is_renewed_while_held(store) -> None:
    claim = WriterClaim(store, "ds", app="t", attempt="a1", ttl=0.3)
    claim.acquire()
    first = json.loads(store.get(claim_key("ds")))["expires"]
    time.sleep(0.5)
    later = json.loads(store.get(claim_key("ds")))["expires"]
    claim.release()
    assert later > first
    assert not store.exists(claim_key("ds"))


def test_checksum_mismatch_is_detected_on_read(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    _write(str(loc), "ds", compression="none").commit()
    f = loc / "ds_5.qual"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01  # one bit in a quality: 'none' compression has no codec check of its own
    f.write_bytes(bytes(data))
    ds = Dataset.open(str(loc))
    with pytest.raises(ChunkFormatError, match=r"checksum mismatch.*ds_5\.qual"):
        ds.read_column(1, "qual")
    ds.read_column(0, "qual")  # others fine


def test_gc_removes_leftovers_not_committed_files(store) -> None:
    _write(store, "ds").commit()
    store.put("ds_0~0123456789ab.results", b"x")
    store.put("ds_5.orphan", b"y")
    store.put("other_0.base", b"z")  # another dataset's: untouched
    removed = collect_garbage(store, "ds")
    assert sorted(removed) == ["ds_0~0123456789ab.results", "ds_5.orphan"]
    assert store.exists("other_0.base")
    assert _names(Dataset.open(store, "ds"))


def test_gc_refuses_while_a_writer_runs(store) -> None:
    w = _write(store, "ds")
    with pytest.raises(DatasetBusyError):
        collect_garbage(store, "ds")
    w.commit()


def test_retried_attempt_never_duplicates(store) -> None:
    """A first attempt dies mid-write (its files stay); the retry commits only its own chunks."""
    w1 = _write(store, "ds", tag="a", chunks=2)
    w1.txn.claim.release()  # the process 'died': the claim is free, the files stay behind
    w1.txn.claim._stop.set()
    w2 = _write(store, "ds", tag="b", chunks=3)  # new attempt id; collects the dead attempt's files
    m = w2.commit()
    assert m.num_records == 15
    names = _names(Dataset.open(store, "ds"))
    assert all(n.startswith(b"b") for n in names) and len(names) == 15
    assert unreferenced_keys(store, "ds", m) == []


def test_manifest_written_last_and_atomically(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    w = _write(str(loc), "ds")
    assert not (loc / manifest_key("ds")).exists()
    w.commit()
    assert json.loads((loc / manifest_key("ds")).read_text())["generation"] == 2  # renamed: second commit


def test_original_names_restored_on_stores_without_cheap_copies() -> None:
    """An object-store-like backend: rewritten columns keep attempt keys until gc --original-names."""
    from persona.agd.transaction import original_names

    store = MemoryStore()
    store.cheap_copy = False  # behave like S3/RADOS: no renames at commit
    _write(store, "ds").commit()
    ds = Dataset.open(store, "ds")
    assert all("~" in ds.chunk_key(i, "base") for i in range(3))
    m = original_names(store, "ds")
    assert [m.records[i].key("base") for i in range(3)] == ["ds_0.base", "ds_5.base", "ds_10.base"]
    assert not [k for k in store.list("ds_") if "~" in k]
    assert _names(Dataset.open(store, "ds"))[0] == b"r0_0"


def test_next_writer_and_gc_remove_what_killed_puts_left_staged(tmp_path: Path) -> None:
    """A writer killed inside a put leaves the staged bytes (a file store's hidden temporary file);
    the next writer of the dataset removes those of its chunk files and manifest, not another's."""
    from test_storage_file import killed_put

    root = tmp_path / "store"
    store = open_store(str(root))
    _write(store, "ds").commit()
    for key in ("ds_5~0123456789ab.base", manifest_key("ds"), "ds_sorted_0.base", "dsx_0.base"):
        killed_put(root, key)

    def staged() -> set[str]:
        return {p.name[len(".persona-tmp-"):].rsplit(".", 1)[0] for p in root.iterdir()
                if p.name.startswith(".persona-tmp-")}

    assert staged() == {"ds_5~0123456789ab.base", manifest_key("ds"), "ds_sorted_0.base", "dsx_0.base"}
    assert sorted(collect_garbage(store, "ds")) == sorted(["ds_5~0123456789ab.base", manifest_key("ds")])
    assert staged() == {"ds_sorted_0.base", "dsx_0.base"}
    killed_put(root, "ds_7~0123456789ab.qual")
    _write(store, "ds", tag="b", overwrite=True).commit()  # a new writer's begin clears it too
    assert staged() == {"ds_sorted_0.base", "dsx_0.base"}
    assert _names(Dataset.open(store, "ds"))[0].startswith(b"b")


def test_split_step_commit_removes_staged_files_of_losing_attempts_only(tmp_path: Path) -> None:
    """The coordinator's commit of a split step keeps the winning attempts' files; what a killed
    worker's put of a losing attempt left staged goes, at the commit and with the attempt's files."""
    from persona.service.coordinator import PartitionedColumns, delete_attempt_files
    from test_storage_file import killed_put

    root = tmp_path / "store"
    store = open_store(str(root))
    _write(store, "ds").commit()
    killed_put(root, "ds_0~aaaaaaaaaaaa.results")  # a lost worker's attempt
    killed_put(root, "ds_5~bbbbbbbbbbbb.results")  # another lost one, removed with its attempt's files
    store.put("ds_0~cccccccccccc.results", b"the winner's")

    def staged() -> list[str]:
        return sorted(p.name[len(".persona-tmp-"):].rsplit(".", 1)[0] for p in root.iterdir()
                      if p.name.startswith(".persona-tmp-"))

    assert delete_attempt_files(store, "ds", None, {"bbbbbbbbbbbb"}) == 1
    assert staged() == ["ds_0~aaaaaaaaaaaa.results"]
    txn = PartitionedColumns(store, "ds", app="align", new=False, keep=("cccccccccccc",)).begin()
    try:
        assert staged() == [] and store.exists("ds_0~cccccccccccc.results")
    finally:
        txn.abort()
