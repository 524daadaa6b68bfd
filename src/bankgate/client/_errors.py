"""Typed errors of the client SDK: RFC 6749 §5.2 codes for the OAuth2 style, the seed's answers for the certificate
style. Messages say what was wrong and what to do, and never carry a token, password, secret or key."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AccessDenied",
    "ClientError",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTokenResponse",
    "MissingDependency",
    "PasswordResetRequired",
    "RateLimited",
    "TokenError",
    "TokenServerError",
    "TokenUnavailable",
    "UnauthorizedClient",
    "UnsupportedGrantType",
]

_MAX_DESCRIPTION = 300


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (at least 4 characters long) replaced by `***`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class ClientError(Exception):
    """Base of every error raised by `bankgate.client`."""


class MissingDependency(ClientError, ImportError):
    """An optional package (requests, cryptography, redis) is needed for the feature asked for."""

    def __init__(self, package: str, feature: str, extra: str | None = None) -> None:
        hint = f"pip install 'bankgate[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the {package!r} package: {hint}")
        self.package = package


class TokenError(ClientError):
    """The token endpoint refused to issue a token, or answered something unusable.

    `error` is the RFC 6749 code when the server sent one (`invalid_client`, `invalid_scope`, ...), `status` the HTTP
    status (0 when no answer arrived), `description` the server's explanation, shortened and with secrets removed.
    """

    hint = ""

    def __init__(self, status: int, error: str | None, description: str, *, endpoint: str = "",
                 retry_after: float | None = None) -> None:
        description = " ".join(description.split())[:_MAX_DESCRIPTION]
        self.status = status
        self.error = error
        self.description = description
        self.endpoint = endpoint
        self.retry_after = retry_after
        parts = [f"token request to {endpoint or 'the token endpoint'} failed"]
        if status:
            parts.append(f"HTTP {status}")
        if error:
            parts.append(error)
        message = ", ".join(parts)
        if description:
            message += f": {description}"
        if self.hint:
            message += f" ({self.hint})"
        super().__init__(message)


class InvalidClient(TokenError):
    """Wrong API key, secret, username or password; or a client certificate the server does not accept."""

    hint = "check the API key and secret (or username, password and client certificate) for this environment"


class InvalidScope(TokenError):
    """A scope (business application ID) the client is not allowed."""

    hint = "ask only for scopes (application IDs) this client was onboarded with"


class UnauthorizedClient(TokenError):
    """The client may not use this grant, e.g. it was onboarded for Basic authentication."""

    hint = "a Basic-mode key pair sends Authorization: Basic on every API call instead of asking for a token"


class InvalidRequest(TokenError):
    """The server could not parse the token request."""


class InvalidGrant(TokenError):
    """The grant was refused (RFC 6749 `invalid_grant`)."""


class UnsupportedGrantType(TokenError):
    """The server does not offer this grant type."""


class PasswordResetRequired(TokenError):
    """Certificate style: the M2M user still has its initial passphrase (403)."""

    hint = "reset the initial passphrase to a password of your own, then ask again"


class AccessDenied(TokenError):
    """Refused for a reason credentials do not fix, e.g. the source address is not on the allow list (403)."""


class RateLimited(TokenError):
    """Too many token requests or failed attempts (429); `retry_after` says for how long, in seconds."""

    hint = "reuse the cached token until it expires instead of asking for new ones"


class TokenServerError(TokenError):
    """The token endpoint failed (5xx, `temporarily_unavailable`) or could not be reached."""


class TokenUnavailable(TokenServerError):
    """No answer from the token endpoint (connection refused, timeout, TLS failure)."""


class InvalidTokenResponse(TokenError):
    """A 2xx answer without a usable `access_token`."""
