"""Alembic, driven from code: `bankgate migrate` (and `init`, `serve`) upgrade the schema to the newest revision.

Every upgrade runs under a lock, so replicas starting at once do not race: on PostgreSQL a session advisory lock
on a fixed key taken on the migration connection; on SQLite the database file's own write lock (BEGIN EXCLUSIVE).
The second process waits, then finds the schema at head and has nothing to do.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["MIGRATION_LOCK", "SchemaTooNewError", "alembic_config", "current_revision", "head_revision", "known",
           "pending", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"
#: The PostgreSQL advisory lock key every bankgate process takes while it migrates.
MIGRATION_LOCK = 0x62616E6B67617465 & 0x7FFFFFFFFFFFFFFF  # "bankgate"


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer version of bankgate than this one."""


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    """The migration scripts this version of bankgate ships, read once per process (they do not change while it
    runs; every `Services.open` asks what is pending)."""
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str | None:
    return _scripts().get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database's schema is at (None: no bankgate schema yet)."""
    return MigrationContext.configure(connection).get_current_revision()


def known(revision: str) -> bool:
    """Whether this version of bankgate has the migration `revision`."""
    try:
        _scripts().get_revision(revision)
    except Exception:  # alembic's ResolutionError and friends: no such revision here
        return False
    return True


def pending_revisions(connection: Connection) -> list[tuple[str, str]]:
    """The migrations an upgrade would run, oldest first, as (revision, description)."""
    script = _scripts()
    current = current_revision(connection)
    if current is not None and not known(current):
        raise SchemaTooNewError(
            f"the database schema is at revision {current}, which this version of bankgate does not know (its "
            f"newest is {head_revision()}): a newer version migrated it; run that version"
        )
    steps = list(script.iterate_revisions("heads", current or "base"))
    steps.reverse()
    return [(step.revision, (step.doc or "").strip()) for step in steps if step.revision != current]


def _upgrade(connection: Connection) -> list[tuple[str, str]]:
    if connection.dialect.name == "postgresql":
        # held until this transaction ends: a crashed migration frees it with its connection
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN EXCLUSIVE")  # the driver has not begun yet: nothing ran on it
    steps = pending_revisions(connection)  # read under the lock: what another process applied is not pending
    if steps:
        command.upgrade(alembic_config(connection), "head")
    return steps


async def pending(engine: AsyncEngine) -> list[tuple[str, str]]:
    """The migrations `upgrade` would run now, oldest first; changes nothing."""
    async with engine.connect() as connection:
        return await connection.run_sync(pending_revisions)


async def upgrade(engine: AsyncEngine) -> list[tuple[str, str]]:
    """Upgrade to head under the migration lock (see the module's description); return what was applied."""
    async with engine.begin() as connection:
        return await connection.run_sync(_upgrade)
