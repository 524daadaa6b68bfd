"""Client (API key pair) onboarding and lifecycle: create, update, disable, enable, rotate, revoke, delete."""

from __future__ import annotations

from collections.abc import Sequence

from bankgate.admin._base import Actor, UseCases, paging_errors, versioned
from bankgate.credentials.clients import ClientRecord, IssuedSecret
from bankgate.store.paging import DEFAULT_LIMIT, Page

__all__ = ["ClientAdmin"]


class ClientAdmin(UseCases):
    async def create(self, actor: Actor, name: str, scopes: Sequence[str], auth_mode: str = "oauth2") -> IssuedSecret:
        """A new key pair; the secret exists in clear only in the returned value."""
        issued = await self._services.clients.create(name, list(scopes), auth_mode)
        await self._audit(actor, "client.created", {"api_key": issued.client.api_key, "client_id": issued.client.id,
                                                    "scopes": list(issued.client.scopes), "auth_mode": auth_mode})
        return issued

    async def list(self, *, deleted: bool = False) -> list[ClientRecord]:
        return await self._services.clients.list(deleted=deleted)

    async def page(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        status: str | None = None,
        q: str | None = None,
        auth_mode: str | None = None,
        scope: str | None = None,
        deleted: bool = False,
    ) -> Page[ClientRecord]:
        """One page of clients, oldest first; pass `next_cursor` back (with the same filters) for the next. `q`
        finds a name containing it or an API key starting with it, ignoring case; without `status`, deleted
        clients are left out unless `deleted`."""
        with paging_errors():
            return await self._services.clients.page(limit=limit, cursor=cursor, status=status, q=q,
                                                     auth_mode=auth_mode, scope=scope, deleted=deleted)

    async def get(self, api_key: str) -> ClientRecord:
        return await self._services.clients.get(api_key)

    async def update(
        self,
        actor: Actor,
        api_key: str,
        *,
        name: str | None = None,
        scopes: Sequence[str] | None = None,
        auth_mode: str | None = None,
        expected_version: int | None = None,
    ) -> ClientRecord:
        """Rename, replace the applications and/or switch the auth mode; with `expected_version` (the `version`
        the caller read), only if nobody changed the client since: else `ConflictError` and nothing is written."""
        with versioned(f"client {api_key}"):
            before, after = await self._services.clients.update(api_key, name=name, scopes=scopes,
                                                                auth_mode=auth_mode,
                                                                expected_version=expected_version)
        detail: dict[str, object] = {"api_key": api_key, "client_id": after.id}
        if name is not None:
            detail.update(name=after.name, previous_name=before.name)
        if scopes is not None:
            detail.update(scopes=list(after.scopes), previous_scopes=list(before.scopes))
        if auth_mode is not None:
            detail.update(auth_mode=after.auth_mode, previous_auth_mode=before.auth_mode)
        await self._audit(actor, "client.updated", detail)
        return after

    async def disable(self, actor: Actor, api_key: str, *, expected_version: int | None = None) -> ClientRecord:
        with versioned(f"client {api_key}"):
            record = await self._services.clients.disable(api_key, expected_version=expected_version)
        await self._audit(actor, "client.disabled", {"api_key": api_key, "client_id": record.id})
        return record

    async def enable(self, actor: Actor, api_key: str, *, expected_version: int | None = None) -> ClientRecord:
        with versioned(f"client {api_key}"):
            record = await self._services.clients.enable(api_key, expected_version=expected_version)
        await self._audit(actor, "client.enabled", {"api_key": api_key, "client_id": record.id})
        return record

    async def revoke(self, actor: Actor, api_key: str, *, expected_version: int | None = None) -> ClientRecord:
        with versioned(f"client {api_key}"):
            record = await self._services.clients.revoke(api_key, expected_version=expected_version)
        await self._audit(actor, "client.revoked", {"api_key": api_key, "client_id": record.id})
        return record

    async def delete(self, actor: Actor, api_key: str, *, expected_version: int | None = None) -> ClientRecord:
        with versioned(f"client {api_key}"):
            record = await self._services.clients.delete(api_key, expected_version=expected_version)
        await self._audit(actor, "client.deleted", {"api_key": api_key, "client_id": record.id})
        return record

    async def rotate_secret(self, actor: Actor, api_key: str, overlap: float) -> IssuedSecret:
        issued = await self._services.clients.rotate_secret(api_key, overlap)
        await self._audit(actor, "client.secret_rotated", {"api_key": api_key, "overlap_seconds": overlap})
        return issued

    async def demo(self, actor: Actor, name: str, scopes: Sequence[str]) -> IssuedSecret:
        """The sandbox demo client named `name`, with a fresh secret: secrets are stored hashed, so a restart cannot
        show the old one."""
        for record in await self.list():
            if record.name == name and record.active:
                return await self.rotate_secret(actor, record.api_key, 0)
        return await self.create(actor, name, scopes, "oauth2")
