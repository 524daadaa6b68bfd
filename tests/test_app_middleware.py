"""The server's one outer middleware stack: a middleware registered with `create_app(middleware=[...])` or in
`bankgate.app.MIDDLEWARE` sees every request, the directly dispatched hot routes (token endpoint, authorize,
whoami, the sandbox) as much as the Starlette routes, inside the error boundary."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankgate import app as app_module
from bankgate.app import create_app
from bankgate.config import load_settings
from bankgate.services import Services
from bankgate.web.asgi import ASGIApp, Message, Receive, Scope, Send
from conftest import basic


class Recorder:
    """Records (method, path, status) of every HTTP request that passes it."""

    def __init__(self, app: ASGIApp, *, seen: list[tuple[str, str, int]]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, recording_send)
        self.seen.append((scope["method"], scope["path"], status))


async def _client(tmp_path: Path) -> tuple[Any, dict[str, str]]:
    settings = load_settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'bankgate.db'}")
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        issued = await services.clients.create("middleware test", ["app_1"])
    finally:
        await services.close()
    return settings, {"Authorization": basic(issued.client.api_key, issued.secret_key)}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    settings, credentials = await _client(tmp_path)
    yield settings, credentials


async def _visit_every_family(app: Any, credentials: dict[str, str]) -> None:
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bankgate.test") as http:
            token = await http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=credentials)
            assert token.status_code == 201, token.text
            bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
            assert (await http.get("/api/v1/whoami", headers=bearer)).status_code == 200
            assert (await http.get("/api/v1/accounts", headers=bearer)).status_code == 200
            # No client certificate: refused, but by the route, inside the middleware.
            authorize = await http.get("/api/v1/authorizations/authorize", headers={"Authorization": basic("u", "p")})
            assert authorize.status_code == 401
            assert (await http.get("/healthz")).status_code == 200


EVERY_FAMILY = [
    ("POST", "/oauth/token", 201),
    ("GET", "/api/v1/whoami", 200),
    ("GET", "/api/v1/accounts", 200),
    ("GET", "/api/v1/authorizations/authorize", 401),
    ("GET", "/healthz", 200),
]


async def test_a_middleware_given_to_create_app_sees_every_route_family(
    served: tuple[Any, dict[str, str]],
) -> None:
    settings, credentials = served
    seen: list[tuple[str, str, int]] = []
    app = create_app(settings, issuer="http://bankgate.test", middleware=[functools.partial(Recorder, seen=seen)])
    await _visit_every_family(app, credentials)
    assert seen == EVERY_FAMILY


async def test_a_middleware_in_the_server_list_sees_every_route_family_outermost_first(
    served: tuple[Any, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, credentials = served
    outer: list[tuple[str, str, int]] = []
    inner: list[tuple[str, str, int]] = []
    order: list[str] = []

    def named(name: str, seen: list[tuple[str, str, int]]) -> Any:
        def wrap(app: ASGIApp) -> ASGIApp:
            order.append(name)  # built innermost first
            return Recorder(app, seen=seen)
        return wrap

    monkeypatch.setattr(app_module, "MIDDLEWARE", [named("server", outer)])
    app = create_app(settings, issuer="http://bankgate.test", middleware=[named("given", inner)])
    assert order == ["given", "server"]
    await _visit_every_family(app, credentials)
    assert outer == inner == EVERY_FAMILY


async def test_the_error_boundary_stays_outside_the_middleware(served: tuple[Any, dict[str, str]]) -> None:
    """A failure under a route reaches the middleware as an exception, and the boundary still answers 500."""
    settings, _ = served
    seen: list[tuple[str, str, int]] = []

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a defect")

    app: Any = create_app(settings, issuer="http://bankgate.test",
                          middleware=[functools.partial(Recorder, seen=seen)])
    async with app.starlette.router.lifespan_context(app.starlette):
        app._direct[("GET", "/api/v1/whoami")] = failing
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bankgate.test") as http:
            response = await http.get("/api/v1/whoami")
    assert response.status_code == 500
    assert response.json()["error"] == "server_error"
    assert seen == []  # the request never completed inside the middleware
