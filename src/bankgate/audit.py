"""The audit trail: who did what, when, from where, with what outcome. Never a secret.

The token endpoint records an event per request; writing each one in its own transaction would put a database
round trip on the hot path, so the server queues events and writes them in batches (every
`audit_flush_interval` seconds, and on shutdown). Commands write theirs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, func, insert, select

from bankgate.events import AuditEvent, EventSink, Outcome
from bankgate.outage import OutageLog, unavailable_service
from bankgate.store import Store, schema
from bankgate.store.paging import MAX_LIMIT, Keyset, Page, fetch_page, first_rows

__all__ = ["AuditEvent", "AuditLog", "AuditQuery", "EventSink", "Outcome", "subject_of"]

log = logging.getLogger("bankgate.audit")

#: Events said at every request, for logs, metrics and tracing; not kept in the audit trail (they would double its
#: rows with verdicts that the OAuth and user events already record where they matter, or, for `http.request`,
#: flood it). Nor are the operational events: throttle blocks (the refusals they cause are audited) and
#: backing-service errors (the outage log has them).
VERDICT_PREFIXES = ("guard.", "idempotency.", "http.", "throttle.", "outage.")


#: The detail keys that name what an event is about: a client (its id, else its API key: a query for either name
#: searches both), a certificate's serial before the user it belongs to (username, else user id), then the allow
#: lists' `subject` label. The client id comes first because every token event carries it: on the token endpoint's
#: path the subject is found by the first lookup.
SUBJECT_KEYS = ("client_id", "api_key", "serial", "username", "user_id", "subject")


def subject_of(detail: Mapping[str, Any]) -> str | None:
    """What an event is about, for the indexed `subject` column (`AuditQueries.page(subject=...)`)."""
    for key in SUBJECT_KEYS:
        value = detail.get(key)
        if value and value.__class__ is str:
            return value[:200]
    return None


def _row(event: AuditEvent) -> tuple[Any, ...]:
    """A row in `_COLUMNS` order."""
    detail = orjson.dumps(dict(event.detail), option=orjson.OPT_SORT_KEYS).decode()
    return (event.at, event.event, event.actor[:200], event.source_ip, event.outcome, detail,
            subject_of(event.detail))


_COLUMNS = ("at", "event", "actor", "source_ip", "outcome", "detail", "subject")


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
        query: AuditQuery | None = None,
    ) -> list[AuditEvent]:
        """The newest `limit` events, oldest first; those that match `query`, or of `event` (a name, or a prefix
        ending in `.`: `client.`), of `actor`, and at or after `since` / before `until` (UNIX seconds)."""
        if query is None:
            query = AuditQuery(since=since, until=until, event=event, actor=actor)
        query, branches = query.split()
        async with self._store.connect() as conn:
            rows = await first_rows(conn, query.where(select(schema.audit_events)), _KEYSETS[True], limit, branches)
        return [_event(row) for row in reversed(rows)]

    async def page(
        self, query: AuditQuery, *, limit: int, cursor: str | None, newest_first: bool = True
    ) -> Page[AuditEvent]:
        """One page of the events that match `query`, newest first unless told otherwise (keyset on `(at, id)`)."""
        keyset, filters = _KEYSETS[newest_first], query.fingerprint()
        query, branches = query.split()
        statement = query.where(select(schema.audit_events))
        async with self._store.connect() as conn:
            rows, following = await fetch_page(conn, statement, keyset, limit=limit, cursor=cursor, filters=filters,
                                               branches=branches)
        return Page(tuple(_event(row) for row in rows), following)

    async def scan(
        self, query: AuditQuery, *, newest_first: bool = False, batch: int = MAX_LIMIT
    ) -> AsyncIterator[AuditEvent]:
        """Every event that matches `query` among those written before the scan began (so a scan of a busy trail
        ends), read a page at a time: constant memory, and no connection held between pages, so a slow reader never
        blocks a writer."""
        async with self._store.connect() as conn:
            last = await conn.scalar(select(func.max(schema.audit_events.c.id)))
        if last is None:
            return
        query = dataclasses.replace(query, through_id=last)
        cursor: str | None = None
        while True:
            page = await self.page(query, limit=batch, cursor=cursor, newest_first=newest_first)
            for event in page.items:
                yield event
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


@dataclasses.dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which events: at or after `since` and before `until` (UNIX seconds); `event` a name (`client.revoked`) or a
    prefix ending in `.` (`client.`); `actor` as recorded (`cli:alice`); `subjects` any of these values of the
    `subject` column; `outcome` success or failure."""

    since: float | None = None
    until: float | None = None
    event: str | None = None
    actor: str | None = None
    subjects: tuple[str, ...] | None = None
    outcome: str | None = None
    #: Only events written up to this one (by id): what a scan started with.
    through_id: int | None = None

    def where(self, statement: Select[Any]) -> Select[Any]:
        table = schema.audit_events
        if self.event and self.event.endswith("."):
            statement = statement.where(table.c.event.startswith(self.event, autoescape=True))
        elif self.event:
            statement = statement.where(table.c.event == self.event)
        if self.actor:
            statement = statement.where(table.c.actor == self.actor)
        if self.subjects is not None:
            statement = statement.where(table.c.subject.in_(self.subjects))
        if self.outcome:
            statement = statement.where(table.c.outcome == self.outcome)
        if self.since is not None:
            statement = statement.where(table.c.at >= self.since)
        if self.until is not None:
            statement = statement.where(table.c.at < self.until)
        if self.through_id is not None:
            statement = statement.where(table.c.id <= self.through_id)
        return statement

    def split(self) -> tuple[AuditQuery, list[ColumnElement[bool]]]:
        """One subject's events are an index range in time order; for several subjects, this query without them
        and one branch per subject, read apart and merged (`bankgate.store.paging.first_rows`)."""
        if self.subjects is None or len(self.subjects) < 2:
            return self, []
        column = schema.audit_events.c.subject
        return dataclasses.replace(self, subjects=None), [column == s for s in self.subjects]

    def fingerprint(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "event": self.event, "actor": self.actor,
                "subjects": sorted(self.subjects) if self.subjects is not None else None, "outcome": self.outcome,
                "through_id": self.through_id}


_ORDER = (schema.audit_events.c.at, schema.audit_events.c.id)
_KEYSETS = {
    newest_first: Keyset("audit", _ORDER, ((float, int), (int,)), descending=newest_first)
    for newest_first in (True, False)
}


def _event(row: Mapping[str, Any]) -> AuditEvent:
    return AuditEvent(
        event=row["event"],
        actor=row["actor"],
        outcome=row["outcome"],
        source_ip=row["source_ip"],
        detail=json.loads(row["detail"]),
        at=row["at"],
    )
