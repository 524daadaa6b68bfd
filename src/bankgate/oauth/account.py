"""The M2M user's own steps from the Banking Circle seed: reset the initial passphrase, then download the
certificate that carries the thumbprint.

* `POST /api/v1/users/{username}/password` with `{"passphrase": …, "new_password": …}` (JSON or form);
* `GET /api/v1/users/{username}/certificates` (Basic username:password) lists the user's certificates;
* `GET /api/v1/users/{username}/certificates/{serial}` downloads one as PEM (or JSON with `Accept: application/json`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from bankgate.admin import Actor, AdminError
from bankgate.admin.users import NOT_THE_PASSPHRASE, AddressNotAllowedError, TooManyAttemptsError
from bankgate.credentials.users import USERNAME, PassphraseError, WeakPasswordError
from bankgate.oauth.errors import OAuthError
from bankgate.oauth.http import Receive, Scope, Send, header, respond
from bankgate.oauth.request import read_params
from bankgate.oauth.userauth import UserAuthError, authenticate_user
from bankgate.runtime import Runtime
from bankgate.web.errors import PROBLEM, send_error
from bankgate.web.headers import JSON_NO_STORE, NO_STORE

__all__ = [
    "NOT_RECOGNISED",
    "CertificateDownloadEndpoint",
    "CertificateListEndpoint",
    "PasswordResetEndpoint",
    "reset_refusal",
]

#: Unknown user, wrong passphrase, passphrase used already: one answer, so none of them can be told apart.
NOT_RECOGNISED = (
    "the username or initial passphrase is wrong; if you reset it already, use your password, or ask your "
    "integration manager for a new passphrase"
)


class _AccountEndpoint:
    event = "user.request"

    def __init__(self, state: object) -> None:
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self._state.runtime  # type: ignore[attr-defined]
        source_ip = runtime.proxies.client_ip(scope)
        username = scope.get("path_params", {}).get("username", "")
        try:
            await self.handle(runtime, scope, receive, send, username, source_ip)
        except UserAuthError as err:
            if not err.audited:
                actor = username if USERNAME.fullmatch(username) else err.actor
                runtime.audit(self.event, actor, "failure", source_ip, {"reason": err.reason})
            await send_error(send, err, PROBLEM, instance=scope.get("path", ""))
        # Anything else (the database down: 503; a defect: 500) is answered by the app's ErrorBoundary.

    async def handle(
        self, runtime: Runtime, scope: Scope, receive: Receive, send: Send, username: str, source_ip: str | None
    ) -> None:
        raise NotImplementedError


class PasswordResetEndpoint(_AccountEndpoint):
    event = "user.password_reset"

    async def handle(
        self, runtime: Runtime, scope: Scope, receive: Receive, send: Send, username: str, source_ip: str | None
    ) -> None:
        try:
            params = await read_params(scope, receive, runtime.settings.max_body_bytes)
            passphrase = params.require("passphrase", "<the initial passphrase>")
            new_password = params.require("new_password", "<your new password>")
        except OAuthError as err:
            raise UserAuthError(400, "Bad Request", err.description, reason="invalid_request") from None
        actor = Actor(username if USERNAME.fullmatch(username) else "", "api", source_ip)
        try:
            user = await runtime.services.admin.users.reset_password(
                actor, username, passphrase, new_password, self_service=True
            )
        except (PassphraseError, WeakPasswordError, AdminError) as exc:
            refusal = reset_refusal(exc)
            refusal.audited = True  # by the use case
            raise refusal from None
        body = {
            "username": user.username,
            "password_changed_at": int(user.password_changed_at or 0),
            "certificates": f"/api/v1/users/{user.username}/certificates",
        }
        await respond(send, 200, orjson.dumps(body), JSON_NO_STORE)


def reset_refusal(exc: Exception) -> UserAuthError:
    """What a refused self-service password reset answers, on every entrance that offers one (status, message,
    `Retry-After`): unknown user, wrong and used passphrase alike."""
    if isinstance(exc, TooManyAttemptsError):
        return UserAuthError(429, "Too Many Requests", str(exc), reason="throttled", retry_after=exc.retry_after)
    if isinstance(exc, PassphraseError):
        if exc.reason in NOT_THE_PASSPHRASE:
            return UserAuthError(401, "Unauthorized", NOT_RECOGNISED, reason=exc.reason, retry_after=exc.retry_after)
        return UserAuthError(403, "Forbidden", str(exc), reason=exc.reason)
    if isinstance(exc, WeakPasswordError):
        return UserAuthError(400, "Bad Request", str(exc), reason="weak_password")
    if isinstance(exc, AddressNotAllowedError):
        return UserAuthError(403, "Forbidden", str(exc), reason="ip_not_allowed")
    raise exc


def _certificate_json(certificate: Any, username: str) -> dict[str, Any]:
    return {
        "serial": certificate.serial,
        "thumbprint": certificate.thumbprint,
        "x5t#S256": certificate.x5t_s256,
        "subject": certificate.subject,
        "not_before": int(certificate.not_before),
        "not_after": int(certificate.not_after),
        "status": certificate.status,
        "download": f"/api/v1/users/{username}/certificates/{certificate.serial}",
    }


class CertificateListEndpoint(_AccountEndpoint):
    event = "cert.listed"

    async def handle(
        self, runtime: Runtime, scope: Scope, receive: Receive, send: Send, username: str, source_ip: str | None
    ) -> None:
        authenticated = await authenticate_user(runtime, scope, source_ip, require_certificate=False)
        user = authenticated.user
        if user.username != username:
            raise UserAuthError(403, "Forbidden", "a user may list only their own certificates", reason="other_user")
        certificates = await runtime.services.pki.list_for_user(user.id)
        body = {"certificates": [_certificate_json(c, user.username) for c in certificates]}
        await respond(send, 200, json.dumps(body).encode(), JSON_NO_STORE)


class CertificateDownloadEndpoint(_AccountEndpoint):
    event = "cert.downloaded"

    async def handle(
        self, runtime: Runtime, scope: Scope, receive: Receive, send: Send, username: str, source_ip: str | None
    ) -> None:
        authenticated = await authenticate_user(runtime, scope, source_ip, require_certificate=False)
        user = authenticated.user
        serial = scope.get("path_params", {}).get("serial", "")
        if user.username != username:
            raise UserAuthError(403, "Forbidden", "a user may download only their own certificates",
                                reason="other_user")
        mine = {c.serial.lower(): c for c in await runtime.services.pki.list_for_user(user.id)}
        certificate = mine.get(serial.lower())
        if certificate is None:
            raise UserAuthError(404, "Not Found", f"this user has no certificate with serial {serial[:64]}",
                                reason="unknown_serial")
        runtime.audit(self.event, user.username, "success", source_ip,
                      {"serial": certificate.serial, "thumbprint": certificate.thumbprint})
        if "application/json" in (header(scope, b"accept") or ""):
            body = {**_certificate_json(certificate, user.username), "certificate_pem": certificate.certificate_pem}
            await respond(send, 200, json.dumps(body).encode(), JSON_NO_STORE)
            return
        await respond(
            send,
            200,
            certificate.certificate_pem.encode(),
            [
                (b"content-type", b"application/x-pem-file"),
                (b"content-disposition", f'attachment; filename="{certificate.serial}.crt.pem"'.encode()),
                (b"x-certificate-thumbprint", certificate.thumbprint.encode()),
                *NO_STORE,
            ],
        )
