"""Editing clients and users after onboarding: update, disable, enable, delete.

At the service level (`services.admin`, the use cases every entrance calls), with the app in process (its lifespan,
over `httpx.ASGITransport`) to see what a running server makes of the tokens issued before, and through the command
line in process (Typer's runner). A disable or delete refuses every token issued until then, for good; an enabled
client or user gets new tokens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bankgate.admin import Actor, AdminError, NotFoundError
from bankgate.app import BankgateApp, create_app
from bankgate.cli import app as cli_app
from bankgate.config import Settings
from bankgate.credentials.clients import ClientAuthError, ClientStateError, IssuedSecret
from bankgate.credentials.users import PassphraseError, UserStateError
from bankgate.services import Services
from conftest import basic

ISSUER = "http://bankgate.test"
WHOAMI = "/api/v1/whoami"
AUTHORIZE = "/api/v1/authorizations/authorize"
PASSWORD = "Blue-Harbour-7-Lantern"
OPS = Actor("ops", "api", "198.51.100.7")
#: Every process refuses a disabled subject's tokens within one sync interval (1 s intended, 3 s allowed).
DEADLINE = 3.0


@dataclass
class Running:
    http: httpx.AsyncClient
    certificate: list[str]

    async def token(self, client: IssuedSecret) -> httpx.Response:
        return await self.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(client.client.api_key, client.secret_key)},
        )

    async def bearer(self, client: IssuedSecret) -> dict[str, str]:
        response = await self.token(client)
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def user_bearer(self, username: str, certificate_pem: str) -> httpx.Response:
        self.certificate[:] = [certificate_pem]
        credentials = base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()
        return await self.http.get(AUTHORIZE, headers={"Authorization": f"Basic {credentials}"})

    async def refused(self, headers: dict[str, str]) -> bool:
        response = await self.http.get(WHOAMI, headers=headers)
        return response.status_code == 401 and "revoked" in response.json().get("error_description", "")


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Running]:
    """The app in process with its lifespan; requests present `Running.certificate` (if set) as the mutual-TLS
    client certificate, through the ASGI TLS extension."""
    app = create_app(settings, issuer=ISSUER)
    assert isinstance(app, BankgateApp)
    certificate: list[str] = []

    async def with_tls(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and certificate:
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}),
                                             "tls": {"client_cert_chain": list(certificate)}}}
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=with_tls)
    async with (app.starlette.router.lifespan_context(app.starlette),
                httpx.AsyncClient(transport=transport, base_url=ISSUER) as http):
        yield Running(http, certificate)


async def within(deadline: float, check: Callable[[], Awaitable[bool]]) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"still not so after {time.monotonic() - started:.2f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def onboarded_user(services: Services) -> tuple[str, str]:
    new = await services.admin.users.create(OPS, "API Testuser", scopes=["app_1"])
    await services.admin.users.reset_password(OPS, new.user.username, new.initial_passphrase, PASSWORD)
    issued, _ = await services.admin.certs.issue(OPS, new.user.username, lambda issued: None)
    return new.user.username, issued.certificate_pem


async def events(services: Services, prefix: str) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    return [(e.event, e.actor, e.source_ip, dict(e.detail)) for e in await services.audit.tail(100, event=prefix)]


# -- clients, at the service level -------------------------------------------------------------------------------


async def test_client_update_renames_and_replaces_scopes_and_audits_both(services: Services) -> None:
    issued = await services.admin.clients.create(OPS, "Acme", ["app_1", "app_2"])
    api_key = issued.client.api_key

    updated = await services.admin.clients.update(OPS, api_key, name=" Acme shop ", scopes=["app_3", "app_1"])

    assert (updated.name, updated.scopes, updated.status) == ("Acme shop", ("app_3", "app_1"), "active")
    assert await services.clients.get(api_key) == updated
    audited = await events(services, "client.updated")
    assert audited == [("client.updated", "api:ops", "198.51.100.7", {
        "api_key": api_key, "client_id": updated.id, "name": "Acme shop", "previous_name": "Acme",
        "scopes": ["app_3", "app_1"], "previous_scopes": ["app_1", "app_2"]})]


async def test_client_update_refuses_nothing_to_change_bad_scopes_and_unknown_keys(services: Services) -> None:
    issued = await services.admin.clients.create(OPS, "Acme", ["app_1"])
    with pytest.raises(ValueError, match="nothing to change"):
        await services.admin.clients.update(OPS, issued.client.api_key)
    with pytest.raises(ValueError, match="'bad scope' is not a valid application ID"):
        await services.admin.clients.update(OPS, issued.client.api_key, scopes=["bad scope"])
    with pytest.raises(ValueError, match="name of 1 to 200 characters"):
        await services.admin.clients.update(OPS, issued.client.api_key, name="  ")
    with pytest.raises(LookupError, match="no client with API key bk_test_nope"):
        await services.admin.clients.update(OPS, "bk_test_nope", name="x")
    assert (await services.clients.get(issued.client.api_key)).scopes == ("app_1",)
    assert await events(services, "client.updated") == []


async def test_a_disabled_client_gets_no_token_until_enabled_and_its_old_tokens_stay_refused(
    services: Services, settings: Settings
) -> None:
    issued = await services.admin.clients.create(OPS, "Acme", ["app_1"])
    api_key = issued.client.api_key
    async with serving(settings) as server:
        before = await server.bearer(issued)
        assert (await server.http.get(WHOAMI, headers=before)).status_code == 200

        disabled = await services.admin.clients.disable(OPS, api_key)  # another Services: as the command line

        assert disabled.status == "disabled"
        await within(DEADLINE, lambda: server.refused(before))
        await within(DEADLINE, lambda: _token_refused(server, issued))
        with pytest.raises(ClientAuthError, match="client_disabled"):
            await services.clients.authenticate(api_key, issued.secret_key)

        # At once: enabling waits for the disable's cut-off, so the tokens it gets next are not under it.
        assert (await services.admin.clients.enable(OPS, api_key)).status == "active"

        await within(DEADLINE, lambda: _token_ok(server, issued))
        fresh = await server.bearer(issued)
        assert (await server.http.get(WHOAMI, headers=fresh)).status_code == 200
        assert await server.refused(before), "a token issued before the disable came back"
    assert [e[0] for e in await events(services, "client.")] == ["client.created", "client.disabled",
                                                                 "client.enabled"]


async def test_switching_the_auth_mode_moves_the_client_between_tokens_and_basic_and_is_audited(
    services: Services, settings: Settings
) -> None:
    issued = await services.admin.clients.create(OPS, "Acme", ["app_1"])
    api_key = issued.client.api_key
    as_basic = {"Authorization": basic(api_key, issued.secret_key)}
    async with serving(settings) as server:
        token = await server.bearer(issued)
        assert (await server.http.get(WHOAMI, headers=as_basic)).status_code == 401, "an oauth2 client has no Basic"

        switched = await services.admin.clients.update(OPS, api_key, auth_mode="basic")

        assert switched.auth_mode == "basic"
        await within(DEADLINE, lambda: server.refused(token))
        await within(DEADLINE, lambda: _status_is(server.http.get(WHOAMI, headers=as_basic), 200))
        assert (await server.token(issued)).status_code == 400, "a basic client gets no token"

        assert (await services.admin.clients.update(OPS, api_key, auth_mode="oauth2")).auth_mode == "oauth2"
        await within(DEADLINE, lambda: _status_is(server.http.get(WHOAMI, headers=as_basic), 401))
        await within(DEADLINE, lambda: _token_ok(server, issued))
    with pytest.raises(ValueError, match="auth mode 'magic' is not one of: oauth2, basic"):
        await services.admin.clients.update(OPS, api_key, auth_mode="magic")
    audited = [detail for *_, detail in await events(services, "client.updated")]
    assert [(d["previous_auth_mode"], d["auth_mode"]) for d in audited] == [("oauth2", "basic"), ("basic", "oauth2")]


async def _status_is(answer: Awaitable[httpx.Response], status: int) -> bool:
    return (await answer).status_code == status


async def _token_ok(server: Running, issued: IssuedSecret) -> bool:
    return (await server.token(issued)).status_code == 201


async def _token_refused(server: Running, issued: IssuedSecret) -> bool:
    response = await server.token(issued)
    return response.status_code == 401 and response.json()["error"] == "invalid_client"


async def test_a_deleted_client_is_a_tombstone_whose_tokens_and_secrets_are_gone(
    services: Services, settings: Settings
) -> None:
    issued = await services.admin.clients.create(OPS, "Acme", ["app_1"])
    api_key = issued.client.api_key
    kept = await services.admin.clients.create(OPS, "Other", ["app_1"])
    await services.admin.ips.allow(OPS, api_key, "127.0.0.0/8")
    async with serving(settings) as server:
        before = await server.bearer(issued)

        deleted = await services.admin.clients.delete(OPS, api_key)

        await within(DEADLINE, lambda: server.refused(before))
        await within(DEADLINE, lambda: _token_refused(server, issued))
    assert deleted.status == "deleted" and deleted.secrets == () and deleted.revoked_at is not None
    assert [c.api_key for c in await services.admin.clients.list()] == [kept.client.api_key]
    assert [c.api_key for c in await services.admin.clients.list(deleted=True)] == [api_key, kept.client.api_key]
    assert await services.allowlist.list("client", deleted.id) == []
    for change in (services.admin.clients.enable, services.admin.clients.disable):
        with pytest.raises(ClientStateError, match=f"client {api_key} is deleted; create a new client instead"):
            await change(OPS, api_key)
    with pytest.raises(ValueError, match="is deleted; create a new client"):
        await services.admin.clients.rotate_secret(OPS, api_key, 0)
    assert (await services.admin.clients.delete(OPS, api_key)).status == "deleted"  # idempotent
    trail = await events(services, "client.")
    assert [e[0] for e in trail if e[3]["api_key"] == api_key] == ["client.created", "client.deleted",
                                                                   "client.deleted"]


async def test_enabling_a_revoked_client_is_refused_with_what_to_do(services: Services) -> None:
    issued = await services.admin.clients.create(OPS, "Acme", ["app_1"])
    await services.admin.clients.revoke(OPS, issued.client.api_key)
    with pytest.raises(ClientStateError, match="is revoked; create a new client instead"):
        await services.admin.clients.enable(OPS, issued.client.api_key)


async def test_taking_a_scope_away_refuses_the_tokens_issued_before_adding_one_does_not(
    services: Services, settings: Settings
) -> None:
    issued = await services.admin.clients.create(OPS, "Acme", ["app_1", "app_2"])
    api_key = issued.client.api_key
    async with serving(settings) as server:
        first = await server.bearer(issued)
        await services.admin.clients.update(OPS, api_key, scopes=["app_1", "app_2", "app_3"])
        await asyncio.sleep(settings.revocation_sync_interval + 0.5)
        assert not await server.refused(first)

        await services.admin.clients.update(OPS, api_key, scopes=["app_1"])

        await within(DEADLINE, lambda: server.refused(first))


# -- users, at the service level ---------------------------------------------------------------------------------


async def test_user_update_disable_enable_and_their_audit_events(services: Services, settings: Settings) -> None:
    username, certificate_pem = await onboarded_user(services)
    async with serving(settings) as server:
        response = await server.user_bearer(username, certificate_pem)
        assert response.status_code == 200, response.text
        before = {"Authorization": f"Bearer {response.json()['access_token']}"}

        updated = await services.admin.users.update(OPS, username, name="Renamed", scopes=["app_1", "app_2"])
        assert (updated.name, updated.scopes) == ("Renamed", ("app_1", "app_2"))
        await services.admin.users.disable(OPS, username)

        await within(DEADLINE, lambda: server.refused(before))
        await within(DEADLINE, lambda: _user_token_refused(server, username, certificate_pem))

        await services.admin.users.enable(OPS, username)
        await within(DEADLINE, lambda: _user_token_ok(server, username, certificate_pem))
        response = await server.user_bearer(username, certificate_pem)
        fresh = {"Authorization": f"Bearer {response.json()['access_token']}"}
        assert (await server.http.get(WHOAMI, headers=fresh)).status_code == 200
        assert await server.refused(before), "a token issued before the disable came back"
    trail = await events(services, "user.")
    assert [e[0] for e in trail] == ["user.created", "user.password_reset", "user.updated", "user.disabled",
                                     "user.enabled"]
    assert trail[2][3] == {"username": username, "user_id": updated.id, "name": "Renamed",
                           "previous_name": "API Testuser", "scopes": ["app_1", "app_2"],
                           "previous_scopes": ["app_1"]}
    assert {e[1] for e in trail} == {"api:ops"}


async def _user_token_ok(server: Running, username: str, certificate_pem: str) -> bool:
    return (await server.user_bearer(username, certificate_pem)).status_code == 200


async def _user_token_refused(server: Running, username: str, certificate_pem: str) -> bool:
    return (await server.user_bearer(username, certificate_pem)).status_code == 401


async def test_a_disabled_user_cannot_reset_its_passphrase_or_get_a_certificate(services: Services) -> None:
    new = await services.admin.users.create(OPS, "API Testuser")
    await services.admin.users.disable(OPS, new.user.username)
    with pytest.raises(PassphraseError):
        await services.admin.users.reset_password(OPS, new.user.username, new.initial_passphrase, PASSWORD)
    with pytest.raises(ValueError, match="is disabled; enable the user"):
        await services.admin.certs.issue(OPS, new.user.username, lambda issued: None)


async def test_a_deleted_user_loses_tokens_certificates_and_allow_list_but_keeps_its_trail(
    services: Services, settings: Settings
) -> None:
    username, certificate_pem = await onboarded_user(services)
    user = await services.admin.users.get(username)
    await services.admin.ips.allow(OPS, username, "127.0.0.0/8")
    async with serving(settings) as server:
        response = await server.user_bearer(username, certificate_pem)
        before = {"Authorization": f"Bearer {response.json()['access_token']}"}

        deleted = await services.admin.users.delete(OPS, username)

        await within(DEADLINE, lambda: server.refused(before))
        await within(DEADLINE, lambda: _user_token_refused(server, username, certificate_pem))
    assert deleted.status == "deleted" and deleted.password_hash is None and deleted.passphrase_hash is None
    assert [c.status for c in await services.admin.certs.list(username)] == ["revoked"]
    assert await services.allowlist.list("user", user.id) == []
    assert await services.admin.users.list() == []
    assert [u.username for u in await services.admin.users.list(deleted=True)] == [username]
    for change in (services.admin.users.enable, services.admin.users.new_passphrase):
        with pytest.raises(UserStateError, match=f"user {username} is deleted; create a new user instead"):
            await change(OPS, username)
    with pytest.raises(ValueError, match=f"user {username} is deleted; create a new user instead"):
        await services.admin.certs.issue(OPS, username, lambda issued: None)
    trail = [e for e in await events(services, "") if e[0].startswith(("user.", "cert."))]
    assert [e[0] for e in trail][-2:] == ["cert.revoked", "user.deleted"]
    serials = [c.serial for c in await services.admin.certs.list(username)]
    assert trail[-1][3] == {"username": username, "user_id": user.id, "certificates_revoked": serials}


async def test_unknown_users_are_named_in_the_error(services: Services) -> None:
    for change in (services.admin.users.disable, services.admin.users.enable, services.admin.users.delete):
        with pytest.raises(NotFoundError, match="no user named ghost; see `bankgate users list`"):
            await change(OPS, "ghost")
    with pytest.raises(AdminError, match="no user named ghost"):
        await services.admin.users.update(OPS, "ghost", name="x")


# -- audit queries ----------------------------------------------------------------------------------------------


async def test_audit_tail_filters_by_event_kind_actor_and_time(services: Services) -> None:
    alice, bob = Actor("alice"), Actor("bob", "console")
    await services.admin.clients.create(alice, "one", ["app_1"])
    middle = time.time()
    await asyncio.sleep(0.01)
    await services.admin.users.create(bob, "Two")

    assert [e.event for e in await services.admin.audit.tail(event="client.")] == ["client.created"]
    assert [e.actor for e in await services.admin.audit.tail(actor="console:bob")] == ["console:bob"]
    assert [e.event for e in await services.admin.audit.tail(since=middle)] == ["user.created"]
    assert "user.created" not in [e.event for e in await services.admin.audit.tail(until=middle)]
    with pytest.raises(ValueError, match="--until must be later than --since"):
        await services.admin.audit.tail(since=middle, until=middle)


# -- the command line, in process ----------------------------------------------------------------------------------


def bankgate(settings: Settings, *args: str) -> Any:
    """`bankgate ARGS --json` on the test's database, in process; its JSON output."""
    result = CliRunner().invoke(
        cli_app, [*args, "--json", "--data-dir", str(settings.data_dir), "--database-url", settings.database_url or ""],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def bankgate_error(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(
        cli_app, [*args, "--data-dir", str(settings.data_dir), "--database-url", settings.database_url or ""],
        catch_exceptions=False,
    )
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr.strip()


async def test_clients_update_disable_enable_delete_on_the_command_line(
    services: Services, settings: Settings
) -> None:
    issued = await services.admin.clients.create(OPS, "Acme", ["app_1", "app_2"])
    api_key = issued.client.api_key
    async with serving(settings) as server:
        before = await server.bearer(issued)

        def run(*args: str) -> Awaitable[Any]:
            return asyncio.to_thread(bankgate, settings, *args)

        shown = await run("clients", "update", api_key, "--name", "Acme shop", "--scope", "app_2")
        assert (shown["name"], shown["scopes"], shown["status"]) == ("Acme shop", ["app_2"], "active")
        assert (await run("clients", "disable", api_key))["status"] == "disabled"
        await within(DEADLINE, lambda: server.refused(before))
        assert (await run("clients", "enable", api_key))["status"] == "active"
        assert (await run("clients", "delete", api_key))["status"] == "deleted"
        assert await run("clients", "list") == []
        assert [c["status"] for c in await run("clients", "list", "--deleted")] == ["deleted"]
        message = await asyncio.to_thread(bankgate_error, settings, "clients", "enable", api_key)
        assert message == f"error: client {api_key} is deleted; create a new client instead"
    actors = {e.actor for e in await services.audit.tail(event="client.") if e.event != "client.created"}
    assert actors == {Actor.local_user().label}


async def test_users_update_disable_enable_delete_on_the_command_line(services: Services, settings: Settings) -> None:
    username, _ = await onboarded_user(services)

    def run(*args: str) -> Any:
        return bankgate(settings, *args)

    shown = await asyncio.to_thread(run, "users", "update", username, "--scope", "app_1", "--scope", "app_9")
    assert shown["scopes"] == ["app_1", "app_9"]
    assert (await asyncio.to_thread(run, "users", "disable", username))["status"] == "disabled"
    assert (await asyncio.to_thread(run, "users", "enable", username))["status"] == "active"
    assert (await asyncio.to_thread(run, "users", "delete", username))["status"] == "deleted"
    assert [c["status"] for c in await asyncio.to_thread(run, "certs", "list", username)] == ["revoked"]
    message = await asyncio.to_thread(bankgate_error, settings, "users", "disable", "ghost")
    assert message == "error: no user named ghost; see `bankgate users list`"


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(cli_app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, "bankgate 0.1.0\n")


def test_shell_completion_is_offered() -> None:
    result = CliRunner().invoke(cli_app, ["--help"])
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_a_typo_in_the_toml_file_names_the_key_and_the_setting_meant(tmp_path: Path) -> None:
    (tmp_path / "bankgate.toml").write_text('isuer = "https://auth.example"\ntoken_ttl = 600\n')
    result = CliRunner().invoke(cli_app, ["clients", "list", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: unknown setting 'isuer' in {tmp_path / 'bankgate.toml'}; "
                                     "did you mean 'issuer'?")


def test_a_toml_key_like_no_setting_lists_the_settings(tmp_path: Path) -> None:
    (tmp_path / "bankgate.toml").write_text('zzz = 1\n')
    result = CliRunner().invoke(cli_app, ["init", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "unknown setting 'zzz'" in result.stderr
    assert "settings are: " in result.stderr and "token_ttl" in result.stderr
    assert not (tmp_path / "master.key").exists()
