"""Idempotency keys and retries (draft-ietf-httpapi-idempotency-key-header, Stripe's client behaviour).

Every non-GET request leaves with an `Idempotency-Key` (a uuid4 unless the caller set one), and that one key is kept
on every retry of the request, so a payment whose answer was lost is replayed by the server, not paid twice.
Retries use exponential back-off with full jitter, honour `Retry-After` (seconds or HTTP-date), and are bounded in
attempts and in total time. GETs are retried; other methods only when they carry a key.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["AsyncRetryTransport", "Attempts", "RetryPolicy", "RetryTransport", "parse_retry_after"]

log = logging.getLogger("bankgate.client")

IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Methods that may be repeated without a key (RFC 9110 §9.2.2): they change nothing, or the same thing again.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After: 7` -> 7.0; `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT` -> seconds until then (>= 0)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return seconds if seconds >= 0 else None


def ensure_idempotency_key(request: httpx.Request) -> None:
    """Give a non-GET request a uuid4 `Idempotency-Key` unless it has one."""
    if request.method not in SAFE_METHODS and IDEMPOTENCY_HEADER not in request.headers:
        request.headers[IDEMPOTENCY_HEADER] = str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before trying a request again.

    Retried: connection errors and timeouts, 429, 5xx in `statuses`, and 409 when it carries `Retry-After` (a request
    with the same key still running). Delays grow `backoff * 2**attempt`, capped at `max_backoff`, with full jitter;
    a `Retry-After` is obeyed (never shortened by jitter). No retry starts after `total_timeout` seconds, and a wait
    that would end past it is not begun: the last answer is returned instead.
    """

    max_attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    total_timeout: float = 60.0
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 500, 502, 503, 504}))
    jitter: Callable[[float], float] = field(default=lambda ceiling: random.uniform(0, ceiling), repr=False)

    def may_retry_method(self, method: str, has_key: bool) -> bool:
        return method.upper() in SAFE_METHODS or has_key

    def retryable_status(self, status: int, retry_after: str | None) -> bool:
        if status == 409:
            return retry_after is not None
        return status in self.statuses

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        asked = parse_retry_after(retry_after)
        if asked is not None:
            return asked
        return self.jitter(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


class Attempts:
    """The bookkeeping of one logical request, shared by the httpx transports and the requests adapter."""

    def __init__(self, policy: RetryPolicy, method: str, url: str, has_key: bool) -> None:
        self.policy = policy
        self.method = method.upper()
        self.url = url.split("?", 1)[0]
        self.retryable = policy.may_retry_method(self.method, has_key)
        self.attempt = 0
        self.deadline = time.monotonic() + policy.total_timeout

    def after_error(self, exc: Exception, never_sent: bool) -> float | None:
        """The wait before the next try, or None to give up (re-raise)."""
        if not (never_sent or self.retryable):
            return None
        return self._next(None, type(exc).__name__)

    def after_response(self, status: int, retry_after: str | None) -> float | None:
        if not (self.retryable and self.policy.retryable_status(status, retry_after)):
            return None
        return self._next(retry_after, str(status))

    def _next(self, retry_after: str | None, why: str) -> float | None:
        if self.attempt >= self.policy.max_attempts:
            return None
        wait = self.policy.delay(self.attempt, retry_after)
        if time.monotonic() + wait > self.deadline:
            return None
        log.info("retrying %s %s after %s in %.2f s (attempt %d of %d)", self.method, self.url, why, wait,
                 self.attempt + 1, self.policy.max_attempts)
        return wait


def _attempts(policy: RetryPolicy, request: httpx.Request) -> Attempts:
    return Attempts(policy, request.method, str(request.url), IDEMPOTENCY_HEADER in request.headers)


def _never_sent(exc: httpx.TransportError) -> bool:
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


class RetryTransport(httpx.BaseTransport):
    """A transport that adds idempotency keys and retries; wraps `httpx.HTTPTransport` (or `transport`)."""

    def __init__(self, transport: httpx.BaseTransport | None = None, *, policy: RetryPolicy | None = None,
                 idempotency_keys: bool = True, sleep: Callable[[float], Any] = time.sleep,
                 **transport_options: Any) -> None:
        self.transport = transport if transport is not None else httpx.HTTPTransport(**transport_options)
        self.policy = policy or RetryPolicy()
        self.idempotency_keys = idempotency_keys
        self._sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.idempotency_keys:
            ensure_idempotency_key(request)
        request.read()  # a retry must be able to send the body again
        attempts = _attempts(self.policy, request)
        while True:
            attempts.attempt += 1
            try:
                response = self.transport.handle_request(request)
            except httpx.TransportError as exc:
                wait = attempts.after_error(exc, _never_sent(exc))
                if wait is None:
                    raise
                self._sleep(wait)
                continue
            wait = attempts.after_response(response.status_code, response.headers.get("retry-after"))
            if wait is None:
                return response
            response.close()
            self._sleep(wait)

    def close(self) -> None:
        self.transport.close()


class AsyncRetryTransport(httpx.AsyncBaseTransport):
    """The async twin of `RetryTransport`; wraps `httpx.AsyncHTTPTransport` (or `transport`)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *, policy: RetryPolicy | None = None,
                 idempotency_keys: bool = True, **transport_options: Any) -> None:
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport(**transport_options)
        self.policy = policy or RetryPolicy()
        self.idempotency_keys = idempotency_keys

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.idempotency_keys:
            ensure_idempotency_key(request)
        await request.aread()
        attempts = _attempts(self.policy, request)
        while True:
            attempts.attempt += 1
            try:
                response = await self.transport.handle_async_request(request)
            except httpx.TransportError as exc:
                wait = attempts.after_error(exc, _never_sent(exc))
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            wait = attempts.after_response(response.status_code, response.headers.get("retry-after"))
            if wait is None:
                return response
            await response.aclose()
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self.transport.aclose()
