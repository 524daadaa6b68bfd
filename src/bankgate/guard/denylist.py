"""Whether a token was revoked before it expired (RFC 7009), decided from memory in a few dictionary lookups.

Tokens are never stored, so revocation is a deny list with two parts:

* tokens: the `jti`s of revoked tokens, kept only until the token would have expired;
* subjects: a whole client (`client:<id>`), M2M user (`user:<id>`) or client certificate (`cert:<x5t#S256>`,
  RFC 8705 §3.1, the certificate a token is bound to). Every token of the subject issued at or before the
  subject's cut-off is refused; without a cut-off, every token of it, whenever issued.

One class for both sides, so the rule is written once: the bankgate server fills it from its database
(`bankgate.tokens.revocation.RevocationList`), a guard running apart from the server from the server's revocation
feed (`bankgate.guard.revocations.RemoteRevocations`). A list that has not been refreshed for `max_staleness`
seconds (or never) refuses to answer, raising `RevocationUnavailable` (fail closed), rather than let a revoked
token through. Standard library only: the guard stands alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

__all__ = ["EVERY_TOKEN", "DenyList", "RevocationUnavailable", "subject_keys"]

#: The cut-off of a subject revoked without one: no `iat` reaches it.
EVERY_TOKEN = math.inf


def subject_keys(claims: Mapping[str, object]) -> tuple[str, str | None]:
    """The subject keys a token's claims fall under: `client:<sub>` or `user:<sub>` (a user's token has `oid`),
    and `cert:<x5t#S256>` when it is bound to a certificate (else None)."""
    kind = "user" if "oid" in claims else "client"
    cnf = claims.get("cnf")
    bound = cnf.get("x5t#S256") if isinstance(cnf, Mapping) else None
    return f"{kind}:{claims.get('sub')}", f"cert:{bound}" if isinstance(bound, str) else None


class RevocationUnavailable(Exception):
    """The deny list has not been refreshed for too long to say whether a token is revoked."""


class DenyList:
    """Revoked `jti`s (until their `exp`) and revoked subjects (with their cut-off), in memory.

    `source` names where the list is refreshed from, for the message of `RevocationUnavailable`; `clock` is
    monotonic (staleness), so a test can age the list without sleeping.
    """

    def __init__(
        self,
        *,
        max_staleness: float = 30.0,
        source: str = "its source",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._denied: dict[str, float] = {}  # jti -> expires_at
        self._subjects: dict[str, float] = {}  # subject key -> tokens issued at or before this are refused
        self._synced_at: float | None = None  # None: never loaded, so memory knows nothing yet
        self._max_staleness = max_staleness
        self._source = source
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}(denied={len(self._denied)}, subjects={len(self._subjects)})"

    # -- filling it ---------------------------------------------------------------------------------------

    def add_token(self, jti: str, expires_at: float) -> None:
        """Deny the token `jti` until `expires_at` (epoch seconds)."""
        self._denied[jti] = expires_at

    def remember(self, subject: str, not_before: float | None = None) -> None:
        """Deny the tokens of `subject` issued at or before `not_before` (None: all of them). A subject revoked
        without a cut-off stays so; otherwise the later cut-off wins."""
        cut = EVERY_TOKEN if not_before is None else not_before
        self._subjects[subject] = max(cut, self._subjects.get(subject, -EVERY_TOKEN))

    def refreshed(self, now: float | None = None) -> None:
        """Record a complete refresh from the source; forget tokens that have expired anyway (`now`: epoch)."""
        cutoff = time.time() if now is None else now
        if any(expires_at <= cutoff for expires_at in self._denied.values()):
            self._denied = {jti: exp for jti, exp in self._denied.items() if exp > cutoff}
        self._synced_at = self._clock()

    @property
    def loaded(self) -> bool:
        """True once the list has been refreshed at least once."""
        return self._synced_at is not None

    def age(self) -> float | None:
        """Seconds since the last refresh; None when never refreshed."""
        return None if self._synced_at is None else self._clock() - self._synced_at

    # -- the request path ---------------------------------------------------------------------------------

    def _stale(self) -> RevocationUnavailable:
        return RevocationUnavailable(f"the revocation list cannot be reloaded from {self._source}")

    def denied(self, jti: str) -> bool:
        """Whether the token `jti` was revoked; raises RevocationUnavailable when the list is too old to trust."""
        if jti in self._denied:
            return True
        synced_at = self._synced_at  # inline, not a method: this runs on every API call
        if synced_at is None or self._clock() - synced_at > self._max_staleness:
            raise self._stale()
        return False

    def token_denied(self, jti: str, subject: str, certificate: str | None, issued_at: int) -> bool:
        """`denied`, and also refused when the token's subject or the certificate it is bound to (`cert:…` keys,
        see `subject_keys`) has been revoked since it was issued. Fail closed."""
        if jti in self._denied:
            return True
        subjects = self._subjects
        if subjects and (
            subjects.get(subject, -1.0) >= issued_at
            or (certificate is not None and subjects.get(certificate, -1.0) >= issued_at)
        ):
            return True
        synced_at = self._synced_at  # inline, not a method: this runs on every API call
        if synced_at is None or self._clock() - synced_at > self._max_staleness:
            raise self._stale()
        return False
