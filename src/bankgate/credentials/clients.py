"""API clients (key pairs): onboarding, lookup, authentication, secret rotation with overlap, revocation."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import delete, select, update

from bankgate.cache import TtlCache
from bankgate.changes import ChangeFeed
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Environment
from bankgate.credentials._cutoff import cutoff, wait_past_cutoff
from bankgate.credentials.keys import new_api_key, new_secret_key
from bankgate.credentials.scopes import check_application_ids
from bankgate.store import Store, schema
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

    async def _load(self, api_key: str) -> ClientRecord | None:
        async with self._store.connect() as conn:
            row = (
                (await conn.execute(select(schema.clients).where(schema.clients.c.api_key == api_key)))
                .mappings()
                .one_or_none()
            )
            if row is None:
                return None
            secret_rows = (
                await conn.execute(
                    select(schema.client_secrets)
                    .where(schema.client_secrets.c.client_id == row["id"])
                    .order_by(schema.client_secrets.c.id)
                )
            ).mappings()
            secrets = tuple(SecretHash(s["secret_hash"], s["created_at"], s["expires_at"]) for s in secret_rows)
        return ClientRecord(
            id=row["id"],
            api_key=row["api_key"],
            name=row["name"],
            auth_mode=row["auth_mode"],
            scopes=tuple(json.loads(row["scopes"])),
            environment=row["environment"],
            status=row["status"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            secrets=secrets,
        )

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

    async def revoke(self, api_key: str) -> ClientRecord:
        """Revoke the client and, in the same transaction, every token it holds (`client:<id>` on the subject deny
        list). Idempotent: a revoked client keeps its first revocation time."""
        record = await self.get(api_key)
        subject = f"client:{record.id}"
        async with self._store.begin() as conn:
            if record.status in ("active", "disabled"):
                await conn.execute(
                    update(schema.clients)
                    .where(schema.clients.c.id == record.id)
                    .values(status="revoked", revoked_at=self._now())
                )
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
        self, api_key: str, *, name: str | None = None, scopes: Sequence[str] | None = None
    ) -> tuple[ClientRecord, ClientRecord]:
        """Rename the client and/or replace its applications; (before, after).

        Tokens carry the scopes they were issued with, so when an application is taken away every token issued
        until now is refused (a subject cut-off, as for `disable`); adding one leaves them alone."""
        before = await self._changeable(api_key, "active", "disabled")
        values: dict[str, object] = {}
        if name is not None:
            values["name"] = self._check_name(name)
        app_ids = check_application_ids(scopes) if scopes is not None else before.scopes
        if scopes is not None:
            values["scopes"] = json.dumps(list(app_ids))
        if not values:
            raise ValueError("nothing to change: give --name and/or --scope")
        narrowed = not set(before.scopes) <= set(app_ids)
        await self._write(before, values, cut_tokens=narrowed)
        return before, await self.get(api_key)

    async def disable(self, api_key: str) -> ClientRecord:
        """Suspend the client: it gets no token, and every token issued until now is refused for good (enabling
        it again does not bring them back: a subject cut-off, see `_cutoff`, not a flag read per request)."""
        record = await self._changeable(api_key, "active", "disabled")
        await self._write(record, {"status": "disabled"}, cut_tokens=True)
        return await self.get(api_key)

    async def enable(self, api_key: str) -> ClientRecord:
        """Let a disabled client get new tokens again (those issued before it was disabled stay refused). Returns
        once the disable's cut-off has passed, so the tokens it gets from then on stay valid."""
        record = await self._changeable(api_key, "active", "disabled")
        await wait_past_cutoff(self._store, f"client:{record.id}", self._now)
        await self._write(record, {"status": "active"}, cut_tokens=False)
        return await self.get(api_key)

    async def delete(self, api_key: str) -> ClientRecord:
        """Delete the client: its secrets and IP allow-list entries go, its row stays as a tombstone (status
        `deleted`, so the audit trail still names a client and its API key is never reissued) and every token it
        holds is refused like a revocation. Idempotent."""
        record = await self.get(api_key)
        subject = f"client:{record.id}"
        allow = ("allow", f"client:{record.id}")
        async with self._store.begin() as conn:
            await conn.execute(
                update(schema.clients)
                .where(schema.clients.c.id == record.id)
                .values(status="deleted", revoked_at=record.revoked_at or self._now())
            )
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

    async def _write(self, record: ClientRecord, values: dict[str, object], *, cut_tokens: bool) -> None:
        subject, cut = f"client:{record.id}", cutoff(self._now(), self._settle)
        async with self._store.begin() as conn:
            await conn.execute(update(schema.clients).where(schema.clients.c.id == record.id).values(**values))
            if cut_tokens:
                await self._revocations.write_subject(conn, subject, not_before=cut)
            await self._changes.record(conn, ("client", record.api_key))
        if cut_tokens:
            self._revocations.remember(subject, cut)
        self._changes.announce(("client", record.api_key))
