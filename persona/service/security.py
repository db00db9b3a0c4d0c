"""TLS and bearer tokens for the service's two gRPC APIs, built from the configuration.

Two APIs, two policies:

* the **client API** (``persona.v1.Persona``: submit, watch, ...) serves TLS when
  ``service.tls_cert`` and ``service.tls_key`` are set; clients verify the server against
  ``service.tls_ca`` (``--tls-ca``). Clients prove who they are with the bearer token.
* the **worker API** (coordinator <-> workers) uses *mutual* TLS when ``service.worker_tls_cert``,
  ``worker_tls_key`` and ``worker_tls_ca`` are set: each side presents its certificate and refuses
  a peer whose certificate that CA did not sign. A client token opens nothing there.

Every function here is plain: ``persona serve``, the coordinator and the worker call the same ones
(:func:`client_api_server_credentials`, :func:`worker_api_server_credentials`,
:func:`worker_api_channel_credentials`, :func:`add_port`, :func:`token_ok`), so one process
cannot drift from another. A PEM file that is missing, unreadable or not PEM is reported with the
config key that named it.
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from persona.errors import ConfigError, PersonaError


class TlsError(PersonaError, ValueError):
    """A TLS setting that cannot be used (missing file, not PEM, half a pair)."""


def _read_pem(path: str, key: str) -> bytes:
    real = os.path.expanduser(path)
    try:
        with open(real, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TlsError(f"{key}: cannot read {real}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{key}: {real} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class TlsFiles:
    """PEM contents of one side's TLS setting: its certificate chain and key, and a CA to check the
    peer with (None: the peer is not checked, or the system roots for a client)."""

    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None

    @classmethod
    def load(cls, *, cert: str | None = None, key: str | None = None, ca: str | None = None,
             prefix: str = "service.tls_") -> "TlsFiles":
        """Read the files; ``prefix`` names the config keys in errors (``service.tls_cert``)."""
        if bool(cert) != bool(key):
            have, missing = ("cert", "key") if cert else ("key", "cert")
            raise TlsError(f"{prefix}{have} is set but {prefix}{missing} is not: a certificate needs its key")
        return cls(cert=_read_pem(cert, prefix + "cert") if cert else None,
                   key=_read_pem(key, prefix + "key") if key else None,
                   ca=_read_pem(ca, prefix + "ca") if ca else None)


# -- credentials -------------------------------------------------------------------------------
def server_credentials(tls: TlsFiles, *, require_client_cert: bool = False) -> Any:
    """``grpc.ServerCredentials`` serving ``tls.cert``; with ``require_client_cert`` (mutual TLS) a
    client must present a certificate signed by ``tls.ca``."""
    import grpc

    if tls.cert is None or tls.key is None:
        raise TlsError("a TLS server needs a certificate and its key")
    if require_client_cert and tls.ca is None:
        raise TlsError("mutual TLS needs the CA that signs the clients' certificates")
    return grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.ca if require_client_cert else None,
                                       require_client_auth=require_client_cert)


def channel_credentials(tls: TlsFiles) -> Any:
    """``grpc.ChannelCredentials``: verify the server against ``tls.ca`` (None: the system's roots),
    and present ``tls.cert`` when set (mutual TLS)."""
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert)


def client_api_server_credentials(config: Any) -> Any | None:
    """The client API's server credentials from ``service.tls_cert``/``tls_key``; None: plain TCP."""
    sc = config.service
    if not sc.tls_cert and not sc.tls_key:
        return None
    return server_credentials(TlsFiles.load(cert=sc.tls_cert, key=sc.tls_key))


def client_api_channel_credentials(config: Any, tls_ca: str | None = None) -> Any | None:
    """A client's channel credentials: ``tls_ca`` (``--tls-ca``), else ``service.tls_ca``; None:
    plain TCP."""
    ca = tls_ca or config.service.tls_ca
    if not ca:
        return None
    return channel_credentials(TlsFiles.load(ca=ca, key=None, cert=None, prefix="service.tls_"))


def _worker_tls(config: Any) -> TlsFiles | None:
    sc = config.service
    values = {"cert": sc.worker_tls_cert, "key": sc.worker_tls_key, "ca": sc.worker_tls_ca}
    if not any(values.values()):
        return None
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise TlsError(f"mutual TLS on the worker API needs service.worker_tls_cert, worker_tls_key and "
                       f"worker_tls_ca; missing: {', '.join('service.worker_tls_' + m for m in missing)}")
    return TlsFiles.load(**values, prefix="service.worker_tls_")


def worker_api_server_credentials(config: Any) -> Any | None:
    """The coordinator's worker-API credentials: mutual TLS (a worker must present a certificate
    signed by ``service.worker_tls_ca``); None: plain TCP."""
    tls = _worker_tls(config)
    return None if tls is None else server_credentials(tls, require_client_cert=True)


def worker_api_channel_credentials(config: Any) -> Any | None:
    """A worker's channel credentials to the coordinator: its certificate, and the coordinator's
    checked against ``service.worker_tls_ca``; None: plain TCP."""
    tls = _worker_tls(config)
    return None if tls is None else channel_credentials(tls)


# -- ports and channels --------------------------------------------------------------------------
def add_port(server: Any, listen: str, credentials: Any | None) -> int:
    """Bind ``server`` (grpc or grpc.aio) to ``listen`` with TLS when ``credentials``; returns the
    port (``:0`` picks a free one). Raises PersonaError naming the address when it cannot bind."""
    try:
        port = (server.add_secure_port(listen, credentials) if credentials is not None
                else server.add_insecure_port(listen))
    except RuntimeError as exc:
        raise PersonaError(f"cannot listen on {listen}: {exc}") from exc
    if not port:
        raise PersonaError(f"cannot listen on {listen}")
    return int(port)


def open_channel(address: str, credentials: Any | None, *, aio: bool = False,
                 options: Iterable[tuple[str, Any]] = ()) -> Any:
    """A channel to ``address``: TLS when ``credentials``, plain otherwise (``aio``: grpc.aio)."""
    import grpc

    mod = grpc.aio if aio else grpc
    opts = list(options)
    if credentials is None:
        return mod.insecure_channel(address, options=opts)
    return mod.secure_channel(address, credentials, options=opts)


# -- bearer tokens -------------------------------------------------------------------------------
def bearer_metadata(token: str | None) -> list[tuple[str, str]]:
    """The call metadata carrying ``token`` (empty without one)."""
    return [("authorization", f"Bearer {token}")] if token else []


def token_ok(metadata: Iterable[tuple[str, Any]] | None, token: str) -> bool:
    """Whether call ``metadata`` carries ``authorization: Bearer <token>`` (constant-time compare)."""
    if not token:
        raise ConfigError("a service token must not be empty")
    auth = ""
    for k, v in metadata or ():
        if k == "authorization":
            auth = v.decode() if isinstance(v, bytes) else str(v)
            break
    return hmac.compare_digest(auth.encode(), f"Bearer {token}".encode())
