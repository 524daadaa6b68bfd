"""The baseline: a bare Starlette endpoint that signs a JWT with PyJWT and nothing else (no auth, no storage).

bankgate's token endpoint is measured against it in the same run, on the same core.
"""

from __future__ import annotations

import json
import os
import secrets
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ALG = os.environ.get("BASELINE_ALG", "RS256")
KEY = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if ALG == "RS256"
    else ec.generate_private_key(ec.SECP256R1())
)


async def token(request: Request) -> Response:
    await request.body()
    now = int(time.time())
    claims = {"iss": "http://127.0.0.1", "sub": "client", "aud": "api", "exp": now + 7200, "iat": now,
              "nbf": now, "jti": secrets.token_urlsafe(18), "scope": "app_1"}
    body = json.dumps({"access_token": jwt.encode(claims, KEY, algorithm=ALG, headers={"kid": "k"}),
                       "token_type": "Bearer", "expires_in": 7200, "scope": "app_1", "created_at": now})
    return Response(body, 201, media_type="application/json")


app = Starlette(routes=[Route("/oauth/token", token, methods=["POST"])])
