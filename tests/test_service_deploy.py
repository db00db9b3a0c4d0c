"""deploy/persona-serve.service passes systemd-analyze verify; the env file and service configs load."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_systemd_unit_verifies(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed: deploy/persona-serve.service was not verified")
    text = (REPO / "deploy" / "persona-serve.service").read_text()
    assert "ExecStart=/opt/persona/.venv/bin/persona " in text and " serve" in text
    # verify checks that ExecStart's binary exists: point it at this checkout's
    persona = Path(sys.executable).parent / "persona"
    if not persona.exists():
        pytest.skip(f"{persona} not installed (pip install -e .): cannot verify ExecStart")
    unit = tmp_path / "persona-serve.service"
    unit.write_text(text.replace("/opt/persona/.venv/bin/persona", str(persona)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "persona-serve.service" not in r.stderr, r.stderr  # no warnings about our unit


def test_env_file_and_configs_load():
    from persona.config import load_config

    env = {}
    for line in (REPO / "deploy" / "persona.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v
    cfg = load_config(REPO / "configs" / "service-local.yaml", env=env)
    assert cfg.service.db_path == "/var/lib/persona/service.db" and cfg.service.listen == "127.0.0.1:50151"
    cluster = load_config(REPO / "configs" / "service-cluster.yaml", env={})
    assert cluster.service.roots and cluster.service.lease_seconds == 30
