"""Checking a Bearer access token on the resource side (RFC 6750, RFC 9068, RFC 8705).

Every check is here, once: `typ` (RFC 9068 §4), the algorithm allow list (never `none`, never HMAC, and the key's own
algorithm only, so a public key cannot be used as an HMAC secret), the `kid`, signature, `exp`/`nbf` with a small
leeway, `iss`, `aud`, the environment, the revocation deny list (and, on the issuer's own guard, revoked clients,
users and certificates), and the certificate binding (`cnf.x5t#S256` must match the certificate presented on this
connection).

A verified token is remembered (bounded, first in first out) until it expires, so a client that reuses its token
for its whole life, as it should, pays one signature check, not one per call. What can change during a token's
life is checked again on every call: expiry, revocation and the certificate binding.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import jwt

from bankgate.clock import SYSTEM, Clock
from bankgate.guard.denylist import RevocationUnavailable
from bankgate.guard.keys import KeySource
from bankgate.pki.thumbprints import x5t_s256

__all__ = ["ALLOWED_ALGORITHMS", "InvalidToken", "Principal", "Revocations", "TokenVerifier", "VerifierUnavailable"]

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
MAX_TOKEN_LENGTH = 8192
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]


class InvalidToken(Exception):
    """The token is not acceptable; the message says why, in words safe to send back (RFC 6750 §3.1)."""


class VerifierUnavailable(Exception):
    """A check cannot be made right now (e.g. the revocation list cannot be loaded): refuse with 503, not 401."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request speaks for: a client (API key pair) or an M2M user, with its applications (scopes)."""

    subject: str
    kind: Literal["client", "user"]
    environment: str
    scopes: tuple[str, ...]
    expires_at: int  # the token's `exp`; 0 for Basic authentication, which has no token
    name: str | None = None
    thumbprint: str | None = None  # the seed's SHA-1 certificate thumbprint, for certificate-bound users
    auth_method: Literal["bearer", "basic"] = "bearer"
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """`client:<id>` or `user:<id>`: what per-principal state (idempotency keys, payments) is scoped by."""
        return f"{self.kind}:{self.subject}"

    @property
    def certificate_bound(self) -> bool:
        cnf = self.claims.get("cnf")
        return isinstance(cnf, Mapping) and "x5t#S256" in cnf

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "kind": self.kind,
            "name": self.name,
            "environment": self.environment,
            "scopes": list(self.scopes),
            "thumbprint": self.thumbprint,
            "certificate_bound": self.certificate_bound,
            "expires_at": self.expires_at,
            "auth_method": self.auth_method,
        }


#: (jti, subject key, certificate key or None, iat) -> revoked? Keys as `bankgate.tokens.revocation.subject_keys`:
#: `client:<sub>` / `user:<sub>`, and `cert:<cnf.x5t#S256>` for a certificate-bound token.
TokenRevoked = Callable[[str, str, str | None, int], bool]


class Revocations(Protocol):
    """A deny list that may need I/O before it can answer (`RemoteRevocations`: the issuer's revocation feed)."""

    async def ready(self) -> None:
        """Make the list fresh enough to answer; cheap when it already is."""

    def token_denied(self, jti: str, subject: str, certificate: str | None, issued_at: int) -> bool:
        """As `DenyList.token_denied`: raises RevocationUnavailable when the list is too old to trust."""


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    jti: str
    expires_at: int
    bound_to: str | None  # cnf.x5t#S256
    subject_key: str  # "client:<sub>" or "user:<sub>"
    certificate_key: str | None  # "cert:<x5t#S256>" for a bound token
    issued_at: int


class TokenVerifier:
    """`verify(token, certificate)` -> Principal, or InvalidToken saying why.

    `keys` finds a `kid`'s public key (locally or from a JWKS URL); `is_revoked(jti)` answers from memory and may
    raise VerifierUnavailable when it cannot tell (fail closed); None means no deny list is checked. The issuer's own
    guard passes `token_revoked` instead, which also refuses tokens of a revoked client, user or certificate; a
    guard apart from the issuer passes `revocations`, the same deny list fed from the issuer's revocation feed.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        environment: str,
        is_revoked: Callable[[str], bool] | None,
        token_revoked: TokenRevoked | None = None,
        revocations: Revocations | None = None,
        leeway: int = 30,
        cache_size: int = 10000,
        clock: Clock = SYSTEM,
    ) -> None:
        self._keys = keys
        self._now = clock.now
        self._issuer = issuer
        self._audience = audience
        self._environment = environment
        self._is_revoked = is_revoked
        self._token_revoked = token_revoked
        #: The deny list fed from the issuer (`Guard.remote(..., revocations=True)`), if any.
        self.revocations = revocations
        self._leeway = leeway
        self._cache_size = cache_size
        self._cache: dict[str, _Verified] = {}
        #: Tokens found verified already and tokens verified anew, since the verifier was made (for metrics).
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"TokenVerifier(issuer={self._issuer!r}, audience={self._audience!r}, cached={len(self._cache)})"

    def remembers(self, token: str) -> bool:
        """True when `token` was verified before and is still remembered (it may have expired since)."""
        return token in self._cache

    async def verify(
        self, token: str, presented_certificate: bytes | Callable[[], bytes | None] | None
    ) -> Principal:
        """The token's principal, or `InvalidToken`. `presented_certificate` is the DER of the certificate on this
        connection, or a function returning it, called only for a certificate-bound token."""
        verified = self._cache.get(token)
        if verified is not None:
            self.hits += 1
        else:
            self.misses += 1
            verified = await self._verify_signed(token)
            if self._cache_size:
                if len(self._cache) >= self._cache_size:
                    del self._cache[next(iter(self._cache))]
                self._cache[token] = verified
        if self._now() > verified.expires_at + self._leeway:
            self._cache.pop(token, None)
            raise InvalidToken("the token has expired; get a new one")
        if verified.bound_to is not None:
            if callable(presented_certificate):
                presented_certificate = presented_certificate()
            if presented_certificate is None:
                raise InvalidToken("the token is bound to a client certificate; present it (mutual TLS)")
            if not hmac.compare_digest(verified.bound_to, x5t_s256(presented_certificate)):
                raise InvalidToken("the token is bound to another client certificate")
        if self._is_revoked is not None and self._is_revoked(verified.jti):
            raise InvalidToken("the token has been revoked")
        if self._token_revoked is not None and self._token_revoked(
            verified.jti, verified.subject_key, verified.certificate_key, verified.issued_at
        ):
            raise InvalidToken("the token has been revoked")
        if self.revocations is not None:
            await self.revocations.ready()
            try:
                revoked = self.revocations.token_denied(
                    verified.jti, verified.subject_key, verified.certificate_key, verified.issued_at
                )
            except RevocationUnavailable as exc:
                raise VerifierUnavailable(str(exc)) from None
            if revoked:
                raise InvalidToken("the token has been revoked")
        return verified.principal

    def forget(self) -> None:
        """Drop every remembered token (e.g. after a key was withdrawn)."""
        self._cache.clear()

    async def _verify_signed(self, token: str) -> _Verified:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("the token is too long to be one of ours")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the token is not a JWT") from None
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:  # a list or object is unhashable
            raise InvalidToken(f"the token's algorithm {str(alg)[:16]!r} is not accepted")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise InvalidToken("the token is not an access token (typ at+jwt)")
        key = await self._keys.get(kid) if isinstance(kid, str) and len(kid) <= 128 else None
        if key is None:
            raise InvalidToken("the token was not signed by a key of this issuer")
        if key.alg != alg:
            raise InvalidToken("the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS},
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
        cnf = claims.get("cnf")
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if cnf is not None and not isinstance(bound, str):
            raise InvalidToken("the token's certificate binding (cnf) is not one this server understands")
        scope = claims.get("scope", "")
        name = claims.get("name")
        thumbprint = claims.get("thumbprint")
        principal = Principal(
            subject=str(claims["sub"]),
            kind="user" if "oid" in claims else "client",
            environment=self._environment,
            scopes=tuple(scope.split()) if isinstance(scope, str) else (),
            expires_at=int(claims["exp"]),
            name=name if isinstance(name, str) else None,
            thumbprint=thumbprint if isinstance(thumbprint, str) else None,
            claims=claims,
        )
        return _Verified(principal, str(claims["jti"]), int(claims["exp"]), bound, principal.key,
                         f"cert:{bound}" if bound is not None else None, int(claims["iat"]))
