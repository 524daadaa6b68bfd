"""Idempotency-Key records in Redis: one string per principal and key, expired by Redis itself.

A record is `<state> <created_at> <owner> <fingerprint> <status>\\n<headers JSON>\\n<body>`. A `started` record
lives `lease` milliseconds (PX), renewed by `extend`; a `completed` one lives `retention` milliseconds. Each
operation is one Lua script, so the read and the write are one atomic step on the server:

* lookup (a retry of a finished request): a plain GET, which writes nothing;
* claim: GET; a live record is returned with its PTTL (the lease left); otherwise `SET value PX lease`.
* extend / complete / release: only when the record is still `started` under the caller's owner token.

The remaining lease is read from Redis (PTTL), so clocks of the API processes need not agree.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from bankgate.idempotency._types import COMPLETED, STARTED, Claim, StoredResponse, new_owner

__all__ = ["RedisIdempotencyStore"]

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then
  local state, created = string.match(v, '^(%a+) (%S+) ')
  if not (state == 'completed' and tonumber(created) <= tonumber(ARGV[3])) then
    return {v, redis.call('PTTL', KEYS[1])}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

_RUNNING = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local state, created, owner, fp = string.match(v, '^(%a+) (%S+) (%S+) (%S+) ')
if state ~= 'started' or owner ~= ARGV[1] then return 0 end
"""

_EXTEND = _RUNNING + """
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_COMPLETE = _RUNNING + """
local head = 'completed ' .. created .. ' ' .. owner .. ' ' .. fp .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], head .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[4], 'PX', ARGV[5])
return 1
"""

_RELEASE = _RUNNING + """
redis.call('DEL', KEYS[1])
return 1
"""


_COMPLETED_HEAD = f"{COMPLETED} ".encode("ascii")


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _parse(value: bytes, pttl: int, fingerprint: str) -> Claim:
    head, _, rest = value.partition(b"\n")
    state, _created, _owner, stored_fingerprint, status = head.decode("ascii").split(" ")
    if stored_fingerprint != fingerprint:
        return Claim("mismatch")
    if state == STARTED:
        return Claim("in_progress", retry_after=max(pttl, 0) / 1000)
    headers_json, _, body = rest.partition(b"\n")
    headers = tuple(
        (name.encode("latin-1"), field.encode("latin-1")) for name, field in json.loads(headers_json or b"[]")
    )
    return Claim("completed", response=StoredResponse(int(status), headers, body))


class RedisIdempotencyStore:
    """Key records in Redis (or Valkey), under `prefix` + SHA-256 of the principal and the key.

    `url_or_client` is a `redis://` / `rediss://` / `unix://` URL (the store opens and closes its own client) or a
    `redis.asyncio.Redis` made with `decode_responses=False` (the caller keeps it and closes it). Redis expires
    the records, so `purge` has nothing to do.
    """

    def __init__(self, url_or_client: Any, *, prefix: str = "bankgate:idem:") -> None:
        from redis.asyncio import Redis

        if isinstance(url_or_client, str):
            self._client: Any = Redis.from_url(url_or_client, socket_connect_timeout=5, socket_timeout=10)
            self._owns_client = True
        else:
            self._client = url_or_client
            self._owns_client = False
        if self._client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisIdempotencyStore needs a client with decode_responses=False: bodies are bytes")
        self._prefix = prefix
        self._claim = self._client.register_script(_CLAIM)
        self._extend = self._client.register_script(_EXTEND)
        self._complete = self._client.register_script(_COMPLETE)
        self._release = self._client.register_script(_RELEASE)

    def __repr__(self) -> str:
        kwargs = self._client.get_connection_kwargs()
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"
        return f"RedisIdempotencyStore({where!r}, prefix={self._prefix!r})"

    def _name(self, principal: str, key: str) -> str:
        digest = hashlib.sha256()
        for part in (principal.encode("utf-8", "surrogateescape"), key.encode("utf-8", "surrogateescape")):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return self._prefix + digest.hexdigest()

    async def claim(self, principal: str, key: str, fingerprint: str, *, lease: float, retention: float) -> Claim:
        if not fingerprint or not fingerprint.isascii() or any(char.isspace() for char in fingerprint):
            raise ValueError("a fingerprint is a non-empty ASCII token without spaces, as `fingerprint()` makes")
        owner = new_owner()
        now = time.time()
        value = f"{STARTED} {now!r} {owner} {fingerprint} -\n[]\n".encode("ascii")
        found = await self._claim(
            keys=[self._name(principal, key)], args=[value, _milliseconds(lease), repr(now - retention)]
        )
        if found is None:
            return Claim("claimed", owner=owner)
        return _parse(found[0], int(found[1]), fingerprint)

    async def lookup(self, principal: str, key: str, fingerprint: str, *, retention: float) -> Claim | None:
        """One GET: a `started` record, or one created before the asker's retention, is left to `claim`."""
        value = await self._client.get(self._name(principal, key))
        if value is None or not value.startswith(_COMPLETED_HEAD):
            return None
        if float(value.split(b" ", 2)[1]) <= time.time() - retention:
            return None
        return _parse(value, 0, fingerprint)

    async def extend(self, principal: str, key: str, owner: str, *, lease: float) -> bool:
        return bool(await self._extend(keys=[self._name(principal, key)], args=[owner, _milliseconds(lease)]))

    async def complete(
        self, principal: str, key: str, owner: str, response: StoredResponse, *, retention: float
    ) -> bool:
        headers = json.dumps(
            [[name.decode("latin-1"), value.decode("latin-1")] for name, value in response.headers]
        )
        done = await self._complete(
            keys=[self._name(principal, key)],
            args=[owner, str(int(response.status)), headers, response.body, _milliseconds(retention)],
        )
        return bool(done)

    async def release(self, principal: str, key: str, owner: str) -> None:
        await self._release(keys=[self._name(principal, key)], args=[owner])

    async def purge(self) -> int:
        """Redis expires records by their TTL: nothing is left to delete."""
        return 0

    async def ping(self) -> None:
        """Raise unless Redis answers (readiness)."""
        await self._client.ping()

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
