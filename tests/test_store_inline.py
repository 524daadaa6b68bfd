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
