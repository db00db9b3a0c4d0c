"""Every Cython kernel in native/ is compiled and importable as persona._native.<name>."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (REPO / "native").glob("*.pyx"))


def test_native_sources_exist() -> None:
    assert "bases" in MODULES and "alignment_codec" in MODULES


@pytest.mark.native
@pytest.mark.parametrize("name", MODULES)
def test_native_module_imports(name: str) -> None:
    try:
        mod = importlib.import_module(f"persona._native.{name}")
    except ImportError as e:
        pytest.fail(f"persona._native.{name} is not built ({e}); run: python setup.py build_ext --inplace")
    assert Path(mod.__file__ or "").suffix in (".so", ".pyd"), f"{name} is not a compiled module"
    stub = REPO / "persona" / "_native" / f"{name}.pyi"
    assert stub.is_file(), f"missing type stub {stub.relative_to(REPO)}"


def test_kernel_row_layout_is_alignment_dtype() -> None:
    """alignment_codec keeps its own copy of the row dtype (importing persona.agd from the
    kernel would be an import cycle); the copy must stay identical to ALIGNMENT_DTYPE, which
    native/alignment_row.pxd also mirrors."""
    from persona._native.alignment_codec import ROW_DTYPE
    from persona.agd.records import ALIGNMENT_DTYPE

    assert ROW_DTYPE == ALIGNMENT_DTYPE
