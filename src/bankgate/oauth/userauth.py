"""Authenticating an M2M user (the certificate style): Basic username:password, the client certificate issued
to that user, the IP allow list, brute-force throttling, and the answers in the provider's error shapes.

The order of the checks is the defence: a request without a valid bankgate certificate, or while throttled, is
refused before any argon2 work, so password guessing needs a certificate and patience. Past that point every
account-related refusal (unknown user, wrong password, another user's certificate) is one answer after one argon2
verification, and the allow list and the onboarding state are told only to a caller whose password matched: the
answers and their timing say nothing about which usernames exist.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bankgate.cache import TtlCache
from bankgate.credentials.users import USERNAME, UserRecord
from bankgate.oauth.http import Scope, header
from bankgate.request_layer import tell_actor
from bankgate.runtime import Runtime
from bankgate.throttle import keys_for
from bankgate.web.basic import MalformedBasic, NotBasic, parse_basic
from bankgate.web.errors import BANKING, BASIC_CHALLENGE, HttpError

__all__ = ["AuthenticatedUser", "UserAuthError", "UserCredentials", "authenticate_user", "parse_user_basic"]

class UserAuthError(HttpError):
    """A refusal, answered as RFC 9457 problem details (or, for a malformed header, the provider's `errors` list);
    `reason` is for the audit trail only."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        reason: str,
        retry_after: float | None = None,
        parse_failure: bool = False,
    ) -> None:
        super().__init__(
            status,
            "AuthorizationParseFailure" if parse_failure else reason,
            detail,
            title=title,
            retry_after=retry_after,
            challenge=BASIC_CHALLENGE if status == 401 else None,
            format=BANKING if parse_failure else None,
        )
        #: Who and which certificate, as far as known when the request was refused (for the audit trail).
        self.actor = "anonymous"
        self.thumbprint: str | None = None
        self.reason = reason
        self.parse_failure = parse_failure
        #: The use case that refused wrote the audit event already: the entrance does not write another.
        self.audited = False

    @property
    def detail(self) -> str:
        return self.description


def _unauthorized(detail: str, reason: str) -> UserAuthError:
    return UserAuthError(401, "Unauthorized", detail, reason=reason)


def _forbidden(detail: str, reason: str) -> UserAuthError:
    return UserAuthError(403, "Forbidden", detail, reason=reason)


def _parse_failure(detail: str) -> UserAuthError:
    return UserAuthError(400, "Bad Request", detail, reason="authorization_parse_failure", parse_failure=True)


@dataclass(frozen=True, slots=True)
class UserCredentials:
    username: str
    password: str = field(repr=False)


def parse_user_basic(authorization: str | None) -> UserCredentials:
    """The user's Basic credentials, by the one rule of `bankgate.web.basic` (an empty password is well-formed and
    fails as a wrong one)."""
    if not authorization:
        raise _unauthorized(
            "no credentials: send Authorization: Basic base64(username:password)", "no_credentials"
        )
    try:
        credentials = parse_basic(authorization, what="username:password")
    except NotBasic:
        raise _parse_failure("the Authorization header must be Basic base64(username:password)") from None
    except MalformedBasic as exc:
        raise _parse_failure(str(exc)) from None
    return UserCredentials(credentials.user_id, credentials.secret)


@dataclass(slots=True)
class UserAuthCaches:
    """Per-process caches: user records and certificates (forgotten when the change feed announces a change: at
    once for a change made by this process, within one sync for one made elsewhere) and password checks already
    passed (keyed by an HMAC of user, hash and password, so a changed password misses). `rechecked` bounds the
    re-reads of a user record behind a negative answer to one per username per second."""

    users: TtlCache[str, UserRecord | None]
    certificates: TtlCache[str, Any]
    passwords: TtlCache[str, bool]
    rechecked: TtlCache[str, bool] = field(default_factory=lambda: TtlCache(RECHECK_INTERVAL))

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> UserAuthCaches:
        ttl, clock = runtime.settings.client_cache_ttl, runtime.services.clock
        return cls(TtlCache(ttl, clock=clock), TtlCache(ttl, clock=clock),
                   TtlCache(max(ttl, 60.0), limit=10_000, clock=clock), TtlCache(RECHECK_INTERVAL, clock=clock))

    def forget_user(self, username: str) -> None:
        """The user changed (password, passphrase, status): the next request reads the record again."""
        self.users.forget(username)

    def forget_certificate(self, key: str) -> None:
        """The certificate changed (revoked); `key` is the SHA-256 hex of its DER."""
        self.certificates.forget(key)

    def recheck_due(self, username: str) -> bool:
        """True at most once per username per `RECHECK_INTERVAL`: a flood of wrong answers for one name reads the
        database once a second, not once a request."""
        found, _ = self.rechecked.lookup(username)
        if found:
            return False
        self.rechecked.store(username, True)
        return True


#: At most one re-read per username per this many seconds behind a negative answer from a cached record.
RECHECK_INTERVAL = 1.0


def _caches(runtime: Runtime) -> UserAuthCaches:
    caches = getattr(runtime, "_user_auth_caches", None)
    if caches is None:
        caches = UserAuthCaches.for_runtime(runtime)
        # Changes made here are announced at once, those made elsewhere within one sync of the change feed.
        runtime.services.changes.subscribe("user", caches.forget_user)
        runtime.services.changes.subscribe("cert", caches.forget_certificate)
        runtime._user_auth_caches = caches  # type: ignore[attr-defined]
    return caches


async def _user(runtime: Runtime, username: str) -> UserRecord | None:
    return await _caches(runtime).users.get(username, lambda: runtime.services.users.find(username))


async def _fresh_user(runtime: Runtime, username: str) -> UserRecord | None:
    """The record read again from the database, when a re-read is due for this name; else the cached one."""
    caches = _caches(runtime)
    if caches.recheck_due(username):
        caches.forget_user(username)
    return await _user(runtime, username)


async def _certificate(runtime: Runtime, der: bytes) -> Any:
    key = hashlib.sha256(der).hexdigest()
    return await _caches(runtime).certificates.get(key, lambda: runtime.services.pki.find_by_der(der))


async def _password_ok(runtime: Runtime, user: UserRecord | None, password: str) -> bool:
    """Whether `password` is the user's credential: the password, or the initial passphrase until it is reset.
    Exactly one argon2 verification unless this very check passed recently; None (no such user, or not one that
    may use this certificate) costs the same, against a dummy hash."""
    users = runtime.services.users
    if user is None:
        return await users.verify_password(None, password)
    caches = _caches(runtime)
    stored = user.passphrase_hash if user.must_reset else user.password_hash
    key = runtime.services.vault.hash_secret(f"{user.id}\0{user.must_reset}\0{stored}\0{password}")
    found, _ = caches.passwords.lookup(key)
    if found:
        return True
    check = users.verify_passphrase if user.must_reset else users.verify_password
    if await check(user, password):
        caches.passwords.store(key, True)
        return True
    return False


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    user: UserRecord
    certificate: Any  # pki CertificateRecord, or None when no certificate was required


async def authenticate_user(
    runtime: Runtime,
    scope: Scope,
    source_ip: str | None,
    *,
    require_certificate: bool,
    credentials: UserCredentials | None = None,
) -> AuthenticatedUser:
    """Run every check of the certificate style, cheapest first; raise UserAuthError with the answer. The
    credentials come from `Authorization: Basic`, or are given (a sign-in form)."""
    if credentials is None:
        credentials = parse_user_basic(header(scope, b"authorization"))
    context: dict[str, Any] = {"certificate": None}
    try:
        authenticated = await _authenticate(runtime, scope, source_ip, credentials, require_certificate, context)
    except UserAuthError as err:
        # The claimed name only if it could be a username: never a password typed into the wrong field.
        err.actor = credentials.username if USERNAME.fullmatch(credentials.username) else "anonymous"
        certificate = context["certificate"]
        err.thumbprint = certificate.thumbprint if certificate is not None else None
        raise
    tell_actor(scope, authenticated.user.username)
    return authenticated


def _eligible(runtime: Runtime, user: UserRecord | None, certificate: Any) -> bool:
    return (
        user is not None
        and user.status == "active"
        and user.environment == runtime.settings.environment
        and (certificate is None or certificate.user_id == user.id)
    )


def _failure_reason(runtime: Runtime, user: UserRecord | None, certificate: Any) -> str:
    """Why the answer was 401, for the audit trail only: the caller is told the same whatever the reason."""
    if user is None or user.environment != runtime.settings.environment:
        return "unknown_user"
    if user.status != "active":
        return "user_disabled"
    if certificate is not None and certificate.user_id != user.id:
        return "foreign_certificate"
    return "wrong_password"


def _same_secrets(a: UserRecord | None, b: UserRecord | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.id, a.status, a.password_hash, a.passphrase_hash) == (b.id, b.status, b.password_hash, b.passphrase_hash)


async def _authenticate(
    runtime: Runtime,
    scope: Scope,
    source_ip: str | None,
    credentials: UserCredentials,
    require_certificate: bool,
    context: dict[str, Any],
) -> AuthenticatedUser:
    """Cheap checks that say nothing about accounts, then the throttle, then exactly one argon2 verification
    whoever the user is, and only then anything about the account (allow list, passphrase not reset).

    Unknown, disabled or another environment's user, another user's certificate, wrong password: one answer
    (401 "the username or password is wrong"), the same work, and a failure counted under every throttle key.
    """
    certificate = None
    if require_certificate:
        der = runtime.client_certs.der(scope)
        if der is None:
            raise _unauthorized(
                "no client certificate: connect with mutual TLS and the certificate issued to this user",
                "no_certificate",
            )
        certificate = context["certificate"] = await _certificate(runtime, der)
        if certificate is None:
            raise _unauthorized("the client certificate was not issued by bankgate", "unknown_certificate")
        if certificate.status != "valid":
            raise _unauthorized("the client certificate has been revoked", "certificate_revoked")
        if not certificate.usable_at(runtime.services.clock.now()):
            raise _unauthorized("the client certificate has expired or is not valid yet", "certificate_expired")
    throttle = runtime.services.throttle
    keys = keys_for(credentials.username, source_ip)
    retry_after = throttle.blocked(keys)
    if retry_after is not None:
        raise UserAuthError(
            429, "Too Many Requests", f"too many failed attempts; retry in {max(1, round(retry_after))} s",
            reason="throttled", retry_after=retry_after,
        )
    username = credentials.username
    cached, _ = _caches(runtime).users.lookup(username)
    user = await _user(runtime, username)
    if cached and (user is None or user.must_reset or user.status != "active"):
        # A negative answer to come from a record that may be stale ("unknown", "reset first"): read it again.
        user = await _fresh_user(runtime, username)
    ok = await _password_ok(runtime, user if _eligible(runtime, user, certificate) else None, credentials.password)
    if not ok and cached and user is not None and _eligible(runtime, user, certificate):
        # The password may have changed elsewhere since the record was cached: check against the new one (a
        # second verification only when the stored hash really changed, which a guesser cannot cause).
        fresh = await _fresh_user(runtime, username)
        if not _same_secrets(user, fresh):
            user = fresh
            ok = _eligible(runtime, user, certificate) and await _password_ok(runtime, user, credentials.password)
    if not ok or user is None:
        error = _unauthorized("the username or password is wrong", _failure_reason(runtime, user, certificate))
        error.retry_after = await throttle.failure(keys)
        raise error
    if not await runtime.services.allowlist.allows("user", user.id, source_ip):
        from bankgate.credentials.allowlist import describe_default

        default = describe_default(runtime.settings.environment)
        raise _forbidden(
            f"requests from {source_ip} are not allowed for this user ({default}); "
            "ask your integration manager to allow-list the address",
            "ip_not_allowed",
        )
    if user.must_reset:
        raise _forbidden(
            f"reset the initial passphrase first: POST /api/v1/users/{user.username}/password with "
            '{"passphrase": …, "new_password": …}',
            "passphrase_not_reset",
        )
    await throttle.success(keys)
    return AuthenticatedUser(user, certificate)
