"""The admin API (`/admin/v1`): the administrative use cases of `services.admin` over HTTP, for the back office.

    request -> ErrorBoundary -> AdminAuthentication (allowed address, key pair or admin token)
            -> Idempotency-Key layer (responses kept sealed) -> routes (permission, parse, one use case, render)

Tokens for it come from `POST /oauth/token` with an administrator's key pair (`bankgate.adminapi.token`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Router

from bankgate.adminapi import token as _token  # registers the administrators' key family on the token endpoint
from bankgate.adminapi.auth import AdminAuthentication, AdminNetworks, AdminTokens
from bankgate.adminapi.http import problem_response
from bankgate.adminapi.routes import PREFIX, routes
from bankgate.idempotency import IdempotencyMiddleware, SealedStore
from bankgate.web.asgi import Receive, Scope, Send
from bankgate.web.errors import HttpError

if TYPE_CHECKING:
    from bankgate.runtime import Runtime

__all__ = ["PREFIX", "AdminApi"]

del _token


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    error = HttpError(404, "not_found", f"there is nothing at {request.url.path}; the admin API is described in "
                      "/openapi.json")
    response: Response = problem_response(error, request.url.path)
    await response(scope, receive, send)


class AdminApi:
    """The admin API of one server process, with what the token endpoint needs of it (`networks`, `tokens`)."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.networks = AdminNetworks(settings)
        self.tokens = AdminTokens(runtime)
        router = Router(routes=routes(runtime), default=_not_found)
        idempotent = IdempotencyMiddleware(
            router,
            store=SealedStore(runtime.idempotency, runtime.services.vault),  # answers may show a secret once
            retention=settings.idempotency_retention,
            lease=settings.idempotency_lease,
            mismatch_status=settings.idempotency_mismatch_status,
            max_body_bytes=settings.max_body_bytes,
            outages=runtime.outages,
            events=runtime.events,
        )
        self._app = AdminAuthentication(idempotent, runtime, self.tokens, self.networks)

    def __repr__(self) -> str:
        return "AdminApi()"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
