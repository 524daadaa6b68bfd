"""Reading the audit trail: the latest events, a page at a time, or all of them exported as JSON Lines or CSV; by
time, event name or kind, actor, subject and outcome."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import AsyncIterator, Iterable
from typing import Literal

from bankgate.admin._base import Actor, UseCases, paging_errors
from bankgate.audit import AuditEvent, AuditQuery
from bankgate.store.paging import DEFAULT_LIMIT, Page

__all__ = ["CSV_COLUMNS", "AuditQueries", "ExportFormat", "render"]

ExportFormat = Literal["jsonl", "csv"]
OUTCOMES = ("success", "failure")
CSV_COLUMNS = ("at", "event", "actor", "source_ip", "outcome", "detail")
#: A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV injection"): it is written after `'`.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
#: Events per read while exporting: memory stays bounded whatever the size of the trail.
_EXPORT_BATCH = 500


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA) else value


class _Writer:
    """Events as JSON Lines or CSV text, taken a chunk at a time."""

    def __init__(self, format: ExportFormat) -> None:
        self._format = format
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\r\n")
        if format == "csv":
            self._csv.writerow(CSV_COLUMNS)

    def add(self, event: AuditEvent) -> None:
        row = event.as_json()
        if self._format == "jsonl":
            self._buffer.write(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n")
        else:
            detail = json.dumps(row["detail"], separators=(",", ":"), sort_keys=True)
            self._csv.writerow([_cell(str(row[c] or "")) for c in CSV_COLUMNS[:-1]] + [_cell(detail)])

    def take(self) -> str:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text


def render(events: Iterable[AuditEvent], format: ExportFormat) -> str:
    """Events already read, in the export's format (what `bankgate audit tail --format csv` prints)."""
    writer = _Writer(format)
    for event in events:
        writer.add(event)
    return writer.take()


class AuditQueries(UseCases):
    async def tail(
        self,
        limit: int = 20,
        *,
        event: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        until: float | None = None,
        subject: str | None = None,
        outcome: str | None = None,
    ) -> list[AuditEvent]:
        """The newest `limit` matching events, oldest first."""
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit {limit} is not between 1 and 10000")
        query = await self.query(since=since, until=until, event=event, actor=actor, subject=subject, outcome=outcome)
        return await self._services.audit.tail(limit, query=query)

    async def page(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        event: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        outcome: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        newest_first: bool = True,
    ) -> Page[AuditEvent]:
        """One page of matching events, newest first unless `newest_first=False`; pass `next_cursor` back for the
        next one (with the same filters)."""
        query = await self.query(since=since, until=until, event=event, actor=actor, subject=subject, outcome=outcome)
        with paging_errors():
            return await self._services.audit.page(query, limit=limit, cursor=cursor, newest_first=newest_first)

    async def export(
        self,
        by: Actor,
        *,
        since: float | None = None,
        until: float | None = None,
        event: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        outcome: str | None = None,
        format: ExportFormat = "jsonl",
        newest_first: bool = False,
    ) -> AsyncIterator[str]:
        """Every matching event (oldest first unless `newest_first`), as text chunks of JSON Lines (one
        `AuditEvent.as_json` object a line) or CSV (a header row, `detail` as a JSON column, cells that a
        spreadsheet would run as a formula prefixed with `'`). Read and written a batch at a time: constant memory.
        The filters are checked before the first chunk, so a bad one fails before anything is written; then the
        export itself is audited under `by`, with its filters."""
        if format not in ("jsonl", "csv"):
            raise ValueError(f"format {format!r} is not one of: jsonl, csv")
        query = await self.query(since=since, until=until, event=event, actor=actor, subject=subject, outcome=outcome)
        filters = {"since": since, "until": until, "event": event, "actor": actor, "subject": subject,
                   "outcome": outcome}
        detail = {"format": format, "newest_first": newest_first,
                  **{name: value for name, value in filters.items() if value is not None}}
        writer = _Writer(format)
        count = 0
        audited = False
        async for found in self._services.audit.scan(query, newest_first=newest_first, batch=_EXPORT_BATCH):
            writer.add(found)
            count += 1
            if count % _EXPORT_BATCH == 0:
                if not audited:  # once the scan has begun, so the export does not list its own event
                    await self._audit(by, "audit.exported", detail)
                    audited = True
                yield writer.take()
        if not audited:
            await self._audit(by, "audit.exported", detail)
        if rest := writer.take():
            yield rest

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        event: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        outcome: str | None = None,
    ) -> AuditQuery:
        """The filters, checked: `event` a name or a kind (`client.` or `client.*`); `subject` an API key, client
        id, username, user id or certificate serial, which also finds the events of that subject's other names (a
        client's events under its API key and its id, a user's under its username, id and its certificates)."""
        if since is not None and until is not None and until <= since:
            raise ValueError("--until must be later than --since")
        if outcome is not None and outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of: {', '.join(OUTCOMES)}")
        if event is not None:
            event = event.strip()
            if event.endswith(".*"):
                event = event[:-1]
            if not event or "*" in event or len(event) > 64:
                raise ValueError(f"event {event!r} is neither an event name (client.revoked) nor a kind (client.*)")
        subjects = await self._aliases(subject.strip()) if subject is not None else None
        return AuditQuery(since=since, until=until, event=event or None, actor=actor or None, subjects=subjects,
                          outcome=outcome)

    async def _aliases(self, subject: str) -> tuple[str, ...]:
        if not subject or len(subject) > 200:
            raise ValueError("a subject is an API key, client id, username, user id or certificate serial")
        services = self._services
        names = {subject}
        client = await services.clients.find(subject) or await services.clients.find_by_id(subject)
        if client is not None:
            names.update((client.api_key, client.id))
        user = await services.users.find(subject) or await services.users.get_by_id(subject)
        if user is not None:
            names.update((user.username, user.id))
            names.update(c.serial for c in await services.pki.list_for_user(user.id))
        with contextlib.suppress(LookupError, ValueError):  # not a serial, or no such certificate
            names.add((await services.pki.get(subject)).serial)
        return tuple(sorted(names))
