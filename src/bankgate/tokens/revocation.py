"""The revocation deny list (RFC 7009): `jti`s of revoked tokens, kept only until the token would have expired."""

from __future__ import annotations

import time

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from bankgate.store import Store, schema

__all__ = ["RevocationList"]


class RevocationList:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def revoke(self, jti: str, client_id: str, expires_at: float) -> bool:
        """Deny `jti` until `expires_at`; False when it was already denied."""
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
        table = schema.revoked_tokens
        async with self._store.connect() as conn:
            row = await conn.execute(select(table.c.jti).where(table.c.jti == jti))
            return row.first() is not None

    async def purge(self, now: float | None = None) -> int:
        """Forget entries whose tokens have expired anyway."""
        table = schema.revoked_tokens
        async with self._store.begin() as conn:
            cutoff = time.time() if now is None else now
            result = await conn.execute(delete(table).where(table.c.expires_at <= cutoff))
            return result.rowcount or 0
