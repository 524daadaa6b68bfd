"""M2M user onboarding and lifecycle: create, update, passphrases and passwords, disable, enable, revoke, delete."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from bankgate.admin._base import Actor, AdminError, NotFoundError, UseCases, paging_errors, versioned
from bankgate.credentials.allowlist import AllowEntry, describe_default
from bankgate.credentials.users import (
    USERNAME,
    NewUser,
    PassphraseError,
    UserRecord,
    UserStateError,
    WeakPasswordError,
)
from bankgate.store.paging import DEFAULT_LIMIT, Page
from bankgate.throttle import keys_for

__all__ = ["NOT_THE_PASSPHRASE", "AddressNotAllowedError", "TooManyAttemptsError", "UserAdmin", "claimed_username"]

#: Unknown user, wrong passphrase, passphrase used already: one answer (and one throttle failure), so none of them
#: can be told apart.
NOT_THE_PASSPHRASE = frozenset({"unknown_user", "wrong_passphrase", "passphrase_used"})


def claimed_username(username: str) -> str:
    """A name typed by anyone, as the audit trail may record it: only if it could be a username (never a password
    typed into the wrong field)."""
    return username if USERNAME.fullmatch(username) else "(not a username)"


class TooManyAttemptsError(AdminError):
    """Too many failed attempts from this address or for this name: refused before any argon2 work."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed attempts; retry in {max(1, round(retry_after))} s")
        self.retry_after = retry_after


class AddressNotAllowedError(AdminError):
    """The user's IP allow list does not hold the caller's address (told only after the passphrase matched)."""


class UserAdmin(UseCases):
    async def create(
        self, actor: Actor, name: str, username: str | None = None, scopes: Sequence[str] = ()
    ) -> NewUser:
        """A new user with an initial passphrase, which exists in clear only in the returned value."""
        new = await self._services.users.create(name, username, scopes)
        await self._audit(actor, "user.created", {"username": new.user.username, "user_id": new.user.id,
                                                  "environment": new.user.environment})
        return new

    async def list(self, *, deleted: bool = False) -> list[UserRecord]:
        return await self._services.users.list(deleted=deleted)

    async def page(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        status: str | None = None,
        q: str | None = None,
        environment: str | None = None,
        deleted: bool = False,
    ) -> Page[UserRecord]:
        """One page of users, oldest first; pass `next_cursor` back (with the same filters) for the next. `q`
        finds a username or name containing it, ignoring case; without `status`, deleted users are left out unless
        `deleted`."""
        with paging_errors():
            return await self._services.users.page(limit=limit, cursor=cursor, status=status, q=q,
                                                   environment=environment, deleted=deleted)

    async def get(self, username: str) -> UserRecord:
        user = await self._services.users.find(username)
        if user is None:
            raise NotFoundError(f"no user named {username}; see `bankgate users list`")
        return user

    async def allow_list(self, user: UserRecord) -> builtins.list[AllowEntry]:
        return await self._services.allowlist.list("user", user.id)

    async def reset_password(
        self, actor: Actor, username: str, passphrase: str, new_password: str, *, self_service: bool = False
    ) -> UserRecord:
        """Exchange the initial passphrase for a password; a refusal is audited too (its reason, never a secret).

        `self_service` is the user's own entrances (`POST /api/v1/users/{username}/password`, the console's first
        sign-in), where anyone on the network may ask: the brute-force throttle for (username, `actor.source_ip`)
        applies before any argon2 work, an unknown user, a wrong and a used passphrase are one `PassphraseError`
        counted as a failure (its `retry_after` set), and the user's IP allow list must hold `actor.source_ip`,
        which is told only once the passphrase matched."""
        if not self_service:
            try:
                user = await self._services.users.reset_password(username, passphrase, new_password)
            except (PassphraseError, WeakPasswordError) as exc:
                await self._refused(actor, username, exc)
                raise
            await self._audit(actor, "user.password_reset", {"username": username, "user_id": user.id})
            return user
        throttle, users = self._services.throttle, self._services.users
        keys = keys_for(username, actor.source_ip)
        retry_after = throttle.blocked(keys)
        try:
            if retry_after is not None:
                raise TooManyAttemptsError(retry_after)
            try:
                # Exactly one argon2 verification whoever asks; nothing about the account before it matched.
                user = await users.check_passphrase(username, passphrase)
                if not await self._services.allowlist.allows("user", user.id, actor.source_ip):
                    raise AddressNotAllowedError(
                        f"requests from {actor.source_ip} are not allowed for this user "
                        f"({describe_default(user.environment)}); ask your integration manager to allow-list the "
                        "address"
                    )
                user = await users.set_password(user, passphrase, new_password)  # may race: passphrase_used
            except PassphraseError as exc:
                if exc.reason in NOT_THE_PASSPHRASE:
                    exc.retry_after = await throttle.failure(keys)
                raise
        except (PassphraseError, WeakPasswordError, AdminError) as exc:
            await self._refused(actor, username, exc)
            raise
        await throttle.success(keys)
        await self._audit(actor, "user.password_reset", {"username": username, "user_id": user.id})
        return user

    async def _refused(self, actor: Actor, username: str, exc: Exception) -> None:
        reason = (exc.reason if isinstance(exc, PassphraseError) else "weak_password"
                  if isinstance(exc, WeakPasswordError) else "throttled" if isinstance(exc, TooManyAttemptsError)
                  else "ip_not_allowed")
        await self._audit(actor, "user.password_reset", {"username": claimed_username(username), "reason": reason},
                          "failure")

    async def new_passphrase(self, actor: Actor, username: str) -> NewUser:
        if (await self.get(username)).status == "deleted":
            raise UserStateError(f"user {username} is deleted; create a new user instead")
        new = await self._services.users.new_passphrase(username)
        await self._audit(actor, "user.passphrase_reissued", {"username": username, "user_id": new.user.id})
        return new

    async def update(
        self,
        actor: Actor,
        username: str,
        *,
        name: str | None = None,
        scopes: Sequence[str] | None = None,
        expected_version: int | None = None,
    ) -> UserRecord:
        """Rename and/or replace the applications; with `expected_version` (the `version` the caller read), only
        if nobody changed the user since: else `ConflictError` and nothing is written."""
        await self.get(username)
        with versioned(f"user {username}"):
            before, after = await self._services.users.update(username, name=name, scopes=scopes,
                                                              expected_version=expected_version)
        detail: dict[str, object] = {"username": username, "user_id": after.id}
        if name is not None:
            detail.update(name=after.name, previous_name=before.name)
        if scopes is not None:
            detail.update(scopes=list(after.scopes), previous_scopes=list(before.scopes))
        await self._audit(actor, "user.updated", detail)
        return after

    async def disable(self, actor: Actor, username: str, *, expected_version: int | None = None) -> UserRecord:
        await self.get(username)
        with versioned(f"user {username}"):
            user = await self._services.users.disable(username, expected_version=expected_version)
        await self._audit(actor, "user.disabled", {"username": username, "user_id": user.id})
        return user

    async def enable(self, actor: Actor, username: str, *, expected_version: int | None = None) -> UserRecord:
        await self.get(username)
        with versioned(f"user {username}"):
            user = await self._services.users.enable(username, expected_version=expected_version)
        await self._audit(actor, "user.enabled", {"username": username, "user_id": user.id})
        return user

    async def revoke(self, actor: Actor, username: str, *, expected_version: int | None = None) -> UserRecord:
        await self.get(username)
        with versioned(f"user {username}"):
            user = await self._services.users.revoke(username, expected_version=expected_version)
        await self._audit(actor, "user.revoked", {"username": username, "user_id": user.id})
        return user

    async def delete(self, actor: Actor, username: str, *, expected_version: int | None = None) -> UserRecord:
        """Delete the user (a tombstone stays) and revoke its valid certificates, each with its own event."""
        user = await self.get(username)
        with versioned(f"user {username}"):
            deleted = await self._services.users.delete(username, expected_version=expected_version)
        revoked = []
        for certificate in await self._services.pki.list_for_user(user.id):
            if certificate.status == "valid":
                await self._services.admin.certs.revoke(actor, certificate.serial)
                revoked.append(certificate.serial)
        await self._audit(actor, "user.deleted", {"username": username, "user_id": user.id,
                                                  "certificates_revoked": revoked})
        return deleted
