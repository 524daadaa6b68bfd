"""What counts as an outage of a backing service (the database, Redis), and its log: one line when it starts,
a count at most once a minute while it lasts, one line when the service answers again. A down database refuses
thousands of requests a minute; a traceback for each would bury the one line an operator needs. Defects (500s,
background jobs' bugs) follow the same rule (`Runs`): the first in full, the same one again as a count.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import exc as sa_exc

from bankgate.events import Channel, Events

__all__ = ["DefectLog", "OutageLog", "Runs", "StoreUnavailable", "defect_place", "describe", "unavailable_service"]

DATABASE = "database"
REDIS = "Redis"
K = TypeVar("K")


class StoreUnavailable(TimeoutError):
    """A store that found its backing service unavailable itself (e.g. a call past its deadline) says so with
    this; a driver's own exception is judged by `unavailable_service`. Either way the server's `ErrorBoundary`
    answers 503 with `Retry-After`, in the route's format. A `TimeoutError`, for callers that catch those."""

    def __init__(self, service: str, description: str) -> None:
        super().__init__(description)
        self.service = service

#: Errors of the database driver that say "the database did not answer", not "this statement is wrong".
_SQL_DEFECTS = (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError, sa_exc.NotSupportedError)
_SQL_UNAVAILABLE = (sa_exc.DBAPIError, sa_exc.DisconnectionError, sa_exc.TimeoutError)

try:
    import asyncpg

    _PG_UNAVAILABLE: tuple[type[BaseException], ...] = (
        asyncpg.exceptions.InterfaceError,  # e.g. ConnectionDoesNotExistError
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
        asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    )
except ImportError:  # pragma: no cover - the server extra installs it
    _PG_UNAVAILABLE = ()



def _redis_unavailable(exc: BaseException) -> bool | None:
    """For a Redis error: whether it says "Redis did not answer" (not "this command is wrong"); None for any other
    exception. redis is not imported for this: an error of it exists only once something imported it (a server
    without a Redis store never loads redis, nor what redis loads in turn, e.g. OpenTelemetry's metrics SDK)."""
    redis_exc = sys.modules.get("redis.exceptions")
    if redis_exc is None or not isinstance(exc, redis_exc.RedisError):
        return None
    defect = isinstance(exc, (redis_exc.DataError, redis_exc.ResponseError))
    return not defect or isinstance(exc, (redis_exc.ReadOnlyError, redis_exc.BusyLoadingError))


def unavailable_service(exc: BaseException) -> str | None:
    """The backing service whose failure `exc` is ("database" or "Redis"), or None when it is a defect.

    The one place that decides what a 503 is: `StoreUnavailable`, a dropped or refused connection, a timeout, a
    database shutting down; a constraint violation or a malformed statement stays a defect (500). An exception
    group counts when every exception in it does.
    """
    if isinstance(exc, StoreUnavailable):
        return exc.service
    if isinstance(exc, BaseExceptionGroup):
        services = {unavailable_service(inner) for inner in exc.exceptions}
        return services.pop() if len(services) == 1 else None
    if isinstance(exc, _SQL_UNAVAILABLE):
        return None if isinstance(exc, _SQL_DEFECTS) else DATABASE
    redis_unavailable = _redis_unavailable(exc)
    if redis_unavailable is not None:
        return REDIS if redis_unavailable else None
    # A raw driver or socket error (asyncio.TimeoutError is TimeoutError): most likely the database's connection.
    if isinstance(exc, (*_PG_UNAVAILABLE, sqlite3.OperationalError, OSError, TimeoutError)):
        return DATABASE
    return None


def describe(exc: BaseException) -> str:
    """`OperationalError (ConnectionRefusedError): …`: the driver's own message, never SQLAlchemy's rendering of
    it, which carries the statement and its parameters (hashes, tokens' ids)."""
    original = getattr(exc, "orig", None) or exc
    name = type(exc).__name__ if original is exc else f"{type(exc).__name__} ({type(original).__name__})"
    lines = str(original).strip().splitlines()
    return f"{name}: {lines[0][:200]}" if lines else name


@dataclass(slots=True)
class Run:
    """One run of a recurring failure: when it began, what it is called, how often it happened in all, since it
    was last told (`untold`: the first occurrence, told at once, included) and after that (`repeats`)."""

    since: float
    told_at: float
    seen_at: float
    label: str = ""
    total: int = 0
    untold: int = 0
    repeats: int = 0


@dataclass(frozen=True, slots=True)
class Tell:
    """What to log now about a run: its first occurrence (`first`), or `count` occurrences in `seconds`."""

    first: bool
    count: int
    seconds: float
    run: Run


class Runs(Generic[K]):
    """Runs of recurring failures, by key: the first occurrence of a run is told at once, the next ones are counted
    and told at most once per `interval`. A run ends when `end` says so (an outage: the service answers again)
    or, with `quiet_ends`, after `interval` without an occurrence (a defect that stopped happening). The one rule
    behind the outage log and the defect log: a failure repeated a thousand times is one line and a count."""

    def __init__(self, interval: float, clock: Callable[[], float], *, quiet_ends: bool = False,
                 limit: int = 1024) -> None:
        self.interval = interval
        self._clock = clock
        self._quiet_ends = quiet_ends
        self._limit = limit
        self._runs: dict[K, Run] = {}

    def __repr__(self) -> str:
        return f"Runs({len(self._runs)} running, interval={self.interval})"

    def __bool__(self) -> bool:
        return bool(self._runs)

    def __contains__(self, key: object) -> bool:
        return key in self._runs

    def __iter__(self) -> Iterator[K]:
        return iter(self._runs)

    def note(self, key: K, count: int = 1, label: str = "") -> Tell | None:
        """`count` more occurrences of `key` (0: a failure that refused nothing): what to log now, if anything."""
        now = self._clock()
        run = self._runs.get(key)
        if run is None or (self._quiet_ends and not run.repeats and now - run.seen_at >= self.interval):
            if run is None and len(self._runs) >= self._limit:
                self._forget_quiet(now)
            run = self._runs[key] = Run(now, now, now, label, count, count)
            return Tell(True, count, 0.0, run)
        run.seen_at = now
        run.total += count
        run.untold += count
        run.repeats += 1
        return self._due(run, now)

    def due(self) -> list[tuple[K, Tell]]:
        """The counts due now (runs repeated since they were last told, `interval` or more ago): for a periodic
        flush, so the count of a burst that stopped is told too."""
        now = self._clock()
        told = []
        for key, run in self._runs.items():
            if run.repeats and (tell := self._due(run, now)) is not None:
                told.append((key, tell))
        return told

    def end(self, key: K) -> Run | None:
        """End the run of `key`, if any; returns it."""
        return self._runs.pop(key, None) if self._runs else None

    def _due(self, run: Run, now: float) -> Tell | None:
        if now - run.told_at < self.interval:
            return None
        tell = Tell(False, run.untold, now - run.told_at, run)
        run.told_at = now
        run.untold = run.repeats = 0
        return tell

    def _forget_quiet(self, now: float) -> None:
        for key in [k for k, run in self._runs.items() if not run.repeats and now - run.seen_at >= self.interval]:
            del self._runs[key]


class OutageLog:
    """The log of backing services' outages, for one server process (see the module's docstring)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger or logging.getLogger("bankgate")
        self._clock = clock
        self._down: Runs[str] = Runs(interval, clock)
        self._errors = Channel("outage.error", ())

    def tell(self, events: Events) -> None:
        """Emit every failure recorded here as the event `outage.error` (detail: `service`, and `refused`: whether
        a request was refused) to `events`: the metrics count the database's and Redis's errors from it."""
        self._errors = events.channel("outage.error")

    def __repr__(self) -> str:
        return f"OutageLog(down={sorted(self._down)})"

    def down(self, service: str) -> bool:
        return service in self._down

    def refused(self, service: str, exc: BaseException) -> None:
        """A request was refused because `service` failed with `exc`."""
        self._failed(service, exc, 1)

    def failed(self, service: str, exc: BaseException) -> None:
        """Background work failed on `service` (no request refused)."""
        self._failed(service, exc, 0)

    def _failed(self, service: str, exc: BaseException, refused: int) -> None:
        if self._errors.sinks:
            self._errors.emit("-", "failure", None, {"service": service, "refused": bool(refused)})
        tell = self._down.note(service, refused)
        if tell is None:
            return
        if tell.first:
            self._log.error("%s unavailable: %s; refusing requests that need it with 503", service, describe(exc))
        else:
            self._log.error("%s still unavailable (%s): %d requests refused in the last %d s", service,
                            describe(exc), tell.count, round(tell.seconds))

    def reachable(self, service: str = DATABASE) -> None:
        """`service` answered: ends its outage, if any. Cheap enough for every database statement."""
        if self._down and (outage := self._down.end(service)) is not None:
            self._log.warning("%s reachable again after %d refused requests (%d s)", service, outage.total,
                              round(self._clock() - outage.since))


def defect_place(exc: BaseException) -> tuple[str, str, int]:
    """What makes two defects "the same": the exception's type and the line that raised it."""
    tb = exc.__traceback__
    if tb is None:
        return type(exc).__qualname__, "", 0
    while tb.tb_next is not None:
        tb = tb.tb_next
    return type(exc).__qualname__, tb.tb_frame.f_code.co_filename, tb.tb_lineno


class DefectLog:
    """Defects (a request answered 500, a background job's bug), for one server process: the first of a kind is
    logged in full, with its traceback (and, through the log's context, the request id); the same kind again (same
    exception type raised on the same line) is only counted, and told at most once per `interval` as one line
    "… repeated N times in the last M s". A kind quiet for `interval` starts again with a full record. `flush`
    tells counts that are due although the failure stopped (the runtime calls it periodically)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger or logging.getLogger("bankgate")
        self._runs: Runs[tuple[str, str, int]] = Runs(interval, clock, quiet_ends=True)

    def __repr__(self) -> str:
        return f"DefectLog({self._runs!r})"

    def failed(self, exc: BaseException, what: str) -> None:
        """`exc` escaped `what` (e.g. `POST /oauth/token failed`): log it, or count it."""
        place = defect_place(exc)
        tell = self._runs.note(place, 1, what)
        if tell is None:
            return
        if tell.first:
            self._log.error("%s", what, exc_info=exc)
        else:
            self._repeated(place, tell)

    def flush(self) -> None:
        """Tell the counts that are due (see the class's docstring)."""
        for place, tell in self._runs.due():
            self._repeated(place, tell)

    def _repeated(self, place: tuple[str, str, int], tell: Tell) -> None:
        kind, filename, line = place
        self._log.error("%s: %s (%s:%d) repeated %d times in the last %d s", tell.run.label, kind,
                        filename.rpartition("/")[2], line, tell.count, round(tell.seconds))
