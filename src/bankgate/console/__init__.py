"""The web console at `/console`: server-rendered pages (Jinja2), one stylesheet and one small script served by
bankgate itself, server-side sessions and CSRF tokens (`web.py`, `sessions.py`). Every form works without
JavaScript. Each area of pages calls the same use cases as the other entrances; `me.py` is the M2M user's own,
`manager.py` the administrators' (integration managers, owners, auditors).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route, Router

from bankgate.console import manager, me
from bankgate.console.web import PATH, Console, HtmlErrors, SecurityHeaders, not_found, static_file

__all__ = ["console_mount"]


async def _index(request: Request) -> Response:
    return RedirectResponse(me.AREA.home, 303)


def console_mount(state: Any) -> Mount:
    """The console's routes under `/console`, behind its security headers; `state` is the app's (it holds the
    runtime once started, and the console's own state)."""
    console = state.console = Console(state)
    router = Router([
        Route("/", _index, methods=["GET"]),
        Route("/static/{name}", static_file, methods=["GET"]),
        Route("/me", me.home, methods=["GET"]),
        Route("/me/sign-in", me.sign_in, methods=["GET", "POST"]),
        Route("/me/first-sign-in", me.first_sign_in, methods=["GET", "POST"]),
        Route("/me/certificates/{serial}.pem", me.certificate_download, methods=["GET"]),
        Route("/me/sign-out", me.sign_out, methods=["POST"]),
        *manager.routes(),
        Route("/{rest:path}", not_found),
    ])
    return Mount(PATH, app=SecurityHeaders(HtmlErrors(router, console)))
