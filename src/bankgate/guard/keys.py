"""Where the guard finds the public key for a token's `kid` (RFC 7517 JWKS, RFC 7515 §4.1.4).

Two sources, one interface: `LocalKeys` reads the key ring of the bankgate server in the same process,
`RemoteJWKS` fetches the issuer's `/.well-known/jwks.json`. Both refresh when a token names a `kid` they do not
know (the issuer may have rotated its key), but at most once per `min_refresh_interval`, single-flight: a stream of
tokens with forged `kid`s costs the issuer one request per interval, not one per token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt

__all__ = ["KeySource", "LocalKeys", "RemoteJWKS", "VerificationKey"]

log = logging.getLogger("bankgate.guard")

#: The algorithms a resource server accepts, by JWK key type: never `none`, never an HMAC (`oct`) key.
_ALGS_BY_KTY: dict[str, frozenset[str]] = {
    "RSA": frozenset({"RS256"}),
    "EC": frozenset({"ES256"}),
    "OKP": frozenset({"EdDSA"}),
}
_DEFAULT_ALG = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    alg: str
    public_key: Any  # a `cryptography` public key object

    def __repr__(self) -> str:
        return f"VerificationKey(kid={self.kid!r}, alg={self.alg!r})"


class KeySource(Protocol):
    async def get(self, kid: str) -> VerificationKey | None: ...


class _Refresher:
    """Calls `job` at most once per `interval`, one call at a time; concurrent callers wait for the running one."""

    def __init__(self, job: Callable[[], Awaitable[None]], interval: float) -> None:
        self._job = job
        self._interval = interval
        self._last = -float("inf")
        self._lock: asyncio.Lock | None = None

    async def __call__(self) -> bool:
        """True when a refresh ran (or finished while waiting); False when the interval forbade one."""
        if time.monotonic() - self._last < self._interval:
            return False
        if self._lock is None:
            self._lock = asyncio.Lock()
        started = self._last
        async with self._lock:
            if self._last != started:  # another caller refreshed while this one waited
                return True
            self._last = time.monotonic()
            await self._job()
            return True


class LocalKeys:
    """The keys of the bankgate server running in this process.

    `lookup(kid)` returns an object with `kid`, `alg` and `public_key` (the server's `SigningKey`) or None;
    `refresh()` reloads the ring from the database (another process may have rotated the key).
    """

    def __init__(
        self,
        lookup: Callable[[str], Any],
        refresh: Callable[[], Awaitable[None]] | None = None,
        *,
        min_refresh_interval: float = 5.0,
    ) -> None:
        self._lookup = lookup
        self._public: dict[str, VerificationKey] = {}
        self._refresh = _Refresher(refresh, min_refresh_interval) if refresh is not None else None

    def __repr__(self) -> str:
        return f"LocalKeys(known={len(self._public)})"

    def _find(self, kid: str) -> VerificationKey | None:
        signing = self._lookup(kid)
        if signing is None:
            return None
        known = self._public.get(kid)
        if known is None or known.alg != signing.alg or known.public_key is not signing.public_key:
            known = VerificationKey(kid, signing.alg, signing.public_key)
            self._public[kid] = known
        return known

    async def get(self, kid: str) -> VerificationKey | None:
        key = self._find(kid)
        if key is None and self._refresh is not None:
            try:
                if await self._refresh():
                    key = self._find(kid)
            except Exception:
                log.exception("reloading the signing keys failed")
        return key


def parse_jwks(document: Mapping[str, Any]) -> dict[str, VerificationKey]:
    """The signature keys of a JWKS, by `kid`; keys of other types, uses or algorithms are skipped."""
    keys: dict[str, VerificationKey] = {}
    if not isinstance(document, Mapping):
        raise ValueError("the JWKS is not a JSON object")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no `keys` list")
    for jwk in entries:
        if not isinstance(jwk, dict):
            continue
        kid, kty = jwk.get("kid"), jwk.get("kty")
        if not isinstance(kid, str) or not isinstance(kty, str) or kty not in _ALGS_BY_KTY:
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        alg = jwk.get("alg", _DEFAULT_ALG[kty])
        if not isinstance(alg, str) or alg not in _ALGS_BY_KTY[kty]:
            continue
        try:
            public_key = jwt.PyJWK({**jwk, "alg": alg}).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            log.warning("skipping JWKS key %r: it does not parse", kid[:64])
            continue
        keys[kid] = VerificationKey(kid, alg, public_key)
    return keys


class RemoteJWKS:
    """Keys fetched from an issuer's JWKS URL (for an API running apart from the bankgate server).

    Fetched on first use and again on an unknown `kid`, at most once per `min_refresh_interval`; a failed fetch
    keeps the keys already known.
    """

    def __init__(
        self,
        url: str,
        *,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
        verify: Any = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"JWKS URL {url!r} must be an https:// (or http:// on loopback) URL")
        self.url = url
        self._keys: dict[str, VerificationKey] = {}
        self._http = http
        self._timeout = timeout
        self._verify = verify
        self._refresh = _Refresher(self._fetch, min_refresh_interval)

    def __repr__(self) -> str:
        return f"RemoteJWKS(url={self.url!r}, known={len(self._keys)})"

    async def _fetch(self) -> None:
        try:
            if self._http is not None:
                response = await self._http.get(self.url, timeout=self._timeout)
            else:
                async with httpx.AsyncClient(verify=self._verify, timeout=self._timeout) as http:
                    response = await http.get(self.url)
            response.raise_for_status()
            self._keys = parse_jwks(json.loads(response.content))
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("fetching the JWKS from %s failed: %s", self.url, type(exc).__name__)

    async def get(self, kid: str) -> VerificationKey | None:
        key = self._keys.get(kid)
        if key is None and await self._refresh():
            key = self._keys.get(kid)
        return key
