"""`GuardWSGIMiddleware`: the guard in front of a WSGI app gives the same verdicts and RFC 6750 answers as
`GuardMiddleware` (it asks it), and hands the principal to the app in `environ["bankgate.principal"]`."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bankgate.guard import Guard, Principal, TokenVerifier, VerificationKey
from bankgate.guard.wsgi import PRINCIPAL_KEY, GuardWSGIMiddleware, asgi_scope

ISSUER = "https://auth.example.com"
KEY = ec.generate_private_key(ec.SECP256R1())


class Keys:
    async def get(self, kid: str) -> VerificationKey | None:
        return VerificationKey("k1", "ES256", KEY.public_key()) if kid == "k1" else None


def token(**overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "bankgate-api", "sub": "client-1", "jti": str(uuid.uuid4()), "iat": now,
              "exp": now + 300, "environment": "sandbox", "scope": "app_1", **overrides}
    return jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "k1", "typ": "at+jwt"})


def guard() -> Guard:
    return Guard(TokenVerifier(Keys(), issuer=ISSUER, audience="bankgate-api", environment="sandbox",
                               is_revoked=None))


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    principal = environ.get(PRINCIPAL_KEY)
    body = json.dumps({"subject": principal.subject if isinstance(principal, Principal) else None}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def call(middleware: GuardWSGIMiddleware, path: str = "/", **headers: str) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "192.0.2.1",
                               "REMOTE_PORT": "5000", **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}
    answer: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        answer["status"], answer["headers"] = status, {k.lower(): v for k, v in response_headers}

    body = b"".join(middleware(environ, start_response))
    return answer["status"], answer["headers"], body


def test_a_valid_token_reaches_the_app_with_its_principal() -> None:
    status, _, body = call(GuardWSGIMiddleware(app, guard=guard()), authorization=f"Bearer {token()}")
    assert status == "200 OK" and json.loads(body) == {"subject": "client-1"}


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [(None, "401 Unauthorized", None), ("Bearer not-a-jwt", "401 Unauthorized", "invalid_token"),
     ("Bearer a b", "400 Bad Request", "invalid_request")],
)
def test_a_refusal_is_the_rfc_6750_answer(authorization: str | None, status: str, error: str | None) -> None:
    headers = {"authorization": authorization} if authorization else {}
    got, response_headers, body = call(GuardWSGIMiddleware(app, guard=guard()), **headers)
    assert got == status
    assert response_headers["www-authenticate"].startswith('Bearer realm="bankgate"')
    assert response_headers["content-length"] == str(len(body))
    assert (f'error="{error}"' in response_headers["www-authenticate"]) is (error is not None)
    assert json.loads(body)["error"] == (error or "invalid_request")


def test_an_expired_token_is_refused_and_excluded_and_optional_paths_pass() -> None:
    expired = token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    status, _, body = call(GuardWSGIMiddleware(app, guard=guard()), authorization=f"Bearer {expired}")
    assert status == "401 Unauthorized" and "expired" in json.loads(body)["error_description"]

    excluded = GuardWSGIMiddleware(app, guard=guard(), exclude=["/healthz"])
    assert call(excluded, "/healthz")[0] == "200 OK"
    assert call(excluded, "/healthz/../admin")[0] == "401 Unauthorized"

    optional = GuardWSGIMiddleware(app, guard=guard(), optional=True)
    status, _, body = call(optional)
    assert status == "200 OK" and json.loads(body) == {"subject": None}
    assert call(optional, authorization="Bearer not-a-jwt")[0] == "401 Unauthorized"


def test_the_environ_becomes_the_scope_the_guard_reads() -> None:
    scope = asgi_scope({"REQUEST_METHOD": "POST", "PATH_INFO": "/pay", "REMOTE_ADDR": "10.0.0.1",
                        "REMOTE_PORT": "x", "HTTP_X_FORWARDED_FOR": "203.0.113.9", "CONTENT_TYPE": "text/plain"})
    assert scope["client"] == ("10.0.0.1", 0) and scope["path"] == "/pay"
    assert dict(scope["headers"]) == {b"x-forwarded-for": b"203.0.113.9", b"content-type": b"text/plain"}
