"""`/openapi.json` documents every answer: schemathesis drives each operation of the in-process app with generated
requests (anonymous, with generated credentials, and with valid ones) and checks that no answer is a 5xx, that every
status is documented, and that every body matches its documented schema."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from bankgate.app import create_app
from bankgate.config import Settings
from bankgate.openapi import openapi_document
from bankgate.services import Services

ISSUER = "http://testserver"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


async def _prepare(settings: Settings) -> dict[str, str]:
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        issued = await services.clients.create("conformance", ["app_12345"])
        basic_issued = await services.clients.create("conformance basic", ["app_12345"], auth_mode="basic")
        owner = await services.admins.create("conformance-owner", "owner")
    finally:
        await services.close()
    return {
        "api_key": issued.client.api_key,
        "secret_key": issued.secret_key,
        "basic_api_key": basic_issued.client.api_key,
        "basic_secret_key": basic_issued.secret_key,
        "admin_api_key": owner.admin.api_key,
        "admin_secret_key": owner.secret_key,
    }


class _SharedApp:
    """The app as a loopback client reaches it (the ASGI test transports name the client `testclient`), started
    once for the whole module: its lifespan (the runtime: database, keys, background jobs) starts with the first
    request, on the loop the requests run on, and ends in `close`. Each generated case is a request to the same
    running server, as in production, instead of a server started and stopped around every operation."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Future[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._lifespan: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # a client's own lifespan (loading the schema): the app's is ours
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self._start()
        await self.app({**scope, "client": ("127.0.0.1", 50000)}, receive, send)

    async def _start(self) -> None:
        if self._started is None:
            self._loop = asyncio.get_running_loop()
            self._started = self._loop.create_future()
            self._stopping = asyncio.Event()
            self._lifespan = self._loop.create_task(self._run(self._started, self._stopping))
        await asyncio.shield(self._started)

    async def _run(self, started: asyncio.Future[None], stopping: asyncio.Event) -> None:
        starlette = self.app.starlette
        try:
            async with starlette.router.lifespan_context(starlette):
                started.set_result(None)
                await stopping.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    def close(self) -> None:
        """End the lifespan (from another thread than the requests' loop), raising what its shutdown raised."""
        if self._loop is None or self._lifespan is None or self._stopping is None:
            return
        stopping, lifespan = self._stopping, self._lifespan

        async def stop() -> None:
            stopping.set()
            await lifespan

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=60)


async def _token(app_settings: Settings, credentials: dict[str, str]) -> str:
    app = create_app(app_settings)
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            answer = await client.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(credentials["api_key"], credentials["secret_key"]),
            )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["access_token"])


@pytest.fixture(scope="module")
def conformance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir: Path = tmp_path_factory.mktemp("conformance")
    # Metrics on: every generated request also passes the metrics sink, and /metrics answers 200.
    app_settings = Settings(data_dir=data_dir, issuer=ISSUER, audit_flush_interval=0.05, metrics="on")
    credentials = asyncio.run(_prepare(app_settings))
    token = asyncio.run(_token(app_settings, credentials))
    app = _SharedApp(create_app(app_settings))
    # Requests go through this session: schemathesis then leaves the app's lifespan to `_SharedApp`, and the
    # session ignores the environment's proxy and netrc settings (nothing to look up for an in-process app).
    session = asgi.get_client(app)
    session.trust_env = False
    try:
        yield {
            "schema": schemathesis.openapi.from_asgi("/openapi.json", app),
            "session": session,
            "bearer": f"Bearer {token}",
            "client_basic": "Basic " + base64.b64encode(
                f"{credentials['api_key']}:{credentials['secret_key']}".encode()).decode(),
            "api_basic": "Basic " + base64.b64encode(
                f"{credentials['basic_api_key']}:{credentials['basic_secret_key']}".encode()).decode(),
            "admin_basic": "Basic " + base64.b64encode(
                f"{credentials['admin_api_key']}:{credentials['admin_secret_key']}".encode()).decode(),
        }
    finally:
        session.close()
        app.close()


def _valid_authorization(path: str, conformance: dict[str, Any]) -> str | None:
    if path.startswith("/oauth/"):
        return str(conformance["client_basic"])
    if path.startswith("/admin/"):  # an owner: every admin operation runs past its permission check
        return str(conformance["admin_basic"])
    if path in ("/api/v1/whoami", "/api/v1/accounts") or path.startswith("/api/v1/payments"):
        return str(conformance["bearer"])
    return None


#: Generated requests per operation (each sent without and with valid credentials). The default keeps the suite
#: quick; a deeper search is `BANKGATE_CONFORMANCE_EXAMPLES=1000 scripts/test tests/test_openapi_conformance.py`.
EXAMPLES = int(os.environ.get("BANKGATE_CONFORMANCE_EXAMPLES", "100"))

OPERATIONS = [
    (method.upper(), path)
    for path, item in openapi_document(ISSUER)["paths"].items()
    for method in item
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_answer_is_documented(method: str, path: str, conformance: dict[str, Any]) -> None:
    operation = conformance["schema"][path][method]
    session = conformance["session"]
    authorization = _valid_authorization(path, conformance)

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        case.call_and_validate(session=session, checks=CHECKS)
        if authorization is not None:
            case.call_and_validate(session=session, headers={"Authorization": authorization}, checks=CHECKS)

    call()
