"""Which role may do what: the one place that decides it, for the admin API and the console alike.

A permission is `<resource>:read` or `<resource>:write`. The roles:

* `owner`: everything, administrators and signing keys included;
* `integration-manager`: reads and changes clients, users, certificates and IP allow lists (the onboarding work),
  reads signing keys and the audit trail (to follow up on the credentials it manages), nothing of administrators;
* `auditor`: reads everything, the audit trail included, and changes nothing.

An access token of the admin API may carry fewer permissions than its administrator's role (`admin:clients:read`
scopes; `admin:*` is the whole role): the principal's permissions are the intersection, decided again from the
administrator's current role on every request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from bankgate.admin._base import AdminError
from bankgate.credentials.admins import ROLES, AdminRecord, Role

__all__ = ["PERMISSIONS", "ROLE_PERMISSIONS", "SCOPE_PREFIX", "AdminPrincipal", "Forbidden", "InvalidAdminScope",
           "permissions_for", "require", "scopes_for"]

RESOURCES = ("clients", "users", "certs", "ips", "keys", "admins", "audit")
#: Every permission there is, in a stable order (the OpenAPI document and the token scopes list them).
PERMISSIONS: tuple[str, ...] = tuple(
    f"{resource}:{access}" for resource in RESOURCES for access in ("read", "write") if (resource, access) != (
        "audit", "write")
)
_MANAGED = ("clients", "users", "certs", "ips")
ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    "owner": frozenset(PERMISSIONS),
    "integration-manager": frozenset(
        [f"{r}:{a}" for r in _MANAGED for a in ("read", "write")] + ["keys:read", "audit:read"]
    ),
    "auditor": frozenset(p for p in PERMISSIONS if p.endswith(":read")),
}
assert set(ROLE_PERMISSIONS) == set(ROLES)
#: Token scopes of the admin API: `admin:<permission>`, or `admin:*` for every permission of the role.
SCOPE_PREFIX = "admin:"
ALL_SCOPE = "admin:*"


class Forbidden(AdminError):
    """The principal lacks the permission (HTTP 403); the message names it."""

    def __init__(self, message: str, permission: str) -> None:
        super().__init__(message)
        self.permission = permission


class InvalidAdminScope(AdminError):
    """A token request asked for a scope the administrator's role does not hold."""


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """An authenticated administrator and what it may do on this request."""

    admin: AdminRecord
    permissions: frozenset[str]
    via: Literal["basic", "bearer", "console"]

    @property
    def key(self) -> str:
        """`admin:<id>`: what per-principal state (Idempotency-Key records) is scoped by."""
        return f"admin:{self.admin.id}"

    @property
    def name(self) -> str:
        return self.admin.name

    def as_json(self) -> dict[str, object]:
        return {**self.admin.as_json(), "permissions": sorted(self.permissions), "authenticated_with": self.via}


def permissions_for(admin: AdminRecord, scopes: Iterable[str] | None = None) -> frozenset[str]:
    """What `admin` may do now: its role's permissions, narrowed to `scopes` (a token's) when given."""
    allowed = ROLE_PERMISSIONS.get(admin.role, frozenset())
    if scopes is None:
        return allowed
    granted: set[str] = set()
    for scope in scopes:
        if scope == ALL_SCOPE:
            return allowed
        if scope.startswith(SCOPE_PREFIX):
            granted.add(scope.removeprefix(SCOPE_PREFIX))
    return allowed & granted


def scopes_for(admin: AdminRecord, requested: str | None) -> tuple[str, ...]:
    """The scopes a token of `admin` carries for the request's `scope` parameter: none or `admin:*` is every
    permission of its role; otherwise each `admin:<permission>` asked for, which the role must hold."""
    allowed = ROLE_PERMISSIONS.get(admin.role, frozenset())
    wanted = (requested or ALL_SCOPE).split()
    if ALL_SCOPE in wanted:
        return tuple(SCOPE_PREFIX + p for p in PERMISSIONS if p in allowed)
    chosen: list[str] = []
    for scope in wanted:
        permission = scope.removeprefix(SCOPE_PREFIX)
        if not scope.startswith(SCOPE_PREFIX) or permission not in PERMISSIONS:
            raise InvalidAdminScope(f"scope {scope[:64]!r} is not an admin scope: ask for admin:* or "
                                    "admin:<permission> such as admin:clients:read")
        if permission not in allowed:
            raise InvalidAdminScope(f"the {admin.role} role does not hold {permission}; ask for admin:* or some of: "
                                    + " ".join(SCOPE_PREFIX + p for p in PERMISSIONS if p in allowed))
        if scope not in chosen:
            chosen.append(scope)
    return tuple(chosen)


def require(principal: AdminPrincipal, permission: str) -> None:
    """Raise `Forbidden` unless `principal` may `permission` (one of `PERMISSIONS`)."""
    assert permission in PERMISSIONS, permission
    if permission in principal.permissions:
        return
    if permission in ROLE_PERMISSIONS.get(principal.admin.role, frozenset()):
        message = (f"this access token does not carry {SCOPE_PREFIX}{permission}; get one with scope "
                   f"{SCOPE_PREFIX}{permission} (or {ALL_SCOPE})")
    else:
        message = f"the {principal.admin.role} role does not allow {permission}; ask an owner"
    raise Forbidden(message, permission)
