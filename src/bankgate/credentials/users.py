"""M2M users of the certificate style: created by an integration manager with an initial passphrase that must be
reset before anything else works; the new password is checked for strength and stored with argon2id.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from argon2 import PasswordHasher
from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bankgate.changes import ChangeFeed
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Environment
from bankgate.credentials._cutoff import cutoff, wait_past_cutoff
from bankgate.credentials.passwords import hash_secret, verify_secret
from bankgate.credentials.scopes import check_application_ids
from bankgate.credentials.versions import VersionConflict, bump, check_version
from bankgate.store import Store, schema
from bankgate.store.paging import Keyset, Page, fetch_page, search_term, status_condition
from bankgate.tokens.revocation import RevocationList

__all__ = [
    "MAX_LENGTH",
    "MIN_CLASSES",
    "MIN_DISTINCT",
    "MIN_LENGTH",
    "PASSPHRASE_LENGTH",
    "PASSWORD_RULES",
    "NewUser",
    "PassphraseError",
    "UserDirectory",
    "UserNotFoundError",
    "UserRecord",
    "UserStateError",
    "UserStatus",
    "WeakPasswordError",
    "check_password_strength",
]

#: active -> disabled -> active again; revoked and deleted are for good (deleted: a tombstone without secrets).
UserStatus = Literal["active", "disabled", "revoked", "deleted"]
STATUSES: tuple[UserStatus, ...] = ("active", "disabled", "revoked", "deleted")
ENVIRONMENTS = ("sandbox", "production")
#: Users are listed oldest first, a page at a time (`UserDirectory.page`).
_KEYSET = Keyset("users", (schema.users.c.created_at, schema.users.c.id), ((float, int), (str,)))
#: The seed's tokens say `"userType": "4"` for API (M2M) users.
M2M_USER_TYPE = "4"
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{2,63}")
_PASSPHRASE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # noqa: S105 - an alphabet; no 0/o, 1/l/i
#: One message for an unknown user and a wrong passphrase, so usernames cannot be probed.
WRONG_PASSPHRASE = "the username or initial passphrase is wrong"  # noqa: S105 - a message, not a passphrase
_COMMON = {"password", "passw0rd", "qwerty", "letmein", "welcome", "changeme", "administrator", "bankgate"}


class UserNotFoundError(LookupError):
    pass


class UserStateError(ValueError):
    """The change does not apply to the user as it is (e.g. enabling a revoked user); says what to do."""


class PassphraseError(Exception):
    """The initial passphrase is wrong, used already, or expired; `reason` is for the audit trail."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        #: Seconds the caller is blocked for after this failure, when it counted as one (self-service entrances).
        self.retry_after: float | None = None


class WeakPasswordError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    username: str
    name: str
    user_type: str
    environment: Environment
    status: UserStatus
    created_at: float
    passphrase_expires_at: float | None
    password_changed_at: float | None
    password_hash: str | None = field(default=None, repr=False)
    passphrase_hash: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()  # application IDs the user's tokens carry (the `scope` claim)
    #: Incremented by every change; an update may name the version it read (`expected_version`).
    version: int = 1

    @property
    def must_reset(self) -> bool:
        """True until the initial passphrase has been exchanged for a password."""
        return self.password_hash is None

    def as_json(self) -> dict[str, object]:
        return {
            "user_id": self.id,
            "username": self.username,
            "name": self.name,
            "user_type": self.user_type,
            "environment": self.environment,
            "status": self.status,
            "scopes": list(self.scopes),
            "must_reset_passphrase": self.must_reset,
            "passphrase_expires_at": int(self.passphrase_expires_at) if self.passphrase_expires_at else None,
            "password_changed_at": int(self.password_changed_at) if self.password_changed_at else None,
            "created_at": int(self.created_at),
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class NewUser:
    """A user with the initial passphrase in clear: exists only to be shown once to the manager."""

    user: UserRecord
    initial_passphrase: str = field(repr=False)

    def as_json(self) -> dict[str, object]:
        return {
            "user_id": self.user.id,
            "username": self.user.username,
            "name": self.user.name,
            "initial_passphrase": self.initial_passphrase,
            "passphrase_expires_at": int(self.user.passphrase_expires_at or 0),
            "environment": self.user.environment,
            "scopes": list(self.user.scopes),
        }


def new_passphrase() -> str:
    """Five groups of five characters from a 31-letter alphabet: ~124 bits, easy to read out and type."""
    return "-".join("".join(secrets.choice(_PASSPHRASE_ALPHABET) for _ in range(5)) for _ in range(5))


#: What `check_password_strength` asks of a new password, as numbers (the console's live hints read them) and as
#: the sentences a user is told (`PASSWORD_RULES`, shown by the console beside the form and in the refusals).
MIN_LENGTH, MIN_CLASSES, PASSPHRASE_LENGTH, MAX_LENGTH, MIN_DISTINCT = 12, 3, 20, 256, 6
_STRONG_ENOUGH = (
    f"at least {MIN_LENGTH} characters mixing three of lower case, upper case, digits and symbols, or a "
    f"passphrase of at least {PASSPHRASE_LENGTH} characters"
)
PASSWORD_RULES: tuple[str, ...] = (
    _STRONG_ENOUGH,
    f"at least {MIN_DISTINCT} different characters, and at most {MAX_LENGTH} characters in all",
    "not the initial passphrase, and not containing the username",
    "no common password (such as password, qwerty or changeme)",
)


def check_password_strength(password: str, *, username: str, passphrase: str | None = None) -> None:
    """Raise WeakPasswordError saying what to change (`PASSWORD_RULES`). At least 12 characters with 3 of lower
    case, upper case, digits and symbols, or at least 20 characters of anything (a passphrase); never the username,
    a common password, or the initial passphrase."""
    if len(password) > MAX_LENGTH:
        raise WeakPasswordError(f"the new password is longer than {MAX_LENGTH} characters")
    if passphrase is not None and password == passphrase:
        raise WeakPasswordError("the new password must differ from the initial passphrase")
    lowered = password.lower()
    if username.lower() in lowered:
        raise WeakPasswordError("the new password must not contain the username")
    if any(word in lowered for word in _COMMON):
        raise WeakPasswordError("the new password contains a common password; choose something unguessable")
    if len(set(password)) < MIN_DISTINCT:
        raise WeakPasswordError("the new password repeats too few different characters")
    classes = sum(
        any(test(c) for c in password)
        for test in (str.islower, str.isupper, str.isdigit, lambda c: c in string.punctuation or c == " ")
    )
    if len(password) >= PASSPHRASE_LENGTH or (len(password) >= MIN_LENGTH and classes >= MIN_CLASSES):
        return
    raise WeakPasswordError(f"the new password is too weak: use {_STRONG_ENOUGH}")


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("a user needs a name of 1 to 200 characters (--name)")
    return name


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return (slug or "user")[:48]


class UserDirectory:
    """M2M users in the store. Password checks run argon2id in a worker thread, off the event loop."""

    def __init__(
        self,
        store: Store,
        environment: Environment,
        *,
        passphrase_ttl: float = 7 * 86400,
        hasher: PasswordHasher,
        max_verifications: int | None = None,
        changes: ChangeFeed | None = None,
        revocations: RevocationList | None = None,
        settle: float = 1.5,
        clock: Clock = SYSTEM,
    ) -> None:
        self._store = store
        self._now = clock.now
        self._environment: Environment = environment
        self._passphrase_ttl = passphrase_ttl
        self._hasher = hasher
        #: argon2 verifications allowed to run at once in this process (default: one per core, at least 2).
        self.max_verifications = max_verifications or max(2, os.cpu_count() or 2)
        self._verifications = asyncio.Semaphore(self.max_verifications)
        self._changes = changes or ChangeFeed(store)
        self._revocations = revocations or RevocationList(store)
        #: How far ahead a disable puts its cut-off: other processes' caches follow within a sync (`_cutoff`).
        self._settle = settle

    def __repr__(self) -> str:
        return f"UserDirectory(environment={self._environment!r})"

    # -- onboarding ---------------------------------------------------------------------------------------

    async def create(self, name: str, username: str | None = None, scopes: Sequence[str] = ()) -> NewUser:
        applications = check_application_ids(scopes) if scopes else ()
        name = _check_name(name)
        if username is not None and not USERNAME.fullmatch(username):
            raise ValueError(
                f"username {username!r} must be 3 to 64 characters: lower-case letters, digits, '.', '_', '-'"
            )
        passphrase = new_passphrase()
        passphrase_hash = await hash_secret(self._hasher, passphrase)
        now = self._now()
        candidates = [username] if username else [_slug(name)] + [f"{_slug(name)}-{n}" for n in range(2, 100)]
        for candidate in candidates:
            if len(candidate) < 3:
                candidate = f"{candidate}-user"
            record = UserRecord(
                id=str(uuid.uuid4()),
                username=candidate,
                name=name,
                user_type=M2M_USER_TYPE,
                environment=self._environment,
                status="active",
                created_at=now,
                passphrase_expires_at=now + self._passphrase_ttl,
                password_changed_at=None,
                passphrase_hash=passphrase_hash,
                scopes=applications,
            )
            try:
                async with self._store.begin() as conn:
                    await conn.execute(
                        schema.users.insert().values(
                            id=record.id,
                            username=record.username,
                            name=name,
                            user_type=record.user_type,
                            environment=self._environment,
                            status="active",
                            passphrase_hash=passphrase_hash,
                            passphrase_expires_at=record.passphrase_expires_at,
                            created_at=now,
                            scopes=json.dumps(list(applications)) if applications else None,
                        )
                    )
                    # A server may have cached "no such user" for this name.
                    await self._changes.record(conn, ("user", record.username))
            except IntegrityError:
                if username:
                    raise ValueError(f"username {username!r} is taken; choose another") from None
                continue
            self._changes.announce(("user", record.username))
            return NewUser(record, passphrase)
        raise ValueError("could not find a free username; pass --username")

    async def new_passphrase(self, username: str) -> NewUser:
        """Issue a fresh initial passphrase (e.g. the first expired); the user must reset again."""
        user = await self.get(username)
        passphrase = new_passphrase()
        passphrase_hash = await hash_secret(self._hasher, passphrase)
        expires = self._now() + self._passphrase_ttl
        async with self._store.begin() as conn:
            await self._apply(conn, user, {"passphrase_hash": passphrase_hash, "passphrase_expires_at": expires,
                                           "password_hash": None}, None)
            await self._changes.record(conn, ("user", user.username))
        self._changes.announce(("user", user.username))
        return NewUser(await self.get(username), passphrase)

    async def _apply(
        self, conn: AsyncConnection, user: UserRecord, values: dict[str, object], expected: int | None
    ) -> None:
        """Change the user's row, incrementing its version; only at version `expected` when one is given."""
        statement = update(schema.users).where(schema.users.c.id == user.id).values(**values)
        result = await conn.execute(bump(statement, schema.users, expected))
        if result.rowcount != 1 and expected is not None:
            current = await conn.scalar(select(schema.users.c.version).where(schema.users.c.id == user.id))
            raise VersionConflict(expected, current)

    async def revoke(self, username: str, *, expected_version: int | None = None) -> UserRecord:
        """Revoke the user: no token, certificate download or passphrase reset for it any more, and every token it
        holds is refused (`user:<id>` on the subject deny list, in the same transaction). Idempotent."""
        check_version(expected_version)
        user = await self.get(username)
        subject = f"user:{user.id}"
        async with self._store.begin() as conn:
            await self._apply(conn, user, {"status": "revoked"}, expected_version)
            await self._revocations.write_subject(conn, subject)
            await self._changes.record(conn, ("user", user.username))
        self._revocations.remember(subject)
        self._changes.announce(("user", user.username))
        return await self.get(username)

    async def _changeable(self, username: str, *allowed: UserStatus) -> UserRecord:
        user = await self.get(username)
        if user.status not in allowed:
            advice = ("create a new user instead" if user.status in ("revoked", "deleted")
                      else f"enable it first: bankgate users enable {username}")
            raise UserStateError(f"user {username} is {user.status}; {advice}")
        return user

    async def update(
        self,
        username: str,
        *,
        name: str | None = None,
        scopes: Sequence[str] | None = None,
        expected_version: int | None = None,
    ) -> tuple[UserRecord, UserRecord]:
        """Rename the user and/or replace its applications; (before, after). Taking an application away refuses
        every token issued until now (they carry it), as `disable` does; adding one leaves them alone. With
        `expected_version`, only if the user is still at that version (else `VersionConflict`, nothing written)."""
        check_version(expected_version)
        before = await self._changeable(username, "active", "disabled")
        values: dict[str, object] = {}
        if name is not None:
            values["name"] = _check_name(name)
        applications = (check_application_ids(scopes) if scopes else ()) if scopes is not None else before.scopes
        if scopes is not None:
            values["scopes"] = json.dumps(list(applications)) if applications else None
        if not values:
            raise ValueError("nothing to change: give --name and/or --scope")
        await self._write(before, values, cut_tokens=not set(before.scopes) <= set(applications),
                          expected=expected_version)
        return before, await self.get(username)

    async def disable(self, username: str, *, expected_version: int | None = None) -> UserRecord:
        """Suspend the user: no token, passphrase reset or certificate for it, and every token issued until now is
        refused for good (a subject cut-off, see `_cutoff`: enabling the user again does not bring them back)."""
        check_version(expected_version)
        user = await self._changeable(username, "active", "disabled")
        await self._write(user, {"status": "disabled"}, cut_tokens=True, expected=expected_version)
        return await self.get(username)

    async def enable(self, username: str, *, expected_version: int | None = None) -> UserRecord:
        """Let a disabled user get new tokens again (those issued before it was disabled stay refused). Returns once
        the disable's cut-off has passed, so the tokens it gets from then on stay valid."""
        check_version(expected_version)
        user = await self._changeable(username, "active", "disabled")
        await wait_past_cutoff(self._store, f"user:{user.id}", self._now)
        await self._write(user, {"status": "active"}, cut_tokens=False, expected=expected_version)
        return await self.get(username)

    async def delete(self, username: str, *, expected_version: int | None = None) -> UserRecord:
        """Delete the user: password, passphrase and IP allow-list entries go, the row stays as a tombstone (status
        `deleted`, so the audit trail still names a user and the username is not handed to someone else) and
        every token it holds is refused like a revocation. Its certificates are revoked by the caller
        (`CertificateService.revoke`), which owns them. Idempotent."""
        check_version(expected_version)
        user = await self.get(username)
        subject = f"user:{user.id}"
        allow = ("allow", f"user:{user.id}")
        async with self._store.begin() as conn:
            await self._apply(conn, user, {"status": "deleted", "password_hash": None, "passphrase_hash": None,
                                           "passphrase_expires_at": None}, expected_version)
            entries = schema.ip_allow_entries
            await conn.execute(
                delete(entries).where(entries.c.subject_kind == "user").where(entries.c.subject_id == user.id)
            )
            await self._revocations.write_subject(conn, subject)
            await self._changes.record(conn, ("user", user.username), allow)
        self._revocations.remember(subject)
        self._changes.announce(("user", user.username), allow)
        return await self.get(username)

    async def _write(
        self, user: UserRecord, values: dict[str, object], *, cut_tokens: bool, expected: int | None = None
    ) -> None:
        subject, cut = f"user:{user.id}", cutoff(self._now(), self._settle)
        async with self._store.begin() as conn:
            await self._apply(conn, user, values, expected)
            if cut_tokens:
                await self._revocations.write_subject(conn, subject, not_before=cut)
            await self._changes.record(conn, ("user", user.username))
        if cut_tokens:
            self._revocations.remember(subject, cut)
        self._changes.announce(("user", user.username))

    # -- lookup -------------------------------------------------------------------------------------------

    @staticmethod
    def _record(row: Row[Any] | Any) -> UserRecord:
        r = row._mapping if isinstance(row, Row) else row
        return UserRecord(
            id=r["id"],
            username=r["username"],
            name=r["name"],
            user_type=r["user_type"],
            environment=r["environment"],
            status=r["status"],
            created_at=r["created_at"],
            passphrase_expires_at=r["passphrase_expires_at"],
            password_changed_at=r["password_changed_at"],
            password_hash=r["password_hash"],
            passphrase_hash=r["passphrase_hash"],
            scopes=tuple(json.loads(r["scopes"])) if r["scopes"] else (),
            version=r["version"],
        )

    async def find(self, username: str) -> UserRecord | None:
        if len(username) > 64:
            return None
        async with self._store.connect() as conn:
            row = (await conn.execute(select(schema.users).where(schema.users.c.username == username))).first()
        return self._record(row) if row is not None else None

    async def get(self, username: str) -> UserRecord:
        user = await self.find(username)
        if user is None:
            raise UserNotFoundError(f"no user named {username}")
        return user

    async def certificate_expiry(self) -> dict[str, float]:
        """The earliest `notAfter` (UNIX time) of each user's valid certificates, by username: the date by which
        the user needs a new one. Users without a valid certificate, and deleted ones, are left out."""
        users, certificates = schema.users, schema.certificates
        query = (
            select(users.c.username, func.min(certificates.c.not_after))
            .join(certificates, certificates.c.user_id == users.c.id)
            .where(certificates.c.status == "valid", users.c.status != "deleted")
            .group_by(users.c.username)
        )
        async with self._store.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {username: float(not_after) for username, not_after in rows}

    async def get_by_id(self, user_id: str) -> UserRecord | None:
        async with self._store.connect() as conn:
            row = (await conn.execute(select(schema.users).where(schema.users.c.id == user_id))).first()
        return self._record(row) if row is not None else None

    async def list(self, *, deleted: bool = False) -> list[UserRecord]:
        """Users, oldest first; deleted ones (tombstones) only with `deleted`."""
        query = select(schema.users).order_by(schema.users.c.created_at)
        if not deleted:
            query = query.where(schema.users.c.status != "deleted")
        async with self._store.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._record(row) for row in rows]

    async def page(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        status: str | None = None,
        q: str | None = None,
        environment: str | None = None,
        deleted: bool = False,
    ) -> Page[UserRecord]:
        """One page of users, oldest first (keyset on `(created_at, id)`): of `status` (else every one but the
        deleted, unless `deleted`), whose username or name contains `q` (ignoring case), of `environment`. Raises
        `PagingError` for a bad limit or cursor."""
        table = schema.users
        query = select(table)
        if (condition := status_condition(table.c.status, status, STATUSES, deleted=deleted)) is not None:
            query = query.where(condition)
        if q is not None:
            q = search_term(q, "a username or name")
            query = query.where(
                func.lower(table.c.username).contains(q, autoescape=True)
                | func.lower(table.c.name).contains(q, autoescape=True)
            )
        if environment is not None:
            if environment not in ENVIRONMENTS:
                raise ValueError(f"environment {environment!r} is not one of: {', '.join(ENVIRONMENTS)}")
            query = query.where(table.c.environment == environment)
        filters = {"status": status, "q": q, "environment": environment, "deleted": deleted}
        async with self._store.connect() as conn:
            rows, following = await fetch_page(conn, query, _KEYSET, limit=limit, cursor=cursor, filters=filters)
        return Page(tuple(self._record(row) for row in rows), following)

    # -- passwords ---------------------------------------------------------------------------------------

    async def _verify(self, stored: str | None, candidate: str) -> bool:
        """Exactly one argon2 verification (`verify_secret`: a dummy hash when there is none, so the caller
        cannot be told apart by the time it takes). At most `max_verifications` run at once in this process, so a
        flood waits here instead of filling the thread pool (each verification holds `memory_cost` KiB)."""
        async with self._verifications:
            return await verify_secret(self._hasher, stored, candidate)

    async def verify_password(self, user: UserRecord | None, password: str) -> bool:
        """argon2id check of the user's password; False, after the same work, for no user or while the initial
        passphrase has not been reset."""
        return await self._verify(user.password_hash if user is not None else None, password)

    async def verify_passphrase(self, user: UserRecord | None, passphrase: str) -> bool:
        """argon2id check of the user's initial passphrase; False, after the same work, for no user or once it
        has been used. Expiry is not checked here: `check_passphrase` says so after the passphrase matched."""
        return await self._verify(user.passphrase_hash if user is not None else None, passphrase)

    async def check_passphrase(self, username: str, passphrase: str) -> UserRecord:
        """The user whose initial passphrase this is, after exactly one argon2 verification whatever the case.

        Unknown, disabled or another environment's user, used passphrase, wrong passphrase: PassphraseError
        with the same message (its `reason` is for the audit trail). Only once the passphrase matched may the
        answer say more: expired.
        """
        user = await self.find(username)
        if user is not None and (user.status != "active" or user.environment != self._environment):
            user = None
        matched = await self.verify_passphrase(user, passphrase)
        if user is None:
            raise PassphraseError("unknown_user", WRONG_PASSPHRASE)
        if user.passphrase_hash is None:
            raise PassphraseError(
                "passphrase_used", "the initial passphrase has been used already; ask your integration manager "
                "for a new one if you lost the password"
            )
        if not matched:
            raise PassphraseError("wrong_passphrase", WRONG_PASSPHRASE)
        if user.passphrase_expires_at is not None and self._now() >= user.passphrase_expires_at:
            raise PassphraseError(
                "passphrase_expired", "the initial passphrase has expired; ask your integration manager for a new one"
            )
        return user

    async def set_password(self, user: UserRecord, passphrase: str, new_password: str) -> UserRecord:
        """Store `new_password` for a user returned by `check_passphrase` with `passphrase`. The update applies
        only while the passphrase hash is still the one checked, so a passphrase is used once even when racing."""
        check_password_strength(new_password, username=user.username, passphrase=passphrase)
        password_hash = await hash_secret(self._hasher, new_password)
        async with self._store.begin() as conn:
            result = await conn.execute(
                update(schema.users)
                .where(schema.users.c.id == user.id)
                .where(schema.users.c.passphrase_hash == user.passphrase_hash)
                .values(
                    password_hash=password_hash,
                    password_changed_at=self._now(),
                    passphrase_hash=None,
                    passphrase_expires_at=None,
                    version=schema.users.c.version + 1,
                )
            )
            if result.rowcount != 1:
                raise PassphraseError("passphrase_used", "the initial passphrase has been used already")
            await self._changes.record(conn, ("user", user.username))
        self._changes.announce(("user", user.username))
        return await self.get(user.username)

    async def reset_password(self, username: str, passphrase: str, new_password: str) -> UserRecord:
        """Exchange the single-use initial passphrase for a new password."""
        user = await self.check_passphrase(username, passphrase)
        return await self.set_password(user, passphrase, new_password)
