"""What every console page shares: the session cookie and `require_session`, CSRF tokens, the form reader, the
templates, the static files and the security headers. A group of pages (an `Area`: the M2M user's own pages, an
administrator's) registers its principal kind, sign-in page and navigation, and writes handlers decorated with
`page(kind)`; nothing here changes for a new area.

* The cookie `bankgate_console` holds a random session id (`sessions.py` keeps its SHA-256): HttpOnly,
  SameSite=Strict, `Path=/console`, Secure when the request came over TLS (itself, or behind a trusted proxy that
  says so: `net.TrustedProxies.scheme`).
* Every form carries `csrf_token`, an HMAC (the vault's key) of the session id, or before a session exists of a
  random value in the `bankgate_console_form` cookie; every POST is checked (constant time) and refused with a 403
  page otherwise.
* Every answer carries a strict Content-Security-Policy (no inline script or style anywhere), `X-Frame-Options`,
  `Referrer-Policy: no-referrer`, `X-Content-Type-Options: nosniff`; pages `Cache-Control: no-store`, static files
  a year's cache under a URL that names their content.
"""

from __future__ import annotations

import email.policy
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from bankgate.console.sessions import ConsoleSession, ConsoleSessions
from bankgate.request_layer import tell_actor
from bankgate.runtime import Runtime
from bankgate.web.asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "AREAS",
    "COOKIE",
    "CSP",
    "FORM_COOKIE",
    "Area",
    "FormError",
    "HtmlErrors",
    "Page",
    "SecurityHeaders",
    "SessionEnded",
    "console_of",
    "page",
    "register_area",
    "require_session",
    "static_file",
]

COOKIE = "bankgate_console"
#: Before a session exists (the sign-in forms), the CSRF token is bound to a random value in this cookie.
FORM_COOKIE = "bankgate_console_form"
PATH = "/console"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
_NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
_MAX_FIELDS = 32


@dataclass(frozen=True, slots=True)
class Area:
    """A group of console pages for one kind of principal: where to sign in, where to land, what the navigation
    lists (label, path)."""

    kind: str
    title: str
    sign_in: str
    home: str
    nav: tuple[tuple[str, str], ...] = ()


AREAS: dict[str, Area] = {}


def register_area(area: Area) -> Area:
    AREAS[area.kind] = area
    return area


class SecurityHeaders:
    """Pure ASGI: the security headers on every console answer, `no-store` on all but those that set their own
    `Cache-Control` (the static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.extend(_NO_STORE)
                message = {**message, "headers": [*headers, *_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OURS = frozenset(name for name, _ in _HEADERS)


# -- static files ---------------------------------------------------------------------------------------------

_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".png": "image/png",
          ".svg": "image/svg+xml"}


@dataclass(frozen=True, slots=True)
class _Static:
    body: bytes
    content_type: str
    version: str


def _load_static() -> dict[str, _Static]:
    files: dict[str, _Static] = {}
    for entry in resources.files("bankgate.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            files[entry.name] = _Static(body, _TYPES[suffix], hashlib.sha256(body).hexdigest()[:12])
    return files


_STATIC = _load_static()


def static_url(name: str) -> str:
    """The file's URL, naming its content: a changed file is a new URL, so a year's caching is safe."""
    return f"{PATH}/static/{name}?v={_STATIC[name].version}"


async def static_file(request: Request) -> Response:
    found = _STATIC.get(request.path_params["name"])
    if found is None:
        return await not_found(request)
    etag = f'"{found.version}"'
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.content_type, headers=headers)


# -- the console's state on the app ---------------------------------------------------------------------------


class Console:
    """Per app: its templates and, once the runtime exists, its session store."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self._sessions: ConsoleSessions | None = None
        self.templates = Environment(
            loader=PackageLoader("bankgate.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals["static_url"] = static_url

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self._state.runtime
        return runtime

    @property
    def sessions(self) -> ConsoleSessions:
        runtime = self.runtime
        if self._sessions is None:
            self._sessions = ConsoleSessions(
                runtime.services.store, idle_timeout=runtime.settings.console_idle_timeout,
                lifetime=runtime.settings.console_session_lifetime, clock=runtime.services.clock,
            )
        return self._sessions

    def csrf_token(self, basis: str) -> str:
        return self.runtime.services.vault.hash_secret(f"console-csrf\0{basis}")


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


# -- sessions and pages ---------------------------------------------------------------------------------------


class SessionEnded(Exception):
    """No live session of the wanted kind: the answer is a 303 to the area's sign-in page."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class FormError(Exception):
    """The form could not be read (wrong content type, too large, a field twice): a 400 page says so."""


async def require_session(request: Request, kind: str) -> tuple[str, ConsoleSession]:
    """The live session of a `kind` principal this request carries, with its id; else `SessionEnded` (to the
    area's sign-in page, saying "your session ended" when a cookie was presented)."""
    area = AREAS[kind]
    session_id = request.cookies.get(COOKIE)
    if session_id:
        session = await console_of(request).sessions.find(session_id)
        if session is not None and session.principal_kind == kind:
            tell_actor(request.scope, f"{kind}:{session.principal_id}")
            return session_id, session
        raise SessionEnded(f"{area.sign_in}?ended=1")
    raise SessionEnded(area.sign_in)


@dataclass(slots=True)
class Page:
    """One request to a console page: what a handler reads (the parsed form of a POST, the session) and how it
    answers (`render`, `redirect`)."""

    request: Request
    console: Console
    area: Area
    source_ip: str | None
    csrf_token: str
    session: ConsoleSession | None = None
    session_id: str | None = field(default=None, repr=False)
    form: dict[str, str] = field(default_factory=dict, repr=False)
    #: The uploaded files of a multipart form, by field name (only the forms that ask for a file send one).
    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    _cookies: list[tuple[str, str]] = field(default_factory=list, repr=False)

    @property
    def runtime(self) -> Runtime:
        return self.console.runtime

    @property
    def secure(self) -> bool:
        return self.runtime.proxies.scheme(self.request.scope) == "https"

    def render(self, template: str, status: int = 200, headers: dict[str, str] | None = None,
               **context: Any) -> Response:
        html = self.console.templates.get_template(template).render(
            area=self.area, session=self.session, csrf_token=self.csrf_token, path=self.request.url.path,
            **context,
        )
        return self._finish(HTMLResponse(html, status, headers=headers))

    def redirect(self, location: str) -> Response:
        return self._finish(RedirectResponse(location, 303))

    def _finish(self, response: Response) -> Response:
        for name, value in self._cookies:
            if value:
                response.set_cookie(name, value, path=PATH, httponly=True, samesite="strict", secure=self.secure)
            else:
                response.delete_cookie(name, path=PATH, httponly=True, samesite="strict", secure=self.secure)
        return response

    async def sign_in(self, principal_kind: str, principal_id: str) -> None:
        """Open a new session (never reuse one the browser brought: that one ends) and set its cookie on the
        answer."""
        brought = self.request.cookies.get(COOKIE)
        if brought:
            await self.console.sessions.close(brought)
        session_id, session = await self.console.sessions.open(principal_kind, principal_id, self.source_ip)
        self.session, self.session_id = session, session_id
        self.csrf_token = self.console.csrf_token(session_id)
        self._cookies.append((COOKIE, session_id))

    async def sign_out(self) -> None:
        """End the session server-side and clear its cookie."""
        if self.session_id is not None:
            await self.console.sessions.close(self.session_id)
        self.session = self.session_id = None
        self._cookies.append((COOKIE, ""))

    def field(self, name: str, limit: int = 256) -> str:
        return self.form.get(name, "")[:limit]


Handler = Callable[[Page], Awaitable[Response]]


def page(kind: str, *, public: bool = False) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A console page of `kind`'s area. Without `public`, a live session of that kind is required (else a 303 to
    sign-in). Every POST must carry the form's `csrf_token` (else a 403 page); the form is parsed before the
    handler runs."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            console = console_of(request)
            area = AREAS[kind]
            runtime = console.runtime
            source_ip = runtime.proxies.client_ip(request.scope)
            new_form_cookie: str | None = None
            session: ConsoleSession | None = None
            session_id: str | None = None
            if public:
                basis = request.cookies.get(FORM_COOKIE, "")
                if not 16 <= len(basis) <= 128:
                    basis = new_form_cookie = secrets.token_urlsafe(32)
            else:
                try:
                    session_id, session = await require_session(request, kind)
                except SessionEnded as ended:
                    return RedirectResponse(ended.location, 303)
                basis = session_id
            current = Page(request, console, area, source_ip, console.csrf_token(basis), session, session_id)
            if new_form_cookie is not None:
                current._cookies.append((FORM_COOKIE, new_form_cookie))
            if request.method == "POST":
                try:
                    current.form, current.files = await _read_form(request, runtime.settings.max_body_bytes)
                except FormError as exc:
                    return current.render("error.html", 400, title="The form could not be read", message=str(exc))
                given = current.form.get("csrf_token", "")
                if new_form_cookie is not None or not hmac.compare_digest(given.encode(),
                                                                          current.csrf_token.encode()):
                    runtime.audit("console.csrf_refused", "anonymous", "failure", source_ip,
                                  {"path": request.url.path})
                    return current.render(
                        "error.html", 403, title="This form has expired",
                        message="The form did not come from this console page, or it is too old. Go back, reload "
                        "the page and send it again.",
                    )
            return await handler(current)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap


async def _read_form(request: Request, limit: int) -> tuple[dict[str, str], dict[str, bytes]]:
    """The form's fields (and, for `multipart/form-data`, its files): a field twice, more than `_MAX_FIELDS`
    fields, a body over `limit` bytes or text that is not UTF-8 is a `FormError`."""
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    if kind not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise FormError("send the form from the console page (application/x-www-form-urlencoded or "
                        "multipart/form-data)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FormError(f"the form is larger than {limit} bytes")
    if kind == "multipart/form-data":
        return _multipart(content_type, bytes(body))
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=_MAX_FIELDS,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise FormError("the form is not valid UTF-8 form data; send it from the console page") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise FormError(f"the field {name} was sent twice")
        form[name] = value
    return form, {}


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """RFC 7578 through the standard library's MIME parser (the body is already bounded in size)."""
    unreadable = FormError("the form is not valid multipart/form-data; send it from the console page")
    if "boundary=" not in content_type or "\r" in content_type or "\n" in content_type:
        raise unreadable
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart() or message.defects:
        raise unreadable
    form: dict[str, str] = {}
    files: dict[str, bytes] = {}
    parts = list(message.iter_parts())
    if len(parts) > _MAX_FIELDS:
        raise FormError(f"the form has more than {_MAX_FIELDS} fields")
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise unreadable
        if name in form or name in files:
            raise FormError(f"the field {name} was sent twice")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if part.get_filename() is not None:
            files[name] = data
            continue
        try:
            form[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f"the field {name} is not UTF-8 text; send it from the console page") from None
    return form, files


def _error_page(console: Console, path: str, status: int, title: str, message: str,
                headers: dict[str, str] | None = None) -> Response:
    html = console.templates.get_template("error.html").render(
        area=None, session=None, csrf_token="", path=path, title=title, message=message,
    )
    return HTMLResponse(html, status, headers=headers)


async def not_found(request: Request) -> Response:
    return _error_page(console_of(request), request.url.path, 404, "Nothing here",
                       "There is no console page at this address.")


class HtmlErrors:
    """Pure ASGI: what the router raises (405 for another method) answered as a console page, inside the
    security headers, instead of the API's JSON."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except HTTPException as exc:
            allowed = (exc.headers or {}).get("Allow")
            if allowed:  # Starlette lists a route's methods in set order
                allowed = ", ".join(sorted(method.strip() for method in allowed.split(",")))
            message = (f"This page answers {allowed} only." if exc.status_code == 405 and allowed
                       else str(exc.detail))
            response = _error_page(self.console, scope.get("path", ""), exc.status_code,
                                   HTTPStatus(exc.status_code).phrase, message, dict(exc.headers or {}))
            await response(scope, receive, send)
