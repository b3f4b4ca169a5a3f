"""TLS for the tcp and http onramps and offramps: ``tls: {cert, key, ca, client_auth, verify, server_name}``.

A listening onramp with ``tls`` speaks only TLS (1.2 or newer): ``cert`` and ``key`` are
required, and ``client_auth: true`` asks every client for a certificate signed by ``ca``
(mutual TLS; the verified client's subject common name is in the record's meta as
``tls_client_cn``). A connecting side (an offramp, or an onramp in client mode) verifies the
server's certificate against ``ca`` (default: the system's trust store) and its name against
``server_name`` (default: the host it connects to); ``cert`` and ``key`` give it a client
certificate. ``verify: false`` turns verification off (a test bench; never in production).

Paths are relative to the config file's folder. The files are read when the component starts
(at daemon start, or when a reload changed its config: a renewed certificate under the same
name needs a restart, or a new file name and a reload); a file that cannot be read or parsed
fails that start with the reason.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.paths import SettingError


class TlsConfig(PluginConfig):
    cert: str | None = Field(None, description="PEM certificate (chain) to present: required to listen; to connect, a client certificate")
    key: str | None = Field(None, description="PEM private key of `cert` (default: in the `cert` file)")
    ca: str | None = Field(None, description="PEM CA certificates: to listen with client_auth, the CAs clients' certificates must chain "
                           "to; to connect, the CAs the server's must chain to (default: the system's trust store)")
    client_auth: bool = Field(False, description="listening: require a client certificate signed by `ca` (mutual TLS)")
    verify: bool = Field(True, description="connecting: verify the server's certificate and name (false: a test bench only)")
    server_name: str | None = Field(None, description="connecting: the name the server's certificate must hold (default: the host)")


def check_tls(tls: TlsConfig | None, listening: bool) -> None:
    """What the model cannot say (files are read at start, not here)."""
    if tls is None:
        return
    if listening:
        if tls.cert is None:
            raise SettingError("tls", "a listening side needs `cert` (and `key`, unless the cert file holds it)")
        if tls.client_auth and tls.ca is None:
            raise SettingError("tls", "client_auth needs `ca`: the CAs client certificates must chain to")
        if tls.server_name is not None or not tls.verify:
            raise SettingError("tls", "server_name and verify concern a connecting side, not a listening one")
    else:
        if tls.client_auth:
            raise SettingError("tls", "client_auth concerns a listening side; to present a client certificate, set `cert`")
        if tls.key is not None and tls.cert is None:
            raise SettingError("tls", "`key` without `cert`")


def _file(base: Path, name: str) -> str:
    p = Path(name)
    return str(p if p.is_absolute() else base / p)


def _load(what: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"tls: cannot load {what} {args[0]}: {exc}") from exc


def server_context(tls: TlsConfig, base: Path) -> ssl.SSLContext:
    """The context of a listening side (TLS 1.2+)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert is not None, "check_tls"
    _load("cert/key", ctx.load_cert_chain, _file(base, tls.cert), _file(base, tls.key) if tls.key else None)
    if tls.client_auth:
        assert tls.ca is not None, "check_tls"
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load("ca", ctx.load_verify_locations, _file(base, tls.ca))
    return ctx


def client_context(tls: TlsConfig, base: Path) -> ssl.SSLContext:
    """The context of a connecting side (TLS 1.2+), verifying the server unless ``verify: false``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca is not None:
        _load("ca", ctx.load_verify_locations, _file(base, tls.ca))
    if tls.cert is not None:
        _load("cert/key", ctx.load_cert_chain, _file(base, tls.cert), _file(base, tls.key) if tls.key else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_cn(peercert: Any) -> str | None:
    """The common name of a verified client certificate (``getpeercert()``), or None."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
