"""The server's one error boundary: an ASGI wrapper around the whole app (the hot OAuth routes, the Starlette
routes and the sandbox alike) that decides, in one place,

* what a failure that escapes a route becomes: a database or Redis outage (see `bankgate.outage`) is 503 with
  `Retry-After`, anything else a 500, both in the route's own error format, never a bare text page;
* which requests are refused before any route runs: two `Authorization` headers (RFC 7230 §3.2.2 allows a
  repeated header only for list-valued fields, RFC 7235 §4.2 gives Authorization one value), and credentials or
  tokens in the query string (RFC 6750 §2.3 and RFC 6749 §3.1/§2.3.1: URLs end up in logs, histories and
  `Referer` headers), each with a 400 that says where the value goes instead.

Each family of routes keeps the error format it already speaks: RFC 6749 §5.2 JSON on `/oauth/*` and the
server's own pages, RFC 7807 problem details on the certificate style's user endpoints and on the sandbox, the
guard's RFC 6750 JSON on `/api/v1/whoami`.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from bankgate.guard.core import GuardError
from bankgate.logs import REQUEST_ID
from bankgate.oauth.errors import OAuthError
from bankgate.oauth.userauth import UserAuthError
from bankgate.outage import DefectLog, OutageLog, unavailable_service
from bankgate.web.asgi import Message, Receive, Scope, Send
from bankgate.web.errors import OAUTH, PROBLEM, HttpError, send_error
from bankgate.web.headers import DuplicateHeader, single_header

__all__ = ["QUERY_SECRETS", "ErrorBoundary"]

RETRY_AFTER = 2
_BASIC = "the Authorization header: Basic base64(api_key:secret_key)"
#: Names refused in a query string, and where their value belongs.
QUERY_SECRETS: dict[str, str] = {
    "client_secret": _BASIC,
    "secret": _BASIC,
    "secret_key": _BASIC,
    "password": "the Authorization header: Basic base64(username:password), or the request body",
    "new_password": "the request body (JSON or form)",
    "passphrase": "the request body (JSON or form)",
    "token": "the request body (form or JSON: token=…)",
    "access_token": "the Authorization header: Bearer <access token>",
    "refresh_token": "the request body (form or JSON)",
    "assertion": "the request body (form or JSON)",
}
_NAMES = frozenset(name.encode() for name in QUERY_SECRETS)
_SANDBOX = ("/api/v1/accounts", "/api/v1/payments")


def query_secret(query: bytes) -> str | None:
    """The first credential-bearing parameter name in a raw query string, if any (names compared ignoring case,
    percent-encoded ones decoded)."""
    for pair in query.split(b"&"):
        name = pair.partition(b"=")[0].lower()
        if b"%" in name or b"+" in name:
            name = unquote_to_bytes(name.replace(b"+", b" ")).lower()
        name = name.strip()
        if name in _NAMES:
            return name.decode()
    return None


class _Unanswered(Response):
    """What Starlette's last-resort handler sends: nothing, so the exception reaches the boundary unanswered."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


async def defer_to_boundary(request: Request, exc: Exception) -> Response:
    """Starlette's handler for `Exception`: answer nothing and let Starlette re-raise to the boundary."""
    return _Unanswered()


class ErrorBoundary:
    """Wraps `app` (see the module's docstring). `outages` and `defects` are callables returning the running
    server's logs: an outage is one line and a count, a defect its traceback once and then a count."""

    def __init__(
        self, app: Callable[..., Any], outages: Callable[[], OutageLog], defects: Callable[[], DefectLog]
    ) -> None:
        self.app = app
        self._outages = outages
        self._defects = defects

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            single_header(scope, b"authorization")
        except DuplicateHeader:
            await _answer(scope, send, 400, "send exactly one Authorization header", malformed_header=True)
            return
        query = scope.get("query_string")
        if query and (name := query_secret(query)) is not None:
            await _answer(
                scope, send, 400,
                f"never put {name} in the URL (URLs are logged and cached): send it in {QUERY_SECRETS[name]}",
            )
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return  # the client went away mid-request: nobody to answer, nothing wrong with the server
        except DuplicateHeader as exc:
            if started:
                raise
            await _answer(scope, send, 400, f"send exactly one {exc.name} header", malformed_header=True)
        except Exception as exc:
            service = unavailable_service(exc)
            if service is not None:
                self._outages().refused(service, exc)
                if not started:
                    await _answer(scope, send, 503, f"the server cannot reach its {service} right now; retry in "
                                  f"{RETRY_AFTER} s")
                return  # a response cut short: the client sees the connection end, the log has the outage
            if started:
                raise
            # The path, never the query string; the request id finds the request's other lines.
            self._defects().failed(exc, f"{scope.get('method')} {scope.get('path')} failed (request "
                                        f"{REQUEST_ID.get() or '-'})")
            await _answer(scope, send, 500, "the server failed to handle this request; retry later")


def _family(path: str) -> str:
    if path.startswith("/oauth/"):
        return "oauth"
    if path.startswith(("/api/v1/users/", "/api/v1/authorizations/")):
        return "user"
    if path == "/api/v1/whoami":
        return "guard"
    if path.startswith(_SANDBOX):
        return "sandbox"
    if path.startswith("/admin/"):
        return "admin"
    return "oauth"  # discovery, health and unknown paths answer errors in RFC 6749 form (see app.py)


async def _answer(scope: Scope, send: Send, status: int, message: str, *, malformed_header: bool = False) -> None:
    """`status` (400, 500 or 503) with `message`, in the error format of the route `scope` is for (a malformed
    header on the certificate style's routes: the provider's `AuthorizationParseFailure` list)."""
    retry_after = RETRY_AFTER if status == 503 else None
    path = scope.get("path", "")
    family = _family(path)
    if malformed_header and family == "sandbox":
        family = "guard"  # the sandbox's credentials are the guard's business: its answer, as for any other
    code = {400: "invalid_request", 503: "temporarily_unavailable"}.get(status, "server_error")
    if family == "guard":
        await send_error(send, GuardError(status, code, message, retry_after=retry_after), OAUTH)
    elif family == "user":
        error = UserAuthError(status, HTTPStatus(status).phrase, message, reason="refused", retry_after=retry_after,
                              parse_failure=malformed_header)
        await send_error(send, error, PROBLEM, instance=path)
    elif family == "sandbox":
        await send_error(send, HttpError(status, code, message, retry_after=retry_after), PROBLEM)
    elif family == "admin":
        await send_error(send, HttpError(status, code, message, retry_after=retry_after), PROBLEM, instance=path)
    else:
        await send_error(send, OAuthError(code, message, status, retry_after=retry_after), OAUTH)
