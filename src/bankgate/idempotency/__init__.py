"""The Idempotency-Key layer (draft-ietf-httpapi-idempotency-key-header-06): ASGI middleware and its stores.

    store = open_store("database", services.store)         # or "redis://...", or "memory"
    app = GuardMiddleware(IdempotencyMiddleware(api, store=store, required=True), guard=guard)
    ...
    await store.purge()                                    # now and then: drops ended records (SQL, memory)
    await store.close()                                    # at shutdown

The guard goes in front, so that keys are scoped by `scope["state"]["principal"].key`.

A handler whose effects are writes to the same database can commit them with its key and its response in one
transaction (`atomic=` routes, `atomic_key(scope).commit(response, Write(statement, params))`): see
`IdempotencyMiddleware`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bankgate.idempotency._memory import MemoryIdempotencyStore
from bankgate.idempotency._middleware import OUTCOMES, AtomicKey, IdempotencyMiddleware, atomic_key
from bankgate.idempotency._redis import RedisIdempotencyStore
from bankgate.idempotency._sealed import SealedStore
from bankgate.idempotency._sql import SqlIdempotencyStore
from bankgate.idempotency._types import (
    AtomicStore,
    Claim,
    IdempotencyStore,
    Ready,
    StoredResponse,
    Write,
    fingerprint,
)

if TYPE_CHECKING:
    from bankgate.store import Store

__all__ = [
    "OUTCOMES",
    "AtomicKey",
    "AtomicStore",
    "Claim",
    "IdempotencyMiddleware",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "Ready",
    "RedisIdempotencyStore",
    "SealedStore",
    "SqlIdempotencyStore",
    "StoredResponse",
    "Write",
    "atomic_key",
    "fingerprint",
    "open_store",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(spec: str, store: Store) -> IdempotencyStore:
    """The store a setting names: `database` (the bankgate database of `store`), a `redis://` / `rediss://` /
    `unix://` URL (shared by every process using that Redis), or `memory` (one process only)."""
    if spec == "database":
        return SqlIdempotencyStore(store)
    if spec == "memory":
        return MemoryIdempotencyStore()
    if spec.startswith(_REDIS_SCHEMES):
        return RedisIdempotencyStore(spec)
    shown = spec.split("@")[-1] if "://" in spec else spec  # never echo a password
    raise ValueError(f"unknown idempotency store {shown!r}: use 'database', 'memory' or a redis:// / rediss:// URL")
