"""Idempotency-Key records in the bankgate database (`idempotency_keys`), on SQLite and PostgreSQL.

The claim is one atomic statement, shared by every process on the database:

    INSERT ... ON CONFLICT (principal, key) DO UPDATE SET <a fresh claim> WHERE <the old row is no longer live>
    RETURNING owner

A row comes back when the key was free: inserted, or taken over from a `started` row whose lease has passed or a
`completed` row past its retention (the compare-and-set happens inside the upsert, under the row lock). Otherwise
the live row is read in the same transaction and judged: mismatch, in progress or completed.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row

from bankgate.idempotency._types import COMPLETED, MAX_KEY_LENGTH, STARTED, Claim, StoredResponse, bounded
from bankgate.store import Store, schema

__all__ = ["SqlIdempotencyStore"]

_PRINCIPAL_LENGTH = 200
_ATTEMPTS = 5


def _statements(dialect: str) -> dict[str, Any]:
    """Every statement the store runs, built once with named parameters (SQLAlchemy caches their compiled form)."""
    if dialect == "postgresql":
        insert = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:
        raise ValueError(f"SqlIdempotencyStore supports SQLite and PostgreSQL, not {dialect!r}")
    t = schema.idempotency_keys
    this_key = and_(t.c.principal == bindparam("p_principal"), t.c.key == bindparam("p_key"))
    running = and_(this_key, t.c.owner == bindparam("p_owner"), t.c.state == STARTED)
    fresh = insert(t).values(
        principal=bindparam("p_principal"),
        key=bindparam("p_key"),
        fingerprint=bindparam("p_fingerprint"),
        state=STARTED,
        owner=bindparam("p_owner"),
        lease_until=bindparam("p_lease_until"),
        expires_at=bindparam("p_lease_until"),
        created_at=bindparam("p_now"),
        status=None,
        headers=None,
        body=None,
    )
    new = fresh.excluded
    claim = fresh.on_conflict_do_update(
        index_elements=[t.c.principal, t.c.key],
        set_={
            "fingerprint": new.fingerprint,
            "state": new.state,
            "owner": new.owner,
            "lease_until": new.lease_until,
            "expires_at": new.expires_at,
            "created_at": new.created_at,
            "status": None,
            "headers": None,
            "body": None,
        },
        where=or_(
            t.c.expires_at <= bindparam("p_now"),
            and_(t.c.state == COMPLETED, t.c.created_at <= bindparam("p_oldest")),
        ),
    ).returning(t.c.owner)
    return {
        "claim": claim,
        "read": select(
            t.c.fingerprint, t.c.state, t.c.lease_until, t.c.expires_at, t.c.created_at,
            t.c.status, t.c.headers, t.c.body,
        ).where(this_key),
        "extend": update(t)
        .where(running)
        .values(lease_until=bindparam("p_lease_until"), expires_at=bindparam("p_lease_until")),
        "complete": update(t)
        .where(running)
        .values(
            state=COMPLETED,
            lease_until=bindparam("p_now"),
            expires_at=bindparam("p_expires_at"),
            status=bindparam("p_status"),
            headers=bindparam("p_headers"),
            body=bindparam("p_body"),
        ),
        "release": delete(t).where(running),
        "purge": delete(t).where(t.c.expires_at <= bindparam("p_now")),
    }


def encode_headers(headers: tuple[tuple[bytes, bytes], ...]) -> str:
    """The `headers` column: JSON text of [name, value] pairs, latin-1 decoded (every byte maps to one char)."""
    return json.dumps([[name.decode("latin-1"), value.decode("latin-1")] for name, value in headers])


def decode_headers(text: str | None) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(text or "[]"))


def _check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"an idempotency key has 1 to {MAX_KEY_LENGTH} characters, not {len(key)}")
    return key


class SqlIdempotencyStore:
    """Key records in `schema.idempotency_keys` of a `bankgate.store.Store` (SQLite file or PostgreSQL).

    Each operation is one short transaction; the claim costs one statement when the key is new. The store does
    not own `store`: `close` leaves it open. Expired rows stay until `purge` (the claim ignores them meanwhile).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._engine = store.engine
        self._sql = _statements(store.dialect)

    def __repr__(self) -> str:
        return f"SqlIdempotencyStore({self._store!r})"

    async def claim(self, principal: str, key: str, fingerprint: str, *, lease: float, retention: float) -> Claim:
        params = {
            "p_principal": bounded(principal, _PRINCIPAL_LENGTH),
            "p_key": _check_key(key),
            "p_fingerprint": fingerprint,
            "p_owner": secrets.token_hex(16),
        }
        for _ in range(_ATTEMPTS):
            now = time.time()
            params.update(p_now=now, p_lease_until=now + lease, p_oldest=now - retention)
            async with self._engine.begin() as conn:
                if (await conn.execute(self._sql["claim"], params)).first() is not None:
                    return Claim("claimed", owner=params["p_owner"])
                row = (await conn.execute(self._sql["read"], params)).first()
            if row is not None and (judged := _judge(row, fingerprint, now, now - retention)) is not None:
                return judged
            # The row went away (released or purged) or ended between the two statements: ask again.
        raise RuntimeError(f"the claim of an idempotency key did not settle after {_ATTEMPTS} attempts")

    async def extend(self, principal: str, key: str, owner: str, *, lease: float) -> bool:
        params = {
            "p_principal": bounded(principal, _PRINCIPAL_LENGTH),
            "p_key": key,
            "p_owner": owner,
            "p_lease_until": time.time() + lease,
        }
        async with self._engine.begin() as conn:
            return (await conn.execute(self._sql["extend"], params)).rowcount == 1

    async def complete(
        self, principal: str, key: str, owner: str, response: StoredResponse, *, retention: float
    ) -> bool:
        now = time.time()
        params = {
            "p_principal": bounded(principal, _PRINCIPAL_LENGTH),
            "p_key": key,
            "p_owner": owner,
            "p_now": now,
            "p_expires_at": now + retention,
            "p_status": response.status,
            "p_headers": encode_headers(response.headers),
            "p_body": response.body,
        }
        async with self._engine.begin() as conn:
            return (await conn.execute(self._sql["complete"], params)).rowcount == 1

    async def release(self, principal: str, key: str, owner: str) -> None:
        params = {"p_principal": bounded(principal, _PRINCIPAL_LENGTH), "p_key": key, "p_owner": owner}
        async with self._engine.begin() as conn:
            await conn.execute(self._sql["release"], params)

    async def purge(self) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(self._sql["purge"], {"p_now": time.time()})
        return int(result.rowcount or 0)

    async def close(self) -> None:
        """Nothing to do: the `Store` belongs to the caller."""


def _judge(row: Row[Any], fingerprint: str, now: float, oldest: float) -> Claim | None:
    """The claim outcome for a row that exists, or None when the row is no longer live."""
    stored_fingerprint, state, lease_until, expires_at, created_at, status, headers, body = row
    if expires_at <= now or (state == COMPLETED and created_at <= oldest):
        return None
    if stored_fingerprint != fingerprint:
        return Claim("mismatch")
    if state == STARTED:
        return Claim("in_progress", retry_after=max(lease_until - now, 0.0))
    return Claim("completed", response=StoredResponse(int(status), decode_headers(headers), bytes(body or b"")))
