"""Token revocation (RFC 7009): the token's `jti` joins the deny list until the token would have expired."""

from __future__ import annotations

from bankgate.credentials.clients import ClientRecord
from bankgate.oauth.endpoint import OAuthEndpoint
from bankgate.oauth.errors import JSON_NO_STORE, OAuthError
from bankgate.oauth.http import Send, respond
from bankgate.oauth.request import Params
from bankgate.runtime import Runtime

__all__ = ["RevocationEndpoint"]


class RevocationEndpoint(OAuthEndpoint):
    denied_event = "token.revocation_denied"
    accepts_revoked = True  # a client revoked because its key pair leaked may still revoke its own tokens

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None:
        claims = runtime.tokens.read(params.require("token", "<access token>"))
        if claims is not None and claims.get("sub") != client.id:
            raise OAuthError(
                "unauthorized_client", "this token was issued to another client; only its owner may revoke it"
            )
        # RFC 7009 §2.2: an invalid, unknown or expired token is answered 200 as well: nothing to revoke.
        if claims is not None and claims["exp"] > runtime.services.clock.now():
            added = await runtime.services.revocations.revoke(claims["jti"], client.id, float(claims["exp"]))
            runtime.audit(
                "token.revoked",
                client.api_key,
                "success",
                source_ip,
                {"client_id": client.id, "jti": claims["jti"], "already_revoked": not added},
            )
        await respond(send, 200, b"", JSON_NO_STORE[1:])
