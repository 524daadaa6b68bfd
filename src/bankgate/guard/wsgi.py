"""`GuardWSGIMiddleware`: the guard in front of a WSGI app (PEP 3333: Flask, Django, Falcon...), the same checks and
the same RFC 6750 answers as `GuardMiddleware`, the principal at `environ["bankgate.principal"]`.

The guard is asynchronous (it fetches the JWKS and the revocation feed with httpx), so the middleware runs it on an
event loop of its own, in one daemon thread shared by every request: the JWKS, the verified-token cache and the
deny list live there, and a worker thread waits only for its own request's verdict.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from bankgate.guard.core import Guard
from bankgate.guard.middleware import GuardMiddleware, principal_of

__all__ = ["PRINCIPAL_KEY", "GuardWSGIMiddleware"]

#: Where the principal is put in the WSGI environ.
PRINCIPAL_KEY = "bankgate.principal"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests",
            503: "Service Unavailable"}


def asgi_scope(environ: dict[str, Any]) -> dict[str, Any]:
    """The parts of an ASGI HTTP scope the guard reads (headers, peer address, path), from a WSGI environ."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").lower()
        else:
            continue
        # PEP 3333 gives header values as latin-1 decoded str; a server joins repeated headers with ", ", so
        # two Authorization headers arrive as one malformed value and are refused as such.
        headers.append((name.encode("latin-1"), str(value).encode("latin-1")))
    remote = environ.get("REMOTE_ADDR")
    port = str(environ.get("REMOTE_PORT") or "")
    return {
        "type": "http",
        "method": environ.get("REQUEST_METHOD", "GET"),
        "path": environ.get("PATH_INFO", "") or "/",
        "headers": headers,
        "client": (remote, int(port) if port.isdigit() else 0) if remote else None,
        "state": {},
    }


class _Loop:
    """One event loop in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Any) -> Any:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="bankgate-guard", daemon=True).start()
                self._loop = loop
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


class GuardWSGIMiddleware:
    """Refuse unauthenticated requests to a WSGI app with the RFC 6750 answer; pass the rest on with their principal.

    `guard`, `exclude` and `optional` as for `GuardMiddleware`, which decides every request here too: this class
    only turns the WSGI environ into a scope and the verdict back into a WSGI answer.
    """

    def __init__(self, app: WSGIApp, *, guard: Guard, exclude: Iterable[str] = (), optional: bool = False) -> None:
        self.app = app
        self.guard = guard
        self._decide = GuardMiddleware(_passed, guard=guard, exclude=exclude, optional=optional)
        self._loop = _Loop()

    async def _verdict(self, scope: dict[str, Any]) -> list[MutableMapping[str, Any]]:
        """The refusal's ASGI messages; none when the request may pass (then `scope` is marked)."""
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await self._decide(scope, receive, send)
        return sent

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scope = asgi_scope(environ)
        refusal = self._loop.run(self._verdict(scope))
        if not scope.get(_PASSED):
            start = next(m for m in refusal if m["type"] == "http.response.start")
            status = int(start["status"])
            headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]]
            start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
            return [b"".join(m.get("body", b"") for m in refusal if m["type"] == "http.response.body")]
        principal = principal_of(scope)
        if principal is not None:
            environ[PRINCIPAL_KEY] = principal
        return self.app(environ, start_response)


_PASSED = "bankgate.passed"


async def _passed(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """The app behind the deciding `GuardMiddleware`: reached only by a request it lets through."""
    scope[_PASSED] = True
