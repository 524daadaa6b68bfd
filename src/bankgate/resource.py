"""The guard of the bankgate server itself: its own key ring, revocation list, client registry and allow lists."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bankgate.credentials.authenticate import ClientRejected
from bankgate.guard.core import Guard, GuardError
from bankgate.guard.keys import LocalKeys
from bankgate.guard.verifier import Principal, TokenVerifier, VerifierUnavailable
from bankgate.oauth.request import ClientCredentials
from bankgate.tokens.revocation import RevocationUnavailable

if TYPE_CHECKING:
    from bankgate.runtime import Runtime

__all__ = ["server_guard"]


def server_guard(runtime: Runtime) -> Guard:
    services, settings = runtime.services, runtime.settings

    token_denied = services.revocations.token_denied

    def token_revoked(jti: str, subject: str, certificate: str | None, issued_at: int) -> bool:
        """The token itself, its client or user, or the certificate it is bound to, revoked (from memory)."""
        try:
            return token_denied(jti, subject, certificate, issued_at)
        except RevocationUnavailable as exc:
            raise VerifierUnavailable(str(exc)) from None

    verifier = TokenVerifier(
        LocalKeys(lambda kid: runtime.keys.by_kid.get(kid), runtime.refresh_keys),
        issuer=runtime.issuer_url,
        audience=settings.audience,
        environment=settings.environment,
        is_revoked=None,
        token_revoked=token_revoked,
        cache_size=settings.verified_token_cache_size,
        clock=services.clock,
    )

    async def basic(api_key: str, secret: str, source_ip: str | None) -> Principal:
        """A key pair on an API call: the token endpoint's own check (throttled, audited), then the mode."""
        try:
            client = await runtime.client_auth(api_key, secret, source_ip)
        except ClientRejected as err:
            actor = ClientCredentials(api_key, secret).actor  # never a secret typed into the key field
            runtime.audit("api.denied", actor, "failure", source_ip, {"reason": err.audit_reason})
            raise GuardError(err.status, err.error, err.description, retry_after=err.retry_after,
                             scheme="Basic") from None
        if client.auth_mode != "basic":
            raise GuardError(
                401, "invalid_client",
                "this client was onboarded for OAuth2: get a token with POST /oauth/token "
                "(grant_type=client_credentials) and send it as Authorization: Bearer <access token>",
                scheme="Basic",
            )
        return Principal(subject=client.id, kind="client", environment=client.environment, scopes=client.scopes,
                         expires_at=0, name=client.name, auth_method="basic")

    async def allows(principal: Principal, source_ip: str | None) -> bool:
        return await services.allowlist.allows(principal.kind, principal.subject, source_ip)

    return Guard(verifier, proxies=runtime.proxies, client_certs=runtime.client_certs, basic=basic, allows=allows)
