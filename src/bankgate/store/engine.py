"""Opening the database: SQLite (a file, WAL) by default, PostgreSQL through asyncpg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["open_engine", "sqlite_file"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_file(url: URL) -> str | None:
    """The path of a plain SQLite file database behind aiosqlite, else None (PostgreSQL, :memory:, URI options)."""
    if url.get_backend_name() != "sqlite" or url.get_driver_name() != "aiosqlite" or url.query:
        return None
    return url.database if url.database and url.database != ":memory:" else None


def open_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One connection per process for a file: SQLite writes one transaction at a time anyway, and connections of
        # the same process competing for the write lock meet SQLite's busy handler, which sleeps 1, 2, 5, 10 ... ms
        # (under load: a p99 of a second). With one connection the process's transactions simply queue.
        pool: dict[str, Any] = {"pool_size": 1, "max_overflow": 0} if sqlite_file(parsed) else {}
        engine = create_async_engine(url, hide_parameters=True, **pool)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, hide_parameters=True, pool_pre_ping=True, pool_size=10, max_overflow=10)
