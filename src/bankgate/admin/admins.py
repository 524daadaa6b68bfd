"""Administrators of the admin API and console: create, list, show, disable, enable, delete, rotate the secret,
set the console password (enrolling TOTP), change the role."""

from __future__ import annotations

from bankgate.admin._base import Actor, NotFoundError, UseCases, paging_errors, versioned
from bankgate.credentials.admins import AdminRecord, AdminStateError, IssuedAdminSecret, TotpEnrolment
from bankgate.store.paging import DEFAULT_LIMIT, Page

__all__ = ["AdminAdmin"]


class AdminAdmin(UseCases):
    async def create(self, actor: Actor, name: str, role: str) -> IssuedAdminSecret:
        """A new administrator with its key pair; the secret exists in clear only in the returned value."""
        issued = await self._services.admins.create(name, role)
        await self._audit(actor, "admin.created", self._detail(issued.admin))
        return issued

    async def list(self, *, deleted: bool = False) -> list[AdminRecord]:
        return await self._services.admins.list(deleted=deleted)

    async def page(
        self, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None, status: str | None = None,
        q: str | None = None, deleted: bool = False,
    ) -> Page[AdminRecord]:
        """One page of administrators, oldest first; pass `next_cursor` back (with the same filters) for the next.
        `q` finds a name containing it or an API key starting with it, ignoring case."""
        with paging_errors():
            return await self._services.admins.page(limit=limit, cursor=cursor, status=status, q=q, deleted=deleted)

    async def get(self, name: str) -> AdminRecord:
        record = await self._services.admins.find(name)
        if record is None:
            raise NotFoundError(f"no administrator named {name}; see `bankgate admins list`")
        return record

    async def _keep_an_owner(self, name: str, change: str) -> None:
        """Refuse a change that would leave no active owner: nobody could then manage administrators or keys."""
        record = await self.get(name)
        if record.role != "owner" or record.status != "active":
            return
        owners = [a for a in await self.list() if a.role == "owner" and a.status == "active"]
        if len(owners) <= 1:
            raise AdminStateError(f"{name} is the last active owner; make another administrator owner before you "
                                  f"{change} it")

    async def disable(self, actor: Actor, name: str, *, expected_version: int | None = None) -> AdminRecord:
        await self._keep_an_owner(name, "disable")
        with versioned(f"administrator {name}"):
            _, after = await self._services.admins.set_status(name, "disabled", expected_version=expected_version)
        await self._audit(actor, "admin.disabled", self._detail(after))
        return after

    async def enable(self, actor: Actor, name: str, *, expected_version: int | None = None) -> AdminRecord:
        await self.get(name)
        with versioned(f"administrator {name}"):
            _, after = await self._services.admins.set_status(name, "active", expected_version=expected_version)
        await self._audit(actor, "admin.enabled", self._detail(after))
        return after

    async def delete(self, actor: Actor, name: str, *, expected_version: int | None = None) -> AdminRecord:
        await self._keep_an_owner(name, "delete")
        with versioned(f"administrator {name}"):
            _, after = await self._services.admins.set_status(name, "deleted", expected_version=expected_version)
        await self._audit(actor, "admin.deleted", self._detail(after))
        return after

    async def set_role(
        self, actor: Actor, name: str, role: str, *, expected_version: int | None = None
    ) -> AdminRecord:
        """Change the role; with `expected_version` (the `version` the caller read), only if nobody changed the
        administrator since: else `ConflictError` and nothing is written."""
        if role != "owner":
            await self._keep_an_owner(name, "demote")
        with versioned(f"administrator {name}"):
            before, after = await self._services.admins.set_role(name, role, expected_version=expected_version)
        await self._audit(actor, "admin.updated", {**self._detail(after), "previous_role": before.role})
        return after

    async def rotate_secret(self, actor: Actor, name: str) -> IssuedAdminSecret:
        await self.get(name)
        issued = await self._services.admins.rotate_secret(name)
        await self._audit(actor, "admin.secret_rotated", self._detail(issued.admin))
        return issued

    async def set_password(self, actor: Actor, name: str, password: str) -> TotpEnrolment:
        """Set the console password and enrol a new TOTP secret (shown once in the returned value)."""
        await self.get(name)
        enrolment = await self._services.admins.set_password(name, password)
        await self._audit(actor, "admin.password_set", {**self._detail(enrolment.admin), "totp_enrolled": True})
        return enrolment

    @staticmethod
    def _detail(record: AdminRecord) -> dict[str, object]:
        return {"admin_id": record.id, "name": record.name, "role": record.role, "api_key": record.api_key}
