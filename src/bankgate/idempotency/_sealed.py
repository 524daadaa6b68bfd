"""A store wrapper that keeps replayed response bodies encrypted: for routes whose answers carry a secret shown once
(the admin API's new key pairs, passphrases, PKCS#12 passwords), which must not rest in clear in the database or
Redis while a retry may still ask for them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bankgate.idempotency._types import Claim, IdempotencyStore, StoredResponse

if TYPE_CHECKING:
    from bankgate.vault import Vault

__all__ = ["SealedStore"]


class SealedStore:
    """`store`, with every kept response body sealed by `vault` (AES-256-GCM, bound to its principal and key, so
    a body cannot be replayed under another record)."""

    def __init__(self, store: IdempotencyStore, vault: Vault) -> None:
        self._store = store
        self._vault = vault

    def __repr__(self) -> str:
        return f"SealedStore({self._store!r})"

    @staticmethod
    def _context(principal: str, key: str) -> bytes:
        return b"bankgate/idempotency-response/" + principal.encode() + b"\x00" + key.encode()

    def _opened(self, principal: str, key: str, found: Claim) -> Claim:
        if found.response is None:
            return found
        kept = found.response
        body = self._vault.decrypt(kept.body, context=self._context(principal, key))
        return Claim(found.outcome, found.owner, StoredResponse(kept.status, kept.headers, body), found.retry_after)

    async def claim(self, principal: str, key: str, fingerprint: str, *, lease: float, retention: float) -> Claim:
        found = await self._store.claim(principal, key, fingerprint, lease=lease, retention=retention)
        return self._opened(principal, key, found)

    async def lookup(self, principal: str, key: str, fingerprint: str, *, retention: float) -> Claim | None:
        found = await self._store.lookup(principal, key, fingerprint, retention=retention)
        return None if found is None else self._opened(principal, key, found)

    async def extend(self, principal: str, key: str, owner: str, *, lease: float) -> bool:
        return await self._store.extend(principal, key, owner, lease=lease)

    async def complete(
        self, principal: str, key: str, owner: str, response: StoredResponse, *, retention: float
    ) -> bool:
        sealed = self._vault.encrypt(response.body, context=self._context(principal, key))
        return await self._store.complete(principal, key, owner, StoredResponse(response.status, response.headers,
                                                                                 sealed), retention=retention)

    async def release(self, principal: str, key: str, owner: str) -> None:
        await self._store.release(principal, key, owner)

    async def purge(self) -> int:
        return await self._store.purge()

    async def close(self) -> None:
        """Nothing of its own: the wrapped store is closed by whoever opened it."""
