"""open_store / register_store: scheme dispatch, lazy imports, install hints."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from persona.errors import StoreUnavailableError
from persona.storage import (
    FileStore,
    MemoryStore,
    Store,
    StoreUsageError,
    open_store,
    register_store,
    registered_schemes,
    registry,
    split_scheme,
)


@pytest.fixture(autouse=True)
def restore_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))


class RecordingStore(Store):
    """A tiny real backend (a dict) that remembers the URL and options it was opened with."""

    def __init__(self, url: str, options: dict[str, object]) -> None:
        self._url, self.options = url, options
        self.data: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        return self._url

    @classmethod
    def from_url(cls, url: str, **options: object) -> Store:
        return cls(url, options)

    def _get(self, key: str) -> bytes:
        return self.data[key]

    def _put(self, key: str, data: memoryview) -> None:
        self.data[key] = data.tobytes()

    def _put_if_absent(self, key: str, data: memoryview) -> bool:
        if key in self.data:
            return False
        self.data[key] = data.tobytes()
        return True

    def _exists(self, key: str) -> bool:
        return key in self.data

    def _delete(self, key: str) -> None:
        del self.data[key]

    def _list(self, prefix: str) -> Iterable[str]:
        return [k for k in self.data if k.startswith(prefix)]


def test_builtin_schemes() -> None:
    assert {"file", "memory", "ceph", "s3"} <= set(registered_schemes())
    assert registered_schemes() == sorted(registered_schemes())


def test_bare_path_and_file_url(tmp_path: Path) -> None:
    a = open_store(str(tmp_path))
    b = open_store(f"file://{tmp_path}")
    assert isinstance(a, FileStore) and isinstance(b, FileStore) and a.root == b.root == tmp_path


def test_memory_url() -> None:
    store = open_store("memory://registry-test")
    try:
        assert isinstance(store, MemoryStore) and store.url == "memory://registry-test"
    finally:
        MemoryStore.drop("registry-test")


def test_store_passes_through() -> None:
    store = MemoryStore()
    assert open_store(store) is store


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("ceph://pool/namespace", "apt-get install python3-rados"),
        ("s3://bucket/prefix", "pip install 'persona-genomics[s3]'"),
    ],
)
def test_optional_backends_report_install_hint(url: str, hint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scheme = url.split(":")[0]
    # Behave as if the backend's library is absent even once its module exists in the tree.
    monkeypatch.setitem(sys.modules, f"persona.storage.{scheme}", None)
    with pytest.raises(StoreUnavailableError) as info:
        open_store(url)
    assert isinstance(info.value, ImportError)
    assert hint in str(info.value) and f"{scheme}://" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_missing_module_of_registered_backend() -> None:
    register_store("nothere", "persona_no_such_module.sub:Cls", "pip install nothere")
    with pytest.raises(StoreUnavailableError, match="pip install nothere"):
        open_store("nothere://x")


def test_target_that_is_not_a_store() -> None:
    register_store("notstore", "persona.errors:PersonaError")
    with pytest.raises(StoreUnavailableError, match="not a Store class"):
        open_store("notstore://x")
    register_store("noattr", "persona.errors:NoSuchName")
    with pytest.raises(StoreUnavailableError):
        open_store("noattr://x")


def test_register_class_and_string_targets() -> None:
    register_store("rec", RecordingStore)
    store = open_store("rec://host/path", read_only=True)
    assert isinstance(store, RecordingStore)
    assert store.url == "rec://host/path" and store.options == {"read_only": True}
    store.put("k", b"v")
    assert list(store.list()) == ["k"]
    register_store("rec2", f"{__name__}:RecordingStore")
    assert type(open_store("REC2://x")).__name__ == "RecordingStore"  # schemes are case-insensitive


def test_register_replaces() -> None:
    register_store("memory", RecordingStore)
    assert isinstance(open_store("memory://y"), RecordingStore)


def test_unknown_scheme() -> None:
    with pytest.raises(StoreUsageError, match=r"unknown store scheme 'gopher'.*memory"):
        open_store("gopher://host/x")


@pytest.mark.parametrize(("scheme", "target"), [("Bad", "a:B"), ("9x", "a:B"), ("ok", "nocolon"), ("ok", "a:B:C")])
def test_bad_registrations(scheme: str, target: str) -> None:
    with pytest.raises(StoreUsageError):
        register_store(scheme, target)


@pytest.mark.parametrize("location", ["", 42])
def test_bad_locations(location: object) -> None:
    with pytest.raises((StoreUsageError, TypeError)):
        open_store(location)  # type: ignore[arg-type]


def test_split_scheme() -> None:
    assert split_scheme("S3://b/p") == ("s3", "s3://b/p")
    assert split_scheme("/abs/path") == ("file", "/abs/path")
    assert split_scheme("rel:colon/path") == ("file", "rel:colon/path")
    assert split_scheme("C:/x") == ("file", "C:/x")


def test_import_persona_storage_needs_no_optional_libraries() -> None:
    optional = ("rados", "boto3", "botocore", "persona.storage.ceph", "persona.storage.s3")
    code = f"import sys, persona.storage; print(sorted(m for m in {optional!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
