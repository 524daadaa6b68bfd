"""What every use case shares: the acting principal, the audit write, the domain errors an entrance renders."""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bankgate.audit import AuditEvent, Outcome
from bankgate.credentials.versions import VersionConflict
from bankgate.store.paging import PagingError

if TYPE_CHECKING:
    from bankgate.services import Services

__all__ = ["Actor", "AdminError", "ConflictError", "NotFoundError"]


class AdminError(ValueError):
    """A use case refused: the message says what was wrong and what to do."""


class NotFoundError(AdminError, LookupError):
    """The named client, user or certificate does not exist (in this environment)."""


class ConflictError(AdminError):
    """The record changed since the caller read it (its `version` moved on): nothing was written."""


@contextlib.contextmanager
def paging_errors() -> Iterator[None]:
    """A limit out of bounds or a cursor that is not ours, as the `AdminError` an entrance renders."""
    try:
        yield
    except PagingError as exc:
        raise AdminError(str(exc)) from None


@contextlib.contextmanager
def versioned(what: str) -> Iterator[None]:
    """A version mismatch of the domain, as the `ConflictError` an entrance renders (HTTP: 412 or 409)."""
    try:
        yield
    except VersionConflict as exc:
        raise ConflictError(
            f"{what} changed since you read it (version {exc.expected} asked, {exc.current} now); read it again "
            "and repeat the change if it still applies"
        ) from None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an administrative action, as the audit trail records it (`actor` and `source_ip`)."""

    name: str
    kind: str = "cli"  # cli | api | console | system
    source_ip: str | None = None

    @property
    def label(self) -> str:
        """`cli:alice`, `api:ops-bot`; the kind alone when the name is unknown."""
        return f"{self.kind}:{self.name}" if self.name else self.kind

    @classmethod
    def local_user(cls) -> Actor:
        """The operating-system account running the command line."""
        try:
            return cls(getpass.getuser(), "cli")
        except (KeyError, OSError):
            return cls("", "cli")


SYSTEM = Actor("", "system")


class UseCases:
    """A group of use cases over the wired services; each public method writes its own audit event."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def _audit(self, actor: Actor, event: str, detail: Mapping[str, Any], outcome: Outcome = "success") -> None:
        await self._services.audit.write(AuditEvent(event, actor.label, outcome, actor.source_ip, dict(detail)))
