"""`/docs`: the OpenAPI document (`/openapi.json`) as an interactive page, Swagger UI served by bankgate itself.

Swagger UI's files come from the `swagger-ui-py` package (its `swagger_ui/static`), which ships them offline; only
its two files the page needs are served, never the package's templates (they carry inline script). The page is
ours: no inline script (`init.js` starts Swagger UI), no CDN, a Content-Security-Policy that allows only this
origin. Swagger UI sets `style` attributes, so styles, unlike scripts, may be inline.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

__all__ = ["CSP", "routes"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff"}
_IMMUTABLE = "public, max-age=31536000, immutable"

#: The files of Swagger UI the page loads, by the name it asks for: (file in the package, media type).
_VENDORED = {"swagger-ui.css": "text/css; charset=utf-8", "swagger-ui-bundle.js": "text/javascript; charset=utf-8"}

_INIT = b"""// Starts Swagger UI on this server's OpenAPI document.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: false,
    validatorUrl: null,
  });
});
"""


def _swagger_ui_dir() -> Path:
    """The package's folder of static files, found without importing the package (its `__init__` loads the
    handlers for a dozen frameworks)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError("swagger-ui-py is not installed: pip install 'bankgate[server]'")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """A file's bytes and its content tag (the URL names it, so a new Swagger UI is fetched at once)."""
    data = _INIT if name == "init.js" else (_swagger_ui_dir() / name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:16]


def _page() -> str:
    def url(name: str) -> str:
        return f"/docs/static/{name}?v={_asset(name)[1]}"

    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>bankgate API</title>
  <link rel="stylesheet" href="{url('swagger-ui.css')}">
</head>
<body>
  <div id="swagger-ui"><noscript>This page needs JavaScript; the document itself is at
    <a href="/openapi.json">/openapi.json</a>.</noscript></div>
  <script src="{url('swagger-ui-bundle.js')}"></script>
  <script src="{url('init.js')}"></script>
</body>
</html>
"""


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_page(), headers={**_HEADERS, "Cache-Control": "no-cache"})


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = "text/javascript; charset=utf-8" if name == "init.js" else _VENDORED.get(name)
    if media_type is None:
        return Response(f"there is no {name} here; the page is /docs\n", 404, media_type="text/plain",
                        headers=_HEADERS)
    data, _ = _asset(name)
    return Response(data, media_type=media_type, headers={**_HEADERS, "Cache-Control": _IMMUTABLE})


def routes() -> list[Route]:
    return [Route("/docs", docs_page, methods=["GET"]),
            Route("/docs/static/{name:path}", docs_asset, methods=["GET"])]
