"""Plain ASGI plumbing for the OAuth endpoints: a bounded body. No framework on the hot path.

The ASGI types, header reading and `respond` live in `bankgate.web`, shared with every other route.
"""

from __future__ import annotations

from bankgate.web.asgi import Message, Receive, Scope, Send
from bankgate.web.headers import DuplicateHeader, header, respond, single_header

__all__ = [
    "BodyTooLarge", "DuplicateHeader", "Message", "Receive", "Scope", "Send", "header", "read_body", "respond",
    "single_header",
]


class BodyTooLarge(Exception):
    pass


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge
    message = await receive()
    body: bytes = message.get("body", b"")
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
