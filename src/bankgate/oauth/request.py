"""Reading an OAuth request: parameters (form, JSON or query string) and client credentials (RFC 6749 §2.3.1).

The provider's own examples send token parameters as a form body, a JSON body and a query string, so all three
are read; a parameter given twice with different values is refused (RFC 6749 §3.2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from bankgate.oauth.errors import OAuthError
from bankgate.oauth.http import BodyTooLarge, Receive, Scope, header, read_body
from bankgate.oauth.registry import ClientAuthRegistry
from bankgate.web.basic import MalformedBasic, NotBasic, parse_basic

__all__ = ["CLIENT_AUTH", "ClientCredentials", "ClientSecretBasic", "ClientSecretPost", "Params", "client_credentials",
           "read_params"]

_API_KEY_SHAPE = re.compile(r"bka?_(test|live)_[A-Za-z0-9]{8,64}")  # a client's or an administrator's
_FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Params:
    values: dict[str, str]
    in_query: frozenset[str]

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def require(self, name: str, example: str) -> str:
        value = self.values.get(name)
        if not value:
            raise OAuthError.invalid_request(f"{name} is missing: send {name}={example}")
        return value


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    api_key: str
    secret: str = field(repr=False)

    @property
    def actor(self) -> str:
        """The claimed key, for the audit trail, only if it looks like a key (never a mistyped secret)."""
        return self.api_key if _API_KEY_SHAPE.fullmatch(self.api_key) else "anonymous"


def _add(params: dict[str, str], name: str, value: str) -> None:
    if name in params and params[name] != value:
        raise OAuthError.invalid_request(f"the parameter {name!r} is given more than once; send it once")
    params[name] = value


def _parse_urlencoded(text: str, where: str) -> list[tuple[str, str]]:
    if "%" not in text and "+" not in text:
        # Nothing to decode (the usual `grant_type=client_credentials&scope=app_1`): split without parse_qsl.
        return [(name, value) for name, _, value in (pair.partition("=") for pair in text.split("&") if pair)]
    try:
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError.invalid_request(f"the {where} is not valid UTF-8 URL-encoded data") from exc


class _JsonObject(list[tuple[str, object]]):
    """A JSON object as its list of (name, value) pairs, in order, repeats kept."""


def _json_params(body: bytes) -> list[tuple[str, str]]:
    try:
        # Pairs, not a dict: a name repeated in the object must reach the duplicate check, not silently win.
        document = json.loads(body, object_pairs_hook=_JsonObject)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise OAuthError.invalid_request("the JSON body is not valid JSON") from exc
    if not isinstance(document, _JsonObject):
        raise OAuthError.invalid_request("the JSON body must be an object of parameters")
    pairs: list[tuple[str, str]] = []
    for name, value in document:
        if isinstance(value, list) and name == "scope" and all(isinstance(v, str) for v in value):
            value = " ".join(value)
        if not isinstance(value, str):
            raise OAuthError.invalid_request(f"the parameter {name!r} must be a string")
        pairs.append((name, value))
    return pairs


async def read_params(scope: Scope, receive: Receive, max_bytes: int) -> Params:
    values: dict[str, str] = {}
    in_query: set[str] = set()
    query = scope.get("query_string", b"")
    if query:
        try:
            query_text = query.decode("utf-8")
        except UnicodeDecodeError:
            raise OAuthError.invalid_request("the query string is not valid UTF-8 URL-encoded data") from None
        for name, value in _parse_urlencoded(query_text, "query string"):
            _add(values, name, value)
            in_query.add(name)
    try:
        body = await read_body(scope, receive, max_bytes)
    except BodyTooLarge:
        raise OAuthError("invalid_request", f"the request body is larger than {max_bytes} bytes", 413) from None
    if body:
        content_type = (header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        if content_type == _FORM:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise OAuthError.invalid_request("the form body is not valid UTF-8") from exc
            pairs = _parse_urlencoded(text, "form body")
        elif content_type == "application/json" or content_type.endswith("+json"):
            pairs = _json_params(body)
        else:
            raise OAuthError.invalid_request(
                f"send the parameters as {_FORM} (or application/json), not {content_type or 'no Content-Type'}"
            )
        for name, value in pairs:
            _add(values, name, value)
    return Params(values, frozenset(in_query))


def _parse_basic(authorization: str) -> ClientCredentials:
    """A client's key pair from its Basic header, by the one rule of `bankgate.web.basic`."""
    try:
        credentials = parse_basic(authorization, what="api_key:secret_key")
    except NotBasic as exc:
        raise OAuthError.invalid_client(
            f"the {exc.scheme or 'empty'} authentication scheme is not accepted here: send "
            "Authorization: Basic base64(api_key:secret_key)",
            reason="unsupported_auth_scheme",
        ) from None
    except MalformedBasic as exc:
        raise OAuthError.invalid_request(str(exc), reason="malformed_basic") from None
    return ClientCredentials(credentials.user_id, credentials.secret)


class ClientSecretBasic:
    """`Authorization: Basic base64(api_key:secret_key)` (RFC 6749 §2.3.1), the method clients should use."""

    name = "client_secret_basic"
    carried_in = "Authorization header"
    hint = "Authorization: Basic base64(api_key:secret_key)"
    parameters: dict[str, Any] = {}

    def presented(self, authorization: str | None, params: Params) -> bool:
        return bool(authorization)

    def read(self, authorization: str | None, params: Params) -> ClientCredentials:
        credentials = _parse_basic(authorization or "")
        claimed = params.get("client_id")
        if claimed is not None and claimed != credentials.api_key:
            raise OAuthError.invalid_request("client_id does not match the API key in the Authorization header")
        return credentials


class ClientSecretPost:
    """`client_id` and `client_secret` in the body (RFC 6749 §2.3.1); never from the URL: the ErrorBoundary
    refuses secrets in query strings."""

    name = "client_secret_post"
    carried_in = "client_secret"
    hint = "client_id and client_secret in the body"
    parameters: dict[str, Any] = {
        "client_id": {"type": "string", "description": "client_secret_post only"},
        "client_secret": {"type": "string", "description": "client_secret_post only (never in the URL)"},
    }

    def presented(self, authorization: str | None, params: Params) -> bool:
        return params.get("client_secret") is not None

    def read(self, authorization: str | None, params: Params) -> ClientCredentials:
        api_key = params.get("client_id")
        if not api_key:
            raise OAuthError.invalid_client(f"no client authentication: send {ClientSecretBasic.hint}",
                                            reason="no_credentials")
        return ClientCredentials(api_key, params.values["client_secret"])


#: How the token, introspection and revocation endpoints read client credentials; discovery lists the names.
CLIENT_AUTH = ClientAuthRegistry()
CLIENT_AUTH.register(ClientSecretBasic())
CLIENT_AUTH.register(ClientSecretPost())


def client_credentials(authorization: str | None, params: Params) -> ClientCredentials:
    """Client credentials by the one registered method the request uses (`CLIENT_AUTH`)."""
    return CLIENT_AUTH.read(authorization, params)
