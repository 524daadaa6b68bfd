"""A small time-bounded cache for the hot paths: what it holds may be up to `ttl` seconds old, by design."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

__all__ = ["TtlCache"]

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries expire `ttl` seconds after they were stored; past `limit` entries the cache starts afresh
    (a flood of distinct keys costs memory only up to the limit)."""

    __slots__ = ("_entries", "_limit", "ttl")

    def __init__(self, ttl: float, *, limit: int = 50_000) -> None:
        self.ttl = ttl
        self._limit = limit
        self._entries: dict[K, tuple[float, V]] = {}

    def __repr__(self) -> str:
        return f"TtlCache(ttl={self.ttl}, size={len(self._entries)})"

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """(True, value) when a fresh entry exists, else (False, None)."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def store(self, key: K, value: V) -> V:
        if self.ttl > 0:
            if len(self._entries) >= self._limit:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl, value)
        return value

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
