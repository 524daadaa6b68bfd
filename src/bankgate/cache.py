"""A small time-bounded cache for the hot paths: what it holds may be up to `ttl` seconds old, by design."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from bankgate.clock import SYSTEM, Clock

__all__ = ["TtlCache"]

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries expire `ttl` seconds after they were stored; past `limit` entries the cache starts afresh
    (a flood of distinct keys costs memory only up to the limit)."""

    __slots__ = ("_entries", "_limit", "_loading", "_monotonic", "hits", "misses", "ttl")

    def __init__(self, ttl: float, *, limit: int = 50_000, clock: Clock = SYSTEM) -> None:
        self.ttl = ttl
        self._monotonic = clock.monotonic
        self._limit = limit
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}
        #: Lookups answered from memory and lookups that were not, since the cache was made (for metrics).
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"TtlCache(ttl={self.ttl}, size={len(self._entries)})"

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """(True, value) when a fresh entry exists, else (False, None)."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > self._monotonic():
            self.hits += 1
            return True, hit[1]
        self.misses += 1
        return False, None

    def expires_at(self, key: K) -> float | None:
        """When the entry for `key` expires (on its clock's `monotonic()`); None when there is none."""
        hit = self._entries.get(key)
        return hit[0] if hit is not None else None

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The fresh entry, else `load()`'s result, stored. One load per key at a time: when an entry expires
        under load, the requests that find it gone wait for the same load instead of each reading the database."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > self._monotonic():
            self.hits += 1
            return hit[1]
        self.misses += 1
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(load())
            self._loading[key] = pending
            pending.add_done_callback(lambda done: self._settle(key, done))
        # Shielded: a caller that goes away (a client disconnecting) does not cancel the others' load.
        return await asyncio.shield(pending)

    def _settle(self, key: K, done: asyncio.Future[V]) -> None:
        if self._loading.get(key) is not done:
            return  # forgotten while loading: what it read may already be out of date
        del self._loading[key]
        if not done.cancelled() and done.exception() is None:
            self.store(key, done.result())

    def store(self, key: K, value: V) -> V:
        if self.ttl > 0:
            if len(self._entries) >= self._limit:
                self._entries.clear()
            self._entries[key] = (self._monotonic() + self.ttl, value)
        return value

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
        self._loading.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()
