"""API key and secret formats, as in the seed: `bk_live_…` / `sk_live_…` (`test` in the sandbox)."""

from __future__ import annotations

import secrets
import string

__all__ = ["new_api_key", "new_secret_key"]

_ALPHABET = string.ascii_letters + string.digits


def _random_text(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_api_key(prefix: str) -> str:
    """A public identifier: 24 base62 characters (~143 bits), unique in practice and hard to guess."""
    return f"bk_{prefix}_{_random_text(24)}"


def new_secret_key(prefix: str) -> str:
    """A secret: 43 base62 characters, ~256 bits from the OS CSPRNG."""
    return f"sk_{prefix}_{_random_text(43)}"
