"""Token endpoint (RFC 6749 §3.2): the client authenticates, then the grant its `grant_type` names runs
(`bankgate.oauth.grants`: client credentials, RFC 6749 §4.4, as the Banked seed shows it: 201 with `created_at`).
"""

from __future__ import annotations

from bankgate.credentials.clients import ClientRecord
from bankgate.oauth.endpoint import OAuthEndpoint
from bankgate.oauth.errors import OAuthError
from bankgate.oauth.grants import GRANTS, KEY_FAMILIES
from bankgate.oauth.http import Send
from bankgate.oauth.request import Params
from bankgate.runtime import Runtime

__all__ = ["TokenEndpoint"]


class TokenEndpoint(OAuthEndpoint):
    denied_event = "token.denied"
    families = KEY_FAMILIES

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None:
        grant_type = params.require("grant_type", GRANTS.names()[0])
        grant = GRANTS.get(grant_type)
        if grant is None:
            accepted = " or ".join(f"grant_type={name}" for name in GRANTS.names())
            raise OAuthError(
                "unsupported_grant_type", f"grant_type {grant_type[:64]!r} is not supported: send {accepted}"
            )
        await grant.handle(runtime, client, params, source_ip, send)
