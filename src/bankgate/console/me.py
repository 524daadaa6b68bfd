"""The M2M user's own console pages (`/console/me`), the Banking Circle seed's steps in a browser: sign in for the
first time with the initial passphrase and choose a password, then download the certificate that carries the
thumbprint, and copy a ready `curl` for `GET /api/v1/authorizations/authorize`.

The pages call what the JSON routes call: sign-in is `oauth.userauth.authenticate_user` (the authorize route's
checks without the certificate: throttle, one argon2, allow list, one answer for every account-related refusal),
the first sign-in is `services.admin.users.reset_password(Actor(username, "console", ip), self_service=True)`,
refused as `oauth.account.reset_refusal` says.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import Response

from bankgate.admin import Actor, AdminError
from bankgate.console.web import Area, Page, page, register_area
from bankgate.credentials import users as user_rules
from bankgate.credentials.allowlist import describe_default
from bankgate.credentials.users import USERNAME, PassphraseError, UserRecord, WeakPasswordError
from bankgate.oauth.account import reset_refusal
from bankgate.oauth.userauth import UserAuthError, UserCredentials, authenticate_user

__all__ = ["AREA", "certificate_download", "first_sign_in", "home", "sign_in", "sign_out"]

AREA = register_area(Area(
    kind="user", title="Your API access", sign_in="/console/me/sign-in", home="/console/me",
    nav=(("Certificates and access", "/console/me"),),
))
_AUTHORIZE = "/api/v1/authorizations/authorize"
_ENDED = "Your session ended. Sign in again."


def _rules() -> dict[str, Any]:
    """The strength rules the server applies, from the module that applies them (text and numbers)."""
    return {
        "rules": user_rules.PASSWORD_RULES,
        "min_length": user_rules.MIN_LENGTH, "min_classes": user_rules.MIN_CLASSES,
        "passphrase_length": user_rules.PASSPHRASE_LENGTH, "max_length": user_rules.MAX_LENGTH,
        "min_distinct": user_rules.MIN_DISTINCT,
    }


def _refused(current: Page, template: str, err: UserAuthError, **context: Any) -> Response:
    headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after else None
    return current.render(template, err.status, headers=headers, error=err.detail, **context)


@page("user", public=True)
async def sign_in(current: Page) -> Response:
    """Sign in with username and password; the initial passphrase leads to the first sign-in form."""
    notice = _ENDED if current.request.query_params.get("ended") else (
        "You signed out." if current.request.query_params.get("signed_out") else None)
    if current.request.method == "GET":
        return current.render("me/sign_in.html", notice=notice, username="")
    username, password = current.field("username", 64).strip(), current.field("password")
    runtime = current.runtime
    try:
        authenticated = await authenticate_user(
            runtime, current.request.scope, current.source_ip, require_certificate=False,
            credentials=UserCredentials(username, password),
        )
    except UserAuthError as err:
        if err.reason == "passphrase_not_reset":  # told only after the passphrase matched
            return current.render("me/first_sign_in.html", username=username, error=None, **_rules(),
                                  notice="This is your initial passphrase: choose your own password to go on.")
        runtime.audit("console.sign_in", err.actor, "failure", current.source_ip, {"reason": err.reason})
        return _refused(current, "me/sign_in.html", err, username=username, notice=None)
    user = authenticated.user
    await current.sign_in("user", user.id)
    runtime.audit("console.sign_in", user.username, "success", current.source_ip, {"user_id": user.id})
    return current.redirect(AREA.home)


@page("user", public=True)
async def first_sign_in(current: Page) -> Response:
    """The first sign-in: the initial passphrase is exchanged for a password, then the user is signed in."""
    if current.request.method == "GET":
        return current.render("me/first_sign_in.html", username="", error=None, notice=None, **_rules())
    username = current.field("username", 64).strip()
    passphrase, new_password = current.field("passphrase"), current.field("new_password", 1024)
    if new_password != current.field("confirm_password", 1024):
        return current.render("me/first_sign_in.html", 400, username=username, notice=None, **_rules(),
                              error="The two new passwords differ: type the same password twice.")
    try:
        user = await current.runtime.services.admin.users.reset_password(
            Actor(username if USERNAME.fullmatch(username) else "", "console", current.source_ip), username,
            passphrase, new_password, self_service=True,
        )
    except (PassphraseError, WeakPasswordError, AdminError) as exc:
        return _refused(current, "me/first_sign_in.html", reset_refusal(exc), username=username, notice=None,
                        **_rules())
    await current.sign_in("user", user.id)
    return current.redirect(f"{AREA.home}?welcome=1")


async def _user(current: Page) -> UserRecord | None:
    assert current.session is not None
    user = await current.runtime.services.users.get_by_id(current.session.principal_id)
    if user is None or user.status != "active" or user.environment != current.runtime.settings.environment:
        await current.sign_out()
        return None
    return user


@page("user")
async def home(current: Page) -> Response:
    """The user's certificates (thumbprint as the seed shows it), the allow list, and a ready `curl`."""
    user = await _user(current)
    if user is None:
        return current.redirect(f"{AREA.sign_in}?ended=1")
    services, runtime = current.runtime.services, current.runtime
    certificates = await services.pki.list_for_user(user.id)
    now = services.clock.now()
    entries = await services.admin.users.allow_list(user)
    curl = (f"curl --cert <your-certificate.crt.pem> --key <your-private-key.key.pem> \\\n"
            f"  -u '{user.username}:<your password>' \\\n  {runtime.issuer_url}{_AUTHORIZE}")
    return current.render(
        "me/home.html", user=user, now=now, curl=curl, allow_list=[entry.cidr for entry in entries],
        default_allow=describe_default(user.environment),
        welcome=bool(current.request.query_params.get("welcome")),
        certificates=[{
            "serial": c.serial, "thumbprint": c.thumbprint, "subject": c.subject,
            "not_after": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(c.not_after)),
            "status": c.status if c.status != "valid" or c.usable_at(now) else "expired",
        } for c in certificates],
    )


@page("user")
async def certificate_download(current: Page) -> Response:
    """One of the user's certificates as PEM (public material: a GET)."""
    user = await _user(current)
    if user is None:
        return current.redirect(f"{AREA.sign_in}?ended=1")
    serial = current.request.path_params["serial"]
    mine = {c.serial.lower(): c for c in await current.runtime.services.pki.list_for_user(user.id)}
    certificate = mine.get(serial.lower())
    if certificate is None:
        return current.render("error.html", 404, title="No such certificate",
                              message=f"You have no certificate with serial {serial[:64]}.")
    current.runtime.audit("cert.downloaded", user.username, "success", current.source_ip,
                          {"serial": certificate.serial, "thumbprint": certificate.thumbprint, "via": "console"})
    return Response(certificate.certificate_pem, media_type="application/x-pem-file", headers={
        "Content-Disposition": f'attachment; filename="{certificate.serial}.crt.pem"',
        "X-Certificate-Thumbprint": certificate.thumbprint,
    })


@page("user")
async def sign_out(current: Page) -> Response:
    """End the session on the server and forget its cookie."""
    assert current.session is not None
    principal = current.session.principal_id
    await current.sign_out()
    current.runtime.audit("console.sign_out", principal, "success", current.source_ip, {"user_id": principal})
    return current.redirect(f"{AREA.sign_in}?signed_out=1")
