"""The values and the store contract of the Idempotency-Key layer (draft-ietf-httpapi-idempotency-key-header-06).

A key record moves through named states, as in Brandur Leach's design: absent -> `started` (claimed; a lease runs
and is renewed while the request runs) -> `completed` (the response is kept for the retention period). A `started`
record whose lease has passed, or a `completed` one past its retention, counts as absent: a crash can never wedge
a key, and an old key can be used again.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
from collections.abc import Awaitable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

__all__ = [
    "COMPLETED",
    "MAX_KEY_LENGTH",
    "STARTED",
    "AtomicStore",
    "Claim",
    "IdempotencyStore",
    "Ready",
    "StoredResponse",
    "Write",
    "fingerprint",
]

_T = TypeVar("_T")

STARTED = "started"
COMPLETED = "completed"
MAX_KEY_LENGTH = 255

_FINGERPRINT_VERSION = b"bankgate-idempotency-fingerprint-v1\x00"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response kept for replay: status, the headers worth replaying (no `date`, `server`, hop-by-hop or
    `content-length`), and the whole body as bytes (JSON, binary or streamed alike)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """What `IdempotencyStore.claim` found, in the order the draft asks the questions.

    * `claimed`: the key was free (absent, lease passed, or retention ended); the caller runs the request and
      must `complete` or `release` with `owner`.
    * `mismatch`: the key is live but was used for a different request (fingerprint differs) - section 2.7, 422.
    * `in_progress`: the first request with this key is still running; `retry_after` seconds until its lease ends.
    * `completed`: the first request finished; `response` is what to replay.
    """

    outcome: Literal["claimed", "in_progress", "mismatch", "completed"]
    owner: str | None = None
    response: StoredResponse | None = None
    retry_after: float | None = None


class Ready(Generic[_T]):
    """An answer a store had at once, without waiting: awaitable like any other, and `value` to take it without an
    await (the middleware does, and skips the store-call deadline that a call that cannot wait does not need)."""

    __slots__ = ("value",)

    def __init__(self, value: _T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, _T]:
        return self.value
        yield  # a generator that never suspends


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where key records live. Every method is atomic on its own, across every process sharing the store.

    `owner` is the random token handed out by `claim`: `extend`, `complete` and `release` do nothing (and say
    False) unless the record is still `started` under that owner, so a request whose lease was taken over can
    never overwrite the newer attempt.
    """

    async def claim(self, principal: str, key: str, fingerprint: str, *, lease: float, retention: float) -> Claim:
        """Take the key for `principal`, or say why not. A `completed` record created more than `retention`
        seconds ago counts as absent even if its own retention was longer."""
        ...

    def lookup(self, principal: str, key: str, fingerprint: str, *, retention: float) -> Awaitable[Claim | None]:
        """What a retry of a finished request gets, found by one read that writes and locks nothing: `completed`
        (with the response) or `mismatch` when the key's record is `completed` and live, else None (absent,
        `started`, ended): the caller then asks `claim` (or `AtomicStore.commit`), which decides. A record that
        is completed stays completed until it ends, so a read can answer for it without the claim's lock. A store
        that has the answer at once hands it back as `Ready`."""
        ...

    async def extend(self, principal: str, key: str, owner: str, *, lease: float) -> bool:
        """Renew the lease of a running claim to `lease` seconds from now; False if it is no longer ours."""
        ...

    async def complete(
        self, principal: str, key: str, owner: str, response: StoredResponse, *, retention: float
    ) -> bool:
        """Keep `response` for `retention` seconds; False if the claim is no longer ours."""
        ...

    async def release(self, principal: str, key: str, owner: str) -> None:
        """Forget a running claim (the request failed), so that a retry runs it again."""
        ...

    async def purge(self) -> int:
        """Delete records whose retention (or, for `started` ones, lease) has ended; return how many."""
        ...

    async def close(self) -> None:
        """Release what the store opened itself (connections it did not receive from the caller)."""
        ...


@dataclass(frozen=True, slots=True)
class Write:
    """A write a handler hands to `AtomicStore.commit`, to be made in the same transaction as its key's record:
    a SQLAlchemy Core statement (built once, at import) and its named parameters."""

    statement: Any
    params: Mapping[str, Any]

    def __repr__(self) -> str:  # the parameters may be anything a handler writes: not shown
        return f"Write({type(self.statement).__name__} on {getattr(self.statement, 'table', '?')})"


@runtime_checkable
class AtomicStore(Protocol):
    """A store that keeps key records in the database the handler writes to, so that a key, the handler's writes
    and the response to replay commit in one transaction (see `AtomicKey`): no lease, no window in which the
    writes exist but the key's record does not."""

    async def commit(
        self,
        principal: str,
        key: str,
        fingerprint: str,
        response: StoredResponse,
        writes: Sequence[Write],
        *,
        retention: float,
    ) -> Claim:
        """If the key is free, make `writes` and keep `response` for `retention` seconds, all or nothing, and
        answer `claimed`; else make nothing and answer what `claim` would (`completed`, `mismatch`,
        `in_progress`). An error of one of the writes (e.g. a unique constraint) is raised as the database
        raised it, with nothing written."""
        ...


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """The request fingerprint of draft-ietf-httpapi-idempotency-key-header-06 section 2.4: SHA-256 (hex) over the
    method, the path, the query string and the SHA-256 of the body.

    Every field is length-prefixed, so no two different requests share an encoding (path "a" with body "bc" and
    path "ab" with body "c" differ). The method is taken as sent: ASGI servers pass it upper-case.
    """
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    for part in (method.encode("utf-8", "surrogateescape"), path.encode("utf-8", "surrogateescape"), query):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    digest.update(hashlib.sha256(body).digest())
    return digest.hexdigest()


def bounded(value: str, limit: int) -> str:
    """`value` if it fits a column of `limit` characters, else an unambiguous digest of it (never truncated)."""
    if len(value) <= limit:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


class _Owners:
    """Claim owners: a random prefix per process (new in a forked child) and a counter, 32 hex characters.

    An owner only has to differ from every other claim's, in every process, for a record's lifetime; it is never
    shown to a client, so it needs no secrecy, and a counter costs less than reading the system's random source
    on every request."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


#: A fresh owner for a claim.
new_owner = _Owners()
