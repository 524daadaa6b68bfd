"""create_app(settings) -> the ASGI application: the OAuth endpoints, discovery, health, the web console."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bankgate import tracing
from bankgate.apidocs import routes as api_docs_routes
from bankgate.boundary import ErrorBoundary, defer_to_boundary
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Settings
from bankgate.console import console_mount
from bankgate.health import RETRY_AFTER
from bankgate.oauth.account import CertificateDownloadEndpoint, CertificateListEndpoint, PasswordResetEndpoint
from bankgate.oauth.authorize import AuthorizeEndpoint
from bankgate.oauth.discovery import jwks_endpoint, metadata_endpoint, openapi_endpoint
from bankgate.oauth.introspect import IntrospectionEndpoint
from bankgate.oauth.revocation_feed import RevocationFeedEndpoint
from bankgate.oauth.revoke import RevocationEndpoint
from bankgate.oauth.token import TokenEndpoint
from bankgate.oauth.whoami import WhoAmIEndpoint
from bankgate.outage import DefectLog, OutageLog
from bankgate.request_layer import RequestLayer
from bankgate.routenames import RouteNames, route_names
from bankgate.runtime import Runtime
from bankgate.web.asgi import ASGIApp, Receive, Scope, Send

__all__ = ["MIDDLEWARE", "BankgateApp", "Middleware", "create_app"]


_NO_STORE = {"Cache-Control": "no-store"}


async def health(request: Request) -> JSONResponse:
    """Liveness, with the environment and the active key id (no I/O)."""
    runtime: Runtime = request.app.state.runtime
    return JSONResponse(
        {"status": "ok", "environment": runtime.settings.environment, "signing_kid": runtime.keys.active.kid},
        headers=_NO_STORE,
    )


async def livez(request: Request) -> JSONResponse:
    """The process answers (no I/O)."""
    return JSONResponse({"status": "ok"}, headers=_NO_STORE)


async def readyz(request: Request) -> JSONResponse:
    """Whether this instance can serve: database, Redis (when used), signing keys, migrations (bankgate.health)."""
    runtime: Runtime = request.app.state.runtime
    ready, checks = await runtime.readiness.check()
    if ready:
        return JSONResponse({"status": "ready", "checks": checks}, headers=_NO_STORE)
    return JSONResponse({"status": "unavailable", "checks": checks}, 503,
                        headers={**_NO_STORE, "Retry-After": str(RETRY_AFTER)})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        message = f"{request.method} is not allowed here; use {headers.get('Allow', 'another method')}"
    elif exc.status_code == 404:
        message = f"there is nothing at {request.url.path}; see /.well-known/oauth-authorization-server"
    else:
        message = str(exc.detail)
    return JSONResponse({"error": "invalid_request", "error_description": message}, exc.status_code,
                        headers=headers)


_SANDBOX_PREFIXES = ("/api/v1/accounts", "/api/v1/payments")
_ADMIN_PREFIX = "/admin/"
#: What a listener of `--admin-port` serves, and what the public listener then refuses (404); with
#: `BANKGATE_METRICS=admin`, /metrics too.
_ADMIN_SURFACE = ("/admin/", "/console")
_METRICS_PATH = "/metrics"
_SANDBOX_ROOTS = frozenset({"accounts", "payments"})

#: An outer middleware: given the app inside it, the app to call instead (a Starlette-style middleware class
#: taking `app` first, or a `functools.partial` of one with its options).
Middleware = Callable[[ASGIApp], ASGIApp]

#: The server's own outer middleware, outermost first, inside the `ErrorBoundary` and around every route (the
#: token endpoints and the sandbox, dispatched directly, as much as the Starlette routes): a server-wide
#: concern (metrics, tracing) is one line here.
MIDDLEWARE: list[Middleware] = []


class BankgateApp:
    """One list of outer ASGI middleware that every request passes: the `RequestLayer` first (request id, the
    `http.request` event), the `ErrorBoundary` (outages answered 503, defects 500, duplicate Authorization and
    secrets in URLs 400), then `MIDDLEWARE`, then those given to `create_app`; inside them, requests to the token
    endpoints and the sandbox are sent to them directly, all others to Starlette.

    The token endpoints are plain ASGI apps and also registered as Starlette routes (so other methods get a
    405 and the routing stays in one list); the direct dispatch only skips the framework layers on the hot paths,
    never the outer middleware.
    """

    def __init__(
        self,
        starlette: Starlette,
        direct: dict[tuple[str, str], ASGIApp],
        middleware: Sequence[Middleware] = (),
        *,
        admin_port: int | None = None,
        admin_surface: tuple[str, ...] = _ADMIN_SURFACE,
        routes: RouteNames | None = None,
    ) -> None:
        self.starlette = starlette
        self.state = starlette.state
        self._direct = direct
        app: ASGIApp = self._dispatch
        for wrap in reversed([*MIDDLEWARE, *middleware]):
            app = wrap(app)
        self._idle_outages = OutageLog()  # only until the runtime exists
        self._idle_defects = DefectLog()
        self._outer = RequestLayer(ErrorBoundary(app, self._outages, self._defects), self.state,
                                   routes or route_names(starlette.routes))
        self._admin_port = admin_port
        self._admin_surface = admin_surface

    def _on_admin_port(self, scope: Scope) -> bool:
        """Whether the request came in on the `--admin-port` listener (the local address's port)."""
        server = scope.get("server")
        return server is not None and server[1] == self._admin_port

    async def _not_here(self, scope: Scope, receive: Receive, send: Send) -> None:
        """404 for what the listener does not serve: /admin and /console on the public one, the rest on the
        admin one."""
        request = Request(scope, receive)
        response = await _http_error(request, HTTPException(404))
        await response(scope, receive, send)

    def _outages(self) -> OutageLog:
        runtime = getattr(self.state, "runtime", None)
        return runtime.outages if runtime is not None else self._idle_outages

    def _defects(self) -> DefectLog:
        runtime = getattr(self.state, "runtime", None)
        return runtime.defects if runtime is not None else self._idle_defects

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._outer(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if self._admin_port is not None and self._on_admin_port(scope) != path.startswith(self._admin_surface):
                await self._not_here(scope, receive, send)
                return
            endpoint = self._direct.get((scope["method"], path))
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
            if path.startswith(_ADMIN_PREFIX):
                await self.state.runtime.admin_api(scope, receive, send)
                return
            if path.startswith(_SANDBOX_PREFIXES) and path.partition("/api/v1/")[2].split("/")[0] in _SANDBOX_ROOTS:
                sandbox = self.state.runtime.sandbox
                if sandbox is not None:
                    await sandbox(scope, receive, send)
                    return
        await self.starlette(scope, receive, send)


def create_app(
    settings: Settings, *, issuer: str | None = None, clock: Clock = SYSTEM, middleware: Sequence[Middleware] = ()
) -> ASGIApp:
    """The bankgate server. `issuer` defaults to `settings.issuer`, else to http://host:port from settings; `clock`
    is what it reads the time from (tests pass a `ManualClock`); `middleware` (outermost first) wraps every route,
    inside the error boundary and after `MIDDLEWARE`."""
    issuer_url = (issuer or settings.issuer_for(settings.host, settings.port)).rstrip("/")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, issuer_url, clock=clock)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()

    # Any other exception goes, unanswered, to the ErrorBoundary around the whole app.
    starlette = Starlette(lifespan=lifespan,
                          exception_handlers={HTTPException: _http_error, Exception: defer_to_boundary})
    state = starlette.state
    direct: dict[tuple[str, str], ASGIApp] = {
        ("POST", "/oauth/token"): TokenEndpoint(state),
        ("POST", "/oauth/introspect"): IntrospectionEndpoint(state),
        ("POST", "/oauth/revoke"): RevocationEndpoint(state),
        ("GET", "/api/v1/authorizations/authorize"): AuthorizeEndpoint(state),
        ("GET", "/api/v1/whoami"): WhoAmIEndpoint(state),
    }
    for (method, path), endpoint in direct.items():
        starlette.router.routes.append(Route(path, endpoint, methods=[method]))
    starlette.router.routes.extend(
        [
            Route("/oauth/revocations", RevocationFeedEndpoint(state), methods=["GET"]),
            Route("/api/v1/users/{username}/password", PasswordResetEndpoint(state), methods=["POST"]),
            Route("/api/v1/users/{username}/certificates", CertificateListEndpoint(state), methods=["GET"]),
            Route("/api/v1/users/{username}/certificates/{serial}", CertificateDownloadEndpoint(state),
                  methods=["GET"]),
            Route("/.well-known/jwks.json", jwks_endpoint, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server", metadata_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/livez", livez, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *api_docs_routes(),
            console_mount(state),
        ]
    )
    admin_surface: tuple[str, ...] = _ADMIN_SURFACE
    if settings.metrics != "off":
        from bankgate.metrics import metrics_route

        starlette.router.routes.append(metrics_route())
        if settings.metrics == "admin":
            admin_surface = (*_ADMIN_SURFACE, _METRICS_PATH)
    # The bounded names of every route, for the `http.request` event (logs, metrics) and the spans.
    names = route_names(starlette.router.routes, sandbox=settings.environment == "sandbox")
    # Tracing's request span (none when BANKGATE_TRACING is off) around every layer given here.
    layers = [*tracing.request_layers(settings, names), *middleware]
    return BankgateApp(starlette, direct, layers, admin_port=settings.admin_port, admin_surface=admin_surface,
                       routes=names)
