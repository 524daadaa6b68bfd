"""What makes an issued token stop working before it expires, although tokens are never stored.

Two deny lists, both in the database and both kept in memory by every server process:

* tokens (RFC 7009): the `jti`s of revoked tokens, kept only until the token would have expired;
* subjects: a whole client (`client:<id>`), M2M user (`user:<id>`) or client certificate (`cert:<x5t#S256>`,
  RFC 8705 §3.1, the certificate a token is bound to). Every token of the subject issued at or before the row's
  `not_before` is refused; without a cut-off (NULL), every token of it, whenever issued.

The lists are reloaded every `revocation_sync_interval` (`sync`), so checking a token on each API call costs a few
dictionary lookups, not a query. A revocation is in force at once on the process that made it and within one sync
interval on the others. When the lists cannot be reloaded for a while, `denied` refuses to answer (fail closed)
rather than let a revoked token through.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bankgate.clock import SYSTEM, Clock
from bankgate.store import Store, schema

__all__ = ["RevocationList", "RevocationUnavailable", "subject_keys"]

log = logging.getLogger("bankgate.tokens")

#: Revocations are re-read this far back at each sync, so clocks of processes on other hosts may differ this much.
SKEW = 60.0
#: In memory, "every token of the subject": no `iat` reaches it.
_ALL = math.inf


def subject_keys(claims: dict[str, object]) -> tuple[str, str | None]:
    """The subject keys a token's claims fall under: `client:<sub>` or `user:<sub>` (a user's token has `oid`),
    and `cert:<x5t#S256>` when it is bound to a certificate (else None)."""
    kind = "user" if "oid" in claims else "client"
    cnf = claims.get("cnf")
    bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    return f"{kind}:{claims.get('sub')}", f"cert:{bound}" if isinstance(bound, str) else None


class RevocationUnavailable(Exception):
    """The deny list has not been reloaded for too long to say whether a token is revoked."""


class RevocationList:
    def __init__(self, store: Store, *, max_staleness: float = 30.0, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._now, self._monotonic = clock.now, clock.monotonic
        self._denied: dict[str, float] = {}  # jti -> expires_at
        self._subjects: dict[str, float] = {}  # subject key -> tokens issued at or before this are refused
        self._since = 0.0  # revoked_at of the newest entry seen, minus nothing: SKEW is applied at read time
        self._synced_at: float | None = None  # None: never loaded, so memory knows nothing yet
        self._max_staleness = max_staleness

    def __repr__(self) -> str:
        return f"RevocationList(denied={len(self._denied)}, subjects={len(self._subjects)})"

    # -- tokens -------------------------------------------------------------------------------------------

    async def revoke(self, jti: str, client_id: str, expires_at: float) -> bool:
        """Deny `jti` until `expires_at`; False when it was already denied."""
        self._denied[jti] = expires_at
        try:
            async with self._store.begin() as conn:
                await conn.execute(
                    schema.revoked_tokens.insert().values(
                        jti=jti, client_id=client_id, expires_at=expires_at, revoked_at=self._now()
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

    def remember(self, subject: str, not_before: float | None = None) -> None:
        """Apply a subject revocation this process has just committed, without waiting for the next sync."""
        cut = _ALL if not_before is None else not_before
        self._subjects[subject] = max(cut, self._subjects.get(subject, -_ALL))

    async def subject_revoked(self, subjects: Iterable[str | None], issued_at: float) -> bool:
        """Exact answer from the database: is a token issued at `issued_at` under any of `subjects` revoked?"""
        keys = [key for key in subjects if key is not None]
        table = schema.revoked_subjects
        async with self._store.connect() as conn:
            rows = (await conn.execute(select(table.c.not_before).where(table.c.subject.in_(keys)))).all()
        return any(not_before is None or issued_at <= not_before for (not_before,) in rows)

    # -- the request path ---------------------------------------------------------------------------------

    def denied(self, jti: str) -> bool:
        """Answer from memory; raises RevocationUnavailable when the list is too old to trust (or never loaded)."""
        if jti in self._denied:
            return True
        synced_at = self._synced_at
        if synced_at is None or self._monotonic() - synced_at > self._max_staleness:
            raise RevocationUnavailable("the revocation list cannot be reloaded from the database")
        return False

    def token_denied(self, jti: str, subject: str, certificate: str | None, issued_at: int) -> bool:
        """`denied`, and also refused when the token's subject or the certificate it is bound to (`cert:…` keys,
        see `subject_keys`) has been revoked since it was issued. Answer from memory, fail closed."""
        if jti in self._denied:
            return True
        subjects = self._subjects
        if subjects and (
            subjects.get(subject, -1.0) >= issued_at
            or (certificate is not None and subjects.get(certificate, -1.0) >= issued_at)
        ):
            return True
        synced_at = self._synced_at
        if synced_at is None or self._monotonic() - synced_at > self._max_staleness:
            raise RevocationUnavailable("the revocation list cannot be reloaded from the database")
        return False

    async def sync(self) -> None:
        """Load revocations made since the last sync (all of them the first time); forget expired ones."""
        tokens, subjects = schema.revoked_tokens, schema.revoked_subjects
        now = self._now()
        token_query = select(tokens.c.jti, tokens.c.expires_at, tokens.c.revoked_at).where(tokens.c.expires_at > now)
        subject_query = select(subjects.c.subject, subjects.c.not_before, subjects.c.revoked_at)
        if self._synced_at is not None:
            token_query = token_query.where(tokens.c.revoked_at >= self._since - SKEW)
            subject_query = subject_query.where(subjects.c.revoked_at >= self._since - SKEW)
        async with self._store.connect() as conn:
            token_rows = (await conn.execute(token_query)).all()
            subject_rows = (await conn.execute(subject_query)).all()
        for jti, expires_at, revoked_at in token_rows:
            self._denied[jti] = expires_at
            self._since = max(self._since, revoked_at)
        for subject, not_before, revoked_at in subject_rows:
            self.remember(subject, not_before)
            self._since = max(self._since, revoked_at)
        if any(expires_at <= now for expires_at in self._denied.values()):
            self._denied = {jti: expires_at for jti, expires_at in self._denied.items() if expires_at > now}
        self._synced_at = self._monotonic()

    async def purge(self, now: float | None = None) -> int:
        """Forget entries whose tokens have expired anyway."""
        table = schema.revoked_tokens
        async with self._store.begin() as conn:
            cutoff = self._now() if now is None else now
            result = await conn.execute(delete(table).where(table.c.expires_at <= cutoff))
            return result.rowcount or 0
