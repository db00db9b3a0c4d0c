"""AGD datasets in a store: writer commit/abort, opening, reading, appending columns,
verification and manifest repair."""
from __future__ import annotations

import gzip
import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from persona.agd import (
    ALIGNMENT_DTYPE,
    Alignments,
    ChunkRef,
    CompressionType,
    Contig,
    Dataset,
    DatasetWriter,
    Manifest,
    RaggedArray,
    decode_chunk,
    manifest_key,
    repair_manifest,
    verify_dataset,
)
from persona.errors import ChunkFormatError, DatasetError, ManifestError
from persona.storage import MemoryStore, open_store

pytestmark = pytest.mark.native


def reads(first: int, n: int, length: int = 30) -> dict[str, list[bytes]]:
    """Deterministic paired-looking read columns for records [first, first+n)."""
    rng = np.random.default_rng(first)
    base = [bytes(rng.choice(list(b"ACGTN"), size=length - (i % 7)).tolist()) for i in range(n)]
    qual = [bytes(rng.integers(33, 74, size=len(b)).tolist()) for b in base]
    meta = [f"read{(first + i) // 2}/{(first + i) % 2 + 1}".encode() for i in range(n)]
    return {"base": base, "qual": qual, "metadata": meta}


def write_dataset(location: object, name: str = "ds", sizes: tuple[int, ...] = (10, 10, 5), **kw: object) -> Manifest:
    w = DatasetWriter(location, name, **kw)  # type: ignore[arg-type]
    first = 0
    for n in sizes:
        w.write_chunk(first, reads(first, n))
        first += n
    return w.commit()


def alignments(n: int, seed: int = 0) -> Alignments:
    rng = np.random.default_rng(seed)
    f = np.zeros(n, dtype=ALIGNMENT_DTYPE)
    f["flag"] = rng.choice([0, 4, 16, 99, 147], n)
    f["mapq"] = rng.integers(0, 61, n)
    f["ref_index"] = rng.integers(-1, 3, n)
    f["position"] = rng.integers(-1, 10**6, n)
    f["next_ref_index"] = rng.integers(-1, 3, n)
    f["next_position"] = rng.integers(-1, 10**6, n)
    f["template_length"] = rng.integers(-500, 500, n)
    return Alignments(f, RaggedArray.from_list([f"{rng.integers(1, 100)}M".encode() for _ in range(n)]))


# ---------------------------------------------------------------- write + open
@pytest.mark.parametrize("comp", ["zstd", "gzip", "uncompressed"])
def test_write_then_open_round_trip(tmp_path: Path, comp: str) -> None:
    m = write_dataset(tmp_path, compression=comp, paired=True, sizes=(10, 10, 6))  # whole pairs per chunk
    assert [(r.first, r.last, r.path) for r in m.records] == [(0, 10, "ds_0"), (10, 20, "ds_10"), (20, 26, "ds_20")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ds_metadata.json"] + [f"ds_{f}.{c}" for f in (0, 10, 20) for c in ("base", "qual", "metadata")]
    )
    ds = Dataset.open(tmp_path)
    assert (ds.name, ds.columns, ds.num_records, ds.paired, len(ds.chunks)) == (
        "ds", ["base", "qual", "metadata"], 26, True, 3)
    assert ds.manifest.sort == "queryname"
    for i, ref in enumerate(ds.chunks):
        got = ds.read_chunk(i)
        want = reads(ref.first, ref.num_records)
        assert {c: v.tolist() for c, v in got.items()} == want
    header, _ = decode_chunk((tmp_path / "ds_10.base").read_bytes(), "ds_10.base")
    assert ds.read_header(1, "base") == header
    assert header.compression == CompressionType.parse(comp)
    assert (header.first_ordinal, header.last_ordinal, header.string_id) == (10, 20, "ds")


def test_open_by_url_manifest_path_store_and_name(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    for loc in (tmp_path, str(tmp_path), f"file://{tmp_path}", tmp_path / "ds_metadata.json",
                f"file://{tmp_path}/ds_metadata.json", open_store(tmp_path)):
        assert Dataset.open(loc).num_records == 25  # type: ignore[arg-type]
    write_dataset(tmp_path, name="other", sizes=(3,))
    with pytest.raises(DatasetError, match="several datasets in one location .*ds, other"):
        Dataset.open(tmp_path)
    assert Dataset.open(tmp_path, name="other").num_records == 3
    with pytest.raises(DatasetError, match="is not that of dataset"):
        Dataset.open(tmp_path / "ds_metadata.json", name="other")


def test_memory_store_dataset() -> None:
    try:
        write_dataset("memory://agd-test-mem/sub", sizes=(4, 4))
        ds = Dataset.open("memory://agd-test-mem/sub")
        assert ds.num_records == 8 and ds.read_column(1, "metadata")[0] == b"read2/1"
    finally:
        MemoryStore.drop("agd-test-mem")


def test_dataset_without_manifest_is_never_complete(tmp_path: Path) -> None:
    w = DatasetWriter(tmp_path, "ds")
    w.write_chunk(0, reads(0, 5))
    with pytest.raises(ManifestError, match="no dataset manifest .* missing or incomplete"):
        Dataset.open(tmp_path)
    with pytest.raises(ManifestError, match="manifest not found") as e:
        Dataset.open(tmp_path, name="ds")
    assert e.value.context["key"] == "ds_metadata.json"
    w.commit()
    assert Dataset.open(tmp_path).num_records == 5


def test_manifest_is_written_last(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    order: list[str] = []
    real_put = store.put

    def put(key: str, data: bytes) -> None:
        order.append(key)
        real_put(key, data)

    store.put = put  # type: ignore[method-assign]
    write_dataset(store, sizes=(2, 2))
    # every chunk file is stored before the first manifest write; the second one only renames
    first = order.index("ds_metadata.json")
    assert order[-1] == "ds_metadata.json" and all(k.endswith("_metadata.json") or k.endswith("_writer.json")
                                                   for k in order[first:])
    assert len([k for k in order[:first] if "~" in k]) == 6  # 2 chunks x 3 columns, attempt-unique keys


def test_abort_deletes_chunks(tmp_path: Path) -> None:
    (tmp_path / "unrelated.txt").write_text("keep me")
    w = DatasetWriter(tmp_path, "ds")
    w.write_chunk(0, reads(0, 5))
    w.write_chunk(5, reads(5, 5))
    w.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["unrelated.txt"]
    with pytest.raises(DatasetError, match="already aborted"):
        w.write_chunk(10, reads(10, 1))
    w.abort()  # idempotent


def test_context_manager_aborts_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(tmp_path, "ds") as w:
            w.write_chunk(0, reads(0, 5))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with DatasetWriter(tmp_path, "ds") as w:
        w.write_chunk(0, reads(0, 5))
        w.commit()
    assert Dataset.open(tmp_path).num_records == 5


def test_writer_checks(tmp_path: Path) -> None:
    w = DatasetWriter(tmp_path, "ds")
    with pytest.raises(DatasetError, match="has columns .* expected"):
        w.write_chunk(0, {"base": [b"A"], "qual": [b"I"]})
    with pytest.raises(DatasetError, match="differ in record count"):
        w.write_chunk(0, {"base": [b"A"], "qual": [b"I"], "metadata": [b"a", b"b"]})
    with pytest.raises(ValueError, match="record 0: invalid base 'Z'"):
        w.write_chunk(0, {"base": [b"Z"], "qual": [b"I"], "metadata": [b"a"]})
    w.write_chunk(0, reads(0, 5))
    with pytest.raises(DatasetError, match="written twice"):
        w.write_chunk(0, reads(0, 5))
    w.write_chunk(10, reads(10, 5))
    with pytest.raises(DatasetError, match="gap at record 5"):
        w.commit()
    w.write_chunk(5, reads(5, 6))
    with pytest.raises(DatasetError, match="overlap at record 11"):
        w.commit()
    w.abort()
    write_dataset(tmp_path)
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(tmp_path, "ds")
    assert write_dataset(tmp_path, sizes=(1,), overwrite=True).num_records == 1


def test_parallel_writes_out_of_order(tmp_path: Path) -> None:
    w = DatasetWriter(tmp_path, "ds", compression="gzip")
    firsts = list(range(0, 200, 20))[::-1]
    threads = [threading.Thread(target=w.write_chunk, args=(f, reads(f, 20))) for f in firsts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = w.commit(sort="coordinate", extra={"ceph_pool": "p"})
    assert [r.first for r in m.records] == list(range(0, 200, 20))
    ds = Dataset.open(tmp_path)
    assert ds.manifest.sort == "coordinate" and ds.manifest.extra == {"ceph_pool": "p"}
    assert ds.read_column(9, "metadata").tolist() == reads(180, 20)["metadata"]


def test_empty_dataset(tmp_path: Path) -> None:
    m = DatasetWriter(tmp_path, "empty").commit()
    assert m.records == [] and Dataset.open(tmp_path).num_records == 0


# ---------------------------------------------------------------- reading
@pytest.mark.parametrize("comp", ["uncompressed", "zstd"])
def test_read_record_random_access(tmp_path: Path, comp: str) -> None:
    write_dataset(tmp_path, compression=comp)
    ds = Dataset.open(tmp_path)
    ds.write_column_chunk(1, "results", alignments(10, 1))
    for i in (0, 2):
        ds.write_column_chunk(i, "results", alignments(ds.chunks[i].num_records, i))
    ds.commit_columns(["results"])
    for ci, ref in enumerate(ds.chunks):
        cols = ds.read_chunk(ci)
        for i in range(ref.num_records):
            for c in ("base", "qual", "metadata"):
                assert ds.read_record(ci, c, i) == cols[c][i]
            one = ds.read_record(ci, "results", i)
            assert isinstance(one, Alignments) and len(one) == 1
            assert one.fields[0] == cols["results"].fields[i] and one.cigars[0] == cols["results"].cigars[i]
    with pytest.raises(IndexError, match="record 10 out of range"):
        ds.read_record(0, "base", 10)
    assert ds.chunk_of(0) == 0 and ds.chunk_of(19) == 1 and ds.chunk_of(24) == 2
    with pytest.raises(IndexError):
        ds.chunk_of(25)


def _drop_checksums(path: Path, name: str = "ds") -> None:
    """Remove the manifest's checksums (as in datasets written by the original), so that the
    checks behind them are reached."""
    f = path / f"{name}_metadata.json"
    m = json.loads(f.read_text())
    for r in m["records"]:
        r.pop("checksums", None)
    f.write_text(json.dumps(m))


def test_header_ordinals_must_match_manifest(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / "ds_10.qual").write_bytes((tmp_path / "ds_0.qual").read_bytes())
    ds = Dataset.open(tmp_path)
    with pytest.raises(ChunkFormatError, match=r"checksum mismatch.*ds_10\.qual"):
        ds.read_column(1, "qual")
    _drop_checksums(tmp_path)
    ds = Dataset.open(tmp_path)
    with pytest.raises(ChunkFormatError,
                       match=r"header holds records \[0, 10\) .* but the manifest says chunk 'ds_10' holds \[10, 20\)") as e:
        ds.read_column(1, "qual")
    assert e.value.context["key"] == "ds_10.qual"
    with pytest.raises(DatasetError, match="has no column 'results'"):
        ds.read_column(0, "results")


# ---------------------------------------------------------------- appending columns
def test_append_column_and_manifest_updates(tmp_path: Path) -> None:
    write_dataset(tmp_path, compression="gzip")
    ds = Dataset.open(tmp_path)
    assert ds.compression is CompressionType.GZIP  # new columns follow the dataset's compression
    values = [alignments(r.num_records, i) for i, r in enumerate(ds.chunks)]
    ds.write_column_chunk(0, "results", values[0])
    with pytest.raises(DatasetError, match="2 chunk files missing: ds_10.results, ds_20.results"):
        ds.commit_columns(["results"])
    assert Dataset.open(tmp_path).columns == ["base", "qual", "metadata"]  # not visible yet
    with pytest.raises(DatasetError, match="has 3 records but chunk ds_10 holds 10"):
        ds.write_column_chunk(1, "results", alignments(3))
    for i in (1, 2):
        ds.write_column_chunk(i, "results", values[i])
    contigs = [Contig("chr1", 1000, 0), {"name": "chr2", "length": 500, "index": 1}]
    m = ds.commit_columns(["results"], reference="/ref/idx", reference_contigs=contigs, sort="queryname")
    assert m.reference_contigs == [Contig("chr1", 1000, 0), Contig("chr2", 500, 1)]
    ds2 = Dataset.open(tmp_path)
    assert ds2.columns == ["base", "qual", "metadata", "results"] and ds2.manifest.reference == "/ref/idx"
    for i in range(3):
        assert ds2.read_column(i, "results") == values[i]
    assert decode_chunk((tmp_path / "ds_0.results").read_bytes())[0].compression is CompressionType.GZIP
    with pytest.raises(TypeError):
        ds2.commit_columns([], no_such_field=1)


# ---------------------------------------------------------------- manifest
def test_manifest_json_round_trip_keeps_unknown_keys() -> None:
    raw = json.dumps({
        "name": "ds", "version": 1, "columns": ["base", "qual"],
        "records": [{"first": 5, "last": 9, "path": "ds_5"}, {"first": 0, "last": 5, "path": "ds_0"}],
        "ceph_pool": "pool", "namespace": "ns", "sort": "coordinate",
        "reference_contigs": [{"name": "c", "length": 3, "index": 0}],
    })
    m = Manifest.from_json(raw)
    assert [r.first for r in m.records] == [0, 5] and m.num_records == 9
    assert m.extra == {"ceph_pool": "pool", "namespace": "ns"} and m.paired is None and m.reference is None
    back = json.loads(m.to_json())
    assert back["ceph_pool"] == "pool" and back["namespace"] == "ns" and "paired" not in back
    assert list(back)[:4] == ["name", "version", "records", "columns"]
    assert Manifest.from_json(m.to_json()) == m
    assert manifest_key("x") == "x_metadata.json" and ChunkRef(0, 3, "x_0").key("base") == "x_0.base"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
        ('{"columns": [], "records": []}', "lacks 'name'"),
        ('{"name": "d", "records": []}', "lacks 'columns'"),
        ('{"name": "d", "columns": ["a", "a"], "records": []}', "lists a column twice"),
        ('{"name": "d", "columns": [], "records": [{"first": 0, "last": 1}]}', "lacks records\\[0\\].'path'"),
        ('{"name": "d", "columns": [], "records": [{"first": 3, "last": 1, "path": "p"}]}', "invalid range"),
        ('{"name": "d", "columns": [], "records": [{"first": "0", "last": 1, "path": "p"}]}', "wrong type str"),
        ('{"name": "d", "columns": [], "records": [{"first": 0, "last": 5, "path": "a"}, '
         '{"first": 4, "last": 6, "path": "b"}]}', "overlap"),
        ('{"name": "d", "version": 2, "columns": [], "records": []}', "unsupported manifest version 2"),
        ('{"name": "d", "columns": [], "records": [], "paired": "yes"}', "'paired' must be true or false"),
    ],
)
def test_manifest_errors(obj: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as e:
        Manifest.from_json(obj, key="d_metadata.json")
    assert e.value.context["key"] == "d_metadata.json"


# ---------------------------------------------------------------- verify + repair
def test_verify_clean_and_broken(tmp_path: Path) -> None:
    write_dataset(tmp_path, compression="zstd")
    ds = Dataset.open(tmp_path)
    report = verify_dataset(ds)
    assert report.ok and (report.chunks_checked, report.files_checked, report.records) == (3, 9, 25)
    raw = bytearray((tmp_path / "ds_10.qual").read_bytes())
    (tmp_path / "ds_10.qual").write_bytes(bytes(raw[:-4]))
    (tmp_path / "ds_20.metadata").unlink()
    (tmp_path / "ds_0.metadata").write_bytes((tmp_path / "ds_0.base").read_bytes())  # wrong record type
    (tmp_path / "ds_0.base").write_bytes((tmp_path / "ds_0.qual").read_bytes())  # qualities as text bases
    report = verify_dataset(ds)
    assert not report.ok and any("checksum mismatch" in p.message for p in report.problems)
    _drop_checksums(tmp_path)
    ds = Dataset.open(tmp_path)
    report = verify_dataset(ds)
    assert not report.ok
    by_key = {p.key: p.message for p in report.problems}
    assert set(by_key) == {"ds_10.qual", "ds_20.metadata", "ds_0.base", "ds_0.metadata"}
    assert "zstd payload" in by_key["ds_10.qual"] and "key not found" in by_key["ds_20.metadata"]
    assert "record type TEXT, expected COMPACTED_BASES for 'base'" in by_key["ds_0.base"]
    assert "record type COMPACTED_BASES, expected TEXT for 'metadata'" in by_key["ds_0.metadata"]
    assert "ds_10.qual" in str(report)


def test_verify_catches_bad_bases(tmp_path: Path) -> None:
    from persona.agd import encode_chunk

    write_dataset(tmp_path, sizes=(2,))
    bad = RaggedArray.from_list([(5 | 7 << 3).to_bytes(8, "little"), (7).to_bytes(8, "little")])  # code 5
    (tmp_path / "ds_0.base").write_bytes(encode_chunk(bad, record_type=2, first_ordinal=0, name="ds"))
    _drop_checksums(tmp_path)
    report = verify_dataset(Dataset.open(tmp_path))
    assert [(p.key, "invalid base code 5" in p.message) for p in report.problems] == [("ds_0.base", True)]


def test_repair_lost_manifest(tmp_path: Path) -> None:
    original = write_dataset(tmp_path, paired=True, sizes=(10, 10, 6))
    ds = Dataset.open(tmp_path)
    for i, r in enumerate(ds.chunks):
        ds.write_column_chunk(i, "results", alignments(r.num_records))
    ds.write_column_chunk(0, "secondary0", alignments(10))  # incomplete column: left out
    ds.commit_columns(["results"])
    (tmp_path / "ds_metadata.json").unlink()
    m = repair_manifest(tmp_path)
    assert m.columns == ["base", "qual", "metadata", "results"]
    assert m.records == original.records and m.paired is True and m.sort is None
    assert Dataset.open(tmp_path).read_column(2, "metadata") == ds.read_column(2, "metadata")

    single = tmp_path / "single"
    w = DatasetWriter(single, "my_ds_1")
    w.write_chunk(0, {"base": [b"A", b"C", b"G"], "qual": [b"I"] * 3, "metadata": [b"a", b"b", b"c"]})
    w.commit()
    (single / "my_ds_1_metadata.json").unlink()
    m = repair_manifest(str(single))
    assert (m.name, m.paired, m.num_records) == ("my_ds_1", False, 3)
    with pytest.raises(DatasetError, match="no AGD chunk files"):
        repair_manifest(tmp_path / "nothing-here")


def test_repair_refuses_holes(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    for p in tmp_path.glob("ds_10.*"):
        p.unlink()
    (tmp_path / "ds_metadata.json").unlink()
    with pytest.raises(DatasetError, match=r"records \[10, 20\) missing"):
        repair_manifest(tmp_path)


# ---------------------------------------------------------------- real data
def _fastq(path: Path, n: int) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    with gzip.open(path, "rb") as f:
        for head, seq, _, qual in itertools.islice(zip(f, f, f, f), n):
            out.append((head[1:].rstrip(b"\n"), seq.rstrip(b"\n"), qual.rstrip(b"\n")))
    return out


@pytest.mark.small_data
def test_real_measles_reads_round_trip(tmp_path: Path, measles: dict[str, Path]) -> None:
    r1, r2 = _fastq(measles["r1"], 1500), _fastq(measles["r2"], 1500)
    recs = [r for pair in zip(r1, r2) for r in pair]  # interleaved, as paired import writes them
    w = DatasetWriter(tmp_path, "measles", paired=True)
    size = 1000
    for first in range(0, len(recs), size):
        part = recs[first : first + size]
        w.write_chunk(first, {"base": [r[1] for r in part], "qual": [r[2] for r in part],
                              "metadata": [r[0] for r in part]})
    w.commit()
    ds = Dataset.open(tmp_path)
    assert ds.num_records == 3000 and ds.paired
    got = [rec for _, cols in ds.iter_chunks() for rec in zip(cols["metadata"], cols["base"], cols["qual"])]
    assert got == [(m, b.upper(), q) for m, b, q in recs]
    assert verify_dataset(ds).ok
    text_bytes = sum(len(r[1]) for r in recs)
    base_bytes = sum((tmp_path / f"measles_{f}.base").stat().st_size for f in range(0, 3000, 1000))
    assert base_bytes < text_bytes / 3  # 3-bit packing + zstd
