"""Ready-made clients for the two providers the seeds describe, and for a bankgate server.

Each preset holds a token source, a `BankgateAuth` and the API's base URL, and builds httpx clients (sync and
async) or a requests session that carry the client certificate when the style needs one, the token, an
`Idempotency-Key` on every non-GET request, and the retry policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from bankgate.client._auth import BankgateAuth
from bankgate.client._cache import TokenCache
from bankgate.client._retry import AsyncRetryTransport, RetryPolicy, RetryTransport
from bankgate.client._sources import AUTHORIZE_PATH, METADATA_PATH, CertificateAuthorize, ClientCredentials, TokenSource
from bankgate.client._tls import CertInput, VerifyInput
from bankgate.client._token import MarginPolicy, Token, default_margin

__all__ = ["Banked", "Bankgate", "BankingCircle", "Preset"]


class Preset:
    """A token source, its auth and an API base URL; see `BankingCircle`, `Banked` and `Bankgate`."""

    def __init__(self, source: TokenSource, api_url: str, *, cache: TokenCache | None = None,
                 retry: RetryPolicy | None = None, margin: MarginPolicy = default_margin,
                 idempotency_keys: bool = True) -> None:
        self.source = source
        self.api_url = api_url.rstrip("/")
        self.auth = BankgateAuth(source, cache=cache, margin=margin)
        self.retry = retry or RetryPolicy()
        self.idempotency_keys = idempotency_keys

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_url={self.api_url!r}, source={self.source!r})"

    def token(self) -> Token:
        """The current token (cached; fetched only when due)."""
        return self.auth.token()

    async def atoken(self) -> Token:
        return await self.auth.atoken()

    def client(self, **options: Any) -> httpx.Client:
        """An `httpx.Client` on the API: base URL, auth, mutual TLS when needed, idempotency keys and retries."""
        transport = RetryTransport(httpx.HTTPTransport(verify=self.source.ssl_context), policy=self.retry,
                                   idempotency_keys=self.idempotency_keys)
        options.setdefault("timeout", 30.0)
        options.setdefault("base_url", self.api_url)
        return httpx.Client(auth=self.auth, transport=transport, **options)

    def async_client(self, **options: Any) -> httpx.AsyncClient:
        """The `httpx.AsyncClient` twin of `client()`."""
        transport = AsyncRetryTransport(httpx.AsyncHTTPTransport(verify=self.source.ssl_context), policy=self.retry,
                                        idempotency_keys=self.idempotency_keys)
        options.setdefault("timeout", 30.0)
        options.setdefault("base_url", self.api_url)
        return httpx.AsyncClient(auth=self.auth, transport=transport, **options)

    def requests_session(self) -> Any:
        """A `requests.Session` with the same behaviour (needs `requests`); paths are not prefixed with the base
        URL: use `preset.api_url + "/path"`."""
        from bankgate.client._requests import session

        return session(self.auth, base_ssl=self.source.ssl_context, policy=self.retry,
                       idempotency_keys=self.idempotency_keys)

    def close(self) -> None:
        self.source.close()


class BankingCircle(Preset):
    """Banking Circle: an M2M user's Basic `username:password` on `GET /api/v1/authorizations/authorize`, over mutual
    TLS with the user's certificate (PEM pair, or the `.pfx` they hand out with its passcode), tokens of 300 s.

    The defaults are the provider's published hosts (sandbox and production differ); override `auth_url` and
    `api_url` for anything else.
    """

    SANDBOX_AUTH = "https://authorizationsandbox.bankingcircleconnect.com"
    SANDBOX_API = "https://sandbox.bankingcircleconnect.com"
    PRODUCTION_AUTH = "https://authorization.bankingcircleconnect.com"
    PRODUCTION_API = "https://www.bankingcircleconnect.com"

    def __init__(self, username: str, password: str, *, cert: CertInput, cert_password: str | bytes | None = None,
                 sandbox: bool = True, auth_url: str | None = None, api_url: str | None = None,
                 verify: VerifyInput = True, cache: TokenCache | None = None, retry: RetryPolicy | None = None,
                 margin: MarginPolicy = default_margin, timeout: float = 10.0) -> None:
        auth_base = (auth_url or (self.SANDBOX_AUTH if sandbox else self.PRODUCTION_AUTH)).rstrip("/")
        source = CertificateAuthorize(auth_base + AUTHORIZE_PATH, username, password, cert,
                                      cert_password=cert_password, verify=verify, timeout=timeout)
        super().__init__(source, api_url or (self.SANDBOX_API if sandbox else self.PRODUCTION_API), cache=cache,
                         retry=retry, margin=margin)


class Banked(Preset):
    """Banked: OAuth2 client_credentials with the API key and secret key, `scope` = business application ID(s),
    tokens of 2 hours. Sandbox and production share the host; the key decides (`bk_test_…` / `bk_live_…`)."""

    TOKEN_URL = "https://api.banked.com/oauth/token"  # noqa: S105 - a URL
    API_URL = "https://api.banked.com"

    def __init__(self, api_key: str, secret_key: str, scope: str | Sequence[str] | None = None, *,
                 sandbox: bool | None = None, token_url: str | None = None, api_url: str | None = None,
                 verify: VerifyInput = True, cache: TokenCache | None = None, retry: RetryPolicy | None = None,
                 margin: MarginPolicy = default_margin, timeout: float = 10.0) -> None:
        if sandbox is not None and api_key.startswith(("bk_test_", "bk_live_")) and \
                api_key.startswith("bk_test_") != sandbox:
            wanted = "sandbox (bk_test_…)" if sandbox else "production (bk_live_…)"
            raise ValueError(f"sandbox={sandbox} but this API key is not a {wanted} key")
        source = ClientCredentials(token_url or self.TOKEN_URL, api_key, secret_key, scope, verify=verify,
                                   timeout=timeout)
        super().__init__(source, api_url or self.API_URL, cache=cache, retry=retry, margin=margin)


class Bankgate(Preset):
    """A bankgate server, either style: with `api_key`/`secret_key` the token endpoint is read from the server's
    RFC 8414 metadata; with `username`/`password`/`cert` the certificate style's authorize endpoint is used."""

    def __init__(self, base_url: str, *, api_key: str | None = None, secret_key: str | None = None,
                 scope: str | Sequence[str] | None = None, username: str | None = None, password: str | None = None,
                 cert: CertInput = None, cert_password: str | bytes | None = None, verify: VerifyInput = True,
                 cache: TokenCache | None = None, retry: RetryPolicy | None = None,
                 margin: MarginPolicy = default_margin, timeout: float = 10.0) -> None:
        base = base_url.rstrip("/")
        source: TokenSource
        if api_key is not None:
            if secret_key is None:
                raise ValueError("api_key needs secret_key")
            source = ClientCredentials(None, api_key, secret_key, scope, discovery_url=base + METADATA_PATH,
                                       verify=verify, cert=cert, timeout=timeout)
        elif username is not None:
            if password is None or cert is None:
                raise ValueError("the certificate style needs username, password and cert")
            source = CertificateAuthorize(base + AUTHORIZE_PATH, username, password, cert,
                                          cert_password=cert_password, verify=verify, timeout=timeout)
        else:
            raise ValueError("give api_key and secret_key (OAuth2), or username, password and cert (certificate)")
        super().__init__(source, base, cache=cache, retry=retry, margin=margin)
