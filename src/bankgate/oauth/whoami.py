"""`GET /api/v1/whoami`: the smallest protected resource. Send the access token as Bearer (RFC 6750) and, for a
certificate-bound token, the same client certificate (or, for a Basic client, the key pair); the answer says whom
the credentials speak for. It lets an integrator check a token end to end before calling a real API.
"""

from __future__ import annotations

import json

from bankgate.guard.core import GuardError
from bankgate.oauth.http import Receive, Scope, Send, respond
from bankgate.runtime import Runtime

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
            await err.send(send, guard.realm, basic=guard.accepts_basic)
            return
        body = {**principal.as_json(), "source_ip": runtime.proxies.client_ip(scope)}
        await respond(send, 200, json.dumps(body).encode(),
                      [(b"content-type", b"application/json"), (b"cache-control", b"no-store")])
