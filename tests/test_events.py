"""Events and their sinks: the audit writer is one sink among others; the guard tells its verdicts and the
Idempotency-Key layer the outcome of each keyed request to any sink that wants them, and builds nothing for a
channel no sink listens to."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bankgate.app import create_app
from bankgate.audit import AuditLog
from bankgate.config import load_settings
from bankgate.events import AuditEvent, Events
from bankgate.idempotency import IdempotencyMiddleware, MemoryIdempotencyStore
from bankgate.services import Services
from conftest import basic


class RecordingSink:
    """Keeps every event whose name starts with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        self.prefixes = prefixes
        self.events: list[AuditEvent] = []
        self.asked: list[str] = []

    def wants(self, event: str) -> bool:
        self.asked.append(event)
        return event.startswith(self.prefixes)

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    def seen(self) -> list[tuple[str, str, str]]:
        return [(e.event, e.actor, e.outcome) for e in self.events]


def test_a_channel_no_sink_wants_records_nothing_and_asks_each_sink_once() -> None:
    sink = RecordingSink("guard.")
    events = Events([sink])
    quiet = events.channel("idempotency.fresh")
    for _ in range(3):
        quiet.emit("client:c1", "success", None, {"target": "POST /payments"})
    assert quiet.sinks == ()
    assert sink.events == []
    assert sink.asked == ["idempotency.fresh"]
    assert events.channel("idempotency.fresh") is quiet


def test_a_sink_added_later_hears_channels_handed_out_before() -> None:
    events = Events()
    channel = events.channel("guard.denied")
    channel.emit("anonymous", "failure")
    late = RecordingSink("guard.")
    events.add(late)
    channel.emit("anonymous", "failure", "192.0.2.1", {"status": 401, "reason": "invalid_token"})
    assert late.seen() == [("guard.denied", "anonymous", "failure")]
    assert late.events[0].source_ip == "192.0.2.1"
    assert dict(late.events[0].detail) == {"status": 401, "reason": "invalid_token"}


def test_the_audit_writer_wants_every_event_but_the_per_request_verdicts() -> None:
    wants = AuditLog.wants
    assert all(wants(None, name) for name in ("token.issued", "oauth.denied", "api.denied", "user.password_reset"))  # type: ignore[arg-type]
    assert not any(wants(None, name) for name in ("guard.allowed", "guard.denied", "idempotency.fresh"))  # type: ignore[arg-type]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Any, httpx.AsyncClient, dict[str, str]]]:
    settings = load_settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'bankgate.db'}")
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        issued = await services.clients.create("events test", ["app_1"])
    finally:
        await services.close()
    app: Any = create_app(settings, issuer="http://bankgate.test")
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bankgate.test") as http:
            yield app, http, {"Authorization": basic(issued.client.api_key, issued.secret_key)}


async def test_the_server_guard_tells_allowed_and_denied_verdicts_to_a_sink(
    server: tuple[Any, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, http, credentials = server
    runtime = app.state.runtime
    sink = RecordingSink("guard.", "token.")
    runtime.events.add(sink)
    token = await http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=credentials)
    assert token.status_code == 201, token.text
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    whoami = await http.get("/api/v1/whoami", headers=bearer)
    assert whoami.status_code == 200
    assert (await http.get("/api/v1/whoami", headers={"Authorization": "Bearer not.a.token"})).status_code == 401
    names = [e.event for e in sink.events]
    assert names == ["token.issued", "guard.allowed", "guard.denied"]
    allowed, denied = sink.events[1], sink.events[2]
    assert (allowed.actor, allowed.outcome) == (f"client:{whoami.json()['subject']}", "success")
    assert dict(allowed.detail) == {"kind": "client"}
    assert denied.outcome == "failure" and denied.actor == "anonymous"
    assert dict(denied.detail) == {"status": 401, "reason": "invalid_token"}
    # The access token never reaches an event.
    assert all(token.json()["access_token"] not in repr(e) for e in sink.events)


async def test_the_sandbox_tells_idempotency_outcomes_to_a_sink(
    server: tuple[Any, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, http, credentials = server
    sink = RecordingSink("idempotency.")
    app.state.runtime.events.add(sink)
    token = await http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=credentials)
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    order = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 1"}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await http.post("/api/v1/payments", json=order, headers={**bearer, **key})
    again = await http.post("/api/v1/payments", json=order, headers={**bearer, **key})
    other = await http.post("/api/v1/payments", json={**order, "amount": "1.00"}, headers={**bearer, **key})
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 422)
    assert [(e.event, e.outcome) for e in sink.events] == [
        ("idempotency.fresh", "success"), ("idempotency.replayed", "success"), ("idempotency.mismatch", "failure"),
    ]
    assert len({e.actor for e in sink.events}) == 1 and sink.events[0].actor.startswith("client:")
    assert dict(sink.events[0].detail) == {"target": "POST /api/v1/payments"}


class _Failing(MemoryIdempotencyStore):
    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("the store is down")


async def test_the_idempotency_layer_tells_in_progress_and_store_unavailable() -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return JSONResponse({"ok": True}, 201)

    inner = Starlette(routes=[Route("/payments", slow, methods=["POST"])])
    sink = RecordingSink("idempotency.")
    events = Events([sink])
    layer = IdempotencyMiddleware(inner, store=MemoryIdempotencyStore(), events=events)
    down = IdempotencyMiddleware(inner, store=_Failing(), events=events)
    key = {"Idempotency-Key": "k-1"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=layer), base_url="http://shop.test") as http:
        first = asyncio.create_task(http.post("/payments", json={}, headers=key))
        while not sink.events:
            await asyncio.sleep(0.01)
        retry = await http.post("/payments", json={}, headers=key)
        release.set()
        assert ((await first).status_code, retry.status_code) == (201, 409)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=down), base_url="http://shop.test") as http:
        assert (await http.post("/payments", json={}, headers=key)).status_code == 503
    assert sink.seen() == [
        ("idempotency.fresh", "anonymous:127.0.0.1", "success"),
        ("idempotency.in_progress", "anonymous:127.0.0.1", "failure"),
        ("idempotency.store_unavailable", "anonymous:127.0.0.1", "failure"),
    ]
