"""What counts as an outage of a backing service (the database, Redis), and its log: one line when it starts,
a count at most once a minute while it lasts, one line when the service answers again. A down database refuses
thousands of requests a minute; a traceback for each would bury the one line an operator needs.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

__all__ = ["OutageLog", "StoreUnavailable", "describe", "unavailable_service"]

DATABASE = "database"
REDIS = "Redis"


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
class _Outage:
    since: float
    reported_at: float
    refused: int = 0
    refused_since_report: int = 0


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
        self._interval = interval
        self._clock = clock
        self._down: dict[str, _Outage] = {}

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
        now = self._clock()
        outage = self._down.get(service)
        if outage is None:
            self._down[service] = _Outage(now, now, refused, refused)
            self._log.error("%s unavailable: %s; refusing requests that need it with 503", service, describe(exc))
            return
        outage.refused += refused
        outage.refused_since_report += refused
        if now - outage.reported_at >= self._interval:
            self._log.error("%s still unavailable (%s): %d requests refused in the last %d s", service,
                            describe(exc), outage.refused_since_report, round(now - outage.reported_at))
            outage.reported_at = now
            outage.refused_since_report = 0

    def reachable(self, service: str = DATABASE) -> None:
        """`service` answered: ends its outage, if any. Cheap enough for every database statement."""
        if self._down and service in self._down:
            outage = self._down.pop(service)
            self._log.warning("%s reachable again after %d refused requests (%d s)", service, outage.refused,
                              round(self._clock() - outage.since))
