"""Access tokens for administrators from the token endpoint (RFC 6749 §4.4, client credentials with an admin key
pair): scopes `admin:<permission>` or `admin:*` (the role's every permission), the admin audience, a short life.

Registered as a key family of the token endpoint (`bankgate.oauth.grants.KEY_FAMILIES`): a `bka_` key is sent
here before any merchant-client work, and a merchant's `bk_` key never comes here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from bankgate.admin.policy import InvalidAdminScope, scopes_for
from bankgate.credentials.admins import ADMIN_KEY_PREFIX, AUTHENTICATION_FAILED, AdminAuthError, AdminThrottled
from bankgate.oauth.errors import JSON_NO_STORE, OAuthError
from bankgate.oauth.grants import KEY_FAMILIES
from bankgate.oauth.http import Send, respond

if TYPE_CHECKING:
    from bankgate.oauth.request import ClientCredentials, Params
    from bankgate.runtime import Runtime

__all__ = ["AdminKeyFamily"]


class AdminKeyFamily:
    prefix = ADMIN_KEY_PREFIX

    async def handle(
        self, runtime: Runtime, credentials: ClientCredentials, params: Params, source_ip: str | None, send: Send
    ) -> None:
        api = runtime.admin_api
        if not api.networks.allows(source_ip):
            raise OAuthError("access_denied", api.networks.refusal(source_ip).description, 403,
                             audit_reason="ip_not_allowed")
        try:
            admin = await runtime.services.admins.authenticate_secret(credentials.api_key, credentials.secret,
                                                                      source_ip)
        except AdminThrottled as exc:
            raise OAuthError("slow_down", str(exc), 429, audit_reason="throttled",
                             retry_after=exc.retry_after) from None
        except AdminAuthError as exc:
            raise OAuthError.invalid_client(AUTHENTICATION_FAILED, reason=exc.reason) from None
        grant_type = params.require("grant_type", "client_credentials")
        if grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type",
                             f"grant_type {grant_type[:64]!r} is not supported: send grant_type=client_credentials")
        try:
            scopes = scopes_for(admin, params.get("scope"))
        except InvalidAdminScope as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        tokens = api.tokens
        issued = tokens.issuer.mint(subject=admin.id, ttl=tokens.ttl,
                                    claims={"client_id": admin.api_key, "scope": " ".join(scopes)})
        runtime.audit("admin.token_issued", f"api:{admin.name}", "success", source_ip,
                      {"admin_id": admin.id, "jti": issued.jti, "scope": issued.scope, "kid": issued.kid})
        body = orjson.dumps({"access_token": issued.access_token, "token_type": "Bearer",
                             "expires_in": issued.expires_in, "scope": issued.scope, "created_at": issued.created_at})
        await respond(send, runtime.settings.token_status, body, JSON_NO_STORE)


KEY_FAMILIES.register(AdminKeyFamily())
