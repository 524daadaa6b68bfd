"""Token signing keys (RFC 7517 JWKS): rotate, list, retire at once."""

from __future__ import annotations

from bankgate.admin._base import Actor, AdminError, UseCases
from bankgate.config import Algorithm
from bankgate.tokens.keys import KeyRetireError, SigningKey
from bankgate.tokens.signing_keys import KeyRetirement

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

    async def retire(self, actor: Actor, kid: str, *, rotate: bool = False) -> KeyRetirement:
        """Unpublish `kid` now and refuse every token it signed (a compromised key); `rotate` first makes a new
        active key when `kid` is the active one. The key service writes the audit events, refusals included."""
        try:
            return await self._services.keys.retire(kid, actor=actor.label, rotate=rotate,
                                                    source_ip=actor.source_ip)
        except KeyRetireError as exc:
            raise AdminError(str(exc)) from exc
