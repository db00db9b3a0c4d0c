"""Packaging: distribution metadata, the sdist carrying minimap2's sources, the offline-build message."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_distribution_name_command_and_optional_mappy() -> None:
    project = _pyproject()["project"]
    assert project["name"] == "persona-genomics"  # "persona" is taken on PyPI
    assert project["scripts"] == {"persona": "persona.cli:main"}
    core = " ".join(project["dependencies"])
    for optional in ("mappy", "protobuf", "grpc", "pytest"):
        assert optional not in core, optional
    extras = project["optional-dependencies"]
    assert any(d.startswith("mappy") for d in extras["mappy"])
    assert any(d.startswith("protobuf") for d in extras["test"])


def test_runtime_dependencies_are_imported_by_the_package() -> None:
    """Every core dependency is imported somewhere in persona/ (else it belongs in an extra)."""
    import_names = {"numpy": "numpy", "zstandard": "zstandard", "pyyaml": "yaml", "pysam": "pysam", "isal": "isal"}
    sources = "\n".join(p.read_text() for p in (REPO / "persona").rglob("*.py"))
    for dep in _pyproject()["project"]["dependencies"]:
        name = dep.split(">")[0].split("=")[0].split("[")[0].strip().lower()
        module = import_names.get(name, name)
        assert f"import {module}" in sources or f"from {module}" in sources, f"{name} is not imported by persona"


def test_offline_build_without_sources_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PERSONA_MINIMAP2_SRC"}
    env.update(PERSONA_CACHE_DIR=str(tmp_path / "cache"), PIP_NO_INDEX="1")
    # a copy of setup.py alone: no third_party/ (sdist) or build/third_party/ beside it
    (tmp_path / "setup.py").write_bytes((REPO / "setup.py").read_bytes())
    proc = subprocess.run([sys.executable, "setup.py", "fetch-minimap2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    for hint in ("deploy/setup.sh", "PERSONA_MINIMAP2_SRC", "mappy-2.31.tar.gz", str(tmp_path / "cache"),
                 "python -m build --sdist"):
        assert hint in proc.stderr, (hint, proc.stderr)


def test_deploy_scripts_parse() -> None:
    for script in [*(REPO / "deploy").glob("*.sh"), REPO / ".ci" / "run"]:
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.slow
def test_sdist_carries_minimap2_sources_and_no_generated_code(tmp_path: Path) -> None:
    cached = subprocess.run([sys.executable, "setup.py", "fetch-minimap2"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PIP_NO_INDEX": "1"})
    if cached.returncode != 0:
        pytest.skip("minimap2's sources are not cached here (deploy/setup.sh fetches them)")
    # the setuptools sdist command, as `python -m build --sdist` runs it (without its isolated env)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True)
    (sdist,) = tmp_path.glob("persona_genomics-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        sources = tar.extractfile(next(m for m in tar.getmembers()
                                       if m.name.endswith(".egg-info/SOURCES.txt"))).read().decode()
    for f in ("minimap.h", "map.c", "ksw2_extz2_sse.c", "LICENSE.txt", "SOURCE.txt"):
        assert f"third_party/mappy-2.31/{f}" in names, f
    assert {"native/mm2.pyx", "setup.py", "pyproject.toml", "persona/data/sample_reference.fasta"} <= names
    assert not [n for n in names if n.startswith("native/") and n.endswith(".c")]  # regenerated from .pyx
    assert not [line for line in sources.splitlines() if line.startswith("/")]  # breaks builds from the sdist
