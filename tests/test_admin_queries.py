"""The operator's queries: keyset pages of clients, users, certificates and audit events with their filters, the
audit trail's export, and versions that make a concurrent update fail instead of overwriting another one."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from bankgate.admin import Actor, AdminError, ConflictError, NotFoundError, Page
from bankgate.audit import AuditEvent
from bankgate.clock import ManualClock
from bankgate.config import load_settings
from bankgate.services import Services
from bankgate.store import Store, schema
from bankgate.store.migrate import alembic_config
from conftest import cli_json, dump_database, run_cli

ACTOR = Actor("alice", "cli")


async def walk(fetch: Any, limit: int, **filters: Any) -> list[Any]:
    """Every item of a listing, page by page."""
    items: list[Any] = []
    cursor = None
    while True:
        page = await fetch(limit=limit, cursor=cursor, **filters)
        assert len(page.items) <= limit
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        assert page.items, "a page with a next cursor is never empty"
        cursor = page.next_cursor


def tampered(cursor: str, change: Any) -> str:
    body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    change(body)
    return base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()


# -- clients --------------------------------------------------------------------------------------------------


async def test_walking_client_pages_shows_every_client_once_while_clients_are_added(
    services: Services, clock: ManualClock
) -> None:
    original = []
    for n in range(23):
        original.append((await services.admin.clients.create(ACTOR, f"shop {n}", ["app_1"])).client.api_key)
        if n % 4 == 0:  # several clients share a creation time: the id breaks the tie
            clock.advance(1)
    seen: list[str] = []
    cursor = None
    added = 0
    while True:
        page = await services.admin.clients.page(limit=5, cursor=cursor)
        assert isinstance(page, Page) and len(page.items) <= 5
        seen.extend(r.api_key for r in page.items)
        if page.next_cursor is None:
            break
        for _ in range(2):  # written between two pages, some at the time of the page's last row
            await services.admin.clients.create(ACTOR, f"late {added}", ["app_1"])
            added += 1
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)), "no client is shown twice"
    assert set(original) <= set(seen), "every client that existed when the walk began is shown"
    keys = [(r.created_at, r.id) for r in await walk(services.admin.clients.page, 500)]
    assert keys == sorted(keys) and len(keys) == 23 + added


async def test_client_filters_status_search_auth_mode_and_scope(services: Services) -> None:
    clients = services.admin.clients
    shop = (await clients.create(ACTOR, "Acme Web Shop", ["app_1", "app_2"])).client
    pos = (await clients.create(ACTOR, "acme POS", ["app_2"], "basic")).client
    other = (await clients.create(ACTOR, "Globex 100% ledger", ["app_3"])).client
    gone = (await clients.create(ACTOR, "Old acme", ["app_1"])).client
    await clients.disable(ACTOR, pos.api_key)
    await clients.delete(ACTOR, gone.api_key)

    async def keys(**filters: Any) -> list[str]:
        return [r.api_key for r in await walk(clients.page, 2, **filters)]

    assert await keys() == [shop.api_key, pos.api_key, other.api_key]
    assert await keys(deleted=True) == [shop.api_key, pos.api_key, other.api_key, gone.api_key]
    assert await keys(status="disabled") == [pos.api_key]
    assert await keys(status="deleted") == [gone.api_key]
    assert await keys(q="ACME") == [shop.api_key, pos.api_key]
    assert await keys(q=other.api_key[:14].upper()) == [other.api_key]
    assert await keys(q="100%") == [other.api_key]  # % is a character here, not a wildcard
    assert await keys(q="_") == []
    assert await keys(auth_mode="basic") == [pos.api_key]
    assert await keys(scope="app_2") == [shop.api_key, pos.api_key]
    assert await keys(scope="app_") == []
    assert await keys(q="acme", status="active", scope="app_1") == [shop.api_key]
    listed = (await clients.page(limit=10)).items[0]
    assert listed == await clients.get(shop.api_key), "a listed record is the record, its secret hashes included"
    for bad, message in ({"status": "asleep"}, "status 'asleep' is not one of"), (
        {"auth_mode": "mtls"}, "auth mode 'mtls' is not one of"), ({"q": " "}, "a search needs 1 to 200"):
        with pytest.raises(ValueError, match=message):
            await clients.page(**bad)


async def test_a_bad_cursor_is_refused_with_advice_to_start_again(services: Services) -> None:
    for n in range(3):
        await services.admin.clients.create(ACTOR, f"shop {n}", ["app_1"])
    await services.admin.users.create(ACTOR, "Ops user", "ops-user")
    cursor = (await services.admin.clients.page(limit=1)).next_cursor
    assert cursor is not None
    good = await services.admin.clients.page(limit=1, cursor=cursor)
    assert len(good.items) == 1
    bad = [
        "not a cursor",
        "!!!!",
        cursor[:-5],
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        tampered(cursor, lambda b: b.update(v=["soon", "x"])),
        tampered(cursor, lambda b: b.update(v=[1.0])),
        tampered(cursor, lambda b: b.update(k="users")),
        tampered(cursor, lambda b: b.update(d=1)),
        "x" * 600,
    ]
    for text in bad:
        with pytest.raises(AdminError, match="start again without cursor"):
            await services.admin.clients.page(limit=1, cursor=text)
    with pytest.raises(AdminError, match="other filters; start again without cursor"):
        await services.admin.clients.page(limit=1, cursor=cursor, status="active")
    with pytest.raises(AdminError, match="another listing"):
        await services.admin.users.page(limit=1, cursor=cursor)
    with pytest.raises(AdminError, match="another listing"):
        await services.admin.audit.page(limit=1, cursor=cursor)


async def test_limit_is_between_1_and_500(services: Services) -> None:
    for n in range(3):
        await services.admin.clients.create(ACTOR, f"shop {n}", ["app_1"])
    for limit in (0, -1, 501, 10_000):
        with pytest.raises(AdminError, match="is not between 1 and 500"):
            await services.admin.clients.page(limit=limit)
        with pytest.raises(AdminError, match="is not between 1 and 500"):
            await services.admin.audit.page(limit=limit)
    assert len((await services.admin.clients.page(limit=1)).items) == 1
    whole = await services.admin.clients.page(limit=500)
    assert len(whole.items) == 3 and whole.next_cursor is None
    assert len((await services.admin.clients.page()).items) == 3  # default: 50


# -- users and certificates ------------------------------------------------------------------------------------


async def test_user_pages_filter_by_status_search_and_environment(services: Services) -> None:
    users = services.admin.users
    alice = (await users.create(ACTOR, "Alice Treasury", "alice-treasury")).user
    bob = (await users.create(ACTOR, "Bob Payroll", "bob-payroll")).user
    carol = (await users.create(ACTOR, "Carol Treasury bot", "carol")).user
    await users.disable(ACTOR, bob.username)
    await users.delete(ACTOR, carol.username)

    async def names(**filters: Any) -> list[str]:
        return [u.username for u in await walk(users.page, 1, **filters)]

    assert await names() == ["alice-treasury", "bob-payroll"]
    assert await names(deleted=True) == ["alice-treasury", "bob-payroll", "carol"]
    assert await names(status="disabled") == ["bob-payroll"]
    assert await names(q="TREASURY", deleted=True) == ["alice-treasury", "carol"]
    assert await names(q="payroll") == ["bob-payroll"]
    assert await names(environment="sandbox") == ["alice-treasury", "bob-payroll"]
    assert await names(environment="production") == []
    with pytest.raises(ValueError, match="environment 'staging' is not one of"):
        await users.page(environment="staging")
    assert (await users.page(limit=5)).items[0] == await users.get(alice.username)


async def test_certificates_expiring_within_a_window_soonest_first(services: Services, clock: ManualClock) -> None:
    await services.admin.users.create(ACTOR, "Alice", "alice")
    await services.admin.users.create(ACTOR, "Bob", "bob")

    async def issue(username: str, days: int) -> str:
        issued, _ = await services.admin.certs.issue(ACTOR, username, lambda i: None, days=days)
        return issued.serial

    long_lived = await issue("alice", 365)
    soon = await issue("alice", 20)
    sooner = await issue("bob", 5)
    revoked = await issue("bob", 10)
    await services.admin.certs.revoke(ACTOR, revoked)
    month = 30 * 86400
    expiring = [c.serial for c in await walk(services.admin.certs.page, 1, expiring_within=month)]
    assert expiring == [sooner, soon]
    assert [c.serial for c in (await services.admin.certs.page(expiring_within=month, username="alice")).items] == [
        soon]
    everything = [c.serial for c in await walk(services.admin.certs.page, 2)]
    assert sorted(everything) == sorted([long_lived, soon, sooner, revoked])
    assert [c.serial for c in (await services.admin.certs.page(status="revoked")).items] == [revoked]
    assert {c.serial for c in (await services.admin.certs.page(username="bob")).items} == {sooner, revoked}
    clock.advance(6 * 86400)  # `sooner` has expired: no longer "expiring"
    assert [c.serial for c in (await services.admin.certs.page(expiring_within=month)).items] == [soon]
    with pytest.raises(NotFoundError):
        await services.admin.certs.page(username="ghost")
    with pytest.raises(ValueError, match="positive number of seconds"):
        await services.admin.certs.page(expiring_within=0)


# -- the audit trail ---------------------------------------------------------------------------------------------


async def test_audit_pages_filter_by_subject_outcome_event_and_time(services: Services) -> None:
    admin = services.admin
    acme = (await admin.clients.create(ACTOR, "Acme", ["app_1"])).client
    globex = (await admin.clients.create(ACTOR, "Globex", ["app_1"])).client
    await admin.clients.disable(Actor("bob", "api", "10.0.0.7"), acme.api_key)
    # The token endpoint names a client by its id only (its actor is the API key).
    await services.audit.write(AuditEvent("token.issued", acme.api_key, "success", "10.0.0.9",
                                          {"client_id": acme.id, "jti": "j1"}))
    await admin.users.create(ACTOR, "Alice", "alice")
    issued, _ = await admin.certs.issue(ACTOR, "alice", lambda i: None)
    with pytest.raises(Exception, match="username or initial passphrase is wrong"):
        await admin.users.reset_password(ACTOR, "alice", "wrong-passphrase", "Blue-Harbour-7-Lantern")

    async def events(**filters: Any) -> list[tuple[str, str]]:
        found = await walk(admin.audit.page, 2, newest_first=False, **filters)
        return [(e.event, e.outcome) for e in found]

    about_acme = [("client.created", "success"), ("client.disabled", "success"), ("token.issued", "success")]
    assert await events(subject=acme.api_key) == about_acme
    assert await events(subject=acme.id) == about_acme, "a client id finds the events under its API key too"
    assert await events(subject=globex.api_key) == [("client.created", "success")]
    about_alice = [("user.created", "success"), ("cert.issued", "success"), ("user.password_reset", "failure")]
    assert await events(subject="alice") == about_alice, "a user's subject includes its certificates"
    assert await events(subject=issued.serial) == [("cert.issued", "success")]
    assert await events(subject=issued.serial.lower()) == [("cert.issued", "success")]
    assert await events(subject="nobody-at-all") == []
    assert await events(outcome="failure") == [("user.password_reset", "failure")]
    assert [e for e, _ in await events(event="client.*")] == ["client.created", "client.created", "client.disabled"]
    assert [e for e, _ in await events(event="client.")] == ["client.created", "client.created", "client.disabled"]
    assert await events(event="client.disabled", actor="api:bob") == [("client.disabled", "success")]
    with pytest.raises(ValueError, match="outcome 'maybe' is not one of"):
        await admin.audit.page(outcome="maybe")
    with pytest.raises(ValueError, match="neither an event name"):
        await admin.audit.page(event="cl*ent")

    newest = await admin.audit.page(limit=3)
    assert [e.event for e in newest.items] == ["user.password_reset", "cert.issued", "user.created"]
    oldest = await admin.audit.page(limit=3, newest_first=False)
    assert [e.event for e in oldest.items] == ["key.rotated", "ca.created", "client.created"]
    with pytest.raises(AdminError, match="another listing or order"):
        await admin.audit.page(limit=3, cursor=newest.next_cursor, newest_first=False)


async def test_audit_time_window_and_pages_in_both_orders(services: Services) -> None:
    base = 1_900_000_000.0
    await services.audit.write(*(AuditEvent("demo.tick", "system", "success", None, {"n": n}, at=base + n // 2)
                                 for n in range(40)))  # two events a second: ties on `at`

    async def ns(**filters: Any) -> list[int]:
        return [e.detail["n"] for e in await walk(services.admin.audit.page, 7, event="demo.tick", **filters)]

    assert await ns() == list(reversed(range(40)))
    assert await ns(newest_first=False) == list(range(40))
    assert await ns(since=base + 5, until=base + 8, newest_first=False) == list(range(10, 16))
    with pytest.raises(ValueError, match="--until must be later than --since"):
        await services.admin.audit.page(since=base + 5, until=base + 5)


async def test_subject_is_written_with_each_event_from_its_detail(services: Services) -> None:
    await services.audit.write(
        AuditEvent("x.a", "system", "success", None, {"api_key": "bk_1", "client_id": "c1"}),
        AuditEvent("x.b", "system", "success", None, {"serial": "0A", "username": "alice"}),
        AuditEvent("x.c", "system", "success", None, {"user_id": "u1"}),
        AuditEvent("x.d", "system", "success", None, {"subject": "bk_9", "kind": "client"}),
        AuditEvent("x.e", "system", "success", None, {"kid": "k1", "username": 7}),
    )
    table = schema.audit_events
    async with services.store.connect() as conn:
        rows = (await conn.execute(sa.select(table.c.event, table.c.subject).where(table.c.event.like("x.%"))
                                   .order_by(table.c.id))).all()
    assert [tuple(r) for r in rows] == [("x.a", "c1"), ("x.b", "0A"), ("x.c", "u1"), ("x.d", "bk_9"),
                                        ("x.e", None)]


async def test_export_jsonl_and_csv_parse_back_with_formulas_defused_and_no_secret(services: Services) -> None:
    issued = await services.admin.clients.create(ACTOR, "=HYPERLINK(\"http://evil\")", ["app_1"])
    new_user = await services.admin.users.create(ACTOR, "Alice", "alice")
    await services.audit.write(
        AuditEvent("demo.cells", "=cmd|' /C calc'!A0", "failure", "@10.0.0.1", {"note": "+1"}),
        AuditEvent("demo.cells", "-2+3", "success", None, {"note": "plain"}),
    )
    jsonl = "".join([chunk async for chunk in services.admin.audit.export(ACTOR, format="jsonl")])
    rows = [json.loads(line) for line in jsonl.splitlines()]
    assert [r["event"] for r in rows] == ["key.rotated", "ca.created", "client.created", "user.created",
                                          "demo.cells", "demo.cells"]
    assert rows[2]["detail"]["api_key"] == issued.client.api_key
    assert rows[4]["actor"] == "=cmd|' /C calc'!A0", "JSON Lines keep values as they are"

    text = "".join([chunk async for chunk in services.admin.audit.export(ACTOR, format="csv", event="demo.cells")])
    parsed = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(parsed[0]) == ["at", "event", "actor", "source_ip", "outcome", "detail"]
    assert [(r["actor"], r["source_ip"]) for r in parsed] == [("'=cmd|' /C calc'!A0", "'@10.0.0.1"), ("'-2+3", "")]
    assert [json.loads(r["detail"]) for r in parsed] == [{"note": "+1"}, {"note": "plain"}]

    everything = jsonl + "".join([c async for c in services.admin.audit.export(ACTOR, format="csv")])
    assert issued.secret_key not in everything and new_user.initial_passphrase not in everything
    with pytest.raises(ValueError, match="format 'xml' is not one of"):
        await anext(services.admin.audit.export(ACTOR, format="xml"))  # type: ignore[arg-type]


async def test_export_streams_a_long_trail_in_chunks_in_order(services: Services) -> None:
    await services.audit.write(*(AuditEvent("demo.bulk", "system", "success", None, {"n": n}, at=2e9 + n)
                                 for n in range(1_234)))
    chunks = [c async for c in services.admin.audit.export(ACTOR, format="jsonl", event="demo.bulk")]
    assert len(chunks) == 3, "written a batch of 500 events at a time"
    assert [json.loads(line)["detail"]["n"] for line in "".join(chunks).splitlines()] == list(range(1_234))
    newest = [c async for c in services.admin.audit.export(ACTOR, format="csv", event="demo.bulk", newest_first=True)]
    assert len(list(csv.reader(io.StringIO("".join(newest))))) == 1_235  # the header and every event


async def test_an_export_ends_with_the_events_written_before_it_began(services: Services) -> None:
    await services.audit.write(*(AuditEvent("demo.busy", "system", "success", None, {"n": n}, at=2e9 + n)
                                 for n in range(600)))
    written = 0
    chunks = []
    async for chunk in services.admin.audit.export(ACTOR, format="jsonl", event="demo.busy"):
        chunks.append(chunk)
        # A busy trail: more events arrive while the export runs, later than every event it started with.
        await services.audit.write(*(AuditEvent("demo.busy", "system", "success", None, {"n": 1000 + written + n},
                                                at=3e9 + written + n) for n in range(600)))
        written += 600
        if len(chunks) > 5:
            break  # it would chase the writer for ever
    assert [json.loads(line)["detail"]["n"] for line in "".join(chunks).splitlines()] == list(range(600))


# -- versions ------------------------------------------------------------------------------------------------------


async def test_every_change_moves_a_client_version_on(services: Services) -> None:
    clients = services.admin.clients
    issued = await clients.create(ACTOR, "Acme", ["app_1"])
    assert issued.client.version == 1 and issued.client.as_json()["version"] == 1
    key = issued.client.api_key
    assert (await clients.update(ACTOR, key, name="Acme 2")).version == 2
    await clients.rotate_secret(ACTOR, key, 0)
    assert (await clients.get(key)).version == 3
    assert (await clients.disable(ACTOR, key, expected_version=3)).version == 4
    assert (await clients.revoke(ACTOR, key)).version == 5


async def test_two_updates_from_the_same_version_one_wins_the_other_conflicts(services: Services) -> None:
    clients = services.admin.clients
    key = (await clients.create(ACTOR, "Acme", ["app_1", "app_2"])).client.api_key
    read = await clients.get(key)
    results = await asyncio.gather(
        clients.update(ACTOR, key, name="first", expected_version=read.version),
        clients.update(ACTOR, key, name="second", scopes=["app_1"], expected_version=read.version),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], ConflictError)
    assert "changed since you read it" in str(losers[0]) and "read it again" in str(losers[0])
    after = await clients.get(key)
    assert after.version == 2 and after.name == winners[0].name
    assert after.scopes == (("app_1",) if after.name == "second" else ("app_1", "app_2"))
    updated = [e for e in await services.audit.tail(50) if e.event == "client.updated"]
    assert len(updated) == 1 and updated[0].detail["name"] == after.name


async def test_a_stale_update_writes_nothing(services: Services) -> None:
    clients = services.admin.clients
    issued = await clients.create(ACTOR, "Acme", ["app_1", "app_2"])
    key = issued.client.api_key
    await clients.update(ACTOR, key, name="renamed", expected_version=1)
    before = await dump(services)
    for stale in (
        clients.update(ACTOR, key, name="stale", scopes=["app_1"], expected_version=1),  # would cut tokens
        clients.disable(ACTOR, key, expected_version=1),
        clients.revoke(ACTOR, key, expected_version=1),
        clients.delete(ACTOR, key, expected_version=1),
    ):
        with pytest.raises(ConflictError, match=f"client {key} changed since you read it"):
            await stale
    assert await dump(services) == before, "no row, revocation, change-feed entry or audit event written"
    record = await clients.get(key)
    assert (record.name, record.scopes, record.status, record.version) == ("renamed", ("app_1", "app_2"),
                                                                           "active", 2)
    with pytest.raises(ValueError, match="not a positive integer"):
        await clients.update(ACTOR, key, name="x", expected_version=0)


async def test_user_versions_conflict_like_client_versions(services: Services) -> None:
    users = services.admin.users
    alice = (await users.create(ACTOR, "Alice", "alice", ["app_1"])).user
    assert alice.version == 1
    results = await asyncio.gather(
        users.update(ACTOR, "alice", name="Alice A", expected_version=1),
        users.disable(ACTOR, "alice", expected_version=1),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "UserRecord"]
    after = await users.get("alice")
    assert after.version == 2
    assert (after.name, after.status) in {("Alice A", "active"), ("Alice", "disabled")}
    await users.new_passphrase(ACTOR, "alice")
    assert (await users.get("alice")).version == 3
    with pytest.raises(ConflictError, match="user alice changed since you read it"):
        await users.delete(ACTOR, "alice", expected_version=2)
    assert (await users.get("alice")).status != "deleted"


async def dump(services: Services) -> list[tuple[str, str, Any]]:
    return sorted(await dump_database(services.store), key=repr)


# -- migration -----------------------------------------------------------------------------------------------------


async def test_migration_fills_subject_and_version_for_existing_rows(database_url: str, tmp_path: Path) -> None:
    store = Store(load_settings(data_dir=tmp_path, database_url=database_url).sqlalchemy_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0004"))
            await conn.execute(sa.text(
                "INSERT INTO clients (id, api_key, name, auth_mode, scopes, environment, status, created_at) "
                "VALUES ('c1', 'bk_test_old', 'old', 'oauth2', '[\"app_1\"]', 'sandbox', 'active', 1.0)"))
            await conn.execute(sa.text(
                "INSERT INTO audit_events (at, event, actor, source_ip, outcome, detail) VALUES "
                "(1.0, 'client.created', 'cli:a', NULL, 'success', '{\"api_key\": \"bk_test_old\"}'), "
                "(2.0, 'token.issued', 'bk_test_old', NULL, 'success', '{\"client_id\": \"c1\"}'), "
                "(3.0, 'key.rotated', 'system', NULL, 'success', '{\"kid\": \"k\", \"username\": 5}')"))
        await store.migrate()
        async with store.connect() as conn:
            subjects = (await conn.execute(sa.text("SELECT subject FROM audit_events ORDER BY id"))).scalars().all()
            version = (await conn.execute(sa.text("SELECT version FROM clients"))).scalar_one()
        assert subjects == ["bk_test_old", "c1", None]
        assert version == 1
    finally:
        await store.close()


# -- the command line ------------------------------------------------------------------------------------------


def test_cli_lists_page_by_page_with_filters_and_exports_the_audit_trail(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    run_cli("init", *data)
    keys = [cli_json("clients", "create", "--name", f"Shop {n}", "--scope", "app_1", *data)["api_key"]
            for n in range(5)]
    run_cli("clients", "disable", keys[1], *data)
    first = run_cli("clients", "list", "--limit", "2", "--json", *data)
    assert [c["api_key"] for c in json.loads(first.stdout)] == keys[:2]
    cursor = first.stderr.strip().removeprefix("next cursor: ")
    second = run_cli("clients", "list", "--limit", "2", "--cursor", cursor, "--json", *data)
    assert [c["api_key"] for c in json.loads(second.stdout)] == keys[2:4]
    table = run_cli("clients", "list", "--limit", "2", *data).stdout
    assert "more: bankgate clients list --limit 2 --cursor " in table
    assert [c["api_key"] for c in cli_json("clients", "list", "--status", "disabled", *data)] == [keys[1]]
    assert [c["api_key"] for c in cli_json("clients", "list", "--search", "shop 4", *data)] == [keys[4]]
    refused = run_cli("clients", "list", "--cursor", "garbage", *data, check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "error: the cursor is not valid; start again without cursor")
    run_cli("users", "create", "--name", "Alice", "--username", "alice", *data)
    assert [u["username"] for u in cli_json("users", "list", "--search", "ALI", *data)] == ["alice"]
    assert cli_json("users", "list", "--status", "revoked", *data) == []

    about = cli_json("audit", "tail", "--subject", keys[1], *data)
    assert [e["event"] for e in about] == ["client.created", "client.disabled"]
    assert cli_json("audit", "tail", "--outcome", "failure", *data) == []
    lines = run_cli("audit", "tail", "--event", "client.*", "--format", "jsonl", *data).stdout.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["client.created"] * 5 + ["client.disabled"]
    shown = list(csv.DictReader(io.StringIO(run_cli("audit", "tail", "--format", "csv", "--subject", keys[0],
                                                    *data).stdout)))
    assert [r["event"] for r in shown] == ["client.created"]

    export = tmp_path / "trail.csv"
    run_cli("audit", "tail", "--event", "client.", "--limit", "1", "--export", str(export), *data)
    assert stat.S_IMODE(os.stat(export).st_mode) == 0o600
    exported = list(csv.DictReader(export.open(newline="")))
    assert len(exported) == 6, "an export holds every matching event, not the last --limit"
    as_jsonl = tmp_path / "trail.jsonl"
    run_cli("audit", "tail", "--export", str(as_jsonl), *data)
    trail = cli_json("audit", "tail", "--limit", "10000", *data)
    assert len(as_jsonl.read_text().splitlines()) == len(trail) - 1, "every event but the export's own"
    assert trail[-1]["event"] == "audit.exported" and trail[-1]["actor"].startswith("cli:")
    assert trail[-1]["detail"]["format"] == "jsonl"
    wrong = run_cli("audit", "tail", "--export", str(tmp_path / "x.txt"), "--format", "table", *data, check=False)
    assert wrong.returncode == 1 and "--export writes jsonl or csv" in wrong.stderr
    bad_filter = run_cli("audit", "tail", "--export", str(tmp_path / "never.csv"), "--outcome", "maybe", *data,
                         check=False)
    assert bad_filter.returncode == 1 and not (tmp_path / "never.csv").exists()
