"""Setting up a database: master key, schema, first signing key and CA, and the issuer servers share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bankgate.admin._base import Actor, UseCases

if TYPE_CHECKING:
    from bankgate.services import InitReport

__all__ = ["SetupAdmin"]


class SetupAdmin(UseCases):
    async def initialise(self, actor: Actor, issuer: str | None = None) -> tuple[InitReport, str | None]:
        """Create what is missing (safe to run twice) and store `issuer` for servers started without one; the
        report and the issuer now stored."""
        services = self._services
        report = await services.init()
        previous = await services.stored_issuer()
        if issuer and issuer.rstrip("/") != previous:
            await services.set_issuer(issuer)
            await self._audit(actor, "issuer.set", {"issuer": issuer.rstrip("/"), "previous": previous})
        return report, await services.stored_issuer()
