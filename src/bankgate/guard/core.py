"""Deciding who a request speaks for (RFC 6750 §2.1, RFC 7617, RFC 8705), in one place for every API route.

`Guard.authenticate(scope)` reads the one `Authorization` header, accepts `Bearer <JWT>` (verified by
`TokenVerifier`, bound tokens checked against the certificate presented on this connection or forwarded by a trusted
proxy) and, when the guard is given a Basic authenticator, `Basic base64(api_key:secret_key)` for clients onboarded
for Basic. It then applies the principal's IP allow list. It returns a `Principal` or raises `GuardError`, which
knows its RFC 6750 answer: 400 `invalid_request`, 401 `invalid_token` with `WWW-Authenticate`, 403
`insufficient_scope` / `access_denied`, 503 when a check cannot be made (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable

import httpx

from bankgate.certheaders import ClientCertificateSource
from bankgate.events import Channel, Events
from bankgate.guard.keys import RemoteJWKS
from bankgate.guard.revocations import FEED_SCOPE, RemoteRevocations
from bankgate.guard.verifier import InvalidToken, Principal, TokenVerifier, VerifierUnavailable
from bankgate.net import TrustedProxies
from bankgate.web.asgi import Scope
from bankgate.web.basic import MalformedBasic, decode_credentials
from bankgate.web.errors import HttpError
from bankgate.web.headers import DuplicateHeader, single_header

__all__ = ["BasicAuthenticator", "Guard", "GuardError", "insufficient_scope", "parse_authorization"]

#: (api_key, secret_key, source address) -> Principal, or raise GuardError.
BasicAuthenticator = Callable[[str, str, str | None], Awaitable[Principal]]
AllowList = Callable[[Principal, str | None], Awaitable[bool]]

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_AUTHORIZATION = 16384
_SEND_BEARER = "send Authorization: Bearer <access token>"
_UNHEARD = Channel("guard", ())


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class GuardError(HttpError):
    """A refusal, with the status, the spec's error code and a description that says what to do; rendered by
    `bankgate.web.errors` in RFC 6750 JSON. `error` is None for a request without (usable) credentials: its
    challenge carries no error code (RFC 6750 §3.1), its body says `invalid_request`."""

    def __init__(
        self,
        status: int,
        error: str | None,
        description: str,
        *,
        scope: str | None = None,
        retry_after: int | None = None,
        scheme: str = "Bearer",
    ) -> None:
        super().__init__(status, error or "invalid_request", description, retry_after=retry_after)
        self.error = error
        self.scope = scope
        self.scheme = scheme
        self.for_realm("bankgate")

    def __repr__(self) -> str:
        return f"GuardError({self.status}, {self.error!r}, {self.description!r})"

    def for_realm(self, realm: str, *, basic: bool = False) -> GuardError:
        """Set the WWW-Authenticate challenge (RFC 6750 §3) of `realm`, offering Basic too when `basic` and no
        credentials were sent; sent with a 401, a 403 and a malformed request."""
        if not (self.status in (401, 403) or self.error == "invalid_request"):
            self.challenge = None
            return self
        parts = [f'realm="{_quoted(realm)}"']
        if self.error in ("invalid_request", "invalid_token", "insufficient_scope"):
            parts.append(f'error="{self.error}"')
            parts.append(f'error_description="{_quoted(self.description)}"')
        if self.scope:
            parts.append(f'scope="{_quoted(self.scope)}"')
        challenges = [f"{self.scheme} " + ", ".join(parts)]
        if basic and self.scheme == "Bearer" and self.error is None:
            challenges.append(f'Basic realm="{_quoted(realm)}", charset="UTF-8"')
        self.challenge = ", ".join(challenges).encode("latin-1", "replace")
        return self


def _authorization(scope: Scope) -> str | None:
    """The one Authorization header, as ASCII text; None when absent."""
    try:
        found = single_header(scope, b"authorization")
    except DuplicateHeader:
        raise GuardError(400, "invalid_request", "send exactly one Authorization header") from None
    if found is None:
        return None
    if len(found) > _MAX_AUTHORIZATION:
        raise GuardError(400, "invalid_request", "the Authorization header is too long")
    try:
        return found.decode("ascii")
    except UnicodeDecodeError:
        raise GuardError(400, "invalid_request", "the Authorization header must be ASCII text") from None


def parse_authorization(value: str | None) -> tuple[str, str] | None:
    """("bearer", token) or ("basic", credentials); None when no credentials were sent. Raises GuardError."""
    if value is None or not value.strip():
        return None
    scheme, _, rest = value.strip().partition(" ")
    credentials = rest.strip()
    kind = scheme.lower()
    if kind not in ("bearer", "basic"):
        # RFC 6750 §3.1: an unsupported method gets the challenge without an error code.
        raise GuardError(401, None, f"the {scheme[:20]!r} authentication scheme is not accepted; " + _SEND_BEARER)
    if not credentials:
        return None
    if not _B64TOKEN.fullmatch(credentials):
        raise GuardError(400, "invalid_request", f"the {scheme} credentials are malformed; " + _SEND_BEARER)
    return kind, credentials


def decode_basic(credentials: str) -> tuple[str, str]:
    """(api_key, secret_key) from base64(api_key:secret_key), by the one rule of `bankgate.web.basic` (an empty
    secret is well-formed: the authenticator refuses it with 401, as any wrong secret)."""
    try:
        decoded = decode_credentials(credentials, what="api_key:secret_key")
    except MalformedBasic as exc:
        raise GuardError(400, "invalid_request", str(exc), scheme="Basic") from None
    return decoded.user_id, decoded.secret


class Guard:
    """Authenticates requests for an API: Bearer tokens always, Basic key pairs when `basic` is given."""

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        proxies: TrustedProxies | None = None,
        client_certs: ClientCertificateSource | None = None,
        basic: BasicAuthenticator | None = None,
        allows: AllowList | None = None,
        realm: str = "bankgate",
        events: Events | None = None,
    ) -> None:
        self.verifier = verifier
        self.proxies = proxies or TrustedProxies()
        self.client_certs = client_certs or ClientCertificateSource(self.proxies, None)
        self.realm = realm
        self._basic = basic
        self._allows = allows
        self._allowed = self._denied = _UNHEARD
        if events is not None:
            self.tell(events)

    def __repr__(self) -> str:
        return f"Guard({self.verifier!r}, basic={self._basic is not None})"

    @classmethod
    def remote(
        cls,
        issuer: str,
        *,
        jwks_url: str | None = None,
        audience: str = "bankgate-api",
        environment: str = "sandbox",
        trusted_proxies: Iterable[str] = (),
        client_cert_header: str | None = None,
        client_cert_header_name: str | None = None,
        is_revoked: Callable[[str], bool] | None = None,
        revocations: bool = False,
        revocation_credentials: tuple[str, str] | None = None,
        revocation_interval: float = 5.0,
        revocation_max_staleness: float | None = None,
        leeway: int = 30,
        cache_size: int = 10000,
        min_refresh_interval: float = 30.0,
        realm: str = "bankgate",
        http: httpx.AsyncClient | None = None,
    ) -> Guard:
        """A guard for an API running apart from the bankgate server: keys from the issuer's JWKS URL.

        `trusted_proxies` and `client_cert_header` ("nginx", "envoy", "traefik", "alb", "caddy") say where a
        certificate-bound token's certificate comes from behind a TLS-terminating proxy. With `revocations`, tokens
        revoked at the issuer (alone, or with their client, user or certificate) are refused too: the issuer's
        revocation feed is polled every `revocation_interval` seconds with `revocation_credentials`, the key pair
        of a client that has the `bankgate:revocations` application, and requests are refused with 503 when the
        list is older than `revocation_max_staleness` (default: 10 intervals, at least 30 s). `http` is the
        `httpx.AsyncClient` to reach the issuer with (default: a new client per request).
        """
        issuer = issuer.rstrip("/")
        keys = RemoteJWKS(jwks_url or f"{issuer}/.well-known/jwks.json", min_refresh_interval=min_refresh_interval,
                          http=http)
        feed: RemoteRevocations | None = None
        if revocations:
            if revocation_credentials is None:
                raise ValueError("revocations=True needs revocation_credentials=(api_key, secret_key) of a client "
                                 f"that has the {FEED_SCOPE} application")
            feed = RemoteRevocations(f"{issuer}/oauth/revocations", revocation_credentials,
                                     interval=revocation_interval, max_staleness=revocation_max_staleness, http=http)
        verifier = TokenVerifier(keys, issuer=issuer, audience=audience, environment=environment,
                                 is_revoked=is_revoked, revocations=feed, leeway=leeway, cache_size=cache_size)
        proxies = TrustedProxies(trusted_proxies)
        certs = ClientCertificateSource(proxies, client_cert_header, name=client_cert_header_name)
        return cls(verifier, proxies=proxies, client_certs=certs, realm=realm)

    def tell(self, events: Events) -> None:
        """Emit every verdict to `events`: `guard.allowed` (actor: the principal's key) and `guard.denied` (the
        status and error code); free while no sink wants them."""
        self._allowed = events.channel("guard.allowed")
        self._denied = events.channel("guard.denied")

    @property
    def accepts_basic(self) -> bool:
        return self._basic is not None

    async def authenticate(self, scope: Scope) -> Principal:
        """The principal `scope`'s credentials speak for; raises GuardError (its challenge set for this guard
        with `err.for_realm(guard.realm, basic=guard.accepts_basic)` before it is sent)."""
        try:
            value = _authorization(scope)
            if value is not None and value.startswith("Bearer ") and self.verifier.remembers(value[7:]):
                # The common case, a client reusing its token: already found well-formed, so skip the parsing.
                parsed: tuple[str, str] | None = ("bearer", value[7:])
            else:
                parsed = parse_authorization(value)
            if parsed is None:
                how = " (or Basic base64(api_key:secret_key) for Basic clients)" if self._basic else ""
                raise GuardError(401, None, _SEND_BEARER + how)
            kind, credentials = parsed
            if kind == "bearer":
                try:
                    principal = await self.verifier.verify(credentials, lambda: self.client_certs.der(scope))
                except InvalidToken as exc:
                    raise GuardError(401, "invalid_token", str(exc)) from None
                except VerifierUnavailable as exc:
                    raise GuardError(503, "temporarily_unavailable", f"{exc}; retry shortly", retry_after=2) from None
            else:
                if self._basic is None:
                    raise GuardError(401, None, "Basic authentication is not accepted here; " + _SEND_BEARER)
                api_key, secret = decode_basic(credentials)
                principal = await self._basic(api_key, secret, self.proxies.client_ip(scope))
            if self._allows is not None:
                source_ip = self.proxies.client_ip(scope)
                if not await self._allows(principal, source_ip):
                    raise GuardError(403, "access_denied", f"requests from {source_ip} are not allowed for this "
                                     f"{principal.kind}; ask your integration manager to allow-list the address")
        except GuardError as err:
            if self._denied.sinks:
                self._denied.emit("anonymous", "failure", self.proxies.client_ip(scope),
                                  {"status": err.status, "reason": err.code})
            raise
        if self._allowed.sinks:
            self._allowed.emit(principal.key, "success", self.proxies.client_ip(scope), {"kind": principal.kind})
        return principal


def insufficient_scope(principal: Principal, needed: str) -> GuardError:
    """403 for a principal lacking application `needed` (RFC 6750 §3.1), naming the ones it has."""
    having = ", ".join(principal.scopes) or "none"
    return GuardError(403, "insufficient_scope",
                      f"this {principal.kind} may not act for {needed[:128]}; its applications: {having}", scope=needed)
