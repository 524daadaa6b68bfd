"""IP allow lists per user or client and environment: the rules, the cache, and the `bankgate ips` commands."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bankgate.clock import ManualClock
from bankgate.config import Settings, load_settings
from bankgate.credentials.allowlist import AllowListError, describe_default, parse_address, parse_cidr
from bankgate.services import Services
from conftest import cli_json, run_cli

USER = "0b868b6b-4206-47bd-aef8-1ea1c65948e4"
CLIENT = "97cbb5ee-89c4-47b1-b177-699b10cc44cd"


def make_settings(tmp_path: Path, database_url: str, **more: Any) -> Settings:
    return load_settings(data_dir=tmp_path, database_url=database_url, **more)


@pytest.fixture
def sandbox(services: Services) -> Services:
    return services


@pytest.fixture
async def production(tmp_path: Path, database_url: str, sandbox: Services) -> AsyncIterator[Services]:
    """A production server on the same database as `sandbox`."""
    opened = await Services.open(make_settings(tmp_path, database_url, environment="production"))
    try:
        yield opened
    finally:
        await opened.close()


# -- parsing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        (" 203.0.113.0/24 ", "203.0.113.0/24"),
        ("203.0.113.77/24", "203.0.113.0/24"),
        ("2001:DB8:0:0::1", "2001:db8::1/128"),
        ("2001:db8:aa::/48", "2001:db8:aa::/48"),
        ("::ffff:203.0.113.7", "203.0.113.7/32"),
        ("::ffff:203.0.113.0/120", "203.0.113.0/24"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_cidrs_are_normalised(written: str, stored: str) -> None:
    assert str(parse_cidr(written)) == stored


@pytest.mark.parametrize("bad", ["", "203.0.113.300", "203.0.113.0/33", "example.com", "2001:db8::/129", "1.2.3"])
def test_a_bad_cidr_is_refused_with_an_example(bad: str) -> None:
    with pytest.raises(AllowListError, match=re.escape("is not an IP address or CIDR; write e.g. 203.0.113.7")):
        parse_cidr(bad)


def test_request_addresses_are_read_leniently_and_mapped_ipv4_is_ipv4() -> None:
    assert str(parse_address("::ffff:10.0.0.1")) == "10.0.0.1"
    assert str(parse_address("fe80::1%eth0")) == "fe80::1"
    assert parse_address(None) is None
    assert parse_address("") is None
    assert parse_address("not-an-ip") is None


def test_the_default_is_stated_per_environment() -> None:
    sandbox = describe_default("sandbox")
    assert "loopback only" in sandbox and "127.0.0.0/8" in sandbox and "::1" in sandbox
    production = describe_default("production")
    assert "refused from every address" in production and "loopback" not in production


# -- entries -----------------------------------------------------------------------------------------------


async def test_allow_list_and_remove_entries(sandbox: Services) -> None:
    allowlist = sandbox.allowlist
    entry = await allowlist.allow("user", USER, "203.0.113.9/24")
    assert (entry.kind, entry.subject_id, entry.environment, entry.cidr) == ("user", USER, "sandbox", "203.0.113.0/24")
    assert await allowlist.allow("user", USER, "203.0.113.0/24") == entry  # adding twice keeps one entry
    await allowlist.allow("user", USER, "2001:db8::/32")
    await allowlist.allow("client", CLIENT, "198.51.100.1")

    assert [e.cidr for e in await allowlist.list("user", USER)] == ["203.0.113.0/24", "2001:db8::/32"]
    assert [e.cidr for e in await allowlist.list("client")] == ["198.51.100.1/32"]
    assert len(await allowlist.list()) == 3
    assert await allowlist.list("user", CLIENT) == []
    assert entry.as_json() == {"kind": "user", "subject_id": USER, "environment": "sandbox",
                               "cidr": "203.0.113.0/24", "created_at": int(entry.created_at)}

    assert await allowlist.remove("user", USER, "203.0.113.200/24") is True
    assert await allowlist.remove("user", USER, "203.0.113.0/24") is False
    assert [e.cidr for e in await allowlist.list("user", USER)] == ["2001:db8::/32"]


async def test_an_unknown_kind_or_bad_cidr_is_refused(sandbox: Services) -> None:
    with pytest.raises(AllowListError, match="subject kind 'group'"):
        await sandbox.allowlist.allow("group", USER, "10.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(AllowListError, match="not an IP address"):
        await sandbox.allowlist.allow("user", USER, "10.0.0.256")
    with pytest.raises(AllowListError, match="is not a record id"):
        await sandbox.allowlist.allow("client", "bk_test_" + "A" * 40, "10.0.0.1")
    assert await sandbox.allowlist.list() == []


async def test_entries_belong_to_one_environment(sandbox: Services, production: Services) -> None:
    await sandbox.allowlist.allow("user", USER, "203.0.113.0/24")
    assert await production.allowlist.list() == []
    assert await production.allowlist.allows("user", USER, "203.0.113.5") is False
    await production.allowlist.allow("user", USER, "198.51.100.0/24")
    assert [e.cidr for e in await sandbox.allowlist.list()] == ["203.0.113.0/24"]
    assert [e.environment for e in await production.allowlist.list()] == ["production"]


# -- the rules ---------------------------------------------------------------------------------------------


async def test_an_address_inside_an_entry_is_allowed_ipv4_and_ipv6(sandbox: Services) -> None:
    allowlist = sandbox.allowlist
    await allowlist.allow("client", CLIENT, "203.0.113.0/24")
    await allowlist.allow("client", CLIENT, "2001:db8:aa::/48")
    for inside in ("203.0.113.1", "203.0.113.255", "2001:db8:aa::1", "2001:db8:aa:ffff::9"):
        assert await allowlist.allows("client", CLIENT, inside) is True, inside
    for outside in ("203.0.114.1", "2001:db8:ab::1", "127.0.0.1", "::1"):
        assert await allowlist.allows("client", CLIENT, outside) is False, outside


async def test_ipv4_mapped_ipv6_addresses_match_ipv4_entries(sandbox: Services) -> None:
    await sandbox.allowlist.allow("user", USER, "203.0.113.0/24")
    assert await sandbox.allowlist.allows("user", USER, "::ffff:203.0.113.7") is True
    assert await sandbox.allowlist.allows("user", USER, "::ffff:203.0.114.7") is False
    # An IPv4 entry does not open the IPv6 address space, nor the reverse.
    assert await sandbox.allowlist.allows("user", USER, "::203.0.113.7") is False
    await sandbox.allowlist.allow("client", CLIENT, "::/0")
    assert await sandbox.allowlist.allows("client", CLIENT, "203.0.113.7") is False


async def test_no_or_an_unreadable_address_is_refused(sandbox: Services) -> None:
    await sandbox.allowlist.allow("user", USER, "0.0.0.0/0")
    assert await sandbox.allowlist.allows("user", USER, None) is False
    assert await sandbox.allowlist.allows("user", USER, "unknown") is False
    assert await sandbox.allowlist.allows("user", USER, "8.8.8.8") is True


async def test_production_fails_closed_without_an_entry(production: Services) -> None:
    for address in ("127.0.0.1", "::1", "203.0.113.7", "::ffff:127.0.0.1"):
        assert await production.allowlist.allows("user", USER, address) is False, address
        assert await production.allowlist.allows("client", CLIENT, address) is False, address


async def test_sandbox_without_an_entry_allows_loopback_only(sandbox: Services) -> None:
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert await sandbox.allowlist.allows("client", CLIENT, address) is True, address
    for address in ("203.0.113.7", "10.0.0.1", "::2", "fe80::1"):
        assert await sandbox.allowlist.allows("client", CLIENT, address) is False, address


async def test_sandbox_with_an_entry_allows_that_entry_only(sandbox: Services) -> None:
    await sandbox.allowlist.allow("client", CLIENT, "203.0.113.0/24")
    assert await sandbox.allowlist.allows("client", CLIENT, "203.0.113.7") is True
    assert await sandbox.allowlist.allows("client", CLIENT, "127.0.0.1") is False
    assert await sandbox.allowlist.allows("user", USER, "127.0.0.1") is True  # another subject: default


async def test_entries_of_one_subject_or_kind_do_not_apply_to_another(production: Services) -> None:
    await production.allowlist.allow("user", USER, "203.0.113.0/24")
    assert await production.allowlist.allows("user", USER, "203.0.113.7") is True
    assert await production.allowlist.allows("client", USER, "203.0.113.7") is False
    assert await production.allowlist.allows("user", CLIENT, "203.0.113.7") is False


# -- the cache ---------------------------------------------------------------------------------------------


async def test_another_process_sees_a_change_within_the_cache_ttl_and_the_changer_at_once(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, environment="production", client_cache_ttl=1.5)
    clock = ManualClock()
    admin = await Services.open(settings, initialise=True, clock=clock)
    server = await Services.open(settings, clock=clock)
    try:
        assert await server.allowlist.allows("user", USER, "203.0.113.7") is False  # now cached: no entry
        await admin.allowlist.allow("user", USER, "203.0.113.0/24")
        assert await admin.allowlist.allows("user", USER, "203.0.113.7") is True  # at once where it was made
        assert await server.allowlist.allows("user", USER, "203.0.113.7") is False  # still the cached answer
        clock.advance(1.6)
        assert await server.allowlist.allows("user", USER, "203.0.113.7") is True

        await admin.allowlist.allows("user", USER, "203.0.113.7")
        await server.allowlist.remove("user", USER, "203.0.113.0/24")
        assert await server.allowlist.allows("user", USER, "203.0.113.7") is False
        assert await admin.allowlist.allows("user", USER, "203.0.113.7") is True
        clock.advance(1.6)
        assert await admin.allowlist.allows("user", USER, "203.0.113.7") is False
    finally:
        await admin.close()
        await server.close()


async def test_a_cached_answer_costs_no_database_round_trip(sandbox: Services) -> None:
    await sandbox.allowlist.allow("client", CLIENT, "203.0.113.0/24")
    await sandbox.allowlist.allows("client", CLIENT, "203.0.113.7")
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sandbox.store.engine.sync_engine, "before_cursor_execute", record)
    try:
        for _ in range(100):
            assert await sandbox.allowlist.allows("client", CLIENT, "203.0.113.7") is True
    finally:
        sa.event.remove(sandbox.store.engine.sync_engine, "before_cursor_execute", record)
    assert seen == []


# -- the `bankgate ips` commands ---------------------------------------------------------------------------


def bg(data_dir: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> Any:
    return run_cli(*args, "--data-dir", str(data_dir), env=env, check=check)


def bg_json(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return cli_json(*args, "--data-dir", str(data_dir), env=env)


def one_line_error(result: Any, *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    bg_json(directory, "init")
    return directory


def test_ips_allow_a_user_and_an_api_key_and_list_them(data_dir: Path) -> None:
    user = bg_json(data_dir, "users", "create", "--name", "API Testuser")
    client = bg_json(data_dir, "clients", "create", "--name", "Acme", "--scope", "app_1")
    other = bg_json(data_dir, "users", "create", "--name", "Idle user")

    added = bg_json(data_dir, "ips", "allow", user["username"], "203.0.113.77/24")
    assert added == {"kind": "user", "subject_id": user["user_id"], "subject": user["username"],
                     "environment": "sandbox", "cidr": "203.0.113.0/24", "created_at": added["created_at"]}
    by_key = bg_json(data_dir, "ips", "allow", client["api_key"], "2001:db8::/48")
    assert (by_key["kind"], by_key["subject_id"], by_key["subject"]) == ("client", client["client_id"],
                                                                          client["api_key"])

    listing = bg_json(data_dir, "ips", "list")
    assert listing["environment"] == "sandbox"
    assert listing["default"] == describe_default("sandbox")
    assert [(e["subject"], e["cidr"]) for e in listing["entries"]] == [
        (client["api_key"], "2001:db8::/48"), (user["username"], "203.0.113.0/24")]
    assert listing["without_entries"] == [other["username"]]

    one = bg_json(data_dir, "ips", "list", user["username"])
    assert one["uses_default"] is False and [e["cidr"] for e in one["entries"]] == ["203.0.113.0/24"]
    idle = bg_json(data_dir, "ips", "list", other["username"])
    assert idle["uses_default"] is True and idle["entries"] == []

    text = bg(data_dir, "ips", "list", other["username"]).stdout
    assert "has no entry" in " ".join(text.split()) and "loopback only" in " ".join(text.split())
    table = bg(data_dir, "ips", "list").stdout
    assert client["api_key"] in table and "203.0.113.0/24" in table and "without an entry" in table


def test_ips_remove_and_the_default_is_said_when_nothing_is_left(data_dir: Path) -> None:
    user = bg_json(data_dir, "users", "create", "--name", "API Testuser")
    bg(data_dir, "ips", "allow", user["username"], "203.0.113.7")
    removed = bg_json(data_dir, "ips", "remove", user["username"], "203.0.113.7/32")
    assert removed["removed"] == "203.0.113.7/32" and removed["remaining"] == []
    one_line_error(bg(data_dir, "ips", "remove", user["username"], "203.0.113.7", check=False),
                   "203.0.113.7/32 is not on the allow list of " + user["username"])
    bg(data_dir, "ips", "allow", user["username"], "203.0.113.7")
    text = " ".join(bg(data_dir, "ips", "remove", user["username"], "203.0.113.7").stdout.split())
    assert "no entry left" in text and "loopback only" in text


def test_ips_errors_are_one_clear_line(data_dir: Path) -> None:
    user = bg_json(data_dir, "users", "create", "--name", "API Testuser")
    one_line_error(bg(data_dir, "ips", "allow", user["username"], "203.0.113.300", check=False),
                   "'203.0.113.300' is not an IP address or CIDR")
    one_line_error(bg(data_dir, "ips", "allow", "nobody", "203.0.113.7", check=False), "no user named nobody")
    one_line_error(bg(data_dir, "ips", "allow", "bk_test_nope", "203.0.113.7", check=False),
                   "no client with API key bk_test_nope")
    one_line_error(bg(data_dir, "ips", "list", "nobody", check=False), "no user named nobody")
    assert bg_json(data_dir, "ips", "list")["entries"] == []


def test_ips_of_a_subject_of_another_environment_are_refused(data_dir: Path) -> None:
    user = bg_json(data_dir, "users", "create", "--name", "Sandbox user")
    result = bg(data_dir, "ips", "allow", user["username"], "203.0.113.7",
                env={"BANKGATE_ENVIRONMENT": "production"}, check=False)
    one_line_error(result, "belongs to the sandbox environment", "BANKGATE_ENVIRONMENT=sandbox")
    listing = bg_json(data_dir, "ips", "list", env={"BANKGATE_ENVIRONMENT": "production"})
    assert listing["default"] == describe_default("production")


def test_ips_changes_are_audited(data_dir: Path) -> None:
    user = bg_json(data_dir, "users", "create", "--name", "API Testuser")
    bg(data_dir, "ips", "allow", user["username"], "203.0.113.7")
    bg(data_dir, "ips", "remove", user["username"], "203.0.113.7")
    events = [e for e in bg_json(data_dir, "audit", "tail") if e["event"].startswith("ip.")]
    assert [e["event"] for e in events] == ["ip.allowed", "ip.removed"]
    for event in events:
        assert event["outcome"] == "success" and event["actor"].startswith("cli")
        assert event["detail"] == {"subject": user["username"], "kind": "user", "subject_id": user["user_id"],
                                   "cidr": "203.0.113.7/32", "environment": "sandbox"}


def test_ips_commands_work_against_postgresql(tmp_path: Path, postgres_url: str) -> None:
    data_dir = tmp_path / "data"
    args = ("--database-url", postgres_url)
    bg_json(data_dir, "init", *args)
    client = bg_json(data_dir, "clients", "create", "--name", "Acme", "--scope", "app_1", *args)
    bg(data_dir, "ips", "allow", client["api_key"], "::ffff:198.51.100.0/120", *args)
    listing = bg_json(data_dir, "ips", "list", client["api_key"], *args)
    assert [e["cidr"] for e in listing["entries"]] == ["198.51.100.0/24"]
    assert json.loads(bg(data_dir, "ips", "remove", client["api_key"], "198.51.100.0/24", "--json",
                         *args).stdout)["remaining"] == []
