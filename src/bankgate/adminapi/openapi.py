"""The admin API in the OpenAPI document: one entry per operation of `routes.OPERATIONS`, so a route cannot exist
undocumented."""

from __future__ import annotations

import re
from typing import Any

from bankgate.adminapi.routes import OPERATIONS, PREFIX

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
_PAGE_PARAMS: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
    {"name": "cursor", "in": "query", "required": False, "description": "next_cursor of the previous page",
     "schema": {"type": "string"}},
]
_LIST_FILTERS: list[dict[str, Any]] = [
    {"name": "status", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["active", "disabled", "revoked", "deleted"]}},
    {"name": "q", "in": "query", "required": False, "description": "part of the name, API key or username",
     "schema": {"type": "string"}},
]
_AUDIT_FILTERS: list[dict[str, Any]] = [
    *({"name": name, "in": "query", "required": False, "description": "UNIX seconds", "schema": {"type": "number"}}
      for name in ("since", "until")),
    *({"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
      for name in ("event", "actor", "subject")),
    {"name": "outcome", "in": "query", "required": False, "schema": {"type": "string",
                                                                     "enum": ["success", "failure"]}},
]
_IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "a retry with the same key and body is answered as the first request was",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": True,
             "description": "the ETag of the resource as last read", "schema": {"type": "string"}}

_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/clients"): {"required": ["name", "scopes"], "properties": {
        "name": {"type": "string", "maxLength": 200}, "scopes": _STRINGS,
        "auth_mode": {"type": "string", "enum": ["oauth2", "basic"]}}},
    ("PATCH", "/clients/{api_key}"): {"properties": {"name": {"type": "string", "maxLength": 200},
                                                     "scopes": _STRINGS}},
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
        if method == "GET" and path in ("/clients", "/users", "/admins"):
            parameters += _LIST_FILTERS
        if method == "GET" and path == "/audit":
            parameters += _AUDIT_FILTERS
        if method == "GET" and path in ("/clients", "/users", "/admins", "/users/{username}/certificates",
                                        "/signing-keys", "/audit"):
            parameters += _PAGE_PARAMS
            statuses.append(422)
        if method != "GET":
            parameters.append(_IDEMPOTENCY_KEY)
            statuses += [409, 413, 415, 422]
        if method in ("PATCH", "DELETE") and path != "/ip-allowlist/{subject}/{cidr:path}":
            parameters.append(_IF_MATCH)
            statuses += [412, 428]
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
