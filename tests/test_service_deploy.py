"""The deployment files: systemd units verify, the env file and configs load (with env overrides), the
Prometheus config passes promtool, the Grafana dashboard names only metrics that exist, the Slurm
script parses and the Kubernetes manifest runs commands the CLI has; the protos ship in the package."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import require_tool

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNITS = {"persona-serve.service": " serve", "persona-coordinator.service": " coordinator",
         "persona-worker.service": " worker"}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_unit_verifies(tmp_path, unit):
    tool = require_tool("systemd-analyze")
    text = (DEPLOY / unit).read_text()
    assert text.count("ExecStart=/opt/persona/.venv/bin/persona --config /etc/persona/persona.yaml" + UNITS[unit]) == 1
    assert "EnvironmentFile=" in text and "/etc/persona/persona.env" in text
    # verify checks that ExecStart's binary exists: point it at this checkout's
    persona = Path(sys.executable).parent / "persona"
    if not persona.exists():
        pytest.fail(f"{persona} not installed (bash deploy/setup.sh): cannot verify ExecStart")
    path = tmp_path / unit
    path.write_text(text.replace("/opt/persona/.venv/bin/persona", str(persona)))
    r = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert unit not in r.stderr, r.stderr  # no warnings about our unit


def _env_file() -> dict[str, str]:
    env = {}
    for line in (DEPLOY / "persona.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v
    return env


def test_env_file_and_configs_load_with_env_overrides():
    from persona.config import load_config

    env = _env_file()
    assert all(k.startswith("PERSONA_") for k in env)
    cfg = load_config(REPO / "configs" / "service-local.yaml", env=env)
    assert cfg.service.db_path == "/var/lib/persona/service.db" and cfg.service.listen == "127.0.0.1:50151"
    assert cfg.service.metrics_listen == "127.0.0.1:9464" and cfg.service.tls_cert is None
    cluster = load_config(REPO / "configs" / "service-cluster.yaml", env={})
    assert cluster.service.roots and cluster.service.lease_seconds == 30
    assert cluster.service.worker_tls_ca and cluster.service.tls_cert
    assert cluster.service.listen.startswith("0.0.0.0:") and cluster.service.metrics_listen.startswith("0.0.0.0:")
    # every commented variable in the env file names a real key: uncommented, the config loads with it
    commented = {}
    for line in (DEPLOY / "persona.env").read_text().splitlines():
        m = re.match(r"^#(PERSONA_SERVICE__[A-Z_]+)=(.*)$", line.strip())
        if m:
            commented[m[1]] = m[2] or "x" * 16
    assert {"PERSONA_SERVICE__TOKEN", "PERSONA_SERVICE__TLS_CERT", "PERSONA_SERVICE__WORKER_TOKEN",
            "PERSONA_SERVICE__WORKER_TLS_CA"} <= set(commented)
    over = load_config(REPO / "configs" / "service-cluster.yaml", env={**env, **commented})
    assert over.service.tls_cert == commented["PERSONA_SERVICE__TLS_CERT"]
    assert over.service.worker_token == commented["PERSONA_SERVICE__WORKER_TOKEN"]
    assert over.service.db_path == "/var/lib/persona/service.db"


def test_prometheus_scrape_config_passes_promtool():
    promtool = require_tool("promtool")
    r = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert {j["job_name"] for j in cfg["scrape_configs"]} == {"persona-coordinator", "persona-workers"}
    # the coordinator's target is the metrics port the configs listen on
    port = yaml.safe_load((REPO / "configs" / "service-local.yaml").read_text())["service"]["metrics_listen"]
    assert cfg["scrape_configs"][0]["static_configs"][0]["targets"] == [port]


def _metric_names() -> set[str]:
    """Every metric family a service process can expose, as its scrape names them (with the
    ``_total``/``_bucket``/``_sum``/``_count`` series of counters and histograms)."""
    pytest.importorskip("prometheus_client")
    from persona.service.metrics import Metrics

    names: set[str] = set()
    for line in Metrics(lambda: {("align", "done"): 1}).text().decode().splitlines():
        m = re.match(r"^# TYPE (\S+) (\w+)", line)
        if m:
            name, kind = m[1], m[2]
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
    # the runtime's pipeline families (present once a pipeline ran): named in persona.ptf.introspection
    names.update(re.findall(r'"(persona_ptf_[a-z_]+)"', (REPO / "persona" / "ptf" / "introspection.py").read_text()))
    return names


def test_grafana_dashboard_is_valid_json_naming_only_existing_metrics():
    path = DEPLOY / "grafana" / "persona-dashboard.json"
    dash = json.loads(path.read_text())
    assert dash["title"] and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    used = {name for e in exprs for name in re.findall(r"\bpersona_[a-z0-9_]+", e)}
    known = _metric_names()
    assert used and not used - known, sorted(used - known)
    # the families the issue asks a dashboard for are all shown
    for family in ("persona_request_duration_seconds_bucket", "persona_ptf_gate_depth", "persona_ptf_stage_busy_seconds_total",
                   "persona_bases_processed_total", "persona_store_bytes_total", "persona_worker_up",
                   "persona_partitions_requeued_total", "persona_ptf_gate_credits_available"):
        assert family in used, family
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_slurm_batch_script_parses_and_starts_workers():
    script = DEPLOY / "slurm" / "persona-workers.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "#SBATCH --ntasks-per-node=1" in text
    assert re.search(r'"\$PERSONA" --config "\$PERSONA_CONFIG" worker --coordinator "\$PERSONA_COORDINATOR"', text)
    # without a coordinator it stops with a message saying what to set (before touching Slurm)
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "PERSONA_COORDINATOR" in r.stderr


def _k8s_commands() -> list[list[str]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "persona.yaml").read_text()) if d]
    out = []
    for d in docs:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                out.append(c["command"] + c.get("args", []))
    return out


def test_kubernetes_manifest_parses_and_runs_commands_the_cli_has(tmp_path):
    from persona.cli import build_parser
    from persona.config import load_config

    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "persona.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 2 and "Service" in kinds and "ConfigMap" in kinds
    commands = _k8s_commands()
    parser = build_parser()
    for cmd in commands:
        assert cmd[0] == "persona"
        parser.parse_args(cmd[1:])  # argparse exits (SystemExit) on an unknown command or option
    assert any("coordinator" in c for c in commands) and any("worker" in c for c in commands)
    worker = next(c for c in commands if "worker" in c)
    assert worker[worker.index("--coordinator") + 1] == "persona-coordinator:50152"
    # the ConfigMap's persona.yaml is a valid config; the Service exposes its ports
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cfg_path = tmp_path / "persona.yaml"
    cfg_path.write_text(cm["data"]["persona.yaml"])
    cfg = load_config(cfg_path, env={})
    svc = next(d for d in docs if d["kind"] == "Service")
    ports = {p["port"] for p in svc["spec"]["ports"]}
    assert {int(cfg.service.listen.rpartition(":")[2]), int(cfg.service.worker_listen.rpartition(":")[2]),
            int(cfg.service.metrics_listen.rpartition(":")[2])} == ports


def test_protos_ship_in_the_package(tmp_path):
    """setup.py's build_py copies protos/ into persona/protos/ (what a wheel holds), and the service
    finds them there when no source tree is around."""
    env = {"PATH": "/usr/bin:/bin", "PERSONA_SKIP_NATIVE": "1", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    shipped = sorted(p.relative_to(tmp_path / "lib" / "persona" / "protos")
                     for p in (tmp_path / "lib" / "persona" / "protos").rglob("*.proto"))
    source = sorted(p.relative_to(REPO / "protos") for p in (REPO / "protos").rglob("*.proto"))
    assert shipped == source and Path("persona/v1/persona.proto") in shipped
    for rel in source:
        assert (tmp_path / "lib" / "persona" / "protos" / rel).read_bytes() == (REPO / "protos" / rel).read_bytes()
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from persona.service import proto; "
             "print(proto.protos_root())")
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "lib")], capture_output=True, text=True,
                       timeout=60, env={**env, "PYTHONPATH": ""}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == tmp_path / "lib" / "persona" / "protos"
