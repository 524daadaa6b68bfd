"""RFC 6749 §5.2 error responses, spelled as the spec spells them; rendered by `bankgate.web.errors`."""

from __future__ import annotations

from bankgate.web.errors import BASIC_CHALLENGE, HttpError
from bankgate.web.headers import JSON_NO_STORE

__all__ = ["JSON_NO_STORE", "OAuthError"]


class OAuthError(HttpError):
    """An OAuth refusal: `error` is the RFC 6749 code; a 401 carries the Basic challenge (RFC 6749 §5.2)."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        *,
        audit_reason: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(status, error, description, retry_after=retry_after,
                         challenge=BASIC_CHALLENGE if status == 401 else None)
        self.audit_reason = audit_reason or error

    @property
    def error(self) -> str:
        return self.code

    def __str__(self) -> str:
        return f"{self.code}: {self.description}"

    @classmethod
    def invalid_request(cls, description: str, *, reason: str = "invalid_request") -> OAuthError:
        return cls("invalid_request", description, 400, audit_reason=reason)

    @classmethod
    def invalid_client(cls, description: str, *, reason: str = "invalid_client") -> OAuthError:
        return cls("invalid_client", description, 401, audit_reason=reason)
