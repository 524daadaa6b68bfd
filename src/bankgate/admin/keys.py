"""Token signing keys (RFC 7517 JWKS): rotate, list."""

from __future__ import annotations

from bankgate.admin._base import Actor, UseCases
from bankgate.config import Algorithm
from bankgate.tokens.keys import SigningKey

__all__ = ["KeyAdmin"]


class KeyAdmin(UseCases):
    async def rotate(self, actor: Actor, alg: Algorithm | None = None) -> SigningKey:
        """A new active key (of the configured algorithm unless `alg`); earlier ones stay published until their
        tokens have expired."""
        services = self._services
        key = await services.keys.rotate(alg or services.settings.signing_alg,
                                         retire_publish_for=services.key_publish_seconds)
        await self._audit(actor, "key.rotated", {"kid": key.kid, "alg": key.alg})
        return key

    async def list(self) -> list[SigningKey]:
        """Keys still published in the JWKS, newest first."""
        return await self._services.keys.load()
