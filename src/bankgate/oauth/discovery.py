"""Authorization server metadata (RFC 8414) and the JWKS (RFC 7517) resource servers verify tokens with."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from bankgate.oauth.grants import GRANTS
from bankgate.oauth.request import CLIENT_AUTH
from bankgate.openapi import openapi_document
from bankgate.runtime import Runtime

__all__ = ["jwks_endpoint", "metadata_endpoint", "openapi_endpoint"]


async def jwks_endpoint(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    return JSONResponse(
        runtime.keys.jwks,
        headers={"cache-control": "public, max-age=300"},
        media_type="application/jwk-set+json",
    )


async def metadata_endpoint(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    base = runtime.issuer_url
    # The token, introspection and revocation endpoints authenticate clients the same way (`OAuthEndpoint`).
    auth_methods = CLIENT_AUTH.names()
    return JSONResponse(
        {
            "issuer": base,
            "token_endpoint": f"{base}/oauth/token",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "introspection_endpoint": f"{base}/oauth/introspect",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "grant_types_supported": GRANTS.names(),
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "access_token_signing_alg_values_supported": sorted({k.alg for k in runtime.keys.by_kid.values()}),
            "tls_client_certificate_bound_access_tokens": True,
            "environment": runtime.settings.environment,
        },
        headers={"cache-control": "public, max-age=300"},
    )


async def openapi_endpoint(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    return JSONResponse(openapi_document(runtime.issuer_url, token_status=runtime.settings.token_status))
