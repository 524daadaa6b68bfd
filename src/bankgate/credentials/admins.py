"""Administrators: the people and tools that run bankgate through its admin API and console, apart from merchant
clients and M2M users. Each has a role, a key pair of its own family (`bka_…` / `ska_…`, for the admin API), and,
once set, a console password (argon2id) with a TOTP second factor (RFC 6238, the secret encrypted by the vault).
"""

from __future__ import annotations

import base64
import hmac
import secrets
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlencode

from argon2 import PasswordHasher
from sqlalchemy import Row, RowMapping, func, select, update
from sqlalchemy.exc import IntegrityError

from bankgate.clock import SYSTEM, Clock
from bankgate.config import Environment
from bankgate.credentials.keys import new_admin_key, new_admin_secret
from bankgate.credentials.passwords import hash_secret, verify_secret
from bankgate.credentials.users import USERNAME, check_password_strength
from bankgate.credentials.versions import VersionConflict, bump, check_version
from bankgate.store import Store, schema
from bankgate.store.paging import Keyset, Page, fetch_page, search_term, status_condition
from bankgate.throttle import AuthThrottle, keys_for
from bankgate.vault import Vault

__all__ = [
    "ADMIN_KEY_PREFIX",
    "ROLES",
    "AdminAuthError",
    "AdminDirectory",
    "AdminNotFoundError",
    "AdminRecord",
    "AdminStateError",
    "AdminThrottled",
    "IssuedAdminSecret",
    "Role",
    "TotpEnrolment",
    "totp_code",
]

Role = Literal["owner", "integration-manager", "auditor"]
ROLES: tuple[Role, ...] = ("owner", "integration-manager", "auditor")
#: active <-> disabled; deleted is for good (a tombstone keeps the name and key out of reuse and the audit readable).
AdminStatus = Literal["active", "disabled", "deleted"]
STATUSES: tuple[AdminStatus, ...] = ("active", "disabled", "deleted")
_KEYSET = Keyset("admins", (schema.admins.c.created_at, schema.admins.c.id), ((float, int), (str,)))
#: Every administrator's API key starts with this; a merchant's never does (`bk_`).
ADMIN_KEY_PREFIX = "bka_"
#: One answer for an unknown administrator, a wrong secret or password, a wrong or reused code, a disabled account.
AUTHENTICATION_FAILED = "administrator authentication failed: check the credentials"

TOTP_PERIOD = 30
TOTP_DIGITS = 6
#: Codes of the previous and the next time step are accepted too (RFC 6238 §5.2: clock drift, typing time).
TOTP_WINDOW = 1


class AdminNotFoundError(LookupError):
    pass


class AdminStateError(ValueError):
    """The change does not apply to the administrator as it is (e.g. enabling a deleted one); says what to do."""


class AdminAuthError(Exception):
    """Authentication failed; `reason` is for the audit trail, the message is the same whatever the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(AUTHENTICATION_FAILED)
        self.reason = reason


class AdminThrottled(Exception):
    """Too many failed authentications from this address or for this account: retry after `retry_after` s."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, round(retry_after))
        super().__init__(f"too many failed authentications; retry in {self.retry_after} s")


def totp_code(secret: bytes, step: int) -> str:
    """The RFC 6238 code of time step `step` (HOTP of RFC 4226 §5.3 over HMAC-SHA-1, 6 digits).

    Twenty lines over the standard library's HMAC instead of a dependency: authenticator apps implement exactly this
    (SHA-1, 6 digits, 30 s), and nothing else of a TOTP library is used here."""
    digest = hmac.digest(secret, struct.pack(">Q", step), "sha1")
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**TOTP_DIGITS).zfill(TOTP_DIGITS)


@dataclass(frozen=True, slots=True)
class AdminRecord:
    id: str
    name: str
    role: Role
    api_key: str
    environment: Environment
    status: AdminStatus
    created_at: float
    updated_at: float
    version: int
    secret_hash: str | None = field(default=None, repr=False)
    password_hash: str | None = field(default=None, repr=False)
    totp_secret: bytes | None = field(default=None, repr=False)  # encrypted
    totp_last_step: int | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def as_json(self) -> dict[str, object]:
        return {
            "admin_id": self.id,
            "name": self.name,
            "role": self.role,
            "api_key": self.api_key,
            "environment": self.environment,
            "status": self.status,
            "console_password": self.password_hash is not None,
            "totp_enrolled": self.totp_secret is not None,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class IssuedAdminSecret:
    """An administrator with its secret in clear: exists only to be shown once."""

    admin: AdminRecord
    secret_key: str = field(repr=False)

    def as_json(self) -> dict[str, object]:
        return {"admin_id": self.admin.id, "name": self.admin.name, "role": self.admin.role,
                "api_key": self.admin.api_key, "secret_key": self.secret_key, "environment": self.admin.environment}


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """A new TOTP secret in clear (base32) and its `otpauth://` URI: shown once, for an authenticator app."""

    admin: AdminRecord
    secret: str = field(repr=False)
    uri: str = field(repr=False)

    def as_json(self) -> dict[str, object]:
        return {"name": self.admin.name, "totp_secret": self.secret, "otpauth_uri": self.uri}


def _check_role(role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise ValueError(f"role {role!r} is not one of: {', '.join(ROLES)}")


def _check_name(name: str) -> str:
    if not USERNAME.fullmatch(name):
        raise ValueError(f"administrator name {name!r} must be 3 to 64 characters: lower-case letters, digits, "
                         "'.', '_', '-'")
    return name


_DUMMY_TOTP = secrets.token_bytes(20)


class AdminDirectory:
    """Administrators in the store. The admin API is no hot path: records are read from the database on every
    authentication, so a disable or a role change applies to the next request, on every server process."""

    def __init__(
        self,
        store: Store,
        vault: Vault,
        environment: Environment,
        *,
        hasher: PasswordHasher,
        throttle: AuthThrottle,
        clock: Clock = SYSTEM,
    ) -> None:
        self._store = store
        self._vault = vault
        self._environment: Environment = environment
        self._hasher = hasher
        self._throttle = throttle
        self._now = clock.now

    def __repr__(self) -> str:
        return f"AdminDirectory(environment={self._environment!r})"

    @property
    def _prefix(self) -> str:
        return "live" if self._environment == "production" else "test"

    # -- onboarding and lifecycle ------------------------------------------------------------------------------

    async def create(self, name: str, role: str) -> IssuedAdminSecret:
        name, checked_role = _check_name(name), _check_role(role)
        api_key, secret = new_admin_key(self._prefix), new_admin_secret(self._prefix)
        now = self._now()
        record = AdminRecord(id=str(uuid.uuid4()), name=name, role=checked_role, api_key=api_key,
                             environment=self._environment, status="active", created_at=now, updated_at=now,
                             version=1, secret_hash=self._vault.hash_secret(secret))
        try:
            async with self._store.begin() as conn:
                await conn.execute(schema.admins.insert().values(
                    id=record.id, name=name, role=checked_role, api_key=api_key, secret_hash=record.secret_hash,
                    environment=self._environment, status="active", created_at=now, updated_at=now, version=1))
        except IntegrityError:
            raise ValueError(f"an administrator named {name!r} exists already; choose another name") from None
        return IssuedAdminSecret(record, secret)

    async def list(self, *, deleted: bool = False) -> list[AdminRecord]:
        query = select(schema.admins).order_by(schema.admins.c.created_at)
        if not deleted:
            query = query.where(schema.admins.c.status != "deleted")
        async with self._store.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._record(row) for row in rows]

    async def page(
        self, *, limit: int, cursor: str | None = None, status: str | None = None, q: str | None = None,
        deleted: bool = False,
    ) -> Page[AdminRecord]:
        """One page of administrators, oldest first (keyset on `(created_at, id)`): of `status` (else every one but
        the deleted, unless `deleted`), whose name contains `q` or whose API key starts with it (ignoring case).
        Raises `PagingError` for a bad limit or cursor."""
        table = schema.admins
        query = select(table)
        if (condition := status_condition(table.c.status, status, STATUSES, deleted=deleted)) is not None:
            query = query.where(condition)
        if q is not None:
            q = search_term(q, "a name or the start of an API key")
            query = query.where(func.lower(table.c.name).contains(q, autoescape=True)
                                | func.lower(table.c.api_key).startswith(q, autoescape=True))
        filters = {"status": status, "q": q, "deleted": deleted}
        async with self._store.connect() as conn:
            rows, following = await fetch_page(conn, query, _KEYSET, limit=limit, cursor=cursor, filters=filters)
        return Page(tuple(self._record(row) for row in rows), following)

    async def find(self, name: str) -> AdminRecord | None:
        if len(name) > 64:
            return None
        return await self._find(schema.admins.c.name == name)

    async def find_by_key(self, api_key: str) -> AdminRecord | None:
        if len(api_key) > 80:
            return None
        return await self._find(schema.admins.c.api_key == api_key)

    async def find_by_id(self, admin_id: str) -> AdminRecord | None:
        if len(admin_id) > 36:
            return None
        return await self._find(schema.admins.c.id == admin_id)

    async def get(self, name: str) -> AdminRecord:
        record = await self.find(name)
        if record is None:
            raise AdminNotFoundError(f"no administrator named {name}; see `bankgate admins list`")
        return record

    async def set_status(
        self, name: str, status: AdminStatus, *, expected_version: int | None = None
    ) -> tuple[AdminRecord, AdminRecord]:
        """(before, after). Disable and enable go between active and disabled; delete is for good and drops every
        credential (key secret, password, TOTP secret), keeping the row as a tombstone. With `expected_version`,
        only if the row is still at that version (else `VersionConflict`, nothing written)."""
        check_version(expected_version)
        before = await self.get(name)
        if before.status == "deleted":
            raise AdminStateError(f"administrator {name} is deleted; create a new one instead")
        values: dict[str, Any] = {"status": status}
        if status == "deleted":
            values.update(secret_hash=None, password_hash=None, totp_secret=None, totp_last_step=None)
        await self._write(before, values, expected_version)
        return before, await self.get(name)

    async def set_role(
        self, name: str, role: str, *, expected_version: int | None = None
    ) -> tuple[AdminRecord, AdminRecord]:
        check_version(expected_version)
        before = await self._changeable(name)
        await self._write(before, {"role": _check_role(role)}, expected_version)
        return before, await self.get(name)

    async def rotate_secret(self, name: str) -> IssuedAdminSecret:
        """A new secret; the previous one stops working at once (an administrator's key is not deployed in many
        places that need an overlap)."""
        before = await self._changeable(name)
        secret = new_admin_secret(self._prefix)
        await self._write(before, {"secret_hash": self._vault.hash_secret(secret)})
        return IssuedAdminSecret(await self.get(name), secret)

    async def set_password(self, name: str, password: str) -> TotpEnrolment:
        """Set the console password and enrol a new TOTP secret (the previous one, if any, stops working)."""
        before = await self._changeable(name)
        check_password_strength(password, username=name)
        password_hash = await hash_secret(self._hasher, password)
        raw = secrets.token_bytes(20)  # 160 bits, as RFC 4226 §4 recommends
        encrypted = self._vault.encrypt(raw, context=self._totp_context(before.id))
        await self._write(before, {"password_hash": password_hash, "totp_secret": encrypted, "totp_last_step": None})
        secret = base64.b32encode(raw).decode("ascii").rstrip("=")
        label = quote(f"bankgate-{self._environment}:{name}")
        query = urlencode({"secret": secret, "issuer": f"bankgate-{self._environment}", "algorithm": "SHA1",
                           "digits": TOTP_DIGITS, "period": TOTP_PERIOD})
        return TotpEnrolment(await self.get(name), secret, f"otpauth://totp/{label}?{query}")

    # -- authentication ----------------------------------------------------------------------------------------

    async def authenticate_secret(self, api_key: str, secret: str, source_ip: str | None = None) -> AdminRecord:
        """The active administrator whose key pair this is; `AdminAuthError` (one message whatever the reason,
        after the same HMAC) or `AdminThrottled`. Throttled per key and per address like client key pairs."""
        keys = keys_for(api_key[:80], source_ip)
        self._check_throttle(keys)
        record = await self.find_by_key(api_key)
        hashes = [record.secret_hash] if record is not None and record.secret_hash is not None else []
        matched = self._vault.matches(secret, hashes)  # hashed even when there is nothing to match
        reason = self._refusal(record, matched)
        if reason is not None:
            if reason in ("unknown_admin", "wrong_secret"):
                await self._throttle.failure(keys)
            raise AdminAuthError(reason)
        assert record is not None
        await self._throttle.success(keys)
        return record

    async def authenticate_password(
        self, name: str, password: str, totp: str, source_ip: str | None = None
    ) -> AdminRecord:
        """The console's sign-in: name, password and a TOTP code not used before. One argon2 verification and the
        same TOTP work whatever the case, one answer for every refusal; throttled like user logins."""
        keys = keys_for(f"admin:{name[:64]}", source_ip)
        self._check_throttle(keys)
        record = await self.find(name)
        usable = record if record is not None and record.password_hash is not None else None
        password_ok = await self._verify(usable.password_hash if usable is not None else None, password)
        step = self._match_totp(usable, totp)
        reason = self._refusal(record, password_ok and step is not None, wrong="wrong_password")
        if reason is None and record is not None and step is not None and not await self._use_step(record, step):
            reason = "totp_replayed"
        if reason is not None:
            await self._throttle.failure(keys)
            raise AdminAuthError(reason)
        assert record is not None
        await self._throttle.success(keys)
        return record

    def _check_throttle(self, keys: Sequence[str]) -> None:
        retry_after = self._throttle.blocked(keys)
        if retry_after is not None:
            raise AdminThrottled(retry_after)

    def _refusal(self, record: AdminRecord | None, matched: bool, *, wrong: str = "wrong_secret") -> str | None:
        if record is None:
            return "unknown_admin"
        if not matched:
            return wrong
        if record.status != "active":
            return f"admin_{record.status}"
        if record.environment != self._environment:
            return "wrong_environment"
        return None

    def _match_totp(self, record: AdminRecord | None, code: str) -> int | None:
        """The time step whose code this is (within the window), or None; the same HMACs whether or not the
        administrator exists or has enrolled."""
        secret = _DUMMY_TOTP
        if record is not None and record.totp_secret is not None:
            secret = self._vault.decrypt(record.totp_secret, context=self._totp_context(record.id))
        now_step = int(self._now()) // TOTP_PERIOD
        found: int | None = None
        candidate = code.strip().encode()
        for step in range(now_step - TOTP_WINDOW, now_step + TOTP_WINDOW + 1):
            if hmac.compare_digest(totp_code(secret, step).encode(), candidate) and found is None:
                found = step
        if record is None or record.totp_secret is None:
            return None
        return found  # a replayed code matches too: `_use_step` refuses it

    async def _use_step(self, record: AdminRecord, step: int) -> bool:
        """Record `step` as used unless it (or a later one) was used already: a code works once (RFC 6238 §5.2)."""
        table = schema.admins
        async with self._store.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(table.c.id == record.id)
                .where(table.c.totp_last_step.is_(None) | (table.c.totp_last_step < step))
                .values(totp_last_step=step)
            )
        return bool(result.rowcount == 1)

    async def _verify(self, stored: str | None, candidate: str) -> bool:
        """Exactly one argon2 verification, against a dummy hash of the same parameters when there is none."""
        return await verify_secret(self._hasher, stored, candidate)

    # -- storage -----------------------------------------------------------------------------------------------

    @staticmethod
    def _totp_context(admin_id: str) -> bytes:
        return b"bankgate/admin-totp/" + admin_id.encode()

    async def _changeable(self, name: str) -> AdminRecord:
        record = await self.get(name)
        if record.status == "deleted":
            raise AdminStateError(f"administrator {name} is deleted; create a new one instead")
        return record

    async def _write(self, before: AdminRecord, values: dict[str, Any], expected: int | None = None) -> None:
        """Change the row, incrementing its version; only at version `expected` when one is given (checked by the
        UPDATE itself)."""
        table = schema.admins
        async with self._store.begin() as conn:
            statement = update(table).where(table.c.id == before.id).values(**values, updated_at=self._now())
            result = await conn.execute(bump(statement, table, expected))
            if result.rowcount != 1 and expected is not None:
                current = await conn.scalar(select(table.c.version).where(table.c.id == before.id))
                raise VersionConflict(expected, current)

    async def _find(self, condition: Any) -> AdminRecord | None:
        async with self._store.connect() as conn:
            row = (await conn.execute(select(schema.admins).where(condition))).first()
        return self._record(row) if row is not None else None

    @staticmethod
    def _record(row: Row[Any] | RowMapping) -> AdminRecord:
        r = row if isinstance(row, RowMapping) else row._mapping
        return AdminRecord(
            id=r["id"], name=r["name"], role=r["role"], api_key=r["api_key"], environment=r["environment"],
            status=r["status"], created_at=r["created_at"], updated_at=r["updated_at"], version=r["version"],
            secret_hash=r["secret_hash"], password_hash=r["password_hash"], totp_secret=r["totp_secret"],
            totp_last_step=r["totp_last_step"],
        )
