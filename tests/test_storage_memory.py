"""MemoryStore: the conformance suite plus named-bucket sharing."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from storage_conformance import StoreTests

from persona.storage import MemoryStore, PrefixStore, Store, StoreUsageError, open_store


@pytest.fixture
def bucket_name() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    MemoryStore.drop(name)


class TestMemoryStore(StoreTests):
    @pytest.fixture
    def store(self, bucket_name: str) -> Iterator[Store]:
        yield MemoryStore(bucket_name)


class TestMemoryChildStore(StoreTests):
    """A child (PrefixStore) must itself meet the whole contract."""

    @pytest.fixture
    def store(self, bucket_name: str) -> Iterator[Store]:
        parent = MemoryStore(bucket_name)
        parent.put("outside", b"not visible in the child")
        child = parent.child("inner")
        assert isinstance(child, PrefixStore)
        yield child


def test_same_name_shares_data(bucket_name: str) -> None:
    a = MemoryStore(bucket_name)
    b = open_store(f"memory://{bucket_name}")
    a.put("k", b"v")
    assert b.get("k") == b"v"
    b.delete("k")
    assert not a.exists("k")


def test_closing_one_handle_keeps_data(bucket_name: str) -> None:
    with MemoryStore(bucket_name) as a:
        a.put("k", b"v")
    assert MemoryStore(bucket_name).get("k") == b"v"


def test_anonymous_stores_are_private() -> None:
    a, b = MemoryStore(), MemoryStore()
    a.put("k", b"v")
    assert not b.exists("k")
    assert a.url != b.url


def test_drop_forgets_bucket(bucket_name: str) -> None:
    MemoryStore(bucket_name).put("k", b"v")
    MemoryStore.drop(bucket_name)
    assert not MemoryStore(bucket_name).exists("k")


def test_url_with_prefix_is_child(bucket_name: str) -> None:
    MemoryStore(bucket_name).put("ds/x", b"1")
    child = open_store(f"memory://{bucket_name}/ds/")
    assert child.get("x") == b"1"
    assert child.url == f"memory://{bucket_name}/ds"


@pytest.mark.parametrize("url", ["memory://", "memory:///x", "memory://n/../x"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(StoreUsageError):
        open_store(url)


@pytest.mark.parametrize("name", ["", "a/b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(StoreUsageError):
        MemoryStore(name)


def test_read_only(bucket_name: str) -> None:
    MemoryStore(bucket_name).put("k", b"v")
    ro = open_store(f"memory://{bucket_name}", read_only=True)
    assert not ro.supports_writes and not ro.supports_deletes
    assert ro.get("k") == b"v"
    with pytest.raises(StoreUsageError, match="read-only"):
        ro.put("k", b"x")
    with pytest.raises(StoreUsageError):
        ro.delete("k")
    assert ro.child("sub").supports_writes is False
    assert ro.get("k") == b"v"


def test_path_of_is_none(bucket_name: str) -> None:
    store = MemoryStore(bucket_name)
    store.put("k", b"v")
    assert store.path_of("k") is None
