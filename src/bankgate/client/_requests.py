"""The same token cache, idempotency keys and retries for `requests` (an optional dependency)."""

from __future__ import annotations

import ssl
import time
from typing import Any

from bankgate.client._auth import BankgateAuth, _Got
from bankgate.client._errors import MissingDependency
from bankgate.client._retry import IDEMPOTENCY_HEADER, SAFE_METHODS, Attempts, RetryPolicy

try:
    import requests
    from requests.adapters import HTTPAdapter
    from requests.auth import AuthBase
except ImportError as exc:  # pragma: no cover - exercised only without requests
    raise MissingDependency("requests", "bankgate.client's requests support", extra="requests") from exc

__all__ = ["RequestsAuth", "RetryAdapter", "session"]


class RequestsAuth(AuthBase):
    """`requests.Session.auth` / `requests.get(..., auth=)`: Bearer from the cache, a uuid4 `Idempotency-Key` on
    every non-GET request without one, and on a 401 to a cached token one refresh and one retry."""

    def __init__(self, auth: BankgateAuth, *, idempotency_keys: bool = True) -> None:
        self.auth = auth
        self.idempotency_keys = idempotency_keys

    def __repr__(self) -> str:
        return f"RequestsAuth({self.auth!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        got = self.auth._get_sync(None)
        request.headers["Authorization"] = got.token.authorization
        if self.idempotency_keys and (request.method or "GET").upper() not in SAFE_METHODS:
            request.headers.setdefault(IDEMPOTENCY_HEADER, _uuid())
        if not got.fetched:
            request.register_hook("response", _RetryOn401(self.auth, got))
        return request


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


class _RetryOn401:
    def __init__(self, auth: BankgateAuth, got: _Got) -> None:
        self.auth = auth
        self.got = got

    def __call__(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        fresh = self.auth._get_sync(self.got.token)
        _ = response.content
        response.close()
        retry = response.request.copy()
        retry.headers["Authorization"] = fresh.token.authorization
        retry.hooks = {"response": []}
        again: requests.Response = response.connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again


class RetryAdapter(HTTPAdapter):
    """An `HTTPAdapter` with bankgate's `RetryPolicy` and an optional `ssl.SSLContext` (mutual TLS, PKCS#12)."""

    def __init__(self, policy: RetryPolicy | None = None, *, ssl_context: ssl.SSLContext | None = None,
                 idempotency_keys: bool = True, **kwargs: Any) -> None:
        self.policy = policy or RetryPolicy()
        self.ssl_context = ssl_context
        self.idempotency_keys = idempotency_keys
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        super().init_poolmanager(*args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        method = (request.method or "GET").upper()
        if self.idempotency_keys and method not in SAFE_METHODS:
            request.headers.setdefault(IDEMPOTENCY_HEADER, _uuid())
        attempts = Attempts(self.policy, method, request.url or "", IDEMPOTENCY_HEADER in request.headers)
        while True:
            attempts.attempt += 1
            try:
                response = super().send(request, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                never_sent = isinstance(exc, requests.exceptions.ConnectTimeout) or (
                    isinstance(exc, requests.ConnectionError) and "NewConnectionError" in repr(exc))
                wait = attempts.after_error(exc, never_sent)
                if wait is None:
                    raise
                time.sleep(wait)
                continue
            wait = attempts.after_response(response.status_code, response.headers.get("retry-after"))
            if wait is None:
                return response
            response.close()
            time.sleep(wait)


def session(auth: BankgateAuth, *, base_ssl: ssl.SSLContext | None = None, policy: RetryPolicy | None = None,
            idempotency_keys: bool = True) -> requests.Session:
    """A `requests.Session` with `RequestsAuth` and a `RetryAdapter` on http:// and https://."""
    http = requests.Session()
    http.auth = RequestsAuth(auth, idempotency_keys=idempotency_keys)
    adapter = RetryAdapter(policy, ssl_context=base_ssl, idempotency_keys=idempotency_keys)
    http.mount("https://", adapter)
    http.mount("http://", adapter)
    return http
