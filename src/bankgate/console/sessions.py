"""Web console sessions, kept on the server: the browser holds a random session id in its cookie, the database
only that id's SHA-256, the principal it speaks for and when it was made and last used.

A session ends when unused for `console_idle_timeout` seconds, `console_session_lifetime` seconds after it began
whatever its use, or when its holder signs out (the row is deleted). Times come from the services' clock.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, or_, select, update

from bankgate.clock import SYSTEM, Clock
from bankgate.store import Store, schema

__all__ = ["ConsoleSession", "ConsoleSessions", "session_hash"]

#: last_seen is written again only when it is older than this (or a tenth of the idle timeout): one write per half
#: minute of use, not per page.
_TOUCH_EVERY = 30.0


def session_hash(session_id: str) -> str:
    """What the database keeps of a session id: enough to find the row, not to sign anyone in."""
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id_hash: str
    principal_kind: str  # user | admin
    principal_id: str
    created_at: float
    last_seen: float
    source_ip: str | None


class ConsoleSessions:
    def __init__(self, store: Store, *, idle_timeout: float, lifetime: float, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._idle_timeout = idle_timeout
        self._lifetime = lifetime
        self._clock = clock
        self._touch_every = min(_TOUCH_EVERY, idle_timeout / 10)

    def __repr__(self) -> str:
        return f"ConsoleSessions(idle_timeout={self._idle_timeout}, lifetime={self._lifetime})"

    async def open(self, principal_kind: str, principal_id: str, source_ip: str | None) -> tuple[str, ConsoleSession]:
        """A new session for the principal: (its id, which exists in clear only in the returned value, the row).
        Sessions that ended are purged on the way."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock.now()
        session = ConsoleSession(session_hash(session_id), principal_kind, principal_id, now, now, source_ip)
        table = schema.console_sessions
        async with self._store.begin() as conn:
            await conn.execute(delete(table).where(self._ended(now)))
            await conn.execute(table.insert().values(
                id_hash=session.id_hash, principal_kind=principal_kind, principal_id=principal_id,
                created_at=now, last_seen=now, source_ip=source_ip,
            ))
        return session_id, session

    def _ended(self, now: float) -> ColumnElement[bool]:
        table = schema.console_sessions
        return or_(table.c.last_seen <= now - self._idle_timeout, table.c.created_at <= now - self._lifetime)

    async def find(self, session_id: str) -> ConsoleSession | None:
        """The live session with this id (its use noted), or None: unknown, ended (then deleted) or malformed."""
        if not 16 <= len(session_id) <= 128:
            return None
        table = schema.console_sessions
        id_hash = session_hash(session_id)
        async with self._store.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.id_hash == id_hash))).first()
        if row is None:
            return None
        r = row._mapping
        now = self._clock.now()
        if now - r["last_seen"] >= self._idle_timeout or now - r["created_at"] >= self._lifetime:
            await self.close(session_id)
            return None
        last_seen = r["last_seen"]
        if now - last_seen >= self._touch_every:
            last_seen = now
            async with self._store.begin() as conn:
                await conn.execute(update(table).where(table.c.id_hash == id_hash).values(last_seen=now))
        return ConsoleSession(id_hash, r["principal_kind"], r["principal_id"], r["created_at"], last_seen,
                              r["source_ip"])

    async def close(self, session_id: str) -> None:
        """End the session (sign-out): its row is deleted, so its id signs no one in again."""
        table = schema.console_sessions
        async with self._store.begin() as conn:
            await conn.execute(delete(table).where(table.c.id_hash == session_hash(session_id)))

    async def close_all(self, principal_kind: str, principal_id: str) -> int:
        """End every session of a principal (it was disabled, deleted, or changed its password)."""
        table = schema.console_sessions
        async with self._store.begin() as conn:
            result = await conn.execute(delete(table).where(table.c.principal_kind == principal_kind)
                                        .where(table.c.principal_id == principal_id))
        return int(result.rowcount or 0)
