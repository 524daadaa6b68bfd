"""Token introspection (RFC 7662) and revocation (RFC 7009), over HTTP against a real server."""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

import httpx
import pytest
from joserfc import jws, jwt
from joserfc.jwk import KeySet, RSAKey

from conftest import Server, basic

CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "environment")


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def owner(shared: Server) -> dict[str, Any]:
    return shared.create_client("app_1", "app_2", name="token owner")


@pytest.fixture(scope="module")
def stranger(shared: Server) -> dict[str, Any]:
    return shared.create_client("app_9", name="another client")


def issue(server: Server, client: dict[str, Any]) -> str:
    response = server.token(client)
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def introspect(server: Server, client: dict[str, Any] | None, **data: str) -> httpx.Response:
    headers = {"Authorization": basic(client["api_key"], client["secret_key"])} if client else {}
    return server.http.post("/oauth/introspect", data=data, headers=headers)


def revoke(server: Server, client: dict[str, Any] | None, **data: str) -> httpx.Response:
    headers = {"Authorization": basic(client["api_key"], client["secret_key"])} if client else {}
    return server.http.post("/oauth/revoke", data=data, headers=headers)


def claims_of(server: Server, access_token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(server.http.get("/.well-known/jwks.json").json())
    return dict(jwt.decode(access_token, keys, algorithms=["RS256"]).claims)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(access_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = access_token.split(".")
    decode = lambda part: json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # noqa: E731
    return decode(header), decode(payload)


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error, body
    assert body.get("error_description"), body
    if status == 401:
        assert response.headers.get("www-authenticate", "").lower().startswith("basic"), response.headers


# -- introspection ---------------------------------------------------------------------------------


def test_introspection_reports_an_own_valid_token_as_active_with_its_claims(
    shared: Server, owner: dict[str, Any]
) -> None:
    access_token = issue(shared, owner)
    response = introspect(shared, owner, token=access_token)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["active"] is True
    claims = claims_of(shared, access_token)
    for name in CLAIMS:
        assert body[name] == claims[name], name
    assert body["client_id"] == owner["client_id"]
    assert body["scope"] == "app_1 app_2"


def test_introspection_accepts_client_secret_post(shared: Server, owner: dict[str, Any]) -> None:
    access_token = issue(shared, owner)
    response = shared.http.post(
        "/oauth/introspect",
        data={"token": access_token, "client_id": owner["api_key"], "client_secret": owner["secret_key"]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["active"] is True


def test_introspection_reports_garbage_as_inactive(shared: Server, owner: dict[str, Any]) -> None:
    for garbage in ("garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.AAAA", "x" * 9000):
        response = introspect(shared, owner, token=garbage)
        assert response.status_code == 200, response.text
        assert response.json() == {"active": False}


def test_introspection_reports_an_unsigned_token_as_inactive(shared: Server, owner: dict[str, Any]) -> None:
    header, claims = segments(issue(shared, owner))
    unsigned = (
        f"{b64url(json.dumps({**header, 'alg': 'none'}).encode())}.{b64url(json.dumps(claims).encode())}."
    )

    response = introspect(shared, owner, token=unsigned)
    assert response.status_code == 200, response.text
    assert response.json() == {"active": False}


def test_introspection_reports_a_token_signed_with_a_foreign_key_as_inactive(
    shared: Server, owner: dict[str, Any]
) -> None:
    header, claims = segments(issue(shared, owner))
    foreign = RSAKey.generate_key(2048)
    forged = jws.serialize_compact(
        {"alg": "RS256", "kid": header["kid"], "typ": "at+jwt"}, json.dumps(claims), foreign
    )

    response = introspect(shared, owner, token=forged)
    assert response.status_code == 200, response.text
    assert response.json() == {"active": False}


def test_introspection_reports_another_clients_token_as_inactive(
    shared: Server, owner: dict[str, Any], stranger: dict[str, Any]
) -> None:
    strangers_token = issue(shared, stranger)

    response = introspect(shared, owner, token=strangers_token)
    assert response.status_code == 200, response.text
    assert response.json() == {"active": False}
    assert introspect(shared, stranger, token=strangers_token).json()["active"] is True


def test_introspection_without_client_authentication_is_401(shared: Server, owner: dict[str, Any]) -> None:
    response = introspect(shared, None, token=issue(shared, owner))
    assert_oauth_error(response, 401, "invalid_client")


def test_introspection_with_a_wrong_secret_is_401(shared: Server, owner: dict[str, Any]) -> None:
    wrong = {**owner, "secret_key": "sk_test_" + "Q" * 43}
    response = introspect(shared, wrong, token=issue(shared, owner))
    assert_oauth_error(response, 401, "invalid_client")


def test_introspection_without_a_token_is_400(shared: Server, owner: dict[str, Any]) -> None:
    assert_oauth_error(introspect(shared, owner), 400, "invalid_request")


# -- revocation ------------------------------------------------------------------------------------


def test_revocation_is_200_and_the_token_becomes_inactive(shared: Server, owner: dict[str, Any]) -> None:
    access_token = issue(shared, owner)
    assert introspect(shared, owner, token=access_token).json()["active"] is True

    response = revoke(shared, owner, token=access_token)

    assert response.status_code == 200, response.text
    assert introspect(shared, owner, token=access_token).json() == {"active": False}


def test_revocation_is_audited_without_the_token(shared: Server) -> None:
    client = shared.create_client("app_1", name="audited revoker")
    access_token = issue(shared, client)
    jti = claims_of(shared, access_token)["jti"]
    assert revoke(shared, client, token=access_token).status_code == 200

    events = shared.audit(limit=1000)
    revoked = [e for e in events if e["event"] == "token.revoked" and e["actor"] == client["api_key"]]
    assert len(revoked) == 1, events
    event = revoked[0]
    assert {"event", "at", "actor", "source_ip", "outcome"} <= set(event)
    assert event["source_ip"] == "127.0.0.1"
    assert event["outcome"] == "success"
    assert jti in json.dumps(event)
    trail = json.dumps(events)
    confidential = {"secret": client["secret_key"], "access token": access_token}
    assert not [name for name, value in confidential.items() if value in trail], "leaked into the audit trail"
    assert not [name for name, value in confidential.items() if value in shared.log()], "leaked into the log"


def test_revoking_a_token_twice_is_200_both_times(shared: Server, owner: dict[str, Any]) -> None:
    access_token = issue(shared, owner)
    assert revoke(shared, owner, token=access_token).status_code == 200
    assert revoke(shared, owner, token=access_token).status_code == 200
    assert introspect(shared, owner, token=access_token).json() == {"active": False}


def test_revoking_garbage_is_200(shared: Server, owner: dict[str, Any]) -> None:
    response = revoke(shared, owner, token="definitely-not-a-token")
    assert response.status_code == 200, response.text


def test_revoking_another_clients_token_is_refused_and_the_token_stays_active(
    shared: Server, owner: dict[str, Any], stranger: dict[str, Any]
) -> None:
    owners_token = issue(shared, owner)

    response = revoke(shared, stranger, token=owners_token)

    assert_oauth_error(response, 400, "unauthorized_client")
    assert introspect(shared, owner, token=owners_token).json()["active"] is True


def test_revocation_without_client_authentication_is_401(shared: Server, owner: dict[str, Any]) -> None:
    access_token = issue(shared, owner)
    assert_oauth_error(revoke(shared, None, token=access_token), 401, "invalid_client")
    assert introspect(shared, owner, token=access_token).json()["active"] is True


def test_revocation_without_a_token_is_400(shared: Server, owner: dict[str, Any]) -> None:
    assert_oauth_error(revoke(shared, owner), 400, "invalid_request")


def test_the_deny_list_holds_only_the_jti_of_revoked_tokens(server: Server) -> None:
    client = server.create_client("app_1")
    first, second, kept = (issue(server, client) for _ in range(3))
    for access_token in (first, second, second):
        assert revoke(server, client, token=access_token).status_code == 200
    jtis = {name: claims_of(server, token)["jti"] for name, token in (("first", first), ("second", second))}
    kept_jti = claims_of(server, kept)["jti"]

    database = sqlite3.connect(server.data_dir / "bankgate.db")
    try:
        tables = [row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {table: database.execute(f'SELECT * FROM "{table}"').fetchall() for table in tables}  # noqa: S608
        revoked = database.execute("SELECT jti, client_id, expires_at FROM revoked_tokens").fetchall()
    finally:
        database.close()

    assert sorted(jti for jti, _, _ in revoked) == sorted(jtis.values())
    for jti, client_id, expires_at in revoked:
        assert client_id == client["client_id"]
        token = first if jti == jtis["first"] else second
        assert expires_at == claims_of(server, token)["exp"]
    dump = repr(rows)
    assert not [token for token in (first, second, kept) if token in dump], "an access token is stored"
    # Issued tokens are not stored: apart from the audit trail, no table mentions a token that is not revoked.
    for table, content in rows.items():
        if table != "audit_events":
            assert kept_jti not in repr(content), table
