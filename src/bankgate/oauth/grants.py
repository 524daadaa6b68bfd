"""The token endpoint's grant types (RFC 6749 §4): the client credentials grant (§4.4), as the Banked seed shows
it: 201 with `created_at`.

RFC 6749 §5.1 answers 200, and strict clients accept nothing else: `BANKGATE_TOKEN_STATUS=200` is for them.
A new grant is a class like `ClientCredentialsGrant` and one `GRANTS.register` call; the token endpoint, the server
metadata and the OpenAPI document follow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from bankgate.credentials.scopes import ScopeError, grant_scopes
from bankgate.oauth.errors import JSON_NO_STORE, OAuthError
from bankgate.oauth.http import Send, respond
from bankgate.oauth.registry import GrantRegistry, KeyFamilyRegistry

if TYPE_CHECKING:
    from bankgate.credentials.clients import ClientRecord
    from bankgate.oauth.request import Params
    from bankgate.runtime import Runtime

__all__ = ["GRANTS", "KEY_FAMILIES", "ClientCredentialsGrant"]


class ClientCredentialsGrant:
    """The client is its own subject (RFC 6749 §4.4); only clients onboarded for OAuth2 may ask."""

    grant_type = "client_credentials"
    parameters: dict[str, Any] = {
        "scope": {"type": "string", "description": "Space-separated business application IDs; none: all allowed"},
    }

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None:
        if client.auth_mode != "oauth2":
            raise OAuthError(
                "unauthorized_client",
                "this client was onboarded for Basic authentication: send Authorization: Basic "
                "base64(api_key:secret_key) on each API call instead of asking for a token",
            )
        try:
            scopes = grant_scopes(params.get("scope"), client.scopes)
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        retry_after = runtime.services.limiter.hit(f"client:{client.id}")
        if retry_after is not None:
            raise OAuthError(
                "slow_down",
                "this client asks for tokens too often; reuse a token until it is about to expire "
                f"(retry in {max(1, round(retry_after))} s)",
                429,
                audit_reason="rate_limited",
                retry_after=max(1, round(retry_after)),
            )
        issued = runtime.tokens.issue(client_id=client.id, scope=scopes, ttl=runtime.settings.token_ttl)
        runtime.audit(
            "token.issued",
            client.api_key,
            "success",
            source_ip,
            {"client_id": client.id, "jti": issued.jti, "scope": issued.scope, "kid": issued.kid},
        )
        body = orjson.dumps(
            {
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "scope": issued.scope,
                "created_at": issued.created_at,
            }
        )
        await respond(send, runtime.settings.token_status, body, JSON_NO_STORE)


#: The grant types the token endpoint accepts; discovery and the OpenAPI document list them.
GRANTS = GrantRegistry()
GRANTS.register(ClientCredentialsGrant())

#: Key pairs of other kinds the token endpoint issues tokens to (administrators': `bankgate.adminapi.token`).
KEY_FAMILIES = KeyFamilyRegistry()
