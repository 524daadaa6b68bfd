"""`GET /api/v1/whoami`: the smallest protected resource. Send the access token as Bearer (RFC 6750) and, for a
certificate-bound token, the same client certificate (or, for a Basic client, the key pair); the answer says whom
the credentials speak for. It lets an integrator check a token end to end before calling a real API.
"""

from __future__ import annotations

import json

from bankgate.guard.core import GuardError
from bankgate.oauth.http import Receive, Scope, Send, respond
from bankgate.request_layer import tell_actor
from bankgate.runtime import Runtime
from bankgate.web.errors import OAUTH, send_error
from bankgate.web.headers import JSON_NO_STORE

__all__ = ["WhoAmIEndpoint"]


class WhoAmIEndpoint:
    def __init__(self, state: object) -> None:
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self._state.runtime  # type: ignore[attr-defined]
        guard = runtime.guard
        try:
            principal = await guard.authenticate(scope)
        except GuardError as err:
            await send_error(send, err.for_realm(guard.realm, basic=guard.accepts_basic), OAUTH)
            return
        tell_actor(scope, principal.key)
        body = {**principal.as_json(), "source_ip": runtime.proxies.client_ip(scope)}
        await respond(send, 200, json.dumps(body).encode(), JSON_NO_STORE)
