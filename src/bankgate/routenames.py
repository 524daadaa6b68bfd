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
    """Path -> route template: exact paths by a dict lookup (the hot paths), templated ones (`/admin/v1/clients/
    {api_key}`) by their patterns, paths under a mount of many pages as `<prefix>/...`; anything else is
    `unmatched`. The set of answers is the routes' list: bounded whatever paths clients send."""

    def __init__(self, templates: Iterable[str], mounts: Iterable[str] = ()) -> None:
        self._exact: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for template in templates:
            if "{" in template:
                self._patterns.append((compile_path(template)[0], template))
            else:
                self._exact[template] = template
        self._mounts = tuple((prefix.rstrip("/"), prefix.rstrip("/") + "/") for prefix in mounts)

    def __repr__(self) -> str:
        return f"RouteNames({len(self._exact) + len(self._patterns)} routes, mounts={len(self._mounts)})"

    def __call__(self, path: str) -> str:
        found = self._exact.get(path)
        if found is not None:
            return found
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        for prefix, under in self._mounts:
            if path == prefix or path.startswith(under):
                return under + "..."
        return UNMATCHED


def route_names(routes: Sequence[BaseRoute], *, sandbox: bool = True) -> RouteNames:
    """The names of every route the server answers: the Starlette `routes` of `bankgate.app` (the direct token
    endpoints are registered there too), the admin API's operations and, in the sandbox, the sandbox API's."""
    from bankgate.adminapi.routes import OPERATIONS, PREFIX
    from bankgate.sandbox.api import PATHS

    templates = [route.path for route in routes if isinstance(route, Route)]
    templates += dict.fromkeys(PREFIX + path for _, path, _, _ in OPERATIONS)
    if sandbox:
        templates += PATHS
    return RouteNames(templates, [route.path for route in routes if isinstance(route, Mount)])
