"""Access tokens and their lifetime: `expires_in` as the seeds send it (a string, a number or absent, then the JWT's
`exp`), and the refresh margin that lets a 300-second token be reused for its life."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_LIFETIME", "MarginPolicy", "Token", "default_margin", "parse_expires_in", "token_from_response"]

#: Lifetime assumed for an opaque token whose answer gives no `expires_in`: short, so a wrong guess costs little
#: (a 401 on a token the server ended earlier is answered by one refresh anyway).
DEFAULT_LIFETIME = 60.0

MarginPolicy = Callable[[float], float]


def default_margin(lifetime: float) -> float:
    """Refresh `min(30 s, 10 % of the lifetime)` before expiry.

    A fixed 5-minute margin (MSAL, azure-core) would refresh a 300-second token on every call; 10 % keeps a short
    token useful for 90 % of its life, and 30 s is ample for clock drift and a slow request on long tokens.
    """
    return min(30.0, 0.1 * lifetime)


def parse_expires_in(value: object) -> float | None:
    """`300`, `300.0`, `"300"`, `" 300.0 "` -> 300.0; anything unusable (absent, negative, `"soon"`, NaN) -> None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str | bytes):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def jwt_claims(token: str) -> Mapping[str, Any] | None:
    """The payload of a JWS compact token, decoded WITHOUT verifying anything: only to learn its lifetime."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _jwt_lifetime(token: str, now: float) -> float | None:
    """Seconds left according to the JWT: `exp - iat` when both are there (immune to clock skew between us and the
    issuer, since both come from the issuer's clock), else `exp - now`."""
    claims = jwt_claims(token)
    if claims is None:
        return None
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    if isinstance(iat, int | float) and not isinstance(iat, bool) and iat <= exp:
        return float(exp - iat)
    left = float(exp) - now
    return left if left > 0 else None


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and when it stops being usable, by this machine's wall clock.

    `expires_at` counts from the moment the request was *sent*, not answered, so a slow answer shortens the life
    instead of stretching it. `repr()` shows the lifetime, never the value.
    """

    value: str = field(repr=False)
    expires_at: float
    lifetime: float
    token_type: str = "Bearer"  # noqa: S105 - a scheme name
    scope: str | None = None
    #: The token endpoint's JSON answer as received (contains the token: never log it).
    response: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        left = self.expires_at - time.time()
        scope = f", scope={self.scope!r}" if self.scope else ""
        return f"Token(type={self.token_type!r}, lifetime={self.lifetime:g}s, expires_in={left:.0f}s{scope})"

    @property
    def authorization(self) -> str:
        """The `Authorization` header value: always the Bearer scheme the seeds ask for."""
        return f"Bearer {self.value}"

    def refresh_at(self, margin: MarginPolicy = default_margin) -> float:
        """The wall-clock time after which a new token should be fetched."""
        return self.expires_at - max(0.0, margin(self.lifetime))

    def is_fresh(self, now: float | None = None, margin: MarginPolicy = default_margin) -> bool:
        return (time.time() if now is None else now) < self.refresh_at(margin)

    def to_json(self) -> str:
        """The form stored in shared caches."""
        return json.dumps({"value": self.value, "expires_at": self.expires_at, "lifetime": self.lifetime,
                           "token_type": self.token_type, "scope": self.scope, "response": dict(self.response)})

    @classmethod
    def from_json(cls, text: str | bytes) -> Token | None:
        """Read a stored entry; None for anything unreadable (a torn or foreign file)."""
        try:
            data = json.loads(text)
            return cls(str(data["value"]), float(data["expires_at"]), float(data["lifetime"]),
                       str(data.get("token_type") or "Bearer"), data.get("scope"), dict(data.get("response") or {}))
        except (ValueError, KeyError, TypeError):
            return None


def token_from_response(body: Mapping[str, Any], sent_at: float, *,
                        default_lifetime: float = DEFAULT_LIFETIME) -> Token | None:
    """A `Token` from a token endpoint's JSON answer, or None when it has no usable `access_token`.

    Lifetime: `expires_in` (string or number), else the JWT's `exp`, else `default_lifetime`.
    """
    value = body.get("access_token")
    if not isinstance(value, str) or not value.strip():
        return None
    lifetime = parse_expires_in(body.get("expires_in"))
    if lifetime is None:
        lifetime = _jwt_lifetime(value, sent_at) or default_lifetime
    token_type = body.get("token_type")
    scope = body.get("scope")
    return Token(value=value, expires_at=sent_at + lifetime, lifetime=lifetime,
                 token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
                 scope=scope if isinstance(scope, str) else None, response=dict(body))
