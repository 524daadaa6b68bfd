"""The signing keys' use cases (`services.keys`): load, list, rotate and retire, over whichever key store is
configured. Every entrance (command line, console) calls these; retiring writes its own audit event.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bankgate.audit import AuditEvent, AuditLog
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Algorithm
from bankgate.tokens.keys import KeyRetireError, KeyStore, SigningKey

__all__ = ["KeyRetirement", "SigningKeys"]


@dataclass(frozen=True, slots=True)
class KeyRetirement:
    """A key retired at once, and the key that replaced it when the retirement rotated first."""

    retired: SigningKey
    rotated_to: SigningKey | None

    def as_json(self) -> dict[str, Any]:
        return {
            "retired": self.retired.as_json(),
            "rotated_to": self.rotated_to.as_json() if self.rotated_to is not None else None,
        }


class SigningKeys:
    def __init__(
        self, store: KeyStore, audit: AuditLog, *, alg: Algorithm, publish_for: float, clock: Clock = SYSTEM
    ) -> None:
        self.store = store
        self._now = clock.now
        self._audit = audit
        self._alg: Algorithm = alg
        self._publish_for = publish_for

    def __repr__(self) -> str:
        return f"SigningKeys({self.store!r})"

    async def load(self, known: Mapping[str, SigningKey] | None = None) -> builtins.list[SigningKey]:
        """Every key still published, newest first (the active one with its signer)."""
        return await self.store.load(known)

    async def list(self) -> builtins.list[SigningKey]:
        """Every key held, unpublished ones included, newest first."""
        return await self.store.list()

    async def rotate(self, alg: Algorithm, *, retire_publish_for: float) -> SigningKey:
        return await self.store.rotate(alg, retire_publish_for=retire_publish_for)

    async def ensure_active(self, alg: Algorithm, *, retire_publish_for: float) -> tuple[SigningKey, bool]:
        """The active key if it uses `alg`; else a new one (so a change of algorithm is a rotation)."""
        for key in await self.store.list():
            if key.retired_at is None and key.alg == alg:
                return key, False
        return await self.store.rotate(alg, retire_publish_for=retire_publish_for), True

    async def retire(
        self, kid: str, *, actor: str, rotate: bool = False, source_ip: str | None = None
    ) -> KeyRetirement:
        """Retire `kid` at once, for a key that may be compromised: it leaves the JWKS now, and every token it
        signed is refused now by this process and within one change-feed sync by the others; it never signs again.

        The active key cannot go alone (nothing would sign): `rotate=True` first makes a new active key of the
        configured algorithm, the previous one published as after any rotation unless it is the one retired.
        Audited as `key.retired` (and `key.rotated`), refusals included.
        """
        now = self._now()
        try:
            if rotate and not any(k.kid == kid and k.published_at(now) for k in await self.store.list()):
                await self.store.retire(kid)  # refuses, saying why, before anything was rotated
            rotated_to = await self.store.rotate(self._alg, retire_publish_for=self._publish_for) if rotate else None
            if rotated_to is not None:
                await self._audit.write(AuditEvent("key.rotated", actor, "success", source_ip,
                                                   {"kid": rotated_to.kid, "alg": rotated_to.alg, "by": "retire"}))
            retired = await self.store.retire(kid)
        except KeyRetireError as exc:
            await self._audit.write(AuditEvent("key.retired", actor, "failure", source_ip,
                                               {"kid": kid[:64], "reason": exc.reason}))
            raise
        await self._audit.write(AuditEvent(
            "key.retired", actor, "success", source_ip,
            {"kid": retired.kid, "alg": retired.alg, "rotated_to": rotated_to.kid if rotated_to else None},
        ))
        return KeyRetirement(retired, rotated_to)
