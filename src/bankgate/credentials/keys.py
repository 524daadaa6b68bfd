"""API key and secret formats, as in the seed: `bk_live_…` / `sk_live_…` (`test` in the sandbox); administrators'
keys have their own family, `bka_live_…` / `ska_live_…`, so neither can be mistaken for the other."""

from __future__ import annotations

import secrets
import string

__all__ = ["new_admin_key", "new_admin_secret", "new_api_key", "new_secret_key"]

_ALPHABET = string.ascii_letters + string.digits


def _random_text(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_api_key(prefix: str) -> str:
    """A public identifier: 24 base62 characters (~143 bits), unique in practice and hard to guess."""
    return f"bk_{prefix}_{_random_text(24)}"


def new_secret_key(prefix: str) -> str:
    """A secret: 43 base62 characters, ~256 bits from the OS CSPRNG."""
    return f"sk_{prefix}_{_random_text(43)}"


def new_admin_key(prefix: str) -> str:
    """An administrator's public identifier, as `new_api_key` but of the `bka_` family."""
    return f"bka_{prefix}_{_random_text(24)}"


def new_admin_secret(prefix: str) -> str:
    """An administrator's secret, as `new_secret_key` but of the `ska_` family."""
    return f"ska_{prefix}_{_random_text(43)}"
