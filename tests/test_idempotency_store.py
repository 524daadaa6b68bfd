"""One specification for every Idempotency-Key store: SQLite file, PostgreSQL, Redis and memory."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from bankgate.config import Settings
from bankgate.idempotency import (
    AtomicStore,
    Claim,
    IdempotencyStore,
    MemoryIdempotencyStore,
    Ready,
    RedisIdempotencyStore,
    SealedStore,
    SqlIdempotencyStore,
    StoredResponse,
    Write,
    fingerprint,
    open_store,
)
from bankgate.idempotency._sql import decode_headers, encode_headers
from bankgate.store import Store, schema
from bankgate.vault import Vault

FP = fingerprint("POST", "/api/v1/payments", b"", b'{"amount": "10.00"}')
OTHER_FP = fingerprint("POST", "/api/v1/payments", b"", b'{"amount": "99.00"}')
DAY = 86400.0
THIRTY_DAYS = 2_592_000.0
RESPONSE = StoredResponse(
    201,
    ((b"content-type", b"application/json"), (b"location", b"/api/v1/payments/pay_1")),
    b'{"id": "pay_1"}',
)


@dataclass
class Backend:
    """A store under test, and a way to open more stores on the same data (other connections, other pools)."""

    kind: str
    open: Callable[[], Awaitable[IdempotencyStore]]
    sql: list[Store] = field(default_factory=list)
    redis_url: str = ""
    redis_prefix: str = ""


async def _sql_backend(kind: str, database_url: str, tmp_path: Path) -> Backend:
    url = Settings(database_url=database_url, data_dir=tmp_path).sqlalchemy_url
    backend = Backend(kind, None)  # type: ignore[arg-type]

    async def open_sql() -> IdempotencyStore:
        store = Store(url)
        backend.sql.append(store)
        return SqlIdempotencyStore(store)

    backend.open = open_sql
    migrator = Store(url)
    await migrator.migrate()
    await migrator.close()
    return backend


@pytest.fixture(params=["sqlite", "postgresql", "redis", "memory", "sqlite-in-memory"])
def backend_kind(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    """Which store, and where: resolved outside the event loop (the PostgreSQL fixture runs its own loop)."""
    if request.param == "sqlite":
        return "sqlite", f"sqlite:///{tmp_path / 'idem.db'}", ""
    if request.param == "postgresql":
        return "postgresql", request.getfixturevalue("migrated_postgres_url"), ""  # `backend` migrates it anyway
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    if request.param == "sqlite-in-memory":  # no file to share: runs through SQLAlchemy on one connection
        return "sqlite-in-memory", "sqlite+aiosqlite:///:memory:", ""
    return "memory", "", ""


@pytest.fixture
async def backend(backend_kind: tuple[str, str, str], tmp_path: Path) -> AsyncIterator[Backend]:
    kind, url, prefix = backend_kind
    opened: list[IdempotencyStore] = []
    if kind in ("sqlite", "postgresql"):
        made = await _sql_backend(kind, url, tmp_path)
    elif kind == "sqlite-in-memory":
        database = Store(url)
        await database.migrate()

        async def open_in_memory() -> IdempotencyStore:
            return SqlIdempotencyStore(database)

        made = Backend(kind, open_in_memory, sql=[database])
    elif kind == "redis":

        async def open_redis() -> IdempotencyStore:
            return RedisIdempotencyStore(url, prefix=prefix)

        made = Backend("redis", open_redis, redis_url=url, redis_prefix=prefix)
    else:
        shared = MemoryIdempotencyStore()

        async def open_memory() -> IdempotencyStore:
            return shared

        made = Backend("memory", open_memory)

    inner = made.open

    async def tracked() -> IdempotencyStore:
        store = await inner()
        opened.append(store)
        return store

    made.open = tracked
    yield made
    for store in opened:
        await store.close()
    for sql_store in made.sql:
        await sql_store.close()


@pytest.fixture
async def store(backend: Backend) -> IdempotencyStore:
    return await backend.open()


async def claimed(store: IdempotencyStore, principal: str = "client:a", key: str = "k-1", fp: str = FP,
                  lease: float = 30.0, retention: float = DAY) -> str:
    claim = await store.claim(principal, key, fp, lease=lease, retention=retention)
    assert claim.outcome == "claimed", claim
    assert claim.owner
    return claim.owner


# -- the named states -----------------------------------------------------------------------------------------


async def test_a_new_key_is_claimed_and_replayed_once_completed(store: IdempotencyStore) -> None:
    owner = await claimed(store)
    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)

    again = await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)

    assert again == Claim("completed", response=RESPONSE)


async def test_a_running_key_is_in_progress_with_the_time_left_on_its_lease(store: IdempotencyStore) -> None:
    await claimed(store, lease=30)

    again = await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)

    assert again.outcome == "in_progress"
    assert again.owner is None and again.response is None
    assert again.retry_after is not None and 25 < again.retry_after <= 30


async def test_the_same_key_for_another_request_is_a_mismatch_while_running_and_once_completed(
    store: IdempotencyStore,
) -> None:
    owner = await claimed(store)
    assert await store.claim("client:a", "k-1", OTHER_FP, lease=30, retention=DAY) == Claim("mismatch")

    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)
    assert await store.claim("client:a", "k-1", OTHER_FP, lease=30, retention=DAY) == Claim("mismatch")


async def test_owners_are_random_per_claim(store: IdempotencyStore) -> None:
    first = await claimed(store, key="k-1")
    second = await claimed(store, key="k-2")
    assert first != second
    assert len(first) == 32


async def test_completing_twice_keeps_the_first_response(store: IdempotencyStore) -> None:
    owner = await claimed(store)
    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)
    other = StoredResponse(200, (), b"second")

    assert not await store.complete("client:a", "k-1", owner, other, retention=DAY)
    assert not await store.extend("client:a", "k-1", owner, lease=30)
    await store.release("client:a", "k-1", owner)

    assert (await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)).response == RESPONSE


# -- lookup: a retry of a finished request, answered by a read ------------------------------------------------


async def test_lookup_answers_for_a_completed_key_only(store: IdempotencyStore) -> None:
    assert await store.lookup("client:a", "k-1", FP, retention=DAY) is None  # absent
    owner = await claimed(store)
    assert await store.lookup("client:a", "k-1", FP, retention=DAY) is None  # started: the claim says 409
    assert await store.lookup("client:a", "k-1", OTHER_FP, retention=DAY) is None

    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)

    assert await store.lookup("client:a", "k-1", FP, retention=DAY) == Claim("completed", response=RESPONSE)
    assert await store.lookup("client:a", "k-1", OTHER_FP, retention=DAY) == Claim("mismatch")
    assert await store.lookup("client:b", "k-1", FP, retention=DAY) is None  # keys are per principal
    assert await store.lookup("client:a", "k-2", FP, retention=DAY) is None


async def test_lookup_on_a_sqlite_file_or_in_memory_answers_at_once(backend: Backend) -> None:
    store = await backend.open()
    owner = await claimed(store)  # a SQLite file's reads go on the connection its first write opened
    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)

    found = store.lookup("client:a", "k-1", FP, retention=DAY)
    missing = store.lookup("client:a", "k-2", FP, retention=DAY)
    if backend.kind in ("sqlite", "memory"):
        # Nothing to wait for: the answer is there without an await, and the middleware takes it as it is.
        assert isinstance(found, Ready) and isinstance(missing, Ready)
        assert found.value == Claim("completed", response=RESPONSE) and missing.value is None
    else:
        assert not isinstance(found, Ready)
    assert await found == Claim("completed", response=RESPONSE)
    assert await missing is None


async def test_lookup_finds_a_key_completed_through_another_connection(backend: Backend) -> None:
    writer, reader = await backend.open(), await backend.open()
    await claimed(reader, key="k-0")  # the reader has written before (a SQLite file's reader opens with its writes)
    owner = await claimed(writer)
    assert await writer.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)

    assert await reader.lookup("client:a", "k-1", FP, retention=DAY) == Claim("completed", response=RESPONSE)


async def test_lookup_ignores_a_completed_key_past_its_retention_or_the_askers(store: IdempotencyStore) -> None:
    short = await claimed(store, key="short")
    assert await store.complete("client:a", "short", short, RESPONSE, retention=0.3)
    long = await claimed(store, key="long")
    assert await store.complete("client:a", "long", long, RESPONSE, retention=DAY)
    assert (await store.lookup("client:a", "short", FP, retention=DAY)) == Claim("completed", response=RESPONSE)

    await asyncio.sleep(0.45)

    assert await store.lookup("client:a", "short", FP, retention=DAY) is None
    assert await store.lookup("client:a", "long", FP, retention=0.3) is None
    assert await store.lookup("client:a", "long", FP, retention=DAY) == Claim("completed", response=RESPONSE)


async def test_a_sealed_store_looks_up_the_response_in_clear_while_it_rests_sealed(store: IdempotencyStore) -> None:
    sealed = SealedStore(store, Vault(secrets.token_bytes(32)))
    owner = await claimed(sealed)
    assert await sealed.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)

    assert await sealed.lookup("client:a", "k-1", FP, retention=DAY) == Claim("completed", response=RESPONSE)
    resting = await store.lookup("client:a", "k-1", FP, retention=DAY)
    assert resting is not None and resting.response is not None
    assert resting.response.status == RESPONSE.status and RESPONSE.body not in resting.response.body
    assert await sealed.lookup("client:a", "k-1", OTHER_FP, retention=DAY) == Claim("mismatch")


# -- leases: a crash never wedges a key -----------------------------------------------------------------------


async def test_a_key_whose_lease_has_passed_can_be_claimed_again(store: IdempotencyStore) -> None:
    first = await claimed(store, lease=0.3)
    await asyncio.sleep(0.45)

    second = await claimed(store, lease=30)

    assert second != first


async def test_a_lease_that_passed_is_taken_over_even_by_a_different_request(store: IdempotencyStore) -> None:
    await claimed(store, lease=0.3)
    await asyncio.sleep(0.45)

    await claimed(store, fp=OTHER_FP)


async def test_a_stale_owner_cannot_complete_extend_or_release_after_a_takeover(store: IdempotencyStore) -> None:
    stale = await claimed(store, lease=0.3)
    await asyncio.sleep(0.45)
    fresh = await claimed(store, lease=30)

    assert not await store.complete("client:a", "k-1", stale, StoredResponse(200, (), b"stale"), retention=DAY)
    assert not await store.extend("client:a", "k-1", stale, lease=30)
    await store.release("client:a", "k-1", stale)

    assert (await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)).outcome == "in_progress"
    assert await store.complete("client:a", "k-1", fresh, RESPONSE, retention=DAY)
    assert (await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)).response == RESPONSE


async def test_extend_keeps_a_long_request_in_progress_past_its_first_lease(store: IdempotencyStore) -> None:
    owner = await claimed(store, lease=0.3)
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await store.extend("client:a", "k-1", owner, lease=0.3)

    again = await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)

    assert again.outcome == "in_progress"
    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)


async def test_extend_by_a_stranger_does_nothing(store: IdempotencyStore) -> None:
    await claimed(store, lease=0.3)

    assert not await store.extend("client:a", "k-1", "0" * 32, lease=30)
    await asyncio.sleep(0.45)

    await claimed(store)


async def test_a_released_key_runs_again_as_after_a_5xx(store: IdempotencyStore) -> None:
    owner = await claimed(store)

    await store.release("client:a", "k-1", owner)

    assert await claimed(store) != owner


async def test_release_by_a_stranger_leaves_the_claim_in_place(store: IdempotencyStore) -> None:
    await claimed(store)

    await store.release("client:a", "k-1", "f" * 32)

    assert (await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)).outcome == "in_progress"


# -- retention -----------------------------------------------------------------------------------------------


async def test_a_completed_key_is_free_again_after_its_retention(store: IdempotencyStore) -> None:
    owner = await claimed(store)
    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=0.3)
    assert (await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)).outcome == "completed"

    await asyncio.sleep(0.45)

    await claimed(store, fp=OTHER_FP)


async def test_a_completed_key_older_than_the_claims_retention_counts_as_absent(store: IdempotencyStore) -> None:
    owner = await claimed(store)
    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=DAY)
    await asyncio.sleep(0.35)

    fresh = await store.claim("client:a", "k-1", FP, lease=30, retention=0.3)

    assert fresh.outcome == "claimed"


async def test_thirty_days_retention_keeps_the_response_and_survives_purge(store: IdempotencyStore) -> None:
    owner = await claimed(store, retention=THIRTY_DAYS)
    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=THIRTY_DAYS)

    await store.purge()

    again = await store.claim("client:a", "k-1", FP, lease=30, retention=THIRTY_DAYS)
    assert again == Claim("completed", response=RESPONSE)


async def test_purge_deletes_ended_records_and_keeps_live_ones(backend: Backend, store: IdempotencyStore) -> None:
    ended = await claimed(store, key="ended-lease", lease=0.2)
    done = await claimed(store, key="ended-retention")
    assert await store.complete("client:a", "ended-retention", done, RESPONSE, retention=0.2)
    await claimed(store, key="running")
    kept = await claimed(store, key="kept")
    assert await store.complete("client:a", "kept", kept, RESPONSE, retention=DAY)
    await asyncio.sleep(0.35)

    purged = await store.purge()

    assert purged == (0 if backend.kind == "redis" else 2)  # Redis expires records itself
    assert (await store.claim("client:a", "running", FP, lease=30, retention=DAY)).outcome == "in_progress"
    assert (await store.claim("client:a", "kept", FP, lease=30, retention=DAY)).outcome == "completed"
    assert await claimed(store, key="ended-lease") != ended
    await claimed(store, key="ended-retention")


# -- scope and shape -----------------------------------------------------------------------------------------


async def test_the_same_key_of_two_principals_is_two_independent_records(store: IdempotencyStore) -> None:
    alice = await claimed(store, principal="client:alice")
    bob = await claimed(store, principal="client:bob", fp=OTHER_FP)
    assert await store.complete("client:alice", "k-1", alice, RESPONSE, retention=DAY)

    assert not await store.complete("client:bob", "k-1", alice, RESPONSE, retention=DAY)
    assert (await store.claim("client:bob", "k-1", OTHER_FP, lease=30, retention=DAY)).outcome == "in_progress"
    await store.release("client:bob", "k-1", bob)
    assert (await store.claim("client:alice", "k-1", FP, lease=30, retention=DAY)).outcome == "completed"


async def test_long_principals_and_255_character_keys_are_kept_apart(store: IdempotencyStore) -> None:
    key = "k" * 255
    first, second = "client:" + "a" * 400, "client:" + "a" * 399 + "b"
    owner = await claimed(store, principal=first, key=key)
    assert await store.complete(first, key, owner, RESPONSE, retention=DAY)

    await claimed(store, principal=second, key=key, fp=OTHER_FP)

    assert (await store.claim(first, key, FP, lease=30, retention=DAY)).response == RESPONSE


async def test_replay_keeps_binary_bodies_and_raw_header_bytes_exactly(store: IdempotencyStore) -> None:
    response = StoredResponse(
        200,
        ((b"content-type", b"application/octet-stream"), (b"x-name", b"caf\xe9 \x80\xff"), (b"x-empty", b"")),
        bytes(range(256)) * 64 + b"\n\x00\n",
    )
    owner = await claimed(store)
    assert await store.complete("client:a", "k-1", owner, response, retention=DAY)

    assert (await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)).response == response


async def test_a_response_larger_than_64_kib_is_kept_whole(store: IdempotencyStore) -> None:
    response = StoredResponse(200, ((b"content-type", b"application/pdf"),), bytes(range(256)) * 1024)
    owner = await claimed(store)
    assert await store.complete("client:a", "k-1", owner, response, retention=DAY)

    assert (await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)).response == response


async def test_an_empty_body_and_a_4xx_status_are_replayed(store: IdempotencyStore) -> None:
    response = StoredResponse(404, (), b"")
    owner = await claimed(store)
    assert await store.complete("client:a", "k-1", owner, response, retention=DAY)

    assert (await store.claim("client:a", "k-1", FP, lease=30, retention=DAY)).response == response


# -- concurrency ---------------------------------------------------------------------------------------------


async def _race(backend: Backend, claims: int, connections: int) -> list[Claim]:
    stores = [await backend.open() for _ in range(connections)]
    return await asyncio.gather(
        *(
            stores[n % connections].claim("client:a", "race", FP, lease=30, retention=DAY)
            for n in range(claims)
        )
    )


async def test_one_hundred_concurrent_claims_of_one_key_make_exactly_one_claimed(backend: Backend) -> None:
    outcomes = await _race(backend, 100, 4)

    assert [claim.outcome for claim in outcomes].count("claimed") == 1
    assert {claim.outcome for claim in outcomes} == {"claimed", "in_progress"}


async def test_concurrent_takeovers_of_an_ended_lease_make_exactly_one_claimed(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("client:a", "race", FP, lease=0.2, retention=DAY)
    await asyncio.sleep(0.35)

    outcomes = await _race(backend, 50, 4)

    assert [claim.outcome for claim in outcomes].count("claimed") == 1


async def test_concurrent_claims_of_a_completed_key_all_replay(backend: Backend) -> None:
    store = await backend.open()
    owner = await claimed(store, key="race")
    assert await store.complete("client:a", "race", owner, RESPONSE, retention=DAY)

    outcomes = await _race(backend, 50, 4)

    assert all(claim == Claim("completed", response=RESPONSE) for claim in outcomes)


# -- what each store keeps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend_kind", ["sqlite", "postgresql", "sqlite-in-memory"], indirect=True)
async def test_sql_rows_move_from_started_to_completed_with_their_expiry(backend: Backend) -> None:
    store = await backend.open()
    table = schema.idempotency_keys
    query = sa.select(table).where(table.c.key == "k-1")
    before = time.time()
    owner = await claimed(store, lease=30)
    async with backend.sql[0].connect() as conn:
        started = (await conn.execute(query)).mappings().one()
    assert started["state"] == "started"
    assert started["owner"] == owner
    assert started["expires_at"] == started["lease_until"]
    assert before + 29 < started["lease_until"] <= time.time() + 30

    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=THIRTY_DAYS)
    async with backend.sql[0].connect() as conn:
        completed = (await conn.execute(query)).mappings().one()
    assert completed["state"] == "completed"
    assert before + THIRTY_DAYS - 1 < completed["expires_at"] <= time.time() + THIRTY_DAYS
    assert completed["status"] == 201
    assert json.loads(completed["headers"]) == [
        ["content-type", "application/json"], ["location", "/api/v1/payments/pay_1"]
    ]
    assert bytes(completed["body"]) == RESPONSE.body


@pytest.mark.parametrize("backend_kind", ["sqlite"], indirect=True)
async def test_sqlite_waits_for_another_writer_without_blocking_the_event_loop(backend: Backend) -> None:
    store = await backend.open()
    other = sqlite3.connect(backend.sql[0].engine.url.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        waiting = asyncio.create_task(store.claim("client:a", "k-1", FP, lease=30, retention=DAY))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert ticks >= 10  # the loop kept running while the claim waited
        other.execute("COMMIT")
        assert (await asyncio.wait_for(waiting, 5)).outcome == "claimed"
    finally:
        ticker.cancel()
        other.close()


@pytest.mark.parametrize("backend_kind", ["sqlite"], indirect=True)
async def test_sqlite_checkpoints_keep_the_write_ahead_log_bounded(backend: Backend) -> None:
    store = await backend.open()
    wal = Path(backend.sql[0].engine.url.database + "-wal")
    for n in range(3000):
        owner = await claimed(store, key=f"k-{n}")
        assert await store.complete("client:a", f"k-{n}", owner, RESPONSE, retention=DAY)

    assert wal.stat().st_size < 16 * 1024 * 1024  # about 80 MB without checkpoints


@pytest.mark.parametrize("backend_kind", ["redis"], indirect=True)
async def test_redis_records_expire_by_their_own_ttl_under_hashed_names(backend: Backend) -> None:
    import redis.asyncio

    store = await backend.open()
    owner = await claimed(store, lease=30)
    assert await store.complete("client:a", "k-1", owner, RESPONSE, retention=THIRTY_DAYS)

    client = redis.asyncio.Redis.from_url(backend.redis_url)
    try:
        names = [name async for name in client.scan_iter(match=backend.redis_prefix + "*")]
        assert len(names) == 1
        assert THIRTY_DAYS * 1000 - 5000 < await client.pttl(names[0]) <= THIRTY_DAYS * 1000
        assert b"k-1" not in names[0] and b"client:a" not in names[0]  # hashed: bounded and unambiguous
    finally:
        await client.aclose()


# -- choosing a store ----------------------------------------------------------------------------------------


async def test_open_store_picks_the_store_a_setting_names(tmp_path: Path, redis_url: str) -> None:
    store = Store(Settings(data_dir=tmp_path).sqlalchemy_url)
    try:
        assert isinstance(open_store("database", store), SqlIdempotencyStore)
        assert isinstance(open_store("memory", store), MemoryIdempotencyStore)
        redis_store = open_store(redis_url, store)
        assert isinstance(redis_store, RedisIdempotencyStore)
        await redis_store.close()
        with pytest.raises(ValueError, match="unknown idempotency store") as refused:
            open_store("memcached://user:hunter2@cache:11211", store)
        assert "hunter2" not in str(refused.value)
    finally:
        await store.close()


async def test_every_store_satisfies_the_store_protocol(store: IdempotencyStore) -> None:
    assert isinstance(store, IdempotencyStore)


async def test_closing_a_store_twice_is_harmless(store: IdempotencyStore) -> None:
    await claimed(store)

    await store.close()
    await store.close()


def test_claim_owners_are_unique_within_a_process_and_differ_in_a_forked_child() -> None:
    import os

    from bankgate.idempotency._types import new_owner

    owners = [new_owner() for _ in range(10_000)]
    assert len(set(owners)) == len(owners)
    assert all(len(owner) == 32 and int(owner, 16) >= 0 for owner in owners)  # fits the 32-character column
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's half
        os.write(write, new_owner().encode())
        os._exit(0)
    os.close(write)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(child, 0)
    assert theirs[:16] != owners[0][:16]  # a new prefix: the parent's counter does not carry over


# -- atomic commits: the key, the handler's writes and the response in one transaction ---------------------------

SQL_KINDS = ["sqlite", "postgresql", "sqlite-in-memory"]


def _payment_row(payment_id: str, key: str) -> dict[str, object]:
    return {"id": payment_id, "principal": "client:a", "application_id": "app_1", "amount": "10.00",
            "currency": "EUR", "reference": "invoice", "status": "accepted", "environment": "sandbox",
            "idempotency_key": key, "created_at": time.time()}


def _pay(payment_id: str, key: str = "k-1") -> Write:
    return Write(schema.payments.insert(), _payment_row(payment_id, key))


async def _payment_ids(backend: Backend) -> list[str]:
    async with backend.sql[0].connect() as conn:
        return sorted((await conn.execute(sa.select(schema.payments.c.id))).scalars())


async def _key_rows(backend: Backend) -> list[str]:
    async with backend.sql[0].connect() as conn:
        table = schema.idempotency_keys
        return list((await conn.execute(sa.select(table.c.key, table.c.state))).all())


async def _commit(store: IdempotencyStore, *writes: Write, key: str = "k-1", fp: str = FP,
                  response: StoredResponse = RESPONSE, retention: float = DAY) -> Claim:
    assert isinstance(store, AtomicStore)
    return await store.commit("client:a", key, fp, response, writes, retention=retention)


@pytest.mark.parametrize("backend_kind", SQL_KINDS, indirect=True)
async def test_a_commit_makes_the_writes_and_keeps_the_response_at_once(backend: Backend) -> None:
    store = await backend.open()

    first = await _commit(store, _pay("pay_1"))

    assert first.outcome == "claimed" and first.owner
    assert await _payment_ids(backend) == ["pay_1"]
    assert await _key_rows(backend) == [("k-1", "completed")]
    # Every other way in finds the key completed with the response: a claim, and a second commit whose
    # write is then never made.
    assert await store.claim("client:a", "k-1", FP, lease=30, retention=DAY) == Claim("completed", response=RESPONSE)
    assert await _commit(store, _pay("pay_2")) == Claim("completed", response=RESPONSE)
    assert await _payment_ids(backend) == ["pay_1"]


@pytest.mark.parametrize("backend_kind", SQL_KINDS, indirect=True)
async def test_a_commit_of_a_used_key_writes_nothing_and_says_why(backend: Backend) -> None:
    store = await backend.open()
    assert (await _commit(store, _pay("pay_1"))).outcome == "claimed"
    running = await claimed(store, key="running")

    assert await _commit(store, _pay("pay_2"), fp=OTHER_FP) == Claim("mismatch")
    in_progress = await _commit(store, _pay("pay_3", "running"), key="running")
    assert in_progress.outcome == "in_progress" and 0 < (in_progress.retry_after or 0) <= 30

    assert await _payment_ids(backend) == ["pay_1"]
    assert await store.complete("client:a", "running", running, RESPONSE, retention=DAY)


@pytest.mark.parametrize("backend_kind", SQL_KINDS, indirect=True)
async def test_a_failing_write_leaves_neither_the_writes_nor_the_key(backend: Backend) -> None:
    store = await backend.open()
    assert (await _commit(store, _pay("pay_1"))).outcome == "claimed"

    # The second write breaks the payments' primary key: the first write and the key's record go with it.
    with pytest.raises((sqlite3.IntegrityError, sa.exc.IntegrityError)):
        await _commit(store, _pay("pay_2", "k-2"), _pay("pay_1", "k-3"), key="k-2")

    assert await _payment_ids(backend) == ["pay_1"]
    assert await _key_rows(backend) == [("k-1", "completed")]
    # One write alone (no savepoint: the record is taken back by a statement of its own), over an ended record.
    await store.claim("client:a", "k-2", FP, lease=0.1, retention=DAY)
    await asyncio.sleep(0.2)
    with pytest.raises((sqlite3.IntegrityError, sa.exc.IntegrityError)):
        await _commit(store, _pay("pay_1", "k-4"), key="k-2")
    assert await _payment_ids(backend) == ["pay_1"]
    assert (await _key_rows(backend)) in ([("k-1", "completed")], [("k-1", "completed"), ("k-2", "started")])
    assert (await _commit(store, _pay("pay_2", "k-2"), key="k-2")).outcome == "claimed"  # the key is still free
    assert await _payment_ids(backend) == ["pay_1", "pay_2"]


@pytest.mark.parametrize("backend_kind", SQL_KINDS, indirect=True)
async def test_a_commit_takes_over_an_ended_lease_or_retention(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("client:a", "k-1", FP, lease=0.2, retention=DAY)  # a crashed request's claim
    assert (await _commit(store, _pay("pay_old", "old"), key="old", retention=0.2)).outcome == "claimed"
    await asyncio.sleep(0.35)

    assert (await _commit(store, _pay("pay_1"))).outcome == "claimed"
    assert (await _commit(store, _pay("pay_new", "old-2"), key="old", fp=OTHER_FP)).outcome == "claimed"
    assert await _payment_ids(backend) == ["pay_1", "pay_new", "pay_old"]


@pytest.mark.parametrize("backend_kind", ["sqlite", "postgresql"], indirect=True)
async def test_fifty_concurrent_commits_of_one_key_over_four_connections_make_one_payment(
    backend: Backend,
) -> None:
    stores = [await backend.open() for _ in range(4)]

    outcomes = await asyncio.gather(*(
        _commit(stores[n % 4], _pay(f"pay_{n}"), key="race") for n in range(50)
    ))

    assert [claim.outcome for claim in outcomes].count("claimed") == 1
    assert all(claim == Claim("completed", response=RESPONSE) for claim in outcomes if claim.outcome != "claimed")
    assert len(await _payment_ids(backend)) == 1


async def test_only_the_sql_store_commits_writes_with_a_key(store: IdempotencyStore) -> None:
    assert isinstance(store, AtomicStore) == isinstance(store, SqlIdempotencyStore)


@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=80)), max_size=6))
def test_headers_are_stored_as_the_json_text_json_dumps_writes(headers: list[tuple[bytes, bytes]]) -> None:
    pairs = tuple(headers)
    text = encode_headers(pairs)
    assert text == json.dumps([[name.decode("latin-1"), value.decode("latin-1")] for name, value in pairs])
    assert decode_headers(text) == pairs


@pytest.mark.parametrize("backend_kind", ["sqlite"], indirect=True)
async def test_statements_built_per_request_do_not_grow_the_compiled_cache(backend: Backend) -> None:
    store = await backend.open()
    for n in range(150):  # a new statement object every time, as a handler that builds it per request would
        assert (await _commit(store, _pay(f"pay_{n}", f"k-{n}"), key=f"k-{n}")).outcome == "claimed"

    assert len(await _payment_ids(backend)) == 150
    cache = store._driver._writes  # type: ignore[attr-defined]  # the bound itself, white-box
    assert 0 < len(cache) <= 64
