"""The guard in front of the payments API (RFC 6750, RFC 7617, RFC 8705, RFC 9068): every forged, tampered, stale,
misdirected, revoked or misbound credential is refused with the exact RFC 6750 answer, and a refused payment leaves
nothing behind (no payment, no Idempotency-Key record). Then Basic mode, scopes, allow lists, the verified-token
cache, the guard as middleware in front of other apps (keys from the issuer's JWKS), and properties of the parsers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import h11
import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bankgate.clock import SYSTEM, Clock, ManualClock
from bankgate.config import load_settings
from bankgate.guard import (
    Guard,
    GuardError,
    GuardMiddleware,
    InvalidToken,
    LocalKeys,
    Principal,
    RemoteJWKS,
    TokenVerifier,
    require_principal,
    require_scope,
)
from bankgate.guard.core import decode_basic, parse_authorization
from bankgate.guard.keys import parse_jwks
from bankgate.pki.thumbprints import x5t_s256
from bankgate.services import Services
from conftest import Server, Tls, basic, start_server
from key_helpers import decrypted_signing_keys

# Remote guards fetch the issuer's JWKS over HTTP, raw requests go through a socket, throttles count per
# loopback address: real servers.
pytestmark = pytest.mark.real_server

ACCOUNTS = "/api/v1/accounts"
PAYMENTS = "/api/v1/payments"
WHOAMI = "/api/v1/whoami"
ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "x"}
REALM = 'Bearer realm="bankgate"'
BARE_CHALLENGE = 'Bearer realm="bankgate", Basic realm="bankgate", charset="UTF-8"'
WRONG_SECRET = "sk_test_" + "W" * 43
TOKEN68 = r"[A-Za-z0-9\-._~+/]+=*"


# -- requests, tokens and what the database holds ---------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(data: dict[str, Any]) -> str:
    return _b64url(json.dumps(data).encode())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _rows(server: Server, table: str, principal: str | None = None) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        if principal is None:
            return list(db.execute(f"SELECT * FROM {table}"))  # noqa: S608 - the tests' own table names
        return list(db.execute(f"SELECT * FROM {table} WHERE principal = ?", (principal,)))  # noqa: S608


def _assert_nothing_written(server: Server, principal: str | None = None) -> None:
    """No payment and no Idempotency-Key record (of `principal`, or at all)."""
    assert _rows(server, "payments", principal) == []
    assert _rows(server, "idempotency_keys", principal) == []


def _pay(server: Server, headers: Any, http: httpx.Client | None = None) -> httpx.Response:
    extra = [("Idempotency-Key", str(uuid.uuid4()))]
    listed = list(headers.items()) if isinstance(headers, dict) else list(headers)
    return (http or server.http).post(PAYMENTS, json=ORDER, headers=listed + extra)


def _assert_refused(
    server: Server,
    headers: Any,
    status: int,
    error: str | None,
    words: str = "",
    *,
    scheme: str = "Bearer",
    http: httpx.Client | None = None,
) -> None:
    """GET accounts and POST a payment are refused alike, with the RFC 6750 answer; nothing is written."""
    for response in ((http or server.http).get(ACCOUNTS, headers=headers), _pay(server, headers, http)):
        assert response.status_code == status, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert words in body["error_description"], body
        challenge = response.headers.get("www-authenticate", "")
        if error in ("invalid_token", "invalid_request", "insufficient_scope"):
            assert body["error"] == error
            assert challenge.startswith(f'{scheme} realm="bankgate", error="{error}", error_description="'), challenge
        elif error is None:  # RFC 6750 §3.1: no error code when no (usable) credentials were sent
            assert challenge == BARE_CHALLENGE, challenge
        else:
            assert body["error"] == error
    _assert_nothing_written(server)


def _assert_invalid_token(server: Server, token: str, words: str, *, http: httpx.Client | None = None) -> None:
    _assert_refused(server, _bearer(token), 401, "invalid_token", words, http=http)


async def _signing_keys(data_dir: Path) -> dict[str, Any]:
    services = await Services.open(load_settings(data_dir=data_dir))
    try:
        return await decrypted_signing_keys(services)
    finally:
        await services.close()


class Forger:
    """Makes tokens for one server: its real claims, changed at will, signed with its own key or another."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = server.create_client("app_1", name="forged tokens")
        self.token = server.token(self.client).json()["access_token"]
        self.claims: dict[str, Any] = pyjwt.decode(self.token, options={"verify_signature": False})
        self.kid: str = pyjwt.get_unverified_header(self.token)["kid"]
        self.private_key = asyncio.run(_signing_keys(server.data_dir))[self.kid]
        self.jwk: dict[str, Any] = next(k for k in server.http.get("/.well-known/jwks.json").json()["keys"]
                                        if k["kid"] == self.kid)
        self.foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def fresh_claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {**self.claims, "iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex, **changes}
        return {name: value for name, value in claims.items() if value is not None}

    def sign(self, claims: dict[str, Any] | None = None, *, key: Any = None, **header: Any) -> str:
        headers = {"kid": self.kid, "typ": "at+jwt", **header}
        headers = {name: value for name, value in headers.items() if value is not None}
        return pyjwt.encode(claims or self.fresh_claims(), key or self.private_key, algorithm="RS256",
                            headers=headers)

    def hmac_signed(self, secret: bytes) -> str:
        """The classic confusion: HS256 "signed" with the public key as the HMAC secret (PyJWT refuses to)."""
        header = _segment({"alg": "HS256", "kid": self.kid, "typ": "at+jwt"})
        signing_input = f"{header}.{_segment(self.fresh_claims())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(mac)}"


@pytest.fixture(scope="module")
def forger(shared: Server) -> Forger:
    return Forger(shared)


@pytest.fixture(scope="module")
def paying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second sandbox server, where payments do succeed (the attacked `shared` one must stay empty)."""
    directory = tmp_path_factory.mktemp("paying")
    server = start_server(directory / "data", directory / "server.log")
    yield server
    server.stop()


def _from(server: Server, address: str) -> httpx.Client:
    """A client whose requests come from another loopback address (the throttle counts per address)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.base_url, transport=transport, timeout=10)


def _raw(server: Server, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
         ) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 exchange on a plain socket, header bytes exactly as given (httpx would refuse some)."""
    url = urlsplit(server.base_url)
    conn = h11.Connection(h11.CLIENT)
    sent = [(b"host", url.netloc.encode()), (b"content-length", str(len(body)).encode()), *headers]
    data = conn.send(h11.Request(method=method, target=target, headers=sent)) or b""
    data += (conn.send(h11.Data(data=body)) or b"") if body else b""
    data += conn.send(h11.EndOfMessage()) or b""
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(data)
        status, answer, chunks = 0, {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, answer = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, answer, b"".join(chunks)


# -- forged tokens -----------------------------------------------------------------------------------------------


def test_a_token_resigned_with_the_servers_own_key_is_accepted_so_each_refusal_below_is_its_own(
    shared: Server, forger: Forger
) -> None:
    assert shared.http.get(ACCOUNTS, headers=_bearer(forger.token)).status_code == 200
    response = shared.http.get(ACCOUNTS, headers=_bearer(forger.sign()))
    assert response.status_code == 200, response.text
    assert [a["application_id"] for a in response.json()["accounts"]] == ["app_1"]
    _assert_nothing_written(shared)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused_and_nothing_is_written(shared: Server, forger: Forger, alg: str) -> None:
    for signature in ("", forger.token.rpartition(".")[2]):
        unsigned = f"{_segment({'alg': alg, 'kid': forger.kid, 'typ': 'at+jwt'})}.{_segment(forger.fresh_claims())}."
        _assert_invalid_token(shared, unsigned + signature, f"algorithm {alg!r} is not accepted")


@pytest.mark.parametrize("form", ["jwk-json", "jwks-json", "pem", "pem-pkcs1", "der"])
def test_hs256_signed_with_the_public_key_is_refused_and_nothing_is_written(
    shared: Server, forger: Forger, form: str
) -> None:
    public = pyjwt.PyJWK(forger.jwk).key
    secrets = {
        "jwk-json": json.dumps(forger.jwk).encode(),
        "jwks-json": shared.http.get("/.well-known/jwks.json").content,
        "pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pem-pkcs1": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    _assert_invalid_token(shared, forger.hmac_signed(secrets[form]), "algorithm 'HS256' is not accepted")


def test_rs256_signed_by_a_foreign_key_naming_our_kid_is_refused_and_nothing_is_written(
    shared: Server, forger: Forger
) -> None:
    _assert_invalid_token(shared, forger.sign(key=forger.foreign), "signature or claims are invalid")
    # The same with the real claims untouched, and with widened scopes on the real signature.
    _assert_invalid_token(shared, forger.sign(forger.claims, key=forger.foreign), "signature")
    header, _, signature = forger.token.split(".")
    widened = f"{header}.{_segment({**forger.claims, 'scope': 'app_1 app_2'})}.{signature}"
    _assert_invalid_token(shared, widened, "signature or claims are invalid")


def test_an_es256_token_naming_our_rsa_kid_is_refused_and_nothing_is_written(shared: Server, forger: Forger) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = pyjwt.encode(forger.fresh_claims(), ec_key, algorithm="ES256", headers={"kid": forger.kid, "typ": "at+jwt"})
    _assert_invalid_token(shared, token, "algorithm does not match its key")


@pytest.mark.parametrize("alg", [["RS256"], {"RS256": True}, 256, None, True, ""])
def test_a_non_string_or_missing_alg_is_refused_and_nothing_is_written(shared: Server, forger: Forger,
                                                                        alg: Any) -> None:
    header = {"alg": alg, "kid": forger.kid, "typ": "at+jwt"}
    signed = forger.sign()
    token = f"{_segment(header)}.{signed.split('.')[1]}.{signed.split('.')[2]}"
    _assert_invalid_token(shared, token, "is not accepted")


@pytest.mark.parametrize("signed_by", ["foreign", "ours"])
def test_an_unknown_kid_is_refused_and_nothing_is_written(shared: Server, forger: Forger, signed_by: str) -> None:
    key = forger.foreign if signed_by == "foreign" else None
    _assert_invalid_token(shared, forger.sign(key=key, kid="not-ours"), "not signed by a key of this issuer")
    _assert_invalid_token(shared, forger.sign(key=key, kid=None), "not signed by a key of this issuer")


@pytest.mark.parametrize(
    ("kid", "words"),
    [
        ("../../../../../../etc/passwd", "not signed by a key of this issuer"),
        ("/dev/stdin", "not signed by a key of this issuer"),
        ("' OR '1'='1' --", "not signed by a key of this issuer"),
        ('"; DROP TABLE signing_keys; --', "not signed by a key of this issuer"),
        ("k" * 129, "not signed by a key of this issuer"),
        ("k" * 10240, "too long to be one of ours"),
        ("", "not signed by a key of this issuer"),
        ("k1\u0000", "not signed by a key of this issuer"),
        (12345, "is not a JWT"),
        (["list"], "is not a JWT"),
        ({"$ne": None}, "is not a JWT"),
    ],
    ids=["path-traversal", "device-path", "sql-or", "sql-drop", "129-chars", "10-kB", "empty", "nul", "integer", "list",
         "object"],
)
def test_an_injected_kid_is_refused_and_nothing_is_written(shared: Server, forger: Forger, kid: Any,
                                                            words: str) -> None:
    signed = forger.sign()  # a signature of ours, under a header that names another kid
    header = _segment({"alg": "RS256", "kid": kid, "typ": "at+jwt"})
    _assert_invalid_token(shared, f"{header}.{signed.partition('.')[2]}", words)
    # The key ring survived: the server's real tokens still work.
    assert shared.http.get(ACCOUNTS, headers=_bearer(forger.token)).status_code == 200


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "JOSE", "application/jwt", "at+jwt "])
def test_a_token_not_typed_at_jwt_is_refused_and_nothing_is_written(shared: Server, forger: Forger,
                                                                     typ: str | None) -> None:
    _assert_invalid_token(shared, forger.sign(typ=typ), "not an access token (typ at+jwt)")


def test_application_at_jwt_and_any_case_are_accepted_typ_spellings(shared: Server, forger: Forger) -> None:
    for typ in ("application/at+jwt", "AT+JWT"):
        assert shared.http.get(ACCOUNTS, headers=_bearer(forger.sign(typ=typ))).status_code == 200


def test_a_token_expired_beyond_the_30_s_leeway_is_refused_and_nothing_is_written(
    shared: Server, forger: Forger
) -> None:
    now = int(time.time())
    expired = forger.sign(forger.fresh_claims(iat=now - 600, nbf=now - 600, exp=now - 45))
    _assert_invalid_token(shared, expired, "expired")
    within_leeway = forger.sign(forger.fresh_claims(iat=now - 600, nbf=now - 600, exp=now - 10))
    assert shared.http.get(ACCOUNTS, headers=_bearer(within_leeway)).status_code == 200


def test_a_token_not_valid_yet_beyond_the_leeway_is_refused_and_nothing_is_written(
    shared: Server, forger: Forger
) -> None:
    now = int(time.time())
    _assert_invalid_token(shared, forger.sign(forger.fresh_claims(nbf=now + 120)), "not valid yet")
    assert shared.http.get(ACCOUNTS, headers=_bearer(forger.sign(forger.fresh_claims(nbf=now + 10)))).status_code == 200


@pytest.mark.parametrize(
    ("audience", "words"),
    [("another-api", "another audience"), (["another-api", "third-api"], "another audience"),
     ("bankgate-api ", "another audience"), ("BANKGATE-API", "another audience"), ("", "signature or claims"),
     (7, "another audience")],
)
def test_a_token_for_another_audience_is_refused_and_nothing_is_written(shared: Server, forger: Forger,
                                                                         audience: Any, words: str) -> None:
    _assert_invalid_token(shared, forger.sign(forger.fresh_claims(aud=audience)), words)


@pytest.mark.parametrize("issuer", ["https://elsewhere.test", "http://127.0.0.1:1", "{base}/", "{base}/evil"])
def test_a_token_from_another_issuer_is_refused_and_nothing_is_written(shared: Server, forger: Forger,
                                                                        issuer: str) -> None:
    claims = forger.fresh_claims(iss=issuer.format(base=shared.base_url))
    _assert_invalid_token(shared, forger.sign(claims), "another issuer")


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "jti"])
def test_a_token_missing_a_required_claim_is_refused_and_nothing_is_written(shared: Server, forger: Forger,
                                                                             claim: str) -> None:
    claims = forger.fresh_claims()
    del claims[claim]
    _assert_invalid_token(shared, forger.sign(claims), "the token's signature or claims are invalid")


@pytest.mark.parametrize("environment", ["production", None, ""])
def test_a_token_for_another_environment_is_refused_and_nothing_is_written(shared: Server, forger: Forger,
                                                                            environment: str | None) -> None:
    claims = forger.fresh_claims()
    claims.pop("environment")
    if environment is not None:
        claims["environment"] = environment
    _assert_invalid_token(shared, forger.sign(claims), "not for the sandbox environment")


def test_a_sandbox_token_is_refused_by_a_production_server(shared: Server, forger: Forger,
                                                           server_factory: Any) -> None:
    production = server_factory({"BANKGATE_ENVIRONMENT": "production"})
    response = production.http.get(WHOAMI, headers=_bearer(forger.token))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith(f'{REALM}, error="invalid_token"')
    assert "not signed by a key of this issuer" in response.json()["error_description"]
    # The sandbox payments API is not served in production at all, so nothing can be written there.
    assert _pay(production, _bearer(forger.token)).status_code == 404
    _assert_nothing_written(production)


def test_garbage_that_is_not_a_jwt_is_refused_and_nothing_is_written(shared: Server) -> None:
    for token in ("garbage", "a.b.c", "a.b", "....", "eyJ9.eyJ9.eyJ9", "x" * 9000):
        words = "too long" if len(token) > 8192 else "not a JWT"
        _assert_invalid_token(shared, token, words)


def test_a_revoked_token_is_refused_at_once_and_nothing_is_written(shared: Server) -> None:
    client = shared.create_client("app_1")
    token = shared.token(client).json()["access_token"]
    assert shared.http.get(ACCOUNTS, headers=_bearer(token)).status_code == 200
    revoked = shared.http.post("/oauth/revoke", data={"token": token},
                               headers={"Authorization": basic(client["api_key"], client["secret_key"])})
    assert revoked.status_code == 200, revoked.text
    _assert_invalid_token(shared, token, "revoked")


# -- certificate-bound tokens ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bound(tls: Tls) -> dict[str, Any]:
    """A user with app_1 and its certificate-bound token; another user with its own certificate."""
    alice = tls.new_user("Guard Alice", scopes=("app_1",))
    bob = tls.new_user("Guard Bob", scopes=("app_1",))
    response = tls.authorize(alice)
    assert response.status_code == 200, response.text
    return {"alice": alice, "bob": bob, "token": response.json()["access_token"]}


def test_a_bound_token_without_a_client_certificate_is_refused_and_nothing_is_written(
    tls: Tls, bound: dict[str, Any]
) -> None:
    with tls.client() as http:
        _assert_invalid_token(tls.server, bound["token"], "bound to a client certificate; present it", http=http)


def test_a_bound_token_with_another_users_certificate_is_refused_and_nothing_is_written(
    tls: Tls, bound: dict[str, Any]
) -> None:
    with tls.client(bound["bob"]["cert"]) as http:
        _assert_invalid_token(tls.server, bound["token"], "bound to another client certificate", http=http)


def test_a_bound_token_with_its_own_certificate_reads_the_users_accounts(tls: Tls, bound: dict[str, Any]) -> None:
    with tls.client(bound["alice"]["cert"]) as http:
        response = http.get(ACCOUNTS, headers=_bearer(bound["token"]))
    assert response.status_code == 200, response.text
    assert [a["application_id"] for a in response.json()["accounts"]] == ["app_1"]
    _assert_nothing_written(tls.server)


def test_a_forged_client_certificate_header_from_an_untrusted_address_does_not_satisfy_a_bound_token(
    server_factory: Any, tmp_path: Path
) -> None:
    issuer = {"BANKGATE_ISSUER": "https://bankgate.test"}
    # TLS server reading nginx's header only from 10.0.0.0/8; the test's requests come from 127.0.0.1.
    direct = server_factory(issuer, args=("--tls", "--client-cert-header", "nginx", "--trusted-proxy", "10.0.0.0/8"))
    tls = Tls(direct, tmp_path)
    user = tls.new_user("Header Forger", scopes=("app_1",))
    token = tls.authorize(user).json()["access_token"]
    forged = {**_bearer(token), "X-SSL-Client-Cert": quote(Path(user["cert"][0]).read_text(), safe="")}
    with tls.client() as http:
        _assert_refused(direct, forged, 401, "invalid_token", "bound to a client certificate; present it", http=http)
    with tls.client(user["cert"]) as http:
        assert http.get(ACCOUNTS, headers=_bearer(token)).status_code == 200
    # The same header from a trusted proxy address counts: the forgery above was refused for its origin only.
    proxied = server_factory(issuer, data_dir=direct.data_dir,
                             args=("--client-cert-header", "nginx", "--trusted-proxy", "127.0.0.1/32"))
    assert proxied.http.get(ACCOUNTS, headers=forged).status_code == 200
    assert proxied.http.get(ACCOUNTS, headers=_bearer(token)).status_code == 401
    _assert_nothing_written(direct)


# -- malformed Authorization headers -----------------------------------------------------------------------------


def _basic_raw(text: bytes) -> str:
    return "Basic " + base64.b64encode(text).decode()


@pytest.mark.parametrize(
    ("headers", "status", "error", "words"),
    [
        ([("Authorization", "Bearer")], 401, None, "send Authorization: Bearer"),
        ([("Authorization", "")], 401, None, "send Authorization: Bearer"),
        ([("Authorization", "Bearer a b")], 400, "invalid_request", "credentials are malformed"),
        ([("Authorization", "Bearer abc$def")], 400, "invalid_request", "credentials are malformed"),
        ([("Authorization", "Bearer abc=def")], 400, "invalid_request", "credentials are malformed"),
        ([("Authorization", 'Bearer "abc"')], 400, "invalid_request", "credentials are malformed"),
        ([("Authorization", "Bearer abc,Bearer def")], 400, "invalid_request", "credentials are malformed"),
        ([("Authorization", "Bearer Bearer abc")], 400, "invalid_request", "credentials are malformed"),
        ([("Authorization", "Bearer a"), ("Authorization", "Bearer b")], 400, "invalid_request",
         "exactly one Authorization header"),
        ([("Authorization", "Bearer a"), ("Authorization", "")], 400, "invalid_request",
         "exactly one Authorization header"),
        ([("Authorization", "Token abc")], 401, None, "'Token' authentication scheme is not accepted"),
        ([("Authorization", "Digest username=x")], 401, None, "'Digest' authentication scheme is not accepted"),
        ([("Authorization", "Bearer\tabc")], 401, None, "authentication scheme is not accepted"),
        ([("Authorization", "Basic !!!!")], 400, "invalid_request", "credentials are malformed"),
        ([("Authorization", "Basic abc")], 400, "invalid_request", "not base64 of UTF-8"),
        ([("Authorization", "Basic " + "a" * 5)], 400, "invalid_request", "not base64 of UTF-8"),
        ([("Authorization", _basic_raw(b"\xff\xfe:\xfd"))], 400, "invalid_request", "not base64 of UTF-8"),
        ([("Authorization", _basic_raw(b"no-colon-here"))], 400, "invalid_request", "api_key:secret_key"),
        ([("Authorization", _basic_raw(b":only-a-secret"))], 400, "invalid_request", "api_key:secret_key"),
        # An empty secret is well-formed Basic (bankgate.web.basic): a failed authentication, not a 400.
        ([("Authorization", _basic_raw(b"only-a-key:"))], 401, "invalid_client", "client authentication failed"),
    ],
    ids=[
        "bearer-without-token", "empty", "bearer-two-words", "bearer-dollar",
        "bearer-inner-padding", "bearer-quoted", "bearer-comma-list", "bearer-twice", "two-headers",
        "two-headers-one-empty",
        "unknown-scheme-token", "unknown-scheme-digest", "bearer-tab", "basic-not-token68", "basic-bad-padding",
        "basic-bad-length", "basic-not-utf8", "basic-without-colon", "basic-empty-key", "basic-empty-secret",
    ],
)
def test_a_malformed_authorization_header_is_refused_and_nothing_is_written(
    shared: Server, headers: list[tuple[str, str]], status: int, error: str | None, words: str
) -> None:
    # Well-formed Basic syntax whose content is wrong is answered with a Basic challenge.
    scheme = "Basic" if words in ("not base64 of UTF-8", "api_key:secret_key") else "Bearer"
    _assert_refused(shared, headers, status, error, words, scheme=scheme)


def test_a_malformed_basic_header_is_answered_with_a_basic_challenge(shared: Server) -> None:
    response = shared.http.get(ACCOUNTS, headers={"Authorization": _basic_raw(b"no-colon-here")})
    assert response.status_code == 400
    assert response.headers["www-authenticate"].startswith('Basic realm="bankgate", error="invalid_request"')


@pytest.mark.parametrize(
    "value",
    [b"Bearer \xff\xfe\xfd", b"Bearer caf\xc3\xa9", b"Bearer \xe2\x80\x8babc", b"B\xe9arer abc", b"Basic \xa0YTpi",
     b"\xff"],
    ids=["invalid-utf8", "utf8-accent", "zero-width-space", "latin1-scheme", "nbsp", "single-byte"],
)
def test_non_ascii_bytes_in_authorization_are_refused_with_400_and_nothing_is_written(
    shared: Server, value: bytes
) -> None:
    for method, target in ((b"GET", ACCOUNTS.encode()), (b"POST", PAYMENTS.encode())):
        extra = [(b"idempotency-key", uuid.uuid4().hex.encode()), (b"content-type", b"application/json")]
        status, headers, body = _raw(shared, method, target, [(b"authorization", value), *extra],
                                     json.dumps(ORDER).encode() if method == b"POST" else b"")
        assert status == 400, body
        assert json.loads(body) == {"error": "invalid_request",
                                    "error_description": "the Authorization header must be ASCII text"}
        assert headers[b"www-authenticate"].startswith(b'Bearer realm="bankgate", error="invalid_request"')
    _assert_nothing_written(shared)


@pytest.mark.parametrize("size", [16385, 20_000, 100_000])
def test_an_oversized_authorization_header_gets_a_4xx_and_the_server_keeps_serving(
    shared: Server, forger: Forger, size: int
) -> None:
    for value in ("Bearer " + "a" * size, "Basic " + "YTpi" * (size // 4), "Bearer " + forger.token + "a" * size):
        for response in (shared.http.get(ACCOUNTS, headers={"Authorization": value}),
                         _pay(shared, {"Authorization": value})):
            assert response.status_code in (400, 401, 431), response.text
        assert shared.http.get(ACCOUNTS, headers=_bearer(forger.token)).status_code == 200
    _assert_nothing_written(shared)


# -- Basic mode (the Banked style: every call carries the key pair) -----------------------------------------------


def test_a_basic_mode_client_reads_accounts_and_pays_with_its_key_pair(paying: Server) -> None:
    client = paying.create_client("app_1", "app_2", auth_mode="basic")
    headers = {"Authorization": basic(client["api_key"], client["secret_key"])}
    accounts = paying.http.get(ACCOUNTS, headers=headers)
    assert accounts.status_code == 200, accounts.text
    assert [a["application_id"] for a in accounts.json()["accounts"]] == ["app_1", "app_2"]
    paid = _pay(paying, headers)
    assert paid.status_code == 201, paid.text
    assert paying.http.get(paid.headers["location"], headers=headers).json()["id"] == paid.json()["id"]
    assert len(_rows(paying, "payments", f"client:{client['client_id']}")) == 1
    whoami = paying.http.get(WHOAMI, headers=headers)
    assert whoami.status_code == 200 and whoami.json()["auth_method"] == "basic"


def test_a_basic_mode_client_with_a_wrong_secret_gets_401_invalid_client_and_nothing_is_written(
    paying: Server,
) -> None:
    client = paying.create_client("app_1", auth_mode="basic")
    with _from(paying, "127.0.0.31") as http:
        # Four failures: one below the per-account-and-address threshold of the throttle.
        for secret in (WRONG_SECRET, client["secret_key"][:-1], client["secret_key"] + "x"):
            headers = {"Authorization": basic(client["api_key"], secret)}
            get = http.get(ACCOUNTS, headers=headers)
            for response in (get, _pay(paying, headers, http)) if secret == WRONG_SECRET else (get,):
                assert response.status_code == 401, response.text
                assert response.json()["error"] == "invalid_client"
                assert response.headers["www-authenticate"] == 'Basic realm="bankgate"'
        unknown = {"Authorization": basic("bk_test_" + "N" * 40, WRONG_SECRET)}
        response = http.get(ACCOUNTS, headers=unknown)
        assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    _assert_nothing_written(paying, f"client:{client['client_id']}")


def test_an_oauth2_client_using_its_key_pair_as_basic_is_told_to_get_a_token(paying: Server) -> None:
    client = paying.create_client("app_1")
    headers = {"Authorization": basic(client["api_key"], client["secret_key"])}
    for response in (paying.http.get(ACCOUNTS, headers=headers), _pay(paying, headers)):
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
        assert "POST /oauth/token" in response.json()["error_description"]
        assert response.headers["www-authenticate"] == 'Basic realm="bankgate"'
    _assert_nothing_written(paying, f"client:{client['client_id']}")
    # Its key pair is right, so it gets the token it was told to get.
    assert paying.token(client).status_code == 201


def test_basic_brute_force_is_throttled_like_the_token_endpoint(paying: Server) -> None:
    client = paying.create_client("app_1", auth_mode="basic")
    wrong = {"Authorization": basic(client["api_key"], WRONG_SECRET)}
    right = {"Authorization": basic(client["api_key"], client["secret_key"])}
    with _from(paying, "127.0.0.32") as http:
        for _ in range(5):  # the per-account-and-address threshold, as on the token endpoint
            assert http.get(ACCOUNTS, headers=wrong).status_code == 401
        # The fifth failure blocks for 1 s; each failure counted after a block ends doubles it. Two more make a
        # 4 s block, long enough for the checks below however slow the machine.
        counted, deadline = 5, time.monotonic() + 15
        while counted < 7 and time.monotonic() < deadline:
            response = http.get(ACCOUNTS, headers=wrong)
            assert response.status_code in (401, 429), response.text
            if response.status_code == 429:
                time.sleep(int(response.headers["retry-after"]) + 0.05)
            counted += response.status_code == 401
        assert counted == 7
        for response in (http.get(ACCOUNTS, headers=wrong), http.get(ACCOUNTS, headers=right),
                         _pay(paying, right, http)):
            assert response.status_code == 429, response.text
            assert response.json()["error"] == "slow_down"
            assert int(response.headers["retry-after"]) >= 1
        # One throttle for both: the token endpoint refuses this account from this address too.
        token = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=right)
        assert token.status_code == 429 and token.json()["error"] == "slow_down"
    _assert_nothing_written(paying, f"client:{client['client_id']}")
    # Its owner, elsewhere, is not blocked.
    with _from(paying, "127.0.0.33") as http:
        assert http.get(ACCOUNTS, headers=right).status_code == 200


# -- scopes and allow lists ---------------------------------------------------------------------------------------


def _insufficient_scope_payment(server: Server) -> tuple[httpx.Response, str]:
    client = server.create_client("app_1")
    token = server.token(client).json()["access_token"]
    response = server.http.post(PAYMENTS, json={**ORDER, "application_id": "app_2"},
                                headers={**_bearer(token), "Idempotency-Key": str(uuid.uuid4())})
    return response, f"client:{client['client_id']}"


def test_paying_for_an_application_the_caller_lacks_is_403_insufficient_scope_and_no_payment(paying: Server) -> None:
    response, principal = _insufficient_scope_payment(paying)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "insufficient_scope"
    assert "may not act for app_2; its applications: app_1" in response.json()["error_description"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'{REALM}, error="insufficient_scope", error_description="')
    assert challenge.endswith(', scope="app_2"')
    assert _rows(paying, "payments", principal) == []


def test_paying_for_an_application_the_caller_lacks_leaves_no_idempotency_record(paying: Server) -> None:
    # A 403 is not kept for the key: once the application is granted, the same retry runs.
    response, principal = _insufficient_scope_payment(paying)
    assert response.status_code == 403
    assert _rows(paying, "idempotency_keys", principal) == []


def test_the_ip_allow_list_applies_on_the_api_with_403_access_denied(paying: Server) -> None:
    client = paying.create_client("app_1")
    basic_client = paying.create_client("app_1", auth_mode="basic")
    token = paying.token(client).json()["access_token"]
    assert paying.http.get(ACCOUNTS, headers=_bearer(token)).status_code == 200
    for who, headers in ((client, _bearer(token)),
                         (basic_client, {"Authorization": basic(basic_client["api_key"], basic_client["secret_key"])})):
        paying.cli("ips", "allow", who["api_key"], "203.0.113.0/24")
        for response in (paying.http.get(ACCOUNTS, headers=headers), _pay(paying, headers)):
            assert response.status_code == 403, response.text
            assert response.json()["error"] == "access_denied"
            assert "requests from 127.0.0.1 are not allowed" in response.json()["error_description"]
            assert response.headers["www-authenticate"] == REALM
        _assert_nothing_written(paying, f"client:{who['client_id']}")
    paying.cli("ips", "allow", client["api_key"], "127.0.0.0/8")
    assert paying.http.get(ACCOUNTS, headers=_bearer(token)).status_code == 200


# -- the verified-token cache -------------------------------------------------------------------------------------


def test_a_token_reused_50_times_keeps_working_and_stops_at_once_when_revoked(shared: Server) -> None:
    client = shared.create_client("app_1")
    token = shared.token(client).json()["access_token"]
    for _ in range(50):
        assert shared.http.get(ACCOUNTS, headers=_bearer(token)).status_code == 200
    revoked = shared.http.post("/oauth/revoke", data={"token": token},
                               headers={"Authorization": basic(client["api_key"], client["secret_key"])})
    assert revoked.status_code == 200
    _assert_invalid_token(shared, token, "the token has been revoked")


class _RingKey:
    """What `LocalKeys` reads from the server's key ring: `kid`, `alg`, `public_key` (the private key signs the
    test's tokens)."""

    def __init__(self, kid: str, alg: str, private_key: Any) -> None:
        self.kid, self.alg, self.private_key = kid, alg, private_key
        self.public_key = private_key.public_key()


ISSUER = "https://issuer.test"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Ring:
    """An in-process key ring that counts lookups: one lookup per signature check."""

    def __init__(self, *keys: _RingKey) -> None:
        self.keys = {key.kid: key for key in keys} or {"k1": _RingKey("k1", "RS256", RSA_KEY)}
        self.lookups = 0

    def lookup(self, kid: str) -> Any:
        self.lookups += 1
        return self.keys.get(kid)

    def token(self, kid: str = "k1", ttl: int = 300, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": "bankgate-api", "sub": "client-1", "iat": now, "nbf": now, "exp": now + ttl,
                   "jti": uuid.uuid4().hex, "scope": "app_1", "environment": "sandbox", **claims}
        key = self.keys[kid]
        return pyjwt.encode(payload, key.private_key, algorithm=key.alg, headers={"kid": kid, "typ": "at+jwt"})


def _verifier(
    ring: Ring, *, revoked: set[str] | None = None, cache_size: int = 100, clock: Clock = SYSTEM
) -> TokenVerifier:
    return TokenVerifier(LocalKeys(ring.lookup), issuer=ISSUER, audience="bankgate-api", environment="sandbox",
                         is_revoked=revoked.__contains__ if revoked is not None else None,
                         leeway=30, cache_size=cache_size, clock=clock)


async def test_a_reused_token_is_signature_checked_once() -> None:
    ring = Ring()
    verifier = _verifier(ring)
    token = ring.token()
    for _ in range(50):
        principal = await verifier.verify(token, None)
        assert principal.scopes == ("app_1",) and principal.kind == "client"
    assert ring.lookups == 1
    uncached = _verifier(ring, cache_size=0)
    for _ in range(5):
        await uncached.verify(token, None)
    assert ring.lookups == 6


async def test_a_cached_token_stops_when_it_expires(clock: ManualClock) -> None:
    ring = Ring()
    verifier = _verifier(ring, clock=clock)
    token = ring.token(ttl=60)
    await verifier.verify(token, None)
    expires_at = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    clock.advance(expires_at + 29.0 - clock.now())
    await verifier.verify(token, None)  # within the leeway
    assert ring.lookups == 1
    clock.advance(2.0)  # expires_at + 31
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token, None)
    assert "cached=0" in repr(verifier)
    with pytest.raises(InvalidToken, match="expired"):  # and checked again from scratch, it is still expired
        await verifier.verify(ring.token(ttl=-60), None)


async def test_a_cached_token_stops_at_once_when_revoked() -> None:
    ring, revoked = Ring(), set()
    verifier = _verifier(ring, revoked=revoked)
    token = ring.token()
    await verifier.verify(token, None)
    revoked.add(pyjwt.decode(token, options={"verify_signature": False})["jti"])
    with pytest.raises(InvalidToken, match="revoked"):
        await verifier.verify(token, None)
    assert ring.lookups == 1


async def test_a_cached_bound_token_checks_its_certificate_on_every_call() -> None:
    ring = Ring()
    verifier = _verifier(ring)
    own, other = b"own certificate DER", b"another certificate DER"
    token = ring.token(cnf={"x5t#S256": x5t_s256(own)}, oid="user-1")
    principal = await verifier.verify(token, own)
    assert principal.kind == "user" and principal.certificate_bound
    with pytest.raises(InvalidToken, match="present it"):
        await verifier.verify(token, None)
    with pytest.raises(InvalidToken, match="another client certificate"):
        await verifier.verify(token, other)
    assert (await verifier.verify(token, own)) == principal
    assert ring.lookups == 1


async def test_an_unreadable_certificate_binding_is_refused() -> None:
    ring = Ring()
    for cnf in ({"x5t#S256": 5}, {"jkt": "abc"}, "x5t", []):
        with pytest.raises(InvalidToken, match="certificate binding"):
            await _verifier(ring).verify(ring.token(cnf=cnf), None)


async def test_the_cache_is_bounded() -> None:
    ring = Ring()
    verifier = _verifier(ring, cache_size=3)
    tokens = [ring.token() for _ in range(5)]
    for token in tokens:
        await verifier.verify(token, None)
    assert "cached=3" in repr(verifier)
    await verifier.verify(tokens[0], None)  # pushed out first: checked again
    assert ring.lookups == 6


async def test_a_key_of_another_algorithm_than_the_token_names_is_refused() -> None:
    ec_ring = Ring(_RingKey("k1", "ES256", ec.generate_private_key(ec.SECP256R1())))
    token = Ring().token()  # RS256 under the same kid
    with pytest.raises(InvalidToken, match="does not match its key"):
        await _verifier(ec_ring).verify(token, None)


def test_parse_jwks_keeps_only_signature_keys_of_accepted_algorithms() -> None:
    rsa_jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    document = {"keys": [
        {**rsa_jwk, "kid": "good"},
        {**rsa_jwk, "kid": "no-alg-given"},
        {**rsa_jwk, "kid": "hs", "alg": "HS256"},
        {**rsa_jwk, "kid": "enc", "use": "enc"},
        {**rsa_jwk, "kid": "ps", "alg": "PS256"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0", "alg": "HS256"},
        {"kty": "RSA", "kid": "broken", "n": "AA", "e": "AQAB"},
        {**rsa_jwk, "kid": 7},
        "not a key",
    ]}
    keys = parse_jwks(document)
    assert sorted(keys) == ["broken", "good", "no-alg-given"] or sorted(keys) == ["good", "no-alg-given"]
    assert {key.alg for key in keys.values()} == {"RS256"}
    with pytest.raises(ValueError, match="no `keys` list"):
        parse_jwks({"keys": "nope"})


# -- the guard in front of other apps, keys from the issuer's JWKS -------------------------------------------------


async def _principal_endpoint(request: Request) -> JSONResponse:
    principal = getattr(request.state, "principal", None)
    return JSONResponse({"subject": principal.subject if principal else None,
                         "scopes": list(principal.scopes) if principal else []})


def _starlette(guard: Guard, **options: Any) -> Starlette:
    routes = [Route("/data", _principal_endpoint), Route("/healthz", _principal_endpoint)]
    return Starlette(routes=routes, middleware=[Middleware(GuardMiddleware, guard=guard, **options)])


def _fastapi(guard: Guard, **options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard, **options)

    @app.get("/app1")
    async def app1(principal: Principal = Depends(require_scope("app_1"))) -> dict[str, Any]:  # noqa: B008
        return {"subject": principal.subject, "scopes": list(principal.scopes)}

    @app.get("/app9")
    async def app9(principal: Principal = Depends(require_scope("app_9"))) -> dict[str, Any]:  # noqa: B008
        return {"subject": principal.subject}

    @app.get("/me")
    async def me(principal: Principal = Depends(require_principal)) -> dict[str, Any]:  # noqa: B008
        return {"subject": principal.subject}

    @app.get("/open")
    async def open_route(request: Request) -> dict[str, Any]:
        principal = getattr(request.state, "principal", None)
        return {"subject": principal.subject if principal else None}

    return app


def _asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")


@pytest.fixture(scope="module")
def remote_token(shared: Server) -> tuple[str, str]:
    client = shared.create_client("app_1", "app_2", name="remote guard")
    return shared.token(client).json()["access_token"], client["client_id"]


async def test_a_starlette_app_behind_a_remote_guard_sees_the_principal(
    shared: Server, remote_token: tuple[str, str]
) -> None:
    token, client_id = remote_token
    app = _starlette(Guard.remote(issuer=shared.base_url + "/"), exclude=["/healthz"])
    async with _asgi_client(app) as http:
        response = await http.get("/data", headers=_bearer(token))
        assert response.status_code == 200, response.text
        assert response.json() == {"subject": client_id, "scopes": ["app_1", "app_2"]}
        missing = await http.get("/data")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == REALM
        forged = await http.get("/data", headers=_bearer(token[:-4] + "AAAA"))
        assert forged.status_code == 401
        assert forged.headers["www-authenticate"].startswith(f'{REALM}, error="invalid_token"')
        basic_pair = await http.get("/data", headers={"Authorization": "Basic YTpi"})
        assert basic_pair.status_code == 401 and "Basic authentication is not accepted" in basic_pair.text
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["subject"] is None


async def test_fastapi_require_scope_passes_an_owned_application_and_refuses_another_with_403(
    shared: Server, remote_token: tuple[str, str]
) -> None:
    token, client_id = remote_token
    async with _asgi_client(_fastapi(Guard.remote(issuer=shared.base_url))) as http:
        owned = await http.get("/app1", headers=_bearer(token))
        assert owned.status_code == 200, owned.text
        assert owned.json() == {"subject": client_id, "scopes": ["app_1", "app_2"]}
        refused = await http.get("/app9", headers=_bearer(token))
        assert refused.status_code == 403, refused.text
        challenge = refused.headers["www-authenticate"]
        assert challenge.startswith(f'{REALM}, error="insufficient_scope", error_description="')
        assert challenge.endswith(', scope="app_9"')
        assert "may not act for app_9; its applications: app_1, app_2" in refused.json()["detail"]
        assert (await http.get("/app1")).status_code == 401


async def test_an_optional_guard_passes_requests_without_credentials_but_refuses_bad_ones(
    shared: Server, remote_token: tuple[str, str]
) -> None:
    token, client_id = remote_token
    async with _asgi_client(_fastapi(Guard.remote(issuer=shared.base_url), optional=True)) as http:
        anonymous = await http.get("/open")
        assert anonymous.status_code == 200 and anonymous.json() == {"subject": None}
        # A header naming a scheme is an attempt, even with nothing after it: refused, not anonymous.
        assert (await http.get("/open", headers={"Authorization": "Bearer"})).status_code == 401
        assert (await http.get("/open", headers=_bearer(token))).json() == {"subject": client_id}
        needs_one = await http.get("/me")
        assert needs_one.status_code == 401 and needs_one.headers["www-authenticate"] == REALM
        for bad in ("Bearer garbage", "Bearer a b", "Token abc", "Basic YTpi"):
            refused = await http.get("/open", headers={"Authorization": bad})
            assert refused.status_code in (400, 401), (bad, refused.text)
        assert (await http.get("/open", headers=_bearer(token[:-4] + "AAAA"))).status_code == 401


class CountingJWKS:
    """A `RemoteJWKS` on an HTTP client that counts the requests it makes to the issuer."""

    def __init__(self, server: Server, interval: float) -> None:
        self.fetches = 0

        async def count(request: httpx.Request) -> None:
            assert request.url.path == "/.well-known/jwks.json"
            self.fetches += 1

        self.http = httpx.AsyncClient(event_hooks={"request": [count]}, timeout=10)
        keys = RemoteJWKS(f"{server.base_url}/.well-known/jwks.json", http=self.http, min_refresh_interval=interval)
        verifier = TokenVerifier(keys, issuer=server.base_url, audience="bankgate-api", environment="sandbox",
                                 is_revoked=None)
        self.guard = Guard(verifier)


def _forged_kid_tokens(forger: Forger, count: int) -> list[str]:
    return [forger.sign(key=forger.foreign, kid=f"forged-{uuid.uuid4().hex}") for _ in range(count)]


async def test_forged_kids_cost_the_issuer_at_most_one_jwks_fetch_per_refresh_interval(
    shared: Server, forger: Forger
) -> None:
    jwks = CountingJWKS(shared, interval=30.0)
    async with jwks.http, _asgi_client(_starlette(jwks.guard)) as http:
        assert (await http.get("/data", headers=_bearer(forger.token))).status_code == 200
        assert jwks.fetches == 1
        for token in _forged_kid_tokens(forger, 50):
            response = await http.get("/data", headers=_bearer(token))
            assert response.status_code == 401
            assert "not signed by a key of this issuer" in response.json()["error_description"]
        assert jwks.fetches <= 2
        assert (await http.get("/data", headers=_bearer(forger.token))).status_code == 200


async def test_concurrent_forged_kids_share_one_jwks_refresh(shared: Server, forger: Forger) -> None:
    jwks = CountingJWKS(shared, interval=1.0)
    forged = _forged_kid_tokens(forger, 100)
    async with jwks.http, _asgi_client(_starlette(jwks.guard)) as http:
        assert (await http.get("/data", headers=_bearer(forger.token))).status_code == 200
        await asyncio.sleep(1.05)
        first = await asyncio.gather(*(http.get("/data", headers=_bearer(t)) for t in forged[:50]))
        assert {r.status_code for r in first} == {401}
        assert jwks.fetches == 2  # the refresh the interval allowed, once, for all 50
        second = await asyncio.gather(*(http.get("/data", headers=_bearer(t)) for t in forged[50:]))
        assert {r.status_code for r in second} == {401}
        assert jwks.fetches == 2


def _echo_guarded(**options: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    return GuardMiddleware(app, guard=Guard(_verifier(Ring())), **options)


async def _status(app: Any, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "headers": headers or [], "client": ("127.0.0.1", 1)},
              receive, send)
    return int(sent[0]["status"])


async def test_exclude_lets_through_the_path_and_what_is_under_it_not_lookalikes_or_dot_segments() -> None:
    app = _echo_guarded(exclude=["/healthz", "/public/"])
    for path in ("/healthz", "/healthz/", "/healthz/live", "/public/", "/public/logo.png"):
        assert await _status(app, path) == 200, path
    for path in ("/healthzdump", "/healthz-admin", "/healthz.json", "/public", "/publicity", "/data",
                 "/healthz/../data", "/healthz/..", "/healthz/./x", "/public/../admin", "/"):
        assert await _status(app, path) == 401, path
    token = Ring().token()
    assert await _status(app, "/healthz/../data", [(b"authorization", f"Bearer {token}".encode())]) == 200


def _jwks_of(*keys: _RingKey) -> dict[str, Any]:
    return {"keys": [{**json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.private_key.public_key())),
                      "kid": key.kid, "alg": key.alg, "use": "sig"} for key in keys]}


async def test_a_broken_jwks_document_neither_crashes_the_guard_nor_drops_the_known_keys() -> None:
    ring = Ring()
    good = httpx.Response(200, json=_jwks_of(*ring.keys.values()))
    # Documents that are no JWKS at all: the keys known so far stay.
    broken = [
        httpx.Response(200, json=[{"kty": "RSA"}]),
        httpx.Response(200, json="keys"),
        httpx.Response(200, content=b"\xff not json"),
        httpx.Response(200, json={"keys": None}),
        httpx.Response(500, json={"keys": []}),
    ]
    # A JWKS whose keys are all unusable says the issuer publishes no key this guard accepts: it replaces the keys.
    unusable = [{"kid": "x", "kty": ["RSA"]}, {"kid": "y", "kty": "RSA", "alg": ["RS256"]},
                {"kid": "z", "kty": {"RSA": 1}, "use": ["sig"]}, {"kid": ["k1"], "kty": "RSA"}]
    served = [good, *[response for bad in broken for response in (bad, good)],
              httpx.Response(200, json={"keys": unusable}), httpx.Response(200, json={"keys": unusable})]

    def handler(request: httpx.Request) -> httpx.Response:
        return served.pop(0)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        keys = RemoteJWKS("https://issuer.test/.well-known/jwks.json", http=http, min_refresh_interval=0)
        guard = Guard(TokenVerifier(keys, issuer=ISSUER, audience="bankgate-api", environment="sandbox",
                                    is_revoked=None))
        assert (await guard.authenticate(_auth_scope(ring.token()))).subject == "client-1"
        stranger = Ring(_RingKey("k2", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        for _ in broken:
            with pytest.raises(GuardError) as refused:  # an unknown kid makes the guard fetch a broken document
                await guard.authenticate(_auth_scope(stranger.token("k2")))
            assert (refused.value.status, refused.value.error) == (401, "invalid_token")
            assert (await guard.authenticate(_auth_scope(ring.token()))).subject == "client-1"
            with pytest.raises(GuardError):  # fetches the good document again
                await guard.authenticate(_auth_scope(stranger.token("k2")))
        with pytest.raises(GuardError) as refused:
            await guard.authenticate(_auth_scope(stranger.token("k2")))
        assert (refused.value.status, refused.value.error) == (401, "invalid_token")
        with pytest.raises(GuardError, match="not signed by a key of this issuer"):
            await guard.authenticate(_auth_scope(ring.token()))
        assert served == []


def _auth_scope(token: str) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())], "client": ("127.0.0.1", 1)}


def test_a_jwks_url_must_be_http_or_https() -> None:
    for url in ("ftp://issuer.test/jwks", "file:///etc/passwd", "issuer.test/jwks", ""):
        with pytest.raises(ValueError, match="must be an https://"):
            RemoteJWKS(url)


# -- properties ---------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
    | st.sampled_from(["RSA", "EC", "OKP", "oct", "RS256", "ES256", "sig", "enc", "P-256", "AQAB"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["keys", "kid", "kty", "alg", "use", "n", "e", "crv", "x", "y"]), children,
                      max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(document=JSON)
def test_parse_jwks_on_any_json_returns_accepted_keys_or_raises_value_error(document: Any) -> None:
    try:
        keys = parse_jwks(document)
    except ValueError:
        return
    assert all(key.alg in ("RS256", "ES256", "EdDSA") for key in keys.values())


@settings(max_examples=1000, deadline=None)
@given(text=st.text(max_size=300))
def test_parse_authorization_raises_only_guard_errors_and_returns_a_scheme_and_token68(text: str) -> None:
    try:
        parsed = parse_authorization(text)
    except GuardError as err:
        assert (err.status, err.error) in ((400, "invalid_request"), (401, None))
        return
    if parsed is None:
        assert text.strip().partition(" ")[2].strip() == ""
        return
    kind, token = parsed
    assert kind in ("bearer", "basic")
    assert re.fullmatch(TOKEN68, token)
    assert parse_authorization(text) == parsed
    assert parse_authorization(f"{kind.upper()} {token}") == parsed


@settings(max_examples=500, deadline=None)
@given(token=st.from_regex(TOKEN68, fullmatch=True),
       scheme=st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR", "Basic", "basic", "BASIC"]),
       before=st.sampled_from(["", " ", "  "]), between=st.sampled_from([" ", "  ", "   "]),
       after=st.sampled_from(["", " ", "\t"]))
def test_any_token68_round_trips_through_parse_authorization(token: str, scheme: str, before: str, between: str,
                                                            after: str) -> None:
    assert parse_authorization(f"{before}{scheme}{between}{token}{after}") == (scheme.lower(), token)


@settings(max_examples=1000, deadline=None)
@given(text=st.text(max_size=200))
def test_decode_basic_on_any_text_raises_only_guard_errors(text: str) -> None:
    try:
        api_key, secret = decode_basic(text)
    except GuardError as err:
        assert (err.status, err.error, err.scheme) == (400, "invalid_request", "Basic")
        return
    # The first colon splits; each half percent-decoded (RFC 6749 §2.3.1); an empty secret is well-formed (401 later).
    raw_key, _, raw_secret = base64.b64decode(text).decode().partition(":")
    assert api_key and (api_key, secret) == (unquote(raw_key), unquote(raw_secret))


UNICODE = st.characters(blacklist_categories=("Cs",))


@settings(max_examples=500, deadline=None)
@given(api_key=st.text(alphabet=UNICODE, min_size=1, max_size=60).filter(lambda k: ":" not in k),
       secret=st.text(alphabet=UNICODE, min_size=1, max_size=60))
def test_any_key_pair_round_trips_through_decode_basic(api_key: str, secret: str) -> None:
    # RFC 6749 §2.3.1: form-urlencoded, then base64; a pair without "%" may also be sent as it is.
    encoded = f"{quote(api_key, safe='')}:{quote(secret, safe='')}"
    assert decode_basic(base64.b64encode(encoded.encode()).decode()) == (api_key, secret)
    if "%" not in api_key + secret:
        assert decode_basic(base64.b64encode(f"{api_key}:{secret}".encode()).decode()) == (api_key, secret)


async def _refuse_basic(api_key: str, secret: str, source_ip: str | None) -> Principal:
    raise GuardError(401, "invalid_client", "unknown key pair", scheme="Basic")


JSON_VALUES = st.one_of(
    st.sampled_from(["RS256", "HS256", "none", "ES256", "EdDSA", "k1", "at+jwt", "JWT"]),
    st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.none(), st.booleans(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
#: JOSE headers of every shape, mostly naming the key of PROPERTY_RING so that they reach every check.
JOSE_HEADERS = st.fixed_dictionaries(
    {"alg": JSON_VALUES},
    optional={"kid": st.one_of(st.just("k1"), JSON_VALUES), "typ": st.one_of(st.just("at+jwt"), JSON_VALUES),
              "crit": JSON_VALUES, "b64": JSON_VALUES, "jku": JSON_VALUES, "cnf": JSON_VALUES},
)


def _jwt_like() -> st.SearchStrategy[bytes]:
    """Bearer values that get past the syntax checks into the verifier."""
    body = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5)
    return st.builds(lambda h, b, s: f"Bearer {_segment(h)}.{_segment(b)}.{_b64url(s)}".encode(),
                     JOSE_HEADERS, body, st.binary(max_size=300))


HEADER_VALUES = st.one_of(
    st.binary(max_size=400),
    st.binary(max_size=400).map(lambda b: b"Bearer " + b),
    st.binary(max_size=400).map(lambda b: b"Basic " + b),
    st.binary(max_size=200).map(lambda b: b"Basic " + base64.b64encode(b)),
    # a value past the 16 KiB cap: random bytes repeated (hypothesis draws 16 KiB of bytes one choice at a time)
    st.tuples(st.binary(min_size=1, max_size=64), st.integers(16380, 16400)).map(
        lambda seed_size: b"Bearer " + (seed_size[0] * (16400 // len(seed_size[0]) + 1))[:seed_size[1]]),
    _jwt_like(),
)
HEADER_NAMES = st.sampled_from([b"authorization", b"authorization", b"x-ssl-client-cert", b"x-forwarded-for"])
PROPERTY_RING = Ring()
PROPERTY_GUARDS = [
    Guard(_verifier(PROPERTY_RING)),
    Guard(_verifier(PROPERTY_RING, revoked=set()), basic=_refuse_basic),
]


@settings(max_examples=500, deadline=None)
@given(value=_jwt_like())
def test_the_guard_answers_any_jose_header_with_401_invalid_token(value: bytes) -> None:
    scope = {"type": "http", "headers": [(b"authorization", value)], "client": ("127.0.0.1", 5000)}
    with pytest.raises(GuardError) as refused:
        asyncio.run(PROPERTY_GUARDS[0].authenticate(scope))
    assert (refused.value.status, refused.value.error) == (401, "invalid_token")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3), guard=st.sampled_from(PROPERTY_GUARDS),
       optional=st.booleans())
def test_guard_middleware_answers_arbitrary_header_bytes_with_400_or_401_never_5xx(
    headers: list[tuple[bytes, bytes]], guard: Guard, optional: bool
) -> None:
    reached: list[bool] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/data", "headers": headers, "client": ("127.0.0.1", 5000)}
    asyncio.run(GuardMiddleware(app, guard=guard, optional=optional)(scope, receive, send))
    status = sent[0]["status"]
    if reached:
        # Only an optional guard lets anything through, and only a request without credentials.
        assert optional and status == 200
        assert not any(name == b"authorization" and value.strip() for name, value in headers)
    else:
        assert status in (400, 401), (status, sent)
        body = json.loads(sent[1]["body"])
        assert body["error"] in ("invalid_request", "invalid_token", "invalid_client")
        assert any(name == b"www-authenticate" for name, _ in sent[0]["headers"])


def test_a_secret_typed_into_the_basic_key_field_reaches_neither_the_audit_trail_nor_the_log(server: Server) -> None:
    client = server.create_client("app_1", auth_mode="basic")
    swapped = {"Authorization": basic(client["secret_key"], client["api_key"])}
    assert server.http.get(ACCOUNTS, headers=swapped).status_code == 401
    denied = [e for e in server.audit(100) if e["event"] == "api.denied"]
    assert denied and all(e["actor"] == "anonymous" for e in denied)
    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        rows = [str(row) for table in ("audit_events", "auth_throttle") for row in db.execute(f"SELECT * FROM {table}")]  # noqa: S608
    assert not [row for row in rows if client["secret_key"] in row]
    assert client["secret_key"] not in server.log()
