"""Token introspection (RFC 7662). A client sees only its own tokens; any other token is `active: false`, and so is a
token that was revoked, alone or with its client or the certificate it is bound to. A revoked client may still
introspect its own tokens (they all say `active: false`)."""

from __future__ import annotations

import json

from bankgate.credentials.clients import ClientRecord
from bankgate.oauth.endpoint import OAuthEndpoint
from bankgate.oauth.errors import JSON_NO_STORE
from bankgate.oauth.http import Send, respond
from bankgate.oauth.request import Params
from bankgate.runtime import Runtime
from bankgate.tokens.revocation import subject_keys

__all__ = ["IntrospectionEndpoint"]

_SHOWN = ("scope", "client_id", "exp", "iat", "nbf", "sub", "aud", "iss", "jti", "environment")


class IntrospectionEndpoint(OAuthEndpoint):
    denied_event = "token.introspection_denied"
    accepts_revoked = True

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None:
        claims = runtime.tokens.read(params.require("token", "<access token>"))
        answer: dict[str, object] = {"active": False}
        if (
            claims is not None
            and claims.get("sub") == client.id
            and claims["exp"] > runtime.services.clock.now()
            and not await runtime.services.revocations.is_revoked(claims["jti"])
            and not await runtime.services.revocations.subject_revoked(subject_keys(claims), claims.get("iat", 0))
        ):
            answer = {"active": True, "token_type": "Bearer", **{k: claims[k] for k in _SHOWN if k in claims}}
        await respond(send, 200, json.dumps(answer).encode(), JSON_NO_STORE)
