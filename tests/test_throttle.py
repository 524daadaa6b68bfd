"""Brute-force throttling and issuance limits, against a real SQLite file and a real PostgreSQL database, within one
process and across server processes that share the database."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bankgate.clock import ManualClock
from bankgate.config import Settings, load_settings
from bankgate.runtime import Runtime
from bankgate.services import Services
from bankgate.store import Store, schema
from bankgate.throttle import AuthThrottle, IssuanceLimiter, backoff_seconds, keys_for

ATTACKER = "198.51.100.66"
OWNER = "203.0.113.10"
ACCOUNT = "bk_test_AAAAAAAAAAAAAAAAAAAAAAAA"

# Small thresholds keep the tests short; the shape is the production one (account+IP < IP < account).
THRESHOLDS = {
    "throttle_account_ip_failures": 3,
    "throttle_ip_failures": 6,
    "throttle_account_failures": 10,
    "throttle_max_backoff": 60.0,
}


def make_settings(tmp_path: Path, database_url: str, **more: Any) -> Settings:
    return load_settings(data_dir=tmp_path, database_url=database_url, **{**THRESHOLDS, **more})


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@contextmanager
def counting_statements(store: Store) -> Iterator[list[str]]:
    """Every SQL statement the store sends while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", record)


async def failures_until_blocked(throttle: AuthThrottle, keys: list[str], limit: int = 100) -> int:
    for attempt in range(1, limit + 1):
        if await throttle.failure(keys) is not None:
            return attempt
    raise AssertionError(f"not blocked after {limit} failures")


async def row(store: Store, key: str) -> dict[str, Any] | None:
    table = schema.auth_throttle
    async with store.connect() as conn:
        found = (await conn.execute(sa.select(table).where(table.c.key == key))).mappings().one_or_none()
    return dict(found) if found else None


# -- keys and back-off -------------------------------------------------------------------------------------


def test_keys_are_the_source_address_the_account_from_that_address_and_the_account() -> None:
    assert keys_for(ACCOUNT, "198.51.100.66") == [
        "ip:198.51.100.66",
        f"acctip:{ACCOUNT}@198.51.100.66",
        f"acct:{ACCOUNT}",
    ]


def test_ipv6_sources_are_grouped_by_64_and_mapped_ipv4_is_ipv4() -> None:
    one = keys_for("user", "2001:db8:1:2::1")
    other = keys_for("user", "2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert one == other
    assert one[0] == "ip:2001:db8:1:2::/64"
    assert keys_for("user", "2001:db8:1:3::1")[0] != one[0]
    assert keys_for("user", "::ffff:198.51.100.66") == keys_for("user", "198.51.100.66")


def test_without_a_source_address_only_the_account_is_counted() -> None:
    assert keys_for("user", None) == ["acct:user"]


def test_keys_fit_the_column_whatever_the_caller_sends() -> None:
    for account in ("x" * 5000, "evil\nname", "é" * 300):
        for key in keys_for(account, "not an address " * 30):
            assert len(key) <= 200 and key.isprintable()
    assert keys_for("x" * 5000, None) != keys_for("x" * 4999, None)


def test_backoff_doubles_from_one_second_at_the_threshold_up_to_the_cap() -> None:
    assert [backoff_seconds(n, 5, 900) for n in range(4, 11)] == [0, 1, 2, 4, 8, 16, 32]
    assert backoff_seconds(15, 5, 900) == 900
    assert backoff_seconds(10_000, 5, 900) == 900


# -- one process ---------------------------------------------------------------------------------------------


async def test_backoff_grows_with_every_failure_past_the_threshold(services: Services) -> None:
    keys = keys_for(ACCOUNT, ATTACKER)
    waits = [await services.throttle.failure(keys) for _ in range(6)]
    assert waits[:2] == [None, None]  # account+IP threshold is 3
    assert waits[2:] == pytest.approx([1, 2, 4, 8], abs=0.9)
    assert services.throttle.blocked(keys) == pytest.approx(8, abs=1.5)
    stored = await row(services.store, f"acctip:{ACCOUNT}@{ATTACKER}")
    assert stored is not None and stored["failures"] == 6
    assert stored["blocked_until"] == pytest.approx(time.time() + 8, abs=1)


async def test_backoff_is_capped(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, throttle_max_backoff=3.0)
    services = await Services.open(settings, initialise=True)
    try:
        keys = keys_for(ACCOUNT, ATTACKER)
        waits = [await services.throttle.failure(keys) for _ in range(12)]
        assert max(w or 0 for w in waits) <= 3.0
        assert waits[-1] == pytest.approx(3.0, abs=0.2)
    finally:
        await services.close()


async def test_blocked_answers_from_memory_without_the_database(services: Services) -> None:
    keys, owner = keys_for(ACCOUNT, ATTACKER), keys_for(ACCOUNT, OWNER)
    await failures_until_blocked(services.throttle, keys)
    assert not inspect.iscoroutinefunction(services.throttle.blocked)
    with counting_statements(services.store) as statements:
        started = time.perf_counter()
        for _ in range(10_000):
            assert services.throttle.blocked(keys) is not None
            assert services.throttle.blocked(owner) is None
        elapsed = time.perf_counter() - started
    assert statements == []
    assert elapsed / 20_000 < 200e-6  # no hashing, no I/O: microseconds (argon2 alone takes milliseconds)


async def test_failure_is_one_atomic_upsert_per_key(services: Services) -> None:
    keys = keys_for(ACCOUNT, ATTACKER)
    with counting_statements(services.store) as statements:
        await services.throttle.failure(keys)
    upserts = [s for s in statements if "ON CONFLICT" in s.upper()]
    assert len(upserts) == 3
    assert all("RETURNING" in s.upper() for s in upserts)


async def test_concurrent_failures_are_all_counted(services: Services) -> None:
    keys = keys_for(ACCOUNT, ATTACKER)
    await asyncio.gather(*(services.throttle.failure(keys) for _ in range(20)))
    stored = await row(services.store, f"acct:{ACCOUNT}")
    assert stored is not None and stored["failures"] == 20


async def test_an_attacker_on_one_address_does_not_lock_out_the_owner_on_another(services: Services) -> None:
    throttle = services.throttle
    attacker, owner = keys_for(ACCOUNT, ATTACKER), keys_for(ACCOUNT, OWNER)
    assert await failures_until_blocked(throttle, attacker) == 3
    assert throttle.blocked(attacker) is not None
    assert throttle.blocked(owner) is None
    # Guessing on other accounts from the same address blocks the address, for every account.
    for n in range(3):
        await throttle.failure(keys_for(f"bk_test_other{n}", ATTACKER))
    assert throttle.blocked(keys_for("bk_test_someone_else", ATTACKER)) is not None
    assert throttle.blocked(owner) is None


async def test_guessing_spread_over_many_addresses_hits_the_account_backstop(services: Services) -> None:
    throttle = services.throttle
    owner = keys_for(ACCOUNT, OWNER)
    for n in range(9):
        await throttle.failure(keys_for(ACCOUNT, f"198.51.100.{n}"))  # 1 per address: no address is blocked
        assert throttle.blocked(owner) is None
    assert await throttle.failure(keys_for(ACCOUNT, "198.51.100.99")) is not None  # the 10th: backstop
    assert throttle.blocked(owner) is not None
    assert throttle.blocked(keys_for("bk_test_another_account", OWNER)) is None


async def test_success_clears_the_account_keys_but_not_the_address_key(services: Services) -> None:
    throttle = services.throttle
    keys = keys_for(ACCOUNT, ATTACKER)
    await throttle.failure(keys)
    await throttle.failure(keys)
    await throttle.success(keys)
    assert await row(services.store, f"acct:{ACCOUNT}") is None
    assert await row(services.store, f"acctip:{ACCOUNT}@{ATTACKER}") is None
    address = await row(services.store, f"ip:{ATTACKER}")
    assert address is not None and address["failures"] == 2
    assert await throttle.failure(keys) is None  # the account+IP count started again


async def test_success_without_known_failures_costs_no_database_round_trip(services: Services) -> None:
    with counting_statements(services.store) as statements:
        for n in range(100):
            await services.throttle.success(keys_for(f"bk_test_{n}", OWNER))
    assert statements == []


async def test_success_leaves_counts_recorded_only_by_another_process_to_their_window(
    settings: Settings, services: Services
) -> None:
    other = await Services.open(settings)
    try:
        keys = keys_for(ACCOUNT, ATTACKER)
        await other.throttle.failure(keys)
        await services.throttle.success(keys)
        stored = await row(services.store, f"acct:{ACCOUNT}")
        assert stored is not None and stored["failures"] == 1  # the safe direction: the count is kept
        await other.throttle.success(keys)
        assert await row(services.store, f"acct:{ACCOUNT}") is None
    finally:
        await other.close()


async def test_the_count_starts_again_after_a_quiet_window(tmp_path: Path, database_url: str) -> None:
    clock = ManualClock()
    services = await Services.open(make_settings(tmp_path, database_url, throttle_window=0.5), initialise=True,
                                   clock=clock)
    try:
        keys = keys_for(ACCOUNT, ATTACKER)
        await services.throttle.failure(keys)
        await services.throttle.failure(keys)
        clock.advance(0.6)
        assert await services.throttle.failure(keys) is None
        stored = await row(services.store, f"acctip:{ACCOUNT}@{ATTACKER}")
        assert stored is not None and stored["failures"] == 1
    finally:
        await services.close()


async def test_purge_deletes_rows_whose_window_and_block_have_ended(services: Services) -> None:
    keys = keys_for(ACCOUNT, ATTACKER)
    await failures_until_blocked(services.throttle, keys)
    assert await services.throttle.purge(time.time()) == 0  # window and block still running
    assert await services.throttle.purge(time.time() + 901) == 3
    async with services.store.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(schema.auth_throttle))).scalar() == 0


# -- several processes sharing the database ----------------------------------------------------------------

# A second server process: opens the same data directory and database and does one throttle operation.
CHILD = """
import asyncio, json, sys
from bankgate.config import load_settings
from bankgate.services import Services
from bankgate.throttle import keys_for

async def main(data_dir, url, action, account, ip, count):
    services = await Services.open(load_settings(data_dir=data_dir, database_url=url))
    try:
        keys = keys_for(account, ip)
        if action == "fail":
            waits = [await services.throttle.failure(keys) for _ in range(int(count))]
            print(json.dumps(waits))
        else:
            await services.throttle.sync()
            print(json.dumps(services.throttle.blocked(keys)))
    finally:
        await services.close()

asyncio.run(main(*sys.argv[1:]))
"""


def child_env() -> dict[str, str]:
    return {**os.environ, **{f"BANKGATE_{name.upper()}": str(value) for name, value in THRESHOLDS.items()}}


def child(settings: Settings, action: str, account: str, ip: str, count: int = 1) -> Any:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(settings.data_dir), str(settings.database_url), action, account, ip,
         str(count)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start_child(settings: Settings, action: str, account: str, ip: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(settings.data_dir), str(settings.database_url), action, account, ip,
         str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )


async def test_a_block_made_by_another_process_is_enforced_here_after_sync(
    settings: Settings, services: Services
) -> None:
    waits = await asyncio.to_thread(child, settings, "fail", ACCOUNT, ATTACKER, 7)
    assert waits[:2] == [None, None] and waits[6] == pytest.approx(16, abs=1)
    keys = keys_for(ACCOUNT, ATTACKER)
    assert services.throttle.blocked(keys) is None  # not seen before a sync
    await services.throttle.sync()
    assert services.throttle.blocked(keys) == pytest.approx(16, abs=5)
    assert services.throttle.blocked(keys_for(ACCOUNT, OWNER)) is None  # only that address


async def test_failures_of_two_processes_add_up(settings: Settings, services: Services) -> None:
    # The child counts two failures, this process one: the third, wherever it happens, blocks.
    assert await asyncio.to_thread(child, settings, "fail", ACCOUNT, ATTACKER, 2) == [None, None]
    wait = await services.throttle.failure(keys_for(ACCOUNT, ATTACKER))
    assert wait == pytest.approx(1, abs=0.9)
    # ... and this process's block is seen by another process (long enough to outlast the child's start).
    for _ in range(5):
        wait = await services.throttle.failure(keys_for(ACCOUNT, ATTACKER))
    assert wait == pytest.approx(32, abs=1)
    seen = await asyncio.to_thread(child, settings, "blocked", ACCOUNT, ATTACKER)
    assert seen is not None and 0 < seen <= 32
    assert await asyncio.to_thread(child, settings, "blocked", ACCOUNT, OWNER) is None


async def test_concurrent_failures_from_two_processes_are_all_counted(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, throttle_account_failures=10_000)
    services = await Services.open(settings, initialise=True)
    try:
        process = start_child(settings, "fail", "shared-account", ATTACKER, 40)
        for n in range(40):
            await services.throttle.failure(keys_for("shared-account", f"192.0.2.{n}"))
        _, stderr = await asyncio.to_thread(process.communicate, timeout=120)
        assert process.returncode == 0, stderr
        stored = await row(services.store, "acct:shared-account")
        assert stored is not None and stored["failures"] == 80
    finally:
        await services.close()


async def test_running_servers_share_blocks_through_their_background_sync(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, throttle_sync_interval=0.1)
    opened = await Services.open(settings, initialise=True)
    await opened.init()
    await opened.close()
    first = await Runtime.start(settings, "http://127.0.0.1:1")
    second = await Runtime.start(settings, "http://127.0.0.1:2")
    try:
        keys = keys_for(ACCOUNT, ATTACKER)
        await failures_until_blocked(first.services.throttle, keys)
        for _ in range(4):
            await first.services.throttle.failure(keys)  # a block of 16 s: long enough to be seen
        deadline = time.monotonic() + 5
        while second.services.throttle.blocked(keys) is None:
            assert time.monotonic() < deadline, "the block never reached the second server"
            await asyncio.sleep(0.05)
        assert second.services.throttle.blocked(keys_for(ACCOUNT, OWNER)) is None
    finally:
        await first.stop()
        await second.stop()


# -- issuance limits ---------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    """The limiter's clock, moved by hand: 10 s into a window."""
    return ManualClock(1_800_000_010.0)


async def open_pair(tmp_path: Path, database_url: str, limit: int, clock: ManualClock) -> tuple[Services, Services]:
    settings = make_settings(tmp_path, database_url, issuance_rate_limit=limit)
    first = await Services.open(settings, initialise=True, clock=clock)
    second = await Services.open(settings, clock=clock)
    return first, second


async def test_limiter_allows_the_limit_then_says_when_the_window_ends(
    tmp_path: Path, database_url: str, clock: ManualClock
) -> None:
    limiter = IssuanceLimiter(Store(make_settings(tmp_path, database_url).sqlalchemy_url), limit=3, clock=clock)
    try:
        assert [limiter.hit("client:a") for _ in range(3)] == [None, None, None]
        assert limiter.hit("client:a") == pytest.approx(50)
        assert limiter.hit("client:b") is None  # per key
        clock.advance(50)  # the next window
        assert limiter.hit("client:a") is None
    finally:
        await limiter._store.close()


async def test_limiter_off_counts_nothing_and_touches_no_database(services: Services) -> None:
    limiter = IssuanceLimiter(services.store, limit=0)
    with counting_statements(services.store) as statements:
        assert all(limiter.hit("client:a") is None for _ in range(10_000))
        await limiter.sync()
    assert statements == []


async def test_limiter_hit_does_no_database_work(services: Services) -> None:
    limiter = IssuanceLimiter(services.store, limit=1_000_000)
    with counting_statements(services.store) as statements:
        for _ in range(1000):
            limiter.hit("client:a")
    assert statements == []
    assert not inspect.iscoroutinefunction(limiter.hit)


async def test_two_instances_share_the_limit_through_sync(
    tmp_path: Path, database_url: str, clock: ManualClock
) -> None:
    first, second = await open_pair(tmp_path, database_url, limit=5, clock=clock)
    try:
        assert [first.limiter.hit("client:a") for _ in range(3)] == [None] * 3
        await first.limiter.sync()
        assert [second.limiter.hit("client:a") for _ in range(2)] == [None] * 2
        await second.limiter.sync()
        assert second.limiter.count("client:a") == 5
        assert second.limiter.hit("client:a") is not None
        # The first instance learns the total at its next sync although it issued nothing since.
        assert first.limiter.count("client:a") == 3
        await first.limiter.sync()
        assert first.limiter.count("client:a") == 5
        assert first.limiter.hit("client:a") is not None
        assert first.limiter.hit("client:b") is None
    finally:
        await first.close()
        await second.close()


async def test_limit_is_exact_within_one_process_between_syncs(tmp_path: Path, database_url: str,
                                                               clock: ManualClock) -> None:
    first, second = await open_pair(tmp_path, database_url, limit=10, clock=clock)
    try:
        for _ in range(4):
            first.limiter.hit("user:u")
        await first.limiter.sync()
        await second.limiter.sync()  # knows nothing of user:u yet: it has not counted it
        results = [second.limiter.hit("user:u") for _ in range(12)]
        # Unsynced, the second instance allows its own 10: the approximation is one sync interval of traffic.
        assert results.count(None) == 10
        await second.limiter.sync()
        await first.limiter.sync()
        assert first.limiter.count("user:u") == 14
        assert first.limiter.hit("user:u") is not None
    finally:
        await first.close()
        await second.close()


async def test_counts_of_a_new_window_replace_the_old_and_old_windows_are_purged(
    tmp_path: Path, database_url: str, clock: ManualClock
) -> None:
    first, second = await open_pair(tmp_path, database_url, limit=5, clock=clock)
    try:
        for _ in range(5):
            first.limiter.hit("client:a")
        await first.limiter.sync()
        clock.advance(60)
        second.limiter.hit("client:a")
        await second.limiter.sync()
        assert second.limiter.count("client:a") == 1
        table = schema.rate_counters
        async with first.store.connect() as conn:
            stored = (await conn.execute(sa.select(table.c.window_started, table.c.count))).all()
        assert [tuple(r) for r in stored] == [(1_800_000_060.0, 1)]
        assert await first.limiter.purge(clock.now() + 60) == 0
        assert await first.limiter.purge(clock.now() + 180) == 1
    finally:
        await first.close()
        await second.close()


async def test_a_failed_sync_keeps_the_counts_for_the_next(services: Services, clock: ManualClock,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = IssuanceLimiter(services.store, limit=10, clock=clock)
    for _ in range(3):
        limiter.hit("client:a")

    async def down(*_args: Any) -> Any:
        raise OSError("database down")

    with monkeypatch.context() as patch:
        patch.setattr(limiter, "_fold", down)
        with pytest.raises(OSError):
            await limiter.sync()
    assert limiter.count("client:a") == 3
    await limiter.sync()
    assert limiter.count("client:a") == 3
    async with services.store.connect() as conn:
        assert (await conn.execute(sa.select(schema.rate_counters.c.count))).scalar() == 3
