"""FASTQ import into AGD and export back (persona.apps.import_fastq / export_fastq)."""
from __future__ import annotations

import json

import gzip
import itertools
from pathlib import Path

import pytest

from persona.agd import ChunkHeader, Dataset, RecordType
from persona.apps.export_fastq import export_fastq
from persona.apps.import_fastq import import_fastq
from persona.errors import DatasetError, InputFormatError
from persona.storage import open_store

pytestmark = pytest.mark.native


def _text(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


def _head_file(src: Path, dst: Path, records: int) -> Path:
    with gzip.open(src, "rb") as f:
        dst.write_bytes(gzip.compress(b"".join(itertools.islice(f, 4 * records))))
    return dst


def _write_fastq(path: Path, names: list[str], seq: bytes = b"ACGTN", gz: bool = False) -> Path:
    text = b"".join(b"@%s\n%s\n+\n%s\n" % (n.encode(), seq, b"I" * len(seq)) for n in names)
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def _leftovers(store_dir: Path) -> list[str]:
    return sorted(p.name for p in store_dir.iterdir()) if store_dir.exists() else []


# -- round trips on real reads -----------------------------------------------------

def test_yeast_pairs_round_trip_byte_identical(tmp_path, yeast):
    store = tmp_path / "store"
    seen: list[int] = []
    m = import_fastq(yeast["r1"], yeast["r2"], out=store, chunk_size=30_000, threads=2, progress=seen.append)
    assert m.name == "SRR5204809"
    assert m.columns == ["base", "qual", "metadata"]
    assert m.sort == "queryname" and m.paired is True
    assert [(r.first, r.last) for r in m.records] == [(0, 60_000), (60_000, 120_000), (120_000, 180_000),
                                                      (180_000, 200_000)]
    assert seen == [60_000, 60_000, 60_000, 20_000]
    n = export_fastq(store, tmp_path / "o1.fq", tmp_path / "o2.fq")
    assert n == 200_000
    assert (tmp_path / "o1.fq").read_bytes() == _text(yeast["r1"])
    assert (tmp_path / "o2.fq").read_bytes() == _text(yeast["r2"])


@pytest.mark.small_data
def test_interleaving_order_and_packed_bases(tmp_path, human):
    r1 = _head_file(human["r1"], tmp_path / "h_R1.fastq.gz", 700)
    r2 = _head_file(human["r2"], tmp_path / "h_R2.fastq.gz", 700)
    import_fastq(r1, r2, out=tmp_path / "s", chunk_size=300)
    ds = Dataset.open(tmp_path / "s")
    assert ds.name == "h" and ds.paired and ds.num_records == 1400
    lines1, lines2 = _text(r1).split(b"\n"), _text(r2).split(b"\n")
    chunk1 = ds.read_chunk(1)
    for i in range(300):  # chunk 1 holds pairs 300..599
        rec = 300 + i
        assert chunk1["metadata"][2 * i] == lines1[4 * rec][1:]
        assert chunk1["metadata"][2 * i + 1] == lines2[4 * rec][1:]
        assert chunk1["base"][2 * i] == lines1[4 * rec + 1]
        assert chunk1["qual"][2 * i + 1] == lines2[4 * rec + 3]
    raw = ds.store.get(ds.chunk_key(0, "base"))
    header = ChunkHeader.unpack(raw)
    assert header.record_type is RecordType.COMPACTED_BASES and header.num_records == 600
    assert ds.read_raw(0, "base")[1].lengths[0] == 8 * (101 // 21 + 1)  # 3-bit words, not text


def test_single_end_measles_gzip_export(tmp_path, measles):
    m = import_fastq(measles["r1"], out=tmp_path / "s", name="ms", chunk_size=10_000, compression="gzip")
    assert m.paired is None and m.num_records == 28_219 and len(m.records) == 3
    n = export_fastq(tmp_path / "s", tmp_path / "out.fq.gz", gzip=True)
    assert n == 28_219
    assert (tmp_path / "out.fq.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert _text(tmp_path / "out.fq.gz") == _text(measles["r1"])


@pytest.mark.small_data
def test_paired_export_to_one_file_interleaves(tmp_path, measles):
    r1 = _head_file(measles["r1"], tmp_path / "m_R1.fq.gz", 50)
    r2 = _head_file(measles["r2"], tmp_path / "m_R2.fq.gz", 50)
    import_fastq(r1, r2, out=tmp_path / "s", chunk_size=20)
    export_fastq(tmp_path / "s", tmp_path / "inter.fq")
    lines = (tmp_path / "inter.fq").read_bytes().split(b"\n")
    l1, l2 = _text(r1).split(b"\n"), _text(r2).split(b"\n")
    assert lines[0:4] == l1[0:4] and lines[4:8] == l2[0:4] and lines[8:12] == l1[4:8]


@pytest.mark.small_data
def test_thread_counts_give_identical_datasets(tmp_path, yeast):
    r1 = _head_file(yeast["r1"], tmp_path / "y_R1.fq.gz", 5000)
    for t in (1, 3):
        import_fastq(r1, out=tmp_path / f"t{t}", chunk_size=1000, threads=t)
    for f in sorted((tmp_path / "t1").iterdir()):
        if f.name.endswith("_metadata.json"):  # identical but for the provenance (request id, times)
            a, b = (json.loads(p.read_text()) for p in (f, tmp_path / "t3" / f.name))
            assert {k: v for k, v in a.items() if k != "provenance"} == \
                {k: v for k, v in b.items() if k != "provenance"}
            continue
        assert f.read_bytes() == (tmp_path / "t3" / f.name).read_bytes()


def test_memory_store_and_level_mapping(tmp_path):
    r1 = _write_fastq(tmp_path / "a.fq", [f"r{i}" for i in range(25)])
    m = import_fastq(r1, out="memory://fastq-levels", chunk_size=10, level={"qual": 9, "base": 1})
    assert [(r.first, r.last) for r in m.records] == [(0, 10), (10, 20), (20, 25)]
    ds = Dataset.open(open_store("memory://fastq-levels"))
    assert ds.read_column(2, "metadata").tolist() == [b"r20", b"r21", b"r22", b"r23", b"r24"]


def test_crlf_input_imports(tmp_path):
    (tmp_path / "c.fq").write_bytes(b"@r1\r\nACGT\r\n+\r\nIIII\r\n@r2\r\nNNAC\r\n+\r\n#II!\r\n")
    import_fastq(tmp_path / "c.fq", out=tmp_path / "s")
    export_fastq(tmp_path / "s", tmp_path / "o.fq")
    assert (tmp_path / "o.fq").read_bytes() == b"@r1\nACGT\n+\nIIII\n@r2\nNNAC\n+\n#II!\n"


def test_existing_dataset_is_not_overwritten(tmp_path):
    r1 = _write_fastq(tmp_path / "a.fq", ["r1"])
    import_fastq(r1, out=tmp_path / "s")
    with pytest.raises(DatasetError, match="already exists"):
        import_fastq(r1, out=tmp_path / "s")


# -- failures: error names file and line; nothing of the dataset remains -----------

def _bad_at(tmp_path: Path, record: int, corrupt: bytes, total: int = 50, gz: bool = True) -> Path:
    text = bytearray()
    for i in range(total):
        rec = b"@r%d\nACGTACGT\n+\nIIIIIIII\n" % i
        text += corrupt if i == record else rec
    path = tmp_path / ("bad.fq.gz" if gz else "bad.fq")
    path.write_bytes(gzip.compress(bytes(text)) if gz else bytes(text))
    return path


@pytest.mark.parametrize(
    "corrupt, line_in_record, words",
    [
        (b"r37\nACGTACGT\n+\nIIIIIIII\n", 0, "does not start with '@'"),
        (b"@r37\nACGTACGT\nIIIIIIII\n+\n", 2, "'+' separator line missing"),
        (b"@r37\nACGTACGT\n+\nIIIIIII\n", 3, "quality length 7 does not match sequence length 8"),
        (b"@r37\nACGTRCGT\n+\nIIIIIIII\n", 1, "invalid character 'R' in sequence at column 5"),
    ],
)
def test_bad_record_mid_file_aborts(tmp_path, corrupt, line_in_record, words):
    path = _bad_at(tmp_path, 37, corrupt)
    store = tmp_path / "s"
    with pytest.raises(InputFormatError) as ei:
        import_fastq(path, out=store, chunk_size=10, threads=2)
    line = 4 * 37 + 1 + line_in_record
    assert f"{path}:{line}:" in str(ei.value) and words in str(ei.value)
    assert _leftovers(store) == []


def test_truncated_record_at_eof_aborts(tmp_path):
    path = tmp_path / "t.fq"
    path.write_bytes(b"".join(b"@r%d\nAC\n+\nII\n" % i for i in range(30)) + b"@r30\nAC\n")
    with pytest.raises(InputFormatError, match=rf"{path}:123: truncated FASTQ record"):
        import_fastq(path, out=tmp_path / "s", chunk_size=7)
    assert _leftovers(tmp_path / "s") == []


@pytest.mark.small_data
def test_truncated_gzip_aborts(tmp_path, yeast):
    data = yeast["r1"].read_bytes()
    path = tmp_path / "cut_R1.fastq.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputFormatError, match="cut_R1.fastq.gz: corrupt or truncated compressed data"):
        import_fastq(path, out=tmp_path / "s", chunk_size=20_000)
    assert _leftovers(tmp_path / "s") == []


def test_pair_name_mismatch_aborts(tmp_path):
    names = [f"r{i}" for i in range(40)]
    r1 = _write_fastq(tmp_path / "x_R1.fq", [n + "/1" for n in names], gz=True)
    r2 = _write_fastq(tmp_path / "x_R2.fq", [n + "/2" if i != 33 else "zz/2" for i, n in enumerate(names)])
    with pytest.raises(InputFormatError) as ei:
        import_fastq(r1, r2, out=tmp_path / "s", chunk_size=8)
    assert f"{r2}:{4 * 33 + 1}: read name 'zz' does not match its mate 'r33'" in str(ei.value)
    assert _leftovers(tmp_path / "s") == []


@pytest.mark.parametrize("longer", ["r1", "r2"])
def test_pair_count_mismatch_aborts(tmp_path, longer):
    names = [f"r{i}" for i in range(30)]
    r1 = _write_fastq(tmp_path / "x_R1.fq", names if longer == "r1" else names[:23])
    r2 = _write_fastq(tmp_path / "x_R2.fq", names if longer == "r2" else names[:23])
    with pytest.raises(InputFormatError) as ei:
        import_fastq(r1, r2, out=tmp_path / "s", chunk_size=5)
    long_path = r1 if longer == "r1" else r2
    assert f"{long_path}:{4 * 23 + 1}: paired files have different record counts" in str(ei.value)
    assert "ends after 23 records" in str(ei.value)
    assert _leftovers(tmp_path / "s") == []


def test_missing_input_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fq"):
        import_fastq(tmp_path / "nope.fq", out=tmp_path / "s")


def test_export_errors(tmp_path):
    r1 = _write_fastq(tmp_path / "a.fq", ["r1", "r2"])
    import_fastq(r1, out=tmp_path / "s")
    with pytest.raises(DatasetError, match="not paired"):
        export_fastq(tmp_path / "s", tmp_path / "o1.fq", tmp_path / "o2.fq")
    assert not (tmp_path / "o1.fq").exists()


def test_first_error_in_file_order_wins(tmp_path):
    # Chunk 0 has a mate-name mismatch (found when converting), chunk 2 of R1 a bad
    # record (found by the reader, possibly earlier in time): the user sees chunk 0's.
    names = [f"r{i}" for i in range(30)]
    r1_text = b"".join(b"@%s\nACGT\n+\nIIII\n" % n.encode() for n in names)
    r1_text = r1_text.replace(b"@r25\nACGT", b"@r25\nAXGT")
    (tmp_path / "o_R1.fq").write_bytes(r1_text)
    r2 = _write_fastq(tmp_path / "o_R2.fq", ["zz" if i == 3 else n for i, n in enumerate(names)], seq=b"ACGT")
    with pytest.raises(InputFormatError, match=r"o_R2\.fq:13: read name 'zz'"):
        import_fastq(tmp_path / "o_R1.fq", r2, out=tmp_path / "s", chunk_size=10, threads=2)
    assert _leftovers(tmp_path / "s") == []


def test_zstd_parameters_need_zstd(tmp_path):
    import zstandard

    r1 = _write_fastq(tmp_path / "a.fq", ["r1"])
    params = zstandard.ZstdCompressionParameters.from_level(3)
    with pytest.raises(ValueError, match="zstd parameters given for column 'qual'"):
        import_fastq(r1, out=tmp_path / "s", compression="gzip", level={"qual": params})
    assert _leftovers(tmp_path / "s") == []
    m = import_fastq(r1, out=tmp_path / "z", level={"qual": params, "base": 1})
    assert Dataset.open(tmp_path / "z").read_column(0, "qual").tolist() == [b"IIIII"]
    assert m.num_records == 1


def test_gzip_export_without_isal(tmp_path, monkeypatch):
    import persona.apps.export_fastq as ex

    r1 = _write_fastq(tmp_path / "a.fq", [f"r{i}" for i in range(12)])
    import_fastq(r1, out=tmp_path / "s", chunk_size=5)
    monkeypatch.setattr(ex, "_igzip", None)
    assert export_fastq(tmp_path / "s", tmp_path / "o.fq.gz", gzip=True) == 12
    assert _text(tmp_path / "o.fq.gz") == r1.read_bytes()


def test_empty_input_gives_empty_dataset(tmp_path):
    (tmp_path / "e.fq").write_bytes(b"")
    m = import_fastq(tmp_path / "e.fq", out=tmp_path / "s")
    assert m.num_records == 0 and m.records == []
    assert export_fastq(tmp_path / "s", tmp_path / "o.fq") == 0
    assert (tmp_path / "o.fq").read_bytes() == b""


def test_source_is_bounded_and_stoppable(tmp_path, monkeypatch):
    """The source never runs more than its window of chunks ahead of the writer, whatever the
    input size, and a cancel stops it."""
    import threading
    import time

    from persona.apps import importer
    from persona.runtime import Runtime

    r1 = _write_fastq(tmp_path / "a.fq", [f"r{i}" for i in range(400)])
    put, written, ahead = [0], [0], []
    real_write, real_works = importer.ImportJob.stage_write, importer.ImportFastqJob._works
    gate = threading.Event()

    def works(self):
        for w in real_works(self):
            put[0] += 1
            ahead.append(put[0] - written[0])
            yield w

    def slow_write(self, w):
        gate.wait(10)  # the writer is stuck: the source must stop at the window
        written[0] += 1
        return real_write(self, w)

    monkeypatch.setattr(importer.ImportFastqJob, "_works", works)
    monkeypatch.setattr(importer.ImportJob, "stage_write", slow_write)
    with Runtime(threads=1) as rt:
        h = rt.submit(importer.ImportRequest(inputs=(str(r1),), output=str(tmp_path / "s"), chunk_size=5,
                                             queue_depth=2))
        time.sleep(1.0)
        window = 2 + rt.threads + 1
        assert put[0] <= window + 1 and not h.done()  # 80 chunks, only the window read ahead
        h.cancel()
        gate.set()
        with pytest.raises(Exception):
            h.result(timeout=30)
    assert max(ahead) <= window + 1
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("*_metadata.json"))
