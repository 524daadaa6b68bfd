"""POST /oauth/token: the client credentials grant as the Banked integration guide describes it.

Every test talks to a real `bankgate serve` process over HTTP; tokens are checked with joserfc, a JWT library
independent of the one the server signs with.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidClaimError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from conftest import Server, basic, cli_json, run_cli, start_server

TOKEN_FIELDS = {"access_token", "token_type", "expires_in", "scope", "created_at"}
CLAIMS = {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "environment"}
AUDIT_FIELDS = {"event", "at", "actor", "source_ip", "outcome"}


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A sandbox server with a 600 s token lifetime and its own audience."""
    directory = tmp_path_factory.mktemp("token-endpoint-configured")
    env = {"BANKGATE_TOKEN_TTL": "600", "BANKGATE_AUDIENCE": "payments-api"}
    server = start_server(directory / "data", directory / "server.log", env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(shared: Server) -> dict[str, Any]:
    """A client allowed app_1 and app_2, shared by the tests that neither revoke nor rotate it."""
    return shared.create_client("app_1", "app_2")


def post_token(server: Server, authorization: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if authorization is not None:
        headers["Authorization"] = authorization
    return server.http.post("/oauth/token", headers=headers, **kwargs)


def auth_of(client: dict[str, Any], secret: str | None = None) -> str:
    return basic(client["api_key"], client["secret_key"] if secret is None else secret)


def issuer_of(server: Server) -> str:
    return server.http.get("/.well-known/oauth-authorization-server").json()["issuer"]


def jwks_of(server: Server) -> dict[str, Any]:
    response = server.http.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    return response.json()


def verify(
    server: Server, access_token: str, *, alg: str = "RS256", audience: str = "bankgate-api"
) -> jwt.Token:
    """Verify signature and registered claims against the server's published JWKS, with joserfc."""
    keys = KeySet.import_key_set(jwks_of(server))
    token = jwt.decode(access_token, keys, algorithms=[alg])
    JWTClaimsRegistry(
        iss={"essential": True, "value": issuer_of(server)},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nbf={"essential": True},
        jti={"essential": True},
    ).validate(token.claims)
    return token


def unverified_header(access_token: str) -> dict[str, Any]:
    segment = access_token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def shown(response: httpx.Response) -> str:
    """A response for an assertion message, with any access token left out."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:300]}"
    if isinstance(body, dict) and "access_token" in body:
        body = {**body, "access_token": "<not shown>"}
    return f"{response.status_code} {body}"


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> str:
    """The RFC 6749 §5.2 error shape; returns the error description."""
    assert response.status_code == status, shown(response)
    assert response.headers["content-type"].startswith("application/json")
    assert "no-store" in response.headers.get("cache-control", "")
    body = response.json()
    assert body["error"] == error, body
    description = body.get("error_description")
    assert isinstance(description, str) and len(description) > 10, body
    if status == 401:
        assert response.headers.get("www-authenticate", "").lower().startswith("basic"), response.headers
    return description


# -- the successful response -----------------------------------------------------------------------


def test_token_endpoint_issues_201_bearer_token_in_the_documented_shape(
    shared: Server, client: dict[str, Any]
) -> None:
    response = shared.token(client, scope="app_1")

    assert response.status_code == 201, response.text
    assert response.headers["content-type"].split(";")[0].strip() == "application/json"
    assert "no-store" in response.headers["cache-control"]
    body = response.json()
    assert set(body) == TOKEN_FIELDS
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 7200 and type(body["expires_in"]) is int
    assert body["scope"] == "app_1"
    assert type(body["created_at"]) is int
    assert abs(body["created_at"] - time.time()) < 30
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2


def test_token_endpoint_grants_a_space_separated_list_of_application_ids(
    shared: Server, client: dict[str, Any]
) -> None:
    response = shared.token(client, scope="app_2 app_1")

    assert response.status_code == 201, response.text
    assert sorted(response.json()["scope"].split(" ")) == ["app_1", "app_2"]
    claims = verify(shared, response.json()["access_token"]).claims
    assert sorted(claims["scope"].split(" ")) == ["app_1", "app_2"]


def test_token_endpoint_without_scope_grants_every_application_of_the_client(shared: Server) -> None:
    client = shared.create_client("app_1", "app_2", "app_3")
    response = shared.token(client)

    assert response.status_code == 201, response.text
    assert sorted(response.json()["scope"].split(" ")) == ["app_1", "app_2", "app_3"]


def test_token_endpoint_accepts_parameters_as_a_form_body(shared: Server, client: dict[str, Any]) -> None:
    response = post_token(
        shared, auth_of(client), data={"grant_type": "client_credentials", "scope": "app_2"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["scope"] == "app_2"


def test_token_endpoint_accepts_parameters_as_a_json_body(shared: Server, client: dict[str, Any]) -> None:
    response = post_token(
        shared, auth_of(client), json={"grant_type": "client_credentials", "scope": "app_2"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["scope"] == "app_2"


def test_token_endpoint_accepts_parameters_in_the_query_string(
    shared: Server, client: dict[str, Any]
) -> None:
    response = post_token(
        shared, auth_of(client), params={"grant_type": "client_credentials", "scope": "app_2"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["scope"] == "app_2"


def test_token_lifetime_is_configurable(configured: Server) -> None:
    client = configured.create_client("app_1")
    response = configured.token(client)

    assert response.status_code == 201, response.text
    assert response.json()["expires_in"] == 600
    claims = verify(configured, response.json()["access_token"], audience="payments-api").claims
    assert claims["exp"] - claims["iat"] == 600


def test_token_audience_is_configurable(configured: Server) -> None:
    client = configured.create_client("app_1")
    access_token = configured.token(client).json()["access_token"]

    assert verify(configured, access_token, audience="payments-api").claims["aud"] == "payments-api"
    with pytest.raises(InvalidClaimError):
        verify(configured, access_token, audience="bankgate-api")


# -- client authentication failures ----------------------------------------------------------------


def test_token_endpoint_without_authorization_is_401_invalid_client(shared: Server) -> None:
    response = post_token(shared, data={"grant_type": "client_credentials"})
    description = assert_oauth_error(response, 401, "invalid_client")
    assert "Basic" in description


def test_token_endpoint_rejects_a_wrong_secret(shared: Server, client: dict[str, Any]) -> None:
    response = shared.token({**client, "secret_key": client["secret_key"][:-4] + "XXXX"})
    assert_oauth_error(response, 401, "invalid_client")


def test_token_endpoint_answers_an_unknown_key_exactly_like_a_wrong_secret(
    shared: Server, client: dict[str, Any]
) -> None:
    wrong_secret = shared.token({**client, "secret_key": "sk_test_" + "x" * 43})
    unknown_key = shared.token({**client, "api_key": "bk_test_" + "Z" * 24})

    assert assert_oauth_error(unknown_key, 401, "invalid_client") == assert_oauth_error(
        wrong_secret, 401, "invalid_client"
    )


def test_token_endpoint_refuses_a_revoked_client(shared: Server) -> None:
    client = shared.create_client("app_1")
    assert shared.token(client).status_code == 201
    shared.cli("clients", "revoke", client["api_key"])

    description = assert_oauth_error(shared.token(client), 401, "invalid_client")
    assert "revoked" in description


def test_token_endpoint_refuses_a_client_onboarded_for_basic_authentication(shared: Server) -> None:
    client = shared.create_client("app_1", auth_mode="basic")
    description = assert_oauth_error(shared.token(client), 400, "unauthorized_client")
    assert "Basic" in description


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(b"Basic !!!not*base64!!!", id="not-base64"),
        pytest.param(b"Basic " + base64.b64encode(b"bk_test_no_colon_here"), id="no-colon"),
        pytest.param(b"Basic " + base64.b64encode(b"\xff\xfe\xfd:\x80\x81"), id="not-utf8"),
        pytest.param(b"Basic", id="empty"),
    ],
)
def test_token_endpoint_answers_malformed_basic_credentials_with_a_4xx(
    shared: Server, authorization: bytes
) -> None:
    response = post_token(
        shared,
        headers={"Authorization": authorization},
        data={"grant_type": "client_credentials"},
    )
    assert 400 <= response.status_code < 500, shown(response)
    assert response.json()["error"] in ("invalid_request", "invalid_client")
    assert response.json()["error_description"]
    if response.status_code == 401:
        assert response.headers["www-authenticate"].lower().startswith("basic")


def test_token_endpoint_refuses_the_bearer_scheme(shared: Server, client: dict[str, Any]) -> None:
    access_token = shared.token(client).json()["access_token"]
    response = post_token(shared, f"Bearer {access_token}", data={"grant_type": "client_credentials"})
    assert_oauth_error(response, 401, "invalid_client")


# -- request failures ------------------------------------------------------------------------------


def test_token_endpoint_requires_grant_type(shared: Server, client: dict[str, Any]) -> None:
    response = post_token(shared, auth_of(client), data={"scope": "app_1"})
    description = assert_oauth_error(response, 400, "invalid_request")
    assert "grant_type" in description


def test_token_endpoint_refuses_the_password_grant(shared: Server, client: dict[str, Any]) -> None:
    response = post_token(
        shared, auth_of(client), data={"grant_type": "password", "username": "u", "password": "p"}
    )
    description = assert_oauth_error(response, 400, "unsupported_grant_type")
    assert "client_credentials" in description


def test_token_endpoint_rejects_scope_outside_allowed_list(shared: Server, client: dict[str, Any]) -> None:
    response = shared.token(client, scope="app_1 app_999")
    description = assert_oauth_error(response, 400, "invalid_scope")
    assert "app_999" in description
    assert "app_1" in description and "app_2" in description


def test_token_endpoint_rejects_an_unsupported_content_type(shared: Server, client: dict[str, Any]) -> None:
    response = post_token(
        shared,
        auth_of(client),
        content=b"grant_type=client_credentials",
        headers={"Content-Type": "text/plain"},
    )
    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"grant_type": "client_credentials",', id="truncated"),
        pytest.param(b'{"grant_type": "client_credentials", "scope": "\xff"}', id="not-utf8"),
        pytest.param(b'["grant_type", "client_credentials"]', id="not-an-object"),
        pytest.param(b'{"grant_type": "client_credentials", "scope": 1}', id="number-value"),
        pytest.param(b"[" * 10_000, id="deeply-nested"),
    ],
)
def test_token_endpoint_rejects_an_invalid_json_body(
    shared: Server, client: dict[str, Any], body: bytes
) -> None:
    response = post_token(shared, auth_of(client), content=body, headers={"Content-Type": "application/json"})
    assert_oauth_error(response, 400, "invalid_request")


def test_token_endpoint_rejects_a_parameter_repeated_with_different_values(
    shared: Server, client: dict[str, Any]
) -> None:
    in_body = post_token(
        shared,
        auth_of(client),
        content=b"grant_type=client_credentials&scope=app_1&scope=app_2",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "scope" in assert_oauth_error(in_body, 400, "invalid_request")

    query_and_body = post_token(
        shared,
        auth_of(client),
        params={"scope": "app_1"},
        data={"grant_type": "client_credentials", "scope": "app_2"},
    )
    assert "scope" in assert_oauth_error(query_and_body, 400, "invalid_request")


def test_token_endpoint_rejects_a_json_body_repeating_a_parameter_with_different_values(
    shared: Server, client: dict[str, Any]
) -> None:
    response = post_token(
        shared,
        auth_of(client),
        content=b'{"grant_type": "client_credentials", "scope": "app_1", "scope": "app_2"}',
        headers={"Content-Type": "application/json"},
    )
    assert "scope" in assert_oauth_error(response, 400, "invalid_request")


def test_token_endpoint_refuses_client_secret_in_the_query_string(
    shared: Server, client: dict[str, Any]
) -> None:
    response = post_token(
        shared,
        params={"client_id": client["api_key"], "client_secret": client["secret_key"]},
        data={"grant_type": "client_credentials"},
    )
    assert_oauth_error(response, 400, "invalid_request")


def test_token_endpoint_refuses_a_body_over_16_kib(shared: Server, client: dict[str, Any]) -> None:
    padding = "x" * (16 * 1024 + 1)
    response = post_token(shared, auth_of(client), data={"grant_type": "client_credentials", "pad": padding})
    assert 400 <= response.status_code < 500, shown(response)
    assert response.json()["error"] == "invalid_request"


def test_token_endpoint_refuses_a_chunked_body_over_16_kib(shared: Server, client: dict[str, Any]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"grant_type=client_credentials&pad="
        for _ in range(20):
            yield b"x" * 1024

    response = post_token(
        shared,
        auth_of(client),
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert 400 <= response.status_code < 500, shown(response)
    assert response.json()["error"] == "invalid_request"


def test_get_on_the_token_endpoint_is_405_json(shared: Server, client: dict[str, Any]) -> None:
    response = shared.http.get(
        "/oauth/token",
        params={"grant_type": "client_credentials"},
        headers={"Authorization": auth_of(client)},
    )
    assert response.status_code == 405, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "POST" in response.headers.get("allow", "")
    assert response.json()["error"]


# -- client_secret_post ----------------------------------------------------------------------------


def test_token_endpoint_accepts_client_secret_post(shared: Server, client: dict[str, Any]) -> None:
    response = post_token(
        shared,
        data={
            "grant_type": "client_credentials",
            "client_id": client["api_key"],
            "client_secret": client["secret_key"],
            "scope": "app_1",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["scope"] == "app_1"


def test_token_endpoint_refuses_basic_and_client_secret_together(
    shared: Server, client: dict[str, Any]
) -> None:
    response = post_token(
        shared,
        auth_of(client),
        data={
            "grant_type": "client_credentials",
            "client_id": client["api_key"],
            "client_secret": client["secret_key"],
        },
    )
    assert_oauth_error(response, 400, "invalid_request")


# -- secret rotation -------------------------------------------------------------------------------


def test_rotated_secret_and_previous_secret_both_work_during_the_overlap(shared: Server) -> None:
    client = shared.create_client("app_1")
    rotated = shared.cli_json("clients", "rotate-secret", client["api_key"], "--overlap", "1h")

    assert rotated["api_key"] == client["api_key"]
    assert rotated["secret_key"] != client["secret_key"]
    assert shared.token(client).status_code == 201
    assert shared.token(rotated).status_code == 201


def test_rotation_without_overlap_ends_the_previous_secrets_at_once(shared: Server) -> None:
    client = shared.create_client("app_1")
    overlapping = shared.cli_json("clients", "rotate-secret", client["api_key"], "--overlap", "1h")
    final = shared.cli_json("clients", "rotate-secret", client["api_key"], "--overlap", "0")

    assert_oauth_error(shared.token(client), 401, "invalid_client")
    assert_oauth_error(shared.token(overlapping), 401, "invalid_client")
    assert shared.token(final).status_code == 201


# -- the access token, verified independently ------------------------------------------------------


def test_access_token_verifies_against_the_published_jwks(shared: Server, client: dict[str, Any]) -> None:
    response = shared.token(client, scope="app_1")
    token = verify(shared, response.json()["access_token"])

    assert token.header["alg"] == "RS256"
    assert token.header["typ"] == "at+jwt"
    assert token.header["kid"] in {key["kid"] for key in jwks_of(shared)["keys"]}
    claims = token.claims
    assert set(claims) >= CLAIMS
    assert claims["iss"] == issuer_of(shared)
    assert claims["aud"] == "bankgate-api"
    assert claims["client_id"] == client["client_id"]
    assert claims["sub"] == client["client_id"]
    assert claims["scope"] == "app_1"
    assert claims["environment"] == "sandbox"
    assert claims["exp"] - claims["iat"] == 7200
    assert claims["nbf"] <= claims["iat"] + 1
    assert claims["iat"] == response.json()["created_at"]


def test_every_access_token_has_its_own_jti(shared: Server, client: dict[str, Any]) -> None:
    tokens = [shared.token(client).json()["access_token"] for _ in range(5)]
    jtis = {verify(shared, token).claims["jti"] for token in tokens}
    assert len(jtis) == 5


def test_a_tampered_access_token_does_not_verify(shared: Server, client: dict[str, Any]) -> None:
    header, payload, signature = shared.token(client, scope="app_1").json()["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "app_1 app_2"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(BadSignatureError):
        verify(shared, f"{header}.{forged_payload}.{signature}")


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_access_token_is_signed_with_the_configured_algorithm(server_factory: Any, alg: str) -> None:
    server: Server = server_factory({"BANKGATE_SIGNING_ALG": alg})
    client = server.create_client("app_1")
    response = server.token(client)
    assert response.status_code == 201, response.text

    token = verify(server, response.json()["access_token"], alg=alg)
    assert token.header["alg"] == alg
    assert token.header["typ"] == "at+jwt"
    published = {key["kid"]: key for key in jwks_of(server)["keys"]}
    assert published[token.header["kid"]]["alg"] == alg
    assert set(token.claims) >= CLAIMS
    assert token.claims["environment"] == "sandbox"


# -- signing key rotation --------------------------------------------------------------------------


def test_signing_key_rotation_while_serving_keeps_earlier_tokens_verifiable(server: Server) -> None:
    client = server.create_client("app_1")
    before = server.token(client).json()["access_token"]
    old_kid = unverified_header(before)["kid"]

    rotated = server.cli_json("keys", "rotate")
    new_kid = rotated["kid"]
    assert new_kid != old_kid

    # The server reloads its keys every 0.5 s in tests.
    deadline = time.monotonic() + 5
    after = server.token(client).json()["access_token"]
    while unverified_header(after)["kid"] != new_kid and time.monotonic() < deadline:
        time.sleep(0.25)
        after = server.token(client).json()["access_token"]

    assert unverified_header(after)["kid"] == new_kid
    published = {key["kid"] for key in jwks_of(server)["keys"]}
    assert {old_kid, new_kid} <= published
    assert verify(server, after).header["kid"] == new_kid
    assert verify(server, before).header["kid"] == old_kid


# -- the audit trail -------------------------------------------------------------------------------


def test_token_issuance_and_denial_are_audited_without_secrets(shared: Server) -> None:
    client = shared.create_client("app_1")
    issued = shared.token(client)
    assert issued.status_code == 201
    access_token = issued.json()["access_token"]
    wrong_secret = "sk_test_" + "W" * 43
    assert shared.token({**client, "secret_key": wrong_secret}).status_code == 401
    # A secret pasted where the key belongs must not land in the trail as the actor either.
    assert shared.token({**client, "api_key": client["secret_key"]}).status_code == 401

    events = shared.audit(limit=1000)
    mine = [event for event in events if event["actor"] == client["api_key"]]
    kinds = [event["event"] for event in mine]
    assert "token.issued" in kinds and "token.denied" in kinds
    for event in mine:
        if event["event"] in ("token.issued", "token.denied"):
            assert set(event) >= AUDIT_FIELDS, event
            assert event["source_ip"] == "127.0.0.1"
            assert event["outcome"] == ("success" if event["event"] == "token.issued" else "failure")
            assert event["at"]

    trail = json.dumps(events)
    log = shared.log()
    confidential = {
        "secret": client["secret_key"],
        "wrong secret": wrong_secret,
        "access token": access_token,
    }
    assert not [name for name, value in confidential.items() if value in trail], "leaked into the audit trail"
    assert not [name for name, value in confidential.items() if value in log], "leaked into the server log"


# -- environments ----------------------------------------------------------------------------------


def test_production_server_issues_live_keys_and_production_tokens(
    server_factory: Any, shared: Server
) -> None:
    production: Server = server_factory({"BANKGATE_ENVIRONMENT": "production"})
    client = production.create_client("app_1")
    assert client["api_key"].startswith("bk_live_")
    assert client["secret_key"].startswith("sk_live_")

    refused = production.token(client)
    assert refused.status_code == 403, refused.text  # production fails closed: no allow-list entry yet
    assert refused.json()["error"] == "access_denied"
    assert "allow-list" in refused.json()["error_description"]
    production.cli("ips", "allow", client["api_key"], "127.0.0.1/32")
    response = production.token(client)
    assert response.status_code == 201, response.text
    assert verify(production, response.json()["access_token"]).claims["environment"] == "production"

    sandbox_client = shared.create_client("app_1")
    assert sandbox_client["api_key"].startswith("bk_test_")
    assert_oauth_error(production.token(sandbox_client), 401, "invalid_client")


def test_sandbox_client_is_refused_when_its_database_is_served_as_production(
    server_factory: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared-data"
    sandbox = {"BANKGATE_ENVIRONMENT": "sandbox"}
    run_cli("init", "--data-dir", str(data_dir), env=sandbox)
    client = cli_json(
        "clients",
        "create",
        "--name",
        "sandbox shop",
        "--scope",
        "app_1",
        "--data-dir",
        str(data_dir),
        env=sandbox,
    )
    assert client["api_key"].startswith("bk_test_")

    production: Server = server_factory({"BANKGATE_ENVIRONMENT": "production"}, data_dir=data_dir)
    assert production.http.get("/healthz").json()["environment"] == "production"
    assert_oauth_error(production.token(client), 401, "invalid_client")
