"""Reading the audit trail: the latest events, by event name, actor and time."""

from __future__ import annotations

from bankgate.admin._base import UseCases
from bankgate.audit import AuditEvent

__all__ = ["AuditQueries"]


class AuditQueries(UseCases):
    async def tail(
        self,
        limit: int = 20,
        *,
        event: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AuditEvent]:
        """The newest `limit` matching events, oldest first (see `AuditLog.tail`)."""
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit {limit} is not between 1 and 10000")
        if since is not None and until is not None and until <= since:
            raise ValueError("--until must be later than --since")
        return await self._services.audit.tail(limit, event=event, actor=actor, since=since, until=until)
