"""The change feed: how every server process learns, within one sync interval, that a record it may have cached
was changed by another process (the command line, another server), and at once when the change was its own.

A writer records `(kind, key)` in the `changes` table in the same transaction as the change itself, then
`announce`s it to this process's subscribers once committed. Each server process polls the table (`sync`, on the
same loop as the revocation list) and announces what other processes wrote. Subscribers drop their cached entry
for the key; the caches' own TTLs stay as a safety net only.

Kinds and keys: `client` (API key), `user` (username), `cert` (sha256 hex of the certificate's DER), `allow`
(`<user|client>:<subject id>`), `key` (the `kid` of a signing key retired at once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bankgate.clock import SYSTEM, Clock
from bankgate.store import Store, schema

__all__ = ["Change", "ChangeFeed"]

log = logging.getLogger("bankgate.changes")

Change = tuple[str, str]
#: Changes are re-read this far back at each sync: a transaction that commits late, or a writer whose clock is
#: behind, is still seen. Rows already announced are skipped by id.
LOOKBACK = 60.0
#: Rows older than this are purged: every process has polled them long before.
RETENTION = 3600.0


class ChangeFeed:
    def __init__(self, store: Store, *, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._now = clock.now
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._seen: dict[int, float] = {}  # id -> at, of rows within the lookback already announced
        self._since: float | None = None  # newest `at` seen; None until the first sync

    def __repr__(self) -> str:
        return f"ChangeFeed(subscribers={sum(len(s) for s in self._subscribers.values())})"

    def subscribe(self, kind: str, callback: Callable[[str], None]) -> None:
        """Call `callback(key)` for every change of `kind`, made here or seen by `sync`."""
        self._subscribers.setdefault(kind, []).append(callback)

    @staticmethod
    async def record(conn: AsyncConnection, *changes: Change) -> None:
        """Write `changes` in the caller's transaction; `announce` them once it has committed."""
        now = time.time()
        await conn.execute(schema.changes.insert(), [{"kind": kind, "key": key, "at": now} for kind, key in changes])

    def announce(self, *changes: Change) -> None:
        """Tell this process's subscribers (a change committed here, or read by `sync`)."""
        for kind, key in changes:
            for callback in self._subscribers.get(kind, ()):
                try:
                    callback(key)
                except Exception:
                    log.exception("a subscriber to %s changes failed", kind)

    async def sync(self) -> None:
        """Announce the changes other processes committed since the last sync (none the first time: whatever was
        cached before that was read after them)."""
        table = schema.changes
        first = self._since is None
        since = self._now() if self._since is None else self._since
        async with self._store.connect() as conn:
            rows = (
                await conn.execute(
                    select(table.c.id, table.c.kind, table.c.key, table.c.at)
                    .where(table.c.at >= since - LOOKBACK)
                    .order_by(table.c.id)
                )
            ).all()
        newest = since
        for row_id, kind, key, at in rows:
            newest = max(newest, at)
            if row_id in self._seen:
                continue
            self._seen[row_id] = at
            if not first:
                self.announce((kind, key))
        self._since = newest
        if self._seen and min(self._seen.values()) < newest - LOOKBACK:
            self._seen = {row_id: at for row_id, at in self._seen.items() if at >= newest - LOOKBACK}

    async def purge(self, now: float | None = None) -> int:
        table = schema.changes
        cutoff = (self._now() if now is None else now) - RETENTION
        async with self._store.begin() as conn:
            result = await conn.execute(delete(table).where(table.c.at < cutoff))
            return result.rowcount or 0
