"""Registries of what the OAuth endpoints accept: grant types (RFC 6749 §4) and client authentication methods (RFC
6749 §2.3; their names as RFC 8414 §2 lists them).

The token endpoint dispatches through them, and the server metadata and the OpenAPI document list what they hold,
so the three cannot disagree: adding a grant is one class and one `register` call (Authlib's `register_grant` and
`ClientAuthentication.register` are the model). The built-in ones register where they are written:
`bankgate.oauth.grants` (`client_credentials`) and `bankgate.oauth.request` (`client_secret_basic`,
`client_secret_post`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from bankgate.oauth.errors import OAuthError

if TYPE_CHECKING:
    from bankgate.credentials.clients import ClientRecord
    from bankgate.oauth.http import Send
    from bankgate.oauth.request import ClientCredentials, Params
    from bankgate.runtime import Runtime

__all__ = ["ClientAuthMethod", "ClientAuthRegistry", "Grant", "GrantRegistry", "KeyFamily", "KeyFamilyRegistry"]


class Grant(Protocol):
    """One grant type of the token endpoint, run once the client has authenticated."""

    #: The `grant_type` parameter's value.
    @property
    def grant_type(self) -> str: ...

    #: The token request's parameters beyond `grant_type` and client authentication, as JSON Schema properties.
    @property
    def parameters(self) -> Mapping[str, Any]: ...

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None: ...


class GrantRegistry:
    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}

    def __repr__(self) -> str:
        return f"GrantRegistry({self.names()})"

    def register(self, grant: Grant) -> None:
        if grant.grant_type in self._grants:
            raise ValueError(f"grant type {grant.grant_type!r} is registered already")
        self._grants[grant.grant_type] = grant

    def get(self, grant_type: str) -> Grant | None:
        return self._grants.get(grant_type)

    def names(self) -> list[str]:
        """The grant types, in registration order: `grant_types_supported` and the OpenAPI `grant_type` enum."""
        return list(self._grants)

    def parameters(self) -> dict[str, Any]:
        return {name: schema for grant in self._grants.values() for name, schema in grant.parameters.items()}


class ClientAuthMethod(Protocol):
    """One way a client presents its credentials to the token, introspection and revocation endpoints."""

    #: The RFC 8414 name (`client_secret_basic`).
    @property
    def name(self) -> str: ...

    #: Where the request carries it, for the error when a client authenticates twice (`Authorization header`).
    @property
    def carried_in(self) -> str: ...

    #: What a client that sent nothing is told to send.
    @property
    def hint(self) -> str: ...

    #: Body parameters it reads, as JSON Schema properties, for the OpenAPI document.
    @property
    def parameters(self) -> Mapping[str, Any]: ...

    def presented(self, authorization: str | None, params: Params) -> bool:
        """Whether the request uses this method (even if wrongly: `read` then says what is wrong)."""
        ...

    def read(self, authorization: str | None, params: Params) -> ClientCredentials: ...


class ClientAuthRegistry:
    def __init__(self) -> None:
        self._methods: list[ClientAuthMethod] = []

    def __repr__(self) -> str:
        return f"ClientAuthRegistry({self.names()})"

    def register(self, method: ClientAuthMethod) -> None:
        if method.name in self.names():
            raise ValueError(f"client authentication method {method.name!r} is registered already")
        self._methods.append(method)

    def names(self) -> list[str]:
        """The method names, in registration order: `*_endpoint_auth_methods_supported`."""
        return [method.name for method in self._methods]

    def parameters(self) -> dict[str, Any]:
        return {name: schema for method in self._methods for name, schema in method.parameters.items()}

    def read(self, authorization: str | None, params: Params) -> ClientCredentials:
        """The credentials of the one method the request uses (RFC 6749 §2.3: a client uses only one)."""
        chosen: ClientAuthMethod | None = None
        for method in self._methods:
            if method.presented(authorization, params):
                if chosen is not None:
                    raise OAuthError.invalid_request(
                        f"the client authenticated twice ({chosen.carried_in} and {method.carried_in}); use only one"
                    )
                chosen = method
        if chosen is None:
            hint = self._methods[0].hint if self._methods else "credentials"
            raise OAuthError.invalid_client(f"no client authentication: send {hint}", reason="no_credentials")
        return chosen.read(authorization, params)


class KeyFamily(Protocol):
    """Key pairs of another kind than merchant clients' (`bk_`), to which the token endpoint also issues tokens:
    administrators' `bka_` keys. The family authenticates, decides and answers on its own, with its own audience."""

    #: What every API key of the family starts with (never a prefix of `bk_` keys).
    @property
    def prefix(self) -> str: ...

    async def handle(
        self, runtime: Runtime, credentials: ClientCredentials, params: Params, source_ip: str | None, send: Send
    ) -> None: ...


class KeyFamilyRegistry:
    """The key families beside merchant clients. `match` is one `str.startswith` over a tuple of prefixes, so a
    merchant client's token request pays nothing measurable for their existence."""

    def __init__(self) -> None:
        self._families: dict[str, KeyFamily] = {}
        self._prefixes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"KeyFamilyRegistry({list(self._families)})"

    def register(self, family: KeyFamily) -> None:
        if family.prefix in self._families or "bk_".startswith(family.prefix):
            raise ValueError(f"key family {family.prefix!r} is registered already or would take merchant keys")
        self._families[family.prefix] = family
        self._prefixes = tuple(self._families)

    def match(self, api_key: str) -> KeyFamily | None:
        if not api_key.startswith(self._prefixes):
            return None
        return next(family for prefix, family in self._families.items() if api_key.startswith(prefix))
