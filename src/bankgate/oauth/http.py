"""Plain ASGI plumbing for the OAuth endpoints: headers, a bounded body, a response. No framework on the hot path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "BodyTooLarge", "DuplicateHeader", "Message", "Receive", "Scope", "Send", "header", "read_body", "respond",
    "single_header",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class DuplicateHeader(Exception):
    """A header that must appear once appeared twice; the error boundary answers 400."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the {name} header appears more than once")
        self.name = name


#: Headers with one value (RFC 7230 §3.2.2): a second copy is refused, never silently dropped or preferred.
_SINGLE = {b"authorization": "Authorization"}


def single_header(scope: Scope, name: bytes) -> bytes | None:
    """The one value of header `name` (lower-case bytes); raises DuplicateHeader when it appears twice."""
    found: bytes | None = None
    for key, value in scope["headers"]:
        if key == name:
            if found is not None:
                raise DuplicateHeader(_SINGLE.get(name) or name.decode("latin-1"))
            found = value
    return found


def header(scope: Scope, name: bytes) -> str | None:
    """The value of header `name` (lower-case bytes), decoded as Latin-1 like HTTP/1.1 itself: the first one, but
    for the headers that must appear once (Authorization), which raise DuplicateHeader when repeated."""
    if name in _SINGLE:
        value = single_header(scope, name)
        return None if value is None else value.decode("latin-1")
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
