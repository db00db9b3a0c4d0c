"""Issue 8, strict manifests: validate_manifest refuses gaps, overlaps, empty or duplicate
chunks, repeated columns; check_chunk_header refuses a header that disagrees with the manifest
(ordinals, record count, dataset name, record type); detect_paired recognises the original's
interleaved pairs; verify --deep checks every record."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from persona.agd import ALIGNMENT_DTYPE, Alignments, Dataset, DatasetWriter, RaggedArray, verify_dataset
from persona.agd.chunk import decode_chunk, encode_chunk
from persona.agd.format import ChunkHeader, CompressionType, RecordType
from persona.agd.integrity import check_chunk_header
from persona.agd.manifest import ChunkRef, Contig, Manifest, manifest_problems, validate_manifest
from persona.agd.pairing_detect import detect_paired, mate_name, names_look_paired, resolve_paired
from persona.errors import ChunkFormatError, ManifestError

pytestmark = pytest.mark.native


def manifest(records: list[tuple[int, int, str]], **kw: object) -> Manifest:
    return Manifest(name="ds", columns=kw.pop("columns", ["base", "qual"]),  # type: ignore[arg-type]
                    records=[ChunkRef(a, b, p) for a, b, p in records], **kw)  # type: ignore[arg-type]


def test_a_good_manifest_passes() -> None:
    validate_manifest(manifest([(0, 10, "ds_0"), (10, 25, "ds_10")]))
    validate_manifest(manifest([]))  # an empty dataset has no chunks
    assert manifest_problems(manifest([(0, 10, "ds_0")])) == []


@pytest.mark.parametrize("records,kw,message", [
    ([(0, 10, "ds_0"), (20, 25, "ds_20")], {}, r"records \[10, 20\) are in no chunk: a gap after chunk 'ds_0'"),
    ([(5, 10, "ds_5")], {}, r"records \[0, 5\) are in no chunk: a gap at the start"),
    ([(0, 10, "ds_0"), (8, 25, "ds_8")], {}, "overlaps"),
    ([(0, 10, "ds_0"), (10, 10, "ds_10"), (10, 20, "ds_x")], {}, "holds no records"),
    ([(0, 10, "ds_0"), (10, 20, "ds_0")], {}, r"same path as records\[0\]"),
    ([(0, 10, "ds_0")], {"columns": ["base", "base"]}, "lists column 'base' twice"),
    ([(0, 9, "ds_0")], {"paired": True}, "odd number of records, but the dataset is paired"),
    ([(0, 10, "ds_0")], {"reference_contigs": [Contig("a", 5, 0), Contig("a", 6, 1)]}, "'a' is listed twice"),
    ([(0, 10, "ds_0")], {"reference_contigs": [Contig("a", 5, 0), Contig("b", 6, 0)]}, "index 0 is used twice"),
])
def test_malformed_manifests_are_refused(records: list, kw: dict, message: str) -> None:
    m = manifest(records, **kw)
    with pytest.raises(ManifestError, match=message) as e:
        validate_manifest(m, key="store/ds_metadata.json")
    assert e.value.context["key"] == "store/ds_metadata.json"
    assert manifest_problems(m)


def test_files_and_checksums_must_name_listed_columns() -> None:
    if "files" not in getattr(ChunkRef, "__dataclass_fields__", {}):
        pytest.skip("ChunkRef has no files/checksums yet")
    ok = Manifest("ds", ["base"], [ChunkRef(0, 4, "ds_0", {"base": "ds_0.base.a1"}, {"base": "crc32:0a0b0c0d"})])
    validate_manifest(ok)
    bad = Manifest("ds", ["base"], [ChunkRef(0, 4, "ds_0", {"qual": "x"}, {})])
    with pytest.raises(ManifestError, match="'files' names column 'qual'"):
        validate_manifest(bad)
    bad = Manifest("ds", ["base"], [ChunkRef(0, 4, "ds_0", {}, {"base": "CRC-32"})])
    with pytest.raises(ManifestError, match="not '<algorithm>:<hex>'"):
        validate_manifest(bad)
    shared = Manifest("ds", ["base"], [ChunkRef(0, 4, "ds_0", {"base": "f"}, {}),
                                       ChunkRef(4, 8, "ds_4", {"base": "f"}, {})])
    with pytest.raises(ManifestError, match="also the file of"):
        validate_manifest(shared)


def test_all_problems_are_listed_for_verify() -> None:
    m = manifest([(0, 10, "ds_0"), (12, 14, "ds_0"), (20, 20, "ds_20")])
    problems = manifest_problems(m)
    assert len(problems) >= 4 and any("gap" in p for p in problems) and any("no records" in p for p in problems)


# ---------------------------------------------------------------- chunk header against the manifest
def header(first: int = 10, last: int = 20, name: str = "ds", rtype: RecordType = RecordType.TEXT) -> ChunkHeader:
    return ChunkHeader(rtype, CompressionType.ZSTD, first, last, name)


def test_header_agreeing_with_the_manifest_passes() -> None:
    ref = ChunkRef(10, 20, "ds_10")
    check_chunk_header(header(), ref, "qual", "ds", "ds_10.qual")
    check_chunk_header(header(rtype=RecordType.COMPACTED_BASES), ref, "base", "ds")
    text_bases = ChunkHeader(RecordType.TEXT, CompressionType.GZIP, 10, 20, "ds")
    check_chunk_header(text_bases, ref, "base", "ds")  # the original's decompressed bases (gzip)
    check_chunk_header(header(rtype=RecordType.STRUCTURED), ref, "prot", "ds")  # unknown column: any type
    long = "a-dataset-name-much-longer-than-thirty-two-bytes"
    packed = ChunkHeader.unpack(header(name=long).pack())
    check_chunk_header(packed, ref, "qual", long)  # compared as stored: cut to 32 bytes


@pytest.mark.parametrize("hdr,column,message", [
    (header(10, 21), "qual", r"header holds records \[10, 21\) \(11 records\) but the manifest says"),
    (header(11, 21), "qual", "header holds records"),
    (header(name="other"), "qual", "header names dataset 'other' but the manifest is that of 'ds'"),
    (header(name=""), "qual", "header names dataset ''"),
    (header(rtype=RecordType.COMPACTED_BASES), "metadata", "record type COMPACTED_BASES, expected TEXT"),
    (header(rtype=RecordType.TEXT), "results", "expected STRUCTURED"),
    (header(rtype=RecordType.TEXT), "secondary0", "expected STRUCTURED"),
    (header(rtype=RecordType.TEXT), "base", "record type TEXT, expected COMPACTED_BASES for 'base'"),  # zstd
])
def test_header_disagreeing_with_the_manifest_is_refused(hdr: ChunkHeader, column: str, message: str) -> None:
    with pytest.raises(ChunkFormatError, match=message) as e:
        check_chunk_header(hdr, ChunkRef(10, 20, "ds_10"), column, "ds", "ds_10." + column)
    assert e.value.context["key"] == "ds_10." + column


# ---------------------------------------------------------------- pairing of original-format datasets
def test_mate_names() -> None:
    assert mate_name(b"r1/1") == (b"r1", b"/1") and mate_name(b"r1 1:N:0:ACGT") == (b"r1", b"")
    assert names_look_paired([b"a/1", b"a/2", b"b 1:N", b"b 2:N"])
    assert not names_look_paired([b"a/1", b"b/2"])
    assert not names_look_paired([b"a/2", b"a/1"])  # mates out of order
    assert not names_look_paired([b"a", b"a", b"b"])  # odd
    assert not names_look_paired([])


def original_dataset(tmp_path: Path, names: list[bytes], chunk: int, with_metadata: bool = True,
                     paired_field: bool | None = None) -> Dataset:
    """A dataset as the original writes it: gzip chunks and a manifest without 'paired'."""
    cols = ["base", "qual"] + (["metadata"] if with_metadata else [])
    w = DatasetWriter(tmp_path, "orig", columns=cols, compression="gzip")
    for first in range(0, len(names), chunk):
        part = names[first : first + chunk]
        vals = {"base": [b"ACGT"] * len(part), "qual": [b"IIII"] * len(part), "metadata": part}
        w.write_chunk(first, {c: vals[c] for c in cols})
    w.commit(paired=paired_field)
    obj = json.loads((tmp_path / "orig_metadata.json").read_text())
    assert "paired" not in obj or paired_field is not None
    return Dataset.open(tmp_path)


def test_detect_paired_on_original_datasets(tmp_path: Path) -> None:
    pairs = [n for i in range(50) for n in (f"r{i}/1".encode(), f"r{i}/2".encode())]
    ds = original_dataset(tmp_path / "p", pairs, 20)
    assert ds.manifest.paired is None and detect_paired(ds) is True
    assert resolve_paired(ds) == (True, "detected: the manifest does not say; records 2i and 2i+1 have the same "
                                        "read names")
    assert resolve_paired(ds, False)[0] is False
    single = [f"r{i}".encode() for i in range(40)]
    assert detect_paired(original_dataset(tmp_path / "s", single, 20)) is False
    odd_chunks = [f"r{i // 2}".encode() for i in range(40)]
    assert detect_paired(original_dataset(tmp_path / "o", odd_chunks, 15)) is False  # a chunk splits a pair
    no_meta = original_dataset(tmp_path / "n", pairs, 20, with_metadata=False)
    assert detect_paired(no_meta) is None and resolve_paired(no_meta)[0] is False
    casava = [f"r{i} {k}:N:0:ACGT".encode() for i in range(10) for k in (1, 2)]
    assert detect_paired(original_dataset(tmp_path / "c", casava, 10)) is True
    told = original_dataset(tmp_path / "t", single, 20, paired_field=False)
    assert resolve_paired(told) == (False, "from the manifest")


# ---------------------------------------------------------------- verify (deep)
def aligned_dataset(tmp_path: Path, n: int = 8) -> Dataset:
    w = DatasetWriter(tmp_path, "ds", columns=["base", "qual", "metadata", "results"])
    f = np.zeros(n, dtype=ALIGNMENT_DTYPE)
    f["flag"] = [0x41 if i % 2 == 0 else 0x81 for i in range(n)]
    f["flag"] |= 0x1
    f["ref_index"], f["position"], f["next_ref_index"], f["next_position"] = 0, 100, 0, 100
    f["mapq"] = 60
    al = Alignments(f, RaggedArray.from_list([b"10M"] * n))
    names = [f"r{i // 2}/{i % 2 + 1}".encode() for i in range(n)]
    w.write_chunk(0, {"base": [b"ACGTACGTAC"] * n, "qual": [b"I" * 10] * n, "metadata": names, "results": al})
    w.commit(paired=True, reference="ref", reference_contigs=[Contig("c1", 1000, 0)])
    return Dataset.open(tmp_path)


def rewrite(ds: Dataset, column: str, value: object) -> None:
    """Replace a column's chunk file in place (as damage would), keeping the manifest."""
    key = ds.chunk_key(0, column)
    hdr, _ = decode_chunk(ds.store.get(key), key)
    from persona.agd.columns import encode_column

    data = encode_chunk(encode_column(column, value), record_type=hdr.record_type, first_ordinal=0,
                        name="ds", compression="zstd")
    ds.store.put(key, data)
    if hasattr(ds.chunks[0], "checksums") and ds.chunks[0].checksums:  # keep the file checksum current
        import zlib

        ds.chunks[0].checksums[column] = f"crc32:{zlib.crc32(data):08x}"


def test_deep_verify_clean(tmp_path: Path) -> None:
    ds = aligned_dataset(tmp_path)
    report = verify_dataset(ds, deep=True)
    assert report.ok, str(report)


def test_deep_verify_reports_every_record_problem(tmp_path: Path) -> None:
    ds = aligned_dataset(tmp_path)
    n = 8
    rewrite(ds, "qual", [b"I" * 10] * 5 + [b"I" * 9, b"", b"I\x07" + b"I" * 8])
    rewrite(ds, "metadata", [f"r{i // 2}/{i % 2 + 1}".encode() for i in range(6)] + [b"x/1", b"y/2"])
    f = np.zeros(n, dtype=ALIGNMENT_DTYPE)
    f["flag"] = [0x41, 0x81, 0x41, 0x81, 0x45, 0x81, 0x41, 0x81]
    f["ref_index"] = [0, 0, 3, 0, 0, 0, 0, 0]
    f["position"] = [100, 995, 100, 100, 100, -1, 100, 100]
    f["next_ref_index"] = 0
    f["mapq"] = 60
    cig = [b"10M", b"10M", b"10M", b"9M", b"10M", b"10M", b"1Q", b"10M"]
    rewrite(ds, "results", Alignments(f, RaggedArray.from_list(cig)))
    report = verify_dataset(ds, deep=True)
    text = str(report)
    by = {(p.key, p.message.split(":")[0]) for p in report.problems}
    assert ("ds_0.qual", "quality string length differs from the read's length") in by
    assert "record 5 (ordinal 5)" in text and "record 7 (ordinal 7)" in text  # length 9; bad character
    assert ("ds_0.metadata", "paired dataset, but records 2i and 2i+1 are not named as mates") in by
    msgs = {p.message.split(":")[0] for p in report.problems if p.key == "ds_0.results"}
    assert msgs == {
        "alignment runs past the end of its reference contig",  # record 1: 995 + 10 > 1000
        "reference index not in the manifest's reference_contigs",  # record 2
        "CIGAR query length differs from the read's length",  # record 3
        "an unmapped record with a CIGAR",  # record 4
        "a mapped record without reference index or position",  # record 5
        "malformed CIGAR",  # record 6
    }, text
    assert verify_dataset(ds).ok  # without --deep these decode cleanly


def test_verify_reports_manifest_problems_instead_of_refusing(tmp_path: Path) -> None:
    ds = aligned_dataset(tmp_path)
    obj = json.loads((tmp_path / "ds_metadata.json").read_text())
    obj["records"][0]["first"] = 2  # records [0, 2) in no chunk
    (tmp_path / "ds_metadata.json").write_text(json.dumps(obj))
    report = verify_dataset(tmp_path)
    assert any("a gap at the start" in p.message for p in report.problems)
    assert any("header holds records [0, 8)" in p.message for p in report.problems)


def test_verify_catches_a_chunk_of_another_dataset(tmp_path: Path) -> None:
    ds = aligned_dataset(tmp_path)
    buf = bytearray(ds.store.get("ds_0.qual"))
    other = encode_chunk(decode_chunk(bytes(buf))[1], record_type=RecordType.TEXT, first_ordinal=0, name="other")
    ds.store.put("ds_0.qual", other)
    if getattr(ds.chunks[0], "checksums", None):
        import zlib

        ds.chunks[0].checksums["qual"] = f"crc32:{zlib.crc32(other):08x}"
    report = verify_dataset(ds)
    assert [(p.key, "header names dataset 'other'" in p.message) for p in report.problems] == [("ds_0.qual", True)]
