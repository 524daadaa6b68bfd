"""IP allow lists of users and API keys (seed 000: the addresses to whitelist, per environment)."""

from __future__ import annotations

from dataclasses import dataclass

from bankgate.admin._base import Actor, AdminError, NotFoundError, UseCases
from bankgate.credentials.allowlist import AllowEntry, SubjectKind, describe_default, parse_cidr
from bankgate.credentials.clients import ClientNotFoundError

__all__ = ["AllowListAdmin", "AllowListing", "Subject"]


@dataclass(frozen=True, slots=True)
class Subject:
    """A user or client as the operator named it."""

    kind: SubjectKind
    id: str
    label: str  # the username or API key, as the operator wrote it

    def as_json(self) -> dict[str, str]:
        return {"subject": self.label, "kind": self.kind, "subject_id": self.id}


@dataclass(frozen=True, slots=True)
class AllowListing:
    """Allow-list entries of the configured environment with the label of their subject, and what applies to a
    subject without one. With `subject`, that subject's entries only."""

    environment: str
    default: str
    entries: tuple[tuple[str, AllowEntry], ...]
    subject: Subject | None = None
    without_entries: tuple[str, ...] = ()


class AllowListAdmin(UseCases):
    async def subject(self, who: str) -> Subject:
        """An API key (bk_…) names a client, anything else a user; both must belong to the configured
        environment."""
        environment = self._services.settings.environment
        if who.startswith("bk_"):
            try:
                client = await self._services.clients.get(who)
            except ClientNotFoundError:
                raise NotFoundError(f"no client with API key {who}; see `bankgate clients list`") from None
            found, owner_environment = Subject("client", client.id, client.api_key), client.environment
        else:
            user = await self._services.users.find(who)
            if user is None:
                raise NotFoundError(f"no user named {who}; see `bankgate users list` (API keys start with bk_)")
            found, owner_environment = Subject("user", user.id, user.username), user.environment
        if owner_environment != environment:
            raise AdminError(f"{who} belongs to the {owner_environment} environment, not {environment}; "
                             f"run this with BANKGATE_ENVIRONMENT={owner_environment}")
        return found

    async def allow(self, actor: Actor, who: str, cidr: str) -> tuple[Subject, AllowEntry]:
        network = str(parse_cidr(cidr))
        found = await self.subject(who)
        entry = await self._services.allowlist.allow(found.kind, found.id, network)
        await self._audit_entry(actor, "ip.allowed", found, entry.cidr)
        return found, entry

    async def remove(self, actor: Actor, who: str, cidr: str) -> tuple[Subject, list[AllowEntry]]:
        """Remove an entry; the subject's remaining entries."""
        network = str(parse_cidr(cidr))
        found = await self.subject(who)
        allowlist = self._services.allowlist
        if not await allowlist.remove(found.kind, found.id, network):
            raise NotFoundError(f"{network} is not on the allow list of {found.label} in {allowlist.environment}; "
                                f"see `bankgate ips list {found.label}`")
        await self._audit_entry(actor, "ip.removed", found, network)
        return found, await allowlist.list(found.kind, found.id)

    async def listing(self, who: str | None = None) -> AllowListing:
        services = self._services
        environment = services.settings.environment
        default = describe_default(environment)
        if who is not None:
            found = await self.subject(who)
            entries = await services.allowlist.list(found.kind, found.id)
            return AllowListing(environment, default, tuple((found.label, e) for e in entries), found)
        labels: dict[tuple[str, str], str] = {
            ("user", u.id): u.username for u in await services.users.list() if u.environment == environment
        }
        labels.update({("client", c.id): c.api_key for c in await services.clients.list()
                       if c.environment == environment})
        entries = await services.allowlist.list()
        listed = {(e.kind, e.subject_id) for e in entries}
        return AllowListing(
            environment, default,
            tuple((labels.get((e.kind, e.subject_id), e.subject_id), e) for e in entries),
            without_entries=tuple(label for key, label in labels.items() if key not in listed),
        )

    async def _audit_entry(self, actor: Actor, event: str, subject: Subject, cidr: str) -> None:
        await self._audit(actor, event, {**subject.as_json(), "cidr": cidr,
                                         "environment": self._services.settings.environment})
