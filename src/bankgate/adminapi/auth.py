"""Who may call the admin API, and from where: an administrator's key pair as Basic (RFC 7617), or a Bearer access
token (RFC 6750) the token endpoint issued to that key pair with the admin audience; only from the addresses of
`BANKGATE_ADMIN_ALLOWED_IPS`.

Every request reads the administrator's record again, so disabling one or changing its role applies to its next
request, tokens included; what the request may do is `admin/policy.py`'s answer for that record and the token's
scopes.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from bankgate.admin.policy import AdminPrincipal, permissions_for
from bankgate.credentials.admins import AdminAuthError, AdminThrottled
from bankgate.guard.keys import LocalKeys
from bankgate.guard.verifier import InvalidToken, TokenVerifier, VerifierUnavailable
from bankgate.tokens.issuer import TokenIssuer
from bankgate.tokens.revocation import RevocationUnavailable
from bankgate.web.asgi import ASGIApp, Receive, Scope, Send
from bankgate.web.basic import MalformedBasic, NotBasic, parse_basic
from bankgate.web.errors import PROBLEM, HttpError, send_error
from bankgate.web.headers import DuplicateHeader, single_header

if TYPE_CHECKING:
    from bankgate.config import Settings
    from bankgate.runtime import Runtime

__all__ = ["CHALLENGE", "AdminAuthentication", "AdminNetworks", "AdminTokens", "Refused"]

#: The challenges of a refused admin API request: a key pair as Basic, or a Bearer token of the admin audience.
CHALLENGE = b'Basic realm="bankgate-admin", charset="UTF-8", Bearer realm="bankgate-admin"'
_SEND = ("send Authorization: Basic base64(admin_api_key:admin_secret) or Authorization: Bearer <admin access "
         "token> (POST /oauth/token with the admin key pair)")


class AdminNetworks:
    """`BANKGATE_ADMIN_ALLOWED_IPS`: the addresses the admin API and console answer. An empty list allows every
    address in the sandbox and none in production: an administrator's surface fails closed."""

    def __init__(self, settings: Settings) -> None:
        self._networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in settings.admin_allowed_ips)
        self._open = not self._networks and settings.environment == "sandbox"
        self.environment = settings.environment

    def allows(self, ip: str | None) -> bool:
        if self._open:
            return True
        if ip is None:
            return False
        try:
            address = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def refusal(self, ip: str | None) -> HttpError:
        where = ("no address is allowed: set BANKGATE_ADMIN_ALLOWED_IPS" if not self._networks
                 else "ask an owner to add it to BANKGATE_ADMIN_ALLOWED_IPS")
        return HttpError(403, "address_not_allowed", f"the admin API does not answer {ip or 'this address'}; {where}")


class AdminTokens:
    """Access tokens of the admin API: signed by the server's key ring like every token, with the admin audience, so
    a merchant API's guard (audience `BANKGATE_AUDIENCE`) never accepts one and this verifier never accepts theirs."""

    def __init__(self, runtime: Runtime) -> None:
        settings, services = runtime.settings, runtime.services
        self.ttl = settings.admin_token_ttl
        self.issuer = TokenIssuer(runtime.keys, issuer=runtime.issuer_url, audience=settings.admin_audience,
                                  environment=settings.environment, clock=services.clock)
        token_denied = services.revocations.token_denied

        def token_revoked(jti: str, subject: str, certificate: str | None, issued_at: int) -> bool:
            try:
                return token_denied(jti, "admin:" + subject.partition(":")[2], certificate, issued_at)
            except RevocationUnavailable as exc:
                raise VerifierUnavailable(str(exc)) from None

        # Not cached: the admin API is no hot path, and a key retired at once must stop its tokens at once too.
        self.verifier = TokenVerifier(
            LocalKeys(lambda kid: runtime.keys.by_kid.get(kid), runtime.refresh_keys),
            issuer=runtime.issuer_url, audience=settings.admin_audience, environment=settings.environment,
            is_revoked=None, token_revoked=token_revoked, cache_size=0, clock=services.clock,
        )


class Refused(HttpError):
    """A refused request, with the reason the audit trail records (never shown in more detail to the caller)."""

    def __init__(self, status: int, code: str, description: str, *, audit_reason: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(status, code, description, retry_after=retry_after,
                         challenge=CHALLENGE if status == 401 else None)
        self.audit_reason = audit_reason or code


def _unauthorized(description: str, reason: str = "unauthorized") -> Refused:
    return Refused(401, "unauthorized", description, audit_reason=reason)


class AdminAuthentication:
    """Pure ASGI: the address check, then the credentials; sets `scope["state"]["principal"]` (an
    `AdminPrincipal`, whose `key` scopes Idempotency-Key records) for the app inside. Every refusal is an RFC 9457
    problem and an `admin_api.denied` audit event."""

    def __init__(self, app: ASGIApp, runtime: Runtime, tokens: AdminTokens, networks: AdminNetworks) -> None:
        self.app = app
        self._runtime = runtime
        self._tokens = tokens
        self._networks = networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runtime = self._runtime
        source_ip = runtime.proxies.client_ip(scope)
        try:
            if not self._networks.allows(source_ip):
                raise self._networks.refusal(source_ip)
            principal = await self.authenticate(scope, source_ip)
        except HttpError as error:
            reason = error.audit_reason if isinstance(error, Refused) else error.code
            runtime.audit("admin_api.denied", "anonymous", "failure", source_ip,
                          {"reason": reason, "path": scope["path"][:200]})
            await send_error(send, error, PROBLEM, instance=scope["path"])
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def authenticate(self, scope: Scope, source_ip: str | None) -> AdminPrincipal:
        try:
            raw = single_header(scope, b"authorization")
        except DuplicateHeader:
            raise HttpError(400, "invalid_request", "send exactly one Authorization header") from None
        value = raw.decode("latin-1").strip() if raw is not None else ""
        if not value:
            raise _unauthorized(f"no credentials: {_SEND}")
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() == "bearer":
            return await self._bearer(credentials.strip())
        try:
            basic = parse_basic(value, what="admin_api_key:admin_secret")
        except NotBasic as exc:
            raise _unauthorized(f"the {exc.scheme[:20]!r} authentication scheme is not accepted; {_SEND}") from None
        except MalformedBasic as exc:
            raise HttpError(400, "invalid_request", str(exc)) from None
        directory = self._runtime.services.admins
        try:
            admin = await directory.authenticate_secret(basic.user_id, basic.secret, source_ip)
        except AdminThrottled as exc:
            raise HttpError(429, "slow_down", str(exc), retry_after=exc.retry_after) from None
        except AdminAuthError as exc:
            raise _unauthorized(f"{exc}; {_SEND}", exc.reason) from None
        return AdminPrincipal(admin, permissions_for(admin), "basic")

    async def _bearer(self, token: str) -> AdminPrincipal:
        try:
            claims_principal = await self._tokens.verifier.verify(token, None)
        except InvalidToken as exc:
            raise _unauthorized(f"{exc}; {_SEND}", "invalid_token") from None
        except VerifierUnavailable as exc:
            raise HttpError(503, "temporarily_unavailable", str(exc), retry_after=1) from None
        admin = await self._runtime.services.admins.find_by_id(claims_principal.subject)
        if admin is None or not admin.active or admin.environment != self._runtime.settings.environment:
            raise _unauthorized(f"the administrator of this token is no longer active; {_SEND}", "admin_inactive")
        return AdminPrincipal(admin, permissions_for(admin, claims_principal.scopes), "bearer")
