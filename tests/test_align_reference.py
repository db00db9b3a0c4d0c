"""Reference registry: add, describe, load once per process, refuse bad input."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from persona.align import reference as refmod
from persona.align.base import AlignerOptions
from persona.align.reference import (acquire_reference, add_reference, list_references, reference_info,
                                     release_reference, use_reference)
from persona.agd.ragged import RaggedArray
from persona.errors import AlignerError, InputFormatError, ReferenceNotFoundError
from persona.storage import open_store


@pytest.fixture()
def store(tmp_path: Path):
    return open_store(str(tmp_path / "refs"))


@pytest.mark.small_data
def test_add_and_describe(measles, store) -> None:
    info = add_reference("measles", measles["ref"], store)
    assert [c.name for c in info.contigs] == ["MH356245.1"] and info.contigs[0].length == 15_894  # samtools faidx agrees
    assert list_references(store) == ["measles"]
    assert store.exists("measles/reference.json") and store.exists("measles/minimap2-sr.mmi")
    again = reference_info("measles", store.url)
    assert again == info
    # md5: the @SQ M5 of the SAM spec; `samtools dict` gives the same for this FASTA
    assert info.manifest_contigs() == [{"name": "MH356245.1", "length": 15894, "index": 0,
                                        "md5": "90edf4135fc3d398844b17fe92048cbe"}]
    # adding the same FASTA again is idempotent; another FASTA under the name needs overwrite
    add_reference("measles", measles["ref"], store)


@pytest.mark.small_data
def test_other_fasta_same_name_refused(measles, human, store) -> None:
    add_reference("r", measles["ref"], store)
    with pytest.raises(ReferenceNotFoundError, match="already exists with a different FASTA"):
        add_reference("r", human["ref"], store)
    info = add_reference("r", human["ref"], store, overwrite=True)
    assert info.contigs[0].name == "chr20_9995001_11095000"


@pytest.mark.small_data
def test_unknown_reference_and_bad_names(measles, store) -> None:
    with pytest.raises(ReferenceNotFoundError, match="does not exist.*persona reference add"):
        acquire_reference("nope", store)
    add_reference("measles", measles["ref"], store)
    with pytest.raises(ReferenceNotFoundError, match="known: measles"):
        reference_info("nope", store)
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ReferenceNotFoundError, match="invalid reference name"):
            add_reference(bad, measles["ref"], store)
    with pytest.raises(AlignerError, match="unknown aligner"):
        add_reference("x", measles["ref"], store, aligner="bowtie")
    with pytest.raises(ReferenceNotFoundError, match="no minimap2 index for preset 'map-ont'"):
        acquire_reference("measles", store, options=AlignerOptions(preset="map-ont"))


def test_bad_fasta_is_refused_before_indexing(tmp_path: Path, store) -> None:
    fa = tmp_path / "dup.fa"
    fa.write_text(">a\nACGT\n>a\nACGT\n")
    with pytest.raises(InputFormatError, match="duplicate contig name 'a'"):
        add_reference("dup", fa, store)
    assert list_references(store) == []


@pytest.mark.small_data
def test_loaded_once_shared_and_released(measles, human, store) -> None:
    add_reference("measles", measles["ref"], store)
    before = refmod.load_count
    held = []
    barrier = threading.Barrier(4)

    def grab() -> None:
        barrier.wait()
        held.append(acquire_reference("measles", store))

    ts = [threading.Thread(target=grab) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert refmod.load_count == before + 1  # four concurrent requests, one load
    assert len({id(h) for h in held}) == 1 and held[0].refs == 4
    # other per-request options share the index
    with use_reference("measles", store, options=AlignerOptions(secondary=2)) as sec:
        assert sec.aligner.options.secondary == 2 and refmod.load_count == before + 1
        res = sec.aligner.align(RaggedArray.from_list([b"ACGT"]))
        assert len(res.secondary) == 2
    for h in held:
        release_reference(h)
    assert held[0].refs == 0
    # kept idle: the next request does not reload
    with use_reference("measles", store):
        assert refmod.load_count == before + 1
    # a reference re-added under the same name with another FASTA is loaded afresh
    add_reference("measles", human["ref"], store, overwrite=True)
    with use_reference("measles", store) as ref:
        assert refmod.load_count == before + 2
        assert ref.contigs[0].name == "chr20_9995001_11095000"


@pytest.mark.small_data
def test_corrupt_index_is_refused(measles, store) -> None:
    add_reference("measles", measles["ref"], store)
    data = bytearray(store.get("measles/minimap2-sr.mmi"))
    data[len(data) // 2] ^= 0xFF
    store.put("measles/minimap2-sr.mmi", bytes(data))
    refmod._default_cache.clear()
    with pytest.raises(ReferenceNotFoundError, match="index is corrupt"):
        acquire_reference("measles", store)
    desc = json.loads(store.get("measles/reference.json"))
    assert desc["indexes"]["minimap2-sr"]["size"] == len(data)


@pytest.mark.small_data
def test_non_file_store_loads_through_a_copy(measles, tmp_path: Path) -> None:
    mem = open_store("memory://align-ref-test")
    add_reference("m", measles["ref"], mem)
    with use_reference("m", mem) as ref:
        res = ref.aligner.align(RaggedArray.from_list([b"ACGT" * 30]))
        assert len(res.primary) == 1
