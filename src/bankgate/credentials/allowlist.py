"""IP allow lists per M2M user or API client and per environment (seed 000: "inform your Integration Manager of the
IP addresses that should be whitelisted", for production and for the sandbox).

Production fails closed: a subject without an entry is refused from every address. The sandbox lets a subject
without an entry in from loopback only, so a fresh sandbox works on one machine and nowhere else. The check on the
request path is served from a per-subject cache, the same rule as the client cache: every change is published on the
change feed, so the process that made it drops the cached entries at once and the other server processes within one
sync interval; `cache_ttl` only bounds how long an entry may live if a change were missed.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Literal, get_args

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from bankgate.cache import TtlCache
from bankgate.changes import ChangeFeed
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Environment
from bankgate.store import Store, schema

__all__ = [
    "LOOPBACK",
    "AllowEntry",
    "AllowListError",
    "IpAllowList",
    "SubjectKind",
    "describe_default",
    "parse_address",
    "parse_cidr",
]

SubjectKind = Literal["user", "client"]
SUBJECT_KINDS: tuple[SubjectKind, ...] = get_args(SubjectKind)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Where a sandbox subject without an entry may connect from.
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_CACHE_LIMIT = 50_000


class AllowListError(ValueError):
    """An entry that cannot be stored: not a CIDR, or an unknown subject kind."""


@dataclass(frozen=True, slots=True)
class AllowEntry:
    kind: SubjectKind
    subject_id: str  # ClientRecord.id or UserRecord.id (the UUID, not the API key or username)
    environment: Environment
    cidr: str  # normalised: network address and prefix length, e.g. 10.1.2.0/24, 2001:db8::/48
    created_at: float

    @property
    def network(self) -> Network:
        return ipaddress.ip_network(self.cidr)

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "subject_id": self.subject_id,
            "environment": self.environment,
            "cidr": self.cidr,
            "created_at": int(self.created_at),
        }


def describe_default(environment: str) -> str:
    """What applies to a user or client without an entry; shown by `bankgate ips list` and in 403 answers."""
    if environment == "production":
        return "in production a user or client without an IP allow-list entry is refused from every address"
    return (
        f"in the {environment} a user or client without an IP allow-list entry may connect from loopback only "
        "(127.0.0.0/8, ::1)"
    )


def _unmap(network: Network) -> Network:
    """An IPv4-mapped IPv6 network (::ffff:a.b.c.d/96+) as the IPv4 network it stands for."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_cidr(text: str) -> Network:
    """A CIDR or single address, normalised (host bits dropped, IPv4-mapped IPv6 written as IPv4)."""
    value = text.strip()
    try:
        return _unmap(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise AllowListError(
            f"{text!r} is not an IP address or CIDR; write e.g. 203.0.113.7, 203.0.113.0/24 or 2001:db8::/48"
        ) from None


@functools.lru_cache(maxsize=8192)  # a pure function of the address, called on every token request
def parse_address(ip: str | None) -> Address | None:
    """A request's source address, IPv4-mapped IPv6 as IPv4, an IPv6 zone dropped; None when unreadable."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _check_kind(kind: str) -> SubjectKind:
    if kind not in SUBJECT_KINDS:
        raise AllowListError(f"subject kind {kind!r} is not one of: {', '.join(SUBJECT_KINDS)}")
    return kind


class IpAllowList:
    """Allow-list entries of one environment in the store, with a short-lived per-subject cache for `allows`."""

    def __init__(
        self,
        store: Store,
        environment: Environment,
        *,
        cache_ttl: float = 60.0,
        changes: ChangeFeed | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self._store = store
        self._now, self._monotonic = clock.now, clock.monotonic
        self._environment: Environment = environment
        self._cache_ttl = cache_ttl
        self._cache: TtlCache[tuple[str, str], tuple[Network, ...]] = TtlCache(
            cache_ttl, limit=_CACHE_LIMIT, clock=clock
        )
        self._decisions: dict[tuple[str, str, str | None], tuple[float, bool]] = {}
        self._default: tuple[Network, ...] = () if environment == "production" else LOOPBACK
        self._changes = changes or ChangeFeed(store)
        self._changes.subscribe("allow", self._changed)

    def __repr__(self) -> str:
        return f"IpAllowList(environment={self._environment!r})"

    @property
    def cache(self) -> TtlCache[tuple[str, str], tuple[Network, ...]]:
        """The entries read lately, by subject (its `hits` and `misses` are the server's metrics)."""
        return self._cache

    @property
    def environment(self) -> Environment:
        return self._environment

    def describe_default(self) -> str:
        return describe_default(self._environment)

    # -- changes ------------------------------------------------------------------------------------------

    async def allow(self, kind: SubjectKind, subject_id: str, cidr: str) -> AllowEntry:
        """Add an entry; adding one that exists already returns the existing entry."""
        kind = _check_kind(kind)
        network = str(parse_cidr(cidr))
        if not 0 < len(subject_id) <= 36:
            raise AllowListError(f"{kind} id {subject_id!r} is not a record id (a UUID)")
        table = schema.ip_allow_entries
        try:
            async with self._store.begin() as conn:
                await conn.execute(
                    table.insert().values(
                        subject_kind=kind,
                        subject_id=subject_id,
                        environment=self._environment,
                        cidr=network,
                        created_at=self._now(),
                    )
                )
                await self._changes.record(conn, ("allow", f"{kind}:{subject_id}"))
        except IntegrityError:
            pass  # there already; fall through and return it
        self._changes.announce(("allow", f"{kind}:{subject_id}"))
        for entry in await self.list(kind, subject_id):
            if entry.cidr == network:
                return entry
        raise RuntimeError(f"allow-list entry {network} for {kind} {subject_id} vanished while being added")

    async def remove(self, kind: SubjectKind, subject_id: str, cidr: str) -> bool:
        """Remove an entry; False when there was none."""
        kind = _check_kind(kind)
        network = str(parse_cidr(cidr))
        table = schema.ip_allow_entries
        async with self._store.begin() as conn:
            result = await conn.execute(
                delete(table)
                .where(table.c.subject_kind == kind)
                .where(table.c.subject_id == subject_id)
                .where(table.c.environment == self._environment)
                .where(table.c.cidr == network)
            )
            await self._changes.record(conn, ("allow", f"{kind}:{subject_id}"))
        self._changes.announce(("allow", f"{kind}:{subject_id}"))
        return bool(result.rowcount)

    def forget(self, kind: str, subject_id: str) -> None:
        self._cache.forget((kind, subject_id))
        self._decisions.clear()

    def _changed(self, key: str) -> None:
        kind, _, subject_id = key.partition(":")
        self.forget(kind, subject_id)

    # -- lookup -------------------------------------------------------------------------------------------

    async def list(self, kind: str | None = None, subject_id: str | None = None) -> list[AllowEntry]:
        """Entries of the configured environment, optionally of one kind and/or one subject."""
        table = schema.ip_allow_entries
        query = (
            select(table)
            .where(table.c.environment == self._environment)
            .order_by(table.c.subject_kind, table.c.subject_id, table.c.id)
        )
        if kind is not None:
            query = query.where(table.c.subject_kind == _check_kind(kind))
        if subject_id is not None:
            query = query.where(table.c.subject_id == subject_id)
        async with self._store.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            AllowEntry(r["subject_kind"], r["subject_id"], r["environment"], r["cidr"], r["created_at"]) for r in rows
        ]

    async def _networks(self, kind: str, subject_id: str) -> tuple[Network, ...]:
        return await self._cache.get((kind, subject_id), lambda: self._read_networks(kind, subject_id))

    async def _read_networks(self, kind: str, subject_id: str) -> tuple[Network, ...]:
        table = schema.ip_allow_entries
        async with self._store.connect() as conn:
            cidrs = (
                await conn.execute(
                    select(table.c.cidr)
                    .where(table.c.subject_kind == kind)
                    .where(table.c.subject_id == subject_id)
                    .where(table.c.environment == self._environment)
                )
            ).scalars()
            return tuple(ipaddress.ip_network(c) for c in cidrs)

    async def allows(self, kind: SubjectKind, subject_id: str, ip: str | None) -> bool:
        """May `subject_id` connect from `ip`? An address inside any of its entries: yes. No entry: in production
        no, in the sandbox only from loopback. No or an unreadable address: no."""
        # The answer for the same subject and address is reused while the subject's entries are cached: the
        # token endpoint asks this on every request, nearly always for the same few pairs.
        decision_key = (kind, subject_id, ip)
        cached = self._decisions.get(decision_key)
        if cached is not None and cached[0] > self._monotonic():
            return cached[1]
        address = parse_address(ip)
        if address is None:
            return False
        networks = await self._networks(kind, subject_id) or self._default
        allowed = any(address in network for network in networks)
        expires_at = self._cache.expires_at((kind, subject_id))
        if expires_at is not None:  # a decision lives as long as the entries it was made from
            if len(self._decisions) >= _CACHE_LIMIT:
                self._decisions.clear()
            self._decisions[decision_key] = (expires_at, allowed)
        return allowed
