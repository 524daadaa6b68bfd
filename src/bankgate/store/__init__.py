"""Storage: SQLAlchemy Core tables, the engine, migrations. Only the domain layer calls this package."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bankgate.store import schema
from bankgate.store.engine import open_engine, sqlite_file
from bankgate.store.inline import InlineSqlite
from bankgate.store.migrate import pending, upgrade

__all__ = ["SchemaMissingError", "Store", "schema"]


class SchemaMissingError(RuntimeError):
    """The database has no bankgate schema yet."""


def _is_missing_table(exc: DBAPIError) -> bool:
    """True only for "no such table" (SQLite) / undefined_table 42P01 (PostgreSQL), not for other failures."""
    if getattr(exc.orig, "sqlstate", None) == "42P01":
        return True
    message = str(exc.orig)
    return "no such table" in message or (message.startswith("relation ") and "does not exist" in message)


class Store:
    """The database handle passed to the domain services: one engine, short transactions."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = open_engine(url)
        self.dialect = self.engine.dialect.name
        path = sqlite_file(self.engine.url)
        #: For a SQLite file: the process's inline writer for short hot-path writes (see `bankgate.store.inline`).
        self.inline: InlineSqlite | None = InlineSqlite(path) if path is not None else None

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            yield connection

    async def migrate(self) -> list[tuple[str, str]]:
        """Upgrade the schema to the newest revision, under the migration lock; return what was applied."""
        return await upgrade(self.engine)

    async def pending_migrations(self) -> list[tuple[str, str]]:
        """The migrations `migrate` would apply now, oldest first (all of them on an empty database)."""
        return await pending(self.engine)

    async def get_meta(self, key: str) -> str | None:
        try:
            async with self.connect() as conn:
                row = await conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == key))
                return row.scalar_one_or_none()
        except DBAPIError as exc:
            if _is_missing_table(exc):
                raise SchemaMissingError(
                    "the database has no bankgate schema; run `bankgate init` first"
                ) from exc
            raise  # e.g. the server is down or the database itself does not exist: not a missing schema

    async def put_meta_if_absent(self, key: str, value: str) -> str:
        """Store `value` unless `key` already holds one; return what the key holds now. Of processes racing to
        store a value, one wins and all return its value (the loser's insert meets the primary key)."""
        try:
            async with self.begin() as conn:
                row = await conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == key))
                current = row.scalar_one_or_none()
                if current is None:
                    await conn.execute(schema.meta.insert().values(key=key, value=value))
                    current = value
            return current
        except IntegrityError:
            stored = await self.get_meta(key)
            if stored is None:
                raise
            return stored

    async def put_meta(self, key: str, value: str) -> None:
        """Store `value` under `key`, replacing what it held."""
        async with self.begin() as conn:
            updated = await conn.execute(update(schema.meta).where(schema.meta.c.key == key).values(value=value))
            if updated.rowcount == 0:
                await conn.execute(schema.meta.insert().values(key=key, value=value))

    async def close(self) -> None:
        if self.inline is not None:
            await self.inline.close()
        await self.engine.dispose()
