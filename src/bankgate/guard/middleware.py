"""`GuardMiddleware`: a pure ASGI middleware (in the style of Starlette's own) that lets through only requests a
`Guard` accepts, and puts the `Principal` at `scope["state"]["principal"]` (`request.state.principal` in
Starlette and FastAPI). Usable in front of any ASGI app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bankgate.guard.core import Guard, GuardError
from bankgate.guard.verifier import Principal
from bankgate.web.asgi import ASGIApp, Receive, Scope, Send
from bankgate.web.errors import OAUTH, send_error

__all__ = ["GuardMiddleware", "principal_of"]



def principal_of(scope: Scope) -> Principal | None:
    """The principal the guard put on this request, if any."""
    state = scope.get("state")
    principal = state.get("principal") if isinstance(state, dict) else None
    return principal if isinstance(principal, Principal) else None


class GuardMiddleware:
    """Refuse unauthenticated HTTP requests with the RFC 6750 answer; pass the rest on with their principal.

    `guard` is a `Guard` (e.g. `Guard.remote(issuer)` for an API apart from the bankgate server) or a callable
    returning one, for apps whose guard exists only once they have started. A path equal to or under one of `exclude`
    (e.g. "/healthz" lets "/healthz" and "/healthz/live" through, not "/healthzdump") passes unauthenticated, unless
    it has "." or ".." segments that some apps resolve elsewhere; with `optional`, a request without credentials
    passes too (without a principal), while bad credentials are still refused.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: Guard | Callable[[], Guard],
        exclude: Iterable[str] = (),
        optional: bool = False,
    ) -> None:
        self.app = app
        self._guard = guard
        self._exclude = tuple(exclude)
        self._exclude_under = tuple(path if path.endswith("/") else path + "/" for path in self._exclude)
        self._optional = optional

    def _current(self) -> Guard:
        return self._guard if isinstance(self._guard, Guard) else self._guard()

    def _excluded(self, path: str) -> bool:
        if not (path in self._exclude or path.startswith(self._exclude_under)):
            return False
        return not any(segment in (".", "..") for segment in path.split("/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._exclude and self._excluded(scope["path"])):
            await self.app(scope, receive, send)
            return
        guard = self._current()
        try:
            principal = await guard.authenticate(scope)
        except GuardError as err:
            if not (self._optional and err.status == 401 and err.error is None and _no_credentials(scope)):
                await send_error(send, err.for_realm(guard.realm, basic=guard.accepts_basic), OAUTH)
                return
        else:
            state = scope.get("state")
            if not isinstance(state, dict):
                state = scope["state"] = {}
            state["principal"] = principal
        await self.app(scope, receive, send)


def _no_credentials(scope: Scope) -> bool:
    return not any(name == b"authorization" and value.strip() for name, value in scope["headers"])
