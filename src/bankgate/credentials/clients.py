"""API clients (key pairs): onboarding, lookup, authentication, secret rotation with overlap, revocation."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bankgate.cache import TtlCache
from bankgate.changes import ChangeFeed
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Environment
from bankgate.credentials._cutoff import cutoff, wait_past_cutoff
from bankgate.credentials.keys import new_api_key, new_secret_key
from bankgate.credentials.scopes import check_application_ids
from bankgate.credentials.versions import VersionConflict, bump, check_version
from bankgate.store import Store, schema
from bankgate.store.paging import Keyset, Page, fetch_page, search_term, status_condition
from bankgate.tokens.revocation import RevocationList
from bankgate.vault import Vault

__all__ = [
    "AuthMode",
    "ClientAuthError",
    "ClientNotFoundError",
    "ClientRecord",
    "ClientRegistry",
    "ClientStateError",
    "ClientStatus",
    "IssuedSecret",
]

AuthMode = Literal["oauth2", "basic"]
#: active -> disabled -> active again; revoked and deleted are for good (deleted: a tombstone without secrets).
ClientStatus = Literal["active", "disabled", "revoked", "deleted"]
AUTH_MODES: tuple[AuthMode, ...] = ("oauth2", "basic")
STATUSES: tuple[ClientStatus, ...] = ("active", "disabled", "revoked", "deleted")
#: Clients are listed oldest first, a page at a time (`ClientRegistry.page`).
_KEYSET = Keyset("clients", (schema.clients.c.created_at, schema.clients.c.id), ((float, int), (str,)))
#: A refusal reached from a cached record is re-read from the database at most this often per API key.
RECHECK_INTERVAL = 1.0
_RECHECKED = frozenset({"unknown_api_key", "wrong_secret"})


class ClientNotFoundError(LookupError):
    pass


class ClientStateError(ValueError):
    """The change does not apply to the client as it is (e.g. enabling a revoked client); says what to do."""


class ClientAuthError(Exception):
    """Authentication failed; `reason` is for the audit trail, never shown to the caller in detail."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SecretHash:
    digest: str = field(repr=False)
    created_at: float
    expires_at: float | None

    def valid_at(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class ClientRecord:
    id: str
    api_key: str
    name: str
    auth_mode: AuthMode
    scopes: tuple[str, ...]
    environment: Environment
    status: ClientStatus
    created_at: float
    revoked_at: float | None = None
    secrets: tuple[SecretHash, ...] = field(default=(), repr=False)
    #: Incremented by every change; an update may name the version it read (`expected_version`).
    version: int = 1

    @property
    def active(self) -> bool:
        return self.status == "active"

    def as_json(self) -> dict[str, object]:
        now = time.time()
        return {
            "client_id": self.id,
            "api_key": self.api_key,
            "name": self.name,
            "auth_mode": self.auth_mode,
            "scopes": list(self.scopes),
            "environment": self.environment,
            "status": self.status,
            "created_at": int(self.created_at),
            "revoked_at": int(self.revoked_at) if self.revoked_at else None,
            "version": self.version,
            "secrets": [
                {"created_at": int(s.created_at), "expires_at": int(s.expires_at) if s.expires_at else None}
                for s in self.secrets
                if s.valid_at(now)
            ],
        }


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A client with its secret in clear: exists only to be shown once."""

    client: ClientRecord
    secret_key: str = field(repr=False)

    def as_json(self) -> dict[str, object]:
        return {
            "client_id": self.client.id,
            "api_key": self.client.api_key,
            "secret_key": self.secret_key,
            "scopes": list(self.client.scopes),
            "auth_mode": self.client.auth_mode,
            "environment": self.client.environment,
        }


class ClientRegistry:
    """Clients in the store, with a cache for the token endpoint and the guard.

    The cache keeps a client record (with its secret hashes) up to `cache_ttl` seconds, but every change made
    through this registry is published on the change feed: this process drops the record at once, the other server
    processes within one sync interval. A refusal reached from a cached record (unknown key, wrong secret) is
    decided again from the database before it is given, at most once per key per `RECHECK_INTERVAL`, so a secret
    rotated elsewhere works on the next request while a flood of wrong secrets costs few reads.
    """

    def __init__(
        self,
        store: Store,
        vault: Vault,
        environment: Environment,
        *,
        cache_ttl: float = 60.0,
        changes: ChangeFeed | None = None,
        revocations: RevocationList | None = None,
        settle: float = 1.5,
        clock: Clock = SYSTEM,
    ) -> None:
        self._store = store
        self._now, self._monotonic = clock.now, clock.monotonic
        self._vault = vault
        self._environment: Environment = environment
        self._cache: TtlCache[str, ClientRecord | None] = TtlCache(cache_ttl, clock=clock)
        self._changes = changes or ChangeFeed(store)
        self._revocations = revocations or RevocationList(store)
        #: How far ahead a disable puts its cut-off: other processes' caches follow within a sync (`_cutoff`).
        self._settle = settle
        self._rechecked: dict[str, float] = {}  # api key -> when a cached refusal was last re-read
        self._changes.subscribe("client", self.forget)

    @property
    def cache(self) -> TtlCache[str, ClientRecord | None]:
        """The records read lately (its `hits` and `misses` are the server's metrics)."""
        return self._cache

    # -- onboarding ---------------------------------------------------------------------------------------

    async def create(self, name: str, scopes: list[str], auth_mode: str = "oauth2") -> IssuedSecret:
        name = self._check_name(name)
        if auth_mode not in AUTH_MODES:
            raise ValueError(f"auth mode {auth_mode!r} is not one of: {', '.join(AUTH_MODES)}")
        app_ids = check_application_ids(scopes)
        prefix = "live" if self._environment == "production" else "test"
        api_key, secret = new_api_key(prefix), new_secret_key(prefix)
        now = self._now()
        record = ClientRecord(
            id=str(uuid.uuid4()),
            api_key=api_key,
            name=name,
            auth_mode=auth_mode,
            scopes=app_ids,
            environment=self._environment,
            status="active",
            created_at=now,
            secrets=(SecretHash(self._vault.hash_secret(secret), now, None),),
        )
        async with self._store.begin() as conn:
            await conn.execute(
                schema.clients.insert().values(
                    id=record.id,
                    api_key=api_key,
                    name=name,
                    auth_mode=auth_mode,
                    scopes=json.dumps(list(app_ids)),
                    environment=self._environment,
                    status="active",
                    created_at=now,
                )
            )
            await conn.execute(
                schema.client_secrets.insert().values(
                    client_id=record.id, secret_hash=record.secrets[0].digest, created_at=now
                )
            )
            await self._changes.record(conn, ("client", api_key))  # a server may have cached "no such key"
        self._changes.announce(("client", api_key))
        return IssuedSecret(record, secret)

    # -- lookup -------------------------------------------------------------------------------------------

    @staticmethod
    def _record(row: Row[Any] | Any, secrets: tuple[SecretHash, ...]) -> ClientRecord:
        r = row._mapping if isinstance(row, Row) else row
        return ClientRecord(
            id=r["id"],
            api_key=r["api_key"],
            name=r["name"],
            auth_mode=r["auth_mode"],
            scopes=tuple(json.loads(r["scopes"])),
            environment=r["environment"],
            status=r["status"],
            created_at=r["created_at"],
            revoked_at=r["revoked_at"],
            secrets=secrets,
            version=r["version"],
        )

    @staticmethod
    async def _secrets(conn: AsyncConnection, *client_ids: str) -> dict[str, tuple[SecretHash, ...]]:
        table = schema.client_secrets
        found: dict[str, list[SecretHash]] = {client_id: [] for client_id in client_ids}
        if client_ids:
            # One client (a lookup, the token endpoint's cache filling) is a plain equality: no expanded IN.
            which = table.c.client_id == client_ids[0] if len(client_ids) == 1 else table.c.client_id.in_(client_ids)
            rows = await conn.execute(select(table).where(which).order_by(table.c.client_id, table.c.id))
            for s in rows.mappings():
                found[s["client_id"]].append(SecretHash(s["secret_hash"], s["created_at"], s["expires_at"]))
        return {client_id: tuple(hashes) for client_id, hashes in found.items()}

    async def _load(self, api_key: str, *, by_id: bool = False) -> ClientRecord | None:
        column = schema.clients.c.id if by_id else schema.clients.c.api_key
        async with self._store.connect() as conn:
            row = (await conn.execute(select(schema.clients).where(column == api_key))).first()
            if row is None:
                return None
            secrets = await self._secrets(conn, row.id)
        return self._record(row, secrets[row.id])

    async def find(self, api_key: str) -> ClientRecord | None:
        """The client of this API key, None when there is none."""
        return await self._load(api_key) if len(api_key) <= 80 else None

    async def find_by_id(self, client_id: str) -> ClientRecord | None:
        """The client of this client id, None when there is none."""
        return await self._load(client_id, by_id=True) if len(client_id) <= 36 else None

    async def get(self, api_key: str) -> ClientRecord:
        record = await self._load(api_key)
        if record is None:
            raise ClientNotFoundError(f"no client with API key {api_key}")
        return record

    async def list(self, *, deleted: bool = False) -> list[ClientRecord]:
        """Clients, oldest first; deleted ones (tombstones) only with `deleted`."""
        query = select(schema.clients.c.api_key).order_by(schema.clients.c.created_at)
        if not deleted:
            query = query.where(schema.clients.c.status != "deleted")
        async with self._store.connect() as conn:
            keys = (await conn.execute(query)).scalars()
            api_keys = list(keys)
        return [record for key in api_keys if (record := await self._load(key)) is not None]

    async def page(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        status: str | None = None,
        q: str | None = None,
        auth_mode: str | None = None,
        scope: str | None = None,
        deleted: bool = False,
    ) -> Page[ClientRecord]:
        """One page of clients, oldest first (keyset on `(created_at, id)`): of `status` (else every one but the
        deleted, unless `deleted`), whose name contains `q` or whose API key starts with it (both ignoring case),
        of `auth_mode`, allowed `scope` (an application ID). Raises `PagingError` for a bad limit or cursor."""
        table = schema.clients
        query = select(table)
        if (condition := status_condition(table.c.status, status, STATUSES, deleted=deleted)) is not None:
            query = query.where(condition)
        if q is not None:
            q = search_term(q, "a name or the start of an API key")
            query = query.where(
                func.lower(table.c.name).contains(q, autoescape=True)
                | func.lower(table.c.api_key).startswith(q, autoescape=True)
            )
        if auth_mode is not None:
            if auth_mode not in AUTH_MODES:
                raise ValueError(f"auth mode {auth_mode!r} is not one of: {', '.join(AUTH_MODES)}")
            query = query.where(table.c.auth_mode == auth_mode)
        if scope is not None:
            (application,) = check_application_ids([scope])
            query = query.where(table.c.scopes.contains(json.dumps(application), autoescape=True))
        filters = {"status": status, "q": q, "auth_mode": auth_mode, "scope": scope, "deleted": deleted}
        async with self._store.connect() as conn:
            rows, following = await fetch_page(conn, query, _KEYSET, limit=limit, cursor=cursor, filters=filters)
            secrets = await self._secrets(conn, *(row["id"] for row in rows))
        return Page(tuple(self._record(row, secrets[row["id"]]) for row in rows), following)

    async def cached(self, api_key: str) -> ClientRecord | None:
        """The client, possibly as it was up to the cache TTL ago; unknown keys are cached too."""
        return await self._cache.get(api_key, lambda: self._load(api_key))

    def forget(self, api_key: str) -> None:
        self._cache.forget(api_key)

    # -- authentication -----------------------------------------------------------------------------------

    async def authenticate(self, api_key: str, secret: str, *, allow_revoked: bool = False) -> ClientRecord:
        """Check a key pair; raise `ClientAuthError` with the reason (for the audit trail) when it fails.

        With `allow_revoked`, a revoked client's correct key pair passes (RFC 7009 and RFC 7662 let a client revoke
        and introspect its own tokens; a revoked client has every reason to)."""
        if len(api_key) > 80:
            self._vault.matches(secret, ())
            raise ClientAuthError("unknown_api_key")
        cached, record = self._cache.lookup(api_key)
        if not cached:
            record = await self.cached(api_key)
        refusal = self._refusal(record, secret, allow_revoked)
        if refusal in _RECHECKED and cached and self._may_recheck(api_key):
            self.forget(api_key)
            record = await self.cached(api_key)
            refusal = self._refusal(record, secret, allow_revoked)
        if refusal is not None:
            raise ClientAuthError(refusal)
        assert record is not None
        return record

    def _refusal(self, record: ClientRecord | None, secret: str, allow_revoked: bool) -> str | None:
        if record is None:
            # Hash anyway so an unknown key costs the same time as a wrong secret.
            self._vault.matches(secret, ())
            return "unknown_api_key"
        now = self._now()
        if not self._vault.matches(secret, [s.digest for s in record.secrets if s.valid_at(now)]):
            return "wrong_secret"
        if record.status == "disabled" and not allow_revoked:
            return "client_disabled"
        if not record.active and not allow_revoked:
            return "client_revoked"
        if record.environment != self._environment:
            return "wrong_environment"
        return None

    def _may_recheck(self, api_key: str) -> bool:
        now = self._monotonic()
        last = self._rechecked.get(api_key)
        if last is not None and now - last < RECHECK_INTERVAL:
            return False
        if len(self._rechecked) >= 10_000:  # bounded memory under a flood of distinct keys
            self._rechecked.clear()
        self._rechecked[api_key] = now
        return True

    # -- changes ------------------------------------------------------------------------------------------

    async def _apply(
        self, conn: AsyncConnection, record: ClientRecord, values: dict[str, object], expected: int | None
    ) -> None:
        """Change the client's row, incrementing its version; only at version `expected` when one is given."""
        statement = update(schema.clients).where(schema.clients.c.id == record.id).values(**values)
        result = await conn.execute(bump(statement, schema.clients, expected))
        if result.rowcount != 1 and expected is not None:
            current = await conn.scalar(select(schema.clients.c.version).where(schema.clients.c.id == record.id))
            raise VersionConflict(expected, current)

    async def revoke(self, api_key: str, *, expected_version: int | None = None) -> ClientRecord:
        """Revoke the client and, in the same transaction, every token it holds (`client:<id>` on the subject deny
        list). Idempotent: a revoked client keeps its first revocation time."""
        check_version(expected_version)
        record = await self.get(api_key)
        subject = f"client:{record.id}"
        async with self._store.begin() as conn:
            if record.status in ("active", "disabled"):
                await self._apply(conn, record, {"status": "revoked", "revoked_at": self._now()}, expected_version)
            await self._revocations.write_subject(conn, subject)
            await self._changes.record(conn, ("client", api_key))
        self._revocations.remember(subject)
        self._changes.announce(("client", api_key))
        return await self.get(api_key)

    async def rotate_secret(self, api_key: str, overlap: float) -> IssuedSecret:
        """A new secret; secrets valid now stay valid for `overlap` more seconds (0 ends them at once)."""
        if overlap < 0:
            raise ValueError("the overlap must be zero or positive")
        record = await self._changeable(api_key, "active", "disabled")
        secret = new_secret_key("live" if record.environment == "production" else "test")
        now = self._now()
        ends = now + overlap
        table = schema.client_secrets
        async with self._store.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.client_id == record.id)
                .where((table.c.expires_at.is_(None)) | (table.c.expires_at > ends))
                .values(expires_at=ends)
            )
            await conn.execute(
                table.insert().values(
                    client_id=record.id, secret_hash=self._vault.hash_secret(secret), created_at=now
                )
            )
            await self._apply(conn, record, {}, None)
            await self._changes.record(conn, ("client", api_key))
        self._changes.announce(("client", api_key))
        return IssuedSecret(await self.get(api_key), secret)

    def _check_name(self, name: str) -> str:
        name = name.strip()
        if not name or len(name) > 200:
            raise ValueError("a client needs a name of 1 to 200 characters (--name)")
        return name

    async def _changeable(self, api_key: str, *allowed: ClientStatus) -> ClientRecord:
        record = await self.get(api_key)
        if record.status not in allowed:
            advice = ("create a new client instead" if record.status in ("revoked", "deleted")
                      else f"enable it first: bankgate clients enable {api_key}")
            raise ClientStateError(f"client {api_key} is {record.status}; {advice}")
        return record

    async def update(
        self,
        api_key: str,
        *,
        name: str | None = None,
        scopes: Sequence[str] | None = None,
        auth_mode: str | None = None,
        expected_version: int | None = None,
    ) -> tuple[ClientRecord, ClientRecord]:
        """Rename the client, replace its applications and/or switch its auth mode; (before, after).

        Tokens carry the scopes they were issued with, so when an application is taken away every token issued
        until now is refused (a subject cut-off, as for `disable`); adding one leaves them alone. Leaving `oauth2`
        for `basic` refuses the tokens too (the client's way in is now its key pair on every call); leaving
        `basic` for `oauth2` stops Basic on API calls at once. With `expected_version`, only if the client is
        still at that version (else `VersionConflict`, nothing written)."""
        check_version(expected_version)
        before = await self._changeable(api_key, "active", "disabled")
        values: dict[str, object] = {}
        if name is not None:
            values["name"] = self._check_name(name)
        app_ids = check_application_ids(scopes) if scopes is not None else before.scopes
        if scopes is not None:
            values["scopes"] = json.dumps(list(app_ids))
        if auth_mode is not None:
            if auth_mode not in AUTH_MODES:
                raise ValueError(f"auth mode {auth_mode!r} is not one of: {', '.join(AUTH_MODES)}")
            values["auth_mode"] = auth_mode
        if not values:
            raise ValueError("nothing to change: give --name, --scope and/or --auth-mode")
        narrowed = not set(before.scopes) <= set(app_ids)
        left_oauth2 = before.auth_mode == "oauth2" and auth_mode == "basic"
        await self._write(before, values, cut_tokens=narrowed or left_oauth2, expected=expected_version)
        return before, await self.get(api_key)

    async def disable(self, api_key: str, *, expected_version: int | None = None) -> ClientRecord:
        """Suspend the client: it gets no token, and every token issued until now is refused for good (enabling
        it again does not bring them back: a subject cut-off, see `_cutoff`, not a flag read per request)."""
        check_version(expected_version)
        record = await self._changeable(api_key, "active", "disabled")
        await self._write(record, {"status": "disabled"}, cut_tokens=True, expected=expected_version)
        return await self.get(api_key)

    async def enable(self, api_key: str, *, expected_version: int | None = None) -> ClientRecord:
        """Let a disabled client get new tokens again (those issued before it was disabled stay refused). Returns
        once the disable's cut-off has passed, so the tokens it gets from then on stay valid."""
        check_version(expected_version)
        record = await self._changeable(api_key, "active", "disabled")
        await wait_past_cutoff(self._store, f"client:{record.id}", self._now)
        await self._write(record, {"status": "active"}, cut_tokens=False, expected=expected_version)
        return await self.get(api_key)

    async def delete(self, api_key: str, *, expected_version: int | None = None) -> ClientRecord:
        """Delete the client: its secrets and IP allow-list entries go, its row stays as a tombstone (status
        `deleted`, so the audit trail still names a client and its API key is never reissued) and every token it
        holds is refused like a revocation. Idempotent."""
        check_version(expected_version)
        record = await self.get(api_key)
        subject = f"client:{record.id}"
        allow = ("allow", f"client:{record.id}")
        async with self._store.begin() as conn:
            await self._apply(conn, record, {"status": "deleted", "revoked_at": record.revoked_at or self._now()},
                              expected_version)
            await conn.execute(delete(schema.client_secrets).where(schema.client_secrets.c.client_id == record.id))
            entries = schema.ip_allow_entries
            await conn.execute(
                delete(entries).where(entries.c.subject_kind == "client").where(entries.c.subject_id == record.id)
            )
            await self._revocations.write_subject(conn, subject)
            await self._changes.record(conn, ("client", api_key), allow)
        self._revocations.remember(subject)
        self._changes.announce(("client", api_key), allow)
        return await self.get(api_key)

    async def _write(
        self, record: ClientRecord, values: dict[str, object], *, cut_tokens: bool, expected: int | None = None
    ) -> None:
        subject, cut = f"client:{record.id}", cutoff(self._now(), self._settle)
        async with self._store.begin() as conn:
            await self._apply(conn, record, values, expected)
            if cut_tokens:
                await self._revocations.write_subject(conn, subject, not_before=cut)
            await self._changes.record(conn, ("client", record.api_key))
        if cut_tokens:
            self._revocations.remember(subject, cut)
        self._changes.announce(("client", record.api_key))
