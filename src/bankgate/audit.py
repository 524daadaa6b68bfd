"""The audit trail: who did what, when, from where, with what outcome. Never a secret.

The token endpoint records an event per request; writing each one in its own transaction would put a database
round trip on the hot path, so the server queues events and writes them in batches (every
`audit_flush_interval` seconds, and on shutdown). Commands write theirs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import orjson
from sqlalchemy import insert, select

from bankgate.events import AuditEvent, EventSink, Outcome
from bankgate.outage import OutageLog, unavailable_service
from bankgate.store import Store, schema

__all__ = ["AuditEvent", "AuditLog", "EventSink", "Outcome"]

log = logging.getLogger("bankgate.audit")

#: Events said at every request, for metrics and tracing; not kept in the audit trail (they would double its rows
#: with verdicts that the OAuth and user events already record where they matter).
VERDICT_PREFIXES = ("guard.", "idempotency.")


def _row(event: AuditEvent) -> tuple[Any, ...]:
    """A row in `_COLUMNS` order."""
    detail = orjson.dumps(dict(event.detail), option=orjson.OPT_SORT_KEYS).decode()
    return (event.at, event.event, event.actor[:200], event.source_ip, event.outcome, detail)


_COLUMNS = ("at", "event", "actor", "source_ip", "outcome", "detail")


class AuditLog:
    """The audit writer: the first `EventSink` of the server, wanting every event but the per-request verdicts."""

    def __init__(self, store: Store, *, flush_interval: float = 0.25, max_batch: int = 500) -> None:
        self._store = store
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._pending: list[AuditEvent] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._insert_sql: str | None = None
        #: Where a database outage is logged (set by the server's Runtime); without one, each failure is logged.
        self.outages: OutageLog | None = None

    def wants(self, event: str) -> bool:
        return not event.startswith(VERDICT_PREFIXES)

    def record(self, event: AuditEvent) -> None:
        """Queue an event (never blocks); written by the background flusher."""
        self._pending.append(event)
        if len(self._pending) >= self._max_batch:
            self._wake.set()

    async def write(self, *events: AuditEvent) -> None:
        """Write events now, in one transaction."""
        if not events:
            return
        if self._insert_sql is None:
            # Compiled once to the driver's own SQL: a batch then skips per-row statement processing, which
            # otherwise costs more than the insert itself on the token endpoint's busiest path.
            compiled = insert(schema.audit_events).inline().values({c: None for c in _COLUMNS}).compile(
                dialect=self._store.engine.dialect
            )
            names = compiled.positiontup or []
            assert tuple(names) == _COLUMNS, names
            self._insert_sql = str(compiled)
        async with self._store.begin() as conn:
            await conn.exec_driver_sql(self._insert_sql, [_row(e) for e in events])

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self.write(*batch)
        except Exception as exc:
            # Keep the events for the next attempt rather than lose them to a transient database error.
            self._pending[:0] = batch
            service = unavailable_service(exc)
            if self.outages is not None and service is not None:
                self.outages.failed(service, exc)  # one line per outage, not one per flush
            else:
                log.exception("could not write %d audit events; will retry", len(batch))

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            self._wake.clear()
            await self.flush()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bankgate-audit-flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def tail(
        self,
        limit: int = 20,
        *,
        event: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AuditEvent]:
        """The newest `limit` events, oldest first; only those of `event` (a name, or a prefix ending in `.`:
        `client.`), of `actor`, and at or after `since` / before `until` (UNIX seconds) when given."""
        table = schema.audit_events
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        if event and event.endswith("."):
            query = query.where(table.c.event.startswith(event, autoescape=True))
        elif event:
            query = query.where(table.c.event == event)
        if actor:
            query = query.where(table.c.actor == actor)
        if since is not None:
            query = query.where(table.c.at >= since)
        if until is not None:
            query = query.where(table.c.at < until)
        async with self._store.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            AuditEvent(
                event=row["event"],
                actor=row["actor"],
                outcome=row["outcome"],
                source_ip=row["source_ip"],
                detail=json.loads(row["detail"]),
                at=row["at"],
            )
            for row in reversed(rows)
        ]
