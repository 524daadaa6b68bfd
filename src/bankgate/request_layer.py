"""The outer request layer: the first thing every HTTP request passes (the fast paths, the Starlette routes, the
sandbox, the admin API, 404s and the `ErrorBoundary`'s own 400/500/503 answers alike).

For each request it

* decides the request id: an `X-Request-Id` sent by a configured trusted proxy (`runtime.proxies`) when it is
  sane (1 to 128 visible ASCII characters), else a new random one; it is returned as `X-Request-Id` on every
  response and is the log context of everything logged while serving the request (`bankgate.logs.REQUEST_ID`);
* after the response, emits the one `http.request` event (actor, outcome, source address; detail: method, route
  template, status, duration in seconds, request id) to the sinks that want it: the access log, metrics. With no
  such sink, nothing is built.

The route is a bounded template (`bankgate.routenames`), never the raw path, so a scanner cannot make new values.
The actor is what an entrance names with `tell_actor` where it establishes the principal, else the key of the
principal the guard or the admin authentication put in `scope["state"]`, else "-".
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

from bankgate.events import Channel
from bankgate.logs import HTTP_REQUEST, REQUEST_ID
from bankgate.net import TrustedProxies
from bankgate.routenames import RouteNames
from bankgate.web.asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACTOR", "RequestLayer", "actor_of", "new_request_id", "tell_actor"]

#: The scope key an entrance sets (through `tell_actor`) to the authenticated client, user or administrator.
ACTOR = "bankgate.actor"
#: Nothing was sent: the client went away before an answer (nginx's convention).
CLIENT_CLOSED = 499

_random_bits = random.getrandbits
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def tell_actor(scope: Scope, actor: str) -> None:
    """Name who this request authenticated as (a client's API key, a user or administrator name) for the
    `http.request` event and the logs. Never a secret."""
    scope[ACTOR] = actor


def actor_of(scope: Scope) -> str:
    """The actor `tell_actor` named, else the key of the principal in `scope["state"]` (the guard's
    `client:<id>`/`user:<id>`, the admin API's `admin:<id>`), else "-"."""
    actor = scope.get(ACTOR)
    if actor is None:
        state = scope.get("state")
        principal = state.get("principal") if isinstance(state, dict) else None
        actor = getattr(principal, "key", None)
    return actor if isinstance(actor, str) and actor else "-"


def new_request_id() -> str:
    """64 random bits, hex: unique enough to find one request's lines among a day's, and cheap (a request id is
    no secret: `random`, reseeded in every forked or spawned process, rather than a system call per request)."""
    return "%016x" % _random_bits(64)  # noqa: UP031 - the fastest spelling on the hot path


class RequestLayer:
    """Wraps `app` (see the module's docstring). `state` is the app's: `state.runtime`, once started, holds the
    trusted proxies and the events."""

    def __init__(self, app: ASGIApp, state: Any, routes: RouteNames) -> None:
        self.app = app
        self.routes = routes
        self._state = state
        self._runtime: Any = None
        self._proxies = TrustedProxies()
        self._channel: Channel | None = None

    def __repr__(self) -> str:
        return f"RequestLayer({self.routes!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        runtime = getattr(self._state, "runtime", None)
        if runtime is not self._runtime:
            self._bind(runtime)
        request_id = self._request_id(scope)
        returned = (b"x-request-id", request_id.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), returned]
            await send(message)

        context = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            try:
                channel = self._channel
                if channel is not None and channel.sinks:
                    self._emit(channel, scope, status or CLIENT_CLOSED, time.perf_counter() - started, request_id)
            finally:
                REQUEST_ID.reset(context)

    def _bind(self, runtime: Any) -> None:
        """The running server's proxies and `http.request` channel (none before the lifespan started)."""
        self._runtime = runtime
        self._proxies = runtime.proxies if runtime is not None else TrustedProxies()
        self._channel = runtime.events.channel(HTTP_REQUEST) if runtime is not None else None

    def _request_id(self, scope: Scope) -> str:
        """A trusted proxy's sane `X-Request-Id`, else a new one."""
        if self._proxies.networks:
            for name, value in scope.get("headers", ()):
                if name == b"x-request-id":
                    client = scope.get("client")
                    if _SANE_ID.fullmatch(value) and self._proxies.trusts(client[0] if client else None):
                        return str(value.decode("ascii"))
                    break
        return new_request_id()

    def _emit(self, channel: Channel, scope: Scope, status: int, duration: float, request_id: str) -> None:
        method = scope["method"]
        detail = {
            "method": method if method in _METHODS else "OTHER",
            "route": self.routes(scope["path"]),
            "status": status,
            "duration": duration,
            "request_id": request_id,
        }
        channel.emit(actor_of(scope), "success" if status < 400 else "failure", self._proxies.client_ip(scope),
                     detail)
