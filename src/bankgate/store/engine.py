"""Opening the database: SQLite (a file, WAL) by default, PostgreSQL through asyncpg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bankgate.files import private_dir, private_file, tighten

__all__ = ["open_engine", "sqlite_file"]

#: The files SQLite keeps next to a database in WAL mode; it creates them with the database file's own mode.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


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


def secure_sqlite_file(database: str) -> None:
    """Create the SQLite file 0600 (and its directory 0700) before SQLite does, or take others' access off an
    existing one and its `-wal`/`-shm`: SQLite itself would create them 0644 under the usual umask, and gives the
    `-wal` and `-shm` files the database file's mode, so owning the main file's mode settles all three."""
    path = Path(database)
    private_dir(path.parent)
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        tighten(path.with_name(path.name + suffix))


def open_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            secure_sqlite_file(database)
        # One connection per process for a file: SQLite writes one transaction at a time anyway, and connections of
        # the same process competing for the write lock meet SQLite's busy handler, which sleeps 1, 2, 5, 10 ... ms
        # (under load: a p99 of a second). With one connection the process's transactions simply queue.
        pool: dict[str, Any] = {"pool_size": 1, "max_overflow": 0} if sqlite_file(parsed) else {}
        engine = create_async_engine(url, hide_parameters=True, **pool)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, hide_parameters=True, pool_pre_ping=True, pool_size=10, max_overflow=10)
