"""Mutual TLS under uvicorn: real certificates from the built-in CA, real TLS sockets on loopback, both HTTP/1.1
implementations (h11, httptools) on both event loops (asyncio, uvloop), and the real `bankgate serve --tls`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bankgate.certheaders import ClientCertificateSource
from bankgate.config import load_settings
from bankgate.mtls import PROTOCOLS
from bankgate.net import TrustedProxies
from bankgate.pki import thumbprint_sha1
from bankgate.pki.authority import new_authority
from bankgate.server import TLSFiles, tls_options
from bankgate.services import Services
from conftest import free_port

TLS13_SUITES = {0x1301, 0x1302, 0x1303}
TLS12_SUITES = {0xC02B, 0xC02C, 0xCCA9}  # ECDHE-ECDSA with AES-GCM or ChaCha20 (the server key is EC)


@dataclass(frozen=True)
class Material:
    files: TLSFiles
    ca: Path
    client_cert: Path
    client_key: Path
    client_der: bytes
    thumbprint: str
    stranger_cert: Path
    stranger_key: Path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    directory = tmp_path_factory.mktemp("mtls")

    async def make() -> tuple[str, str, str, Any]:
        services = await Services.open(load_settings(data_dir=directory / "data"), initialise=True)
        try:
            await services.init()
            user = (await services.users.create("Acme Payments Ltd", "acme")).user
            issued = await services.pki.issue(user)
            server_cert, server_key = await services.pki.server_certificate([])
            return await services.pki.ca_certificate_pem(), server_cert, server_key, issued
        finally:
            await services.close()

    ca_pem, server_cert, server_key, issued = asyncio.run(make())
    stranger = new_authority("sandbox")  # same name pattern, another key: must be refused
    key = ec.generate_private_key(ec.SECP256R1())
    forged = stranger.sign_client(key.public_key(), common_name="acme", organization="Acme Payments Ltd", days=30,
                                  now=dt.datetime.now(dt.UTC))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return Material(
        files=TLSFiles(server=_write(directory / "server.pem", server_key + server_cert),
                       ca=_write(directory / "ca.pem", ca_pem)),
        ca=directory / "ca.pem",
        client_cert=_write(directory / "client.crt.pem", issued.certificate_pem),
        client_key=_write(directory / "client.key.pem", issued.private_key_pem),
        client_der=x509.load_pem_x509_certificate(issued.certificate_pem.encode()).public_bytes(
            serialization.Encoding.DER),
        thumbprint=issued.thumbprint,
        stranger_cert=_write(directory / "stranger.crt.pem", forged.public_bytes(serialization.Encoding.PEM).decode()),
        stranger_key=_write(directory / "stranger.key.pem", key_pem),
    )


class Echo:
    """Answers every request with the scope's TLS extension, then scribbles on it (which must not leak)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        extensions = scope.get("extensions") or {}
        body = json.dumps({"scheme": scope["scheme"], "has_tls": "tls" in extensions,
                           "tls": extensions.get("tls"), "client": list(scope["client"])}).encode()
        if "tls" in extensions:
            extensions["tls"]["client_cert_chain"].append("scribble")
            extensions["tls"]["client_cert_name"] = "scribble"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class ThreadedServer:
    """uvicorn on a free loopback port, in a thread, with bankgate's protocol classes."""

    def __init__(self, app: Echo, *, http: str, loop: str, files: TLSFiles | None) -> None:
        self.app = app
        self.port = free_port()
        options = tls_options(files, http) if files else {"http": PROTOCOLS[http]}
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, loop=loop, lifespan="off",  # type: ignore[arg-type]
                                log_level="warning", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"{'https' if files else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


VARIANTS = [("h11", "asyncio"), ("httptools", "asyncio"), ("h11", "uvloop"), ("httptools", "uvloop")]


@pytest.fixture(scope="module", params=VARIANTS, ids=["-".join(v) for v in VARIANTS])
def tls_server(request: pytest.FixtureRequest, material: Material) -> Iterator[ThreadedServer]:
    http, loop = request.param
    with ThreadedServer(Echo(), http=http, loop=loop, files=material.files) as running:
        yield running


def context(material: Material, *, cert: Path | None = None, key: Path | None = None,
            tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(material.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def get(server: ThreadedServer, ctx: ssl.SSLContext, path: str = "/") -> dict[str, Any]:
    with httpx.Client(verify=ctx, timeout=10) as client:
        response = client.get(server.base_url + path)
    assert response.status_code == 200
    return response.json()


def test_certificate_issued_by_the_ca_reaches_the_app(tls_server: ThreadedServer, material: Material) -> None:
    body = get(tls_server, context(material, cert=material.client_cert, key=material.client_key))
    tls = body["tls"]
    assert body["scheme"] == "https"
    assert set(tls) == {"server_cert", "client_cert_chain", "client_cert_name", "client_cert_error", "tls_version",
                        "cipher_suite"}
    assert len(tls["client_cert_chain"]) == 1
    der = ssl.PEM_cert_to_DER_cert(tls["client_cert_chain"][0])
    assert der == material.client_der
    assert thumbprint_sha1(der) == material.thumbprint
    assert tls["client_cert_name"] == "O=Acme Payments Ltd,CN=acme"
    assert tls["client_cert_error"] is None and tls["server_cert"] is None
    assert tls["tls_version"] == 0x0304 and tls["cipher_suite"] in TLS13_SUITES
    # The one place that reads the certificate of a request finds it there, no proxy involved.
    source = ClientCertificateSource(TrustedProxies(), None)
    assert source.der({"extensions": {"tls": tls}, "client": tuple(body["client"])}) == material.client_der


def test_no_certificate_gives_an_empty_chain(tls_server: ThreadedServer, material: Material) -> None:
    tls = get(tls_server, context(material))["tls"]
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["tls_version"] == 0x0304


def test_each_request_on_a_kept_alive_connection_gets_its_own_copy(tls_server: ThreadedServer,
                                                                   material: Material) -> None:
    ctx = context(material, cert=material.client_cert, key=material.client_key)
    with httpx.Client(verify=ctx, timeout=10) as client:
        bodies = [client.get(tls_server.base_url + f"/{n}").json() for n in range(3)]
    assert len({tuple(b["client"]) for b in bodies}) == 1  # one connection
    for body in bodies:
        assert len(body["tls"]["client_cert_chain"]) == 1
        assert body["tls"]["client_cert_name"] == "O=Acme Payments Ltd,CN=acme"


def test_tls12_reports_its_version_and_iana_cipher_suite(tls_server: ThreadedServer, material: Material) -> None:
    ctx = context(material, cert=material.client_cert, key=material.client_key, tls12=True)
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
        negotiated = conn.cipher()
    assert negotiated is not None
    tls = json.loads(response.partition(b"\r\n\r\n")[2])["tls"]
    expected = {c["name"]: c["id"] & 0xFFFF for c in ctx.get_ciphers()}[negotiated[0]]
    assert tls["tls_version"] == 0x0303
    assert tls["cipher_suite"] == expected and expected in TLS12_SUITES


def test_certificate_from_another_ca_is_refused_in_the_handshake(tls_server: ThreadedServer,
                                                                 material: Material) -> None:
    calls = tls_server.app.calls
    with pytest.raises(httpx.TransportError):
        get(tls_server, context(material, cert=material.stranger_cert, key=material.stranger_key))
    assert tls_server.app.calls == calls


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_plain_http_connections_get_no_tls_extension(http: str, material: Material) -> None:
    with ThreadedServer(Echo(), http=http, loop="asyncio", files=None) as running:
        body = httpx.get(running.base_url + "/", timeout=10).json()
    assert body == {"scheme": "http", "has_tls": False, "tls": None, "client": body["client"]}


# -- the real `bankgate serve --tls` -----------------------------------------------------------------------


def ca_of(server: Any, tmp_path: Path) -> ssl.SSLContext:
    ca = tmp_path / "served-ca.pem"
    server.cli("ca-cert", "--out", str(ca))
    return ssl.create_default_context(cafile=str(ca))


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_serve_tls_answers_https_with_the_ca_as_trust_root(server_factory: Any, tmp_path: Path, http: str) -> None:
    server = server_factory(args=("--tls", "--http", http, "--hostname", "api.example.test"))
    assert server.base_url.startswith("https://127.0.0.1:")
    ctx = ca_of(server, tmp_path)
    port = server.base_url.rpartition(":")[2]
    for host in ("127.0.0.1", "localhost"):
        response = httpx.get(f"https://{host}:{port}/healthz", verify=ctx, timeout=10)
        assert response.status_code == 200 and response.json()["status"] == "ok"
    metadata = httpx.get(f"{server.base_url}/.well-known/oauth-authorization-server", verify=ctx, timeout=10).json()
    assert metadata["issuer"] == server.base_url

    tls_dir = server.data_dir / "tls"
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    for path in tls_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    served = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes())
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "api.example.test" in names.get_values_for_type(x509.DNSName)

    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_serve_tls_accepts_its_own_client_certificates_and_refuses_strangers(
    server_factory: Any, tmp_path: Path, material: Material
) -> None:
    server = server_factory(args=("--tls",))
    server.cli("users", "create", "--name", "Acme Payments Ltd", "--username", "acme")
    issued = server.cli_json("certs", "issue", "acme", "--out", str(tmp_path / "certs"))
    ctx = ca_of(server, tmp_path)
    ctx.load_cert_chain(issued["certificate_file"], issued["private_key_file"])
    assert httpx.get(f"{server.base_url}/healthz", verify=ctx, timeout=10).status_code == 200

    stranger = ca_of(server, tmp_path)
    stranger.load_cert_chain(str(material.stranger_cert), str(material.stranger_key))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url}/healthz", verify=stranger, timeout=10)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_serve_tls_stops_promptly_while_a_client_keeps_an_idle_connection(
    server_factory: Any, tmp_path: Path, http: str
) -> None:
    # A graceful TLS close waits for the peer's close_notify, which a client idling in its pool never sends:
    # without dropping idle TLS connections at shutdown, the server would hang on SIGTERM for the SSL timeout.
    server = server_factory(args=("--tls", "--http", http))
    with httpx.Client(verify=ca_of(server, tmp_path), timeout=10) as client:
        assert client.get(f"{server.base_url}/healthz").status_code == 200  # the connection stays in the pool
        started = time.monotonic()
        server.process.terminate()
        server.process.wait(20)
        assert time.monotonic() - started < 8
