"""Discovery: authorization server metadata (RFC 8414), the JWKS (RFC 7517), health, and unknown paths."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import Server

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
ENDPOINTS = ("token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint")


@pytest.fixture(scope="module")
def metadata(shared: Server) -> dict[str, Any]:
    response = shared.http.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


# -- metadata --------------------------------------------------------------------------------------


def test_metadata_has_the_rfc8414_required_fields(shared: Server, metadata: dict[str, Any]) -> None:
    for name in ("issuer", "token_endpoint", "jwks_uri", "response_types_supported"):
        assert name in metadata, name
    issuer = urlsplit(metadata["issuer"])
    assert issuer.scheme in ("http", "https")
    assert not issuer.query and not issuer.fragment
    assert metadata["issuer"] == shared.base_url


def test_metadata_endpoints_are_absolute_urls_under_the_issuer(metadata: dict[str, Any]) -> None:
    issuer = metadata["issuer"].rstrip("/")
    for name in ENDPOINTS:
        url = metadata[name]
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https") and parts.netloc, (name, url)
        assert url.startswith(issuer + "/"), (name, url)


def test_metadata_offers_only_the_client_credentials_grant(metadata: dict[str, Any]) -> None:
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert "client_secret_basic" in metadata["token_endpoint_auth_methods_supported"]


def test_metadata_endpoints_answer_where_they_say(shared: Server, metadata: dict[str, Any]) -> None:
    assert shared.http.get(metadata["jwks_uri"]).json()["keys"]
    for name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        response = shared.http.post(metadata[name], data={"grant_type": "client_credentials", "token": "x"})
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"] == "invalid_client"


def test_metadata_issuer_is_the_token_issuer(shared: Server, metadata: dict[str, Any]) -> None:
    client = shared.create_client("app_1")
    access_token = shared.token(client).json()["access_token"]
    keys = KeySet.import_key_set(shared.http.get("/.well-known/jwks.json").json())

    assert jwt.decode(access_token, keys, algorithms=["RS256"]).claims["iss"] == metadata["issuer"]


# -- JWKS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alg", "kty"), [("RS256", "RSA"), ("ES256", "EC"), ("EdDSA", "OKP")])
def test_jwks_publishes_only_public_key_members(server_factory: Any, alg: str, kty: str) -> None:
    server: Server = server_factory({"BANKGATE_SIGNING_ALG": alg})
    response = server.http.get("/.well-known/jwks.json")

    assert response.status_code == 200, response.text
    assert "json" in response.headers["content-type"]
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key), key
        assert key["kty"] == kty
        assert key["alg"] == alg
        assert key.get("use", "sig") == "sig"
        assert key["kid"]
    assert len({key["kid"] for key in keys}) == len(keys)
    active = server.http.get("/healthz").json()["signing_kid"]
    assert active in {key["kid"] for key in keys}


def test_jwks_key_ids_are_rfc7638_thumbprints(shared: Server) -> None:
    document = shared.http.get("/.well-known/jwks.json").json()
    for key in KeySet.import_key_set(document).keys:
        assert key.kid == key.thumbprint()


# -- health and unknown paths ----------------------------------------------------------------------


def test_healthz_reports_ok(shared: Server) -> None:
    response = shared.http.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["status"] == "ok"
    assert response.json()["environment"] == "sandbox"


def test_unknown_path_is_404_json(shared: Server) -> None:
    response = shared.http.get("/no/such/thing")
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]
    assert response.json()["error_description"]


def test_wrong_method_on_a_discovery_path_is_405_json(shared: Server) -> None:
    response = shared.http.post("/.well-known/jwks.json")
    assert response.status_code == 405, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "GET" in response.headers.get("allow", "")


# -- /docs: the document as an interactive page ---------------------------------------------------------------------


def test_the_api_page_loads_swagger_ui_from_this_server_with_no_inline_script(shared: Server) -> None:
    import re

    from bankgate.apidocs import CSP

    page = shared.http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP and "script-src 'self';" in CSP
    assert page.headers["x-frame-options"] == "DENY"
    scripts = re.findall(r"<script([^>]*)>", page.text)
    assert len(scripts) == 2 and all(' src="/docs/static/' in attributes for attributes in scripts)
    assert "http://" not in page.text and "https://" not in page.text, "nothing from another origin"
    for url in re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page.text):
        asset = shared.http.get(url)
        assert asset.status_code == 200 and asset.content, url
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    init = shared.http.get("/docs/static/init.js")
    assert 'url: "/openapi.json"' in init.text and init.headers["content-type"].startswith("text/javascript")


def test_the_api_page_serves_only_its_own_files(shared: Server) -> None:
    for name in ("index.html", "oauth2-redirect.html", "swagger-editor.js", "..%2Fcore.py", "LICENSE"):
        answer = shared.http.get(f"/docs/static/{name}")
        assert answer.status_code == 404, name
        assert "the page is /docs" in answer.text
