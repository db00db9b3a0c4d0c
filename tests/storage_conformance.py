"""The contract every Store backend must meet, as a reusable test base class.

A backend's test module subclasses :class:`StoreTests` as ``TestXxxStore`` and
overrides the ``store`` fixture to yield a fresh, empty, writable store. The
base class is not collected by itself (its name does not start with ``Test``).
``open_store(store.url)`` must reach the same data: that is how the suite
checks URLs and cross-handle visibility.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from persona.errors import StoreError, StoreKeyError
from persona.storage import InvalidKeyError, Store, StoreUsageError, open_store

BAD_KEYS = [
    "",
    "/abs",
    "/",
    "a/../b",
    "..",
    ".",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\x00b",
]


class StoreTests:
    """Conformance tests; subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        raise NotImplementedError("a backend's test class must override the store fixture")

    # ------------------------------------------------------------- basic I/O
    def test_flags_and_url(self, store: Store) -> None:
        for flag in ("supports_writes", "supports_deletes", "supports_listing", "supports_partial_reads"):
            assert isinstance(getattr(store, flag), bool)
        assert store.supports_writes and store.supports_deletes and store.supports_listing
        assert "://" in store.url
        assert store.url in repr(store)
        assert not store.closed

    def test_put_get_roundtrip(self, store: Store) -> None:
        store.put("a", b"hello")
        got = store.get("a")
        assert got == b"hello" and type(got) is bytes

    def test_empty_value(self, store: Store) -> None:
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.exists("empty")
        assert store.size("empty") == 0

    def test_nested_keys(self, store: Store) -> None:
        store.put("ds/sub/x_0.base", b"1")
        store.put("ds/x_0.qual", b"22")
        assert store.get("ds/sub/x_0.base") == b"1"
        assert store.get("ds/x_0.qual") == b"22"

    def test_buffer_types(self, store: Store) -> None:
        store.put("ba", bytearray(b"\x00\x01"))
        store.put("mv", memoryview(b"abcdef")[2:4])
        arr = np.arange(6, dtype=np.uint64)
        store.put("np", arr)
        store.put("np-strided", arr[::2])  # non-contiguous: stored in logical order
        assert store.get("ba") == b"\x00\x01"
        assert store.get("mv") == b"cd"
        assert np.array_equal(np.frombuffer(store.get("np"), dtype=np.uint64), arr)
        assert np.array_equal(np.frombuffer(store.get("np-strided"), dtype=np.uint64), arr[::2])

    def test_put_copies_caller_buffer(self, store: Store) -> None:
        buf = bytearray(b"before")
        store.put("k", buf)
        buf[:] = b"after!"
        assert store.get("k") == b"before"

    def test_put_rejects_str_and_non_buffers(self, store: Store) -> None:
        with pytest.raises(TypeError):
            store.put("k", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.put("k", 42)  # type: ignore[arg-type]
        assert not store.exists("k")

    def test_overwrite(self, store: Store) -> None:
        store.put("k", b"first-longer-value")
        store.put("k", b"second")
        assert store.get("k") == b"second"
        assert store.size("k") == 6
        assert list(store.list()) == ["k"]

    def test_large_value(self, store: Store) -> None:
        data = np.random.default_rng(1).integers(0, 256, 3_000_001, dtype=np.uint8).tobytes()
        store.put("big", data)
        assert store.size("big") == len(data)
        assert store.get("big") == data
        assert store.get_range("big", 2_999_990, 100) == data[2_999_990:]

    # --------------------------------------------------------- missing keys
    def test_get_missing(self, store: Store) -> None:
        with pytest.raises(StoreKeyError) as info:
            store.get("nope/x")
        assert isinstance(info.value, KeyError)
        assert "nope/x" in str(info.value) and store.url in str(info.value)

    @pytest.mark.parametrize("op", ["get", "size", "delete", "open_file", "get_range", "get_range0"])
    def test_missing_key_errors(self, store: Store, op: str) -> None:
        store.put("other", b"x")
        with pytest.raises(StoreKeyError, match="missing"):
            if op == "get_range":
                store.get_range("missing", 0, 4)
            elif op == "get_range0":
                store.get_range("missing", 0, 0)
            else:
                getattr(store, op)("missing")

    def test_prefix_of_key_is_not_a_key(self, store: Store) -> None:
        store.put("dir/leaf", b"x")
        assert not store.exists("dir")
        assert not store.exists("dir/leaf/deeper")
        with pytest.raises(StoreKeyError):
            store.get("dir")
        with pytest.raises(StoreKeyError):
            store.get("dir/leaf/deeper")
        for op in (store.delete, store.size, store.open_file):
            with pytest.raises(StoreKeyError):
                op("dir")
        assert store.get("dir/leaf") == b"x"

    # --------------------------------------------------------------- ranges
    @pytest.mark.parametrize(
        ("start", "length", "expected"),
        [
            (0, 4, b"0123"),
            (3, 2, b"34"),
            (7, None, b"789"),
            (0, None, b"0123456789"),
            (8, 10, b"89"),  # runs past the end: truncated
            (10, 5, b""),  # starts at the end
            (50, 5, b""),  # starts past the end
            (5, 0, b""),
        ],
    )
    def test_get_range(self, store: Store, start: int, length: int | None, expected: bytes) -> None:
        store.put("r", b"0123456789")
        assert store.get_range("r", start, length) == expected

    @pytest.mark.parametrize(("start", "length"), [(-1, 2), (0, -1)])
    def test_get_range_negative(self, store: Store, start: int, length: int) -> None:
        store.put("r", b"0123456789")
        with pytest.raises(StoreUsageError):
            store.get_range("r", start, length)

    # ------------------------------------------------------ exists / delete
    def test_exists_and_delete(self, store: Store) -> None:
        assert not store.exists("k")
        store.put("k", b"v")
        assert store.exists("k")
        store.delete("k")
        assert not store.exists("k")
        with pytest.raises(StoreKeyError):
            store.get("k")
        with pytest.raises(StoreKeyError):
            store.delete("k")
        store.put("k", b"again")  # a deleted key can be written again
        assert store.get("k") == b"again"

    def test_delete_leaves_siblings(self, store: Store) -> None:
        store.put("d/a", b"1")
        store.put("d/b", b"2")
        store.delete("d/a")
        assert list(store.list()) == ["d/b"]

    # --------------------------------------------------------------- listing
    def test_list_sorted_with_prefixes(self, store: Store) -> None:
        keys = ["ds/yeast_200.base", "ds/yeast_0.base", "ds/yeast_metadata.json", "ds-other", "ds/sub/z", "a", "ds.x"]
        for k in keys:
            store.put(k, k.encode())
        it = store.list()
        assert iter(it) is it  # an iterator, not a list
        assert list(it) == sorted(keys)
        assert list(store.list("ds/")) == sorted(k for k in keys if k.startswith("ds/"))
        assert list(store.list("ds/yeast_")) == ["ds/yeast_0.base", "ds/yeast_200.base", "ds/yeast_metadata.json"]
        assert list(store.list("ds")) == sorted(k for k in keys if k.startswith("ds"))
        assert list(store.list("ds/sub/")) == ["ds/sub/z"]
        assert list(store.list("zzz")) == []
        assert list(store.list("ds/nothing/")) == []

    def test_list_empty_store(self, store: Store) -> None:
        assert list(store.list()) == []

    @pytest.mark.parametrize("prefix", ["/abs", "a/../", "a//", "..", "a\\"])
    def test_list_bad_prefix(self, store: Store, prefix: str) -> None:
        with pytest.raises(InvalidKeyError):
            store.list(prefix)

    # -------------------------------------------------------------- bad keys
    @pytest.mark.parametrize("key", BAD_KEYS)
    @pytest.mark.parametrize("op", ["get", "put", "exists", "delete", "size", "get_range", "child"])
    def test_bad_keys(self, store: Store, key: str, op: str) -> None:
        with pytest.raises(InvalidKeyError) as info:
            if op == "put":
                store.put(key, b"x")
            elif op == "get_range":
                store.get_range(key, 0, 1)
            else:
                getattr(store, op)(key)
        assert isinstance(info.value, ValueError) and isinstance(info.value, StoreError)
        assert list(store.list()) == []

    @pytest.mark.parametrize("key", [None, 3, b"bytes"])
    def test_non_str_keys(self, store: Store, key: object) -> None:
        with pytest.raises(InvalidKeyError):
            store.get(key)  # type: ignore[arg-type]

    def test_unusual_but_valid_keys(self, store: Store) -> None:
        keys = ["with space", "ünïcode/ключ", ".hidden", "a..b", "x-y_z.0"]
        for k in keys:
            store.put(k, k.encode())
        assert sorted(store.list()) == sorted(keys)
        for k in keys:
            assert store.get(k) == k.encode()

    # ---------------------------------------------------------------- extras
    def test_open_file(self, store: Store) -> None:
        store.put("f", b"file contents")
        with store.open_file("f") as f:
            assert f.read(4) == b"file"
            f.seek(5)
            assert f.read() == b"contents"

    def test_path_of(self, store: Store) -> None:
        store.put("p/q", b"local?")
        path = store.path_of("p/q")
        if path is not None:  # backends with local files must point at the real bytes
            with open(path, "rb") as f:
                assert f.read() == b"local?"

    def test_reopen_by_url_sees_data(self, store: Store) -> None:
        store.put("shared/k", b"v1")
        other = open_store(store.url)
        assert other.get("shared/k") == b"v1"
        other.put("shared/k2", b"v2")
        assert store.get("shared/k2") == b"v2"
        assert type(other).__name__ == type(store).__name__ or other.url == store.url

    def test_child(self, store: Store) -> None:
        store.put("top", b"t")
        child = store.child("ds")
        assert child.url.rstrip("/").endswith("ds")
        child.put("a", b"1")
        child.put("sub/b", b"2")
        assert store.get("ds/a") == b"1"
        assert list(child.list()) == ["a", "sub/b"]
        assert list(child.list("sub/")) == ["sub/b"]
        assert child.size("sub/b") == 1
        assert child.get_range("sub/b", 0, 5) == b"2"
        grandchild = child.child("sub")
        assert grandchild.get("b") == b"2"
        with pytest.raises(StoreKeyError) as info:
            child.get("top")
        assert "top" in str(info.value) and child.url in str(info.value)
        child.delete("a")
        assert not store.exists("ds/a")
        child.close()
        assert store.get("top") == b"t"  # closing a child leaves the parent open

    def test_close_and_context_manager(self, store: Store) -> None:
        store.put("k", b"v")
        with store as s:
            assert s is store
        assert store.closed
        store.close()  # idempotent
        for call in (lambda: store.get("k"), lambda: store.put("k", b"x"), lambda: store.list()):
            with pytest.raises(StoreUsageError, match="closed"):
                call()

    # ----------------------------------------------------------- concurrency
    @pytest.mark.timeout(60)
    def test_concurrent_puts(self, store: Store) -> None:
        """Distinct keys from many threads all land; racing writers of one key never tear it."""
        n_threads, per_thread = 8, 20
        payloads = [bytes([i]) * (64 * 1024 + i) for i in range(n_threads)]
        errors: list[BaseException] = []
        torn: list[int] = []
        start = threading.Barrier(n_threads + 2)

        def writer(t: int) -> None:
            try:
                start.wait()
                for i in range(per_thread):
                    store.put(f"t{t}/k{i:03d}", f"{t}:{i}".encode())
                    store.put("contended", payloads[t])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        writers_done = threading.Event()

        def reader() -> None:
            start.wait()
            while not writers_done.is_set():  # read for as long as anyone writes
                try:
                    value = store.get("contended")
                except StoreKeyError:
                    continue  # not written yet
                if value not in payloads:
                    torn.append(len(value))

        writers = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for th in writers + readers:
            th.start()
        for th in writers:
            th.join()
        writers_done.set()
        for th in readers:
            th.join()
        assert errors == []
        assert torn == []
        keys = list(store.list())
        assert len(keys) == n_threads * per_thread + 1
        assert store.get("t3/k007") == b"3:7"
        assert store.get("contended") in payloads

    # ------------------------------------------------- exclusive create and copy
    def test_put_if_absent(self, store: Store) -> None:
        assert store.put_if_absent("claim", b"first") is True
        assert store.put_if_absent("claim", b"second") is False
        assert store.get("claim") == b"first"
        store.delete("claim")
        assert store.put_if_absent("claim", b"third") is True
        assert store.get("claim") == b"third"
        assert store.put_if_absent("d/nested", b"x") is True

    @pytest.mark.timeout(60)
    def test_put_if_absent_race_has_one_winner(self, store: Store) -> None:
        """Many threads racing to create one key: exactly one wins, and its value stays."""
        n = 8
        wins: list[int] = []
        start = threading.Barrier(n)

        def racer(t: int) -> None:
            start.wait()
            if store.put_if_absent("race", f"{t}".encode()):
                wins.append(t)

        threads = [threading.Thread(target=racer, args=(t,)) for t in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(wins) == 1
        assert store.get("race") == f"{wins[0]}".encode()
        assert list(store.list("race")) == ["race"]

    def test_copy(self, store: Store) -> None:
        store.put("src", b"payload")
        store.put("dst", b"old")
        store.copy("src", "dst")
        assert store.get("dst") == b"payload"
        store.copy("src", "sub/dst2")
        store.delete("src")  # the copies are independent keys
        assert store.get("dst") == b"payload"
        assert store.get("sub/dst2") == b"payload"
        with pytest.raises(StoreKeyError):
            store.copy("missing", "x")
