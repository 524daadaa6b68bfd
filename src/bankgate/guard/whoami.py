"""`GET /api/v1/whoami`: the smallest protected resource. Send the access token as Bearer (RFC 6750) and, for a
certificate-bound token, the same client certificate; the answer says whom the token speaks for. It lets an
integrator check a token end to end before calling a real API.
"""

from __future__ import annotations

import json
import logging

from sqlalchemy.exc import SQLAlchemyError

from bankgate.credentials.allowlist import describe_default
from bankgate.guard.verifier import InvalidToken
from bankgate.oauth.http import Receive, Scope, Send, header, respond
from bankgate.runtime import Runtime

__all__ = ["WhoAmIEndpoint"]

log = logging.getLogger("bankgate.guard")


def _challenge(error: str | None, description: str | None) -> bytes:
    """RFC 6750 §3: `Bearer realm=…` plus the error, its quotes and backslashes escaped."""
    parts = ['Bearer realm="bankgate"']
    if error:
        safe = (description or "").replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'error="{error}", error_description="{safe}"')
    return ", ".join(parts).encode("latin-1", "replace")


async def _refuse(send: Send, status: int, error: str | None, description: str) -> None:
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if status == 401:
        headers.append((b"www-authenticate", _challenge(error, description if error else None)))
    body = {"error": error or "invalid_request", "error_description": description}
    await respond(send, status, json.dumps(body).encode(), headers)


class WhoAmIEndpoint:
    def __init__(self, state: object) -> None:
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self._state.runtime  # type: ignore[attr-defined]
        authorization = header(scope, b"authorization") or ""
        kind, _, token = authorization.strip().partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            await _refuse(send, 401, None, "send Authorization: Bearer <access token>")
            return
        source_ip = runtime.proxies.client_ip(scope)
        try:
            principal = await runtime.verifier.verify(token.strip(), runtime.client_certs.der(scope))
            subject_kind = "user" if principal.kind == "user" else "client"
            if not await runtime.services.allowlist.allows(subject_kind, principal.subject, source_ip):
                default = describe_default(runtime.settings.environment)
                await _refuse(send, 403, "access_denied",
                              f"requests from {source_ip} are not allowed for this {subject_kind} ({default})")
                return
        except InvalidToken as exc:
            await _refuse(send, 401, "invalid_token", str(exc))
            return
        except (SQLAlchemyError, OSError, TimeoutError):
            log.exception("whoami failed: database unavailable")
            await _refuse(send, 503, "temporarily_unavailable", "the server cannot reach its database; retry")
            return
        body = {**principal.as_json(), "source_ip": source_ip}
        await respond(send, 200, json.dumps(body).encode(),
                      [(b"content-type", b"application/json"), (b"cache-control", b"no-store")])
