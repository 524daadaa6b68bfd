"""The registries of grant types and client authentication methods: the token endpoint dispatches through them, and
the server metadata (RFC 8414) and the OpenAPI document list exactly what they hold. A new grant is one class and
one `register` call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from bankgate.app import BankgateApp, create_app
from bankgate.config import Settings
from bankgate.credentials.clients import ClientRecord
from bankgate.oauth.errors import JSON_NO_STORE, OAuthError
from bankgate.oauth.grants import GRANTS, ClientCredentialsGrant
from bankgate.oauth.http import Send, respond
from bankgate.oauth.registry import ClientAuthRegistry, GrantRegistry
from bankgate.oauth.request import CLIENT_AUTH, ClientSecretBasic, Params, client_credentials
from bankgate.openapi import openapi_document
from bankgate.runtime import Runtime
from bankgate.services import Services
from conftest import basic

ISSUER = "http://bankgate.test"
METADATA = "/.well-known/oauth-authorization-server"


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, issuer=ISSUER)
    assert isinstance(app, BankgateApp)
    async with (
        app.starlette.router.lifespan_context(app.starlette),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as http,
    ):
        yield http


def _params(**values: str) -> Params:
    return Params(values, frozenset())


class EchoGrant:
    """A grant written for this test: what adding one takes."""

    grant_type = "urn:bankgate:test:echo"
    parameters: dict[str, Any] = {"echo": {"type": "string", "description": "said back"}}

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None:
        await respond(send, 200, orjson.dumps({"echo": params.get("echo"), "client_id": client.id}), JSON_NO_STORE)


# -- what is registered today ------------------------------------------------------------------------------


def test_today_one_grant_and_two_client_authentication_methods_are_registered() -> None:
    assert GRANTS.names() == ["client_credentials"]
    assert CLIENT_AUTH.names() == ["client_secret_basic", "client_secret_post"]


async def test_server_metadata_lists_exactly_the_registries(services: Services, settings: Settings) -> None:
    async with serving(settings) as http:
        metadata = (await http.get(METADATA)).json()
    assert metadata["grant_types_supported"] == GRANTS.names()
    for endpoint in ("token", "introspection", "revocation"):
        assert metadata[f"{endpoint}_endpoint_auth_methods_supported"] == CLIENT_AUTH.names(), endpoint


def test_openapi_token_request_lists_the_registered_grants_and_their_parameters() -> None:
    body = openapi_document(ISSUER)["paths"]["/oauth/token"]["post"]["requestBody"]["content"]
    for media in ("application/x-www-form-urlencoded", "application/json"):
        schema = body[media]["schema"]
        assert schema["properties"]["grant_type"]["enum"] == GRANTS.names()
        assert list(schema["properties"]) == ["grant_type", "scope", "client_id", "client_secret"]
        assert schema["properties"]["scope"] == ClientCredentialsGrant.parameters["scope"]


# -- adding one ---------------------------------------------------------------------------------------------


async def test_a_registered_grant_is_dispatched_listed_and_documented(
    services: Services, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GRANTS, "_grants", dict(GRANTS._grants))  # restored after the test
    GRANTS.register(EchoGrant())
    client = await services.clients.create("echo", ["app_1"])
    credentials = {"Authorization": basic(client.client.api_key, client.secret_key)}
    async with serving(settings) as http:
        answer = await http.post("/oauth/token", data={"grant_type": EchoGrant.grant_type, "echo": "hi"},
                                 headers=credentials)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"echo": "hi", "client_id": client.client.id}
        assert (await http.get(METADATA)).json()["grant_types_supported"] == ["client_credentials",
                                                                               EchoGrant.grant_type]
        schema = (await http.get("/openapi.json")).json()["paths"]["/oauth/token"]["post"]["requestBody"]
        properties = schema["content"]["application/json"]["schema"]["properties"]
        assert properties["grant_type"]["enum"] == ["client_credentials", EchoGrant.grant_type]
        assert properties["echo"] == EchoGrant.parameters["echo"]
        refused = await http.post("/oauth/token", data={"grant_type": "password"}, headers=credentials)
        assert refused.status_code == 400 and refused.json()["error"] == "unsupported_grant_type"
        assert refused.json()["error_description"] == (
            f"grant_type 'password' is not supported: send grant_type=client_credentials or "
            f"grant_type={EchoGrant.grant_type}"
        )


async def test_an_unregistered_grant_type_is_refused_naming_the_one_there_is(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("echo", ["app_1"])
    async with serving(settings) as http:
        refused = await http.post("/oauth/token", data={"grant_type": EchoGrant.grant_type},
                                  headers={"Authorization": basic(client.client.api_key, client.secret_key)})
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "unsupported_grant_type",
        "error_description": f"grant_type '{EchoGrant.grant_type}' is not supported: "
                             "send grant_type=client_credentials",
    }


def test_a_name_is_registered_once() -> None:
    grants = GrantRegistry()
    grants.register(ClientCredentialsGrant())
    with pytest.raises(ValueError, match="registered already"):
        grants.register(ClientCredentialsGrant())
    methods = ClientAuthRegistry()
    methods.register(ClientSecretBasic())
    with pytest.raises(ValueError, match="registered already"):
        methods.register(ClientSecretBasic())


# -- client authentication through the registry -----------------------------------------------------------


def test_each_registered_method_reads_its_own_credentials() -> None:
    header = basic("bk_test_abcdefgh", "s3cret")
    by_basic = client_credentials(header, _params(grant_type="client_credentials"))
    by_post = client_credentials(None, _params(client_id="bk_test_abcdefgh", client_secret="s3cret"))
    assert (by_basic.api_key, by_basic.secret) == (by_post.api_key, by_post.secret) == ("bk_test_abcdefgh", "s3cret")


def test_two_methods_at_once_or_none_are_refused_saying_what_to_send() -> None:
    with pytest.raises(OAuthError) as twice:
        client_credentials(basic("bk_test_abcdefgh", "x"), _params(client_id="bk_test_abcdefgh", client_secret="x"))
    assert (twice.value.error, twice.value.description) == (
        "invalid_request", "the client authenticated twice (Authorization header and client_secret); use only one")
    for params in (_params(), _params(client_secret="x")):  # a posted secret without its client_id is none
        with pytest.raises(OAuthError) as nothing:
            client_credentials(None, params)
        assert (nothing.value.error, nothing.value.audit_reason) == ("invalid_client", "no_credentials")
        assert nothing.value.description == (
            "no client authentication: send Authorization: Basic base64(api_key:secret_key)")
