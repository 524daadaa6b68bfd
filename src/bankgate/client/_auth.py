"""`BankgateAuth`: the token cache in front of every request, in the shape of httpx's own `Auth`.

One generator, `auth_flow()`, holds the rules (Bearer on every request; a 401 on a cached token drops it, fetches one
new token and retries once); `sync_auth_flow()` and `async_auth_flow()` only differ in how they wait for a token:
a thread lock for sync code, an asyncio lock per event loop for async code, each followed by a second look at the
cache, so N callers who find the token expired send exactly one token request (single flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any

import httpx

from bankgate.client._cache import MemoryCache, TokenCache
from bankgate.client._errors import TokenError
from bankgate.client._sources import TokenSource
from bankgate.client._token import MarginPolicy, Token, default_margin

__all__ = ["BankgateAuth", "default_memory_cache"]

log = logging.getLogger("bankgate.client")

#: The process-wide default cache: a client built per request still reuses the token (keys keep clients apart).
default_memory_cache = MemoryCache()

_registry_mutex = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}
_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary())
#: The last failure per cache key (monotonic time, error): callers who waited for that attempt share its outcome
#: instead of each sending the same doomed request (no retry storm on a wrong secret).
_failures: dict[str, tuple[float, TokenError]] = {}


def _thread_lock(key: str) -> threading.Lock:
    with _registry_mutex:
        return _thread_locks.setdefault(key, threading.Lock())


def _loop_lock(key: str) -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    with _registry_mutex:
        locks = _loop_locks.get(loop)
        if locks is None:
            locks = _loop_locks[loop] = {}
        return locks.setdefault(key, asyncio.Lock())


@dataclass(frozen=True, slots=True)
class _Need:
    """Yielded by the flow: a token is needed; `stale` is one the server just refused."""

    stale: Token | None = None


@dataclass(frozen=True, slots=True)
class _Got:
    token: Token
    fetched: bool  # fetched for this very request (so a 401 is not the cache's fault)


_NEED = _Need()


class BankgateAuth(httpx.Auth):
    """Bearer tokens from `source`, cached in `cache`, refreshed `margin(lifetime)` seconds before expiry.

    Use with `httpx.Client(auth=...)` or `httpx.AsyncClient(auth=...)`; `RequestsAuth(auth)` adapts it to
    `requests`. `cache` defaults to one in-memory cache per process; pass a `FileCache` or `RedisCache` to share
    tokens between processes. `clock` is the wall clock (replaceable in tests).
    """

    requires_request_body = True

    def __init__(self, source: TokenSource, *, cache: TokenCache | None = None, margin: MarginPolicy = default_margin,
                 clock: Callable[[], float] = time.time, lock_timeout: float = 30.0) -> None:
        self.source = source
        self.cache: TokenCache = cache if cache is not None else default_memory_cache
        self.margin = margin
        self.lock_timeout = lock_timeout
        self._clock = clock
        self._key = source.cache_key
        #: This object's own copy of the current token and when to refresh it: the hot path reads only this.
        self._current: tuple[Token, float] | None = None

    def __repr__(self) -> str:
        return f"BankgateAuth({self.source!r}, cache={self.cache!r})"

    # -- the flow, written once -------------------------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[Any, Any, None]:
        got: _Got = yield _NEED
        request.headers["Authorization"] = got.token.authorization
        response: httpx.Response = yield request
        if response.status_code != 401 or got.fetched:
            return
        log.info("the API refused a cached token (401): fetching a new one and retrying once")
        got = yield _Need(stale=got.token)
        request.headers["Authorization"] = got.token.authorization
        yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        flow = self.auth_flow(request)
        step = next(flow)
        while True:
            if isinstance(step, _Need):
                step = flow.send(self._get_sync(step.stale))
                continue
            response = yield step
            try:
                step = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = self.auth_flow(request)
        step = next(flow)
        while True:
            if isinstance(step, _Need):
                step = flow.send(await self._get_async(step.stale))
                continue
            response = yield step
            try:
                step = flow.send(response)
            except StopIteration:
                return

    # -- public helpers ---------------------------------------------------------------------------------------

    def token(self) -> Token:
        """The current token, fetched only if the cached one is missing or due for refresh."""
        return self._get_sync(None).token

    async def atoken(self) -> Token:
        """The async twin of `token()`."""
        return (await self._get_async(None)).token

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after revoking it)."""
        current = self._current
        self._current = None
        if current is not None:
            self.cache.discard(self._key, current[0].value)

    # -- getting a token --------------------------------------------------------------------------------------

    def _fresh_local(self) -> Token | None:
        current = self._current
        if current is not None and self._clock() < current[1]:
            return current[0]
        return None

    def _lookup(self, stale: Token | None) -> Token | None:
        """The usable token, from this object or the cache; `stale` is dropped from both first."""
        if stale is not None:
            self.cache.discard(self._key, stale.value)
            current = self._current
            if current is not None and current[0].value == stale.value:
                self._current = None
        token = self._fresh_local()
        if token is not None:
            return token
        token = self.cache.get(self._key)
        if token is None or (stale is not None and token.value == stale.value):
            return None
        refresh_at = token.refresh_at(self.margin)
        if self._clock() >= refresh_at:
            return None
        self._current = (token, refresh_at)
        return token

    def _keep(self, token: Token) -> None:
        self.cache.set(self._key, token)
        self._current = (token, token.refresh_at(self.margin))

    def _recent_failure(self, since: float) -> None:
        failure = _failures.get(self._key)
        if failure is not None and failure[0] >= since:
            raise failure[1]

    def _failed(self, error: TokenError) -> None:
        _failures[self._key] = (time.monotonic(), error)

    def _get_sync(self, stale: Token | None) -> _Got:
        if stale is None:
            current = self._current
            if current is not None and self._clock() < current[1]:
                return _Got(current[0], False)
        started = time.monotonic()
        with _thread_lock(self._key):
            token = self._lookup(stale)
            if token is not None:
                return _Got(token, False)
            self._recent_failure(started)
            with self.cache.lock(self._key, self.lock_timeout):
                if self.cache.shared:
                    token = self._lookup(None)
                    if token is not None:
                        return _Got(token, False)
                try:
                    token = self.source.fetch_sync(self._clock)
                except TokenError as exc:
                    self._failed(exc)
                    raise
                self._keep(token)
                return _Got(token, True)

    async def _get_async(self, stale: Token | None) -> _Got:
        if stale is None:
            current = self._current
            if current is not None and self._clock() < current[1]:
                return _Got(current[0], False)
        started = time.monotonic()
        async with _loop_lock(self._key):
            shared = self.cache.shared
            token = await asyncio.to_thread(self._lookup, stale) if shared else self._lookup(stale)
            if token is not None:
                return _Got(token, False)
            self._recent_failure(started)
            held: contextlib.AbstractContextManager[None] = self.cache.lock(self._key, self.lock_timeout)
            await asyncio.to_thread(held.__enter__) if shared else held.__enter__()
            try:
                if shared:
                    token = await asyncio.to_thread(self._lookup, None)
                    if token is not None:
                        return _Got(token, False)
                try:
                    token = await self.source.fetch_async(self._clock)
                except TokenError as exc:
                    self._failed(exc)
                    raise
                if shared:
                    await asyncio.to_thread(self._keep, token)
                else:
                    self._keep(token)
                return _Got(token, True)
            finally:
                held.__exit__(None, None, None)
