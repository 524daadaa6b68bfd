"""Alembic environment: uses the connection handed over by bankgate, else the BANKGATE_* settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from bankgate.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_settings() -> None:
    from bankgate.config import load_settings
    from bankgate.store.engine import open_engine

    engine = open_engine(load_settings().sqlalchemy_url)
    async with engine.begin() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_from_settings())
