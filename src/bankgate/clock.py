"""The server's clocks: wall time for what is stored or signed, monotonic time for intervals.

The server reads time through one `Clock` held by `Services` (and so `Runtime`), as the client SDK does
(`bankgate.client` takes a clock): a test then lives a token's, a lease's or a block's whole life with
`ManualClock.advance` instead of sleeping. The default, `SYSTEM`, hands out `time.time` and `time.monotonic`
themselves, so the hot paths pay one call, as before.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["SYSTEM", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (`iat`, `exp`, stored timestamps, certificate validity)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (cache TTLs, staleness, intervals)."""
        ...


class SystemClock:
    """The machine's clocks: the functions of `time` themselves, no wrapper in between."""

    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM: Clock = SystemClock()


class ManualClock:
    """A clock that moves only when told to (`advance`): for tests. Starts at the machine's wall time, so what
    it stamps sits beside what other processes stamp."""

    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._now = time.time() if start is None else start
        self._monotonic = 1_000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds` (never back: a monotonic clock cannot)."""
        if seconds < 0:
            raise ValueError(f"a clock moves forward only; got {seconds} s")
        with self._lock:
            self._now += seconds
            self._monotonic += seconds

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:.3f})"
