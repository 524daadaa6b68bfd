"""Signing keys: generation, encryption at rest, rotation, and the JWKS (RFC 7517) that publishes them.

A rotated-out key keeps being published until every token it signed has expired (`publish_until`), so resource
servers can verify tokens issued just before a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy import select, update

from bankgate.clock import SYSTEM, Clock
from bankgate.config import Algorithm
from bankgate.store import Store, schema
from bankgate.vault import Vault

__all__ = ["ALGORITHMS", "KeyRing", "KeyStore", "SigningKey", "jwk_thumbprint"]

ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _generate(alg: Algorithm) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"signing algorithm {alg!r} is not one of: {', '.join(ALGORITHMS)}")


def _public_jwk(alg: str, key: PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "n", "e", "x", "y")}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url): a stable, collision-free `kid`."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: Algorithm
    public_jwk: dict[str, Any]
    created_at: float
    retired_at: float | None
    publish_until: float | None
    private_key: PrivateKey = field(repr=False, compare=False)

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


def _context(kid: str) -> bytes:
    return b"bankgate signing key " + kid.encode()


class KeyStore:
    """Signing keys in the database, private halves encrypted with the vault."""

    def __init__(self, store: Store, vault: Vault, *, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._now = clock.now
        self._vault = vault

    async def load(self, known: Mapping[str, SigningKey] | None = None) -> list[SigningKey]:
        """Every key still worth publishing, newest first.

        Private keys already in `known` are reused rather than decrypted and parsed again: loading an RSA key
        validates it, which takes milliseconds, and a server refreshes its keys every few seconds.
        """
        now = self._now()
        table = schema.signing_keys
        async with self._store.connect() as conn:
            rows = (
                await conn.execute(
                    select(table)
                    .where(table.c.publish_until.is_(None) | (table.c.publish_until > now))
                    .order_by(table.c.created_at.desc())
                )
            ).mappings()
            return [self._decode(row, known.get(row["kid"]) if known else None) for row in rows]

    def _decode(self, row: Any, known: SigningKey | None = None) -> SigningKey:
        if known is not None:
            private = known.private_key
        else:
            der = self._vault.decrypt(row["private_key"], context=_context(row["kid"]))
            private = serialization.load_der_private_key(der, password=None)
        return SigningKey(
            kid=row["kid"],
            alg=row["alg"],
            public_jwk=json.loads(row["public_jwk"]),
            created_at=row["created_at"],
            retired_at=row["retired_at"],
            publish_until=row["publish_until"],
            private_key=private,  # type: ignore[arg-type]
        )

    async def rotate(self, alg: Algorithm, *, retire_publish_for: float) -> SigningKey:
        """Make a new active key; retire the previous active ones, published `retire_publish_for` more seconds."""
        private = _generate(alg)
        jwk = _public_jwk(alg, private)
        kid = jwk_thumbprint(jwk)
        der = private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        now = self._now()
        table = schema.signing_keys
        async with self._store.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.retired_at.is_(None))
                .values(retired_at=now, publish_until=now + retire_publish_for)
            )
            await conn.execute(
                table.insert().values(
                    kid=kid,
                    alg=alg,
                    public_jwk=json.dumps(jwk),
                    private_key=self._vault.encrypt(der, context=_context(kid)),
                    created_at=now,
                )
            )
        return SigningKey(kid, alg, jwk, now, None, None, private)

    async def ensure_active(self, alg: Algorithm, *, retire_publish_for: float) -> tuple[SigningKey, bool]:
        """The active key if it uses `alg`; else a new one (so a change of algorithm is a rotation)."""
        keys = await self.load()
        for key in keys:
            if key.retired_at is None and key.alg == alg:
                return key, False
        return await self.rotate(alg, retire_publish_for=retire_publish_for), True


class KeyRing:
    """The keys one server process signs with and publishes; refreshed from the store in the background."""

    def __init__(self, keys: list[SigningKey], *, clock: Clock = SYSTEM) -> None:
        self._now = clock.now
        self.replace(keys)

    def replace(self, keys: list[SigningKey]) -> None:
        active = [k for k in keys if k.retired_at is None]
        if not active:
            raise RuntimeError("no active signing key; run `bankgate init` or `bankgate keys rotate`")
        now = self._now()
        self.active: SigningKey = max(active, key=lambda k: k.created_at)
        self.by_kid: dict[str, SigningKey] = {k.kid: k for k in keys if k.published_at(now)}
        self.jwks: dict[str, Any] = {"keys": [k.jwk for k in self.by_kid.values()]}
