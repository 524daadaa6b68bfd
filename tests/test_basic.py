"""`Authorization: Basic` means one thing on every route (bankgate.web.basic): RFC 7617, both halves percent-decoded
as RFC 6749 §2.3.1 has a client form-urlencode them, `+` kept as it is, and an empty secret a failed
authentication (401, in the route's own format), never a 400."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankgate.app import create_app
from bankgate.config import load_settings
from bankgate.services import Services
from bankgate.web.basic import BasicCredentials, MalformedBasic, NotBasic, parse_basic

PASSWORD = "Quiet+Harbor-72x"  # a "+" that must stay a "+"


def _basic(user_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user_id}:{secret}".encode()).decode()


def _encoded(text: str) -> str:
    """Every character percent-encoded, as a strict RFC 6749 §2.3.1 client may send it."""
    return "".join(f"%{byte:02X}" for byte in text.encode())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (_basic("bk_test_abc", "sk_test_xyz"), ("bk_test_abc", "sk_test_xyz")),
        ("bAsIc " + base64.b64encode(b"key:secret").decode(), ("key", "secret")),
        (_basic(_encoded("bk_test_abc"), _encoded("s:k")), ("bk_test_abc", "s:k")),
        (_basic("user", "a+b c"), ("user", "a+b c")),
        (_basic("user", "50%25 off"), ("user", "50% off")),
        (_basic("user", "100%"), ("user", "100%")),  # not an escape: kept
        (_basic("key", ""), ("key", "")),
        (_basic("key", "with:colons:inside"), ("key", "with:colons:inside")),
        (_basic("caf%C3%A9", "x"), ("café", "x")),
    ],
    ids=["plain", "scheme-any-case", "percent-encoded", "plus-kept", "percent-25", "lone-percent", "empty-secret",
         "colons-in-secret", "utf8-escape"],
)
def test_parse_basic_reads_every_route_s_credentials_by_one_rule(header: str, expected: tuple[str, str]) -> None:
    assert parse_basic(header) == BasicCredentials(*expected)


@pytest.mark.parametrize(
    "header",
    ["Basic", "Basic !!!", "Basic abc", _basic("", "s3cr3t"), "Basic " + base64.b64encode(b"s3cr3t").decode(),
     "Basic " + base64.b64encode(b"\xff:\xfe").decode(), _basic("%FF", "s3cr3t"), _basic("%41", "s3cr3t%FF")],
    ids=["nothing", "not-base64", "bad-padding", "empty-user-id", "no-colon", "not-utf8", "escape-not-utf8",
         "secret-escape-not-utf8"],
)
def test_parse_basic_refuses_malformed_credentials_without_echoing_them(header: str) -> None:
    with pytest.raises(MalformedBasic) as caught:
        parse_basic(header, what="api_key:secret_key")
    assert "api_key:secret_key" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_parse_basic_names_another_scheme_and_hides_the_secret_in_reprs() -> None:
    with pytest.raises(NotBasic) as caught:
        parse_basic("Bearer abc")
    assert caught.value.scheme == "Bearer"
    assert "sk_live_hidden" not in repr(parse_basic(_basic("bk_live_x", "sk_live_hidden")))


@dataclass
class Server:
    http: httpx.AsyncClient
    oauth: tuple[str, str]  # an OAuth2 client's key pair
    basic_client: tuple[str, str]  # a Basic client's key pair
    username: str


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = load_settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'bankgate.db'}")
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        oauth = await services.clients.create("basic test", ["app_1"])
        basic_client = await services.clients.create("basic mode", ["app_1"], auth_mode="basic")
        user = await services.users.create("Basic Testuser")
    finally:
        await services.close()
    app: Any = create_app(settings, issuer="http://bankgate.test")
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bankgate.test") as http:
            reset = await http.post(f"/api/v1/users/{user.user.username}/password",
                                    json={"passphrase": user.initial_passphrase, "new_password": PASSWORD})
            assert reset.status_code == 200, reset.text
            yield Server(http, (oauth.client.api_key, oauth.secret_key),
                         (basic_client.client.api_key, basic_client.secret_key), user.user.username)


async def _token(server: Server) -> str:
    response = await server.http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                      headers={"Authorization": _basic(*server.oauth)})
    assert response.status_code == 201, response.text
    return str(response.json()["access_token"])


async def test_oauth_endpoints_accept_a_percent_encoded_key_pair(server: Server) -> None:
    api_key, secret = server.oauth
    encoded = {"Authorization": _basic(_encoded(api_key), _encoded(secret))}
    token = await server.http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=encoded)
    assert token.status_code == 201, token.text
    access = token.json()["access_token"]
    introspect = await server.http.post("/oauth/introspect", data={"token": access}, headers=encoded)
    assert (introspect.status_code, introspect.json()["active"]) == (200, True)
    revoke = await server.http.post("/oauth/revoke", data={"token": access}, headers=encoded)
    assert revoke.status_code == 200, revoke.text


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
async def test_oauth_endpoints_answer_an_empty_secret_401_invalid_client(server: Server, path: str) -> None:
    data = {"grant_type": "client_credentials"} if path == "/oauth/token" else {"token": "x"}
    response = await server.http.post(path, data=data, headers={"Authorization": _basic(server.oauth[0], "")})
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
async def test_oauth_endpoints_answer_malformed_basic_400_invalid_request(server: Server, path: str) -> None:
    response = await server.http.post(path, data={"token": "x"}, headers={"Authorization": _basic("", "secret")})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


async def test_the_guard_reads_a_basic_client_s_key_pair_by_the_same_rule(server: Server) -> None:
    api_key, secret = server.basic_client
    for header in (_basic(api_key, secret), _basic(_encoded(api_key), _encoded(secret))):
        response = await server.http.get("/api/v1/whoami", headers={"Authorization": header})
        assert response.status_code == 200, response.text
        assert response.json()["auth_method"] == "basic"
    empty = await server.http.get("/api/v1/whoami", headers={"Authorization": _basic(api_key, "")})
    assert empty.status_code == 401, empty.text
    assert empty.json()["error"] == "invalid_client"
    malformed = await server.http.get("/api/v1/whoami", headers={"Authorization": _basic("", "x")})
    assert (malformed.status_code, malformed.json()["error"]) == (400, "invalid_request")
    assert malformed.headers["www-authenticate"].startswith('Basic realm="bankgate", error="invalid_request"')
    assert (await server.http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {await _token(server)}"})
            ).status_code == 200


async def test_user_routes_read_username_and_password_by_the_same_rule(server: Server) -> None:
    path = f"/api/v1/users/{server.username}/certificates"
    for header in (_basic(server.username, PASSWORD), _basic(_encoded(server.username), _encoded(PASSWORD))):
        response = await server.http.get(path, headers={"Authorization": header})
        assert response.status_code == 200, response.text
    # "+" is not a space: the password with a space instead is wrong.
    wrong = await server.http.get(path, headers={"Authorization": _basic(server.username, PASSWORD.replace("+", " "))})
    assert wrong.status_code == 401


@pytest.mark.parametrize("path", ["/api/v1/users/{username}/certificates", "/api/v1/authorizations/authorize"])
async def test_user_routes_answer_an_empty_password_401_and_malformed_basic_400(server: Server, path: str) -> None:
    target = path.format(username=server.username)
    empty = await server.http.get(target, headers={"Authorization": _basic(server.username, "")})
    assert empty.status_code == 401, empty.text
    assert empty.headers["content-type"] == "application/problem+json"
    assert empty.headers["www-authenticate"].startswith("Basic ")
    malformed = await server.http.get(target, headers={"Authorization": _basic("", PASSWORD)})
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["errors"][0]["errorCode"] == "AuthorizationParseFailure"
