"""The scope rule, decided here only: scopes are business application IDs the client is allowed.

RFC 6749 §3.3: `scope` is a space-delimited list; omitted means the client's default, which here is every
application the client may use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["APPLICATION_ID", "ScopeError", "check_application_ids", "grant_scopes"]

APPLICATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")


class ScopeError(ValueError):
    """A requested scope is malformed or not one of the client's applications."""


def check_application_ids(ids: Iterable[str]) -> tuple[str, ...]:
    """Validate application IDs given at onboarding; keep their order, drop duplicates."""
    result: list[str] = []
    for app_id in ids:
        if not APPLICATION_ID.fullmatch(app_id):
            raise ScopeError(
                f"{app_id!r} is not a valid application ID: use letters, digits, '_', '-', '.', ':' "
                "(e.g. app_12345), at most 128 characters"
            )
        if app_id not in result:
            result.append(app_id)
    if not result:
        raise ScopeError("a client needs at least one application ID (--scope app_…)")
    return tuple(result)


def grant_scopes(requested: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The scopes to put in a token: the requested ones if all are allowed, every allowed one if none asked."""
    if requested is None or not requested.strip(" "):
        return allowed
    wanted: list[str] = []
    for item in requested.split(" "):
        if item and item not in wanted:
            wanted.append(item)
    refused = [item for item in wanted if item not in allowed]
    if refused:
        shown = ", ".join(refused[:5])
        raise ScopeError(
            f"scope {shown} {'is' if len(refused) == 1 else 'are'} not among this client's applications: "
            f"{', '.join(allowed)}"
        )
    return tuple(wanted)
