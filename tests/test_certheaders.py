"""The client certificate of a request: the TLS extension first; then, from trusted proxies only, each proxy's
forwarding header, parsed from real PEM/DER made by a CA; garbage and forgeries give None, never an exception.
Ends with the shipped nginx configuration (deploy/nginx/bankgate.conf) run for real (tests/nginx_helpers.py):
skipped without nginx, except in CI, where it fails."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bankgate.certheaders import DEFAULT_HEADERS, MAX_VALUE, ClientCertificateSource, parse_forwarded
from bankgate.config import load_settings
from bankgate.net import TrustedProxies
from bankgate.pki import thumbprint_sha1
from bankgate.pki.authority import CertificateAuthority, new_authority
from bankgate.services import Services
from conftest import free_port
from nginx_helpers import require_nginx, running_nginx

PROXIES = TrustedProxies(["10.0.0.0/8", "fd00::/8"])
PROXY = "10.1.2.3"
STRANGER = "203.0.113.7"
STYLES = ("nginx", "envoy", "traefik", "alb", "caddy")


def _leaf(authority: CertificateAuthority, name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return authority.sign_client(key.public_key(), common_name=name, organization="Acme Payments Ltd", days=30,
                                 now=dt.datetime.now(dt.UTC))


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


CA = new_authority("sandbox")
# ALB leaves '+' of the base64 unescaped: make sure the certificate under test has one.
LEAF = next(c for c in (_leaf(CA, "acme") for _ in range(200)) if "+" in _pem(c))
OTHER = _leaf(CA, "mallory")
LEAF_PEM, LEAF_DER = _pem(LEAF), _der(LEAF)
CHAIN_PEM = LEAF_PEM + CA.certificate_pem


def scope(headers: list[tuple[str, str]], *, peer: str | None = PROXY, tls: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    built: dict[str, Any] = {
        "type": "http",
        "client": (peer, 40000) if peer else None,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }
    if tls is not None:
        built["extensions"] = {"tls": tls}
    return built


def source(style: str | None, name: str | None = None) -> ClientCertificateSource:
    return ClientCertificateSource(PROXIES, style, name=name)


def xfcc_element(certificate: x509.Certificate, *, hash_ok: bool = True, quoted: bool = True) -> str:
    digest = hashlib.sha256(_der(certificate)).hexdigest() if hash_ok else "0" * 64
    cert = quote(_pem(certificate), safe="")
    cert = f'"{cert}"' if quoted else cert
    return f'By=spiffe://bankgate/proxy;Hash={digest};Cert={cert};Subject="O=Acme Payments Ltd,CN=acme";URI='


#: A well-formed header carrying LEAF, per style.
VALID: dict[str, tuple[str, str]] = {
    "nginx": ("X-SSL-Client-Cert", quote(LEAF_PEM, safe="")),
    "envoy": ("x-forwarded-client-cert", xfcc_element(LEAF)),
    "traefik": ("X-Forwarded-Tls-Client-Cert", base64.b64encode(LEAF_DER).decode()),
    "alb": ("X-Amzn-Mtls-Clientcert-Leaf", quote(LEAF_PEM, safe="+=/")),
    "caddy": ("X-Client-Cert-Der", base64.b64encode(LEAF_DER).decode()),
}


# -- direct TLS --------------------------------------------------------------------------------------------


def test_the_tls_extension_comes_first_and_needs_no_proxy() -> None:
    tls = {"client_cert_chain": [LEAF_PEM], "client_cert_name": "CN=acme"}
    assert source(None).der(scope([], peer=STRANGER, tls=tls)) == LEAF_DER
    forwarded = [("X-SSL-Client-Cert", quote(_pem(OTHER), safe=""))]
    assert source("nginx").der(scope(forwarded, tls=tls)) == LEAF_DER


def test_an_empty_tls_chain_falls_back_to_the_trusted_proxy_header() -> None:
    tls = {"client_cert_chain": [], "client_cert_name": None}
    assert source("nginx").der(scope([VALID["nginx"]], tls=tls)) == LEAF_DER
    assert source("nginx").der(scope([VALID["nginx"]], peer=STRANGER, tls=tls)) is None
    assert source(None).der(scope([], tls=tls)) is None


def test_a_broken_tls_extension_gives_none() -> None:
    for chain in (["not a pem"], [b"bytes"], [LEAF_PEM.replace("M", "*", 3)]):
        assert source("nginx").der(scope([VALID["nginx"]], tls={"client_cert_chain": chain})) is None


# -- each proxy's header -----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_each_style_reads_its_header_from_a_trusted_proxy(style: str) -> None:
    assert source(style).der(scope([VALID[style]])) == LEAF_DER
    assert source(style).der(scope([VALID[style]], peer="fd00::5")) == LEAF_DER
    assert thumbprint_sha1(source(style).der(scope([VALID[style]])) or b"") == thumbprint_sha1(LEAF_DER)


@pytest.mark.parametrize("style", STYLES)
def test_a_header_from_an_untrusted_peer_is_ignored(style: str) -> None:
    for peer in (STRANGER, "127.0.0.1", "::1", "not-an-ip", None):
        assert source(style).der(scope([VALID[style]], peer=peer)) is None


@pytest.mark.parametrize("style", STYLES)
def test_other_styles_headers_are_not_read(style: str) -> None:
    others = [VALID[s] for s in STYLES if s != style and DEFAULT_HEADERS[s] != DEFAULT_HEADERS[style]]
    assert source(style).der(scope(others)) is None


def test_without_a_configured_style_no_header_counts() -> None:
    assert source(None).der(scope(list(VALID.values()))) is None


def test_nginx_accepts_both_escapings_and_a_chosen_header_name() -> None:
    for value in (quote(LEAF_PEM, safe=""), quote(LEAF_PEM), quote(LEAF_PEM, safe="+=/")):
        assert source("nginx").der(scope([("X-SSL-Client-Cert", value)])) == LEAF_DER
    custom = source("nginx", name="X-Client-Certificate")
    assert custom.der(scope([("X-Client-Certificate", quote(LEAF_PEM, safe=""))])) == LEAF_DER
    assert custom.der(scope([VALID["nginx"]])) is None


def test_alb_keeps_plus_signs_and_prefers_the_leaf_header() -> None:
    value = VALID["alb"][1]
    assert "+" in value
    assert unquote_plus(value) != LEAF_PEM  # reading '+' as a space would corrupt the certificate
    assert source("alb").der(scope([("X-Amzn-Mtls-Clientcert", quote(CHAIN_PEM, safe="+=/"))])) == LEAF_DER
    both = [("X-Amzn-Mtls-Clientcert", quote(_pem(OTHER), safe="+=/")), VALID["alb"]]
    assert source("alb").der(scope(both)) == LEAF_DER


def test_traefik_takes_the_leaf_of_a_comma_list_in_either_encoding() -> None:
    listed = f"{base64.b64encode(LEAF_DER).decode()},{base64.b64encode(_der(CA.certificate)).decode()}"
    for value in (listed, quote(listed, safe="")):
        assert source("traefik").der(scope([("X-Forwarded-Tls-Client-Cert", value)])) == LEAF_DER


def test_caddy_reads_base64_der_under_a_chosen_name() -> None:
    custom = source("caddy", name="X-Client-Cert")
    assert custom.der(scope([("X-Client-Cert", base64.b64encode(LEAF_DER).decode())])) == LEAF_DER
    assert source("caddy").der(scope([("X-Client-Cert-Der", quote(LEAF_PEM, safe=""))])) is None


def test_envoy_takes_the_element_the_trusted_proxy_appended() -> None:
    forged_then_real = f"{xfcc_element(OTHER)},{xfcc_element(LEAF)}"
    assert source("envoy").der(scope([("x-forwarded-client-cert", forged_then_real)])) == LEAF_DER
    real_then_forged = f"{xfcc_element(LEAF)},{xfcc_element(OTHER)}"
    assert source("envoy").der(scope([("x-forwarded-client-cert", real_then_forged)])) == _der(OTHER)
    # The last element has no certificate: an earlier one (possibly the client's own) does not count.
    without_cert = f"{xfcc_element(LEAF)},By=spiffe://bankgate/proxy;Hash={'ab' * 32};Subject=\"CN=x\""
    assert source("envoy").der(scope([("x-forwarded-client-cert", without_cert)])) is None
    # Two header lines are one comma-separated list.
    lines = [("x-forwarded-client-cert", xfcc_element(OTHER)), ("x-forwarded-client-cert", xfcc_element(LEAF))]
    assert source("envoy").der(scope(lines)) == LEAF_DER


def test_envoy_checks_the_hash_and_reads_keys_case_insensitively() -> None:
    assert source("envoy").der(scope([("x-forwarded-client-cert", xfcc_element(LEAF, hash_ok=False))])) is None
    assert source("envoy").der(scope([("x-forwarded-client-cert", xfcc_element(LEAF, quoted=False))])) == LEAF_DER
    digest = hashlib.sha256(LEAF_DER).hexdigest().upper()
    upper = f"hash={digest};CERT={quote(LEAF_PEM, safe='')}"
    assert source("envoy").der(scope([("x-forwarded-client-cert", upper)])) == LEAF_DER
    chain_only = f'Chain="{quote(CHAIN_PEM, safe="")}"'
    assert source("envoy").der(scope([("x-forwarded-client-cert", chain_only)])) == LEAF_DER
    escaped = f'Subject="O=\\"Acme\\", Inc;CN=x";Cert="{quote(LEAF_PEM, safe="")}"'
    assert source("envoy").der(scope([("x-forwarded-client-cert", escaped)])) == LEAF_DER
    doubled = f"Cert={quote(_pem(OTHER), safe='')};Cert={quote(LEAF_PEM, safe='')}"
    assert source("envoy").der(scope([("x-forwarded-client-cert", doubled)])) is None


@pytest.mark.parametrize("style", ["nginx", "traefik", "alb", "caddy"])
def test_a_repeated_single_valued_header_is_ambiguous(style: str) -> None:
    name, value = VALID[style]
    assert source(style).der(scope([(name, value), (name, value)])) is None


@pytest.mark.parametrize("style", STYLES)
def test_oversized_and_empty_values_give_none(style: str) -> None:
    name, value = VALID[style]
    assert source(style).der(scope([(name, value + " " * MAX_VALUE)])) is None
    assert source(style).der(scope([(name, "")])) is None
    assert source(style).der(scope([(name, "   ")])) is None


def test_der_with_trailing_bytes_is_refused() -> None:
    padded = base64.b64encode(LEAF_DER + b"\x00").decode()
    assert source("caddy").der(scope([("X-Client-Cert-Der", padded)])) is None
    assert source("traefik").der(scope([("X-Forwarded-Tls-Client-Cert", padded)])) is None


def test_an_unknown_style_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="not one of: nginx, envoy, traefik, alb, caddy"):
        ClientCertificateSource(PROXIES, "haproxy")


# -- garbage never raises ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(style=st.sampled_from(STYLES), values=st.lists(st.binary(max_size=3000), min_size=1, max_size=3))
def test_arbitrary_header_bytes_give_none_without_raising(style: str, values: list[bytes]) -> None:
    name = VALID[style][0].lower().encode()
    built = {"type": "http", "client": (PROXY, 1), "headers": [(name, v) for v in values]}
    assert source(style).der(built) is None


@settings(max_examples=300, deadline=None)
@given(style=st.sampled_from(STYLES), data=st.data())
def test_damaged_headers_give_the_certificate_or_none_never_an_exception(style: str, data: st.DataObject) -> None:
    name, value = VALID[style]
    start = data.draw(st.integers(0, len(value)))
    end = data.draw(st.integers(start, len(value)))
    insert = data.draw(st.text(alphabet=st.characters(max_codepoint=255), max_size=20))
    damaged = value[:start] + insert + value[end:]
    found = source(style).der(scope([(name, damaged)]))
    if found not in (None, LEAF_DER):
        # The damage fell inside the certificate and still left a parsable one (a changed signature or serial byte):
        # the header gives it, and the CA's check refuses it, as any certificate bankgate did not sign.
        with pytest.raises((InvalidSignature, ValueError)):
            x509.load_der_x509_certificate(found).verify_directly_issued_by(CA.certificate)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from('Cert=Hash;,"\\ %0aAB-'), max_size=200))
def test_envoy_syntax_soup_never_raises(text: str) -> None:
    assert parse_forwarded("envoy", {"x-forwarded-client-cert": [text]}) is None


# -- nginx, for real ---------------------------------------------------------------------------------------


class Backend:
    """What bankgate sees behind nginx: the certificate `ClientCertificateSource` finds, and the client address."""

    def __init__(self) -> None:
        self.source = ClientCertificateSource(TrustedProxies(["127.0.0.1/32"]), "nginx")
        self.proxies = TrustedProxies(["127.0.0.1/32"])
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        der = self.source.der(scope)
        body = json.dumps({"thumbprint": thumbprint_sha1(der) if der else None,
                           "client_ip": self.proxies.client_ip(scope)}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def backend() -> Iterator[tuple[Backend, int]]:
    app = Backend()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "backend did not start"
        time.sleep(0.02)
    yield app, port
    server.should_exit = True
    thread.join(15)


def test_shipped_nginx_config_forwards_the_client_certificate(tmp_path: Path, backend: tuple[Backend, int]) -> None:
    require_nginx()
    app, upstream = backend

    async def make() -> tuple[str, str, str, Any]:
        services = await Services.open(load_settings(data_dir=tmp_path / "data"), initialise=True)
        try:
            await services.init()
            user = (await services.users.create("Acme Payments Ltd", "acme")).user
            issued = await services.pki.issue(user)
            cert, key = await services.pki.server_certificate(["api.example.com"])
            return await services.pki.ca_certificate_pem(), cert, key, issued
        finally:
            await services.close()

    ca_pem, server_cert, server_key, issued = asyncio.run(make())
    (tmp_path / "ca.pem").write_text(ca_pem)
    (tmp_path / "server.pem").write_text(server_cert)
    (tmp_path / "server.key").write_text(server_key)
    (tmp_path / "client.pem").write_text(issued.certificate_pem)
    (tmp_path / "client.key").write_text(issued.private_key_pem)
    stranger = new_authority("sandbox")
    key = ec.generate_private_key(ec.SECP256R1())
    forged = stranger.sign_client(key.public_key(), common_name="acme", organization=None, days=30,
                                  now=dt.datetime.now(dt.UTC))
    (tmp_path / "stranger.pem").write_text(_pem(forged))
    (tmp_path / "stranger.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    with running_nginx(tmp_path, [upstream]) as listen:

        def call(cert: str | None, headers: dict[str, str] | None = None) -> httpx.Response:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            if cert:
                ctx.load_cert_chain(str(tmp_path / f"{cert}.pem"), str(tmp_path / f"{cert}.key"))
            return httpx.get(f"https://localhost:{listen}/", verify=ctx, headers=headers, timeout=10)

        answered = call("client")
        assert answered.status_code == 200, answered.text
        assert answered.json() == {"thumbprint": issued.thumbprint, "client_ip": "127.0.0.1"}

        assert call(None).json() == {"thumbprint": None, "client_ip": "127.0.0.1"}
        forged_header = {"X-SSL-Client-Cert": quote(issued.certificate_pem, safe=""), "X-Forwarded-For": "1.2.3.4"}
        assert call(None, forged_header).json() == {"thumbprint": None, "client_ip": "127.0.0.1"}

        calls = app.calls
        assert call("stranger").status_code == 400  # nginx refuses a certificate from another CA itself
        assert app.calls == calls
