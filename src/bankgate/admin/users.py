"""M2M user onboarding and lifecycle: create, update, passphrases and passwords, disable, enable, revoke, delete."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from bankgate.admin._base import Actor, NotFoundError, UseCases, paging_errors, versioned
from bankgate.credentials.allowlist import AllowEntry
from bankgate.credentials.users import NewUser, PassphraseError, UserRecord, UserStateError, WeakPasswordError
from bankgate.store.paging import DEFAULT_LIMIT, Page

__all__ = ["UserAdmin"]


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

    async def reset_password(self, actor: Actor, username: str, passphrase: str, new_password: str) -> UserRecord:
        """Exchange the initial passphrase for a password; a refusal is audited too (its reason, never a secret)."""
        try:
            user = await self._services.users.reset_password(username, passphrase, new_password)
        except PassphraseError as exc:
            await self._audit(actor, "user.password_reset", {"username": username, "reason": exc.reason}, "failure")
            raise
        except WeakPasswordError:
            await self._audit(actor, "user.password_reset", {"username": username, "reason": "weak_password"},
                              "failure")
            raise
        await self._audit(actor, "user.password_reset", {"username": username, "user_id": user.id})
        return user

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
