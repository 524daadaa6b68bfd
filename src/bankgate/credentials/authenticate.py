"""Client authentication as a use case (RFC 6749 §2.3.1): an API key pair in, the client's record out, throttled
per key and per address, every refusal with its reason for the audit trail.

One place for every entrance that accepts a key pair: the token, introspection and revocation endpoints, the
revocation feed, and the server's own guard (Basic on API calls). Each entrance renders `ClientRejected` in its own
format and writes its own audit event; none of them decides how a key pair is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from bankgate.credentials.clients import ClientAuthError, ClientRecord, ClientRegistry
from bankgate.throttle import AuthThrottle, keys_for

__all__ = ["AUTHENTICATION_FAILED", "ClientAuthentication", "ClientRejected"]

#: What an unknown key and a wrong secret both answer, so keys cannot be enumerated.
AUTHENTICATION_FAILED = "client authentication failed: check the API key and secret key"


class ClientRejected(Exception):
    """A key pair refused: the spec's error code (`invalid_client`, `slow_down`), its HTTP status, a description
    safe to show the caller, the reason for the audit trail, and when to retry (throttled)."""

    def __init__(
        self, error: str, description: str, status: int, *, audit_reason: str, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.audit_reason = audit_reason
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ClientRejected({self.error!r}, {self.audit_reason!r})"


@dataclass(frozen=True, slots=True)
class ClientAuthentication:
    """Checks key pairs against the registry, behind the brute-force throttle of `environment`'s server."""

    clients: ClientRegistry
    throttle: AuthThrottle
    environment: str

    async def __call__(
        self, api_key: str, secret: str, source_ip: str | None, *, allow_revoked: bool = False
    ) -> ClientRecord:
        """The client whose key pair this is. A throttled attempt is refused unchecked; `allow_revoked` accepts
        a revoked client's correct key pair (it may still introspect and revoke its own tokens)."""
        throttle = self.throttle
        quiet = throttle.quiet
        keys = [] if quiet else keys_for(api_key[:80], source_ip)
        retry_after = None if quiet else throttle.blocked(keys)
        if retry_after is not None:
            seconds = max(1, round(retry_after))
            raise ClientRejected("slow_down", f"too many failed authentications; retry in {seconds} s", 429,
                                 audit_reason="throttled", retry_after=seconds)
        try:
            client = await self.clients.authenticate(api_key, secret, allow_revoked=allow_revoked)
        except ClientAuthError as exc:
            if exc.reason in ("unknown_api_key", "wrong_secret"):
                await throttle.failure(keys or keys_for(api_key[:80], source_ip))
            if exc.reason == "client_revoked":
                description = "this client has been revoked; ask your integration manager for new credentials"
            elif exc.reason == "wrong_environment":
                description = (f"these credentials are not for the {self.environment} environment; "
                               "use the server of their environment")
            else:
                description = AUTHENTICATION_FAILED
            raise ClientRejected("invalid_client", description, 401, audit_reason=exc.reason) from None
        if not quiet:
            await throttle.success(keys)
        return client
