"""The suite's reusable PostgreSQL databases (`PostgresDatabases`, behind `postgres_url` and `migrated_postgres_url`):
a database handed to the next test is as new, and one that cannot be made so is never handed out again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import PostgresDatabases


async def _query(url: str, statement: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        if statement.startswith("SELECT"):
            return list(await conn.fetch(statement))
        await conn.execute(statement)
        return []
    finally:
        await conn.close()


def query(url: str, statement: str) -> list[Any]:
    return asyncio.run(_query(url, statement))


def tables(url: str) -> list[str]:
    return [row[0] for row in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                         "ORDER BY tablename")]


def databases_named(url: str, name: str) -> int:
    return len(query(url, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))  # noqa: S608 - a test's own name


@pytest.fixture
def pool(postgres_server_url: str) -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(postgres_server_url)
    yield databases
    databases.close()


def test_an_empty_database_comes_back_empty_and_is_reused(pool: PostgresDatabases) -> None:
    name = pool.take_empty()
    url = pool.url(name)
    query(url, "CREATE TABLE leftover (x int); CREATE SCHEMA extra; CREATE TABLE extra.more (y int); "
               "CREATE SEQUENCE counter")
    pool.give_back_empty(name)
    assert pool.take_empty() == name
    assert tables(url) == []
    assert query(url, "SELECT nspname FROM pg_namespace WHERE nspname = 'extra'") == []
    assert query(url, "SELECT 1 FROM pg_class WHERE relname = 'counter'") == []


def test_a_migrated_database_comes_back_with_its_schema_and_without_rows(
    pool: PostgresDatabases, postgres_template: str
) -> None:
    name = pool.take_migrated(postgres_template)
    url = pool.url(name)
    migrated = tables(url)
    assert "alembic_version" in migrated and len(migrated) > 1
    revision = query(url, "SELECT version_num FROM alembic_version")
    query(url, "INSERT INTO bankgate_meta (key, value) VALUES ('left', 'over')")
    pool.give_back_migrated(name, postgres_template)
    assert pool.take_migrated(postgres_template) == name
    assert tables(url) == migrated
    assert query(url, "SELECT * FROM bankgate_meta") == []
    assert query(url, "SELECT version_num FROM alembic_version") == revision


@pytest.mark.parametrize("change", [
    "ALTER TABLE bankgate_meta ADD COLUMN extra int",
    "DROP TABLE bankgate_meta",
    "CREATE INDEX meta_value ON bankgate_meta (value)",
    "UPDATE alembic_version SET version_num = '0001'",
])
def test_a_migrated_database_whose_schema_changed_is_dropped(
    pool: PostgresDatabases, postgres_template: str, change: str
) -> None:
    name = pool.take_migrated(postgres_template)
    query(pool.url(name), change)
    pool.give_back_migrated(name, postgres_template)
    assert databases_named(pool.server_url, name) == 0
    assert pool.take_migrated(postgres_template) != name


def test_a_database_its_test_dropped_is_forgotten(pool: PostgresDatabases) -> None:
    name = pool.take_empty()
    query(pool.server_url, f'DROP DATABASE "{name}"')
    pool.give_back_empty(name)
    assert pool.take_empty() != name


def test_connections_left_open_are_closed_and_the_pool_is_dropped_at_the_end(postgres_server_url: str) -> None:
    pool = PostgresDatabases(postgres_server_url)
    name = pool.take_empty()

    async def hold_open() -> None:
        import asyncpg

        left_open = await asyncpg.connect(pool.url(name), timeout=5)
        pool_reset = asyncio.to_thread(pool.give_back_empty, name)
        await pool_reset
        assert left_open.is_closed() or await _closed(left_open)

    asyncio.run(hold_open())
    assert pool.take_empty() == name
    pool.give_back_empty(name)
    pool.close()
    assert databases_named(postgres_server_url, name) == 0


async def _closed(conn: Any) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except Exception:
        return True
    return False
