"""Reading request headers and sending a response, in plain ASGI.

`NO_STORE` is what every answer that carries or concerns a credential sends (RFC 6749 §5.1, RFC 9111 §5.2.2.5;
`Pragma` for HTTP/1.0 caches): token responses, errors, the user's and the guard's answers alike.
"""

from __future__ import annotations

from bankgate.web.asgi import Scope, Send

__all__ = ["JSON", "JSON_NO_STORE", "NO_STORE", "DuplicateHeader", "header", "respond", "single_header"]

Header = tuple[bytes, bytes]

#: A response that must not be kept by any cache.
NO_STORE: tuple[Header, ...] = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
JSON: Header = (b"content-type", b"application/json")
#: A JSON answer that must not be cached (token responses, user and certificate answers).
JSON_NO_STORE: tuple[Header, ...] = (JSON, *NO_STORE)


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
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def respond(send: Send, status: int, body: bytes, headers: list[Header] | tuple[Header, ...]) -> None:
    """A complete response: `headers` and the Content-Length of `body`."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
