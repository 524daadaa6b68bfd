"""Compact JWS signing (RFC 7515) for the token endpoint's hot path.

Written here rather than calling `jwt.encode` because the token endpoint's budget is a few microseconds beyond the
signature itself: PyJWT re-serialises and re-encodes the same protected header and re-checks the key on every call.
This signer encodes the header once per key and signs with `cryptography` directly. Verification everywhere
(introspection, revocation, the tests) still goes through PyJWT or joserfc, which check this output independently.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["CompactSigner"]


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _signature_function(alg: str, key: Any) -> Callable[[bytes], bytes]:
    if alg == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
        return lambda data: key.sign(data, pkcs1, sha256)
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = ec.ECDSA(hashes.SHA256())

        def sign_es256(data: bytes) -> bytes:
            # JWS wants the raw r || s pair (RFC 7518 §3.4), not the DER that OpenSSL produces.
            r, s = decode_dss_signature(key.sign(data, ecdsa))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return sign_es256
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    raise ValueError(f"key type {type(key).__name__} cannot sign {alg}")


class CompactSigner:
    """Signs claims as `header.payload.signature` under one key, the header encoded once."""

    __slots__ = ("_prefix", "_sign")

    def __init__(self, alg: str, kid: str, key: Any, typ: str = "at+jwt") -> None:
        header = json.dumps({"alg": alg, "kid": kid, "typ": typ}, separators=(",", ":")).encode()
        self._prefix = _b64(header) + b"."
        self._sign = _signature_function(alg, key)

    def __repr__(self) -> str:
        return "CompactSigner(<key hidden>)"

    def sign(self, claims: dict[str, Any]) -> str:
        signing_input = self._prefix + _b64(orjson.dumps(claims))
        return (signing_input + b"." + _b64(self._sign(signing_input))).decode("ascii")
