"""The server's error boundary, in process: an outage is 503 + Retry-After and a defect 500, both in each route's
own format; deep JSON is 400; two Authorization headers and credentials in a query string are 400 on every route;
an outage is logged once with a count, not a traceback per request."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from bankgate.app import create_app
from bankgate.config import load_settings
from bankgate.outage import DefectLog, OutageLog, StoreUnavailable, unavailable_service
from bankgate.services import Services
from conftest import basic

ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 1"}
DEEP_ARRAY = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"":' * 3000 + b"1" + b"}" * 3000  # deeper than Python's parser goes, under 16 KiB


@dataclass
class Bankgate:
    http: httpx.AsyncClient
    app: Any
    client: dict[str, str]
    token: str

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    @property
    def client_basic(self) -> dict[str, str]:
        return {"Authorization": basic(self.client["api_key"], self.client["secret_key"])}

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def bankgate(tmp_path: Path) -> AsyncIterator[Bankgate]:
    """A sandbox server in process (SQLite file), with a client and a token obtained for it."""
    settings = load_settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'bankgate.db'}")
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        issued = await services.clients.create("boundary test", ["app_1"])
    finally:
        await services.close()
    client = {"api_key": issued.client.api_key, "secret_key": issued.secret_key}
    app: Any = create_app(settings, issuer="http://bankgate.test")
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bankgate.test") as http:
            response = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                       headers={"Authorization": basic(client["api_key"], client["secret_key"])})
            assert response.status_code == 201, response.text
            yield Bankgate(http, app, client, response.json()["access_token"])


#: (method, path) of every route family, with the format its errors come in.
OAUTH_JSON = "oauth"
PROBLEM = "problem"
GUARD_JSON = "guard"


def _assert_format(response: httpx.Response, family: str, status: int) -> None:
    assert response.status_code == status, response.text
    content_type = response.headers["content-type"]
    body = response.json()
    if family == PROBLEM:
        assert content_type == "application/problem+json", content_type
        assert body["status"] == status and body["detail"], body
    else:
        assert content_type == "application/json", content_type
        assert body["error"] and body["error_description"], body
        if status == 503:
            assert body["error"] == "temporarily_unavailable"
        if status == 500:
            assert body["error"] == "server_error"
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1
    else:
        assert "retry-after" not in response.headers


def _calls(bg: Bankgate) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(family, method, path, request kwargs) reaching each route far enough to touch the database."""
    return [
        (OAUTH_JSON, "POST", "/oauth/token", {"data": {"grant_type": "client_credentials"},
                                             "headers": bg.client_basic}),
        (OAUTH_JSON, "POST", "/oauth/introspect", {"data": {"token": bg.token}, "headers": bg.client_basic}),
        # (authorize refuses a request without the user's certificate before any lookup: see test_outage.py)
        (PROBLEM, "GET", "/api/v1/users/someone/certificates", {"headers": {"Authorization": basic("someone", "p")}}),
        (PROBLEM, "POST", "/api/v1/users/someone/password",
         {"json": {"passphrase": "a-b-c-d", "new_password": "Blue-Harbour-7-Lantern"}}),
        (GUARD_JSON, "GET", "/api/v1/whoami", {"headers": bg.bearer}),
        (PROBLEM, "GET", "/api/v1/accounts", {"headers": bg.bearer}),
        (PROBLEM, "POST", "/api/v1/payments", {"json": ORDER, "headers": {**bg.bearer, "Idempotency-Key": "k-1"}}),
    ]


def _break(bg: Bankgate, monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    """Every lookup the routes make fails with `exc`, as when the database is down."""

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    services = bg.runtime.services
    monkeypatch.setattr(services.allowlist, "allows", fail)
    monkeypatch.setattr(services.clients, "authenticate", fail)
    monkeypatch.setattr(services.users, "find", fail)
    monkeypatch.setattr(services.users, "get", fail)
    for name in dir(services.users):
        if name.startswith(("_load", "_find", "_user")) and callable(getattr(services.users, name)):
            monkeypatch.setattr(services.users, name, fail)
    monkeypatch.setattr(services.throttle, "blocked", lambda *a, **k: (_ for _ in ()).throw(exc))


def _database_down() -> OperationalError:
    return OperationalError("SELECT secret_hash FROM clients", {"k": "v"},
                            ConnectionRefusedError(111, "Connect call failed"))


async def test_an_outage_is_503_with_retry_after_in_each_routes_format(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _break(bankgate, monkeypatch, _database_down())
    caplog.set_level(logging.WARNING)
    for family, method, path, kwargs in _calls(bankgate):
        for _ in range(3):
            response = await bankgate.http.request(method, path, **kwargs)
            _assert_format(response, family, 503)
    # One line for the outage, naming the cause, without the statement or its parameters; no traceback.
    lines = [r for r in caplog.records if r.name.startswith("bankgate")]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert "database unavailable" in message and "ConnectionRefusedError" in message, message
    assert "secret_hash" not in message and lines[0].exc_info is None


async def test_a_store_that_reports_itself_unavailable_is_503_in_each_routes_format(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break(bankgate, monkeypatch, StoreUnavailable("database", "the database did not answer within 15 s"))
    for family, method, path, kwargs in _calls(bankgate):
        response = await bankgate.http.request(method, path, **kwargs)
        _assert_format(response, family, 503)


async def test_a_defect_is_500_in_each_routes_format_never_text(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break(bankgate, monkeypatch, RuntimeError("a bug"))
    for family, method, path, kwargs in _calls(bankgate):
        response = await bankgate.http.request(method, path, **kwargs)
        _assert_format(response, family, 500)


async def test_a_constraint_violation_is_a_defect_not_an_outage() -> None:
    assert unavailable_service(_database_down()) == "database"
    assert unavailable_service(IntegrityError("INSERT", {}, Exception("duplicate key"))) is None
    assert unavailable_service(TimeoutError()) == "database"
    assert unavailable_service(StoreUnavailable("Redis", "no answer within 15 s")) == "Redis"
    assert unavailable_service(RecursionError()) is None
    import redis

    assert unavailable_service(redis.exceptions.ConnectionError("refused")) == "Redis"
    assert unavailable_service(redis.exceptions.ResponseError("WRONGTYPE")) is None


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
async def test_deep_json_is_400_on_every_json_route(bankgate: Bankgate, body: bytes) -> None:
    json_type = {"Content-Type": "application/json"}
    calls = [
        (OAUTH_JSON, "/oauth/token", bankgate.client_basic),
        (OAUTH_JSON, "/oauth/introspect", bankgate.client_basic),
        (OAUTH_JSON, "/oauth/revoke", bankgate.client_basic),
        (PROBLEM, "/api/v1/users/someone/password", {}),
        (PROBLEM, "/api/v1/payments", {**bankgate.bearer, "Idempotency-Key": "deep-1"}),
    ]
    for family, path, headers in calls:
        response = await bankgate.http.post(path, content=body, headers={**headers, **json_type})
        _assert_format(response, family, 400)


async def test_two_authorization_headers_are_400_on_every_route(bankgate: Bankgate) -> None:
    good = bankgate.client_basic["Authorization"]
    twice = [("Authorization", good), ("Authorization", good)]
    calls = [
        (OAUTH_JSON, "POST", "/oauth/token", {"data": {"grant_type": "client_credentials"}}),
        (OAUTH_JSON, "POST", "/oauth/introspect", {"data": {"token": bankgate.token}}),
        (OAUTH_JSON, "POST", "/oauth/revoke", {"data": {"token": bankgate.token}}),
        (PROBLEM, "GET", "/api/v1/authorizations/authorize", {}),
        (PROBLEM, "GET", "/api/v1/users/someone/certificates", {}),
        (PROBLEM, "POST", "/api/v1/users/someone/password", {"json": {"passphrase": "x", "new_password": "y"}}),
        (GUARD_JSON, "GET", "/api/v1/whoami", {}),
        (GUARD_JSON, "GET", "/api/v1/accounts", {}),
    ]
    for family, method, path, kwargs in calls:
        response = await bankgate.http.request(method, path, headers=twice, **kwargs)
        assert response.status_code == 400, (path, response.text)
        text = response.text
        assert "exactly one Authorization header" in text, (path, text)
        if family == PROBLEM:
            # The certificate style's answer to a malformed Authorization header, as the provider spells it.
            assert response.json()["errors"][0]["errorCode"] == "AuthorizationParseFailure"
        else:
            assert response.json()["error"] == "invalid_request"
    # The same headers once each still work.
    once = await bankgate.http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                    headers={"Authorization": good})
    assert once.status_code == 201


@pytest.mark.parametrize("name", ["client_secret", "secret", "secret_key", "password", "new_password", "passphrase",
                                  "token", "access_token", "refresh_token", "assertion"])
async def test_credentials_in_the_query_string_are_400_saying_where_they_go(bankgate: Bankgate, name: str) -> None:
    calls = [
        (OAUTH_JSON, "POST", "/oauth/token", {"data": {"grant_type": "client_credentials"},
                                             "headers": bankgate.client_basic}),
        (OAUTH_JSON, "POST", "/oauth/introspect", {"headers": bankgate.client_basic}),
        (OAUTH_JSON, "POST", "/oauth/revoke", {"headers": bankgate.client_basic}),
        (PROBLEM, "GET", "/api/v1/authorizations/authorize", {}),
        (PROBLEM, "POST", "/api/v1/users/someone/password", {"json": {"passphrase": "x", "new_password": "y"}}),
        (PROBLEM, "GET", "/api/v1/users/someone/certificates", {}),
        (GUARD_JSON, "GET", "/api/v1/whoami", {}),
        (PROBLEM, "GET", "/api/v1/accounts", {}),
        (PROBLEM, "POST", "/api/v1/payments", {"json": ORDER, "headers": {"Idempotency-Key": "q-1"}}),
        (OAUTH_JSON, "GET", "/healthz", {}),
        (OAUTH_JSON, "GET", "/.well-known/jwks.json", {}),
    ]
    for family, method, path, kwargs in calls:
        for spelled in (name, name.upper(), name.replace("_", "%5F")):
            response = await bankgate.http.request(method, f"{path}?scope=app_1&{spelled}=s3cr3t-value", **kwargs)
            _assert_format(response, family, 400)
            text = response.text
            assert f"never put {name} in the URL" in text and ("body" in text or "Authorization" in text), text
            assert "s3cr3t-value" not in text


async def test_the_documented_query_string_token_request_stays_accepted(bankgate: Bankgate) -> None:
    response = await bankgate.http.post("/oauth/token?grant_type=client_credentials&scope=app_1",
                                        headers=bankgate.client_basic)
    assert response.status_code == 201, response.text
    # A token in the body, where it belongs, still works on introspection.
    introspected = await bankgate.http.post("/oauth/introspect", data={"token": bankgate.token},
                                            headers=bankgate.client_basic)
    assert introspected.status_code == 200 and introspected.json()["active"] is True


def test_the_outage_log_says_once_then_counts_at_most_once_a_minute_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    outages = OutageLog(logging.getLogger("bankgate.test"), clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="bankgate.test")
    down = _database_down()
    for _ in range(1234):
        outages.refused("database", down)
        now[0] += 0.04  # 1,234 requests over 49 s
    outages.failed("database", down)  # a background job: no request refused
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["database unavailable"]
    now[0] += 12
    outages.refused("database", down)
    assert len(caplog.records) == 2
    assert "still unavailable" in caplog.records[1].getMessage()
    assert "1235 requests refused in the last 61 s" in caplog.records[1].getMessage()
    outages.reachable("Redis")  # another service: no effect
    outages.reachable("database")
    outages.reachable("database")
    assert len(caplog.records) == 3
    assert caplog.records[2].getMessage().startswith("database reachable again after 1235 refused requests")
    assert not outages.down("database")


async def test_a_statement_that_completes_ends_the_outage_in_the_log(
    bankgate: Bankgate, caplog: pytest.LogCaptureFixture
) -> None:
    outages = bankgate.runtime.outages
    caplog.set_level(logging.WARNING, logger="bankgate")
    outages.refused("database", _database_down())
    assert outages.down("database")
    # A request that needs no statement does not end it.
    assert (await bankgate.http.get("/healthz")).status_code == 200
    assert outages.down("database")
    async with bankgate.runtime.services.store.connect() as connection:
        await connection.exec_driver_sql("SELECT 1")
    assert not outages.down("database")
    assert caplog.records[-1].getMessage().startswith("database reachable again after 1 refused requests")


async def test_background_jobs_report_an_outage_once_and_a_defect_in_full(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    from types import SimpleNamespace

    from bankgate.runtime import Runtime

    caplog.set_level(logging.WARNING, logger="bankgate")
    runs: list[int] = []
    logger = logging.getLogger("bankgate")
    fake = SimpleNamespace(outages=OutageLog(logger), defects=DefectLog(logger))

    async def sync() -> None:
        runs.append(1)
        if len(runs) <= 20:
            raise _database_down()
        if len(runs) == 21:
            raise KeyError("a bug")

    task = asyncio.create_task(Runtime._every(fake, 0.001, sync))  # type: ignore[arg-type]
    while len(runs) < 25:
        await asyncio.sleep(0.005)
    task.cancel()
    messages = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert messages[0][0].startswith("database unavailable: OperationalError (ConnectionRefusedError)")
    assert messages[1:] == [("background job sync failed; will retry", True)], messages


async def test_malformed_payment_bodies_are_4xx_never_500(bankgate: Bankgate) -> None:
    bodies = [b"", b"[]", b'"x"', b"null", b"1e999999", b"NaN", b"\xff\xfe", b'{"amount": {}}',
              b'{"application_id": ["app_1"], "amount": 1, "currency": null, "reference": {}}', b"{" * 10]
    for number, body in enumerate(bodies):
        response = await bankgate.http.post(
            "/api/v1/payments", content=body,
            headers={**bankgate.bearer, "Idempotency-Key": f"bad-{number}", "Content-Type": "application/json"},
        )
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json", (body, response.text)
