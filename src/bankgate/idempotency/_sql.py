"""Idempotency-Key records in the bankgate database (`idempotency_keys`), on SQLite and PostgreSQL.

The claim is one atomic statement, shared by every process on the database:

    INSERT ... ON CONFLICT (principal, key) DO UPDATE SET <a fresh claim> WHERE <the old row is no longer live>
    RETURNING owner                        (SQLite: no RETURNING, the row count says the same)

A row comes back (is counted) when the key was free: inserted, or taken over from a `started` row whose lease has
passed or a `completed` row past its retention (the compare-and-set happens inside the upsert, under the row lock).
Otherwise the live row is read and judged: mismatch, in progress or completed. Each statement is atomic on its own,
so no transaction has to span them: a row that changes between the two is simply read in its newer state (or, gone,
claimed again). A retry of a finished request is answered before all this, by `lookup`: the read alone, outside
any write transaction (on a SQLite file at once on the event loop's thread, without waiting for a group's commit).

`commit` (the `AtomicStore` side, for handlers writing to this same database) upserts the key straight into
`completed`, with its response, and runs the handler's writes in the same transaction: both or neither are kept.

The statements are SQLAlchemy Core, compiled once per dialect to the driver's SQL and run on the driver directly:
for a SQLite file on the `Store`'s inline writer (`bankgate.store.inline`: committed together with the other
writes of the same turn of the event loop), for asyncpg in autocommit on a connection of the `Store`'s pool. Any
other setup runs them through SQLAlchemy.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import Table, and_, bindparam, delete, literal_column, null, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnClause

from bankgate.idempotency._types import (
    COMPLETED,
    MAX_KEY_LENGTH,
    STARTED,
    Claim,
    Ready,
    StoredResponse,
    Write,
    bounded,
    new_owner,
)
from bankgate.store import Store, schema
from bankgate.store.inline import Compiled, InlineSqlite, savepoint

__all__ = ["SqlIdempotencyStore"]


_T = TypeVar("_T")
_PRINCIPAL_LENGTH = 200
_ATTEMPTS = 5


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    """Every statement the store runs, built once per process with named parameters (SQLAlchemy caches their
    compiled form). Shared by every store of the dialect: nothing here changes once built."""
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert]
    if dialect == "postgresql":
        insert = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:
        raise ValueError(f"SqlIdempotencyStore supports SQLite and PostgreSQL, not {dialect!r}")
    t = schema.idempotency_keys
    # Constants are written into the SQL rather than bound: fewer parameters to bind on every request.
    started: ColumnClause[str] = literal_column(f"'{STARTED}'")
    completed: ColumnClause[str] = literal_column(f"'{COMPLETED}'")
    this_key = and_(t.c.principal == bindparam("p_principal"), t.c.key == bindparam("p_key"))
    running = and_(this_key, t.c.owner == bindparam("p_owner"), t.c.state == started)
    # The old row is no longer live: its lease or retention has passed, or it is older than the asker's retention.
    ended = or_(
        t.c.expires_at <= bindparam("p_now"),
        and_(t.c.state == completed, t.c.created_at <= bindparam("p_oldest")),
    )

    def take(**values: Any) -> Any:
        """Insert the key's row, or take over its row if that is no longer live (every column but the key's)."""
        fresh = insert(t).values(
            principal=bindparam("p_principal"),
            key=bindparam("p_key"),
            fingerprint=bindparam("p_fingerprint"),
            owner=bindparam("p_owner"),
            **values,
        )
        taken = ("fingerprint", "owner", *values)
        return fresh.on_conflict_do_update(
            index_elements=[t.c.principal, t.c.key],
            set_={name: getattr(fresh.excluded, name) for name in taken},
            where=ended,
        )

    claim = take(
        state=started, lease_until=bindparam("p_lease_until"), expires_at=bindparam("p_lease_until"),
        created_at=bindparam("p_now"), status=null(), headers=null(), body=null(),
    )
    # `commit`: the key taken straight into `completed`, in the transaction of the handler's own writes.
    record = take(
        state=completed, lease_until=bindparam("p_now"), expires_at=bindparam("p_expires_at"),
        created_at=bindparam("p_now"), status=bindparam("p_status"), headers=bindparam("p_headers"),
        body=bindparam("p_body"),
    )
    if dialect == "postgresql":
        # SQLite reports the row count instead, at half the cost of RETURNING
        claim = claim.returning(t.c.owner)
        record = record.returning(t.c.owner)
    return {
        "claim": claim,
        "record": record,
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
            state=completed,
            lease_until=bindparam("p_now"),
            expires_at=bindparam("p_expires_at"),
            status=bindparam("p_status"),
            headers=bindparam("p_headers"),
            body=bindparam("p_body"),
        ),
        "release": delete(t).where(running),
        "forget": delete(t).where(this_key, t.c.owner == bindparam("p_owner")),
        "purge": delete(t).where(t.c.expires_at <= bindparam("p_now")),
    }


def encode_headers(headers: tuple[tuple[bytes, bytes], ...]) -> str:
    """The `headers` column: JSON text of [name, value] pairs, latin-1 decoded (every byte maps to one char).

    The text `json.dumps` would write, put together from the json module's own string encoder: `json.dumps` sets
    up an encoder on every call, which costs more than encoding a response's few headers."""
    return "[" + ", ".join(
        f"[{_json_string(name.decode('latin-1'))}, {_json_string(value.decode('latin-1'))}]"
        for name, value in headers
    ) + "]"


_json_string = json.encoder.encode_basestring_ascii


def decode_headers(text: str | None) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(text or "[]"))


def _check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"an idempotency key has 1 to {MAX_KEY_LENGTH} characters, not {len(key)}")
    return key


# -- drivers: the same statements, run the cheapest way the database allows -------------------------------------


class _Driver(Protocol):
    def claim(self, params: dict[str, Any]) -> Awaitable[tuple[bool, Sequence[Any] | None]]:
        """Run the claim upsert; (True, None) when it took the key, else (False, the row as it is, if any)."""
        ...

    def execute(self, name: str, params: dict[str, Any]) -> Awaitable[int]:
        """Run one writing statement; the number of rows it changed."""
        ...

    def read(self, params: dict[str, Any]) -> Awaitable[Sequence[Any] | None]:
        """The key's row, read outside any write transaction and without a lock; None if there is none (or the
        database cannot tell this instant: the caller then takes its write path)."""
        ...

    def commit(
        self, params: dict[str, Any], writes: Sequence[Write]
    ) -> Awaitable[tuple[bool, Sequence[Any] | None]]:
        """Run the `record` upsert and, if it took the key, `writes`, in one transaction; answers as `claim`."""
        ...

    async def close(self) -> None: ...


class _SqliteFile:
    """A SQLite file, through the `Store`'s inline writer (`bankgate.store.inline`): each operation is a unit of
    work run on the event loop's thread and committed with the others of its turn. Responses larger than
    `_INLINE_BODY_BYTES` and purges run in its worker thread, so the loop never waits for a large write."""

    def __init__(self, writer: InlineSqlite) -> None:
        self._writer = writer
        self._sql = _compiled_sqlite()
        # The handlers' statements, compiled on first use (keyed by identity; the statement is kept alive with it).
        # Bounded: a handler that builds its statement on every request pays a compilation each time, but the
        # cache does not grow with it.
        self._writes: dict[int, tuple[Any, Compiled]] = {}

    def _compiled(self, statement: Any) -> Compiled:
        known = self._writes.get(id(statement))
        if known is None or known[0] is not statement:
            if len(self._writes) >= _COMPILED_WRITES:
                self._writes.clear()
            known = self._writes[id(statement)] = (statement, Compiled(statement))
        return known[1]

    def _commit(
        self, connection: sqlite3.Connection, params: dict[str, Any], writes: Sequence[Write]
    ) -> tuple[bool, Sequence[Any] | None]:
        record = self._sql["record"]
        if len(writes) > 1:
            with savepoint(connection):  # the record and the writes stand or fall together
                if connection.execute(record.sql, record.args(params)).rowcount == 1:
                    for write in writes:
                        compiled = self._compiled(write.statement)
                        connection.execute(compiled.sql, compiled.args(write.params))
                    return True, None
        elif connection.execute(record.sql, record.args(params)).rowcount == 1:
            if writes:
                # One write needs no savepoint (whose SAVEPOINT and RELEASE cost as much as the write): SQLite undoes
                # a failing statement by itself, and the record goes with a statement of its own.
                compiled = self._compiled(writes[0].statement)
                try:
                    connection.execute(compiled.sql, compiled.args(writes[0].params))
                except BaseException:
                    if connection.in_transaction:
                        forget = self._sql["forget"]
                        connection.execute(forget.sql, forget.args(params))
                    raise
            return True, None
        read = self._sql["read"]
        rows = connection.execute(read.sql, read.args(params)).fetchall()
        return False, rows[0] if rows else None

    def commit(
        self, params: dict[str, Any], writes: Sequence[Write]
    ) -> Awaitable[tuple[bool, Sequence[Any] | None]]:
        return self._writer.submit(self._commit, params, writes)

    def _claim(self, connection: sqlite3.Connection, params: dict[str, Any]) -> tuple[bool, Sequence[Any] | None]:
        claim, read = self._sql["claim"], self._sql["read"]
        if connection.execute(claim.sql, claim.args(params)).rowcount == 1:  # inserted, or taken over
            return True, None
        rows = connection.execute(read.sql, read.args(params)).fetchall()
        return False, rows[0] if rows else None

    def _execute(self, connection: sqlite3.Connection, name: str, params: dict[str, Any]) -> int:
        compiled = self._sql[name]
        return connection.execute(compiled.sql, compiled.args(params)).rowcount

    def claim(self, params: dict[str, Any]) -> Awaitable[tuple[bool, Sequence[Any] | None]]:
        return self._writer.submit(self._claim, params)

    def read(self, params: dict[str, Any]) -> Ready[Sequence[Any] | None]:
        read = self._sql["read"]
        return Ready(self._writer.read(_fetch_one, read.sql, read.args(params)))

    def execute(self, name: str, params: dict[str, Any]) -> Awaitable[int]:
        if name == "purge" or len(params.get("p_body") or b"") > _INLINE_BODY_BYTES:
            return self._writer.run_in_thread(self._execute, name, params)
        return self._writer.submit(self._execute, name, params)

    async def close(self) -> None:
        """The writer belongs to the `Store`."""


def _fetch_one(connection: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Sequence[Any] | None:
    row: Sequence[Any] | None = connection.execute(sql, args).fetchone()
    return row


_INLINE_BODY_BYTES = 64 * 1024
_COMPILED_WRITES = 64  # distinct handler statements kept compiled (build them once, at import)


_COMMAND_COUNT = re.compile(r"(\d+)$")


class _Asyncpg:
    """PostgreSQL through the asyncpg connection of a pooled SQLAlchemy connection, outside any transaction: one
    round trip per statement instead of BEGIN, statement, COMMIT."""

    def __init__(self, engine: AsyncEngine, statements: dict[str, Any]) -> None:
        self._engine = engine
        self._statements = statements
        self._sql = {name: Compiled(statement, engine.dialect) for name, statement in statements.items()}

    async def _run(self, work: Callable[[Any], Awaitable[_T]]) -> _T:
        async with self._engine.connect() as conn:
            pooled = await conn.get_raw_connection()
            try:
                return await work(pooled.driver_connection)
            except BaseException:
                pooled.invalidate()  # a failed or cancelled call may leave the driver mid-protocol
                raise

    async def claim(self, params: dict[str, Any]) -> tuple[bool, Sequence[Any] | None]:
        claim, read = self._sql["claim"], self._sql["read"]

        async def work(driver: Any) -> tuple[bool, Sequence[Any] | None]:
            if await driver.fetchrow(claim.sql, *claim.args(params)) is not None:
                return True, None
            return False, await driver.fetchrow(read.sql, *read.args(params))

        return await self._run(work)

    async def read(self, params: dict[str, Any]) -> Sequence[Any] | None:
        read = self._sql["read"]

        async def work(driver: Any) -> Sequence[Any] | None:
            row: Sequence[Any] | None = await driver.fetchrow(read.sql, *read.args(params))
            return row

        return await self._run(work)

    async def execute(self, name: str, params: dict[str, Any]) -> int:
        compiled = self._sql[name]

        async def work(driver: Any) -> int:
            status = await driver.execute(compiled.sql, *compiled.args(params))
            found = _COMMAND_COUNT.search(status or "")
            return int(found.group(1)) if found else 0

        return await self._run(work)

    def commit(
        self, params: dict[str, Any], writes: Sequence[Write]
    ) -> Awaitable[tuple[bool, Sequence[Any] | None]]:
        return _commit_on(self._engine, self._statements, params, writes)

    async def close(self) -> None:
        """The pool belongs to the `Store`."""


class _Engine:
    """Any other SQLAlchemy setup (e.g. an in-memory SQLite database): one transaction per operation."""

    def __init__(self, engine: AsyncEngine, statements: dict[str, Any]) -> None:
        self._engine = engine
        self._sql = statements

    async def claim(self, params: dict[str, Any]) -> tuple[bool, Sequence[Any] | None]:
        async with self._engine.begin() as conn:
            result = await conn.execute(self._sql["claim"], params)
            if (result.rowcount == 1) if self._engine.dialect.name == "sqlite" else (result.first() is not None):
                return True, None
            return False, (await conn.execute(self._sql["read"], params)).first()

    async def read(self, params: dict[str, Any]) -> Sequence[Any] | None:
        async with self._engine.connect() as conn:
            return (await conn.execute(self._sql["read"], params)).first()

    async def execute(self, name: str, params: dict[str, Any]) -> int:
        async with self._engine.begin() as conn:
            return int((await conn.execute(self._sql[name], params)).rowcount or 0)

    def commit(
        self, params: dict[str, Any], writes: Sequence[Write]
    ) -> Awaitable[tuple[bool, Sequence[Any] | None]]:
        return _commit_on(self._engine, self._sql, params, writes)

    async def close(self) -> None:
        """The engine belongs to the `Store`."""


async def _commit_on(
    engine: AsyncEngine, statements: dict[str, Any], params: dict[str, Any], writes: Sequence[Write]
) -> tuple[bool, Sequence[Any] | None]:
    """`commit` through SQLAlchemy: one transaction for the record and the writes (on PostgreSQL a concurrent
    commit of the same key waits for this one's row lock, then finds the key taken)."""
    async with engine.begin() as conn:
        result = await conn.execute(statements["record"], params)
        if (result.rowcount == 1) if engine.dialect.name == "sqlite" else (result.first() is not None):
            for write in writes:
                await conn.execute(write.statement, dict(write.params))
            return True, None
        return False, (await conn.execute(statements["read"], params)).first()


@functools.cache
def _compiled_sqlite() -> dict[str, Compiled]:
    """The statements compiled to SQLite's own SQL, once per process (a `Compiled` does not change once built)."""
    return {name: Compiled(statement) for name, statement in _statements("sqlite").items()}


def _driver_for(store: Store) -> _Driver:
    if store.inline is not None:
        return _SqliteFile(store.inline)
    statements = _statements(store.dialect)
    if store.dialect == "postgresql" and store.engine.dialect.driver == "asyncpg":
        return _Asyncpg(store.engine, statements)
    return _Engine(store.engine, statements)


class SqlIdempotencyStore:
    """Key records in `schema.idempotency_keys` of a `bankgate.store.Store` (SQLite file or PostgreSQL).

    Each operation is one statement (the claim two when the key is taken), committed before it returns; `commit`
    (`AtomicStore`) adds the handler's writes to the same transaction. The store does not own `store`. Ended rows
    stay until `purge` (the claim ignores them meanwhile).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._driver = _driver_for(store)

    def __repr__(self) -> str:
        return f"SqlIdempotencyStore({self._store!r})"

    async def claim(self, principal: str, key: str, fingerprint: str, *, lease: float, retention: float) -> Claim:
        params: dict[str, Any] = {
            "p_principal": bounded(principal, _PRINCIPAL_LENGTH),
            "p_key": _check_key(key),
            "p_fingerprint": fingerprint,
            "p_owner": new_owner(),
        }
        for _ in range(_ATTEMPTS):
            now = time.time()
            params.update(p_now=now, p_lease_until=now + lease, p_oldest=now - retention)
            won, row = await self._driver.claim(params)
            if won:
                return Claim("claimed", owner=params["p_owner"])
            if row is not None and (judged := _judge(row, fingerprint, now, now - retention)) is not None:
                return judged
            # The row went away (released or purged) or ended between the two statements: ask again.
        raise RuntimeError(f"the claim of an idempotency key did not settle after {_ATTEMPTS} attempts")

    def lookup(self, principal: str, key: str, fingerprint: str, *, retention: float) -> Awaitable[Claim | None]:
        found = self._driver.read({"p_principal": bounded(principal, _PRINCIPAL_LENGTH), "p_key": key})
        if isinstance(found, Ready):  # a SQLite file: read at once
            return Ready(_judge_completed(found.value, fingerprint, retention))
        return self._lookup(found, fingerprint, retention)

    @staticmethod
    async def _lookup(found: Awaitable[Sequence[Any] | None], fingerprint: str, retention: float) -> Claim | None:
        return _judge_completed(await found, fingerprint, retention)

    async def extend(self, principal: str, key: str, owner: str, *, lease: float) -> bool:
        params = {
            "p_principal": bounded(principal, _PRINCIPAL_LENGTH),
            "p_key": key,
            "p_owner": owner,
            "p_lease_until": time.time() + lease,
        }
        return await self._driver.execute("extend", params) == 1

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
        return await self._driver.execute("complete", params) == 1

    async def release(self, principal: str, key: str, owner: str) -> None:
        params = {"p_principal": bounded(principal, _PRINCIPAL_LENGTH), "p_key": key, "p_owner": owner}
        await self._driver.execute("release", params)

    async def commit(
        self,
        principal: str,
        key: str,
        fingerprint: str,
        response: StoredResponse,
        writes: Sequence[Write],
        *,
        retention: float,
    ) -> Claim:
        params: dict[str, Any] = {
            "p_principal": bounded(principal, _PRINCIPAL_LENGTH),
            "p_key": _check_key(key),
            "p_fingerprint": fingerprint,
            "p_owner": new_owner(),
            "p_status": response.status,
            "p_headers": encode_headers(response.headers),
            "p_body": response.body,
        }
        for _ in range(_ATTEMPTS):
            now = time.time()
            params.update(p_now=now, p_expires_at=now + retention, p_oldest=now - retention)
            won, row = await self._driver.commit(params, writes)
            if won:
                return Claim("claimed", owner=params["p_owner"])
            if row is not None and (judged := _judge(row, fingerprint, now, now - retention)) is not None:
                return judged
        raise RuntimeError(f"the commit of an idempotency key did not settle after {_ATTEMPTS} attempts")

    async def purge(self) -> int:
        return await self._driver.execute("purge", {"p_now": time.time()})

    async def close(self) -> None:
        """Close the store's own SQLite connection, if it has one; the `Store` stays open."""
        await self._driver.close()


def _judge_completed(row: Sequence[Any] | None, fingerprint: str, retention: float) -> Claim | None:
    """What `lookup` answers for the key's row: `_judge`'s outcome for a `completed` row, else None."""
    if row is None or row[1] != COMPLETED:
        return None
    now = time.time()
    return _judge(row, fingerprint, now, now - retention)


def _judge(row: Sequence[Any], fingerprint: str, now: float, oldest: float) -> Claim | None:
    """The claim outcome for a row that exists, or None when the row is no longer live."""
    stored_fingerprint, state, lease_until, expires_at, created_at, status, headers, body = row
    if expires_at <= now or (state == COMPLETED and created_at <= oldest):
        return None
    if stored_fingerprint != fingerprint:
        return Claim("mismatch")
    if state == STARTED:
        return Claim("in_progress", retry_after=max(lease_until - now, 0.0))
    return Claim("completed", response=StoredResponse(int(status), decode_headers(headers), bytes(body or b"")))
