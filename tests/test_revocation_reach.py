"""Revocation reaches the tokens already issued, and writes take effect at once.

In process (the app with its lifespan, over `httpx.ASGITransport`; a second `Services` on the same database plays
the command line): a revoked client's, user's or certificate's tokens are refused by every API route, at once on the
server that revoked it and within a sync interval elsewhere; a secret rotated elsewhere works on the next request.
Then two real `bankgate serve` processes on one database, SQLite and PostgreSQL: `bankgate clients revoke` through
the command line, and the other process refuses the token within the deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bankgate.app import BankgateApp, create_app
from bankgate.cli import app as cli_app
from bankgate.config import Settings
from bankgate.runtime import Runtime
from bankgate.services import Services
from conftest import Server, basic

ISSUER = "http://bankgate.test"
WHOAMI = "/api/v1/whoami"
PAYMENTS = "/api/v1/payments"
AUTHORIZE = "/api/v1/authorizations/authorize"
ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 2026-001"}
PASSWORD = "Blue-Harbour-7-Lantern"
#: What the issue holds us to: every process refuses a revoked subject's tokens within 3 s (1 s intended).
DEADLINE = 3.0


@dataclass
class Running:
    runtime: Runtime
    http: httpx.AsyncClient
    certificate: list[str]  # PEM of the client certificate the next requests present (mutual TLS), if any

    async def token(self, client: Any, secret: str | None = None) -> httpx.Response:
        return await self.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(client.client.api_key, secret or client.secret_key)},
        )

    async def bearer(self, client: Any) -> dict[str, str]:
        response = await self.token(client)
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def pay(self, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": str(uuid.uuid4())})


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Running]:
    """The bankgate app in process, started with its lifespan; requests present `Running.certificate` (if set) as
    the mutual-TLS client certificate, through the ASGI TLS extension."""
    app = create_app(settings, issuer=ISSUER)
    assert isinstance(app, BankgateApp)
    certificate: list[str] = []

    async def with_tls(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and certificate:
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}),
                                             "tls": {"client_cert_chain": list(certificate)}}}
        await app(scope, receive, send)

    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=with_tls)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
            yield Running(app.state.runtime, http, certificate)


async def within(deadline: float, check: Callable[[], Awaitable[bool]]) -> float:
    """Poll `check` until it holds; the seconds it took, or fail saying how long it was tried."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > deadline:
            raise AssertionError(f"still not so after {time.monotonic() - started:.2f} s")
        await asyncio.sleep(0.05)


def _refused_as_revoked(response: httpx.Response) -> bool:
    return response.status_code == 401 and "revoked" in response.json().get("error_description", "")


# -- clients ----------------------------------------------------------------------------------------------------


async def test_revoking_a_client_refuses_its_tokens_on_whoami_and_payments_at_once(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("leaked", ["app_1"])
    async with serving(settings) as server:
        headers = await server.bearer(client)
        assert (await server.http.get(WHOAMI, headers=headers)).status_code == 200
        assert (await server.pay(headers)).status_code == 201

        await server.runtime.services.clients.revoke(client.client.api_key)  # the server's own write: at once

        for response in (await server.http.get(WHOAMI, headers=headers), await server.pay(headers)):
            assert _refused_as_revoked(response), response.text
            assert response.json()["error"] == "invalid_token"
            assert response.json()["error_description"] == "the token has been revoked"


async def test_a_revoked_client_may_still_introspect_and_revoke_its_own_tokens_but_get_none(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("leaked", ["app_1"])
    async with serving(settings) as server:
        token = (await server.token(client)).json()["access_token"]
        credentials = {"Authorization": basic(client.client.api_key, client.secret_key)}
        introspected = await server.http.post("/oauth/introspect", data={"token": token}, headers=credentials)
        assert introspected.json()["active"] is True

        await services.clients.revoke(client.client.api_key)  # as `bankgate clients revoke` does

        introspected = await server.http.post("/oauth/introspect", data={"token": token}, headers=credentials)
        assert introspected.status_code == 200, introspected.text
        assert introspected.json() == {"active": False}
        revoked = await server.http.post("/oauth/revoke", data={"token": token}, headers=credentials)
        assert revoked.status_code == 200, revoked.text
        assert await server.runtime.services.revocations.is_revoked(server.runtime.tokens.read(token)["jti"])

        async def no_token() -> bool:
            return (await server.token(client)).status_code == 401

        await within(DEADLINE, no_token)  # this server learns of the revocation on its next sync
        refused = await server.token(client)
        assert refused.json()["error"] == "invalid_client" and "revoked" in refused.json()["error_description"]
        wrong = await server.http.post("/oauth/introspect", data={"token": token},
                                       headers={"Authorization": basic(client.client.api_key, "sk_test_" + "x" * 43)})
        assert wrong.status_code == 401  # a revoked client's key pair must still be the right one


async def test_a_client_revoked_by_another_process_is_refused_within_a_second(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("leaked", ["app_1"])
    async with serving(settings) as server:
        headers = await server.bearer(client)
        assert (await server.http.get(WHOAMI, headers=headers)).status_code == 200

        await services.clients.revoke(client.client.api_key)  # another Services: the command line's

        async def refused() -> bool:
            return _refused_as_revoked(await server.http.get(WHOAMI, headers=headers))

        took = await within(DEADLINE, refused)
        assert took < 1.5, f"refused after {took:.2f} s"
        assert _refused_as_revoked(await server.pay(headers))


# -- M2M users and their certificates --------------------------------------------------------------------------


async def _onboarded_user(services: Services) -> tuple[str, Any]:
    new = await services.users.create("API Testuser", scopes=["app_1"])
    await services.users.reset_password(new.user.username, new.initial_passphrase, PASSWORD)
    issued = await services.pki.issue(await services.users.get(new.user.username))
    return new.user.username, issued


async def _user_token(server: Running, username: str, issued: Any) -> dict[str, str]:
    server.certificate[:] = [issued.certificate_pem]
    credentials = base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()
    response = await server.http.get(AUTHORIZE, headers={"Authorization": f"Basic {credentials}"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_revoking_a_certificate_refuses_the_tokens_bound_to_it(services: Services, settings: Settings) -> None:
    username, issued = await _onboarded_user(services)
    async with serving(settings) as server:
        headers = await _user_token(server, username, issued)
        whoami = await server.http.get(WHOAMI, headers=headers)
        assert whoami.status_code == 200 and whoami.json()["certificate_bound"] is True, whoami.text
        assert (await server.pay(headers)).status_code == 201

        await server.runtime.services.pki.revoke(issued.serial)

        for response in (await server.http.get(WHOAMI, headers=headers), await server.pay(headers)):
            assert _refused_as_revoked(response), response.text


async def test_users_revoke_on_the_command_line_refuses_the_users_tokens(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    username, issued = await _onboarded_user(services)
    async with serving(settings) as server:
        headers = await _user_token(server, username, issued)
        assert (await server.http.get(WHOAMI, headers=headers)).status_code == 200

        result = await asyncio.to_thread(
            CliRunner().invoke, cli_app,
            ["users", "revoke", username, "--json", "--data-dir", str(tmp_path),
             "--database-url", settings.database_url or ""],
        )
        assert result.exit_code == 0, result.output
        assert '"status": "revoked"' in result.output

        async def refused() -> bool:
            return _refused_as_revoked(await server.http.get(WHOAMI, headers=headers))

        took = await within(DEADLINE, refused)
        assert took < 1.5, f"refused after {took:.2f} s"
        assert _refused_as_revoked(await server.pay(headers))
    events = await services.audit.tail(event="user.revoked")
    assert [e.detail["username"] for e in events] == [username]


# -- writes take effect at once ----------------------------------------------------------------------------------


async def test_a_secret_rotated_by_another_process_works_on_the_very_next_request(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("rotating", ["app_1"])
    async with serving(settings) as server:
        assert (await server.token(client)).status_code == 201  # the server now holds the client record

        rotated = await services.clients.rotate_secret(client.client.api_key, overlap=0)  # the command line

        response = await server.token(client, rotated.secret_key)
        assert response.status_code == 201, response.text
        assert (await server.token(client)).status_code == 401  # and the old secret ended


async def test_refusals_from_the_cache_are_rechecked_at_most_once_per_key_per_second(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("attacked", ["app_1"])
    async with serving(settings) as server:
        registry = server.runtime.services.clients
        await registry.authenticate(client.client.api_key, client.secret_key)  # cached
        reads: list[str] = []
        load = registry._load

        async def counted(api_key: str) -> Any:
            reads.append(api_key)
            return await load(api_key)

        registry._load = counted  # type: ignore[method-assign]
        started = time.monotonic()
        for _ in range(200):
            with pytest.raises(Exception, match="wrong_secret"):
                await registry.authenticate(client.client.api_key, "sk_test_" + "w" * 43)
        seconds = time.monotonic() - started
        assert 1 <= len(reads) <= 2 + seconds, f"{len(reads)} database reads for 200 wrong secrets in {seconds:.2f} s"


async def test_an_allow_list_change_by_another_process_applies_within_a_second(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("listed", ["app_1"])
    async with serving(settings) as server:
        assert (await server.token(client)).status_code == 201  # loopback: allowed while the list is empty

        await services.allowlist.allow("client", client.client.id, "203.0.113.0/24")

        async def refused() -> bool:
            return (await server.token(client)).status_code == 403

        took = await within(DEADLINE, refused)
        assert took < 1.5, f"applied after {took:.2f} s"

        await server.runtime.services.allowlist.remove("client", client.client.id, "203.0.113.0/24")
        assert (await server.token(client)).status_code == 201  # the server's own change: at once


async def test_the_change_feed_tells_the_writing_process_at_once_and_another_at_its_next_sync(
    services: Services, settings: Settings
) -> None:
    server = await Services.open(settings)  # a server process's services, apart from the writer's
    try:
        await server.changes.sync()
        here: list[tuple[str, str]] = []
        there: list[tuple[str, str]] = []
        for kind in ("client", "user", "cert", "allow"):
            services.changes.subscribe(kind, lambda key, kind=kind: here.append((kind, key)))
            server.changes.subscribe(kind, lambda key, kind=kind: there.append((kind, key)))

        client = await services.clients.create("fed", ["app_1"])
        await services.clients.rotate_secret(client.client.api_key, overlap=0)
        new = await services.users.create("Feed User", scopes=["app_1"])
        await services.users.new_passphrase(new.user.username)
        issued = await services.pki.issue(new.user)
        await services.pki.revoke(issued.serial)
        await services.allowlist.allow("user", new.user.id, "203.0.113.0/24")
        await services.allowlist.remove("user", new.user.id, "203.0.113.0/24")
        await services.users.revoke(new.user.username)
        await services.clients.revoke(client.client.api_key)
        der_sha256 = hashlib.sha256(ssl.PEM_cert_to_DER_cert(issued.certificate_pem)).hexdigest()
        expected = [("client", client.client.api_key)] * 2 + [("user", new.user.username)] * 2 + [
            ("cert", der_sha256), ("allow", f"user:{new.user.id}"), ("allow", f"user:{new.user.id}"),
            ("user", new.user.username), ("client", client.client.api_key)]
        assert here == expected  # at once, in the order written
        assert there == []

        await server.changes.sync()
        assert there == expected
        await server.changes.sync()
        assert there == expected  # each change once
        assert await server.changes.purge(now=time.time() + 2 * 3600) == len(expected)
    finally:
        await server.close()


# -- two real server processes on one database -------------------------------------------------------------------


def _two_processes_refuse_a_revoked_clients_token(first: Server, second: Server) -> None:
    client = first.create_client("app_1")
    token = first.token(client).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert second.http.get(WHOAMI, headers=headers).status_code == 200  # the other process accepts it

    first.cli("clients", "revoke", client["api_key"])
    revoked_at = time.monotonic()
    while True:
        response = second.http.get(WHOAMI, headers=headers)
        took = time.monotonic() - revoked_at
        if response.status_code == 401:
            assert response.json()["error_description"] == "the token has been revoked"
            break
        assert response.status_code == 200, response.text
        assert took < DEADLINE, f"process B still accepts the revoked client's token {took:.2f} s later"
        time.sleep(0.05)
    payment = second.http.post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": str(uuid.uuid4())})
    assert payment.status_code == 401, f"{payment.status_code} {payment.text} ({took:.2f} s after the revocation)"


_SHARED = {"BANKGATE_ISSUER": ISSUER, "BANKGATE_CLIENT_CACHE_TTL": "60"}


def test_two_processes_on_sqlite_refuse_a_revoked_clients_token(server_factory: Any, tmp_path: Path) -> None:
    first = server_factory(_SHARED, data_dir=tmp_path / "shared")
    second = server_factory(_SHARED, data_dir=tmp_path / "shared")
    _two_processes_refuse_a_revoked_clients_token(first, second)


def test_two_processes_on_postgresql_refuse_a_revoked_clients_token(
    server_factory: Any, postgres_url: str, tmp_path: Path
) -> None:
    env = {**_SHARED, "BANKGATE_DATABASE_URL": postgres_url}
    first = server_factory(env, data_dir=tmp_path / "shared")
    second = server_factory(env, data_dir=tmp_path / "shared")
    _two_processes_refuse_a_revoked_clients_token(first, second)
