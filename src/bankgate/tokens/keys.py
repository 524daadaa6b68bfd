"""Signing keys: the seam a key store and its signers plug into, the key ring a server signs with, and the JWKS
(RFC 7517) that publishes the public halves.

A key store (`KeyStore`, opened by `bankgate.tokens.open_key_store`) holds the keys; only its implementation ever
sees a private key. Everything else signs through a `Signer` (bytes in, JWS signature out) and verifies with the
public key a `SigningKey` carries, so a KMS, Vault or HSM key store is one new module, not a change of the issuer,
the guard or the JWKS.

A rotated-out key keeps being published until every token it signed has expired (`publish_until`), so resource
servers can verify tokens issued just before a rotation. A key retired at once (`retire`, for a key that may be
compromised) is unpublished and refused at once, and never signs again.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from bankgate.clock import SYSTEM, Clock
from bankgate.config import Algorithm
from bankgate.outage import StoreUnavailable

__all__ = [
    "ALGORITHMS",
    "KEY_CHANGE",
    "KeyRetireError",
    "KeyRing",
    "KeyStore",
    "NoActiveKey",
    "Signer",
    "SigningKey",
    "jwk_thumbprint",
    "public_key_of",
]

ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")
#: The change-feed kind a key store records when it retires a key at once (key: the `kid`).
KEY_CHANGE = "key"


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url): a stable, collision-free `kid`."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def public_key_of(alg: str, public_jwk: Mapping[str, Any]) -> Any:
    """The `cryptography` public key of a published JWK: what this server verifies its own tokens with, read the
    way a resource server reads the JWKS."""
    return jwt.PyJWK({**public_jwk, "alg": alg}).key


class Signer(Protocol):
    """Signs under one key: `sign(signing_input)` returns the JWS signature (RFC 7515 §5.1, RFC 7518 §3: the raw
    `r || s` pair for ES256) of the bytes `base64url(header) . base64url(payload)`.

    Bytes in, bytes out because that is what a KMS or HSM signs, and because the compact serialisation, its header
    encoded once per key, then stays in `tokens/jws.py` for every signer: the token endpoint's hot path is the
    signature plus a few microseconds, whatever holds the key.
    """

    @property
    def alg(self) -> Algorithm: ...

    @property
    def kid(self) -> str: ...

    @property
    def public_jwk(self) -> dict[str, Any]: ...

    def sign(self, signing_input: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key as the rest of the server sees it: public half, life cycle, and a signer for the active key only."""

    kid: str
    alg: Algorithm
    public_jwk: dict[str, Any]
    created_at: float
    retired_at: float | None
    publish_until: float | None
    #: The `cryptography` public key, parsed once per key: the guard and introspection verify with it.
    public_key: Any = field(repr=False, compare=False)
    #: Only the active key has one: a retired key never signs again.
    signer: Signer | None = field(default=None, repr=False, compare=False)

    def published_at(self, now: float) -> bool:
        return self.publish_until is None or now < self.publish_until

    @property
    def jwk(self) -> dict[str, Any]:
        return {**self.public_jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def as_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "status": "active" if self.retired_at is None else "retired",
            "created_at": int(self.created_at),
            "retired_at": int(self.retired_at) if self.retired_at else None,
            "published_until": int(self.publish_until) if self.publish_until else None,
        }


class KeyRetireError(ValueError):
    """A key cannot be retired as asked; the message says why and what to do, `reason` names it for the audit
    trail: `unknown_key`, `already_unpublished` or `active_key`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoActiveKey(StoreUnavailable):
    """Nothing may sign right now: the active key was retired and the new one is not loaded yet. A passing state
    (the ring reloads within milliseconds), so the boundary answers it like an outage: 503 with `Retry-After`."""

    def __init__(self, description: str) -> None:
        super().__init__("signing keys", description)


class KeyStore(Protocol):
    """Where signing keys live. `database` (`bankgate.tokens.keystore.DatabaseKeyStore`) is the only one today."""

    async def load(self, known: Mapping[str, SigningKey] | None = None) -> builtins.list[SigningKey]:
        """Every key still published, newest first; the active one with its signer. Keys in `known` may be
        reused rather than read again (a server reloads its keys every few seconds)."""
        ...

    async def list(self) -> builtins.list[SigningKey]:
        """Every key the store holds, unpublished ones included, newest first, without signers."""
        ...

    async def rotate(self, alg: Algorithm, *, retire_publish_for: float) -> SigningKey:
        """Make a new active key; retire the previous active one, published `retire_publish_for` more seconds."""
        ...

    async def retire(self, kid: str) -> SigningKey:
        """Unpublish `kid` at once; `KeyRetireError` when it is unknown, already unpublished or the active key."""
        ...


class KeyRing:
    """The keys one server process signs with and publishes; refreshed from the store in the background."""

    def __init__(self, keys: list[SigningKey], *, clock: Clock = SYSTEM) -> None:
        self._now = clock.now
        self._withdrawn: set[str] = set()
        self.replace(keys)

    def __repr__(self) -> str:
        return f"KeyRing(active={self.active.kid!r}, published={len(self.by_kid)})"

    def replace(self, keys: list[SigningKey]) -> None:
        keys = [k for k in keys if k.kid not in self._withdrawn]  # a reload that raced a retirement
        active = [k for k in keys if k.retired_at is None]
        if not active:
            raise RuntimeError("no active signing key; run `bankgate init` or `bankgate keys rotate`")
        now = self._now()
        self.active: SigningKey = max(active, key=lambda k: k.created_at)
        self.by_kid: dict[str, SigningKey] = {k.kid: k for k in keys if k.published_at(now)}
        self.jwks: dict[str, Any] = {"keys": [k.jwk for k in self.by_kid.values()]}

    def withdraw(self, kid: str) -> bool:
        """Stop publishing, trusting and signing with `kid` now (it was retired, maybe compromised); True when it
        was the active key. Then nothing signs until `replace` brings the new active key: refusing to issue for
        a moment beats issuing under a compromised key."""
        self._withdrawn.add(kid)
        if self.by_kid.pop(kid, None) is not None:
            self.jwks = {"keys": [k.jwk for k in self.by_kid.values()]}
        if self.active.kid != kid:
            return False
        if self.active.signer is not None:
            self.active = dataclasses.replace(self.active, signer=None)
        return True
