"""bankgate.client's rules on real loopback sockets: token lifetimes as providers send them, reuse for the token's
life, the refresh margin, one retry on 401, retries with back-off that keep the idempotency key, and secrets that
never show."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from bankgate.client import (
    BankgateAuth,
    ClientCredentials,
    InvalidTokenResponse,
    MemoryCache,
    RetryPolicy,
    RetryTransport,
    Token,
    TokenServerError,
    default_margin,
)
from bankgate.client._retry import parse_retry_after
from bankgate.client._token import parse_expires_in
from client_helpers import json_body, loopback

SECRET = "sk_test_never-show-this-secret-0123456789"


def _jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _issuer(body: dict[str, Any], status: int = 200) -> Any:
    counter = {"n": 0}

    def handle(method: str, path: str, headers: dict[str, str], payload: bytes) -> tuple[int, dict[str, str], bytes]:
        if path == "/token":
            counter["n"] += 1
            return status, {}, json_body({**body, "access_token": body.get("access_token", f"tok-{counter['n']}")})
        return 200, {}, json_body({"ok": True})

    return handle


@pytest.mark.parametrize("expires_in", ["300", 300, "300.0", 300.0, " 300 ", None])
def test_a_300_second_token_is_reused_for_its_life_then_refreshed_once(expires_in: Any) -> None:
    clock = Clock()
    body: dict[str, Any] = {} if expires_in is None else {"expires_in": expires_in}
    if expires_in is None:  # no expires_in: the JWT's exp (counted from its iat, whatever our clock says)
        body["access_token"] = _jwt({"iat": 1_000, "exp": 1_300, "sub": "robot"})
    with loopback(_issuer(body)) as server:
        auth = BankgateAuth(ClientCredentials(f"{server.url}/token", "bk_test_a", SECRET), cache=MemoryCache(),
                            clock=clock)
        with httpx.Client(base_url=server.url, auth=auth) as api:
            for second in range(0, 270, 3):  # the margin is min(30, 10 % of 300) = 30 s
                clock.now = 1_700_000_000.0 + second
                assert api.get("/api").status_code == 200
            assert server.count("/token") == 1
            clock.now = 1_700_000_000.0 + 271
            api.get("/api")
            assert server.count("/token") == 2
        assert auth.token().lifetime == 300


def test_expires_in_parsing_accepts_what_providers_send_and_refuses_nonsense() -> None:
    assert [parse_expires_in(v) for v in ("300", 300, "300.0", 7200, b"60")] == [300, 300, 300, 7200, 60]
    assert [parse_expires_in(v) for v in (None, "", "soon", -5, 0, "nan", "inf", True, [300])] == [None] * 9


def test_refresh_margin_keeps_short_tokens_useful() -> None:
    assert default_margin(300) == 30 and default_margin(7200) == 30 and default_margin(60) == 6
    token = Token("v", expires_at=1_000.0, lifetime=300)
    assert token.is_fresh(969.9) and not token.is_fresh(970.0)
    # MSAL's fixed 5 minutes would never reuse it:
    assert not token.is_fresh(700.0, margin=lambda lifetime: 300)


def test_missing_access_token_and_server_errors_are_typed() -> None:
    with loopback(_issuer({"access_token": ""}, 200)) as server:
        auth = BankgateAuth(ClientCredentials(f"{server.url}/token", "k", SECRET), cache=MemoryCache())
        with pytest.raises(InvalidTokenResponse):
            auth.token()
    with loopback(_issuer({"error": "temporarily_unavailable"}, 503)) as server:
        auth = BankgateAuth(ClientCredentials(f"{server.url}/token", "k", SECRET), cache=MemoryCache())
        with pytest.raises(TokenServerError):
            auth.token()
        assert server.count("/token") == 3  # two quick retries, then the error


def test_token_endpoint_answering_201_is_accepted() -> None:
    with loopback(_issuer({"expires_in": 7200, "token_type": "Bearer", "scope": "app_1"}, 201)) as server:
        token = BankgateAuth(ClientCredentials(f"{server.url}/token", "k", SECRET, ["app_1"]),
                             cache=MemoryCache()).token()
    assert token.lifetime == 7200 and token.scope == "app_1"
    assert server.requests[0][2]["authorization"].startswith("Basic ")


def test_a_401_on_a_fresh_token_is_returned_and_a_second_401_is_not_looped() -> None:
    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path == "/token":
            return 200, {}, json_body({"access_token": f"t{time.monotonic_ns()}", "expires_in": 300})
        return 401, {}, json_body({"error": "invalid_token"})

    with loopback(handle) as server:
        auth = BankgateAuth(ClientCredentials(f"{server.url}/token", "k", SECRET), cache=MemoryCache())
        with httpx.Client(base_url=server.url, auth=auth) as api:
            assert api.get("/api").status_code == 401  # the token was new: no refresh
            assert (server.count("/api"), server.count("/token")) == (1, 1)
            assert api.get("/api").status_code == 401  # cached token refused: one refresh, one retry, no loop
            assert (server.count("/api"), server.count("/token")) == (3, 2)


def test_retries_keep_one_idempotency_key_honour_retry_after_and_stop() -> None:
    seen: list[tuple[str, str | None]] = []

    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        seen.append((path, headers.get("idempotency-key")))
        if path == "/busy" and len(seen) < 3:
            return 429, {"retry-after": "0"}, b"{}"
        if path == "/down":
            return 503, {}, b"{}"
        return 201, {}, b"{}"

    waits: list[float] = []
    policy = RetryPolicy(max_attempts=4, backoff=0.01)
    with loopback(handle) as server, httpx.Client(base_url=server.url, transport=RetryTransport(
            policy=policy, sleep=waits.append)) as api:
        answer = api.post("/busy", json={"amount": "1.00"})
        assert answer.status_code == 201
        keys = {key for _, key in seen}
        assert len(seen) == 3 and len(keys) == 1 and None not in keys
        assert waits[:2] == [0.0, 0.0]

        seen.clear()
        assert api.get("/down").status_code == 503
        assert len(seen) == 4 and seen[0][1] is None  # bounded; GETs carry no key

    with loopback(handle) as server, httpx.Client(base_url=server.url, transport=RetryTransport(
            policy=policy, idempotency_keys=False, sleep=waits.append)) as api:
        seen.clear()
        assert api.post("/down").status_code == 503
        assert len(seen) == 1  # a POST without a key is never repeated


def test_connection_errors_are_retried_within_the_deadline() -> None:
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=3, backoff=0.01, total_timeout=5)
    with httpx.Client(transport=RetryTransport(policy=policy, idempotency_keys=False, sleep=waits.append)) as api, \
            pytest.raises(httpx.ConnectError):
        api.post("http://127.0.0.1:9/", content=b"never sent")  # never sent: retried even without a key
    assert len(waits) == 2  # three attempts
    assert all(0 <= w <= 0.02 for w in waits)


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_async_auth_works_across_event_loops() -> None:
    with loopback(_issuer({"expires_in": "300"})) as server:
        auth = BankgateAuth(ClientCredentials(f"{server.url}/token", "k", SECRET), cache=MemoryCache())

        async def call() -> int:
            async with httpx.AsyncClient(base_url=server.url, auth=auth) as api:
                return (await api.get("/api")).status_code

        assert asyncio.run(call()) == 200
        auth.invalidate()
        assert asyncio.run(call()) == 200
        assert server.count("/token") == 2


def test_cache_keys_differ_for_every_credential_and_scope() -> None:
    base = ClientCredentials("https://a.test/token", "bk_1", SECRET, "app_1")
    others = [
        ClientCredentials("https://b.test/token", "bk_1", SECRET, "app_1"),
        ClientCredentials("https://a.test/token", "bk_2", SECRET, "app_1"),
        ClientCredentials("https://a.test/token", "bk_1", SECRET + "x", "app_1"),
        ClientCredentials("https://a.test/token", "bk_1", SECRET, "app_2"),
        ClientCredentials("https://a.test/token", "bk_1", SECRET, None),
    ]
    keys = {base.cache_key, *(o.cache_key for o in others)}
    assert len(keys) == 6
    assert SECRET not in base.cache_key


def test_scope_given_as_any_sequence_of_names_is_sent_space_separated() -> None:
    """RFC 6749 section 3.3: one space-delimited string, whichever sequence the caller holds the names in."""
    for scope in (["app_1", "app_2"], ("app_1", "app_2"), collections.deque(["app_1", "app_2"]), "app_1 app_2"):
        source = ClientCredentials("https://a.test/token", "bk_1", SECRET, scope)
        assert source.scope == "app_1 app_2"
        assert parse_qs(source.build_request().read().decode())["scope"] == ["app_1 app_2"]
    assert ClientCredentials("https://a.test/token", "bk_1", SECRET).scope is None


def test_repr_never_shows_secret_or_token() -> None:
    source = ClientCredentials("https://a.test/token", "bk_1", SECRET, "app_1")
    token = Token("eyJ.secret-token-value.sig", time.time() + 300, 300, response={"access_token": "eyJ"})
    auth = BankgateAuth(source, cache=MemoryCache())
    for text in (repr(source), repr(token), str(token), repr(auth)):
        assert SECRET not in text and "secret-token-value" not in text
    assert "lifetime=300s" in repr(token)


def _self_signed(directory: Any, name: str) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt.pem", directory / f"{name}.key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_a_pem_pair_is_loaded_from_its_files_without_a_copy_and_a_mismatch_is_a_clear_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from bankgate.client import ClientCertificate
    from bankgate.client._tls import build_ssl_context

    copies: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real_mkstemp(*args, **kwargs)
        copies.append(path)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    cert, key = _self_signed(tmp_path, "robot")
    _, other_key = _self_signed(tmp_path, "other")

    build_ssl_context(False, ClientCertificate.from_pem(cert, key))
    assert copies == []  # the private key was not copied anywhere

    with pytest.raises(ValueError, match="does not match") as refused:
        build_ssl_context(False, ClientCertificate.from_pem(cert, other_key))
    assert "PRIVATE KEY" not in str(refused.value)
