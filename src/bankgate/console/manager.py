"""The integration manager's console pages (`/console/admin`): an administrator signs in with name, password and a
TOTP code, then onboards and manages clients, M2M users, their certificates and IP allow lists, the signing keys,
and reads the audit trail.

Every page reads the administrator's record again and asks `admin.policy.require` for the permission it needs, so
a disabled administrator is signed out at the next click and an auditor's POST is refused with a 403 page whatever
the navigation showed; every change is one call of `services.admin.*` as `Actor(<name>, "console", <address>)`,
which validates and writes the audit event. Secrets (a client's secret key, a user's initial passphrase, a PKCS#12
password) appear only in the answer to the POST that made them: never in a URL, a redirect or a log.
"""

from __future__ import annotations

import base64
import calendar
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bankgate.admin import Actor, AdminError, ConflictError, NotFoundError
from bankgate.admin.policy import AdminPrincipal, Forbidden, permissions_for, require
from bankgate.adminapi.auth import AdminNetworks
from bankgate.console.web import Area, Page, page, register_area
from bankgate.credentials.admins import AdminAuthError, AdminStateError, AdminThrottled
from bankgate.credentials.clients import ClientStateError
from bankgate.credentials.users import UserStateError

__all__ = ["AREA", "routes"]

HOME = "/console/admin"
AREA = register_area(Area(
    kind="admin", title="Integration manager", sign_in=f"{HOME}/sign-in", home=HOME,
    nav=(("Dashboard", HOME), ("Clients", f"{HOME}/clients"), ("Users", f"{HOME}/users"),
         ("Signing keys", f"{HOME}/keys"), ("Audit trail", f"{HOME}/audit")),
))
#: The permission each navigation entry needs (the server checks it again on the page).
_NAV_PERMISSION = {f"{HOME}/clients": "clients:read", f"{HOME}/users": "users:read", f"{HOME}/keys": "keys:read",
                   f"{HOME}/audit": "audit:read"}
_SIGN_IN_FAILED = ("Sign-in failed: check your name, your password and the code your authenticator app shows now "
                   "(each code works once).")
_STATUSES = ("active", "disabled", "revoked", "deleted")
_PAGE_SIZE = 25
EXPIRING_WITHIN = 30 * 86400


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds)) if seconds else ""


@dataclass(frozen=True, slots=True)
class Manager:
    """The signed-in administrator on this request: what it may do (`principal`), as whom it acts (`actor`)."""

    principal: AdminPrincipal
    actor: Actor

    def can(self, permission: str) -> bool:
        return permission in self.principal.permissions


def _render(current: Page, who: Manager | None, template: str, status: int = 200, **context: Any) -> Response:
    nav = [(label, href) for label, href in AREA.nav
           if who is not None and (href not in _NAV_PERMISSION or who.can(_NAV_PERMISSION[href]))]
    return current.render(template, status, nav=nav, who=who, when=_when, **context)


def _error(current: Page, who: Manager | None, status: int, title: str, message: str) -> Response:
    return _render(current, who, "error.html", status, title=title, message=message)


def _networks(current: Page) -> AdminNetworks:
    return AdminNetworks(current.runtime.settings)


async def _manager(current: Page) -> Manager | None:
    """The session's administrator, read again: None (and the session ends) once it is no longer active here."""
    assert current.session is not None
    runtime = current.runtime
    admin = await runtime.services.admins.find_by_id(current.session.principal_id)
    if admin is None or not admin.active or admin.environment != runtime.settings.environment:
        await current.sign_out()
        return None
    principal = AdminPrincipal(admin, permissions_for(admin), "console")
    return Manager(principal, Actor(admin.name, "console", current.source_ip))


ManagerHandler = Callable[[Page, Manager], Awaitable[Response]]


def manager_page(permission: str | None) -> Callable[[ManagerHandler], Callable[[Request], Awaitable[Response]]]:
    """A page of the manager's area needing `permission` (for GET and POST alike: a confirmation page of a change
    needs the change's permission). A use case's refusal is a page saying what to do: 404, 409, 400."""

    def wrap(handler: ManagerHandler) -> Callable[[Request], Awaitable[Response]]:
        async def run(current: Page) -> Response:
            if not _networks(current).allows(current.source_ip):
                return _error(current, None, 403, "Not from this address",
                              "The console's administration pages do not answer this address; ask an owner to add "
                              "it to BANKGATE_ADMIN_ALLOWED_IPS.")
            who = await _manager(current)
            if who is None:
                return current.redirect(f"{AREA.sign_in}?ended=1")
            try:
                if permission is not None:
                    require(who.principal, permission)
                return await handler(current, who)
            except Forbidden as exc:
                current.runtime.audit("console.forbidden", who.actor.label, "failure", current.source_ip,
                                      {"path": current.request.url.path[:200], "permission": exc.permission})
                return _error(current, who, 403, "Not allowed", f"You may not do this: {exc}.")
            except (NotFoundError, LookupError) as exc:
                return _error(current, who, 404, "Not found", str(exc).split("; see `", 1)[0] + ".")
            except (ConflictError, ClientStateError, UserStateError, AdminStateError) as exc:
                return _error(current, who, 409, "Not possible now", f"{exc}.")
            except (AdminError, ValueError) as exc:
                return _error(current, who, 400, "Not done", f"{str(exc).replace('--', '')}.")

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return page("admin")(run)

    return wrap


#: What a page says after a change sent the browser back to it (`?done=`): only these words, so a crafted link
#: cannot make the console say something of its choosing.
_DONE = {
    "disable": "Disabled.", "enable": "Enabled.", "revoke": "Revoked.", "revoked": "The certificate is revoked.",
    "scopes": "The applications are saved.", "allowed": "The address is allowed.", "removed": "The address is removed.",
    "rotated": "A new signing key is active.", "retired": "The key is retired.",
}


def _done(current: Page) -> str | None:
    return _DONE.get(current.request.query_params.get("done", ""))


def _words(text: str) -> list[str]:
    return [word for word in text.replace(",", " ").split() if word]


def _query(**params: str | None) -> str:
    chosen = {name: value for name, value in params.items() if value}
    return "?" + urlencode(chosen) if chosen else ""


# -- signing in -----------------------------------------------------------------------------------------------


@page("admin", public=True)
async def sign_in(current: Page) -> Response:
    """Name, password and TOTP code (`AdminDirectory.authenticate_password`: throttled, one answer for all)."""
    if not _networks(current).allows(current.source_ip):
        return _error(current, None, 403, "Not from this address",
                      "The console's administration pages do not answer this address; ask an owner to add it to "
                      "BANKGATE_ADMIN_ALLOWED_IPS.")
    params = current.request.query_params
    notice = ("Your session ended. Sign in again." if params.get("ended") else
              "You signed out." if params.get("signed_out") else None)
    if current.request.method == "GET":
        return _render(current, None, "admin/sign_in.html", notice=notice, name="")
    name, password, code = current.field("name", 64).strip(), current.field("password", 1024), current.field("totp", 16)
    runtime = current.runtime
    try:
        admin = await runtime.services.admins.authenticate_password(name, password, code, current.source_ip)
    except AdminThrottled as exc:
        runtime.audit("console.sign_in", "anonymous", "failure", current.source_ip,
                      {"area": "admin", "reason": "throttled"})
        return _render(current, None, "admin/sign_in.html", 429, headers={"Retry-After": str(exc.retry_after)},
                       name=name, error=f"Too many failed sign-ins: retry in {exc.retry_after} s.")
    except AdminAuthError as exc:
        runtime.audit("console.sign_in", "anonymous", "failure", current.source_ip,
                      {"area": "admin", "reason": exc.reason})
        return _render(current, None, "admin/sign_in.html", 401, name=name, error=_SIGN_IN_FAILED)
    await current.sign_in("admin", admin.id)
    runtime.audit("console.sign_in", f"console:{admin.name}", "success", current.source_ip,
                  {"area": "admin", "admin_id": admin.id})
    return current.redirect(HOME)


@manager_page(None)
async def sign_out(current: Page, who: Manager) -> Response:
    """End the session on the server and forget its cookie."""
    await current.sign_out()
    current.runtime.audit("console.sign_out", who.actor.label, "success", current.source_ip,
                          {"area": "admin", "admin_id": who.principal.admin.id})
    return current.redirect(f"{AREA.sign_in}?signed_out=1")


# -- dashboard ------------------------------------------------------------------------------------------------


@manager_page(None)
async def dashboard(current: Page, who: Manager) -> Response:
    """Active clients and users, certificates expiring within 30 days, the latest refusals."""
    services = current.runtime.services
    environment = current.runtime.settings.environment
    context: dict[str, Any] = {}
    if who.can("clients:read"):
        context["active_clients"] = sum(1 for c in await services.admin.clients.list()
                                        if c.active and c.environment == environment)
    if who.can("users:read"):
        context["active_users"] = sum(1 for u in await services.admin.users.list()
                                      if u.status == "active" and u.environment == environment)
    if who.can("certs:read"):
        expiring = await services.admin.certs.page(expiring_within=EXPIRING_WITHIN, limit=10)
        owners = {u.id: u.username for u in await services.admin.users.list()}
        context["expiring"] = [(c, owners.get(c.user_id, c.user_id)) for c in expiring.items]
        context["more_expiring"] = expiring.next_cursor is not None
    if who.can("audit:read"):
        await services.audit.flush()
        context["denials"] = (await services.admin.audit.page(outcome="failure", limit=10)).items
    return _render(current, who, "admin/dashboard.html", **context)


# -- clients --------------------------------------------------------------------------------------------------


@manager_page("clients:read")
async def clients(current: Page, who: Manager) -> Response:
    """Clients, a page at a time, by name or API key and status."""
    params = current.request.query_params
    q, status, cursor = params.get("q", "")[:64].strip(), params.get("status") or None, params.get("cursor")
    if status is not None and status not in _STATUSES:
        return _render(current, who, "admin/clients.html", 400, q=q, chosen=None, items=[], next_url=None,
                       statuses=_STATUSES, error=f"Status {status[:16]!r} is not one of: {', '.join(_STATUSES)}.")
    found = await current.runtime.services.admin.clients.page(limit=_PAGE_SIZE, cursor=cursor, status=status,
                                                             q=q or None)
    next_url = (f"{HOME}/clients{_query(q=q, status=status, cursor=found.next_cursor)}"
                if found.next_cursor else None)
    return _render(current, who, "admin/clients.html", q=q, chosen=status, items=found.items, next_url=next_url,
                   statuses=_STATUSES)


@manager_page("clients:write")
async def client_new(current: Page, who: Manager) -> Response:
    """Create a client; its secret key is shown on this POST's answer only."""
    if current.request.method == "GET":
        return _render(current, who, "admin/client_new.html", name="", scopes="", auth_mode="oauth2")
    name, scopes, auth_mode = (current.field("name", 128).strip(), current.field("scopes", 1024),
                               current.field("auth_mode", 16) or "oauth2")
    try:
        issued = await current.runtime.services.admin.clients.create(who.actor, name, _words(scopes), auth_mode)
    except (AdminError, ValueError) as exc:
        return _render(current, who, "admin/client_new.html", 400, name=name, scopes=scopes, auth_mode=auth_mode,
                       error=f"{str(exc).replace('--', '')}.")
    return _render(current, who, "admin/secret.html", title="Client created", back=f"{HOME}/clients/"
                   f"{issued.client.api_key}", lead=f"{issued.client.name} · {issued.client.auth_mode} · "
                   f"{' '.join(issued.client.scopes)}",
                   shown=[("API key", "api-key", issued.client.api_key, False),
                          ("Secret key", "secret-key", issued.secret_key, True)])


async def _client_page(current: Page, who: Manager, api_key: str, status: int = 200, **context: Any) -> Response:
    services = current.runtime.services
    record = await services.admin.clients.get(api_key)
    listing = await services.admin.ips.listing(record.api_key) if who.can("ips:read") else None
    return _render(current, who, "admin/client.html", status, client=record, listing=listing,
                   done=_done(current), **context)


@manager_page("clients:read")
async def client(current: Page, who: Manager) -> Response:
    """One client: its applications, status, allow list and the actions the role allows."""
    return await _client_page(current, who, current.request.path_params["api_key"])


_CLIENT_ACTIONS = {
    "rotate-secret": ("Rotate the secret key", "A new secret key is made and shown once. The current one keeps "
                      "working for the overlap you choose, then stops."),
    "disable": ("Disable the client", "The client gets no new token until it is enabled again; its tokens are "
                "refused at once."),
    "enable": ("Enable the client", "The client may get tokens again with its current secret key."),
    "revoke": ("Revoke the client", "The client can never get a token again and every token it holds is refused "
               "at once. This cannot be undone: a new client is needed."),
}


@manager_page("clients:write")
async def client_action(current: Page, who: Manager) -> Response:
    """A change of a client: a confirmation page (GET) saying what will happen, then the change (POST)."""
    api_key, action = current.request.path_params["api_key"], current.request.path_params["action"]
    if action not in _CLIENT_ACTIONS:
        return _error(current, who, 404, "Nothing here", "There is no such action for a client.")
    admin = current.runtime.services.admin.clients
    record = await admin.get(api_key)
    title, consequence = _CLIENT_ACTIONS[action]
    back = f"{HOME}/clients/{record.api_key}"
    if current.request.method == "GET":
        return _render(current, who, "admin/confirm.html", title=title, subject=f"{record.name} ({record.api_key})",
                       consequence=consequence, action=f"{back}/{action}", back=back,
                       danger=action in ("revoke", "disable"), overlap=action == "rotate-secret")
    if action == "rotate-secret":
        try:
            overlap = float(current.field("overlap", 16) or 0)
        except ValueError:
            overlap = -1.0
        if not 0 <= overlap <= 30 * 86400:
            return _render(current, who, "admin/confirm.html", 400, title=title, consequence=consequence,
                           subject=f"{record.name} ({record.api_key})", action=f"{back}/{action}", back=back,
                           overlap=True, error="The overlap is a number of seconds from 0 to 2592000 (30 days).")
        issued = await admin.rotate_secret(who.actor, record.api_key, overlap)
        return _render(current, who, "admin/secret.html", title="New secret key", back=back,
                       lead=f"{record.name} · the previous secret key works for {int(overlap)} more seconds",
                       shown=[("API key", "api-key", record.api_key, False),
                              ("Secret key", "secret-key", issued.secret_key, True)])
    method: Callable[..., Awaitable[Any]] = getattr(admin, action)
    await method(who.actor, record.api_key)
    return current.redirect(f"{back}?done={action}")


# -- users ----------------------------------------------------------------------------------------------------


@manager_page("users:read")
async def users(current: Page, who: Manager) -> Response:
    """M2M users, a page at a time, by username or name and status."""
    params = current.request.query_params
    q, status, cursor = params.get("q", "")[:64].strip(), params.get("status") or None, params.get("cursor")
    if status is not None and status not in _STATUSES:
        return _render(current, who, "admin/users.html", 400, q=q, chosen=None, items=[], next_url=None,
                       statuses=_STATUSES, error=f"Status {status[:16]!r} is not one of: {', '.join(_STATUSES)}.")
    found = await current.runtime.services.admin.users.page(limit=_PAGE_SIZE, cursor=cursor, status=status,
                                                           q=q or None)
    next_url = (f"{HOME}/users{_query(q=q, status=status, cursor=found.next_cursor)}"
                if found.next_cursor else None)
    return _render(current, who, "admin/users.html", q=q, chosen=status, items=found.items, next_url=next_url,
                   statuses=_STATUSES)


@manager_page("users:write")
async def user_new(current: Page, who: Manager) -> Response:
    """Create an M2M user; its initial passphrase is shown on this POST's answer only."""
    if current.request.method == "GET":
        return _render(current, who, "admin/user_new.html", name="", username="", scopes="")
    name, username, scopes = (current.field("name", 128).strip(), current.field("username", 64).strip(),
                              current.field("scopes", 1024))
    try:
        new = await current.runtime.services.admin.users.create(who.actor, name, username or None, _words(scopes))
    except (AdminError, ValueError) as exc:
        return _render(current, who, "admin/user_new.html", 400, name=name, username=username, scopes=scopes,
                       error=f"{str(exc).replace('--', '')}.")
    return _render(current, who, "admin/secret.html", title="User created", back=f"{HOME}/users/{new.user.username}",
                   lead=f"{new.user.name} · {new.user.environment} · the passphrase expires "
                   f"{_when(new.user.passphrase_expires_at)}",
                   shown=[("Username", "username", new.user.username, False),
                          ("Initial passphrase", "passphrase", new.initial_passphrase, True)])


async def _user_page(current: Page, who: Manager, username: str, status: int = 200, **context: Any) -> Response:
    services = current.runtime.services
    record = await services.admin.users.get(username)
    certificates = await services.admin.certs.list(record.username) if who.can("certs:read") else None
    listing = await services.admin.ips.listing(record.username) if who.can("ips:read") else None
    now = services.clock.now()
    return _render(current, who, "admin/user.html", status, user=record, listing=listing, now=now,
                   certificates=certificates, done=_done(current), **context)


@manager_page("users:read")
async def user(current: Page, who: Manager) -> Response:
    """One user: applications, certificates, allow list and the actions the role allows."""
    return await _user_page(current, who, current.request.path_params["username"])


@manager_page("users:write")
async def user_scopes(current: Page, who: Manager) -> Response:
    """Replace the applications the user's tokens may carry."""
    username = current.request.path_params["username"]
    scopes = current.field("scopes", 1024)
    try:
        await current.runtime.services.admin.users.update(who.actor, username, scopes=_words(scopes))
    except (ConflictError, NotFoundError):
        raise
    except (AdminError, ValueError) as exc:
        return await _user_page(current, who, username, 400, scopes_error=f"{str(exc).replace('--', '')}.",
                                scopes=scopes)
    return current.redirect(f"{HOME}/users/{quote(username)}?done=scopes")


_USER_ACTIONS = {
    "new-passphrase": ("Issue a new initial passphrase", "A new initial passphrase is made and shown once; the "
                       "user's password stops working until the user signs in with it and chooses a new one."),
    "disable": ("Disable the user", "The user gets no new token until enabled again; its tokens are refused at "
                "once."),
    "enable": ("Enable the user", "The user may get tokens again."),
    "revoke": ("Revoke the user", "The user can never get a token again and every token it holds is refused at "
               "once. This cannot be undone."),
}


@manager_page("users:write")
async def user_action(current: Page, who: Manager) -> Response:
    """A change of a user: a confirmation page (GET), then the change (POST)."""
    username, action = current.request.path_params["username"], current.request.path_params["action"]
    if action not in _USER_ACTIONS:
        return _error(current, who, 404, "Nothing here", "There is no such action for a user.")
    admin = current.runtime.services.admin.users
    record = await admin.get(username)
    title, consequence = _USER_ACTIONS[action]
    back = f"{HOME}/users/{record.username}"
    if current.request.method == "GET":
        return _render(current, who, "admin/confirm.html", title=title, subject=f"{record.name} ({record.username})",
                       consequence=consequence, action=f"{back}/{action}", back=back,
                       danger=action in ("revoke", "disable", "new-passphrase"))
    if action == "new-passphrase":
        new = await admin.new_passphrase(who.actor, record.username)
        return _render(current, who, "admin/secret.html", title="New initial passphrase", back=back,
                       lead=f"{record.name} · expires {_when(new.user.passphrase_expires_at)}",
                       shown=[("Username", "username", record.username, False),
                              ("Initial passphrase", "passphrase", new.initial_passphrase, True)])
    method: Callable[..., Awaitable[Any]] = getattr(admin, action)
    await method(who.actor, record.username)
    return current.redirect(f"{back}?done={action}")


# -- certificates ---------------------------------------------------------------------------------------------


@manager_page("certs:write")
async def certificate_issue(current: Page, who: Manager) -> Response:
    """Issue a certificate from an uploaded CSR (multipart), or with a generated key delivered as PKCS#12 whose
    password is shown once."""
    username = current.request.path_params["username"]
    csr = current.files.get("csr", b"").strip() or None
    try:
        days = int(current.field("days", 8) or 365)
    except ValueError:
        days = 0
    if not 1 <= days <= 825:
        return await _user_page(current, who, username, 400, cert_error="Validity is 1 to 825 days.")
    key_type = current.field("key_type", 8) or "ec"
    try:
        issued, _ = await current.runtime.services.admin.certs.issue(
            who.actor, username, lambda issued: None, csr_pem=csr, days=days, key_type=key_type)
    except NotFoundError:
        raise
    except (AdminError, ValueError) as exc:
        return await _user_page(current, who, username, 400, cert_error=f"{str(exc).replace('--', '')}.")
    bundle = (f"data:application/x-pkcs12;base64,{base64.b64encode(issued.pkcs12).decode('ascii')}"
              if issued.pkcs12 is not None else None)
    return _render(current, who, "admin/certificate_issued.html", title="Certificate issued", username=username,
                   certificate=issued.record, bundle=bundle, bundle_password=issued.pkcs12_password,
                   back=f"{HOME}/users/{username}")


@manager_page("certs:read")
async def certificate_pem(current: Page, who: Manager) -> Response:
    """A certificate as PEM (public material: a GET)."""
    record = await current.runtime.services.admin.certs.get(current.request.path_params["serial"])
    current.runtime.audit("cert.downloaded", who.actor.label, "success", current.source_ip,
                          {"serial": record.serial, "thumbprint": record.thumbprint, "via": "console"})
    return Response(record.certificate_pem, media_type="application/x-pem-file", headers={
        "Content-Disposition": f'attachment; filename="{record.serial}.crt.pem"',
        "X-Certificate-Thumbprint": record.thumbprint,
    })


@manager_page("certs:write")
async def certificate_revoke(current: Page, who: Manager) -> Response:
    """Revoke a certificate: a confirmation page (GET), then the revocation (POST)."""
    services = current.runtime.services
    record = await services.admin.certs.get(current.request.path_params["serial"])
    owner = await services.users.get_by_id(record.user_id)
    back = f"{HOME}/users/{owner.username}" if owner is not None else HOME
    action = f"{HOME}/certificates/{record.serial}/revoke"
    if current.request.method == "GET":
        return _render(current, who, "admin/confirm.html", title="Revoke the certificate", back=back, action=action,
                       subject=f"serial {record.serial}, thumbprint {record.thumbprint}", danger=True,
                       consequence="Every token bound to this certificate is refused at once and the certificate "
                       "can never be used again. This cannot be undone.")
    await services.admin.certs.revoke(who.actor, record.serial)
    return current.redirect(f"{back}?done=revoked")


# -- IP allow lists -------------------------------------------------------------------------------------------


def _subject_page(subject: str) -> Callable[..., Awaitable[Response]]:
    return _client_page if subject.startswith("bk_") else _user_page


def _subject_url(subject: str) -> str:
    return f"{HOME}/{'clients' if subject.startswith('bk_') else 'users'}/{quote(subject)}"


@manager_page("ips:write")
async def address_add(current: Page, who: Manager) -> Response:
    """Allow an address or network (CIDR) for a user or client; a malformed one is said next to the field."""
    subject = current.request.path_params["subject"]
    cidr = current.field("cidr", 64).strip()
    try:
        await current.runtime.services.admin.ips.allow(who.actor, subject, cidr)
    except NotFoundError:
        raise
    except (AdminError, ValueError) as exc:
        return await _subject_page(subject)(current, who, subject, 400, cidr=cidr,
                                            ip_error=f"{str(exc).replace('--', '')}.")
    return current.redirect(f"{_subject_url(subject)}?done=allowed")


@manager_page("ips:write")
async def address_remove(current: Page, who: Manager) -> Response:
    """Remove an allow-list entry: a confirmation page (GET), then the removal (POST)."""
    subject = current.request.path_params["subject"]
    cidr = (current.request.query_params.get("cidr") if current.request.method == "GET"
            else current.field("cidr", 64)) or ""
    ips = current.runtime.services.admin.ips
    found = await ips.subject(subject)
    back = _subject_url(found.label)
    if current.request.method == "GET":
        return _render(current, who, "admin/confirm.html", title="Remove an allowed address", back=back,
                       subject=f"{cidr[:64]} for {found.label}", fields={"cidr": cidr[:64]},
                       action=f"{HOME}/ips/{quote(found.label)}/remove", danger=True,
                       consequence="Requests of this subject from that address are refused from now on (when the "
                       "list becomes empty, the environment's default applies).")
    await ips.remove(who.actor, found.label, cidr)
    return current.redirect(f"{back}?done=removed")


# -- signing keys ---------------------------------------------------------------------------------------------


@manager_page("keys:read")
async def keys(current: Page, who: Manager) -> Response:
    """The signing keys published in the JWKS, newest first."""
    found = await current.runtime.services.admin.keys.list()
    return _render(current, who, "admin/keys.html", keys=found, done=_done(current))


@manager_page("keys:write")
async def key_rotate(current: Page, who: Manager) -> Response:
    """Make a new active signing key: a confirmation page, then the rotation."""
    if current.request.method == "GET":
        return _render(current, who, "admin/confirm.html", title="Rotate the signing key", back=f"{HOME}/keys",
                       subject=f"the {current.runtime.settings.signing_alg} key ring", action=f"{HOME}/keys/rotate",
                       consequence="New tokens are signed with a new key; the current one stays published until "
                       "the tokens it signed have expired.")
    await current.runtime.services.admin.keys.rotate(who.actor)
    return current.redirect(f"{HOME}/keys?done=rotated")


@manager_page("keys:write")
async def key_retire(current: Page, who: Manager) -> Response:
    """Retire a key at once (a compromised key): a confirmation page, then the retirement."""
    kid = current.request.path_params["kid"]
    action = f"{HOME}/keys/{quote(kid)}/retire"
    if current.request.method == "GET":
        return _render(current, who, "admin/confirm.html", title="Retire the signing key", back=f"{HOME}/keys",
                       subject=f"key {kid[:64]}", action=action, danger=True, rotate=True,
                       consequence="The key leaves the JWKS now and every token it signed is refused at once. When "
                       "it is the active key, tick “rotate first” so that new tokens can still be signed.")
    await current.runtime.services.admin.keys.retire(who.actor, kid, rotate=current.field("rotate", 8) == "yes")
    return current.redirect(f"{HOME}/keys?done=retired")


# -- audit trail ----------------------------------------------------------------------------------------------


def _moment(text: str, name: str, *, end: bool = False) -> float | None:
    """A date (YYYY-MM-DD) or a date and time (YYYY-MM-DDTHH:MM) in UTC, as UNIX seconds; a date as `until` means
    the end of that day."""
    text = text.strip()
    if not text:
        return None
    for layout in ("%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            parsed = time.strptime(text, layout)
        except ValueError:
            continue
        seconds = float(calendar.timegm(parsed))
        return seconds + 86400 if end and layout == "%Y-%m-%d" else seconds
    raise ValueError(f"{name} {text[:32]!r} is not a date (2026-12-01) or a date and time (2026-12-01T09:30), UTC")


@manager_page("audit:read")
async def audit(current: Page, who: Manager) -> Response:
    """The audit trail, newest first, by event, actor, subject, outcome and time, a page at a time."""
    params = current.request.query_params
    filters = {name: params.get(name, "")[:200].strip() for name in ("event", "actor", "subject", "outcome", "since",
                                                                     "until")}
    services = current.runtime.services
    try:
        since = _moment(filters["since"], "since")
        until = _moment(filters["until"], "until", end=True)
        await services.audit.flush()
        found = await services.admin.audit.page(
            event=filters["event"] or None, actor=filters["actor"] or None, subject=filters["subject"] or None,
            outcome=filters["outcome"] or None, since=since, until=until, limit=_PAGE_SIZE,
            cursor=params.get("cursor"))
    except (AdminError, ValueError) as exc:
        return _render(current, who, "admin/audit.html", 400, filters=filters, events=[], next_url=None,
                       error=f"{str(exc).replace('--', '')}.")
    next_url = f"{HOME}/audit{_query(**filters, cursor=found.next_cursor)}" if found.next_cursor else None
    return _render(current, who, "admin/audit.html", filters=filters, events=found.items, next_url=next_url)


def routes() -> list[Route]:
    """The area's routes, under the console's mount."""
    get, both, post = ["GET"], ["GET", "POST"], ["POST"]
    return [
        Route("/admin", dashboard, methods=get),
        Route("/admin/sign-in", sign_in, methods=both),
        Route("/admin/sign-out", sign_out, methods=post),
        Route("/admin/clients", clients, methods=get),
        Route("/admin/clients/new", client_new, methods=both),
        Route("/admin/clients/{api_key}", client, methods=get),
        Route("/admin/clients/{api_key}/{action}", client_action, methods=both),
        Route("/admin/users", users, methods=get),
        Route("/admin/users/new", user_new, methods=both),
        Route("/admin/users/{username}", user, methods=get),
        Route("/admin/users/{username}/scopes", user_scopes, methods=post),
        Route("/admin/users/{username}/certificates", certificate_issue, methods=post),
        Route("/admin/users/{username}/{action}", user_action, methods=both),
        Route("/admin/certificates/{serial}.pem", certificate_pem, methods=get),
        Route("/admin/certificates/{serial}/revoke", certificate_revoke, methods=both),
        Route("/admin/ips/{subject}", address_add, methods=post),
        Route("/admin/ips/{subject}/remove", address_remove, methods=both),
        Route("/admin/keys", keys, methods=get),
        Route("/admin/keys/rotate", key_rotate, methods=both),
        Route("/admin/keys/{kid}/retire", key_retire, methods=both),
        Route("/admin/audit", audit, methods=get),
    ]
