"""The OpenAPI 3.1 description of bankgate's HTTP API, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from bankgate.adminapi.openapi import admin_paths
from bankgate.oauth.grants import GRANTS
from bankgate.oauth.request import CLIENT_AUTH

__all__ = ["openapi_document"]

_OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "string",
            "enum": ["invalid_request", "invalid_client", "unauthorized_client", "unsupported_grant_type",
                     "invalid_scope", "access_denied", "slow_down", "temporarily_unavailable", "server_error",
                     "invalid_token", "insufficient_scope"],
        },
        "error_description": {"type": "string"},
    },
}
_PROBLEM = {
    "type": "object",
    "description": "RFC 7807 problem details",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
_PARSE_FAILURE = {
    "type": "object",
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "errorCode": {"type": "string", "enum": ["AuthorizationParseFailure"]},
                    "errorDescription": {"type": "string"},
                },
            },
        }
    },
}


def _token_request() -> dict[str, Any]:
    """The token request: the registered grant types and their parameters, then those of the registered client
    authentication methods."""
    return {
        "type": "object",
        "required": ["grant_type"],
        "properties": {
            "grant_type": {"type": "string", "enum": GRANTS.names()},
            **GRANTS.parameters(),
            **CLIENT_AUTH.parameters(),
        },
    }


_TOKEN_PARAMS = {
    "type": "object",
    "required": ["token"],
    "properties": {"token": {"type": "string"}, "token_type_hint": {"type": "string"}},
}

_REVOCATION_FEED = {
    "type": "object",
    "required": ["tokens", "subjects", "next"],
    "properties": {
        "tokens": {
            "type": "array",
            "description": "revoked tokens not yet expired",
            "items": {"type": "object", "required": ["jti", "expires_at"],
                      "properties": {"jti": {"type": "string"}, "expires_at": {"type": "number"}}},
        },
        "subjects": {
            "type": "array",
            "description": "revoked clients, users and certificates: their tokens issued at or before not_before "
            "(null: every token) are refused",
            "items": {"type": "object", "required": ["subject", "not_before"],
                      "properties": {"subject": {"type": "string", "example": "client:3f1c…"},
                                     "not_before": {"type": ["number", "null"]}}},
        },
        "next": {"type": "string", "description": "the cursor to send as `since` next time"},
    },
}


def _json(schema: dict[str, Any], description: str, media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _oauth_errors(*statuses: str) -> dict[str, Any]:
    return {status: _json(_OAUTH_ERROR, "RFC 6749 §5.2 error") for status in statuses}


def _problems(*statuses: str) -> dict[str, Any]:
    return {status: _json(_PROBLEM, "problem details", "application/problem+json") for status in statuses}


def _form_or_json(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": False,
        "content": {"application/x-www-form-urlencoded": {"schema": schema}, "application/json": {"schema": schema}},
    }


def _guard_errors() -> dict[str, Any]:
    """RFC 6750 §3.1 answers of the guard (with WWW-Authenticate on 401 and 403): a malformed or duplicate
    Authorization header, a credential in the URL (400), no or a bad token (401), an address or application not
    allowed (403), a Basic key pair throttled (429), a check that cannot be made now (503 + Retry-After)."""
    return {status: _json(_OAUTH_ERROR, "RFC 6750 error") for status in ("400", "401", "403", "429", "503")}


def _user_errors(*statuses: str) -> dict[str, Any]:
    """The certificate style's answers: problem details, and the provider's `errors` list for a malformed
    Authorization header (400)."""
    answers = _problems(*statuses)
    if "400" in answers:
        answers["400"] = {
            "description": "a malformed Authorization header (the provider's errors list), or a malformed request",
            "content": {"application/json": {"schema": _PARSE_FAILURE},
                        "application/problem+json": {"schema": _PROBLEM}},
        }
    return answers


def _sandbox_errors(*statuses: str) -> dict[str, Any]:
    """The sandbox's own problem details beside the guard's answers (a 400 or 503 may come from either)."""
    answers = _guard_errors()
    for status, problem in _problems(*statuses).items():
        if status in answers:
            answers[status] = {"description": f"{answers[status]['description']}, or problem details",
                               "content": {**answers[status]["content"], **problem["content"]}}
        else:
            answers[status] = problem
    return answers


def _plain_errors() -> dict[str, Any]:
    """Routes without authentication: a credential in the URL (400), the server unable to answer now (503)."""
    return _oauth_errors("400", "503")


def _health(description: str) -> dict[str, Any]:
    schema = {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["ok", "ready", "unavailable"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "each check: `ok` or why it failed"}}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _page(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _pages(**statuses: str) -> dict[str, Any]:
    """A console page's answers: HTML pages by status (`s303` for a redirect), and the app's own 400 (a secret in
    the URL) and 503 in RFC 6749 form."""
    answers: dict[str, Any] = _plain_errors()
    for status, description in statuses.items():
        code = status.lstrip("s")
        answers[code] = ({"description": description, "headers": {"Location": {"schema": {"type": "string"}}}}
                         if code in ("303", "304") else _page(description))
    return answers


_CONSOLE_FORM = {"type": "object", "additionalProperties": {"type": "string"}}


def _console_paths() -> dict[str, Any]:
    """The web console (`bankgate.console`): server-rendered pages for browsers, each in `text/html`."""
    form = {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": _CONSOLE_FORM}}}
    refused = {"s400": "the form could not be read, or the new passwords differ or are too weak",
               "s401": "the username and password (or passphrase) are not recognised",
               "s403": "the form's CSRF token is missing or wrong, the address is not allowed, or the passphrase "
               "expired",
               "s429": "too many failed attempts; Retry-After says when to try again"}
    return {
        "/console/me/sign-in": {
            "get": {"summary": "Console: the M2M user's sign-in page", "tags": ["console"],
                    "responses": _pages(s200="the sign-in form")},
            "post": {"summary": "Console: sign in with username and password", "tags": ["console"],
                     "requestBody": form,
                     "responses": _pages(s200="the first sign-in form (the initial passphrase was given)",
                                         s303="signed in: to /console/me", **refused)},
        },
        "/console/me/first-sign-in": {
            "get": {"summary": "Console: exchange the initial passphrase for a password", "tags": ["console"],
                    "responses": _pages(s200="the first sign-in form, with the password rules")},
            "post": {"summary": "Console: set the password with the initial passphrase, and sign in",
                     "tags": ["console"], "requestBody": form,
                     "responses": _pages(s303="password set and signed in: to /console/me", **refused)},
        },
        "/console/me": {
            "get": {"summary": "Console: the user's certificates, allow list and a ready curl", "tags": ["console"],
                    "responses": _pages(s200="the page", s303="no live session: to the sign-in page")},
        },
        "/console/me/certificates/{serial}.pem": {
            "get": {"summary": "Console: download one of the signed-in user's certificates", "tags": ["console"],
                    "parameters": [{"name": "serial", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {**_pages(s303="no live session: to the sign-in page", s404="no such certificate"),
                                  "200": {"description": "the certificate",
                                          "content": {"application/x-pem-file": {"schema": {"type": "string"}}}}}},
        },
        "/console/me/sign-out": {
            "post": {"summary": "Console: end the session on the server", "tags": ["console"], "requestBody": form,
                     "responses": _pages(s303="signed out (or no live session): to the sign-in page",
                                         s400="the form could not be read", s403="the CSRF token is missing or wrong")},
        },
        "/console/static/{name}": {
            "get": {"summary": "Console: its stylesheet and script (cached for a year; the URL names the content)",
                    "tags": ["console"],
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {**_pages(s304="not modified", s404="no such file"),
                                  "200": {"description": "the file", "content": {
                                      "text/css": {"schema": {"type": "string"}},
                                      "text/javascript": {"schema": {"type": "string"}}}}}},
        },
    }



#: The integration manager's console pages (`bankgate.console.manager`): (path, methods, summary). Every page needs
#: an administrator's session (else a 303 to its sign-in page) and answers only BANKGATE_ADMIN_ALLOWED_IPS.
_MANAGER_PAGES: tuple[tuple[str, str, str], ...] = (
    ("/console/admin", "get", "the dashboard: active clients and users, expiring certificates, recent refusals"),
    ("/console/admin/clients", "get", "clients, filtered by q and status, a page at a time (cursor)"),
    ("/console/admin/clients/new", "get post", "create a client: its secret key is shown once, on the POST's answer"),
    ("/console/admin/clients/{api_key}", "get", "one client, its allow list and the actions the role allows"),
    ("/console/admin/clients/{api_key}/{action}", "get post",
     "rotate-secret, disable, enable or revoke a client: a confirmation page (GET), then the change (POST)"),
    ("/console/admin/users", "get", "M2M users, filtered by q and status, a page at a time (cursor)"),
    ("/console/admin/users/new", "get post", "create a user: its initial passphrase is shown once"),
    ("/console/admin/users/{username}", "get", "one user, its certificates, allow list and actions"),
    ("/console/admin/users/{username}/scopes", "post", "replace the user's applications"),
    ("/console/admin/users/{username}/certificates", "post",
     "issue a certificate from an uploaded CSR (multipart/form-data), or with a generated key as PKCS#12"),
    ("/console/admin/users/{username}/{action}", "get post",
     "new-passphrase, disable, enable or revoke a user: a confirmation page, then the change"),
    ("/console/admin/certificates/{serial}/revoke", "get post", "revoke a certificate: a confirmation page, then "
     "the revocation"),
    ("/console/admin/ips/{subject}", "post", "allow an address or network (CIDR) for a user or client"),
    ("/console/admin/ips/{subject}/remove", "get post", "remove an allow-list entry: a confirmation page, then the "
     "removal"),
    ("/console/admin/keys", "get", "the signing keys published in the JWKS"),
    ("/console/admin/keys/rotate", "get post", "rotate the signing key (owner): a confirmation page, then the "
     "rotation"),
    ("/console/admin/keys/{kid}/retire", "get post", "retire a signing key at once (owner)"),
    ("/console/admin/audit", "get", "the audit trail, filtered by event, actor, subject, outcome, since and until"),
)


def _manager_paths() -> dict[str, Any]:
    """The integration manager's console pages, in `text/html`."""
    form = {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": _CONSOLE_FORM},
                                           "multipart/form-data": {"schema": _CONSOLE_FORM}}}
    shared = {"s303": "no live administrator session: to the sign-in page; or done: to the changed record's page",
              "s400": "a filter, a cursor or the form is not valid: the page says what to change",
              "s403": "the role does not allow it, the CSRF token is missing or wrong, or the address is not one of "
              "BANKGATE_ADMIN_ALLOWED_IPS",
              "s404": "no such record or action", "s409": "the change does not apply to the record as it is",
              "s405": "a method the page does not answer (Allow names those it does)"}
    paths: dict[str, Any] = {
        "/console/admin/sign-in": {
            "get": {"summary": "Console: the administrators' sign-in page", "tags": ["console"],
                    "responses": _pages(s200="the sign-in form", s403="the address is not allowed")},
            "post": {"summary": "Console: sign in with name, password and a TOTP code", "tags": ["console"],
                     "requestBody": form,
                     "responses": _pages(s303="signed in: to /console/admin",
                                         s401="not recognised (one answer for every reason)",
                                         s403="the CSRF token is missing or wrong, or the address is not allowed",
                                         s429="too many failed sign-ins; Retry-After says when to try again")},
        },
        "/console/admin/sign-out": {
            "post": {"summary": "Console: end the administrator's session", "tags": ["console"], "requestBody": form,
                     "responses": _pages(s303="signed out: to the sign-in page", s400="the form could not be read",
                                         s403="the CSRF token is missing or wrong")},
        },
        "/console/admin/certificates/{serial}.pem": {
            "get": {"summary": "Console: download a certificate (PEM)", "tags": ["console"],
                    "parameters": [{"name": "serial", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {**_pages(s303=shared["s303"], s403=shared["s403"], s404="no such certificate"),
                                  "200": {"description": "the certificate",
                                          "content": {"application/x-pem-file": {"schema": {"type": "string"}}}}}},
        },
    }
    for path, methods, summary in _MANAGER_PAGES:
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in ("api_key", "action", "username", "serial", "subject", "kid")
                      if f"{{{name}}}" in path]
        item: dict[str, Any] = {}
        for method in methods.split():
            operation: dict[str, Any] = {"summary": f"Console: {summary}", "tags": ["console"],
                                         "responses": _pages(s200="the page", **shared)}
            if parameters:
                operation["parameters"] = parameters
            if method == "post":
                operation["requestBody"] = form
            item[method] = operation
        paths[path] = item
    return paths


_PAYMENT_ORDER: dict[str, Any] = {
    "type": "object",
    "required": ["application_id", "amount", "currency", "reference"],
    "properties": {
        "application_id": {"type": "string", "example": "app_12345"},
        "amount": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$", "example": "12.50"},
        "currency": {"type": "string", "description": "ISO 4217", "example": "EUR"},
        "reference": {"type": "string", "maxLength": 140},
    },
}
_PAYMENT = {
    "type": "object",
    "properties": {
        **_PAYMENT_ORDER["properties"],
        "id": {"type": "string"},
        "status": {"type": "string"},
        "created_at": {"type": "integer"},
    },
}


#: Every answer carries the request's id (bankgate.request_layer): a trusted proxy's, else one made here.
_REQUEST_ID_HEADER = {"description": "the request's id, as logged: the one a trusted proxy sent, else one made here",
                      "schema": {"type": "string"}}


def openapi_document(server_url: str, *, token_status: int = 201) -> dict[str, Any]:
    """The OpenAPI 3.1 document; `token_status` is the configured success status of POST /oauth/token."""
    document = _document(server_url, token_status=token_status)
    for item in document["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"] = {
                    status: {**answer, "headers": {**answer.get("headers", {}), "X-Request-Id": _REQUEST_ID_HEADER}}
                    for status, answer in operation["responses"].items()
                }
    return document


def _document(server_url: str, *, token_status: int) -> dict[str, Any]:
    api_auth: list[dict[str, list[str]]] = [{"bearer": []}, {"clientBasic": []}]
    idempotency_key = {"name": "Idempotency-Key", "in": "header", "required": True,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
    basic: list[dict[str, list[str]]] = [{"clientBasic": []}]
    user_basic: list[dict[str, list[str]]] = [{"userBasic": []}]
    username = {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bankgate",
            "version": "1",
            "description": "API authentication for payment and banking APIs: OAuth2 client credentials with API "
            "key pairs, and certificate-bound M2M users over mutual TLS.",
        },
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {
                "clientBasic": {"type": "http", "scheme": "basic", "description": "base64(api_key:secret_key)"},
                "userBasic": {"type": "http", "scheme": "basic", "description": "base64(username:password)"},
                "mutualTLS": {"type": "mutualTLS", "description": "a client certificate issued by bankgate"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "an access token from either token endpoint (RFC 6750)"},
                "adminBasic": {"type": "http", "scheme": "basic",
                               "description": "base64(admin_api_key:admin_secret), an administrator's bka_/ska_ pair"},
                "adminBearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                "description": "an admin access token (POST /oauth/token with an administrator's key "
                                "pair; audience BANKGATE_ADMIN_AUDIENCE)"},
            }
        },
        "paths": {
            "/oauth/token": {
                "post": {
                    "summary": "Get an access token (client credentials, RFC 6749 §4.4)",
                    "description": "Parameters as a form body, a JSON body, or query-string parameters.",
                    "security": basic,
                    "requestBody": _form_or_json(_token_request()),
                    "responses": {
                        str(token_status): _json(
                            {
                                "type": "object",
                                "required": ["access_token", "token_type", "expires_in", "scope", "created_at"],
                                "properties": {
                                    "access_token": {"type": "string"},
                                    "token_type": {"type": "string", "enum": ["Bearer"]},
                                    "expires_in": {"type": "integer", "example": 7200},
                                    "scope": {"type": "string"},
                                    "created_at": {"type": "integer"},
                                },
                            },
                            "the token",
                        ),
                        **_oauth_errors("400", "401", "403", "413", "429", "503"),
                    },
                }
            },
            "/api/v1/authorizations/authorize": {
                "get": {
                    "summary": "Get a certificate-bound access token (M2M user over mutual TLS)",
                    "security": [{"userBasic": [], "mutualTLS": []}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "access_token": {"type": "string"},
                                    "expires_in": {"type": "string", "example": "300"},
                                },
                            },
                            "the token; expires_in is a string of seconds",
                        ),
                        **_user_errors("400", "401", "403", "429", "503"),
                    },
                }
            },
            "/api/v1/users/{username}/password": {
                "post": {
                    "summary": "Reset the initial passphrase to a new password",
                    "description": "Single use; the passphrase expires. The new password needs at least 12 "
                    "characters mixing three of lower case, upper case, digits and symbols, or 20 characters.",
                    "parameters": [username],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["passphrase", "new_password"],
                                    "properties": {
                                        "passphrase": {"type": "string"},
                                        "new_password": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"type": "object"}, "password set"),
                        **_user_errors("400", "401", "403", "413", "429", "503"),
                    },
                }
            },
            "/api/v1/users/{username}/certificates": {
                "get": {
                    "summary": "List the user's certificates with their thumbprints",
                    "security": user_basic,
                    "parameters": [username],
                    "responses": {"200": _json({"type": "object"}, "certificates"),
                                  **_user_errors("400", "401", "403", "429", "503")},
                }
            },
            "/api/v1/users/{username}/certificates/{serial}": {
                "get": {
                    "summary": "Download a certificate (PEM; JSON with Accept: application/json)",
                    "security": user_basic,
                    "parameters": [
                        username,
                        {"name": "serial", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "the certificate",
                                "content": {"application/x-pem-file": {"schema": {"type": "string"}}}},
                        **_user_errors("400", "401", "403", "404", "429", "503"),
                    },
                }
            },
            "/oauth/introspect": {
                "post": {
                    "summary": "Token introspection (RFC 7662); a client sees only its own tokens",
                    "security": basic,
                    "requestBody": _form_or_json(_TOKEN_PARAMS),
                    "responses": {"200": _json({"type": "object"}, "active or not"),
                                  **_oauth_errors("400", "401", "403", "413", "429", "503")},
                }
            },
            "/oauth/revoke": {
                "post": {
                    "summary": "Token revocation (RFC 7009)",
                    "security": basic,
                    "requestBody": _form_or_json(_TOKEN_PARAMS),
                    "responses": {"200": {"description": "revoked (or nothing to revoke)"},
                                  **_oauth_errors("400", "401", "403", "413", "429", "503")},
                }
            },
            "/oauth/revocations": {
                "get": {
                    "summary": "Revocation feed for resource servers verifying tokens on their own (RFC 7009 "
                    "revocations); the client needs the bankgate:revocations application",
                    "security": basic,
                    "parameters": [{"name": "since", "in": "query", "required": False,
                                    "description": "the `next` cursor of the previous answer; none: every "
                                    "revocation in force", "schema": {"type": "string"}}],
                    "responses": {"200": _json(_REVOCATION_FEED, "revocations since the cursor"),
                                  **_oauth_errors("400", "401", "403", "413", "429", "503")},
                }
            },
            "/.well-known/jwks.json": {"get": {"summary": "Signing keys (RFC 7517)",
                                               "responses": {"200": {"description": "JWK set"}, **_plain_errors()}}},
            "/.well-known/oauth-authorization-server": {
                "get": {"summary": "Server metadata (RFC 8414)",
                        "responses": {"200": {"description": "metadata"}, **_plain_errors()}}
            },
            "/healthz": {"get": {"summary": "Liveness, with the environment and the active signing key id",
                                 "responses": {"200": {"description": "ok"}, **_plain_errors()}}},
            "/livez": {"get": {"summary": "Liveness: the process answers (no I/O)",
                               "responses": {"200": _health("ok"), **_plain_errors()}}},
            "/readyz": {"get": {"summary": "Readiness: database, Redis (when used), signing keys, migrations at head",
                                "responses": {"200": _health("ready, every check ok"),
                                              **_plain_errors(),
                                              "503": {**_health("not ready: the failing checks with a short reason"),
                                                      "headers": {"Retry-After": {"schema": {"type": "integer"}}}}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text exposition format): with BANKGATE_METRICS=on here, with admin "
                           "on the --admin-port listener only, for the addresses in BANKGATE_ADMIN_ALLOWED_IPS",
                "responses": {"200": {"description": "the metrics of every worker of this server",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **_oauth_errors("403", "404"), **_plain_errors()}}},
            "/docs": {"get": {"summary": "This document as an interactive page (Swagger UI, served by bankgate)",
                              "responses": {"200": _page("the page"), **_plain_errors()}}},
            "/docs/static/{name}": {
                "get": {"summary": "The page's script and style sheet",
                        "parameters": [{"name": "name", "in": "path", "required": True,
                                        "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "the file",
                                              "content": {"text/javascript": {"schema": {"type": "string"}},
                                                          "text/css": {"schema": {"type": "string"}}}},
                                      "404": {"description": "no such file",
                                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                                      **_plain_errors()}},
            },
            "/api/v1/whoami": {
                "get": {"summary": "Whom the credentials speak for", "security": api_auth,
                        "responses": {"200": _json({"type": "object"}, "the principal"), **_guard_errors()}},
            },
            "/api/v1/accounts": {
                "get": {"summary": "Sandbox: one account per application of the caller", "security": api_auth,
                        "responses": {"200": _json({"type": "object"}, "accounts"), **_sandbox_errors("503")}},
            },
            "/api/v1/payments": {
                "post": {
                    "summary": "Sandbox: make a payment (Idempotency-Key required; a retry is replayed)",
                    "security": api_auth,
                    "parameters": [idempotency_key],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _PAYMENT_ORDER}}},
                    "responses": {
                        "201": {**_json(_PAYMENT, "the payment (Location: its URL; Idempotent-Replayed: true on "
                                        "a replay)")},
                        **_sandbox_errors("400", "404", "409", "413", "422", "503"),
                    },
                }
            },
            "/api/v1/payments/{payment_id}": {
                "get": {
                    "summary": "Sandbox: a payment of one of the caller's applications",
                    "security": api_auth,
                    "parameters": [{"name": "payment_id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {"200": _json(_PAYMENT, "the payment"), **_sandbox_errors("404", "503")},
                }
            },
            **admin_paths(),
            **_console_paths(),
            **_manager_paths(),
        },
    }
