"""The server's logs: the request id of the request being served (a context variable every log record made while
serving it can read), the formatter of `--log-format json` (one JSON object per line) and the access log's sink on
the `http.request` event.

Standard library only: uvicorn workers import it while configuring logging, before they answer the supervisor.
What a record says is the caller's business; no caller logs a secret (the query string, credentials and tokens stay
out of messages; SQL parameters are hidden by the engine; outages are described by `outage.describe`).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from bankgate.events import AuditEvent

__all__ = ["ACCESS_LOGGER", "HTTP_REQUEST", "LOG_FORMATS", "REQUEST_ID", "AccessLogSink", "JsonFormatter",
           "LogFormat"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

#: The id of the request being served (`X-Request-Id`), set by the outer request layer for the whole request.
REQUEST_ID: ContextVar[str | None] = ContextVar("bankgate_request_id", default=None)

#: The event every HTTP request produces once, after its response (see `bankgate.request_layer`).
HTTP_REQUEST = "http.request"
#: The logger of the per-request lines of `serve --access-log --log-format json`.
ACCESS_LOGGER = "bankgate.access"

#: Attributes every `LogRecord` has: anything else on a record came from `extra=` and goes into the JSON object.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message",
                                                                   "taskName"}


#: The last whole second formatted and its text up to the seconds: one tuple, replaced whole, so that a thread
#: logging at the same time never pairs one second's number with another's text.
_second: tuple[int, str] = (-1, "")


def _iso(created: float) -> str:
    """`created` as ISO 8601 UTC with milliseconds; the date and time up to the second are formatted once a second."""
    global _second
    whole = int(created)
    micro = round((created - whole) * 1_000_000)  # as datetime rounds a timestamp, before the milliseconds
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{micro // 1000:03d}Z"


#: One encoder for every line (`json.dumps` with an option builds a new one per call).
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time` (ISO 8601, UTC), `level`, `logger`, `message`, the `request_id` of the
    request being served (if any), the record's `extra` fields (`event`, `route`, `status`, `duration`, `actor`,
    ...) and, for an exception, its traceback as `exception`. Non-ASCII is escaped, so a line is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(entry)


class AccessLogSink:
    """The access log of `serve --access-log --log-format json`: one INFO record on `bankgate.access` per
    `http.request` event, with method, route template, status, duration, request id, actor and source address
    (never the raw path or query string). It wants the event only when that logger's own level is INFO or lower
    (`serve` sets it), so by default no event is built for it."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(ACCESS_LOGGER)

    def __repr__(self) -> str:
        return f"AccessLogSink({self._log.name!r})"

    def wants(self, event: str) -> bool:
        return event == HTTP_REQUEST and logging.NOTSET < self._log.level <= logging.INFO

    def record(self, event: AuditEvent) -> None:
        detail = event.detail
        # The record is made here rather than by `Logger.info`, which would walk the stack to find its caller (a
        # third of a line's cost, for a file and line number that are always this one).
        record = self._log.makeRecord(
            self._log.name, logging.INFO, __file__, 0, "%s %s %d %.1f ms",
            (detail["method"], detail["route"], detail["status"], detail["duration"] * 1000), None,
            extra={"event": event.event, "request_id": detail["request_id"], "method": detail["method"],
                   "route": detail["route"], "status": detail["status"], "duration": round(detail["duration"], 6),
                   "actor": event.actor, "source_ip": event.source_ip, "outcome": event.outcome},
        )
        self._log.handle(record)
