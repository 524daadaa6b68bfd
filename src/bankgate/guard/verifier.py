"""Checking a Bearer access token on the resource side (RFC 6750, RFC 9068, RFC 8705).

Every check is here, once: the algorithm allow list (never `none`, never HMAC, and the key's own algorithm only,
so a public key cannot be used as an HMAC secret), the `kid`, signature, `exp`/`nbf` with a small leeway, `iss`,
`aud`, the environment, the revocation deny list, and the certificate binding (`cnf.x5t#S256` must match the
certificate presented on this connection).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt

from bankgate.pki.thumbprints import x5t_s256
from bankgate.tokens.keys import SigningKey

__all__ = ["ALLOWED_ALGORITHMS", "InvalidToken", "Principal", "TokenVerifier"]

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})


class InvalidToken(Exception):
    """The token is not acceptable; the message says why, in words safe to send back (RFC 6750 §3.1)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    kind: Literal["client", "user"]
    environment: str
    scopes: tuple[str, ...]
    expires_at: int
    name: str | None = None
    thumbprint: str | None = None
    auth_method: str = "bearer"
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """`client:<id>` or `user:<id>`: what per-principal state (idempotency keys, payments) is scoped by."""
        return f"{self.kind}:{self.subject}"

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "kind": self.kind,
            "name": self.name,
            "environment": self.environment,
            "scopes": list(self.scopes),
            "thumbprint": self.thumbprint,
            "certificate_bound": "cnf" in self.claims,
            "expires_at": self.expires_at,
            "auth_method": self.auth_method,
        }


class TokenVerifier:
    def __init__(
        self,
        keys: Callable[[str], SigningKey | None],
        *,
        issuer: str,
        audience: str,
        environment: str,
        is_revoked: Callable[[str], Awaitable[bool]],
        leeway: int = 30,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._environment = environment
        self._is_revoked = is_revoked
        self._leeway = leeway

    def __repr__(self) -> str:
        return f"TokenVerifier(issuer={self._issuer!r}, audience={self._audience!r})"

    async def verify(self, token: str, presented_certificate: bytes | None) -> Principal:
        if len(token) > 8192:
            raise InvalidToken("the token is too long to be one of ours")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise InvalidToken(f"the token's algorithm {str(alg)[:16]!r} is not accepted")
        key = self._keys(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("the token was not signed by a key of this issuer")
        if key.alg != alg:
            raise InvalidToken("the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=[key.alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired; get a new one") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is meant for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token comes from another issuer") from None
        except jwt.PyJWTError:
            raise InvalidToken("the token's signature or claims are invalid") from None
        if claims.get("environment") != self._environment:
            raise InvalidToken(f"the token is not for the {self._environment} environment")
        bound = claims.get("cnf", {}).get("x5t#S256") if isinstance(claims.get("cnf"), dict) else None
        if bound is not None:
            if presented_certificate is None:
                raise InvalidToken("the token is bound to a client certificate; present it (mutual TLS)")
            if not hmac.compare_digest(str(bound), x5t_s256(presented_certificate)):
                raise InvalidToken("the token is bound to another client certificate")
        if await self._is_revoked(str(claims["jti"])):
            raise InvalidToken("the token has been revoked")
        is_user = "oid" in claims
        scope = claims.get("scope", "")
        return Principal(
            subject=str(claims["sub"]),
            kind="user" if is_user else "client",
            environment=self._environment,
            scopes=tuple(scope.split()) if isinstance(scope, str) else (),
            expires_at=int(claims["exp"]),
            name=claims.get("name"),
            thumbprint=claims.get("thumbprint"),
            claims=claims,
        )
