"""RFC 6749 §5.2 error responses, spelled as the spec spells them."""

from __future__ import annotations

import json

from bankgate.oauth.http import Send, respond

__all__ = ["JSON_NO_STORE", "OAuthError"]

#: Token responses and errors must not be cached (RFC 6749 §5.1).
JSON_NO_STORE = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
]
_BASIC_CHALLENGE = (b"www-authenticate", b'Basic realm="bankgate", charset="UTF-8"')


class OAuthError(Exception):
    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        *,
        audit_reason: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.audit_reason = audit_reason or error
        self.retry_after = retry_after

    async def send(self, send: Send) -> None:
        headers = list(JSON_NO_STORE)
        if self.status == 401:
            headers.append(_BASIC_CHALLENGE)
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        body = json.dumps({"error": self.error, "error_description": self.description}).encode()
        await respond(send, self.status, body, headers)

    @classmethod
    def invalid_request(cls, description: str, *, reason: str = "invalid_request") -> OAuthError:
        return cls("invalid_request", description, 400, audit_reason=reason)

    @classmethod
    def invalid_client(cls, description: str, *, reason: str = "invalid_client") -> OAuthError:
        return cls("invalid_client", description, 401, audit_reason=reason)
