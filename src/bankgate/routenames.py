"""The bounded name of the route a request is for: `/oauth/token`, `/api/v1/users/{username}/password`,
`/admin/v1/clients/{api_key}`, `/console/...`, or `unmatched` for a path no route serves.

A trace span, a log line's route or a metric is named by the template, never by the raw path: a scanner trying
ten thousand paths cannot make ten thousand names, and a path's variable parts (user names, serials) stay out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from starlette.routing import BaseRoute, Mount, Route, compile_path

__all__ = ["UNMATCHED", "RouteNames", "route_names"]

#: The name of every path that no route serves (404s, scanners).
UNMATCHED = "unmatched"


class RouteNames:
    """Path -> route template. Static paths are one dict lookup; templated ones a regular expression each, in
    order; a mounted app (the console) is one name for everything under it (`/console/...`)."""

    def __init__(self, templates: Iterable[str], mounts: Iterable[str] = ()) -> None:
        self._static: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for template in templates:
            if "{" in template:
                self._patterns.append((compile_path(template)[0], template))
            else:
                self._static[template] = template
        self._mounts = tuple((prefix.rstrip("/"), prefix.rstrip("/") + "/...") for prefix in mounts)

    def __call__(self, path: str) -> str:
        name = self._static.get(path)
        if name is not None:
            return name
        for prefix, mounted in self._mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return mounted
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return UNMATCHED


def route_names(routes: Sequence[BaseRoute]) -> RouteNames:
    """The names of every route the server answers: the Starlette `routes` of `bankgate.app` (the direct token
    endpoints are registered there too), the admin API's operations and the sandbox API's routes."""
    from bankgate.adminapi.routes import OPERATIONS, PREFIX
    from bankgate.sandbox.api import ACCOUNTS_PATH, PAYMENT_PATH, PAYMENTS_PATH

    templates = [route.path for route in routes if isinstance(route, Route)]
    templates += [PREFIX + path for _, path, _, _ in OPERATIONS]
    templates += [ACCOUNTS_PATH, PAYMENTS_PATH, PAYMENT_PATH]
    return RouteNames(templates, [route.path for route in routes if isinstance(route, Mount)])
