"""What happened, told to whoever listens: the server's events and their sinks (standard library only: the
standalone guard and the Idempotency-Key layer emit them too).

An `EventSink` says which events it wants and records them: the audit writer first (`bankgate.audit.AuditLog`),
metrics and tracing later. `Events` holds the sinks and hands out a `Channel` per event name, which knows the sinks
that want it: emitting to a channel nobody listens to is a truth test, with no event built, so the guard and the
Idempotency-Key layer tell every verdict and outcome at no cost until a sink asks for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol

__all__ = ["AuditEvent", "Channel", "EventSink", "Events", "Outcome"]

Outcome = Literal["success", "failure"]
_NO_DETAIL: Mapping[str, Any] = MappingProxyType({})


class AuditEvent:
    """One event: what (`event`, e.g. `token.issued`), who, with what outcome, from where. Never a secret. Read-only
    by convention: sinks share one instance.

    Written out rather than a frozen dataclass: its `__init__` sets each field through `object.__setattr__`, three
    times the cost of this one, paid for every request once a sink (metrics, the access log) listens."""

    __slots__ = ("actor", "at", "detail", "event", "outcome", "source_ip")

    def __init__(
        self,
        event: str,
        actor: str,
        outcome: Outcome,
        source_ip: str | None = None,
        detail: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        self.event = event
        self.actor = actor
        self.outcome: Outcome = outcome
        self.source_ip = source_ip
        self.detail: Mapping[str, Any] = {} if detail is None else detail
        self.at: float = time.time() if at is None else at

    def _fields(self) -> tuple[Any, ...]:
        return self.event, self.actor, self.outcome, self.source_ip, self.detail, self.at

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuditEvent) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # `detail` is a mapping

    def __repr__(self) -> str:
        return (f"AuditEvent(event={self.event!r}, actor={self.actor!r}, outcome={self.outcome!r}, "
                f"source_ip={self.source_ip!r}, detail={dict(self.detail)!r}, at={self.at!r})")

    def as_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "actor": self.actor,
            "source_ip": self.source_ip,
            "outcome": self.outcome,
            "detail": dict(self.detail),
        }


class EventSink(Protocol):
    """Where events go. `wants` is asked once per event name (and again when the sinks change), never per event;
    `record` must not block (queue, count, or hand over)."""

    def wants(self, event: str) -> bool: ...

    def record(self, event: AuditEvent) -> None: ...


class Channel:
    """The sinks that want one event name; `sinks` is empty when none does."""

    __slots__ = ("name", "sinks")

    def __init__(self, name: str, sinks: tuple[EventSink, ...]) -> None:
        self.name = name
        self.sinks = sinks

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, sinks={len(self.sinks)})"

    def emit(
        self, actor: str, outcome: Outcome, source_ip: str | None = None, detail: Mapping[str, Any] | None = None
    ) -> None:
        if self.sinks:
            event = AuditEvent(self.name, actor, outcome, source_ip, _NO_DETAIL if detail is None else detail)
            for sink in self.sinks:
                sink.record(event)


class Events:
    """The sinks of one server (or of one standalone guard or layer), in order."""

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self._sinks: list[EventSink] = list(sinks)
        self._channels: dict[str, Channel] = {}

    def __repr__(self) -> str:
        return f"Events({self._sinks!r})"

    @property
    def sinks(self) -> tuple[EventSink, ...]:
        return tuple(self._sinks)

    def add(self, sink: EventSink) -> None:
        """A further sink, told from now on every event it wants (channels handed out already included)."""
        self._sinks.append(sink)
        for channel in self._channels.values():
            channel.sinks = self._wanting(channel.name)

    def channel(self, name: str) -> Channel:
        """The channel of event `name` (one object per name: hold it, emit to it)."""
        found = self._channels.get(name)
        if found is None:
            found = self._channels[name] = Channel(name, self._wanting(name))
        return found

    def emit(
        self,
        name: str,
        actor: str,
        outcome: Outcome,
        source_ip: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.channel(name).emit(actor, outcome, source_ip, detail)

    def _wanting(self, name: str) -> tuple[EventSink, ...]:
        return tuple(sink for sink in self._sinks if sink.wants(name))
