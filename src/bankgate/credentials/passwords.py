"""argon2id (RFC 9106) for the passwords and passphrases of users and administrators: the one place that hashes
and verifies them, in a worker thread off the event loop, each one a span when tracing is on."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bankgate import tracing

__all__ = ["hash_secret", "verify_secret"]

_DUMMY_HASHES: dict[tuple[object, ...], str] = {}  # hasher parameters -> a hash of a random secret


def _parameters(hasher: PasswordHasher) -> tuple[object, ...]:
    return (hasher.type, hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.hash_len, hasher.salt_len)


async def hash_secret(hasher: PasswordHasher, secret: str) -> str:
    """The argon2id hash of `secret` with `hasher`'s parameters."""
    with tracing.span("bankgate.argon2.hash"):
        return await asyncio.to_thread(hasher.hash, secret)


async def _dummy_hash(hasher: PasswordHasher) -> str:
    key = _parameters(hasher)
    dummy = _DUMMY_HASHES.get(key)
    if dummy is None:
        dummy = _DUMMY_HASHES.setdefault(key, await hash_secret(hasher, secrets.token_urlsafe(32)))
    return dummy


async def verify_secret(hasher: PasswordHasher, stored: str | None, candidate: str) -> bool:
    """Exactly one argon2 verification of `candidate`, against a dummy hash of the same parameters when there is no
    hash to check (unknown account, passphrase used, password not set yet): the caller cannot be told apart by the
    time it takes. The dummy is made by the first verification of any kind, so it costs all alike. Hashes made
    with other parameters still verify."""
    dummy = await _dummy_hash(hasher)
    with tracing.span("bankgate.argon2.verify"):
        try:
            matched: bool = await asyncio.to_thread(hasher.verify, stored if stored is not None else dummy, candidate)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            matched = False
    return matched and stored is not None
