"""The domain services, wired once from settings; shared by the command line and the HTTP app."""

from __future__ import annotations

from dataclasses import dataclass

from bankgate.admin import Admin
from bankgate.audit import AuditEvent, AuditLog
from bankgate.changes import ChangeFeed
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Settings
from bankgate.credentials.admins import AdminDirectory
from bankgate.credentials.allowlist import IpAllowList
from bankgate.credentials.clients import ClientRegistry
from bankgate.credentials.users import UserDirectory
from bankgate.pki import CertificateService
from bankgate.store import Store
from bankgate.throttle import AuthThrottle, IssuanceLimiter
from bankgate.tokens import open_key_store
from bankgate.tokens.keys import SigningKey
from bankgate.tokens.revocation import RevocationList
from bankgate.tokens.signing_keys import SigningKeys
from bankgate.vault import MasterKeyError, Vault, load_master_key

__all__ = ["InitReport", "IssuerChoice", "Services"]

VAULT_CHECK = "vault_check"
#: The issuer URL every server process on this database uses unless one is configured for it (see `resolve_issuer`).
ISSUER = "issuer"
#: How long past retirement a signing key stays in the JWKS beyond the longest token lifetime.
KEY_PUBLISH_MARGIN = 300


@dataclass(frozen=True, slots=True)
class InitReport:
    data_dir: str
    database: str
    environment: str
    signing_key: SigningKey
    created_key: bool


@dataclass(frozen=True, slots=True)
class IssuerChoice:
    """The issuer a server process uses, and why: what it prints at start, so an operator sees where it came from."""

    url: str
    source: str
    #: Another issuer is stored in the database: tokens of this process are refused by processes that use it.
    conflicts_with: str | None = None

    def describe(self) -> str:
        text = f"issuer {self.url} ({self.source})"
        if self.conflicts_with is not None:
            text += (f"; warning: the database holds issuer {self.conflicts_with}, which servers started without "
                     "an issuer use, and they refuse this server's tokens (change the stored one with "
                     "`bankgate init --issuer URL`)")
        return text


class Services:
    def __init__(self, settings: Settings, vault: Vault, store: Store, *, clock: Clock = SYSTEM) -> None:
        self.settings = settings
        #: What every service reads the time from: the machine's clocks, or a test's `ManualClock`.
        self.clock = clock
        self.vault = vault
        self.store = store
        # Every writer records its changes on one feed (and subject revocations on one list), so the caches of
        # every server process follow them: at once in this process, within one sync interval in the others.
        self.changes = ChangeFeed(store, clock=clock)
        self.revocations = RevocationList(store, max_staleness=max(30.0, 10 * settings.revocation_sync_interval),
                                          clock=clock)
        changes, revocations = self.changes, self.revocations
        # A disable's cut-off lies this far ahead: the other processes' caches follow within one sync and a query.
        settle = settings.revocation_sync_interval + 1.0
        self.clients = ClientRegistry(store, vault, settings.environment, cache_ttl=settings.client_cache_ttl,
                                      changes=changes, revocations=revocations, settle=settle, clock=clock)
        self.users = UserDirectory(store, settings.environment, passphrase_ttl=settings.passphrase_ttl,
                                   hasher=settings.password_hasher(), changes=changes, revocations=revocations,
                                   settle=settle, clock=clock)
        self.audit = AuditLog(store, flush_interval=settings.audit_flush_interval)
        self.keys = SigningKeys(open_key_store(settings, store, vault, changes=changes, clock=clock), self.audit,
                                alg=settings.signing_alg, publish_for=self.key_publish_seconds, clock=clock)
        self.pki = CertificateService(store, vault, settings.environment, changes=changes, revocations=revocations,
                                      clock=clock)
        self.allowlist = IpAllowList(
            store, settings.environment, cache_ttl=settings.client_cache_ttl, changes=self.changes, clock=clock
        )
        self.throttle = AuthThrottle.from_settings(store, settings, clock=clock)
        self.admins = AdminDirectory(store, vault, settings.environment, hasher=settings.password_hasher(),
                                     throttle=self.throttle, clock=clock)
        self.limiter = IssuanceLimiter(store, limit=settings.issuance_rate_limit, clock=clock)
        #: The administrative use cases over the services above, for every entrance (command line, admin API).
        self.admin = Admin(self)

    def __repr__(self) -> str:
        return f"Services({self.store!r}, environment={self.settings.environment!r})"

    @classmethod
    async def open(cls, settings: Settings, *, initialise: bool = False, clock: Clock = SYSTEM) -> Services:
        """Open the services; with `initialise`, create what is missing (master key, schema, first signing key)."""
        master = load_master_key(
            settings.master_key.get_secret_value() if settings.master_key else None,
            settings.data_dir,
            create=initialise,
        )
        services = cls(settings, Vault(master), Store(settings.sqlalchemy_url), clock=clock)
        try:
            if initialise:
                await services.store.migrate()
            stored = await services.store.get_meta(VAULT_CHECK)
            if stored is None and initialise:
                stored = await services.store.put_meta_if_absent(VAULT_CHECK, services.vault.check_value())
            if stored is None:
                raise MasterKeyError("the database is not initialised; run `bankgate init` first")
            if stored != services.vault.check_value():
                raise MasterKeyError(
                    "this database was initialised with another master key; set BANKGATE_MASTER_KEY to that "
                    "key (or use the data directory that holds its master.key)"
                )
        except BaseException:
            await services.close()
            raise
        return services

    @property
    def key_publish_seconds(self) -> float:
        return self.settings.token_ttl + KEY_PUBLISH_MARGIN

    async def init(self) -> InitReport:
        key, created = await self.keys.ensure_active(
            self.settings.signing_alg, retire_publish_for=self.key_publish_seconds
        )
        if created:
            # A first key, or a rotation because the configured algorithm changed.
            await self.audit.write(
                AuditEvent("key.rotated", "system", "success", None, {"kid": key.kid, "alg": key.alg, "by": "init"})
            )
        authority, created_ca = await self.pki.ensure_ca()
        if created_ca:
            subject = authority.certificate.subject.rfc4514_string()
            await self.audit.write(
                AuditEvent("ca.created", "system", "success", None,
                           {"environment": authority.environment, "subject": subject})
            )
        return InitReport(
            data_dir=str(self.settings.data_dir.resolve()),
            database=self.store.engine.url.render_as_string(hide_password=True),
            environment=self.settings.environment,
            signing_key=key,
            created_key=created,
        )

    async def stored_issuer(self) -> str | None:
        return await self.store.get_meta(ISSUER)

    async def set_issuer(self, url: str) -> None:
        """Store the issuer that server processes on this database use unless one is configured for them."""
        await self.store.put_meta(ISSUER, url.rstrip("/"))

    async def resolve_issuer(self, computed: str) -> IssuerChoice:
        """The issuer of a server process, agreed by every process on this database without configuration.

        Tokens carry `iss` (RFC 9068 §2.2) and each process refuses tokens of another issuer, so processes sharing
        a database must share the issuer. A configured issuer (`--issuer`, `BANKGATE_ISSUER`) wins for its
        process; otherwise the one stored in the database (`bankgate init --issuer URL`) is used; otherwise
        `computed` (this process's own `http(s)://host:port`). Whichever a process uses is stored if none is yet
        (put-if-absent): the first process to start decides and the others, started without one, follow.
        """
        configured = self.settings.issuer.rstrip("/") if self.settings.issuer else None
        stored = await self.stored_issuer()
        if configured is not None:
            if stored is None:
                stored = await self.store.put_meta_if_absent(ISSUER, configured)
                if stored == configured:
                    return IssuerChoice(configured, "--issuer/BANKGATE_ISSUER; stored for servers started without "
                                        "one")
            conflict = stored if stored != configured else None
            return IssuerChoice(configured, "--issuer/BANKGATE_ISSUER", conflict)
        if stored is not None:
            return IssuerChoice(stored, "stored in the database; change it with `bankgate init --issuer URL`")
        chosen = await self.store.put_meta_if_absent(ISSUER, computed.rstrip("/"))
        if chosen != computed.rstrip("/"):  # another process stored its own first
            return IssuerChoice(chosen, "stored in the database; change it with `bankgate init --issuer URL`")
        return IssuerChoice(chosen, "this server's address, stored in the database for the servers that share it; "
                            "change it with `bankgate init --issuer URL`")

    async def close(self) -> None:
        await self.store.close()
