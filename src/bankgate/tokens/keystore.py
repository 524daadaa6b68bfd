"""The `database` key store: signing keys in the bankgate database, private halves PKCS#8 encrypted with the vault
(AES-256-GCM, the `kid` as associated data). The one module of the server that holds private signing keys.

Only the active key is decrypted: a rotated-out key is published (its public half) but never signs again, so its
private half has no reason to be in memory.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy import select, update

from bankgate.changes import ChangeFeed
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Algorithm
from bankgate.store import Store, schema
from bankgate.tokens.keys import ALGORITHMS, KEY_CHANGE, KeyRetireError, SigningKey, jwk_thumbprint, public_key_of
from bankgate.vault import Vault

__all__ = ["DatabaseKeyStore", "encryption_context"]

_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _generate(alg: Algorithm) -> _PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"signing algorithm {alg!r} is not one of: {', '.join(ALGORITHMS)}")


def _public_jwk(key: _PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "n", "e", "x", "y")}


def _signature_function(alg: str, key: Any) -> Callable[[bytes], bytes]:
    if alg == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
        return lambda data: key.sign(data, pkcs1, sha256)
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = ec.ECDSA(hashes.SHA256())

        def sign_es256(data: bytes) -> bytes:
            # JWS wants the raw r || s pair (RFC 7518 §3.4), not the DER that OpenSSL produces.
            r, s = decode_dss_signature(key.sign(data, ecdsa))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return sign_es256
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    raise ValueError(f"key type {type(key).__name__} cannot sign {alg}")


class _PrivateKeySigner:
    """A `Signer` over a private key held in this process (decrypted from the database)."""

    __slots__ = ("_sign", "alg", "kid", "public_jwk")

    def __init__(self, alg: Algorithm, kid: str, public_jwk: dict[str, Any], key: _PrivateKey) -> None:
        self.alg: Algorithm = alg
        self.kid = kid
        self.public_jwk = public_jwk
        self._sign = _signature_function(alg, key)

    def __repr__(self) -> str:
        return f"Signer(kid={self.kid!r}, alg={self.alg!r}, <private key hidden>)"

    def sign(self, signing_input: bytes) -> bytes:
        return self._sign(signing_input)


def encryption_context(kid: str) -> bytes:
    """The associated data a private key is encrypted under: a blob moved to another row does not decrypt."""
    return b"bankgate signing key " + kid.encode()


class DatabaseKeyStore:
    """Signing keys in the database, private halves encrypted with the vault (`BANKGATE_KEY_STORE=database`)."""

    def __init__(self, store: Store, vault: Vault, *, changes: ChangeFeed | None = None, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._now = clock.now
        self._vault = vault
        self._changes = changes

    def __repr__(self) -> str:
        return f"DatabaseKeyStore({self._store!r})"

    async def load(self, known: Mapping[str, SigningKey] | None = None) -> builtins.list[SigningKey]:
        """Every key still worth publishing, newest first; only the active one is decrypted.

        Keys already in `known` are reused rather than decrypted and parsed again: a server refreshes its keys
        every few seconds.
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

    async def list(self) -> builtins.list[SigningKey]:
        table = schema.signing_keys
        async with self._store.connect() as conn:
            rows = (await conn.execute(select(table).order_by(table.c.created_at.desc()))).mappings()
            return [self._decode(row, sign=False) for row in rows]

    def _decode(self, row: Any, known: SigningKey | None = None, *, sign: bool = True) -> SigningKey:
        active = row["retired_at"] is None
        if known is not None and known.alg == row["alg"] and (known.signer is not None or not active):
            public_key, signer = known.public_key, known.signer if active else None
        else:
            public_jwk = json.loads(row["public_jwk"])
            public_key, signer = public_key_of(row["alg"], public_jwk), None
            if active and sign:
                der = self._vault.decrypt(row["private_key"], context=encryption_context(row["kid"]))
                # OpenSSL's RSA key check tests both primes (~30 ms a key, paid at every start): this key is one
                # bankgate generated, and the vault's authenticated decryption, bound to its kid, proves it unchanged
                private = serialization.load_der_private_key(der, password=None, unsafe_skip_rsa_key_validation=True)
                signer = _PrivateKeySigner(row["alg"], row["kid"], public_jwk, private)  # type: ignore[arg-type]
        return SigningKey(
            kid=row["kid"],
            alg=row["alg"],
            public_jwk=json.loads(row["public_jwk"]),
            created_at=row["created_at"],
            retired_at=row["retired_at"],
            publish_until=row["publish_until"],
            public_key=public_key,
            signer=signer if sign else None,
        )

    async def rotate(self, alg: Algorithm, *, retire_publish_for: float) -> SigningKey:
        """Make a new active key; retire the previous active ones, published `retire_publish_for` more seconds."""
        private = _generate(alg)
        jwk = _public_jwk(private)
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
                    private_key=self._vault.encrypt(der, context=encryption_context(kid)),
                    created_at=now,
                )
            )
        signer = _PrivateKeySigner(alg, kid, jwk, private)
        return SigningKey(kid, alg, jwk, now, None, None, private.public_key(), signer)

    async def retire(self, kid: str) -> SigningKey:
        """Unpublish `kid` now, recording the change in the same transaction so every process drops it within one
        change-feed sync (this one at once)."""
        now = self._now()
        table = schema.signing_keys
        async with self._store.begin() as conn:
            row = (await conn.execute(select(table).where(table.c.kid == kid))).mappings().first()
            if row is None or (row["publish_until"] is not None and row["publish_until"] <= now):
                shown = kid[:64]
                raise KeyRetireError(
                    f"no published signing key has kid {shown!r}"
                    + (" (it is already unpublished)" if row is not None else "")
                    + "; `bankgate keys list` shows the published ones",
                    "unknown_key" if row is None else "already_unpublished",
                )
            if row["retired_at"] is None:
                raise KeyRetireError(
                    f"{kid} is the active signing key, the one that signs every new token: rotate first "
                    f"(`bankgate keys rotate`), or rotate and retire in one step (`bankgate keys retire {kid} "
                    "--rotate`)",
                    "active_key",
                )
            await conn.execute(update(table).where(table.c.kid == kid).values(publish_until=now))
            if self._changes is not None:
                await self._changes.record(conn, (KEY_CHANGE, kid))
        if self._changes is not None:
            self._changes.announce((KEY_CHANGE, kid))
        return self._decode({**row, "publish_until": now}, sign=False)
