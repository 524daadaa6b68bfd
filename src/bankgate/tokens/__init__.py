"""Tokens: signing keys and the JWKS, minting and checking access tokens, the revocation deny list."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bankgate.clock import SYSTEM

if TYPE_CHECKING:
    from bankgate.changes import ChangeFeed
    from bankgate.clock import Clock
    from bankgate.config import Settings
    from bankgate.store import Store
    from bankgate.tokens.keys import KeyStore
    from bankgate.vault import Vault

__all__ = ["KEY_STORES", "open_key_store"]

#: The values `BANKGATE_KEY_STORE` accepts.
KEY_STORES = ("database",)


def open_key_store(
    settings: Settings, store: Store, vault: Vault, *, changes: ChangeFeed | None = None, clock: Clock = SYSTEM
) -> KeyStore:
    """The key store `BANKGATE_KEY_STORE` names: `database` (the keys in the bankgate database of `store`, private
    halves encrypted under the vault's master key). A KMS, Vault or HSM store is one more branch here."""
    if settings.key_store == "database":
        from bankgate.tokens.keystore import DatabaseKeyStore

        return DatabaseKeyStore(store, vault, changes=changes, clock=clock)
    raise ValueError(f"unknown key store {settings.key_store!r}: use one of {', '.join(KEY_STORES)}")
