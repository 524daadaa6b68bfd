"""Token sources: how each style asks for a token and reads the answer.

* `ClientCredentials`: OAuth2 client_credentials (RFC 6749 §4.4) as Banked documents it: `POST /oauth/token`,
  Basic `api_key:secret_key`, `grant_type` and `scope` (application IDs) form-encoded; 200 or 201.
* `CertificateAuthorize`: the Banking Circle seed: `GET /api/v1/authorizations/authorize`, Basic
  `username:password`, over mutual TLS with the user's certificate; `{"access_token", "expires_in": "300"}`.

Each source exposes one generator, `fetch_flow()`, that yields the requests to send (and waits to take) and
returns the `Token`; `fetch_sync()` and `fetch_async()` only drive it, so both flavours share every rule.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bankgate.client import _errors as errors
from bankgate.client._cache import cache_key
from bankgate.client._retry import parse_retry_after
from bankgate.client._tls import CertInput, ClientCertificate, VerifyInput, as_certificate, build_ssl_context
from bankgate.client._token import DEFAULT_LIFETIME, Token, token_from_response

__all__ = ["AUTHORIZE_PATH", "CertificateAuthorize", "ClientCredentials", "TokenSource"]

log = logging.getLogger("bankgate.client")

AUTHORIZE_PATH = "/api/v1/authorizations/authorize"
METADATA_PATH = "/.well-known/oauth-authorization-server"
_USER_AGENT = "bankgate-client/0.1"
#: Token calls are retried on these (and on connection errors), twice at most, quickly: never on 4xx.
_TOKEN_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_TOKEN_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Wait:
    """Yielded by a fetch flow: sleep this many seconds before the next request."""

    seconds: float


FetchFlow = Generator["httpx.Request | Wait", "httpx.Response | httpx.TransportError | None", Token]

_ERRORS: dict[str, type[errors.TokenError]] = {
    "invalid_client": errors.InvalidClient,
    "invalid_scope": errors.InvalidScope,
    "unauthorized_client": errors.UnauthorizedClient,
    "invalid_request": errors.InvalidRequest,
    "invalid_grant": errors.InvalidGrant,
    "unsupported_grant_type": errors.UnsupportedGrantType,
    "access_denied": errors.AccessDenied,
    "slow_down": errors.RateLimited,
    "temporarily_unavailable": errors.TokenServerError,
    "server_error": errors.TokenServerError,
}


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


class TokenSource(ABC):
    """Where tokens come from. Subclasses say how to ask (`build_request`) and how to read the answer."""

    style: str = ""

    def __init__(self, endpoint: str | None, *, verify: VerifyInput = True, cert: ClientCertificate | None = None,
                 timeout: float = 10.0, default_lifetime: float = DEFAULT_LIFETIME) -> None:
        self.endpoint = endpoint
        self.certificate = cert
        self.timeout = timeout
        self.default_lifetime = default_lifetime
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._http: httpx.Client | None = None

    # -- what subclasses provide --------------------------------------------------------------------------------

    @abstractmethod
    def build_request(self) -> httpx.Request:
        """The token request (its endpoint resolved)."""

    @abstractmethod
    def _identity(self) -> tuple[str | None, ...]:
        """Every credential and parameter that decides which token comes back (for the cache key)."""

    @abstractmethod
    def _secrets(self) -> tuple[str | None, ...]:
        """Values that must never appear in an error message."""

    # -- shared ---------------------------------------------------------------------------------------------------

    @property
    def cache_key(self) -> str:
        fingerprint = self.certificate.fingerprint if self.certificate else None
        return cache_key(self.style, *self._identity(), fingerprint)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """Trust settings and, for mutual TLS, the client certificate; the API client uses the same context."""
        if self._ssl is None:
            self._ssl = build_ssl_context(self._verify, self.certificate)
        return self._ssl

    def _resolve(self) -> Generator[httpx.Request | Wait, Any, None]:
        """Discover the endpoint first when needed (RFC 8414); nothing to do by default."""
        return
        yield  # pragma: no cover - makes this a generator

    def fetch_flow(self, clock: Callable[[], float] = time.time) -> FetchFlow:
        """Yield the token request (again after a transient failure), return the `Token` or raise a `TokenError`."""
        yield from self._resolve()
        for attempt in range(1, _TOKEN_ATTEMPTS + 1):
            request = self.build_request()
            sent_at = clock()
            outcome = yield request
            if isinstance(outcome, httpx.TransportError):
                if attempt == _TOKEN_ATTEMPTS:
                    raise errors.TokenUnavailable(0, None, f"{type(outcome).__name__}: {outcome}",
                                                  endpoint=self._where()) from None
            elif isinstance(outcome, httpx.Response) and (
                    outcome.status_code not in _TOKEN_RETRY_STATUSES or attempt == _TOKEN_ATTEMPTS):
                return self.parse_response(outcome, sent_at)
            yield Wait(0.1 * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _where(self) -> str:
        return str(httpx.URL(self.endpoint or "").copy_with(query=None, fragment=None))

    def parse_response(self, response: httpx.Response, sent_at: float) -> Token:
        """A `Token` from a 2xx answer; a typed `TokenError` from anything else."""
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.is_success:
            token = token_from_response(body, sent_at, default_lifetime=self.default_lifetime) \
                if isinstance(body, dict) else None
            if token is None:
                raise errors.InvalidTokenResponse(response.status_code, None, "the answer has no access_token",
                                                  endpoint=self._where())
            log.debug("%s token obtained from %s, valid %g s", self.style, self._where(), token.lifetime)
            return token
        raise self.error_for(response, body)

    def error_for(self, response: httpx.Response, body: Any) -> errors.TokenError:
        status = response.status_code
        code: str | None = None
        description = ""
        if isinstance(body, dict):
            if isinstance(body.get("error"), str):
                code = body["error"]
                description = str(body.get("error_description") or "")
            elif isinstance(body.get("detail"), str):  # RFC 7807 problem details
                description = body["detail"]
            elif isinstance(body.get("errors"), list) and body["errors"]:  # the provider's errors list
                first = body["errors"][0]
                if isinstance(first, dict):
                    code = str(first.get("errorCode") or "") or None
                    description = str(first.get("errorDescription") or "")
        elif response.text and "json" not in response.headers.get("content-type", ""):
            description = response.text[:200] if "<" not in response.text[:1] else ""
        description = errors.redact(description, self._secrets())
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        kind = _ERRORS.get(code or "")
        if kind is None:
            if status == 401:
                kind = errors.InvalidClient
            elif status == 403:
                lowered = description.lower()
                resetting = "passphrase" in lowered or ("password" in lowered and ("reset" in lowered
                                                                                   or "change" in lowered))
                kind = errors.PasswordResetRequired if resetting else errors.AccessDenied
            elif status == 429:
                kind = errors.RateLimited
            elif status >= 500:
                kind = errors.TokenServerError
            elif status == 400:
                kind = errors.InvalidRequest
            else:
                kind = errors.TokenError
        return kind(status, code, description, endpoint=self._where(), retry_after=retry_after)

    # -- driving the flow -------------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(verify=self.ssl_context, timeout=self.timeout, trust_env=False,
                                      headers={"User-Agent": _USER_AGENT})
        return self._http

    def fetch_sync(self, clock: Callable[[], float] = time.time) -> Token:
        """Ask for a token now (no cache), on this source's own connection pool."""
        http = self._client()
        flow = self.fetch_flow(clock)
        try:
            step = next(flow)
            while True:
                if isinstance(step, Wait):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    outcome: httpx.Response | httpx.TransportError = http.send(step)
                except httpx.TransportError as exc:
                    outcome = exc
                step = flow.send(outcome)
        except StopIteration as done:
            token: Token = done.value
            return token

    async def fetch_async(self, clock: Callable[[], float] = time.time) -> Token:
        """The async twin of `fetch_sync` (a short-lived client: tokens are fetched rarely)."""
        flow = self.fetch_flow(clock)
        async with httpx.AsyncClient(verify=self.ssl_context, timeout=self.timeout, trust_env=False,
                                     headers={"User-Agent": _USER_AGENT}) as http:
            try:
                step = next(flow)
                while True:
                    if isinstance(step, Wait):
                        await asyncio.sleep(step.seconds)
                        step = flow.send(None)
                        continue
                    try:
                        outcome: httpx.Response | httpx.TransportError = await http.send(step)
                    except httpx.TransportError as exc:
                        outcome = exc
                    step = flow.send(outcome)
            except StopIteration as done:
                token: Token = done.value
                return token

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


class ClientCredentials(TokenSource):
    """OAuth2 client_credentials with `client_secret_basic` (default) or `client_secret_post`.

    `token_url` may be None when `discovery_url` (an RFC 8414 metadata document) names it.
    """

    style = "client_credentials"

    def __init__(self, token_url: str | None, client_id: str, client_secret: str,
                 scope: str | Sequence[str] | None = None, *, auth_method: str = "client_secret_basic",
                 extra_params: dict[str, str] | None = None, discovery_url: str | None = None,
                 verify: VerifyInput = True, cert: CertInput = None, timeout: float = 10.0,
                 default_lifetime: float = DEFAULT_LIFETIME) -> None:
        if token_url is None and discovery_url is None:
            raise ValueError("give token_url, or discovery_url to read it from the server's metadata")
        if auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ValueError("auth_method is client_secret_basic or client_secret_post")
        if not client_id or not client_secret:
            raise ValueError("the API key and the secret key are both required")
        super().__init__(token_url, verify=verify, cert=as_certificate(cert), timeout=timeout,
                         default_lifetime=default_lifetime)
        self.client_id = client_id
        self._secret = client_secret
        self.scope: str | None = scope if scope is None or isinstance(scope, str) else " ".join(scope)
        self.auth_method = auth_method
        self.extra_params = dict(extra_params or {})
        self.discovery_url = discovery_url

    def __repr__(self) -> str:
        where = self.endpoint or f"discovered from {self.discovery_url}"
        return f"ClientCredentials({where!r}, client_id={self.client_id!r}, scope={self.scope!r})"

    def _identity(self) -> tuple[str | None, ...]:
        return (self.endpoint or self.discovery_url, self.client_id, self._secret, self.scope, self.auth_method,
                repr(sorted(self.extra_params.items())))

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._secret,)

    def _resolve(self) -> Generator[httpx.Request | Wait, Any, None]:
        if self.endpoint is not None or self.discovery_url is None:
            return
        outcome = yield httpx.Request("GET", self.discovery_url, headers={"Accept": "application/json"})
        endpoint = None
        if isinstance(outcome, httpx.Response) and outcome.is_success:
            try:
                endpoint = outcome.json().get("token_endpoint")
            except (ValueError, AttributeError):
                endpoint = None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            why = f"HTTP {outcome.status_code}" if isinstance(outcome, httpx.Response) else type(outcome).__name__
            raise errors.TokenUnavailable(0, None, f"no token_endpoint in the metadata at {self.discovery_url} "
                                          f"({why}); pass the token URL instead", endpoint=self.discovery_url or "")
        self.endpoint = endpoint

    def build_request(self) -> httpx.Request:
        data = {"grant_type": "client_credentials", **self.extra_params}
        if self.scope:
            data["scope"] = self.scope
        headers = {"Accept": "application/json"}
        if self.auth_method == "client_secret_basic":
            headers["Authorization"] = _basic(self.client_id, self._secret)
        else:
            data.update(client_id=self.client_id, client_secret=self._secret)
        return httpx.Request("POST", self.endpoint or "", data=data, headers=headers)


class CertificateAuthorize(TokenSource):
    """The certificate style: Basic `username:password` on `GET …/authorizations/authorize` over mutual TLS."""

    style = "certificate"

    def __init__(self, authorize_url: str, username: str, password: str, cert: CertInput, *,
                 cert_password: str | bytes | None = None, verify: VerifyInput = True, timeout: float = 10.0,
                 default_lifetime: float = DEFAULT_LIFETIME) -> None:
        certificate = as_certificate(cert, cert_password)
        if certificate is None:
            raise ValueError("the certificate style needs the client certificate on every call: pass cert=")
        if not username or not password:
            raise ValueError("the username and the password are both required")
        super().__init__(authorize_url, verify=verify, cert=certificate, timeout=timeout,
                         default_lifetime=default_lifetime)
        self.username = username
        self._password = password

    def __repr__(self) -> str:
        return f"CertificateAuthorize({self.endpoint!r}, username={self.username!r}, cert={self.certificate!r})"

    def _identity(self) -> tuple[str | None, ...]:
        return (self.endpoint, self.username, self._password)

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._password,)

    def build_request(self) -> httpx.Request:
        return httpx.Request("GET", self.endpoint or "", headers={
            "Authorization": _basic(self.username, self._password),
            "Content-Type": "application/json",
            "Accept": "application/json",
        })
