"""Errors as data, rendered in one place.

A refusal is an `HttpError`: a status, the spec's error code, a description that says what to do, and what the
answer needs besides (a challenge, `Retry-After`). A route raises it; its entrance renders it with `send_error` in
the format that route has always spoken:

* `OAUTH`: RFC 6749 §5.2 / RFC 6750 §3 JSON, `{"error": …, "error_description": …}` (the OAuth endpoints, the
  guard, discovery and health);
* `PROBLEM`: RFC 9457 problem details, `application/problem+json` (the certificate style's user endpoints, the
  sandbox, the Idempotency-Key layer);
* `BANKING`: Banking Circle's own list, `{"errors": [{"errorCode": …, "errorDescription": …}]}` (a malformed
  `Authorization` header on the certificate style's routes, as the provider answers it).

Every error answer is `no-store`: it may describe a credential.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum
from http import HTTPStatus
from typing import Any

from bankgate.web.asgi import Send
from bankgate.web.headers import NO_STORE, respond

__all__ = ["BANKING", "BASIC_CHALLENGE", "OAUTH", "PROBLEM", "ErrorFormat", "HttpError", "render_error",
           "send_error"]

Header = tuple[bytes, bytes]

#: The challenge of a refused Basic authentication (RFC 7617 §2.1).
BASIC_CHALLENGE = b'Basic realm="bankgate", charset="UTF-8"'


class ErrorFormat(Enum):
    OAUTH = "oauth"
    PROBLEM = "problem"
    BANKING = "banking"


OAUTH = ErrorFormat.OAUTH
PROBLEM = ErrorFormat.PROBLEM
BANKING = ErrorFormat.BANKING

_CONTENT_TYPE = {
    OAUTH: (b"content-type", b"application/json"),
    PROBLEM: (b"content-type", b"application/problem+json"),
    BANKING: (b"content-type", b"application/json"),
}


class HttpError(Exception):
    """An error answer, as data (see the module's docstring).

    `code` is the spec's error code (`invalid_client`, `AuthorizationParseFailure`); `title` the problem's title
    (by default the status's phrase); `retry_after` seconds (sent rounded, at least 1); `challenge` the
    `WWW-Authenticate` value; `extra` further members of a problem body; `format` forces a format whatever the
    route's (the provider's `errors` list for a header it cannot parse).
    """

    def __init__(
        self,
        status: int,
        code: str,
        description: str,
        *,
        title: str | None = None,
        retry_after: float | None = None,
        challenge: bytes | None = None,
        extra: Mapping[str, Any] | None = None,
        format: ErrorFormat | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.title = title
        self.retry_after = retry_after
        self.challenge = challenge
        self.extra = extra
        self.format = format

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.description!r})"


def render_error(
    error: HttpError, route_format: ErrorFormat, *, instance: str | None = None
) -> tuple[int, list[Header], bytes]:
    """(status, headers, body) of `error` in `route_format` (or the error's own); `instance` is the problem's
    `instance` member (the request's path), where the route names it."""
    form = error.format or route_format
    if form is OAUTH:
        document: dict[str, Any] = {"error": error.code, "error_description": error.description}
    elif form is PROBLEM:
        document = {"type": "about:blank", "title": error.title or _phrase(error.status), "status": error.status,
                    "detail": error.description}
        if instance is not None:
            document["instance"] = instance
        if error.extra:
            document.update(error.extra)
    else:
        document = {"errors": [{"errorCode": error.code, "errorDescription": error.description}]}
    headers = [_CONTENT_TYPE[form], *NO_STORE]
    if error.challenge is not None:
        headers.append((b"www-authenticate", error.challenge))
    if error.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(error.retry_after))).encode()))
    return error.status, headers, json.dumps(document).encode()


async def send_error(send: Send, error: HttpError, route_format: ErrorFormat, *, instance: str | None = None) -> None:
    """Send `error` as a complete response (see `render_error`)."""
    status, headers, body = render_error(error, route_format, instance=instance)
    await respond(send, status, body, headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
