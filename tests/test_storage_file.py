"""FileStore: the conformance suite plus file-system specifics (atomicity, escapes, URLs)."""
from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_conformance import StoreTests

from persona.errors import StoreError, StoreKeyError
from persona.storage import FileStore, InvalidKeyError, Store, StoreUsageError, open_store


class TestFileStore(StoreTests):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        yield FileStore(tmp_path / "store")


class TestFileStoreNoFsync(StoreTests):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        yield FileStore(tmp_path / "store", fsync=False)


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.startswith(".persona-tmp-")]


def test_root_created_on_first_write(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = FileStore(root)
    assert not root.exists()
    assert list(store.list()) == []  # reading an absent root is an empty store
    assert not store.exists("k")
    store.put("x/k", b"v")
    assert (root / "x" / "k").read_bytes() == b"v"


def test_put_leaves_no_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for i in range(5):
        store.put("d/k", bytes([i]) * 100)
    assert leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path / "d")) == ["k"]


def test_failed_put_keeps_old_value_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)
    store.put("k", b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreError, match="No space left") as info:
        store.put("k", b"new")
    assert info.value.transient and "k" in str(info.value)
    monkeypatch.undo()
    assert store.get("k") == b"old"
    assert leftovers(tmp_path) == []


def test_temp_files_hidden_and_reserved(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("k", b"v")
    (tmp_path / ".persona-tmp-k.123").write_bytes(b"partial")
    assert list(store.list()) == ["k"]
    with pytest.raises(InvalidKeyError):
        store.get(".persona-tmp-k.123")


def test_symlink_escape_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret")
    store = FileStore(root)
    for key in ("link/secret", "filelink"):
        with pytest.raises(InvalidKeyError, match="outside"):
            store.get(key)
        with pytest.raises(InvalidKeyError):
            store.exists(key)
        with pytest.raises(InvalidKeyError):
            store.path_of(key)
    with pytest.raises(InvalidKeyError):
        store.put("link/new", b"x")
    assert not (outside / "new").exists()
    assert list(store.list()) == []
    assert list(store.list("link/")) == []


def test_symlinks_inside_root_allowed(tmp_path: Path) -> None:
    real_root = tmp_path / "real"
    store = FileStore(real_root)
    store.put("data/k", b"v")
    (real_root / "alias").symlink_to(real_root / "data" / "k")
    assert store.get("alias") == b"v"
    assert list(store.list()) == ["alias", "data/k"]
    # The root itself may be a symlink.
    (tmp_path / "rootlink").symlink_to(real_root, target_is_directory=True)
    via_link = FileStore(tmp_path / "rootlink")
    assert via_link.get("data/k") == b"v"


def test_object_and_directory_conflict(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("a", b"file")
    with pytest.raises(StoreError) as info:
        store.put("a/b", b"x")
    assert not isinstance(info.value, StoreKeyError)
    store.put("d/e", b"x")
    with pytest.raises(StoreError):
        store.put("d", b"x")  # "d" is a directory
    assert store.size("a") == 4


def test_path_of_and_mmap(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("chunk", b"0123456789")
    path = store.path_of("chunk")
    assert path == str(tmp_path / "chunk")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[2:5] == b"234"
    assert store.path_of("not/yet") == str(tmp_path / "not" / "yet")


def test_child_is_file_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    child = store.child("ds/x")
    assert isinstance(child, FileStore) and child.root == tmp_path / "ds" / "x" and child.fsync is False
    child.put("k", b"v")
    assert store.get("ds/x/k") == b"v"


@pytest.mark.parametrize(
    "make_url",
    [
        lambda p: str(p),
        lambda p: "file://" + str(p),
        lambda p: "file://localhost" + str(p),
        lambda p: "FILE://" + str(p),
        lambda p: p,  # a pathlib.Path
    ],
)
def test_open_store_forms(tmp_path: Path, make_url: object) -> None:
    root = tmp_path / "dir with space%"
    store = open_store(make_url(root))  # type: ignore[operator]
    assert isinstance(store, FileStore) and store.root == root
    again = open_store(store.url)
    assert isinstance(again, FileStore) and again.root == root


def test_relative_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_store("rel/dir").root == tmp_path / "rel" / "dir"  # type: ignore[attr-defined]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert open_store("~/data").root == tmp_path / "home" / "data"  # type: ignore[attr-defined]


def test_empty_file_url() -> None:
    with pytest.raises(StoreUsageError):
        open_store("file://")


def test_read_only(tmp_path: Path) -> None:
    FileStore(tmp_path).put("k", b"v")
    ro = open_store(str(tmp_path), read_only=True)
    assert ro.get("k") == b"v"
    with pytest.raises(StoreUsageError, match="read-only"):
        ro.put("k2", b"v")
    with pytest.raises(StoreUsageError):
        ro.delete("k")
    assert not (tmp_path / "k2").exists()
    assert ro.child("x").supports_writes is False


def test_io_error_is_store_error(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    (tmp_path / "blocker").write_bytes(b"")
    bad = FileStore(tmp_path / "blocker" / "root")  # root under a file: cannot be created
    with pytest.raises(StoreError) as info:
        bad.put("k", b"v")
    assert bad.url in str(info.value)
    assert store.get("blocker") == b""


# -- partial objects of killed puts ---------------------------------------------------------
_KILLED_PUT = """
import os, sys
from persona.storage import FileStore
store = FileStore(sys.argv[1])
os.replace = lambda src, dst: os._exit(9)  # the process dies between writing and renaming
store.put(sys.argv[2], b"x" * 100000)
"""


def killed_put(root: Path, key: str) -> None:
    """A real writer process killed in the middle of ``put(key)``: its staged bytes stay behind."""
    import subprocess
    import sys

    rc = subprocess.run([sys.executable, "-c", _KILLED_PUT, str(root), key], timeout=60).returncode
    assert rc == 9


def test_remove_temporaries_takes_killed_puts_under_the_prefix_only(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("ds_0.base", b"committed")
    for key in ("ds.sortrun-a-0", "ds.sortrun-a-1", "ds.sortrunner", "other_0.base", "sub/ds.sortrun-a-2"):
        killed_put(tmp_path, key)
    assert len(leftovers(tmp_path)) == 5
    assert list(store.list()) == ["ds_0.base"]  # never listed as keys
    assert sorted(store.remove_temporaries("ds.sortrun-a-")) == ["ds.sortrun-a-0", "ds.sortrun-a-1"]
    assert sorted(store.remove_temporaries("sub/ds.sortrun-a-")) == ["sub/ds.sortrun-a-2"]
    assert sorted(leftovers(tmp_path)) == sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith(".persona-tmp-"))
    left = {p.name.split(".persona-tmp-")[1].rsplit(".", 1)[0] for p in tmp_path.iterdir()
            if p.name.startswith(".persona-tmp-")}
    assert left == {"ds.sortrunner", "other_0.base"}
    assert store.remove_temporaries("", match=lambda k: k.startswith("other")) == ["other_0.base"]
    assert store.get("ds_0.base") == b"committed"  # objects are never touched


def test_remove_temporaries_spares_recent_ones_when_asked(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    killed_put(tmp_path, "old")
    killed_put(tmp_path, "new")
    for p in tmp_path.iterdir():
        if ".persona-tmp-old." in p.name:
            os.utime(p, (0, 1000))  # written long ago
    assert store.remove_temporaries("", min_age=3600) == ["old"]
    assert store.remove_temporaries("", min_age=3600) == []
    assert store.remove_temporaries("") == ["new"]
    assert leftovers(tmp_path) == []


def test_remove_temporaries_through_a_child_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    killed_put(tmp_path, "d/ds_0.base")
    child = store.child("d")
    assert child.remove_temporaries("ds_") == ["ds_0.base"]
    assert leftovers(tmp_path) == []


def test_remove_temporaries_is_a_no_op_on_stores_with_atomic_puts() -> None:
    from persona.storage import MemoryStore

    store = MemoryStore()
    store.put("k", b"v")
    assert store.remove_temporaries("") == [] and store.get("k") == b"v"
