"""`GET /api/v1/authorizations/authorize`: the certificate style's token endpoint, as the Banking Circle seed shows
it. Basic username:password over mutual TLS with the user's certificate answers 200 with
`{"access_token": "<JWT>", "expires_in": "300"}` (a string, as the provider's own OpenAPI has it).

The token carries the seed's claims (`oid, name, userType, thumbprint, azp, ver`) and RFC 8705 `cnf.x5t#S256`
binding it to the certificate, so a resource server accepts it only over a connection presenting that certificate.
"""

from __future__ import annotations

import orjson

from bankgate.oauth.http import Receive, Scope, Send, respond
from bankgate.oauth.userauth import UserAuthError, authenticate_user
from bankgate.runtime import Runtime
from bankgate.web.errors import PROBLEM, send_error
from bankgate.web.headers import JSON_NO_STORE

__all__ = ["AuthorizeEndpoint"]

#: The seed's tokens say `"ver": "1.0"`.
TOKEN_VERSION = "1.0"  # noqa: S105 - a version, not a password


class AuthorizeEndpoint:
    def __init__(self, state: object) -> None:
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self._state.runtime  # type: ignore[attr-defined]
        source_ip = runtime.proxies.client_ip(scope)
        actor = "anonymous"
        thumbprint = None
        try:
            authenticated = await authenticate_user(runtime, scope, source_ip, require_certificate=True)
            user, certificate = authenticated.user, authenticated.certificate
            actor, thumbprint = user.username, certificate.thumbprint
            retry_after = runtime.services.limiter.hit(f"user:{user.id}")
            if retry_after is not None:
                raise UserAuthError(
                    429, "Too Many Requests",
                    f"this user asks for tokens too often; reuse the token until it expires (retry in "
                    f"{max(1, round(retry_after))} s)",
                    reason="rate_limited", retry_after=retry_after,
                )
            ttl = runtime.settings.m2m_token_ttl
            issued = runtime.tokens.mint(
                subject=user.id,
                ttl=ttl,
                claims={
                    "oid": user.id,
                    "name": user.name,
                    "userType": user.user_type,
                    "thumbprint": certificate.thumbprint,
                    "azp": runtime.settings.audience,
                    "ver": TOKEN_VERSION,
                    "cnf": {"x5t#S256": certificate.x5t_s256},
                    **({"scope": " ".join(user.scopes)} if user.scopes else {}),
                },
            )
        except UserAuthError as err:
            runtime.audit("token.denied", err.actor if actor == "anonymous" else actor, "failure", source_ip,
                          {"style": "certificate", "reason": err.reason, "thumbprint": err.thumbprint or thumbprint})
            await send_error(send, err, PROBLEM, instance=scope.get("path", ""))
            return
        runtime.audit(
            "token.issued",
            user.username,
            "success",
            source_ip,
            {"style": "certificate", "user_id": user.id, "jti": issued.jti, "thumbprint": certificate.thumbprint,
             "kid": issued.kid},
        )
        body = orjson.dumps({"access_token": issued.access_token, "expires_in": str(issued.expires_in)})
        await respond(send, 200, body, JSON_NO_STORE)
