"""What makes an issued token stop working before it expires, although tokens are never stored.

Two deny lists, both in the database and both kept in memory by every server process (the in-memory rule,
`DenyList`, is the one the guard library uses apart from the server too):

* tokens (RFC 7009): the `jti`s of revoked tokens, kept only until the token would have expired;
* subjects: a whole client (`client:<id>`), M2M user (`user:<id>`) or client certificate (`cert:<x5t#S256>`,
  RFC 8705 §3.1, the certificate a token is bound to). Every token of the subject issued at or before the row's
  `not_before` is refused; without a cut-off (NULL), every token of it, whenever issued.

The lists are reloaded every `revocation_sync_interval` (`sync`), so checking a token on each API call costs a few
dictionary lookups, not a query. A revocation is in force at once on the process that made it and within one sync
interval on the others. When the lists cannot be reloaded for a while, `denied` refuses to answer (fail closed)
rather than let a revoked token through. `read_since` reads the same rows for the revocation feed that guards running
apart from the server poll (`GET /oauth/revocations`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bankgate.clock import SYSTEM, Clock
from bankgate.guard.denylist import DenyList, RevocationUnavailable, subject_keys
from bankgate.store import Store, schema

__all__ = ["RevocationBatch", "RevocationList", "RevocationUnavailable", "subject_keys"]

log = logging.getLogger("bankgate.tokens")

#: Revocations are re-read this far back at each sync, so clocks of processes on other hosts may differ this much.
SKEW = 60.0


@dataclass(frozen=True, slots=True)
class RevocationBatch:
    """Revocations recorded since a point in time: `(jti, expires_at)` of tokens not yet expired, `(subject,
    not_before)` of subjects (None: every token), and `newest`, the `revoked_at` of the newest row read (or the
    point asked for), from which the next read starts."""

    tokens: tuple[tuple[str, float], ...]
    subjects: tuple[tuple[str, float | None], ...]
    newest: float


class RevocationList(DenyList):
    """The server's deny list: `DenyList` in memory, the `revoked_tokens` and `revoked_subjects` tables behind it."""

    def __init__(self, store: Store, *, max_staleness: float = 30.0, clock: Clock = SYSTEM) -> None:
        super().__init__(max_staleness=max_staleness, source="the database", clock=clock.monotonic)
        self._store = store
        self._now = clock.now
        self._since = 0.0  # revoked_at of the newest entry seen, minus nothing: SKEW is applied at read time

    # -- tokens -------------------------------------------------------------------------------------------

    async def revoke(self, jti: str, client_id: str, expires_at: float) -> bool:
        """Deny `jti` until `expires_at`; False when it was already denied."""
        self.add_token(jti, expires_at)
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

    # -- subjects -----------------------------------------------------------------------------------------

    @staticmethod
    async def write_subject(conn: AsyncConnection, subject: str, not_before: float | None = None) -> None:
        """Record in the caller's transaction that the tokens of `subject` (issued at or before `not_before`; None:
        all of them) are revoked. Call `remember` once it committed, so this process applies it at once."""
        table = schema.revoked_subjects
        values = {"subject": subject, "revoked_at": time.time(), "not_before": not_before}
        insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table).values(values)
        # A subject revoked without a cut-off stays so; otherwise the later cut-off wins.
        kept = case((table.c.not_before.is_(None), None), else_=insert.excluded.not_before)
        await conn.execute(
            insert.on_conflict_do_update(
                index_elements=[table.c.subject], set_={"revoked_at": insert.excluded.revoked_at, "not_before": kept}
            )
        )

    async def subject_revoked(self, subjects: Iterable[str | None], issued_at: float) -> bool:
        """Exact answer from the database: is a token issued at `issued_at` under any of `subjects` revoked?"""
        keys = [key for key in subjects if key is not None]
        table = schema.revoked_subjects
        async with self._store.connect() as conn:
            rows = (await conn.execute(select(table.c.not_before).where(table.c.subject.in_(keys)))).all()
        return any(not_before is None or issued_at <= not_before for (not_before,) in rows)

    async def read_since(self, since: float | None) -> RevocationBatch:
        """Revocations recorded since `since` (a `RevocationBatch.newest`; None: every one in force), re-reading
        `SKEW` seconds further back so a row written by a process whose clock is behind is not missed."""
        tokens, subjects = schema.revoked_tokens, schema.revoked_subjects
        token_query = select(tokens.c.jti, tokens.c.expires_at, tokens.c.revoked_at).where(
            tokens.c.expires_at > self._now()
        )
        subject_query = select(subjects.c.subject, subjects.c.not_before, subjects.c.revoked_at)
        if since is not None:
            token_query = token_query.where(tokens.c.revoked_at >= since - SKEW)
            subject_query = subject_query.where(subjects.c.revoked_at >= since - SKEW)
        async with self._store.connect() as conn:
            token_rows = (await conn.execute(token_query)).all()
            subject_rows = (await conn.execute(subject_query)).all()
        return RevocationBatch(
            tuple((jti, expires_at) for jti, expires_at, _ in token_rows),
            tuple((subject, not_before) for subject, not_before, _ in subject_rows),
            max((since or 0.0, *(row[2] for row in (*token_rows, *subject_rows)))),
        )

    async def sync(self) -> None:
        """Load revocations made since the last sync (all of them the first time); forget expired ones."""
        batch = await self.read_since(self._since if self.loaded else None)
        for jti, expires_at in batch.tokens:
            self.add_token(jti, expires_at)
        for subject, not_before in batch.subjects:
            self.remember(subject, not_before)
        self._since = max(self._since, batch.newest)
        self.refreshed(self._now())

    async def purge(self, now: float | None = None) -> int:
        """Forget entries whose tokens have expired anyway."""
        table = schema.revoked_tokens
        async with self._store.begin() as conn:
            cutoff = time.time() if now is None else now
            result = await conn.execute(delete(table).where(table.c.expires_at <= cutoff))
            return result.rowcount or 0
