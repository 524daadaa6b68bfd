"""Minting access tokens (JWT, RFC 9068 profile) and reading back the ones this server issued."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

import jwt

from bankgate import tracing
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Environment
from bankgate.tokens.jws import CompactSigner
from bankgate.tokens.keys import KeyRing, NoActiveKey, SigningKey

__all__ = ["IssuedToken", "TokenIssuer"]


class _RandomPool:
    """CSPRNG bytes read from the OS in 4 KiB blocks: one `os.urandom` call per ~200 token IDs instead of one each.

    Each call releases the GIL and, with the database's worker threads around, costs a thread hand-off that showed
    as the largest item of the token endpoint's own overhead.
    """

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def take(self, size: int) -> bytes:
        if self._offset + size > len(self._buffer):
            self._buffer, self._offset = os.urandom(4096), 0
        start = self._offset
        self._offset += size
        return self._buffer[start : self._offset]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str = field(repr=False)
    jti: str
    kid: str
    expires_in: int
    scope: str
    created_at: int


class TokenIssuer:
    def __init__(
        self, keys: KeyRing, *, issuer: str, audience: str, environment: Environment, clock: Clock = SYSTEM
    ) -> None:
        self.keys = keys
        self._now = clock.now
        self.issuer = issuer
        self.audience = audience
        self.environment = environment
        self._random = _RandomPool()
        self._signer_key: SigningKey | None = None
        self._signer: CompactSigner | None = None

    def __repr__(self) -> str:
        return f"TokenIssuer(issuer={self.issuer!r}, audience={self.audience!r})"

    def _current_signer(self) -> tuple[SigningKey, CompactSigner]:
        key = self.keys.active
        if key is not self._signer_key or self._signer is None:
            if key.signer is None:
                self._signer, self._signer_key = None, None
                raise NoActiveKey("the active signing key was retired and its successor is not loaded yet")
            self._signer = CompactSigner(key.signer)
            self._signer_key = key
        return key, self._signer

    def mint(self, *, subject: str, ttl: int, claims: dict[str, Any]) -> IssuedToken:
        """Sign `claims` with the registered ones every token carries: iss, sub, aud, exp, iat, nbf, jti and
        the environment (so a sandbox token is never accepted in production)."""
        key, signer = self._current_signer()
        now = int(self._now())
        jti = base64.urlsafe_b64encode(self._random.take(18)).decode()
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "jti": jti,
            **claims,
            "environment": self.environment,
        }
        with tracing.span("bankgate.token.sign") as span:
            if span is not None:
                span.set_attributes({"bankgate.token.kid": key.kid, "bankgate.token.alg": key.alg})
            token = signer.sign(payload)
        return IssuedToken(token, jti, key.kid, ttl, claims.get("scope", ""), now)

    def issue(self, *, client_id: str, scope: tuple[str, ...], ttl: int) -> IssuedToken:
        """An OAuth2 client_credentials token (RFC 9068 profile): the client is its own subject."""
        return self.mint(subject=client_id, ttl=ttl, claims={"client_id": client_id, "scope": " ".join(scope)})

    def read(self, token: str) -> dict[str, Any] | None:
        """Claims of a token this server signed (signature, issuer, audience checked; expiry not), else None."""
        if not isinstance(token, str) or len(token) > 8192:
            return None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.by_kid.get(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            return jwt.decode(
                token,
                key.public_key,
                algorithms=[key.alg],
                audience=self.audience,
                issuer=self.issuer,
                options={"verify_exp": False, "verify_nbf": False, "require": ["exp", "jti", "sub"]},
            )
        except jwt.PyJWTError:
            return None
