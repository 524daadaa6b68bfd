"""GET /api/v1/whoami: a Bearer token from either style is accepted only when every check passes (RFC 6750,
RFC 8705), and every refusal says why in `WWW-Authenticate`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import rsa

from bankgate.config import load_settings
from bankgate.services import Services
from bankgate.tokens.issuer import TokenIssuer
from bankgate.tokens.keys import KeyRing
from conftest import Server, Tls

WHOAMI = "/api/v1/whoami"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _assert_invalid_token(response: Any, words: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert words in response.json()["error_description"]
    assert response.headers["www-authenticate"].startswith('Bearer realm="bankgate", error="invalid_token"')


def test_client_credentials_token_is_accepted_as_bearer(shared: Server) -> None:
    client = shared.create_client("app_1", "app_2")
    token = shared.token(client, scope="app_2").json()["access_token"]
    response = shared.http.get(WHOAMI, headers=_bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "client" and body["subject"] == client["client_id"]
    assert body["scopes"] == ["app_2"] and body["certificate_bound"] is False


def test_missing_credentials_get_bare_challenges_for_bearer_and_basic(shared: Server) -> None:
    response = shared.http.get(WHOAMI)
    assert response.status_code == 401
    # RFC 6750 §3.1: no error code when no credentials were sent; Basic is offered for Basic-mode clients.
    assert response.headers["www-authenticate"] == 'Bearer realm="bankgate", Basic realm="bankgate", charset="UTF-8"'


def test_forged_and_tampered_tokens_are_refused(shared: Server) -> None:
    client = shared.create_client("app_1")
    token = shared.token(client).json()["access_token"]
    header, payload, signature = token.split(".")
    claims = pyjwt.decode(token, options={"verify_signature": False})
    kid = pyjwt.get_unverified_header(token)["kid"]

    unsigned = f"{_b64url({'alg': 'none', 'kid': kid})}.{payload}."
    _assert_invalid_token(shared.http.get(WHOAMI, headers=_bearer(unsigned)), "algorithm")

    jwks = shared.http.get("/.well-known/jwks.json").json()
    public_material = json.dumps(jwks["keys"][0]).encode()
    # The classic confusion: HS256 "signed" with the public key as the HMAC secret (built by hand: PyJWT refuses).
    signing_input = f"{_b64url({'alg': 'HS256', 'kid': kid, 'typ': 'JWT'})}.{payload}"
    mac = hmac.new(public_material, signing_input.encode(), hashlib.sha256).digest()
    hs256 = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    _assert_invalid_token(shared.http.get(WHOAMI, headers=_bearer(hs256)), "algorithm")

    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    resigned = pyjwt.encode(claims, foreign, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})
    _assert_invalid_token(shared.http.get(WHOAMI, headers=_bearer(resigned)), "signature")

    unknown_kid = pyjwt.encode(claims, foreign, algorithm="RS256", headers={"kid": "not-ours", "typ": "at+jwt"})
    _assert_invalid_token(shared.http.get(WHOAMI, headers=_bearer(unknown_kid)), "not signed by a key")

    widened = f"{header}.{_b64url({**claims, 'scope': 'app_1 app_admin'})}.{signature}"
    _assert_invalid_token(shared.http.get(WHOAMI, headers=_bearer(widened)), "signature")

    _assert_invalid_token(shared.http.get(WHOAMI, headers=_bearer("garbage")), "not a JWT")


def test_revoked_token_is_refused(shared: Server) -> None:
    client = shared.create_client("app_1")
    token = shared.token(client).json()["access_token"]
    assert shared.http.get(WHOAMI, headers=_bearer(token)).status_code == 200
    credentials = f"{client['api_key']}:{client['secret_key']}".encode()
    auth = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    assert shared.http.post("/oauth/revoke", data={"token": token}, headers=auth).status_code == 200
    _assert_invalid_token(shared.http.get(WHOAMI, headers=_bearer(token)), "revoked")


async def _expired_token(server: Server, issuer: str) -> str:
    """A token signed with the server's own active key, its `exp` a minute past (beyond the 30 s leeway)."""
    settings = load_settings(data_dir=server.data_dir)
    services = await Services.open(settings)
    try:
        keys = KeyRing(await services.keys.load())
    finally:
        await services.close()
    tokens = TokenIssuer(keys, issuer=issuer, audience=settings.audience, environment=settings.environment)
    return tokens.issue(client_id="expired-client", scope=("app_1",), ttl=-60).access_token


async def test_expired_token_wrong_audience_issuer_and_environment_are_refused(server_factory: Any) -> None:
    issuer = {"BANKGATE_ISSUER": "https://bankgate.test"}
    server = server_factory(issuer)
    client = server.create_client("app_1")
    token = server.token(client).json()["access_token"]
    other_audience = server_factory({**issuer, "BANKGATE_AUDIENCE": "another-api"}, data_dir=server.data_dir)
    _assert_invalid_token(other_audience.http.get(WHOAMI, headers=_bearer(token)), "another audience")
    other_issuer = server_factory({"BANKGATE_ISSUER": "https://elsewhere.test"}, data_dir=server.data_dir)
    _assert_invalid_token(other_issuer.http.get(WHOAMI, headers=_bearer(token)), "another issuer")
    production = server_factory({**issuer, "BANKGATE_ENVIRONMENT": "production"}, data_dir=server.data_dir)
    _assert_invalid_token(production.http.get(WHOAMI, headers=_bearer(token)), "production environment")
    assert server.http.get(WHOAMI, headers=_bearer(token)).status_code == 200
    expired = await _expired_token(server, "https://bankgate.test")
    _assert_invalid_token(server.http.get(WHOAMI, headers=_bearer(expired)), "expired")


def test_certificate_bound_token_needs_its_own_certificate(tls: Tls) -> None:
    alice, bob = tls.new_user("Bound Alice"), tls.new_user("Bound Bob")
    token = tls.authorize(alice).json()["access_token"]
    with tls.client(alice["cert"]) as http:
        response = http.get(WHOAMI, headers=_bearer(token))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["kind"] == "user" and body["name"] == "Bound Alice"
        assert body["thumbprint"] == alice["certificate"]["thumbprint"] and body["certificate_bound"] is True
    with tls.client() as http:
        _assert_invalid_token(http.get(WHOAMI, headers=_bearer(token)), "bound to a client certificate")
    with tls.client(bob["cert"]) as http:
        _assert_invalid_token(http.get(WHOAMI, headers=_bearer(token)), "bound to another client certificate")
