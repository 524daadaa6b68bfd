"""The resource side: accepting bankgate's tokens (and Basic key pairs) in front of an API.

    pip install 'bankgate[guard]'

    from bankgate.guard import Guard, GuardMiddleware
    app.add_middleware(GuardMiddleware, guard=Guard.remote("https://auth.example.com"))

A library of its own: importing it loads PyJWT, cryptography and httpx, never the server (no database, no settings).
The FastAPI dependencies (`require_principal`, `require_scope`, `GuardHTTPException`) need Starlette and are loaded
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

try:
    import cryptography  # noqa: F401  (PyJWT imports without it, then cannot check RS256, ES256 or EdDSA)
    import jwt  # noqa: F401
except ImportError as exc:  # a client-only install: `pip install bankgate`
    raise ImportError(
        f"bankgate.guard needs {exc.name or 'PyJWT and cryptography'}, which is not installed: "
        "pip install 'bankgate[guard]'",
        name=exc.name,
    ) from exc

from bankgate.guard.core import Guard, GuardError, insufficient_scope
from bankgate.guard.denylist import DenyList, RevocationUnavailable
from bankgate.guard.keys import KeySource, LocalKeys, RemoteJWKS, VerificationKey
from bankgate.guard.middleware import GuardMiddleware, principal_of
from bankgate.guard.revocations import RemoteRevocations
from bankgate.guard.verifier import InvalidToken, Principal, TokenVerifier, VerifierUnavailable

if TYPE_CHECKING:
    from bankgate.guard.dependencies import GuardHTTPException, require_principal, require_scope

__all__ = [
    "DenyList",
    "Guard",
    "GuardError",
    "GuardHTTPException",
    "GuardMiddleware",
    "InvalidToken",
    "KeySource",
    "LocalKeys",
    "Principal",
    "RemoteJWKS",
    "RemoteRevocations",
    "RevocationUnavailable",
    "TokenVerifier",
    "VerificationKey",
    "VerifierUnavailable",
    "insufficient_scope",
    "principal_of",
    "require_principal",
    "require_scope",
]

_LAZY = frozenset({"GuardHTTPException", "require_principal", "require_scope"})


def __getattr__(name: str) -> Any:
    """The FastAPI dependencies, imported on first use (PEP 562) so that the guard does not need Starlette."""
    if name not in _LAZY:
        raise AttributeError(f"module 'bankgate.guard' has no attribute {name!r}")
    value = getattr(importlib.import_module("bankgate.guard.dependencies"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
