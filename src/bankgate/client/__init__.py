"""bankgate.client: tokens done right for payment APIs, with httpx (sync and async) or requests.

Both authentication styles of the seeds, against bankgate or the real providers:

* certificate style (Banking Circle): `GET /api/v1/authorizations/authorize` with Basic `username:password` over
  mutual TLS -> a 300-second JWT;
* OAuth2 client_credentials (Banked): `POST /oauth/token` with Basic `api_key:secret_key` and `scope`.

A token is requested only when the cached one is due (`min(30 s, 10 %)` before expiry), by exactly one caller
while the others wait; it is sent as Bearer; a 401 on a cached token costs one refresh and one retry; every non-GET
request carries an `Idempotency-Key`, kept on every retry. Secrets never appear in logs, `repr()` or errors.

    from bankgate.client import Banked
    banked = Banked("bk_test_…", "sk_test_…", scope="app_12345")
    with banked.client() as api:
        api.post("/v2/payment_sessions", json={...})

This package imports nothing from the bankgate server and needs only `httpx`; `requests`, `cryptography`
(PKCS#12) and `redis` are optional.
"""

from __future__ import annotations

from typing import Any

from bankgate.client._auth import BankgateAuth
from bankgate.client._cache import FileCache, MemoryCache, RedisCache, TokenCache
from bankgate.client._errors import (
    AccessDenied,
    ClientError,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTokenResponse,
    MissingDependency,
    PasswordResetRequired,
    RateLimited,
    TokenError,
    TokenServerError,
    TokenUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from bankgate.client._presets import Banked, Bankgate, BankingCircle, Preset
from bankgate.client._retry import AsyncRetryTransport, RetryPolicy, RetryTransport
from bankgate.client._sources import CertificateAuthorize, ClientCredentials, TokenSource
from bankgate.client._tls import ClientCertificate
from bankgate.client._token import Token, default_margin

__all__ = [
    "AccessDenied",
    "AsyncRetryTransport",
    "Banked",
    "Bankgate",
    "BankgateAuth",
    "BankingCircle",
    "CertificateAuthorize",
    "ClientCertificate",
    "ClientCredentials",
    "ClientError",
    "FileCache",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTokenResponse",
    "MemoryCache",
    "MissingDependency",
    "PasswordResetRequired",
    "Preset",
    "RateLimited",
    "RedisCache",
    "RequestsAuth",
    "RetryPolicy",
    "RetryTransport",
    "Token",
    "TokenCache",
    "TokenError",
    "TokenServerError",
    "TokenSource",
    "TokenUnavailable",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "default_margin",
]


def __getattr__(name: str) -> Any:
    if name == "RequestsAuth":  # only with the optional `requests` package
        from bankgate.client._requests import RequestsAuth

        return RequestsAuth
    raise AttributeError(f"module 'bankgate.client' has no attribute {name!r}")
