"""Brute-force throttling of failed authentications and rate limits on token issuance, shared by every server
process that uses the same database (SQLite file or PostgreSQL).

Both answer on the request path from memory, with no database round trip, and reconcile with the database in the
background (`sync`, called every second or so by the runtime):

* `AuthThrottle` counts failures per key in `auth_throttle` with one atomic upsert per key and blocks a key with a
  growing back-off once it passes its threshold. A block made by one process is written to the database at once and
  seen by the others at their next `sync`.
* `IssuanceLimiter` counts issued tokens per client or user in fixed 60 s windows. Each process counts locally and
  folds its counts into `rate_counters` at every `sync`, reading back the total of all processes. The limit is exact
  within one process and approximate across processes by one sync interval: between two syncs each process only
  knows its own new tokens, so N processes may together issue up to N-1 sync intervals' worth of their own traffic
  beyond the limit before they all see it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bankgate.clock import SYSTEM, Clock
from bankgate.events import Channel, Events
from bankgate.store import Store, schema

if TYPE_CHECKING:
    from bankgate.config import Settings

__all__ = ["AuthThrottle", "IssuanceLimiter", "backoff_seconds", "keys_for"]

log = logging.getLogger("bankgate.throttle")

IP_PREFIX = "ip:"
ACCOUNT_IP_PREFIX = "acctip:"
ACCOUNT_PREFIX = "acct:"
RATE_WINDOW = 60.0
PURGE_INTERVAL = 300.0
#: What a key blocks, as the `throttle.blocked` event names it.
_SCOPES = {IP_PREFIX: "ip", ACCOUNT_IP_PREFIX: "account_ip", ACCOUNT_PREFIX: "account"}
_MAX_ACCOUNT = 100  # longer account names (anyone can send one) are hashed so keys fit the 200-character column
_IN_CHUNK = 500
_FAILED_LIMIT = 100_000  # keys remembered as having failed here; past it, every success asks the database


@functools.lru_cache(maxsize=8192)  # a pure function of the address, called on every token request
def _source(ip: str) -> str:
    """The unit an attacker cannot cheaply multiply: one IPv4 address, or the /64 an IPv6 host gets."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return "invalid:" + hashlib.sha256(ip.encode()).hexdigest()[:32]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


_READABLE_ACCOUNT = re.compile(r"bk_(?:test|live)_[A-Za-z0-9]{8,64}|[a-z0-9][a-z0-9._-]{2,63}")


def _account(account: str) -> str:
    """The account as written when it has the shape of an API key or a username; anything else (a secret typed
    into the wrong field, say) only as a hash, so it reaches neither the log nor the database in clear."""
    if len(account) <= _MAX_ACCOUNT and _READABLE_ACCOUNT.fullmatch(account) and not account.startswith("sk_"):
        return account
    return "sha256:" + hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()


def keys_for(account: str, ip: str | None) -> list[str]:
    """The throttle keys of one authentication attempt: the source address (any account), the account from that
    address, and the account from anywhere. Guessing from one address blocks that address and that address's
    attempts on the account, not the account's owner elsewhere; only the account-wide backstop, set far higher,
    stops guessing spread over many addresses, and it then stops the owner too."""
    name = _account(account)
    if ip is None:
        return [ACCOUNT_PREFIX + name]
    source = _source(ip)
    return [IP_PREFIX + source, f"{ACCOUNT_IP_PREFIX}{name}@{source}", ACCOUNT_PREFIX + name]


def backoff_seconds(failures: int, threshold: int, cap: float) -> float:
    """0 below the threshold; then 1 s, 2 s, 4 s, ... doubling with every further failure, at most `cap`."""
    if failures < threshold:
        return 0.0
    exponent = failures - threshold
    return cap if exponent >= 30 else min(float(2**exponent), cap)


def _upsert(store: Store) -> Any:
    """The dialect's INSERT supporting ON CONFLICT DO UPDATE ... RETURNING (PostgreSQL, SQLite >= 3.35)."""
    return postgresql.insert if store.dialect == "postgresql" else sqlite.insert


class AuthThrottle:
    """Failed authentications per key; `blocked` answers from memory, `failure` writes through to the database.

    A key's count starts again after `window` seconds without a failure; once it reaches the key's threshold,
    every failure blocks the key for `backoff_seconds` (1 s doubling up to `max_backoff`).
    """

    def __init__(
        self,
        store: Store,
        *,
        ip_failures: int = 20,
        account_ip_failures: int = 5,
        account_failures: int = 50,
        window: float = 900.0,
        max_backoff: float = 900.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self._store = store
        self._now = clock.now
        self._thresholds = {IP_PREFIX: ip_failures, ACCOUNT_IP_PREFIX: account_ip_failures,
                            ACCOUNT_PREFIX: account_failures}
        self._window = window
        self._max_backoff = max_backoff
        self._blocked: dict[str, float] = {}  # key -> blocked until (UNIX time)
        self._changes = 0
        self._changed: dict[str, int] = {}  # key -> change number, for changes not yet covered by a sync
        self._failed: dict[str, float] = {}  # key -> last failure recorded by this process
        self._failed_overflow = False
        self._last_forget = 0.0
        self._last_purge = 0.0
        self._blocks = Channel("throttle.blocked", ())

    def __repr__(self) -> str:
        return f"AuthThrottle(blocked_keys={len(self._blocked)})"

    def tell(self, events: Events) -> None:
        """Emit every block placed (or lengthened) here as the event `throttle.blocked` to `events`; its detail
        says what is blocked (`scope`: ip, account_ip or account), never the address or account itself."""
        self._blocks = events.channel("throttle.blocked")

    @classmethod
    def from_settings(cls, store: Store, settings: Settings, *, clock: Clock = SYSTEM) -> AuthThrottle:
        return cls(
            store,
            ip_failures=settings.throttle_ip_failures,
            account_ip_failures=settings.throttle_account_ip_failures,
            account_failures=settings.throttle_account_failures,
            window=settings.throttle_window,
            max_backoff=settings.throttle_max_backoff,
            clock=clock,
        )

    keys_for = staticmethod(keys_for)

    def threshold(self, key: str) -> int:
        for prefix, threshold in self._thresholds.items():
            if key.startswith(prefix):
                return threshold
        return self._thresholds[ACCOUNT_PREFIX]

    # -- request path -------------------------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Nothing blocked and no failure seen here: `blocked` would say None and `success` would do nothing,
        so the request path may skip building keys at all."""
        return not self._blocked and not self._failed and not self._failed_overflow

    def blocked(self, keys: Sequence[str]) -> float | None:
        """Seconds to wait when any key is blocked, else None. Memory only: no database, no hashing."""
        if not self._blocked:
            return None
        now = self._now()
        wait = max((self._blocked.get(key, 0.0) for key in keys), default=0.0) - now
        return wait if wait > 0 else None

    async def failure(self, keys: Sequence[str]) -> float | None:
        """Record one failed authentication under each key; return the wait now in force, if any."""
        now = self._now()
        table = schema.auth_throttle
        insert = _upsert(self._store)
        blocks: dict[str, float] = {}
        placed: list[str] = []
        unique = sorted(set(keys))  # one lock order for every process: concurrent failures cannot deadlock
        self._remember_failures(unique, now)
        async with self._store.begin() as conn:
            for key in unique:
                statement = insert(table).values(
                    key=key, failures=1, window_started=now, blocked_until=0.0, updated_at=now
                )
                quiet = table.c.updated_at <= now - self._window
                statement = statement.on_conflict_do_update(
                    index_elements=[table.c.key],
                    set_={
                        "failures": _case(quiet, 1, table.c.failures + 1),
                        "window_started": _case(quiet, now, table.c.window_started),
                        "updated_at": now,
                    },
                ).returning(table.c.failures, table.c.blocked_until)
                failures, blocked_until = (await conn.execute(statement)).one()
                wait = backoff_seconds(failures, self.threshold(key), self._max_backoff)
                if now + wait > blocked_until:
                    if wait > 0:
                        # Only ever lengthen a block: another process may have set a longer one meanwhile.
                        await conn.execute(
                            update(table)
                            .where(table.c.key == key)
                            .where(table.c.blocked_until < now + wait)
                            .values(blocked_until=now + wait)
                        )
                        blocks[key] = now + wait
                        placed.append(key)
                elif blocked_until > now:
                    blocks[key] = blocked_until
        for key, until in blocks.items():
            self._set(key, until)
        if blocks:
            log.info("authentication throttled: %s", ", ".join(sorted(blocks)))
        if placed and self._blocks.sinks:
            for key in placed:
                self._blocks.emit("-", "failure", None, {"scope": _SCOPES[key.partition(":")[0] + ":"]})
        return self.blocked(keys)

    async def success(self, keys: Sequence[str]) -> None:
        """A successful authentication clears the account keys; the source-address key keeps counting, so an
        attacker cannot reset its own address's count by also holding one valid credential.

        This runs on every successful authentication, so it touches the database only for keys this process has
        seen fail or blocked; counts recorded only by other processes are left to run out with their window.
        """
        account_keys = [
            key for key in sorted(set(keys))
            if not key.startswith(IP_PREFIX)
            and (self._failed_overflow or key in self._failed or key in self._blocked)
        ]
        if not account_keys:
            return
        table = schema.auth_throttle
        async with self._store.begin() as conn:
            for key in account_keys:
                await conn.execute(delete(table).where(table.c.key == key))
        for key in account_keys:
            self._failed.pop(key, None)
            self._set(key, None)

    def _remember_failures(self, keys: Iterable[str], now: float) -> None:
        if len(self._failed) >= _FAILED_LIMIT:
            self._forget_failures(now)
        if len(self._failed) >= _FAILED_LIMIT:
            self._failed_overflow = True
            return
        for key in keys:
            self._failed[key] = now

    def _forget_failures(self, now: float) -> None:
        """Drop failures older than the window: their counts start again at the next failure anyway."""
        self._last_forget = now
        self._failed = {key: at for key, at in self._failed.items() if at > now - self._window}
        self._failed_overflow = self._failed_overflow and len(self._failed) >= _FAILED_LIMIT // 2

    def _set(self, key: str, until: float | None) -> None:
        self._changes += 1
        self._changed[key] = self._changes
        if until is None:
            self._blocked.pop(key, None)
        else:
            self._blocked[key] = max(until, self._blocked.get(key, 0.0))

    # -- background ---------------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Reload the keys blocked now, so blocks made by other processes are enforced here too."""
        now = self._now()
        started = self._changes
        table = schema.auth_throttle
        async with self._store.connect() as conn:
            rows = (
                await conn.execute(select(table.c.key, table.c.blocked_until).where(table.c.blocked_until > now))
            ).all()
        fresh = {key: until for key, until in rows}
        # A change made here while the query ran may be missing from its answer: the local view wins for those.
        for key, number in self._changed.items():
            if number > started:
                if key in self._blocked:
                    fresh[key] = max(self._blocked[key], fresh.get(key, 0.0))
                else:
                    fresh.pop(key, None)
        self._blocked = fresh
        self._changed = {key: number for key, number in self._changed.items() if number > started}
        if self._failed and now - self._last_forget >= 60:
            self._forget_failures(now)
        if now - self._last_purge >= PURGE_INTERVAL:
            await self.purge(now)

    async def purge(self, now: float | None = None) -> int:
        """Delete rows whose window and block have both ended."""
        now = self._now() if now is None else now
        self._last_purge = now
        table = schema.auth_throttle
        async with self._store.begin() as conn:
            result = await conn.execute(
                delete(table).where(table.c.updated_at <= now - self._window).where(table.c.blocked_until <= now)
            )
        return int(result.rowcount or 0)


def _case(condition: Any, then: Any, otherwise: Any) -> Any:
    return case((condition, then), else_=otherwise)


class IssuanceLimiter:
    """Tokens issued per key (a client or user) per fixed 60 s window, over all processes; `limit` 0 turns it off.

    `hit` decides from memory: the total of all processes at the last `sync`, plus what this process has issued
    since. `sync` folds the local counts into `rate_counters` and reads the totals back.
    """

    def __init__(self, store: Store, *, limit: int, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._now = clock.now
        self.limit = limit
        self._pending: dict[tuple[str, float], int] = {}  # (key, window) -> tokens not yet written
        self._inflight: dict[tuple[str, float], int] = {}  # being written by a running sync
        self._totals: dict[str, tuple[float, int]] = {}  # key -> (window, total of all processes at last sync)
        self._last_purge = 0.0

    def __repr__(self) -> str:
        return f"IssuanceLimiter(limit={self.limit}/min)"

    def _count(self, key: str, window: float) -> int:
        total = self._totals.get(key)
        known = total[1] if total is not None and total[0] == window else 0
        slot = (key, window)
        return known + self._pending.get(slot, 0) + self._inflight.get(slot, 0)

    def hit(self, key: str) -> float | None:
        """Count one token for `key`; when that would pass the limit, count nothing and return the seconds until
        the window ends."""
        if self.limit <= 0:
            return None
        now = self._now()
        window = math.floor(now / RATE_WINDOW) * RATE_WINDOW
        if self._count(key, window) >= self.limit:
            return max(window + RATE_WINDOW - now, 0.001)
        slot = (key, window)
        self._pending[slot] = self._pending.get(slot, 0) + 1
        return None

    def count(self, key: str) -> int:
        """Tokens counted for `key` in the current window, as this process knows it."""
        return self._count(key, math.floor(self._now() / RATE_WINDOW) * RATE_WINDOW)

    async def sync(self) -> None:
        """Write this process's new counts and read back the totals of every key it has counted this window."""
        if self.limit <= 0 and not self._pending:
            return
        now = self._now()
        window = math.floor(now / RATE_WINDOW) * RATE_WINDOW
        self._inflight, self._pending = self._pending, {}
        try:
            totals = await self._fold(self._inflight, window)
        except BaseException:
            for slot, count in self._inflight.items():
                self._pending[slot] = self._pending.get(slot, 0) + count
            self._inflight = {}
            raise
        self._inflight = {}
        self._totals = totals
        if now - self._last_purge >= PURGE_INTERVAL:
            await self.purge(now)

    async def _fold(self, counts: dict[tuple[str, float], int], window: float) -> dict[str, tuple[float, int]]:
        table = schema.rate_counters
        insert = _upsert(self._store)
        totals: dict[str, tuple[float, int]] = {}
        async with self._store.begin() as conn:
            for (key, started), count in sorted(counts.items()):
                if started < window - RATE_WINDOW:
                    continue  # long past: no one asks any more
                statement = insert(table).values(key=key, window_started=started, count=count)
                excluded = statement.excluded
                statement = statement.on_conflict_do_update(
                    index_elements=[table.c.key],
                    set_={
                        # Same window: add. A newer window: start it. An older one (a late write): keep the row.
                        "count": _case(
                            table.c.window_started == excluded.window_started,
                            table.c.count + excluded.count,
                            _case(table.c.window_started < excluded.window_started, excluded.count, table.c.count),
                        ),
                        "window_started": _case(
                            table.c.window_started < excluded.window_started,
                            excluded.window_started,
                            table.c.window_started,
                        ),
                    },
                ).returning(table.c.window_started, table.c.count)
                row_window, row_count = (await conn.execute(statement)).one()
                totals[key] = (row_window, row_count)
            # Keys counted earlier in this window but not since: other processes may still be issuing for them.
            others = [key for key, (started, _) in self._totals.items() if started == window and key not in totals]
            for chunk in _chunks(others, _IN_CHUNK):
                rows = await conn.execute(
                    select(table.c.key, table.c.window_started, table.c.count).where(table.c.key.in_(chunk))
                )
                for key, row_window, row_count in rows:
                    totals[key] = (row_window, row_count)
        return {key: value for key, value in totals.items() if value[0] >= window}

    async def purge(self, now: float | None = None) -> int:
        """Delete counters of windows that have ended."""
        now = self._now() if now is None else now
        self._last_purge = now
        table = schema.rate_counters
        async with self._store.begin() as conn:
            result = await conn.execute(delete(table).where(table.c.window_started < now - 2 * RATE_WINDOW))
        return int(result.rowcount or 0)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
