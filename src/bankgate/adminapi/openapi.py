"""The admin API in the OpenAPI document: one entry per operation of `routes.OPERATIONS`, so a route cannot exist
undocumented."""

from __future__ import annotations

import re
from typing import Any

from bankgate.adminapi.routes import OPERATIONS, PREFIX
from bankgate.store.paging import DEFAULT_LIMIT, MAX_LIMIT

__all__ = ["admin_paths"]

_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details; a 422 lists the fields that were wrong",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "permission": {"type": "string", "description": "403: the permission the caller lacks"},
        "errors": {
            "type": "array",
            "items": {"type": "object", "required": ["field", "message"],
                      "properties": {"field": {"type": "string"}, "message": {"type": "string"}}},
        },
    },
}
_ANY = {"type": "object"}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_TEXT = {"type": "string", "minLength": 1, "maxLength": 200}
_PAGE_PARAMS: list[dict[str, Any]] = [
    _query("limit", f"items a page (default {DEFAULT_LIMIT})",
           {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
    _query("cursor", "next_cursor of the previous page, sent with the same filters; a cursor that is not one of "
           "this listing and these filters is a 422: start again without cursor", {"type": "string"}),
]
_STATUS = "only those of this status (without it: all but the deleted)"
#: The filters of each listing, as its use case (`services.admin.*.page`) takes them.
_FILTERS: dict[str, list[dict[str, Any]]] = {
    "/clients": [
        _query("status", _STATUS, {"type": "string", "enum": ["active", "disabled", "revoked", "deleted"]}),
        _query("q", "part of the name, or the start of the API key (ignoring case)", _TEXT),
        _query("auth_mode", "only clients of this auth mode", {"type": "string", "enum": ["oauth2", "basic"]}),
        _query("scope", "only clients allowed this application ID", _TEXT),
    ],
    "/users": [
        _query("status", _STATUS, {"type": "string", "enum": ["active", "disabled", "revoked", "deleted"]}),
        _query("q", "part of the username or name (ignoring case)", _TEXT),
        _query("environment", "only users of this environment", {"type": "string"}),
    ],
    "/admins": [
        _query("status", _STATUS, {"type": "string", "enum": ["active", "disabled", "deleted"]}),
        _query("q", "part of the name, or the start of the API key (ignoring case)", _TEXT),
    ],
    "/users/{username}/certificates": [
        _query("status", "only certificates of this status", {"type": "string", "enum": ["valid", "revoked"]}),
        _query("expiring_within", "only valid certificates whose validity ends within this many seconds, soonest "
               "first (30 days: 2592000)", {"type": "number", "exclusiveMinimum": 0}),
    ],
}
_AUDIT_FILTERS: list[dict[str, Any]] = [
    _query("since", "UNIX seconds: events at or after", {"type": "number"}),
    _query("until", "UNIX seconds: events before (later than since)", {"type": "number"}),
    _query("event", "an event name (client.revoked) or kind (client.*)", {"type": "string", "maxLength": 64}),
    _query("actor", "who acted, as the trail names it (api:ops-bot, cli:alice)", {"type": "string"}),
    _query("subject", "an API key, client id, username, user id or certificate serial: its events under every "
           "name it has", _TEXT),
    _query("outcome", "success or failure", {"type": "string", "enum": ["success", "failure"]}),
]
_EXPORT_FORMAT = _query("format", "jsonl (default; one event a line) or csv (a header row, detail as JSON)",
                        {"type": "string", "enum": ["jsonl", "csv"]})
_IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "a retry with the same key and body is answered as the first request was",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": True,
             "description": "the ETag of the resource as last read (it names its version: a change made meanwhile "
             "is a 412)", "schema": {"type": "string"}}
_IF_MATCH_OPTIONAL = {**_IF_MATCH, "required": False}
#: Actions that change a versioned record: `If-Match` is optional, and checked when sent.
_ACTIONS = re.compile(r"^/(clients|users|admins)/\{\w+\}/(disable|enable|revoke)$")

_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/clients"): {"required": ["name", "scopes"], "properties": {
        "name": {"type": "string", "maxLength": 200}, "scopes": _STRINGS,
        "auth_mode": {"type": "string", "enum": ["oauth2", "basic"]}}},
    ("PATCH", "/clients/{api_key}"): {"properties": {"name": {"type": "string", "maxLength": 200},
                                                     "scopes": _STRINGS,
                                                     "auth_mode": {"type": "string", "enum": ["oauth2", "basic"]}}},
    ("POST", "/clients/{api_key}/rotate-secret"): {"properties": {
        "overlap_seconds": {"type": "number", "minimum": 0, "description": "how long the previous secret keeps "
                            "working"}}},
    ("POST", "/users"): {"required": ["name"], "properties": {
        "name": {"type": "string", "maxLength": 200}, "username": {"type": "string", "maxLength": 64},
        "scopes": _STRINGS}},
    ("PATCH", "/users/{username}"): {"properties": {"name": {"type": "string", "maxLength": 200},
                                                    "scopes": _STRINGS}},
    ("POST", "/users/{username}/certificates"): {"properties": {
        "csr_pem": {"type": "string", "description": "a PKCS#10 request; without it a key is generated and "
                    "delivered in a PKCS#12 bundle with its password, once"},
        "days": {"type": "integer", "minimum": 1, "maximum": 825},
        "key_type": {"type": "string", "enum": ["ec", "rsa"]}}},
    ("POST", "/admins"): {"required": ["name", "role"], "properties": {
        "name": {"type": "string", "maxLength": 64},
        "role": {"type": "string", "enum": ["owner", "integration-manager", "auditor"]}}},
    ("PATCH", "/admins/{name}"): {"required": ["role"], "properties": {
        "role": {"type": "string", "enum": ["owner", "integration-manager", "auditor"]}}},
    ("POST", "/ip-allowlist/{subject}"): {"required": ["cidr"], "properties": {
        "cidr": {"type": "string", "description": "an IPv4 or IPv6 address or CIDR"}}},
    ("POST", "/signing-keys/rotate"): {"properties": {"alg": {"type": "string",
                                                              "enum": ["RS256", "ES256", "EdDSA"]}}},
    ("POST", "/signing-keys/{kid}/retire"): {"properties": {"rotate": {"type": "boolean"}}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(status): {"description": "problem details",
                          "content": {"application/problem+json": {"schema": _PROBLEM}}}
            for status in statuses}


def _success(method: str, path: str) -> dict[str, Any]:
    if method == "POST" and path in ("/clients", "/users", "/admins", "/users/{username}/certificates",
                                     "/ip-allowlist/{subject}", "/signing-keys/rotate"):
        return {"201": _json(_ANY, "created (Location: its URL; a secret in it is shown this once)")}
    if (method, path) == ("GET", "/audit/export"):
        return {"200": {"description": "every matching event, oldest first, as a file (Content-Disposition: "
                        "attachment)", "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                                   "text/csv": {"schema": {"type": "string"}}}}}
    if (method, path) == ("GET", "/certificates/{serial}"):
        return {"200": {"description": "the certificate (JSON, or PEM with Accept: application/x-pem-file)",
                        "content": {"application/json": {"schema": _ANY},
                                    "application/x-pem-file": {"schema": {"type": "string"}}}}}
    return {"200": _json(_ANY, "the resource or the page")}


def admin_paths() -> dict[str, Any]:
    """The `paths` of the admin API."""
    paths: dict[str, Any] = {}
    for method, path, handler, permission in OPERATIONS:
        openapi_path = re.sub(r"\{(\w+):\w+\}", r"{\1}", PREFIX + path)
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", openapi_path)
        ]
        statuses = [400, 401, 403, 404, 405, 429, 503]
        if method == "GET" and path in _FILTERS:
            parameters += [*_FILTERS[path], *_PAGE_PARAMS]
            statuses.append(422)
        if method == "GET" and path == "/audit":
            parameters += [*_AUDIT_FILTERS, *_PAGE_PARAMS]
            statuses.append(422)
        if method == "GET" and path == "/audit/export":
            parameters += [_EXPORT_FORMAT, *_AUDIT_FILTERS]
            statuses.append(422)
        if method != "GET":
            parameters.append(_IDEMPOTENCY_KEY)
            statuses += [409, 413, 415, 422]
        if method in ("PATCH", "DELETE") and path != "/ip-allowlist/{subject}/{cidr:path}":
            parameters.append(_IF_MATCH)
            statuses += [412, 428]
        if method == "POST" and _ACTIONS.match(path):
            parameters.append(_IF_MATCH_OPTIONAL)
            statuses.append(412)
        operation: dict[str, Any] = {
            "summary": (handler.__doc__ or handler.__name__.replace("_", " ")).strip().splitlines()[0],
            "tags": ["admin"],
            "security": [{"adminBasic": []}, {"adminBearer": []}],
            "description": f"Permission: {permission}." if permission else "Any administrator.",
            "parameters": parameters,
            "responses": {**_success(method, path), **_problems(*sorted(set(statuses)))},
        }
        body = _BODIES.get((method, path))
        if body is not None:
            operation["requestBody"] = {"required": bool(body.get("required")), "content": {
                "application/json": {"schema": {"type": "object", **body}}}}
        paths.setdefault(openapi_path, {})[method.lower()] = operation
    return paths
