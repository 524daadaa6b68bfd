"""The issuer's deny list for a guard running apart from it, polled from `GET /oauth/revocations` (RFC 7009 in
effect: a token revoked at the issuer stops working at the API too, within one poll).

The feed answers `{"tokens": [{"jti", "expires_at"}], "subjects": [{"subject", "not_before"}], "next": cursor}`;
the next poll sends `?since=<cursor>` and gets only what was revoked since (and a little before, which is harmless).
The rows go into a `DenyList`, the same class the server checks its own tokens with.

Polling happens on the request path, never on a timer of its own, so the guard needs no lifecycle: a request that
finds the list older than `interval` starts a poll in the background and is answered from the list as it is; a
request that finds it never loaded, or older than `max_staleness` (the issuer unreachable), waits for the poll,
and if there still is no fresh list it is refused with 503 (fail closed). A failing issuer is asked at most once
per `interval`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import httpx

from bankgate.guard.denylist import DenyList

__all__ = ["FEED_SCOPE", "RemoteRevocations", "parse_feed"]

log = logging.getLogger("bankgate.guard")

#: The application a client needs among its scopes to read the revocation feed.
FEED_SCOPE = "bankgate:revocations"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_feed(document: object) -> tuple[list[tuple[str, float]], list[tuple[str, float | None]], str]:
    """(tokens, subjects, next cursor) of a revocation feed answer; ValueError when it is not one."""
    if not isinstance(document, Mapping):
        raise ValueError("the revocation feed is not a JSON object")
    entries, subjects, cursor = document.get("tokens"), document.get("subjects"), document.get("next")
    if not isinstance(entries, list) or not isinstance(subjects, list) or not isinstance(cursor, str):
        raise ValueError("the revocation feed lacks `tokens`, `subjects` or `next`")
    tokens: list[tuple[str, float]] = []
    for entry in entries:
        jti = entry.get("jti") if isinstance(entry, Mapping) else None
        expires_at = entry.get("expires_at") if isinstance(entry, Mapping) else None
        if not isinstance(jti, str) or not _number(expires_at):
            raise ValueError("a token of the revocation feed has no `jti` or `expires_at`")
        tokens.append((jti, float(expires_at)))
    revoked: list[tuple[str, float | None]] = []
    for entry in subjects:
        subject = entry.get("subject") if isinstance(entry, Mapping) else None
        not_before = entry.get("not_before") if isinstance(entry, Mapping) else None
        if not isinstance(subject, str) or not (not_before is None or _number(not_before)):
            raise ValueError("a subject of the revocation feed has no `subject` or a bad `not_before`")
        revoked.append((subject, None if not_before is None else float(not_before)))
    return tokens, revoked, cursor


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class RemoteRevocations(DenyList):
    """The issuer's revocations, polled from its feed with a client key pair that has the `bankgate:revocations`
    application (`credentials`: (api_key, secret_key)); see the module docstring for when it polls.

    `http` is an `httpx.AsyncClient` to poll with (e.g. one with an ASGI transport in tests); without it, a client
    is made for each poll. The key pair is sent only over https://, or http:// to a loopback address.
    """

    def __init__(
        self,
        url: str,
        credentials: tuple[str, str],
        *,
        interval: float = 5.0,
        max_staleness: float | None = None,
        timeout: float = 5.0,
        verify: Any = True,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
            raise ValueError(f"revocation feed URL {url!r} must be https:// (http:// only on loopback): "
                             "the client key pair is sent to it")
        if interval <= 0:
            raise ValueError("the revocation interval must be positive")
        staleness = max(30.0, 10 * interval) if max_staleness is None else max_staleness
        if staleness < interval:
            raise ValueError("the revocation list's max staleness must be at least its interval")
        super().__init__(max_staleness=staleness, source=url, clock=clock)
        self.url = url
        self.interval = interval
        self._auth = httpx.BasicAuth(*credentials)
        self._timeout = timeout
        self._verify = verify
        self._http = http
        self._cursor: str | None = None
        self._attempted = -math.inf
        self._polling: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RemoteRevocations(url={self.url!r}, interval={self.interval})"

    async def ready(self) -> None:
        """Start a poll when the list is older than `interval`; wait for it when the list cannot answer without."""
        age = self.age()
        if age is not None and age < self.interval:
            return
        polling = self._polling
        if polling is not None and (polling.done() or polling.get_loop() is not asyncio.get_running_loop()):
            polling = self._polling = None  # finished, or left behind by an event loop that has gone
        if polling is None:
            if self._clock() - self._attempted < self.interval:
                return  # the last poll failed a moment ago: the list answers as it is, or fails closed
            self._attempted = self._clock()
            polling = self._polling = asyncio.ensure_future(self.poll())
        if age is None or age > self._max_staleness:
            await asyncio.shield(polling)

    async def wait(self) -> None:
        """Wait for the poll in flight, if any (a poll `ready` started in the background)."""
        polling = self._polling
        if polling is not None and not polling.done() and polling.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(polling)

    async def poll(self) -> None:
        """Fetch what was revoked since the last poll and apply it; a failure is logged and leaves the list as it
        was (it grows older, and fails closed beyond `max_staleness`)."""
        params = {"since": self._cursor} if self._cursor is not None else {}
        try:
            if self._http is not None:
                response = await self._http.get(self.url, params=params, auth=self._auth, timeout=self._timeout)
            else:
                async with httpx.AsyncClient(verify=self._verify, timeout=self._timeout) as http:
                    response = await http.get(self.url, params=params, auth=self._auth)
            if response.status_code != 200:
                log.warning("polling the revocation feed %s failed: HTTP %s %s", self.url, response.status_code,
                            _error_code(response))
                return
            tokens, subjects, cursor = parse_feed(json.loads(response.content))
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("polling the revocation feed %s failed: %s", self.url, type(exc).__name__)
            return
        for jti, expires_at in tokens:
            self.add_token(jti, expires_at)
        for subject, not_before in subjects:
            self.remember(subject, not_before)
        self._cursor = cursor
        self.refreshed()


def _error_code(response: httpx.Response) -> str:
    """The OAuth error code of a refusal (never its whole body), for the log."""
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(error)[:40] if error else ""
