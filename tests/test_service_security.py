"""The service's security: TLS on the client API, mutual TLS helpers for the worker API, bearer tokens,
and request paths confined to the configured roots (``..``, absolute paths, symlink escapes).

Certificates come from a throwaway CA made with the openssl command line for each test module;
every server listens on loopback.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("prometheus_client")

OPENSSL = shutil.which("openssl")
DATA = Path(__file__).resolve().parents[1] / "persona" / "data"


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(crt), cwd=d)
    return crt, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], *, client: bool = False) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    usage = "clientAuth" if client else "serverAuth"
    ext.write_text(f"subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n"
                   "basicConstraints=CA:FALSE\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr), cwd=d)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(crt), cwd=d)
    return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server and a client certificate it signed, and a rogue CA with its own client certificate."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed: no certificates to test TLS with")
    d = tmp_path_factory.mktemp("pki")
    ca = _ca(d, "ca")
    rogue = _ca(d, "rogue")
    server = _leaf(d, "server", ca)
    client = _leaf(d, "client", ca, client=True)
    stranger = _leaf(d, "stranger", rogue, client=True)
    return {"ca": ca[0], "server_crt": server[0], "server_key": server[1], "client_crt": client[0],
            "client_key": client[1], "rogue_ca": rogue[0], "stranger_crt": stranger[0], "stranger_key": stranger[1]}


def _config(root: Path, **service: str) -> object:
    from persona.config import load_config

    lines = "".join(f"  {k}: \"{v}\"\n" for k, v in service.items())
    path = root / "persona.yaml"
    path.write_text(f"""\
align:
  references_url: "{root / 'refs'}"
  threads: 1
service:
  listen: "127.0.0.1:0"
  metrics_listen: null
  db_path: "{root / 'state' / 'service.db'}"
  roots: "{root}"
{lines}""")
    return load_config(path, env={})


class Served:
    """A Service on an event loop of its own thread (as in test_service.py)."""

    def __init__(self, config: object) -> None:
        from persona.service.server import Service

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = Service(config)
        self.address = asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(60)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.service.stop(0), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture
def tls_server(tmp_path, pki):
    s = Served(_config(tmp_path, tls_cert=str(pki["server_crt"]), tls_key=str(pki["server_key"])))
    yield s
    s.close()


def test_tls_client_api_works_and_plain_is_refused(tls_server, pki):
    from persona.service.client import Client, ServiceError

    port = tls_server.address.rpartition(":")[2]
    # the certificate names localhost and 127.0.0.1: both addresses verify
    for host in ("127.0.0.1", "localhost"):
        with Client(f"{host}:{port}", tls_server.service.token, tls_ca=str(pki["ca"]), timeout=20) as c:
            assert c.tls
            st = c.cluster_status()
            assert st["state"] == "running" and st["workers"]
            assert c.list()[0] == []
    # a plain-text client cannot talk to the TLS port
    with Client(tls_server.address, tls_server.service.token, timeout=5, config=tls_server.service.config) as c:
        assert not c.tls
        with pytest.raises(ServiceError) as e:
            c.cluster_status()
        assert e.value.code == "UNAVAILABLE"
    # a client trusting another CA refuses the server's certificate
    with Client(tls_server.address, tls_server.service.token, tls_ca=str(pki["rogue_ca"]), timeout=5) as c:
        with pytest.raises(ServiceError) as e:
            c.cluster_status()
        assert e.value.code == "UNAVAILABLE"


def test_tls_with_wrong_or_missing_token_is_unauthenticated(tls_server, pki):
    from persona.service.client import Client, ServiceError

    for token in ("", "0" * 64, tls_server.service.token + "x"):
        with Client(tls_server.address, token, tls_ca=str(pki["ca"]), timeout=20) as c:
            for call in (c.cluster_status, c.list, lambda: c.get("x"), lambda: c.cancel("x")):
                with pytest.raises(ServiceError) as e:
                    call()
                assert e.value.code == "UNAUTHENTICATED"


def test_bad_tls_settings_are_named(tmp_path, pki):
    from persona.service import security
    from persona.service.security import TlsError

    with pytest.raises(TlsError, match="service.tls_key is set but service.tls_cert is not"):
        security.client_api_server_credentials(_config(tmp_path, tls_key=str(pki["server_key"])))
    with pytest.raises(TlsError, match=r"service.tls_cert: cannot read .*nothing.pem"):
        security.client_api_server_credentials(_config(tmp_path, tls_cert=str(tmp_path / "nothing.pem"),
                                                       tls_key=str(pki["server_key"])))
    (tmp_path / "notpem.crt").write_text("hello\n")
    with pytest.raises(TlsError, match="not a PEM file"):
        security.client_api_server_credentials(_config(tmp_path, tls_cert=str(tmp_path / "notpem.crt"),
                                                       tls_key=str(pki["server_key"])))
    with pytest.raises(TlsError, match="missing: service.worker_tls_ca"):
        security.worker_api_server_credentials(_config(tmp_path, worker_tls_cert=str(pki["server_crt"]),
                                                       worker_tls_key=str(pki["server_key"])))
    assert security.worker_api_server_credentials(_config(tmp_path)) is None
    assert security.client_api_server_credentials(_config(tmp_path)) is None


# -- mutual TLS (the worker API's helpers) on a real grpc server --------------------------------------
def _echo_server(credentials) -> tuple[object, str]:
    """A grpc server with one generic unary method ``/persona.test.Echo/Ping`` on loopback."""
    from concurrent.futures import ThreadPoolExecutor

    from persona.service import security

    def ping(request: bytes, context) -> bytes:
        return b"pong:" + request

    handler = grpc.method_handlers_generic_handler("persona.test.Echo", {
        "Ping": grpc.unary_unary_rpc_method_handler(ping)})
    server = grpc.server(ThreadPoolExecutor(2), handlers=[handler])
    port = security.add_port(server, "127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


def _ping(address: str, credentials) -> bytes:
    from persona.service import security

    with security.open_channel(address, credentials) as ch:
        call = ch.unary_unary("/persona.test.Echo/Ping")
        return call(b"x", timeout=5)


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(tmp_path, pki):
    from persona.service import security

    coordinator = _config(tmp_path, worker_tls_cert=str(pki["server_crt"]), worker_tls_key=str(pki["server_key"]),
                          worker_tls_ca=str(pki["ca"]))
    server, address = _echo_server(security.worker_api_server_credentials(coordinator))
    try:
        worker = _config(tmp_path, worker_tls_cert=str(pki["client_crt"]), worker_tls_key=str(pki["client_key"]),
                         worker_tls_ca=str(pki["ca"]))
        assert _ping(address, security.worker_api_channel_credentials(worker)) == b"pong:x"
        # a certificate the CA did not sign: the handshake fails
        stranger = _config(tmp_path, worker_tls_cert=str(pki["stranger_crt"]),
                           worker_tls_key=str(pki["stranger_key"]), worker_tls_ca=str(pki["ca"]))
        with pytest.raises(grpc.RpcError) as e:
            _ping(address, security.worker_api_channel_credentials(stranger))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # no certificate at all (TLS, trusting the CA): refused too
        anonymous = security.channel_credentials(security.TlsFiles.load(ca=str(pki["ca"])))
        with pytest.raises(grpc.RpcError) as e:
            _ping(address, anonymous)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # plain text: refused
        with pytest.raises(grpc.RpcError) as e:
            _ping(address, None)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_token_ok():
    from persona.service.security import bearer_metadata, token_ok

    assert token_ok(bearer_metadata("abc"), "abc")
    assert not token_ok(bearer_metadata("abd"), "abc")
    assert not token_ok([], "abc") and not token_ok(None, "abc")
    assert not token_ok([("authorization", "abc")], "abc")  # the scheme is required


# -- path confinement ----------------------------------------------------------------------------------
def test_paths_dotdot_absolute_and_symlink_escapes(tmp_path):
    from persona.service.paths import PathNotAllowed, Roots

    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.fastq").write_text("@r\nA\n+\nI\n")
    (root / "in" / "ok.fastq").write_text("@r\nA\n+\nI\n")
    os.symlink(outside, root / "link")  # a directory link out of the root
    os.symlink(outside / "secret.fastq", root / "in" / "file-link.fastq")  # a file link out
    os.symlink(root / "in" / "ok.fastq", root / "in" / "inner-link.fastq")  # a link that stays inside
    roots = Roots([str(root), "s3://bucket/data"])

    assert roots.confine(str(root / "in" / "ok.fastq")) == str(root / "in" / "ok.fastq")
    assert roots.confine("in/ok.fastq") == str(root / "in" / "ok.fastq")  # relative: under the first root
    assert roots.confine(str(root / "in" / "inner-link.fastq"))
    assert roots.confine("s3://bucket/data/x") == "s3://bucket/data/x"
    assert roots.confine(f"file://{root}/in/ok.fastq") == f"file://{root}/in/ok.fastq"
    refused = [
        "../outside/secret.fastq", f"{root}/../outside/secret.fastq", "in/../../outside", "in/..",
        str(outside / "secret.fastq"), "/etc/passwd", f"file://{outside}/secret.fastq",
        str(root / "link" / "secret.fastq"), "link/secret.fastq", str(root / "in" / "file-link.fastq"),
        str(root / "link" / "new-output"),  # an output that does not exist yet, behind a link
        "s3://bucket/database", "s3://other/data/x", "memory://x", "-",
        str(tmp_path / "root-sibling"),  # a sibling whose name starts with the root's
    ]
    for value in refused:
        with pytest.raises(PathNotAllowed):
            roots.confine(value, "import.inputs")
    with pytest.raises(PathNotAllowed, match="import.inputs: '..' is not allowed"):
        roots.confine("../x", "import.inputs")
    # a whole request: every path field is checked, the error names the field
    with pytest.raises(PathNotAllowed, match="align.reference"):
        roots.confine_request({"kind": "align", "dataset": str(root), "reference": str(outside / "ref.fa")})
    with pytest.raises(PathNotAllowed, match="export.output"):
        roots.confine_request({"kind": "export", "dataset": str(root), "output": str(root / "link" / "x.bam")})
    ok = roots.confine_request({"kind": "import", "inputs": ["in/ok.fastq"], "output": "agd"})
    assert ok["inputs"] == [str(root / "in" / "ok.fastq")] and ok["output"] == str(root / "agd")
    # an export's CRAM reference is a path too; dataset names cannot climb
    with pytest.raises(PathNotAllowed, match="export.reference"):
        roots.confine_request({"kind": "export", "dataset": str(root), "output": "x.cram",
                               "reference": str(outside / "ref.fa")})
    for key in ("name", "input_name", "out_name"):
        with pytest.raises(PathNotAllowed, match=f"sort.{key}: a dataset name"):
            roots.confine_request({"kind": "sort", "dataset": str(root), key: "../../elsewhere"})
    with pytest.raises(PathNotAllowed, match="import.name"):
        roots.confine_request({"kind": "import", "inputs": ["in/ok.fastq"], "output": "agd", "name": "/etc/x"})


def test_store_url_options_are_the_roots_own():
    """``?endpoint=`` or ``?conf=`` in a request would point the service's credentials elsewhere."""
    from persona.service.paths import PathNotAllowed, Roots

    roots = Roots(["s3://bucket/data?endpoint=http://rgw:80", "ceph://pool/ns"])
    assert roots.confine("s3://bucket/data/x") == "s3://bucket/data/x"
    assert roots.confine("s3://bucket/data/x?endpoint=http://rgw:80") == "s3://bucket/data/x?endpoint=http://rgw:80"
    assert roots.confine("ceph://pool/ns/ds") == "ceph://pool/ns/ds"
    for bad in ("s3://bucket/data/x?endpoint=http://evil:80", "ceph://pool/ns/ds?conf=/tmp/other.conf",
                "ceph://pool/ns/ds?id=admin&keyring=/etc/ceph/ceph.client.admin.keyring"):
        with pytest.raises(PathNotAllowed, match="store options"):
            roots.confine(bad, "align.dataset")
    with pytest.raises(PathNotAllowed, match="outside the stores"):
        roots.confine("s3://bucket/other?endpoint=http://rgw:80")


def test_service_refuses_escaping_requests_over_tls(tls_server, pki, tmp_path):
    from persona.apps.importer import ImportRequest
    from persona.service.client import Client, ServiceError

    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir(exist_ok=True)
    os.symlink(outside, tmp_path / "escape")
    with Client(tls_server.address, tls_server.service.token, tls_ca=str(pki["ca"]), timeout=20) as c:
        for bad in (ImportRequest(inputs=(str(DATA / "sample_R1.fastq.gz"),), output=str(tmp_path / "x")),
                    ImportRequest(inputs=(str(tmp_path / "a.fq"),), output=str(tmp_path / "escape" / "agd")),
                    ImportRequest(inputs=(str(tmp_path / "a.fq"),), output=str(tmp_path / ".." / "agd"))):
            with pytest.raises(ServiceError) as e:
                c.submit(bad)
            assert e.value.code == "INVALID_ARGUMENT" and ("outside" in str(e.value) or "'..'" in str(e.value))


def test_persona_serve_tls_flags(tmp_path, pki):
    """``persona serve --tls-cert --tls-key`` (a real process) and ``persona status --tls-ca``."""
    import signal
    import sys
    import time

    _config(tmp_path)  # writes persona.yaml (no TLS in it: the flags turn it on)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    persona = [sys.executable, "-m", "persona.cli", "--config", str(tmp_path / "persona.yaml")]
    addr = tmp_path / "addr"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([*persona, "serve", "--tls-cert", str(pki["server_crt"]), "--tls-key",
                             str(pki["server_key"]), "--address-file", str(addr)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not addr.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        address = addr.read_text().strip()
        ok = subprocess.run([*persona, "status", "--address", address, "--tls-ca", str(pki["ca"])],
                            capture_output=True, text=True, timeout=60, env=env)
        assert ok.returncode == 0 and "running" in ok.stdout, ok.stderr
        plain = subprocess.run([*persona, "status", "--address", address], capture_output=True, text=True,
                               timeout=60, env=env)
        assert plain.returncode != 0 and "UNAVAILABLE" in plain.stderr
        assert "(TLS)" in (tmp_path / "serve.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    assert proc.returncode == 0
