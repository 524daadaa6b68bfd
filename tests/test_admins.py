"""Administrators (credentials/admins.py, admin/admins.py, `bankgate admins`) and the role policy (admin/policy.py)."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bankgate.admin import Actor, AdminError, ConflictError, NotFoundError
from bankgate.admin.policy import (
    PERMISSIONS,
    AdminPrincipal,
    Forbidden,
    InvalidAdminScope,
    permissions_for,
    require,
    scopes_for,
)
from bankgate.cli import app as cli_app
from bankgate.clock import ManualClock
from bankgate.credentials.admins import (
    AUTHENTICATION_FAILED,
    AdminAuthError,
    AdminStateError,
    AdminThrottled,
    totp_code,
)
from bankgate.credentials.users import WeakPasswordError
from bankgate.services import Services
from bankgate.store import schema

ACTOR = Actor("alice", "cli", "192.0.2.7")
PASSWORD = "Quiet-Harbour-Lantern-42"


def _totp_secret(enrolment_uri: str) -> bytes:
    secret = parse_qs(urlparse(enrolment_uri).query)["secret"][0]
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


def _code(secret: bytes, clock: ManualClock, offset: int = 0) -> str:
    return totp_code(secret, int(clock.now()) // 30 + offset)


async def test_rfc6238_reference_vectors() -> None:
    # RFC 6238 Appendix B, SHA-1, last 6 digits of the 8-digit values.
    secret = b"12345678901234567890"
    assert totp_code(secret, 59 // 30) == "287082"
    assert totp_code(secret, 1111111109 // 30) == "081804"
    assert totp_code(secret, 20000000000 // 30) == "353130"


async def test_create_gives_a_key_pair_of_the_admin_family_stored_hashed(services: Services) -> None:
    issued = await services.admin.admins.create(ACTOR, "ops-owner", "owner")
    assert issued.admin.api_key.startswith("bka_test_")
    assert issued.secret_key.startswith("ska_test_")
    assert issued.secret_key not in repr(issued)
    async with services.store.connect() as conn:
        row = (await conn.execute(sa.select(schema.admins))).mappings().one()
    assert row["secret_hash"] == services.vault.hash_secret(issued.secret_key)
    assert issued.secret_key not in json.dumps({k: str(v) for k, v in row.items()})
    assert row["version"] == 1 and row["status"] == "active" and row["role"] == "owner"
    assert (await services.admins.authenticate_secret(issued.admin.api_key, issued.secret_key)).name == "ops-owner"
    await services.audit.flush()
    events = await services.audit.tail(10, event="admin.created")
    assert events[-1].actor == "cli:alice" and events[-1].source_ip == "192.0.2.7"
    assert events[-1].detail["role"] == "owner" and issued.secret_key not in json.dumps(events[-1].detail)


async def test_names_are_unique_and_roles_known(services: Services) -> None:
    await services.admin.admins.create(ACTOR, "ops", "auditor")
    with pytest.raises(ValueError, match="exists already"):
        await services.admin.admins.create(ACTOR, "ops", "owner")
    with pytest.raises(ValueError, match="not one of: owner, integration-manager, auditor"):
        await services.admin.admins.create(ACTOR, "someone", "root")
    with pytest.raises(ValueError, match="lower-case letters"):
        await services.admin.admins.create(ACTOR, "Bad Name", "owner")


async def test_unknown_key_and_wrong_secret_fail_alike(services: Services) -> None:
    issued = await services.admin.admins.create(ACTOR, "ops", "owner")
    with pytest.raises(AdminAuthError) as unknown:
        await services.admins.authenticate_secret("bka_test_" + "x" * 24, issued.secret_key)
    with pytest.raises(AdminAuthError) as wrong:
        await services.admins.authenticate_secret(issued.admin.api_key, "ska_test_wrong")
    assert str(unknown.value) == str(wrong.value) == AUTHENTICATION_FAILED
    assert (unknown.value.reason, wrong.value.reason) == ("unknown_admin", "wrong_secret")


async def test_disable_enable_delete_and_rotation(services: Services) -> None:
    admins = services.admin.admins
    issued = await admins.create(ACTOR, "ops", "integration-manager")
    key, secret = issued.admin.api_key, issued.secret_key
    disabled = await admins.disable(ACTOR, "ops")
    assert disabled.status == "disabled" and disabled.version == 2
    with pytest.raises(AdminAuthError) as refused:
        await services.admins.authenticate_secret(key, secret)
    assert refused.value.reason == "admin_disabled"
    await admins.enable(ACTOR, "ops")
    rotated = await admins.rotate_secret(ACTOR, "ops")
    with pytest.raises(AdminAuthError):
        await services.admins.authenticate_secret(key, secret)
    assert (await services.admins.authenticate_secret(key, rotated.secret_key)).version == 4
    deleted = await admins.delete(ACTOR, "ops")
    assert deleted.status == "deleted" and deleted.secret_hash is None
    with pytest.raises(AdminStateError, match="deleted; create a new one"):
        await admins.enable(ACTOR, "ops")
    with pytest.raises(NotFoundError):
        await admins.disable(ACTOR, "nobody")
    assert [a.name for a in await admins.list()] == []
    assert [a.name for a in await admins.list(deleted=True)] == ["ops"]


async def test_a_change_at_a_stale_version_writes_nothing(services: Services) -> None:
    admins = services.admin.admins
    read = (await admins.create(ACTOR, "versioned", "auditor")).admin
    changed = await admins.set_role(ACTOR, "versioned", "integration-manager", expected_version=read.version)
    assert changed.version == read.version + 1
    for stale in (lambda: admins.set_role(ACTOR, "versioned", "owner", expected_version=read.version),
                  lambda: admins.disable(ACTOR, "versioned", expected_version=read.version),
                  lambda: admins.delete(ACTOR, "versioned", expected_version=read.version)):
        with pytest.raises(ConflictError, match=f"version {read.version} asked, {changed.version} now"):
            await stale()
    now = await admins.get("versioned")
    assert (now.role, now.status, now.version) == ("integration-manager", "active", changed.version)
    await services.audit.flush()
    events = [e.event for e in await services.admin.audit.tail(50, subject=None, actor=ACTOR.label)]
    assert events == ["admin.created", "admin.updated"]
    assert (await admins.disable(ACTOR, "versioned", expected_version=now.version)).status == "disabled"


async def test_administrators_page_oldest_first_with_filters(services: Services) -> None:
    admins = services.admin.admins
    names = [f"ops-{n}" for n in range(5)]
    for name in names:
        await admins.create(ACTOR, name, "auditor")
    await admins.create(ACTOR, "other", "owner")
    await admins.delete(ACTOR, "ops-2")
    seen: list[str] = []
    cursor = None
    while True:
        page = await admins.page(limit=2, cursor=cursor, q="OPS")
        seen += [a.name for a in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert seen == ["ops-0", "ops-1", "ops-3", "ops-4"]
    assert [a.name for a in (await admins.page(status="deleted")).items] == ["ops-2"]
    first = await admins.page(limit=1)
    with pytest.raises(AdminError, match="start again without cursor"):
        await admins.page(limit=1, cursor=first.next_cursor, status="active")
    with pytest.raises(ValueError, match="status 'asleep' is not one of"):
        await admins.page(status="asleep")


async def test_console_sign_in_needs_password_and_a_fresh_totp_code(services: Services, clock: ManualClock) -> None:
    admins = services.admin.admins
    await admins.create(ACTOR, "ops", "owner")
    with pytest.raises(WeakPasswordError):
        await admins.set_password(ACTOR, "ops", "short")
    enrolment = await admins.set_password(ACTOR, "ops", PASSWORD)
    assert enrolment.uri.startswith("otpauth://totp/bankgate-sandbox%3Aops?")
    assert enrolment.secret not in repr(enrolment)
    secret = _totp_secret(enrolment.uri)
    async with services.store.connect() as conn:
        stored = (await conn.execute(sa.select(schema.admins.c.totp_secret))).scalar_one()
    assert secret not in stored  # encrypted by the vault

    code = _code(secret, clock)
    assert (await services.admins.authenticate_password("ops", PASSWORD, code, "192.0.2.1")).name == "ops"
    with pytest.raises(AdminAuthError) as replayed:  # the same code again: refused
        await services.admins.authenticate_password("ops", PASSWORD, code, "192.0.2.1")
    assert replayed.value.reason == "totp_replayed"
    assert str(replayed.value) == AUTHENTICATION_FAILED
    clock.advance(30)
    # the previous step's code is within the window but older than the one used: refused as well
    with pytest.raises(AdminAuthError):
        await services.admins.authenticate_password("ops", PASSWORD, _code(secret, clock, -1), "192.0.2.1")
    assert await services.admins.authenticate_password("ops", PASSWORD, _code(secret, clock, +1), "192.0.2.1")
    clock.advance(120)
    with pytest.raises(AdminAuthError) as wrong_password:
        await services.admins.authenticate_password("ops", "Wrong-Password-123", _code(secret, clock), "192.0.2.1")
    with pytest.raises(AdminAuthError) as unknown:
        await services.admins.authenticate_password("nobody", PASSWORD, _code(secret, clock), "192.0.2.1")
    with pytest.raises(AdminAuthError) as stale:
        await services.admins.authenticate_password("ops", PASSWORD, _code(secret, clock, -3), "192.0.2.1")
    assert (wrong_password.value.reason, unknown.value.reason, stale.value.reason) == (
        "wrong_password", "unknown_admin", "wrong_password")
    assert str(wrong_password.value) == str(unknown.value) == str(stale.value)


async def test_console_sign_in_is_throttled(services: Services, clock: ManualClock) -> None:
    await services.admin.admins.create(ACTOR, "ops", "owner")
    enrolment = await services.admin.admins.set_password(ACTOR, "ops", PASSWORD)
    secret = _totp_secret(enrolment.uri)
    for _ in range(services.settings.throttle_account_ip_failures):
        with pytest.raises(AdminAuthError):
            await services.admins.authenticate_password("ops", "Wrong-Password-123", "000000", "198.51.100.9")
    with pytest.raises(AdminThrottled):
        await services.admins.authenticate_password("ops", PASSWORD, _code(secret, clock), "198.51.100.9")


def _principal(role: str, scopes: list[str] | None = None) -> AdminPrincipal:
    from bankgate.credentials.admins import AdminRecord

    record = AdminRecord("id", "someone", role, "bka_test_x", "sandbox", "active", 0, 0, 1)  # type: ignore[arg-type]
    return AdminPrincipal(record, permissions_for(record, scopes), "basic")


@pytest.mark.parametrize(
    ("role", "allowed", "refused"),
    [
        ("owner", PERMISSIONS, ()),
        ("integration-manager",
         ("clients:write", "users:write", "certs:write", "ips:write", "keys:read", "audit:read", "clients:read"),
         ("admins:read", "admins:write", "keys:write")),
        ("auditor", tuple(p for p in PERMISSIONS if p.endswith(":read")),
         tuple(p for p in PERMISSIONS if p.endswith(":write"))),
    ],
)
def test_each_role_holds_its_permissions(role: str, allowed: tuple[str, ...], refused: tuple[str, ...]) -> None:
    principal = _principal(role)
    for permission in allowed:
        require(principal, permission)
    for permission in refused:
        with pytest.raises(Forbidden, match=f"the {role} role does not allow {permission}"):
            require(principal, permission)


def test_a_token_narrows_the_role_and_never_widens_it() -> None:
    narrowed = _principal("owner", ["admin:clients:read"])
    require(narrowed, "clients:read")
    with pytest.raises(Forbidden, match="does not carry admin:clients:write"):
        require(narrowed, "clients:write")
    auditor = _principal("auditor", ["admin:*"])
    with pytest.raises(Forbidden):
        require(auditor, "clients:write")


def test_token_scopes_follow_the_role() -> None:
    owner, auditor = _principal("owner").admin, _principal("auditor").admin
    assert len(scopes_for(owner, None)) == len(PERMISSIONS)
    assert scopes_for(auditor, "admin:*") == tuple("admin:" + p for p in PERMISSIONS if p.endswith(":read"))
    assert scopes_for(owner, "admin:clients:read admin:audit:read") == ("admin:clients:read", "admin:audit:read")
    with pytest.raises(InvalidAdminScope, match="does not hold clients:write"):
        scopes_for(auditor, "admin:clients:write")
    with pytest.raises(InvalidAdminScope, match="is not an admin scope"):
        scopes_for(owner, "app_12345")


def test_cli_creates_lists_and_enrols(server: Any) -> None:
    created = server.cli_json("admins", "create", "ops-owner", "--role", "owner")
    assert created["api_key"].startswith("bka_test_") and created["secret_key"].startswith("ska_test_")
    listed = server.cli_json("admins", "list")
    assert [a["name"] for a in listed] == ["ops-owner"] and "secret_key" not in listed[0]
    runner = CliRunner()
    args = ["admins", "set-password", "ops-owner", "--password-stdin", "--json", "--data-dir", str(server.data_dir)]
    empty = runner.invoke(cli_app, args, input="\n", env=server.env)
    assert empty.exit_code == 1 and "no password on standard input" in empty.stderr
    assert server.cli_json("admins", "show", "ops-owner")["console_password"] is False
    enrolled = runner.invoke(cli_app, args, input=PASSWORD + "\n", env=server.env)
    assert enrolled.exit_code == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["otpauth_uri"].startswith("otpauth://totp/")
    shown = server.cli_json("admins", "show", "ops-owner")
    assert shown["console_password"] is True and shown["totp_enrolled"] is True
    refused = server.cli("admins", "create", "ops-owner", "--role", "owner", check=False)
    assert refused.returncode == 1 and "exists already" in refused.stderr
    last = server.cli("admins", "disable", "ops-owner", check=False)
    assert last.returncode == 1 and "last active owner" in last.stderr
    server.cli_json("admins", "create", "second-owner", "--role", "owner")
    assert server.cli_json("admins", "disable", "ops-owner")["status"] == "disabled"
    rotated = server.cli_json("admins", "rotate-secret", "ops-owner")
    assert rotated["secret_key"] != created["secret_key"]
    assert server.cli_json("admins", "set-role", "ops-owner", "--role", "auditor")["role"] == "auditor"
    assert server.cli_json("admins", "delete", "ops-owner")["status"] == "deleted"
