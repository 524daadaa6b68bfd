"""The resource side: accepting bankgate's tokens (and Basic key pairs) in front of an API.

    from bankgate.guard import Guard, GuardMiddleware
    app.add_middleware(GuardMiddleware, guard=Guard.remote("https://auth.example.com"))
"""

from bankgate.guard.core import Guard, GuardError, insufficient_scope
from bankgate.guard.dependencies import GuardHTTPException, require_principal, require_scope
from bankgate.guard.keys import KeySource, LocalKeys, RemoteJWKS, VerificationKey
from bankgate.guard.middleware import GuardMiddleware, principal_of
from bankgate.guard.verifier import InvalidToken, Principal, TokenVerifier, VerifierUnavailable

__all__ = [
    "Guard",
    "GuardError",
    "GuardHTTPException",
    "GuardMiddleware",
    "InvalidToken",
    "KeySource",
    "LocalKeys",
    "Principal",
    "RemoteJWKS",
    "TokenVerifier",
    "VerificationKey",
    "VerifierUnavailable",
    "insufficient_scope",
    "principal_of",
    "require_principal",
    "require_scope",
]
