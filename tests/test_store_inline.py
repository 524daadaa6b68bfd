"""The inline SQLite writer: hot-path writes on the event loop's thread, sharing the file with other connections."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bankgate.sandbox.payments import PaymentBook, PaymentOrder
from bankgate.store import Store
from bankgate.store.inline import savepoint

ORDER = PaymentOrder("app_1", "12.50", "EUR", "Invoice 1")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'bankgate.db'}")
    await store.migrate()
    yield store
    await store.close()


def _payments(path: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM payments").fetchone()[0])


async def test_a_sqlite_file_gets_one_engine_connection_and_an_inline_writer(store: Store, tmp_path: Path) -> None:
    assert store.inline is not None
    assert store.engine.pool.size() == 1
    memory = Store("sqlite+aiosqlite://")
    try:
        assert memory.inline is None  # nothing to share: each in-memory connection would be its own database
    finally:
        await memory.close()


async def test_writes_wait_for_another_connections_lock_without_blocking_the_loop(store: Store) -> None:
    path = store.engine.url.database
    book = PaymentBook(store, "sandbox")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        writes = [asyncio.create_task(book.create("client:a", ORDER, f"k-{n}")) for n in range(50)]
        await asyncio.sleep(0.3)
        assert not any(write.done() for write in writes)
        assert ticks >= 10  # the loop kept serving while the writes waited
        other.execute("COMMIT")
        made = await asyncio.wait_for(asyncio.gather(*writes), 10)
    finally:
        ticker.cancel()
        other.close()
    assert len({payment.id for payment in made}) == 50
    assert _payments(path) == 50


async def test_a_unit_of_work_that_fails_is_rolled_back_and_the_writer_goes_on(store: Store) -> None:
    assert store.inline is not None
    path = store.engine.url.database

    def half_then_fail(connection: sqlite3.Connection) -> None:
        with savepoint(connection):
            connection.execute("INSERT INTO bankgate_meta (key, value) VALUES ('a', '1')")
            connection.execute("INSERT INTO no_such_table VALUES (1)")

    def write(connection: sqlite3.Connection, key: str) -> None:
        connection.execute("INSERT INTO bankgate_meta (key, value) VALUES (?, '1')", (key,))

    # Queued in the same turn of the loop, so committed in one group: the failing unit alone is undone.
    results = await asyncio.gather(
        store.inline.run(write, "before"), store.inline.run(half_then_fail), store.inline.run(write, "after"),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], sqlite3.OperationalError) and "no_such_table" in str(results[1])
    with sqlite3.connect(path) as reader:
        assert reader.execute("SELECT count(*) FROM bankgate_meta WHERE key = 'a'").fetchone()[0] == 0
        assert reader.execute(
            "SELECT count(*) FROM bankgate_meta WHERE key IN ('before', 'after')"
        ).fetchone()[0] == 2

    book = PaymentBook(store, "sandbox")
    await book.create("client:a", ORDER, "k-1")
    again = await book.create("client:a", ORDER, "k-1")  # the unique key: the first payment, not a second
    assert _payments(path) == 1
    assert (await book.get(again.id)) is not None


async def test_a_closed_writer_refuses_work(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'bankgate.db'}")
    await store.migrate()
    await store.close()
    assert store.inline is not None
    with pytest.raises(RuntimeError, match="closed"):
        await store.inline.run(lambda connection: None)


async def test_units_queued_in_one_turn_of_the_loop_share_one_transaction(store: Store) -> None:
    assert store.inline is not None
    seen: list[bool] = []

    def write(connection: sqlite3.Connection, key: str) -> int:
        seen.append(connection.in_transaction)
        connection.execute("INSERT INTO bankgate_meta (key, value) VALUES (?, '1')", (key,))
        return connection.total_changes

    changes = await asyncio.gather(*(store.inline.run(write, f"k{n}") for n in range(20)))
    assert seen == [True] * 20  # inside the group's BEGIN IMMEDIATE, not autocommit
    assert changes == sorted(changes) and len(set(changes)) == 20  # one after the other, in the order queued
    with sqlite3.connect(store.engine.url.database) as reader:
        assert reader.execute("SELECT count(*) FROM bankgate_meta WHERE key LIKE 'k%'").fetchone()[0] == 20


async def test_a_caller_resumes_only_once_its_write_is_visible_to_other_connections(store: Store) -> None:
    assert store.inline is not None
    path = store.engine.url.database
    payments = await asyncio.gather(
        *(PaymentBook(store, "sandbox").create("client:a", ORDER, f"k-{n}") for n in range(10))
    )
    with sqlite3.connect(path) as reader:  # another connection, as another process would be
        ids = {row[0] for row in reader.execute("SELECT id FROM payments")}
    assert {payment.id for payment in payments} <= ids


async def test_a_unit_whose_caller_was_cancelled_before_the_commit_does_not_run(store: Store) -> None:
    assert store.inline is not None
    ran: list[str] = []

    def write(connection: sqlite3.Connection, key: str) -> None:
        ran.append(key)

    kept = asyncio.create_task(store.inline.run(write, "kept"))
    dropped = asyncio.create_task(store.inline.run(write, "dropped"))
    await asyncio.sleep(0)  # both queued
    dropped.cancel()
    await kept
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert ran == ["kept"]


async def test_submit_queues_the_unit_when_called_and_its_future_is_what_callers_await(store: Store) -> None:
    assert store.inline is not None
    ran: list[str] = []

    def write(connection: sqlite3.Connection, key: str) -> str:
        ran.append(key)
        return key

    assert await store.inline.submit(write, "opening") == "opening"  # the first call opens the connection first
    first = store.inline.submit(write, "first")  # queued here, before anything awaits it
    second = store.inline.submit(write, "second")
    assert isinstance(first, asyncio.Future)
    assert await asyncio.gather(second, first) == ["second", "first"]
    assert ran == ["opening", "first", "second"]  # in the order submitted, not the order awaited

    async def caller(key: str) -> str:
        return await store.inline.submit(write, key)

    dropped = asyncio.create_task(caller("dropped"))
    await asyncio.sleep(0)  # the caller awaits the unit's future itself
    dropped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dropped
    await store.inline.run(write, "after")
    assert ran[-1] == "after" and "dropped" not in ran


def _count_meta(connection: sqlite3.Connection, key: str) -> int:
    return int(connection.execute("SELECT count(*) FROM bankgate_meta WHERE key = ?", (key,)).fetchone()[0])


async def test_reads_of_one_turn_share_a_snapshot_and_the_next_turn_sees_newer_commits(store: Store) -> None:
    assert store.inline is not None
    path = store.engine.url.database
    await store.inline.run(lambda connection: None)  # opened
    other = sqlite3.connect(path, isolation_level=None)  # another process
    try:
        assert store.inline.read(_count_meta, "other") == 0
        other.execute("INSERT INTO bankgate_meta (key, value) VALUES ('other', '1')")
        # Within the turn, the reads share the snapshot of the first (and so skip SQLite's per-read locking) ...
        assert store.inline.read(_count_meta, "other") == 0
        # ... which holds up no writer: another connection commits meanwhile, and so does the writer's own group.
        other.execute("INSERT INTO bankgate_meta (key, value) VALUES ('other-2', '1')")

        def write(connection: sqlite3.Connection) -> int:
            connection.execute("INSERT INTO bankgate_meta (key, value) VALUES ('own', '1')")
            return _count_meta(connection, "other")

        assert await store.inline.run(write) == 1  # the group began after the read's transaction ended
        assert store.inline.read(_count_meta, "own") == 1  # a later turn: a fresh snapshot
        assert store.inline.read(_count_meta, "other-2") == 1
        await asyncio.sleep(0)  # the turn ends: so does its read transaction
        other.execute("INSERT INTO bankgate_meta (key, value) VALUES ('other-3', '1')")
        assert store.inline.read(_count_meta, "other-3") == 1
        await asyncio.sleep(0)
        assert other.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] == 0  # no reader left behind
    finally:
        other.close()


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'bankgate.db'}")
    await store.migrate()
    assert store.inline is not None
    await store.inline.run(lambda connection: None)  # opened

    def write(connection: sqlite3.Connection) -> str:
        connection.execute("INSERT INTO bankgate_meta (key, value) VALUES ('last', '1')")
        return "written"

    last = asyncio.create_task(store.inline.run(write))
    await asyncio.sleep(0)  # queued, not yet flushed
    await store.close()
    assert await last == "written"
    assert _meta_count(str(tmp_path / "bankgate.db"), "last") == 1


def _meta_count(path: str, key: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM bankgate_meta WHERE key = ?", (key,)).fetchone()[0])
