"""What every OAuth endpoint does the same way: read parameters, authenticate the client (RFC 6749 §2.3.1),
answer errors in RFC 6749 §5.2 form, and put every failure in the audit trail. A plain ASGI app (see Starlette's
middleware style): the token endpoint is the hot path, so no framework request objects are built for it.
"""

from __future__ import annotations

from typing import Any

from bankgate.credentials.allowlist import describe_default
from bankgate.credentials.clients import ClientAuthError, ClientRecord
from bankgate.oauth.errors import OAuthError
from bankgate.oauth.http import Receive, Scope, Send, header
from bankgate.oauth.request import Params, client_credentials, read_params
from bankgate.runtime import Runtime
from bankgate.throttle import keys_for
from bankgate.web.errors import OAUTH, send_error

__all__ = ["OAuthEndpoint"]

_FAILED = "client authentication failed: check the API key and secret key"


class OAuthEndpoint:
    #: The audit event recorded when a request to this endpoint fails.
    denied_event = "oauth.denied"
    #: Whether a revoked client's correct key pair is accepted: so it can still introspect and revoke its own
    #: tokens (RFC 7662, RFC 7009), never get new ones.
    accepts_revoked = False

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
            client = await self.authenticate(runtime, credentials.api_key, credentials.secret, source_ip,
                                             allow_revoked=self.accepts_revoked)
            actor = client.api_key
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
        """Check the key pair, throttled per key and per address: a throttled attempt is refused unchecked."""
        throttle = runtime.services.throttle
        quiet = throttle.quiet
        keys = [] if quiet else keys_for(api_key[:80], source_ip)
        retry_after = None if quiet else throttle.blocked(keys)
        if retry_after is not None:
            raise OAuthError(
                "slow_down",
                f"too many failed authentications; retry in {max(1, round(retry_after))} s",
                429,
                audit_reason="throttled",
                retry_after=max(1, round(retry_after)),
            )
        try:
            client = await runtime.services.clients.authenticate(api_key, secret, allow_revoked=allow_revoked)
        except ClientAuthError as exc:
            if exc.reason in ("unknown_api_key", "wrong_secret"):
                await throttle.failure(keys or keys_for(api_key[:80], source_ip))
            if exc.reason == "client_revoked":
                raise OAuthError.invalid_client(
                    "this client has been revoked; ask your integration manager for new credentials",
                    reason=exc.reason,
                ) from None
            if exc.reason == "wrong_environment":
                raise OAuthError.invalid_client(
                    f"these credentials are not for the {runtime.settings.environment} environment; "
                    "use the server of their environment",
                    reason=exc.reason,
                ) from None
            # Unknown key or wrong secret: one answer, so keys cannot be enumerated.
            raise OAuthError.invalid_client(_FAILED, reason=exc.reason) from None
        if not quiet:
            await throttle.success(keys)
        return client

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None:
        raise NotImplementedError
