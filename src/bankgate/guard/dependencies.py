"""FastAPI dependencies on top of `GuardMiddleware` (they read what it put on the request; they verify nothing).

    @app.post("/payments")
    async def pay(principal: Principal = Depends(require_scope("app_123"))): ...

They take a Starlette `Request`, so they also work as plain helpers in Starlette endpoints.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

try:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
except ImportError as exc:  # the guard itself needs no framework; these dependencies do
    raise ImportError(
        "bankgate.guard's FastAPI dependencies need Starlette, which is not installed: pip install fastapi "
        "(or pip install starlette)",
        name=exc.name,
    ) from exc

from bankgate.guard.core import GuardError, insufficient_scope
from bankgate.guard.middleware import principal_of
from bankgate.guard.verifier import Principal
from bankgate.web.errors import OAUTH, render_error

__all__ = ["GuardHTTPException", "require_principal", "require_scope"]


class GuardHTTPException(HTTPException):
    """An HTTPException carrying the RFC 6750 status, description and `WWW-Authenticate` challenge."""

    def __init__(self, error: GuardError, realm: str = "bankgate") -> None:
        _, rendered, _ = render_error(error.for_realm(realm), OAUTH)
        headers = {name.decode(): value.decode("latin-1") for name, value in rendered if name != b"content-type"}
        super().__init__(error.status, error.description, headers=headers)
        self.error = error.error


async def require_principal(request: Request) -> Principal:
    """The request's principal; 401 when the guard did not authenticate one (e.g. an `optional` route)."""
    principal = principal_of(request.scope)
    if principal is None:
        raise GuardHTTPException(GuardError(401, None, "send Authorization: Bearer <access token>"))
    return principal


def require_scope(*applications: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency requiring every one of `applications` among the principal's scopes (403 otherwise)."""

    async def dependency(request: Request) -> Principal:
        principal = await require_principal(request)
        for application in applications:
            if not principal.has_scope(application):
                raise GuardHTTPException(insufficient_scope(principal, application))
        return principal

    return dependency
