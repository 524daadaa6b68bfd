"""The admin API's routes (`/admin/v1/...`): each parses the request, checks the permission (`admin/policy.py`),
calls one use case of `services.admin` as `Actor(<admin name>, "api", <source address>)` and renders the answer.
The use cases validate, change and audit; nothing here decides a rule of its own."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bankgate.admin import Actor, AdminError, ConflictError, NotFoundError
from bankgate.admin.policy import AdminPrincipal, Forbidden, require
from bankgate.adminapi.http import (
    Body,
    FieldError,
    Invalid,
    cursor_of,
    etag,
    expected_version,
    json_response,
    limit_of,
    page_response,
    problem_response,
    read_body,
    version_tag,
)
from bankgate.credentials.admins import AdminRecord, AdminStateError
from bankgate.credentials.clients import ClientRecord, ClientStateError
from bankgate.credentials.users import UserRecord, UserStateError
from bankgate.events import AuditEvent
from bankgate.web.errors import HttpError
from bankgate.web.headers import NO_STORE

if TYPE_CHECKING:
    from bankgate.config import Algorithm
    from bankgate.runtime import Runtime

__all__ = ["OPERATIONS", "PREFIX", "routes"]

PREFIX = "/admin/v1"

Handler = Callable[[Request, "Call"], Awaitable[Response]]

#: Words of a use case's message -> the request field it is about (the use cases speak of options and values).
_FIELD_WORDS = (
    (re.compile(r"scope|application", re.I), "scopes"),
    (re.compile(r"auth mode", re.I), "auth_mode"),
    (re.compile(r"overlap", re.I), "overlap_seconds"),
    (re.compile(r"username", re.I), "username"),
    (re.compile(r"cidr|address|network", re.I), "cidr"),
    (re.compile(r"signing request|csr", re.I), "csr_pem"),
    (re.compile(r"key-type|key type", re.I), "key_type"),
    (re.compile(r"days|validity", re.I), "days"),
    (re.compile(r"algorithm|alg\b", re.I), "alg"),
    (re.compile(r"limit", re.I), "limit"),
    (re.compile(r"since|until", re.I), "since"),
    (re.compile(r"name", re.I), "name"),
)


def _field_of(message: str) -> str:
    for pattern, field in _FIELD_WORDS:
        if pattern.search(message):
            return field
    return "body"


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler gets besides the request: who calls (for `require`), as whom to act, and the runtime."""

    principal: AdminPrincipal
    actor: Actor
    runtime: Runtime

    async def body(self, request: Request, allowed: tuple[str, ...]) -> Body:
        return Body(await read_body(request, self.runtime.settings.max_body_bytes), allowed)


def endpoint(permission: str | None, runtime: Runtime) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: the permission check first, then every refusal of a use case as a problem (403, 404, 409,
    422 with the field it concerns). An outage or a defect goes on to the app's ErrorBoundary (503, 500)."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            principal: AdminPrincipal = request.scope["state"]["principal"]
            source_ip = runtime.proxies.client_ip(request.scope)
            path = request.url.path
            try:
                if permission is not None:
                    require(principal, permission)
                return await handler(request, Call(principal, Actor(principal.name, "api", source_ip), runtime))
            except HttpError as error:
                return problem_response(error, path)
            except Forbidden as exc:
                return problem_response(HttpError(403, "forbidden", str(exc), extra={"permission": exc.permission}),
                                        path)
            except (NotFoundError, LookupError) as exc:
                message = str(exc).split("; see `", 1)[0]
                return problem_response(HttpError(404, "not_found", message), path)
            except ConflictError as exc:
                return problem_response(HttpError(412, "precondition_failed", f"{exc}, with its new ETag",
                                                  title="Precondition Failed"), path)
            except (ClientStateError, UserStateError, AdminStateError) as exc:
                return problem_response(HttpError(409, "conflict", str(exc), title="Conflict"), path)
            except (AdminError, ValueError) as exc:
                message = str(exc).replace("--", "")
                return problem_response(Invalid([FieldError(_field_of(message), message)]), path)

        run.__name__ = handler.__name__
        return run

    return wrap


#: A query parameter -> other words a use case's message may use for it.
_PARAMETER_WORDS = {"q": ("search",), "scope": ("application",), "auth_mode": ("auth mode",),
                    "expiring_within": ("expiring",)}


@contextlib.contextmanager
def _query(*parameters: str) -> Iterator[None]:
    """A listing's refusal (a bad filter, limit or cursor) as a 422 naming the query parameter it is about; an
    unknown user stays a 404."""
    try:
        yield
    except NotFoundError:
        raise
    except (AdminError, ValueError) as exc:
        message = str(exc).replace("--", "")
        lowered = message.lower()
        field = next((name for name in ("cursor", "limit", *parameters)
                      if re.search(rf"\b{re.escape(name)}\b", lowered)
                      or any(word in lowered for word in _PARAMETER_WORDS.get(name, ()))), "query")
        raise Invalid([FieldError(field, message)]) from None


def _text(request: Request, name: str) -> str | None:
    """A filter given in the query; an empty one is no filter."""
    return request.query_params.get(name) or None


def _created(document: dict[str, Any], location: str) -> Response:
    return json_response(document, 201, headers={"location": location})


def _versioned(record: ClientRecord | UserRecord | AdminRecord) -> Response:
    """A client, user or administrator with its ETag: id and version (see `http.version_tag`)."""
    return json_response(record.as_json(), tag=version_tag(record.id, record.version))


def _seconds(request: Request, name: str, example: str = "UNIX seconds, e.g. 1795314069") -> float | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise Invalid([FieldError(name, f"must be {example}")]) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise Invalid([FieldError(name, f"must be {example}")])
    return value


# -- handlers ----------------------------------------------------------------------------------------------------

async def me(request: Request, call: Call) -> Response:
    return json_response(call.principal.as_json())


async def list_clients(request: Request, call: Call) -> Response:
    with _query("status", "q", "auth_mode", "scope"):
        page = await call.runtime.services.admin.clients.page(
            limit=limit_of(request), cursor=cursor_of(request), status=_text(request, "status"),
            q=_text(request, "q"), auth_mode=_text(request, "auth_mode"), scope=_text(request, "scope"))
    return page_response(request, "clients", page, lambda r: r.as_json())


async def create_client(request: Request, call: Call) -> Response:
    body = await call.body(request, ("name", "scopes", "auth_mode"))
    name = body.string("name", required=True)
    scopes = body.strings("scopes", required=True)
    auth_mode = body.string("auth_mode", max_length=16) or "oauth2"
    body.check()
    assert name is not None and scopes is not None
    issued = await call.runtime.services.admin.clients.create(call.actor, name, scopes, auth_mode)
    return _created(issued.as_json(), f"{PREFIX}/clients/{issued.client.api_key}")


async def _client(request: Request, call: Call) -> ClientRecord:
    return await call.runtime.services.admin.clients.get(request.path_params["api_key"])


async def show_client(request: Request, call: Call) -> Response:
    return _versioned(await _client(request, call))


async def update_client(request: Request, call: Call) -> Response:
    current = await _client(request, call)
    version = expected_version(request, current.id, current.version)
    body = await call.body(request, ("name", "scopes", "auth_mode"))
    name = body.string("name")
    scopes = body.strings("scopes")
    auth_mode = body.string("auth_mode", max_length=16)
    if not body.errors and name is None and scopes is None and auth_mode is None:
        body.errors.append(FieldError("body", "nothing to change: send name, scopes and/or auth_mode"))
    body.check()
    record = await call.runtime.services.admin.clients.update(call.actor, current.api_key, name=name, scopes=scopes,
                                                              auth_mode=auth_mode, expected_version=version)
    return _versioned(record)


def _client_action(action: str) -> Handler:
    async def handler(request: Request, call: Call) -> Response:
        current = await _client(request, call)
        version = expected_version(request, current.id, current.version, required=False)
        clients = call.runtime.services.admin.clients
        method: Callable[..., Awaitable[ClientRecord]] = getattr(clients, action)
        return _versioned(await method(call.actor, current.api_key, expected_version=version))

    handler.__name__ = f"{action}_client"
    return handler


async def rotate_client_secret(request: Request, call: Call) -> Response:
    current = await _client(request, call)
    body = await call.body(request, ("overlap_seconds",))
    overlap = body.number("overlap_seconds", maximum=30 * 86400)
    body.check()
    issued = await call.runtime.services.admin.clients.rotate_secret(call.actor, current.api_key, overlap or 0.0)
    return json_response(issued.as_json())


async def delete_client(request: Request, call: Call) -> Response:
    current = await _client(request, call)
    version = expected_version(request, current.id, current.version)
    record = await call.runtime.services.admin.clients.delete(call.actor, current.api_key, expected_version=version)
    return json_response(record.as_json())


async def list_users(request: Request, call: Call) -> Response:
    with _query("status", "q", "environment"):
        page = await call.runtime.services.admin.users.page(
            limit=limit_of(request), cursor=cursor_of(request), status=_text(request, "status"),
            q=_text(request, "q"), environment=_text(request, "environment"))
    return page_response(request, "users", page, lambda r: r.as_json())


async def create_user(request: Request, call: Call) -> Response:
    body = await call.body(request, ("name", "username", "scopes"))
    name = body.string("name", required=True)
    username = body.string("username", max_length=64)
    scopes = body.strings("scopes") or []
    body.check()
    assert name is not None
    new = await call.runtime.services.admin.users.create(call.actor, name, username, scopes)
    return _created(new.as_json(), f"{PREFIX}/users/{new.user.username}")


async def _user(request: Request, call: Call) -> UserRecord:
    return await call.runtime.services.admin.users.get(request.path_params["username"])


async def show_user(request: Request, call: Call) -> Response:
    return _versioned(await _user(request, call))


async def update_user(request: Request, call: Call) -> Response:
    current = await _user(request, call)
    version = expected_version(request, current.id, current.version)
    body = await call.body(request, ("name", "scopes"))
    name = body.string("name")
    scopes = body.strings("scopes")
    if not body.errors and name is None and scopes is None:
        body.errors.append(FieldError("body", "nothing to change: send name and/or scopes"))
    body.check()
    record = await call.runtime.services.admin.users.update(call.actor, current.username, name=name, scopes=scopes,
                                                            expected_version=version)
    return _versioned(record)


def _user_action(action: str) -> Handler:
    async def handler(request: Request, call: Call) -> Response:
        current = await _user(request, call)
        version = expected_version(request, current.id, current.version, required=False)
        users = call.runtime.services.admin.users
        method: Callable[..., Awaitable[UserRecord]] = getattr(users, action)
        return _versioned(await method(call.actor, current.username, expected_version=version))

    handler.__name__ = f"{action}_user"
    return handler


async def new_passphrase(request: Request, call: Call) -> Response:
    current = await _user(request, call)
    new = await call.runtime.services.admin.users.new_passphrase(call.actor, current.username)
    return json_response(new.as_json())


async def delete_user(request: Request, call: Call) -> Response:
    current = await _user(request, call)
    version = expected_version(request, current.id, current.version)
    record = await call.runtime.services.admin.users.delete(call.actor, current.username, expected_version=version)
    return json_response(record.as_json())


# -- administrators ---------------------------------------------------------------------------------------------

async def list_admins(request: Request, call: Call) -> Response:
    with _query("status", "q"):
        page = await call.runtime.services.admin.admins.page(
            limit=limit_of(request), cursor=cursor_of(request), status=_text(request, "status"),
            q=_text(request, "q"))
    return page_response(request, "admins", page, lambda r: r.as_json())


async def create_admin(request: Request, call: Call) -> Response:
    body = await call.body(request, ("name", "role"))
    name = body.string("name", required=True, max_length=64)
    role = body.string("role", required=True, max_length=32)
    body.check()
    assert name is not None and role is not None
    issued = await call.runtime.services.admin.admins.create(call.actor, name, role)
    return _created(issued.as_json(), f"{PREFIX}/admins/{issued.admin.name}")


async def _admin(request: Request, call: Call) -> AdminRecord:
    return await call.runtime.services.admin.admins.get(request.path_params["name"])


async def show_admin(request: Request, call: Call) -> Response:
    return _versioned(await _admin(request, call))


async def update_admin(request: Request, call: Call) -> Response:
    current = await _admin(request, call)
    version = expected_version(request, current.id, current.version)
    body = await call.body(request, ("role",))
    role = body.string("role", required=True, max_length=32)
    body.check()
    assert role is not None
    return _versioned(await call.runtime.services.admin.admins.set_role(call.actor, current.name, role,
                                                                        expected_version=version))


def _admin_action(action: str) -> Handler:
    async def handler(request: Request, call: Call) -> Response:
        current = await _admin(request, call)
        version = expected_version(request, current.id, current.version, required=False)
        admins = call.runtime.services.admin.admins
        method: Callable[..., Awaitable[AdminRecord]] = getattr(admins, action)
        return _versioned(await method(call.actor, current.name, expected_version=version))

    handler.__name__ = f"{action}_admin"
    return handler


async def rotate_admin_secret(request: Request, call: Call) -> Response:
    current = await _admin(request, call)
    issued = await call.runtime.services.admin.admins.rotate_secret(call.actor, current.name)
    return json_response(issued.as_json())


async def delete_admin(request: Request, call: Call) -> Response:
    current = await _admin(request, call)
    version = expected_version(request, current.id, current.version)
    record = await call.runtime.services.admin.admins.delete(call.actor, current.name, expected_version=version)
    return json_response(record.as_json())


# -- IP allow lists ----------------------------------------------------------------------------------------------

def _listing_json(listing: Any) -> dict[str, Any]:
    return {
        "environment": listing.environment,
        "default": listing.default,
        "subject": listing.subject.as_json() if listing.subject is not None else None,
        "entries": [{"subject": label, **entry.as_json()} for label, entry in listing.entries],
        "without_entries": list(listing.without_entries),
    }


async def list_allowlist(request: Request, call: Call) -> Response:
    return json_response(_listing_json(await call.runtime.services.admin.ips.listing()))


async def show_allowlist(request: Request, call: Call) -> Response:
    listing = await call.runtime.services.admin.ips.listing(request.path_params["subject"])
    return json_response(_listing_json(listing))


async def allow_address(request: Request, call: Call) -> Response:
    body = await call.body(request, ("cidr",))
    cidr = body.string("cidr", required=True, max_length=64)
    body.check()
    assert cidr is not None
    subject, entry = await call.runtime.services.admin.ips.allow(call.actor, request.path_params["subject"], cidr)
    return _created({**subject.as_json(), **entry.as_json()},
                    f"{PREFIX}/ip-allowlist/{subject.label}")


async def remove_address(request: Request, call: Call) -> Response:
    subject, remaining = await call.runtime.services.admin.ips.remove(
        call.actor, request.path_params["subject"], request.path_params["cidr"])
    return json_response({**subject.as_json(), "entries": [entry.as_json() for entry in remaining]})


# -- certificates ------------------------------------------------------------------------------------------------

async def list_certificates(request: Request, call: Call) -> Response:
    expiring = _seconds(request, "expiring_within", "a number of seconds, e.g. 2592000 for 30 days")
    with _query("status", "expiring_within"):
        page = await call.runtime.services.admin.certs.page(
            limit=limit_of(request), cursor=cursor_of(request), username=request.path_params["username"],
            status=_text(request, "status"), expiring_within=expiring)
    return page_response(request, "certificates", page, lambda r: r.as_json())


async def issue_certificate(request: Request, call: Call) -> Response:
    body = await call.body(request, ("csr_pem", "days", "key_type"))
    csr = body.string("csr_pem", max_length=16384)
    days = body.number("days", minimum=1, maximum=825)
    key_type = body.string("key_type", max_length=8) or "ec"
    body.check()

    def deliver(issued: Any) -> dict[str, Any]:
        document: dict[str, Any] = issued.as_json()
        document.pop("private_key_pem", None)  # the generated key leaves once, inside the password-protected bundle
        return document

    issued, document = await call.runtime.services.admin.certs.issue(
        call.actor, request.path_params["username"], deliver, csr_pem=csr.encode() if csr else None,
        days=int(days or 365), key_type=key_type)
    return _created(document, f"{PREFIX}/certificates/{issued.serial}")


async def show_certificate(request: Request, call: Call) -> Response:
    record = await call.runtime.services.admin.certs.get(request.path_params["serial"])
    if "application/x-pem-file" in request.headers.get("accept", ""):
        response = Response(record.certificate_pem, media_type="application/x-pem-file")
        response.headers["cache-control"] = "no-store"
        response.headers["pragma"] = "no-cache"
        response.headers["etag"] = etag(record.as_json())
        return response
    document = {**record.as_json(), "certificate_pem": record.certificate_pem}
    return json_response(document, tag=etag(document))


async def revoke_certificate(request: Request, call: Call) -> Response:
    record, changed = await call.runtime.services.admin.certs.revoke(call.actor, request.path_params["serial"])
    return json_response({**record.as_json(), "revoked_now": changed})


# -- signing keys ------------------------------------------------------------------------------------------------

async def list_keys(request: Request, call: Call) -> Response:
    """The keys published in the JWKS (a handful: the active one and those retiring), newest first, in one page."""
    keys = await call.runtime.services.admin.keys.list()
    return json_response({"keys": [key.as_json() for key in keys], "next_cursor": None})


async def rotate_key(request: Request, call: Call) -> Response:
    body = await call.body(request, ("alg",))
    alg = body.string("alg", max_length=8)
    if alg is not None and alg not in ("RS256", "ES256", "EdDSA"):
        body.errors.append(FieldError("alg", "must be one of: RS256, ES256, EdDSA"))
    body.check()
    key = await call.runtime.services.admin.keys.rotate(call.actor, cast("Algorithm | None", alg))
    return _created(key.as_json(), f"{PREFIX}/signing-keys")


async def retire_key(request: Request, call: Call) -> Response:
    body = await call.body(request, ("rotate",))
    rotate = body.boolean("rotate") or False
    body.check()
    done = await call.runtime.services.admin.keys.retire(call.actor, request.path_params["kid"], rotate=rotate)
    return json_response(done.as_json())


# -- audit trail -------------------------------------------------------------------------------------------------

_AUDIT_FILTERS = ("since", "until", "event", "actor", "subject", "outcome")


def _audit_filters(request: Request) -> dict[str, Any]:
    """The audit trail's filters as the use case takes them; it checks them (`AuditQueries.query`)."""
    return {"since": _seconds(request, "since"), "until": _seconds(request, "until"),
            **{name: _text(request, name) for name in ("event", "actor", "subject", "outcome")}}


def _event_json(event: AuditEvent) -> dict[str, Any]:
    return {"at": event.at, "event": event.event, "actor": event.actor, "outcome": event.outcome,
            "source_ip": event.source_ip, "detail": dict(event.detail)}


async def audit_events(request: Request, call: Call) -> Response:
    """The audit trail, newest first, a page at a time."""
    filters = _audit_filters(request)
    await call.runtime.services.audit.flush()
    with _query(*_AUDIT_FILTERS):
        page = await call.runtime.services.admin.audit.page(limit=limit_of(request), cursor=cursor_of(request),
                                                            **filters)
    return page_response(request, "events", page, _event_json)


#: Export format -> (media type, file extension).
_EXPORTS = {"jsonl": ("application/x-ndjson", "jsonl"), "csv": ("text/csv; charset=utf-8", "csv")}


async def export_audit(request: Request, call: Call) -> Response:
    """Every matching event, oldest first, as a JSON Lines or CSV file, streamed a batch at a time."""
    chosen = request.query_params.get("format", "jsonl")
    if chosen not in _EXPORTS:
        raise Invalid([FieldError("format", "must be jsonl or csv")])
    filters = _audit_filters(request)
    await call.runtime.services.audit.flush()
    chunks = call.runtime.services.admin.audit.export(
        call.actor, format="csv" if chosen == "csv" else "jsonl", **filters)
    with _query(*_AUDIT_FILTERS):
        first = await anext(chunks, "")  # the filters are checked here, before any byte is sent

    async def body() -> AsyncIterator[bytes]:
        yield first.encode()
        async for chunk in chunks:
            yield chunk.encode()

    media_type, extension = _EXPORTS[chosen]
    headers = {name.decode(): value.decode() for name, value in NO_STORE}
    headers["content-disposition"] = f'attachment; filename="bankgate-audit.{extension}"'
    return StreamingResponse(body(), media_type=media_type, headers=headers)


_EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _dispatch(methods: dict[str, Callable[[Request], Awaitable[Response]]]) -> Callable[[Request], Awaitable[Response]]:
    """One route per path, answering every method: an unknown one is a 405 problem with `Allow`."""
    allow = ", ".join(methods)

    async def by_method(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            error = HttpError(405, "method_not_allowed", f"{request.method} is not allowed here; use {allow}",
                              title="Method Not Allowed")
            response = problem_response(error, request.url.path)
            response.headers["allow"] = allow
            return response
        return await handler(request)

    return by_method


#: Every operation: (method, path under PREFIX, handler, permission); `None`: any administrator.
OPERATIONS: list[tuple[str, str, Handler, str | None]] = [
    ("GET", "/me", me, None),
    ("GET", "/clients", list_clients, "clients:read"),
    ("POST", "/clients", create_client, "clients:write"),
    ("GET", "/clients/{api_key}", show_client, "clients:read"),
    ("PATCH", "/clients/{api_key}", update_client, "clients:write"),
    ("DELETE", "/clients/{api_key}", delete_client, "clients:write"),
    ("POST", "/clients/{api_key}/rotate-secret", rotate_client_secret, "clients:write"),
    *(("POST", f"/clients/{{api_key}}/{action}", _client_action(action), "clients:write")
      for action in ("disable", "enable", "revoke")),
    ("GET", "/users", list_users, "users:read"),
    ("POST", "/users", create_user, "users:write"),
    ("GET", "/users/{username}", show_user, "users:read"),
    ("PATCH", "/users/{username}", update_user, "users:write"),
    ("DELETE", "/users/{username}", delete_user, "users:write"),
    ("POST", "/users/{username}/new-passphrase", new_passphrase, "users:write"),
    *(("POST", f"/users/{{username}}/{action}", _user_action(action), "users:write")
      for action in ("disable", "enable", "revoke")),
    ("GET", "/users/{username}/certificates", list_certificates, "certs:read"),
    ("POST", "/users/{username}/certificates", issue_certificate, "certs:write"),
    ("GET", "/certificates/{serial}", show_certificate, "certs:read"),
    ("POST", "/certificates/{serial}/revoke", revoke_certificate, "certs:write"),
    ("GET", "/admins", list_admins, "admins:read"),
    ("POST", "/admins", create_admin, "admins:write"),
    ("GET", "/admins/{name}", show_admin, "admins:read"),
    ("PATCH", "/admins/{name}", update_admin, "admins:write"),
    ("DELETE", "/admins/{name}", delete_admin, "admins:write"),
    ("POST", "/admins/{name}/rotate-secret", rotate_admin_secret, "admins:write"),
    *(("POST", f"/admins/{{name}}/{action}", _admin_action(action), "admins:write")
      for action in ("disable", "enable")),
    ("GET", "/ip-allowlist", list_allowlist, "ips:read"),
    ("GET", "/ip-allowlist/{subject}", show_allowlist, "ips:read"),
    ("POST", "/ip-allowlist/{subject}", allow_address, "ips:write"),
    ("DELETE", "/ip-allowlist/{subject}/{cidr:path}", remove_address, "ips:write"),
    ("GET", "/signing-keys", list_keys, "keys:read"),
    ("POST", "/signing-keys/rotate", rotate_key, "keys:write"),
    ("POST", "/signing-keys/{kid}/retire", retire_key, "keys:write"),
    ("GET", "/audit", audit_events, "audit:read"),
    ("GET", "/audit/export", export_audit, "audit:read"),
]


def routes(runtime: Runtime) -> list[Route]:
    """The admin API's routes, one per path, each answering its methods (others: 405 with `Allow`)."""
    grouped: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for method, path, handler, permission in OPERATIONS:
        grouped.setdefault(PREFIX + path, {})[method] = endpoint(permission, runtime)(handler)
    return [Route(path, _dispatch(methods), methods=_EVERY_METHOD) for path, methods in grouped.items()]
