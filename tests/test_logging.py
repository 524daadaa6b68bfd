"""Request ids, the `http.request` event and the logs: every answer carries `X-Request-Id` (a trusted proxy's
sane one kept, any other replaced), the event is emitted once per request with a bounded route template, JSON
lines parse and carry the fields, a repeated defect is one traceback and a count, and no secret reaches a log."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankgate.app import create_app
from bankgate.clock import ManualClock
from bankgate.config import load_settings
from bankgate.events import AuditEvent
from bankgate.logs import ACCESS_LOGGER, REQUEST_ID, JsonFormatter
from bankgate.outage import DefectLog, StoreUnavailable
from bankgate.server import log_config
from bankgate.services import Services
from bankgate.web.asgi import ASGIApp, Receive, Scope, Send
from conftest import basic, start_server

TRUSTED_PROXY = "127.0.0.9"
STRANGER = "127.0.0.1"
SECRET_QUERY = "q-s3cr3t-in-the-url"
PASSWORD = "user-passw0rd-never-logged"
GENERATED = re.compile(r"[0-9a-f]{16}")


@dataclass
class Collected:
    """A real sink: the `http.request` events it was told."""

    events: list[AuditEvent] = field(default_factory=list)

    def wants(self, event: str) -> bool:
        return event == "http.request"

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


class Explode:
    """An outer middleware with a defect on `/explode` (an outage on `/outage`): what the boundary answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") == "/explode":
            raise RuntimeError("a bug in a route")
        if scope.get("path") == "/outage":
            raise StoreUnavailable("database", "the database did not answer within 15 s")
        await self.app(scope, receive, send)


@dataclass
class Bankgate:
    app: Any
    http: httpx.AsyncClient  # from a trusted proxy's address
    stranger: httpx.AsyncClient  # from anyone else's
    client: dict[str, str]
    sink: Collected
    clock: ManualClock

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    @property
    def client_basic(self) -> dict[str, str]:
        return {"Authorization": basic(self.client["api_key"], self.client["secret_key"])}


class JsonLines(logging.Handler):
    """Every record, formatted as `--log-format json` formats it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    """The server's logs (`bankgate`, and uvicorn's were it running) at INFO and up, in JSON, with the JSON access
    log on: more than `serve` writes by default (warnings and up)."""
    handler = JsonLines()
    loggers = [logging.getLogger(name) for name in ("bankgate", "uvicorn")]
    access = logging.getLogger(ACCESS_LOGGER)
    saved = [logger.level for logger in (*loggers, access)]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    access.setLevel(logging.INFO)
    yield handler
    for logger, level in zip((*loggers, access), saved, strict=True):
        logger.setLevel(level)
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
async def bankgate(tmp_path: Path) -> AsyncIterator[Bankgate]:
    """A sandbox server in process (SQLite file) trusting one proxy, with a client and a collecting sink."""
    settings = load_settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'bankgate.db'}",
                             trusted_proxies=[f"{TRUSTED_PROXY}/32"])
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        issued = await services.clients.create("logging test", ["app_1"])
    finally:
        await services.close()
    client = {"api_key": issued.client.api_key, "secret_key": issued.secret_key}
    clock = ManualClock()
    app: Any = create_app(settings, issuer="http://bankgate.test", clock=clock, middleware=[Explode])
    async with app.starlette.router.lifespan_context(app.starlette):
        sink = Collected()
        app.state.runtime.events.add(sink)
        trusted = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(TRUSTED_PROXY, 4711))
        other = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(STRANGER, 4711))
        async with (httpx.AsyncClient(transport=trusted, base_url="http://bankgate.test") as http,
                    httpx.AsyncClient(transport=other, base_url="http://bankgate.test") as stranger):
            yield Bankgate(app, http, stranger, client, sink, clock)


async def _token(bg: Bankgate) -> str:
    response = await bg.http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=bg.client_basic)
    assert response.status_code == 201, response.text
    return str(response.json()["access_token"])


# -- request ids ---------------------------------------------------------------------------------------------------

async def test_every_answer_carries_a_generated_request_id_and_the_event_names_it(bankgate: Bankgate) -> None:
    ids = []
    for _ in range(3):
        response = await bankgate.stranger.post("/oauth/token", data={"grant_type": "client_credentials"},
                                                headers=bankgate.client_basic)
        assert response.status_code == 201
        ids.append(response.headers["x-request-id"])
    assert all(GENERATED.fullmatch(i) for i in ids) and len(set(ids)) == 3, ids
    assert [e.detail["request_id"] for e in bankgate.sink.events] == ids


async def test_the_document_declares_the_request_id_on_every_answer(bankgate: Bankgate) -> None:
    document = (await bankgate.stranger.get("/openapi.json")).json()
    answers = [(path, status, answer) for path, item in document["paths"].items() for operation in item.values()
               for status, answer in operation["responses"].items()]
    assert len(answers) > 100
    assert [(path, status) for path, status, answer in answers if "X-Request-Id" not in answer.get("headers", {})] == []


async def test_a_trusted_proxys_request_id_is_kept_an_untrusted_peers_replaced(bankgate: Bankgate) -> None:
    sent = "edge-7f3a9c01-4b2e"
    from_proxy = await bankgate.http.get("/healthz", headers={"X-Request-Id": sent})
    assert from_proxy.headers["x-request-id"] == sent
    from_stranger = await bankgate.stranger.get("/healthz", headers={"X-Request-Id": sent})
    assert GENERATED.fullmatch(from_stranger.headers["x-request-id"])
    assert [e.detail["request_id"] for e in bankgate.sink.events] == [sent, from_stranger.headers["x-request-id"]]


@pytest.mark.parametrize("insane", ["a" * 129, "has space", "tab\there", "", "caf\u00e9", "quote\x7f"])
async def test_an_insane_request_id_is_replaced_even_from_a_trusted_proxy(bankgate: Bankgate, insane: str) -> None:
    response = await bankgate.http.get("/healthz", headers={"X-Request-Id": insane.encode("utf-8")})
    assert response.status_code == 200
    assert GENERATED.fullmatch(response.headers["x-request-id"]), response.headers["x-request-id"]


async def test_the_boundarys_own_answers_carry_the_request_id(bankgate: Bankgate) -> None:
    answers = [
        await bankgate.http.get("/explode", headers={"X-Request-Id": "defect-1"}),  # 500
        await bankgate.http.get("/outage", headers={"X-Request-Id": "outage-1"}),  # 503
        await bankgate.http.post("/oauth/token", headers=[("X-Request-Id", "twice-1"), ("Authorization", "a"),
                                                          ("Authorization", "b")]),  # 400
        await bankgate.http.get(f"/oauth/revocations?client_secret={SECRET_QUERY}",
                                headers={"X-Request-Id": "query-1"}),  # 400
    ]
    assert [(a.status_code, a.headers["x-request-id"]) for a in answers] == [
        (500, "defect-1"), (503, "outage-1"), (400, "twice-1"), (400, "query-1")]
    assert [(e.detail["status"], e.detail["request_id"], e.outcome) for e in bankgate.sink.events] == [
        (500, "defect-1", "failure"), (503, "outage-1", "failure"), (400, "twice-1", "failure"),
        (400, "query-1", "failure")]


# -- the http.request event ----------------------------------------------------------------------------------------

async def test_the_event_is_emitted_once_per_request_with_a_bounded_route_template(bankgate: Bankgate) -> None:
    token = await _token(bankgate)
    bearer = {"Authorization": f"Bearer {token}"}
    calls = [
        ("GET", "/api/v1/whoami", bearer, 200, "/api/v1/whoami"),
        ("GET", "/oauth/token", {}, 405, "/oauth/token"),
        ("GET", "/no/such/page/8f2c", {}, 404, "unmatched"),
        ("GET", "/admin/v1/clients/bk_test_nobody", {}, 401, "/admin/v1/clients/{api_key}"),
        ("POST", "/api/v1/users/alice/password", {}, 400, "/api/v1/users/{username}/password"),
        ("GET", "/api/v1/payments/pay_123", bearer, 404, "/api/v1/payments/{payment_id}"),
        ("GET", "/console/me/sign-in", {}, 200, "/console/..."),
        ("GET", "/.well-known/jwks.json", {}, 200, "/.well-known/jwks.json"),
        ("BREW", "/healthz", {}, 405, "/healthz"),
    ]
    for method, path, headers, status, _ in calls:
        response = await bankgate.stranger.request(method, path, headers=headers)
        assert response.status_code == status, (path, response.status_code, response.text)
    events = bankgate.sink.events[1:]  # after the token's
    assert len(events) == len(calls)
    assert [(e.detail["route"], e.detail["status"]) for e in events] == [(c[4], c[3]) for c in calls]
    assert all(e.event == "http.request" and set(e.detail) == {"method", "route", "status", "duration", "request_id"}
               for e in bankgate.sink.events)
    assert [e.detail["method"] for e in events][-2:] == ["GET", "OTHER"]
    assert all(e.source_ip == STRANGER and e.detail["duration"] > 0 for e in events)
    assert [e.outcome for e in events][:2] == ["success", "failure"]


async def test_the_event_names_the_authenticated_actor(bankgate: Bankgate) -> None:
    token = await _token(bankgate)
    whoami = await bankgate.http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    await bankgate.http.post("/api/v1/payments", headers={"Authorization": f"Bearer {token}",
                                                          "Idempotency-Key": "k-1"},
                             json={"application_id": "app_1", "amount": "1.00", "currency": "EUR",
                                   "reference": "r"})
    await bankgate.http.get("/api/v1/whoami")
    client_id = whoami.json()["subject"]
    assert [e.actor for e in bankgate.sink.events] == [bankgate.client["api_key"], f"client:{client_id}",
                                                       f"client:{client_id}", "-"]


async def test_the_audit_trail_does_not_record_http_requests(bankgate: Bankgate) -> None:
    assert not bankgate.runtime.services.audit.wants("http.request")


# -- JSON lines ----------------------------------------------------------------------------------------------------

def test_a_json_line_carries_time_level_logger_message_request_id_and_extra_fields() -> None:
    record = logging.LogRecord("bankgate.access", logging.INFO, __file__, 1, "GET %s %d", ("/healthz", 200), None)
    record.route, record.status, record.duration, record.actor = "/healthz", 200, 0.0012, "client:1"
    context = REQUEST_ID.set("rid-1")
    try:
        line = JsonFormatter().format(record)
    finally:
        REQUEST_ID.reset(context)
    assert "\n" not in line
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry["time"]
    assert {k: entry[k] for k in ("level", "logger", "message", "request_id", "route", "status", "duration",
                                  "actor")} == {
        "level": "INFO", "logger": "bankgate.access", "message": "GET /healthz 200", "request_id": "rid-1",
        "route": "/healthz", "status": 200, "duration": 0.0012, "actor": "client:1"}


async def test_the_json_access_log_has_one_line_per_request_with_route_status_duration_id_actor(
    bankgate: Bankgate, json_lines: JsonLines
) -> None:
    await _token(bankgate)
    response = await bankgate.stranger.get("/nothing-here")
    access = [e for e in json_lines.parsed() if e["logger"] == ACCESS_LOGGER]
    assert [(e["event"], e["method"], e["route"], e["status"]) for e in access] == [
        ("http.request", "POST", "/oauth/token", 201), ("http.request", "GET", "unmatched", 404)]
    assert access[0]["actor"] == bankgate.client["api_key"] and access[1]["actor"] == "-"
    assert access[1]["request_id"] == response.headers["x-request-id"] and access[1]["source_ip"] == STRANGER
    assert all(isinstance(e["duration"], float) for e in access)


def test_json_mode_configures_every_logger_and_turns_the_access_log_on_only_when_asked() -> None:
    config = log_config("json", access_log=True)
    assert {f["()"] for f in config["formatters"].values()} == {"bankgate.logs.JsonFormatter"}
    assert config["root"]["handlers"] == ["default"]
    assert config["loggers"][ACCESS_LOGGER]["level"] == "INFO"
    assert log_config("json")["loggers"][ACCESS_LOGGER]["level"] == "WARNING"
    assert ACCESS_LOGGER not in log_config("text")["loggers"]


# -- defects: once, then a count ------------------------------------------------------------------------------------

async def test_a_defect_is_logged_once_with_its_traceback_and_request_id_then_counted(
    bankgate: Bankgate, json_lines: JsonLines
) -> None:
    ids = []
    for _ in range(25):
        response = await bankgate.http.get("/explode")
        assert response.status_code == 500
        ids.append(response.headers["x-request-id"])
        bankgate.clock.advance(2)  # 25 failures over 50 s
    defects = [e for e in json_lines.parsed() if e["logger"] == "bankgate"]
    assert len(defects) == 1, defects
    assert defects[0]["request_id"] == ids[0] and ids[0] in defects[0]["message"]
    assert "RuntimeError: a bug in a route" in defects[0]["exception"]
    bankgate.clock.advance(11)
    await bankgate.http.get("/explode")
    defects = [e for e in json_lines.parsed() if e["logger"] == "bankgate"]
    assert len(defects) == 2 and "exception" not in defects[1]
    assert "RuntimeError (test_logging.py:" in defects[1]["message"]
    assert defects[1]["message"].endswith("repeated 26 times in the last 61 s"), defects[1]["message"]


def test_a_burst_of_defects_that_stopped_is_counted_by_the_flush_and_a_quiet_one_starts_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    defects = DefectLog(logging.getLogger("bankgate.test"), clock=clock.monotonic)
    caplog.set_level(logging.ERROR, logger="bankgate.test")

    def fail(n: int) -> None:
        for _ in range(n):
            try:
                {}["missing"]  # the same line each time: the same defect
            except KeyError as exc:
                defects.failed(exc, "GET /x failed")

    fail(40)
    defects.flush()  # not due yet
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
    clock.advance(60)
    defects.flush()
    defects.flush()
    assert len(caplog.records) == 2 and caplog.records[1].getMessage().endswith("repeated 40 times in the last 60 s")
    clock.advance(60)  # quiet for a minute: the next one is logged in full again
    fail(1)
    assert len(caplog.records) == 3 and caplog.records[2].exc_info is not None
    clock.advance(600)  # once, then never again within the minute: no count to tell; the next is in full again
    defects.flush()
    fail(1)
    assert len(caplog.records) == 4 and caplog.records[3].exc_info is not None
    try:
        raise ValueError("another kind")
    except ValueError as exc:
        defects.failed(exc, "GET /y failed")
    assert len(caplog.records) == 5 and caplog.records[4].exc_info is not None


# -- no secret in any line -----------------------------------------------------------------------------------------

async def test_no_secret_reaches_any_log_line(bankgate: Bankgate, json_lines: JsonLines) -> None:
    secret = bankgate.client["secret_key"]
    basic_header = basic(bankgate.client["api_key"], secret)
    token = await _token(bankgate)
    post = await bankgate.http.post("/oauth/token", data={"grant_type": "client_credentials",
                                                          "client_id": bankgate.client["api_key"],
                                                          "client_secret": secret})
    assert post.status_code == 201
    await bankgate.http.post("/oauth/token", data={"grant_type": "client_credentials"},
                             headers={"Authorization": basic(bankgate.client["api_key"], secret + "x")})
    await bankgate.http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    await bankgate.http.post("/oauth/introspect", data={"token": token}, headers=bankgate.client_basic)
    await bankgate.http.get(f"/api/v1/whoami?access_token={token}")
    await bankgate.http.get(f"/oauth/token?client_secret={SECRET_QUERY}")
    await bankgate.http.post("/api/v1/users/alice/password", headers={"Authorization": basic("alice", PASSWORD)},
                             json={"passphrase": PASSWORD, "new_password": PASSWORD + "-new"})
    await bankgate.http.get("/explode", headers={"Authorization": f"Bearer {token}"})
    await bankgate.http.get("/outage", headers={"Authorization": basic_header})
    text = "\n".join(json_lines.lines)
    assert sum(1 for e in json_lines.parsed() if e.get("event") == "http.request") == 10
    for value in (secret, basic_header.split()[1], token, token.split(".")[2], SECRET_QUERY, PASSWORD):
        assert value not in text, value


# -- a real server -------------------------------------------------------------------------------------------------

@pytest.mark.real_server
def test_serve_with_log_format_json_writes_only_json_lines_in_every_worker(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", tmp_path / "server.log",
                          args=("--log-format", "json", "--access-log", "--workers", "2"))
    try:
        client = server.create_client()
        assert server.token(client).status_code == 201
        missing = server.http.get("/nowhere", headers={"X-Request-Id": "from-a-stranger"})
        assert missing.status_code == 404 and GENERATED.fullmatch(missing.headers["x-request-id"])
        assert server.http.get(f"/oauth/token?client_secret={SECRET_QUERY}").status_code == 400
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{server.log()}")
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    started = [e for e in entries if e["message"].startswith("Started server process")]
    assert len(started) == 2, [e["message"] for e in entries]  # two workers
    access = [e for e in entries if e.get("event") == "http.request"]
    routes = {(e["route"], e["status"]) for e in access}
    assert {("/oauth/token", 201), ("unmatched", 404), ("/oauth/token", 400)} <= routes, routes
    assert any(e["request_id"] == missing.headers["x-request-id"] for e in access)
    assert SECRET_QUERY not in server.log() and client["secret_key"] not in server.log()


def test_an_unknown_log_format_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="log_format"):
        load_settings(data_dir=tmp_path, log_format="yaml")


def test_the_log_format_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANKGATE_LOG_FORMAT", "json")
    assert load_settings(data_dir=tmp_path).log_format == "json"
    assert load_settings(data_dir=tmp_path, log_format="text").log_format == "text"



def test_the_time_field_is_what_datetime_writes_to_the_millisecond() -> None:
    from datetime import UTC, datetime

    from bankgate.logs import _iso

    moments = [0.0, 1.9995, 1764720000.123, 1796289114.9999996, *(1.7e9 + n * 0.3337 for n in range(2000))]
    for moment in moments:
        expected = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert _iso(moment) == expected, moment
