"""The revocation deny list (RFC 7009): `jti`s of revoked tokens, kept only until the token would have expired.

The database holds the list; every process also keeps it in memory (`denied`), reloaded every
`revocation_sync_interval`, so checking a token on each API call costs a set lookup, not a query. A revocation is
in force at once on the process that made it and within one sync interval on the others. When the list cannot be
reloaded for a while, `denied` refuses to answer (fail closed) rather than let a revoked token through.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from bankgate.store import Store, schema

__all__ = ["RevocationList", "RevocationUnavailable"]

log = logging.getLogger("bankgate.tokens")

#: Revocations are re-read this far back at each sync, so clocks of processes on other hosts may differ this much.
SKEW = 60.0


class RevocationUnavailable(Exception):
    """The deny list has not been reloaded for too long to say whether a token is revoked."""


class RevocationList:
    def __init__(self, store: Store, *, max_staleness: float = 30.0) -> None:
        self._store = store
        self._denied: dict[str, float] = {}  # jti -> expires_at
        self._since = 0.0  # revoked_at of the newest entry seen, minus nothing: SKEW is applied at read time
        self._synced_at: float | None = None  # None: never loaded, so memory knows nothing yet
        self._max_staleness = max_staleness

    def __repr__(self) -> str:
        return f"RevocationList(denied={len(self._denied)})"

    async def revoke(self, jti: str, client_id: str, expires_at: float) -> bool:
        """Deny `jti` until `expires_at`; False when it was already denied."""
        self._denied[jti] = expires_at
        try:
            async with self._store.begin() as conn:
                await conn.execute(
                    schema.revoked_tokens.insert().values(
                        jti=jti, client_id=client_id, expires_at=expires_at, revoked_at=time.time()
                    )
                )
        except IntegrityError:
            return False
        return True

    async def is_revoked(self, jti: str) -> bool:
        """Exact answer from the database (introspection, where a query per call is fine)."""
        table = schema.revoked_tokens
        async with self._store.connect() as conn:
            row = await conn.execute(select(table.c.jti).where(table.c.jti == jti))
            return row.first() is not None

    def denied(self, jti: str) -> bool:
        """Answer from memory; raises RevocationUnavailable when the list is too old to trust (or never loaded)."""
        if jti in self._denied:
            return True
        synced_at = self._synced_at
        if synced_at is None or time.monotonic() - synced_at > self._max_staleness:
            raise RevocationUnavailable("the revocation list cannot be reloaded from the database")
        return False

    async def sync(self) -> None:
        """Load revocations made since the last sync (all of them the first time); forget expired ones."""
        table = schema.revoked_tokens
        now = time.time()
        query = select(table.c.jti, table.c.expires_at, table.c.revoked_at).where(table.c.expires_at > now)
        if self._synced_at is not None:
            query = query.where(table.c.revoked_at >= self._since - SKEW)
        async with self._store.connect() as conn:
            rows = (await conn.execute(query)).all()
        for jti, expires_at, revoked_at in rows:
            self._denied[jti] = expires_at
            self._since = max(self._since, revoked_at)
        if any(expires_at <= now for expires_at in self._denied.values()):
            self._denied = {jti: expires_at for jti, expires_at in self._denied.items() if expires_at > now}
        self._synced_at = time.monotonic()

    async def purge(self, now: float | None = None) -> int:
        """Forget entries whose tokens have expired anyway."""
        table = schema.revoked_tokens
        async with self._store.begin() as conn:
            cutoff = time.time() if now is None else now
            result = await conn.execute(delete(table).where(table.c.expires_at <= cutoff))
            return result.rowcount or 0
