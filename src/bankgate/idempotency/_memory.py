"""Idempotency-Key records in process memory: for tests, examples and single-process servers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bankgate.idempotency._types import COMPLETED, STARTED, Claim, Ready, StoredResponse, new_owner

__all__ = ["MemoryIdempotencyStore"]


@dataclass(frozen=True, slots=True)
class _Record:
    fingerprint: str
    state: str
    owner: str
    lease_until: float
    expires_at: float
    created_at: float
    response: StoredResponse | None = None


class MemoryIdempotencyStore:
    """One dict, one process. Each method runs without awaiting, so it is atomic on its event loop.

    Nothing is shared between processes: behind several workers use `SqlIdempotencyStore` or
    `RedisIdempotencyStore`. Call `purge` now and then, or records pile up until they are claimed again.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], _Record] = {}

    def __repr__(self) -> str:
        return f"MemoryIdempotencyStore(records={len(self._records)})"

    @staticmethod
    def _live(record: _Record, now: float, oldest: float) -> bool:
        return now < record.expires_at and not (record.state == COMPLETED and record.created_at <= oldest)

    async def claim(self, principal: str, key: str, fingerprint: str, *, lease: float, retention: float) -> Claim:
        now = time.time()
        record = self._records.get((principal, key))
        if record is not None and self._live(record, now, now - retention):
            if record.fingerprint != fingerprint:
                return Claim("mismatch")
            if record.state == STARTED:
                return Claim("in_progress", retry_after=max(record.lease_until - now, 0.0))
            return Claim("completed", response=record.response)
        owner = new_owner()
        self._records[(principal, key)] = _Record(fingerprint, STARTED, owner, now + lease, now + lease, now)
        return Claim("claimed", owner=owner)

    def lookup(self, principal: str, key: str, fingerprint: str, *, retention: float) -> Ready[Claim | None]:
        now = time.time()
        record = self._records.get((principal, key))
        if record is None or record.state != COMPLETED or not self._live(record, now, now - retention):
            return Ready(None)
        if record.fingerprint != fingerprint:
            return Ready(Claim("mismatch"))
        return Ready(Claim("completed", response=record.response))

    def _running(self, principal: str, key: str, owner: str) -> _Record | None:
        record = self._records.get((principal, key))
        if record is None or record.state != STARTED or record.owner != owner:
            return None
        return record

    async def extend(self, principal: str, key: str, owner: str, *, lease: float) -> bool:
        record = self._running(principal, key, owner)
        if record is None:
            return False
        until = time.time() + lease
        self._records[(principal, key)] = _Record(
            record.fingerprint, STARTED, owner, until, until, record.created_at
        )
        return True

    async def complete(
        self, principal: str, key: str, owner: str, response: StoredResponse, *, retention: float
    ) -> bool:
        record = self._running(principal, key, owner)
        if record is None:
            return False
        now = time.time()
        self._records[(principal, key)] = _Record(
            record.fingerprint, COMPLETED, owner, now, now + retention, record.created_at, response
        )
        return True

    async def release(self, principal: str, key: str, owner: str) -> None:
        if self._running(principal, key, owner) is not None:
            del self._records[(principal, key)]

    async def purge(self) -> int:
        now = time.time()
        ended = [name for name, record in self._records.items() if record.expires_at <= now]
        for name in ended:
            del self._records[name]
        return len(ended)

    async def close(self) -> None:
        self._records.clear()
