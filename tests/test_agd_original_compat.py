"""Compatibility with the original AGD v0.1 (persona-system's C++ writer and Python shell).

The dataset here is built byte by byte exactly as the original writes it --
56-byte packed header, ONE gzip member (zlib level -1, wbits 31, memLevel 9)
over ``uint32 index ‖ data``, 3-bit bases packed by an independent pure-Python
packer, ``results`` serialized by the protobuf library with both Position
sub-messages set (the original calls ``mutable_position()``), manifest written
with ``json.dump(..., indent=4)`` in the original's key order -- without any
Persona encoding code. Then Persona must read it, and Persona's gzip writer
must produce the same bytes.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from agd_reference import ref_pack

from persona.agd import Alignments, Dataset, DatasetWriter, verify_dataset

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.native



def original_chunk(records: list[bytes], record_type: int, first: int, name: str, gzip: bool = True) -> bytes:
    header = struct.pack(
        "<BBBBHHQQ32s", 0, 1, record_type, 2 if gzip else 0, 56, 0, first, first + len(records),
        name.encode()[:32].ljust(32, b"\0"),
    )
    payload = struct.pack(f"<{len(records)}I", *map(len, records)) + b"".join(records)
    if not gzip:
        return header + payload
    z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15 | 16, 9)
    return header + z.compress(payload) + z.flush()


@pytest.fixture(scope="module")
def alignment_pb(tmp_path_factory: pytest.TempPathFactory) -> type:
    """Message class from protos/persona/agd/v1/alignment.proto, in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("pb") / "alignment.desc"
    assert protoc.main(
        ["protoc", f"-I{REPO / 'protos'}", f"--descriptor_set_out={out}", "persona/agd/v1/alignment.proto"]
    ) == 0
    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("persona.agd.v1.Alignment"))


# (name, bases, qual, flag, mapq, ref, pos, next_ref, next_pos, tlen, cigar) per read, paired + interleaved
READS = [
    (b"r0/1", b"ACGTACGTAAACCCGGGTTTNACGT", b"IIIIIIIIIIIIIIIIIIIIIIIII", 99, 60, 0, 100, 0, 300, 225, "25M"),
    (b"r0/2", b"TTTTTTTTTTTTTTTTTTTTT", b"#####################", 147, 60, 0, 300, 0, 100, -225, "21M"),
    (b"r1/1", b"NNNNN", b"!!!!!", 77, 0, -1, -1, -1, -1, 0, "*"),
    (b"r1/2", b"", b"", 141, 0, -1, -1, -1, -1, 0, "*"),
    (b"r2/1", b"gattaca" * 6, b"A" * 42, 0x441, 17, 1, 2**33, 1, 5, -(2**33), "10S32M"),
    (b"r2/2", b"C" * 100, b"5" * 100, 0x481, 70, 1, 5, 1, 2**33, 2**33, "100M"),
]
CONTIGS = [{"name": "chr1", "length": 248956422, "index": 0}, {"name": "chrM", "length": 16569, "index": 1}]


def build_original_dataset(root: Path, pb: type, *, gzip: bool = True) -> None:
    """Write the dataset 'orig' as the original Persona (import_fastq + snap_align) would."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for first in (0, 4):  # chunk size 4 (2 pairs): chunks of 4 and 2 records
        part = READS[first : first + 4]
        cols = {
            "base": (2, [ref_pack(r[1]) for r in part]),
            "qual": (0, [r[2] for r in part]),
            "metadata": (0, [r[0] for r in part]),
            "results": (1, []),
        }
        for r in part:
            m = pb(flag=r[3], mapping_quality=r[4], template_length=r[9], cigar=r[10])
            m.position.SetInParent()
            m.next_position.SetInParent()
            m.position.ref_index, m.position.position = r[5], r[6]
            m.next_position.ref_index, m.next_position.position = r[7], r[8]
            cols["results"][1].append(m.SerializeToString())
        for col, (rtype, recs) in cols.items():
            (root / f"orig_{first}.{col}").write_bytes(original_chunk(recs, rtype, first, "orig", gzip))
        records.append({"first": first, "path": f"orig_{first}", "last": first + len(part)})
    metadata = {"name": "orig", "version": 1, "records": records, "columns": ["base", "qual", "metadata"]}
    metadata["columns"].append("results")  # snap_align's on_finish
    metadata["reference"] = "/data/hg19_snap_index"
    metadata["reference_contigs"] = CONTIGS
    with open(root / "orig_metadata.json", "w+") as f:
        json.dump(metadata, f, indent=4)


@pytest.mark.parametrize("gzip", [True, False])
def test_reads_dataset_written_by_original(tmp_path: Path, alignment_pb: type, gzip: bool) -> None:
    build_original_dataset(tmp_path, alignment_pb, gzip=gzip)
    ds = Dataset.open(tmp_path / "orig_metadata.json")
    assert (ds.name, ds.num_records, ds.columns) == ("orig", 6, ["base", "qual", "metadata", "results"])
    assert ds.manifest.reference == "/data/hg19_snap_index"
    assert [(c.name, c.length, c.index) for c in ds.manifest.reference_contigs] == [
        ("chr1", 248956422, 0), ("chrM", 16569, 1)]
    assert ds.manifest.sort is None and ds.manifest.paired is None  # the original writes neither
    got = []
    for _, cols in ds.iter_chunks():
        al = cols["results"]
        assert isinstance(al, Alignments)
        for i in range(len(al)):
            f = al.fields[i]
            got.append((cols["metadata"][i], cols["base"][i], cols["qual"][i], int(f["flag"]), int(f["mapq"]),
                        int(f["ref_index"]), int(f["position"]), int(f["next_ref_index"]),
                        int(f["next_position"]), int(f["template_length"]), al.cigars[i].decode()))
    assert got == [(r[0], r[1].upper(), *r[2:]) for r in READS]
    assert ds.read_record(1, "base", 0) == b"GATTACA" * 6
    report = verify_dataset(ds)
    assert report.ok, str(report)
    # Rewriting the manifest keeps what we do not interpret, in the original's key order.
    ds.commit_columns([], extra={"ceph_pool": "agd"})
    written = json.loads((tmp_path / "orig_metadata.json").read_text())
    assert list(written)[:4] == ["name", "version", "records", "columns"]
    assert written["reference_contigs"] == CONTIGS and written["ceph_pool"] == "agd"


def test_gzip_output_is_byte_identical_to_the_original_writer(tmp_path: Path, alignment_pb: type) -> None:
    """Our gzip chunks are exactly what the original writes, so the original can read them."""
    orig = tmp_path / "orig"
    build_original_dataset(orig, alignment_pb)
    src = Dataset.open(orig)
    w = DatasetWriter(tmp_path / "ours", "orig", columns=src.columns, compression="gzip")
    for i, ref in enumerate(src.chunks):
        w.write_chunk(ref.first, src.read_chunk(i))
    w.commit()
    for ref in src.chunks:
        for col in src.columns:
            name = f"{ref.path}.{col}"
            assert (tmp_path / "ours" / name).read_bytes() == (orig / name).read_bytes(), name


def test_original_reader_parses_our_chunks(tmp_path: Path, alignment_pb: type) -> None:
    """Parse our gzip chunks the way the original's reader does (inflateInit2(15|32), uint32 index)."""
    w = DatasetWriter(tmp_path, "ours", compression="gzip")
    seqs = [b"ACGT" * 10, b"", b"N" * 21, b"TTAGGC"]
    w.write_chunk(0, {"base": seqs, "qual": [b"I" * len(s) for s in seqs], "metadata": [b"a", b"b", b"c", b"d"]})
    w.commit()
    buf = (tmp_path / "ours_0.base").read_bytes()
    major, minor, rtype, comp, seg, _, first, last, sid = struct.unpack_from("<BBBBHHQQ32s", buf)
    assert (major, minor, rtype, comp, seg, first, last) == (0, 1, 2, 2, 56, 0, 4)
    assert sid.rstrip(b"\0") == b"ours"
    d = zlib.decompressobj(15 | 32)
    payload = d.decompress(buf[seg:])
    assert d.eof
    n = last - first
    index = struct.unpack_from(f"<{n}I", payload)
    assert sum(index) == len(payload) - 4 * n
    data = payload[4 * n :]
    pos = 0
    for s, size in zip(seqs, index):
        assert data[pos : pos + size] == ref_pack(s)
        pos += size
    manifest = json.loads((tmp_path / "ours_metadata.json").read_text())
    # the original's fields, as it reads them (our checksums ride along in the same object)
    assert [{k: r[k] for k in ("first", "last", "path")} for r in manifest["records"]] == [
        {"first": 0, "last": 4, "path": "ours_0"}]
    assert manifest["columns"] == ["base", "qual", "metadata"]
    assert np.array_equal(np.frombuffer(data[: index[0]], "<u8") >> np.uint64(63), np.zeros(2, np.uint64))
