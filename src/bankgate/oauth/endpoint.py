"""What every OAuth endpoint does the same way: read parameters, authenticate the client (RFC 6749 §2.3.1),
answer errors in RFC 6749 §5.2 form, and put every failure in the audit trail. A plain ASGI app (see Starlette's
middleware style): the token endpoint is the hot path, so no framework request objects are built for it.
"""

from __future__ import annotations

from typing import Any

from bankgate.credentials.allowlist import describe_default
from bankgate.credentials.authenticate import ClientRejected
from bankgate.credentials.clients import ClientRecord
from bankgate.oauth.errors import OAuthError
from bankgate.oauth.http import Receive, Scope, Send, header
from bankgate.oauth.registry import KeyFamilyRegistry
from bankgate.oauth.request import Params, client_credentials, read_params
from bankgate.request_layer import tell_actor
from bankgate.runtime import Runtime
from bankgate.web.errors import OAUTH, send_error

__all__ = ["OAuthEndpoint"]


class OAuthEndpoint:
    #: The audit event recorded when a request to this endpoint fails.
    denied_event = "oauth.denied"
    #: Whether a revoked client's correct key pair is accepted: so it can still introspect and revoke its own
    #: tokens (RFC 7662, RFC 7009), never get new ones.
    accepts_revoked = False
    #: Key pairs of other families this endpoint serves besides merchant clients (the token endpoint: admins').
    families: KeyFamilyRegistry | None = None

    def __init__(self, state: Any) -> None:
        self._state = state  # the app's state; `state.runtime` exists once the app has started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self._state.runtime
        source_ip = runtime.proxies.client_ip(scope)
        actor = "anonymous"
        try:
            params = await read_params(scope, receive, runtime.settings.max_body_bytes)
            credentials = client_credentials(header(scope, b"authorization"), params)
            actor = credentials.actor
            if self.families is not None and (family := self.families.match(credentials.api_key)) is not None:
                await family.handle(runtime, credentials, params, source_ip, send)
                tell_actor(scope, credentials.actor)  # it authenticated: a refusal raises
                return
            client = await self.authenticate(runtime, credentials.api_key, credentials.secret, source_ip,
                                             allow_revoked=self.accepts_revoked)
            actor = client.api_key
            tell_actor(scope, actor)
            if not await runtime.services.allowlist.allows("client", client.id, source_ip):
                raise OAuthError(
                    "access_denied",
                    f"requests from {source_ip} are not allowed for this client "
                    f"({describe_default(runtime.settings.environment)}); ask your integration manager to "
                    "allow-list the address",
                    403,
                    audit_reason="ip_not_allowed",
                )
            await self.handle(runtime, client, params, source_ip, send)
        except OAuthError as err:
            runtime.audit(self.denied_event, actor, "failure", source_ip,
                          {"reason": err.audit_reason, "error": err.error})
            await send_error(send, err, OAUTH)
        # Anything else (the database down: 503; a defect: 500) is answered by the app's ErrorBoundary.

    @staticmethod
    async def authenticate(
        runtime: Runtime, api_key: str, secret: str, source_ip: str | None, *, allow_revoked: bool = False
    ) -> ClientRecord:
        """The client authentication use case (throttled per key and per address), its refusal as RFC 6749 §5.2."""
        try:
            return await runtime.client_auth(api_key, secret, source_ip, allow_revoked=allow_revoked)
        except ClientRejected as exc:
            raise OAuthError(exc.error, exc.description, exc.status, audit_reason=exc.audit_reason,
                             retry_after=exc.retry_after) from None

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None:
        raise NotImplementedError
