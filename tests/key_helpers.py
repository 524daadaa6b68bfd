"""The private signing keys as stored, decrypted the way only the database key store does: for tests that forge
tokens with a server's real key or check what is stored at rest."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from bankgate.services import Services
from bankgate.tokens.keystore import encryption_context


async def decrypted_signing_keys(services: Services) -> dict[str, Any]:
    """kid -> the `cryptography` private key of every stored signing key, published or not."""
    async with services.store.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT kid, private_key FROM signing_keys"))).all()
    return {
        kid: serialization.load_der_private_key(
            services.vault.decrypt(bytes(blob), context=encryption_context(kid)), password=None
        )
        for kid, blob in rows
    }
