"""Compact JWS serialisation (RFC 7515 §7.1) for the token endpoint's hot path, over any `Signer`.

Written here rather than calling `jwt.encode` because the token endpoint's budget is a few microseconds beyond the
signature itself: PyJWT re-serialises and re-encodes the same protected header and re-checks the key on every call.
This encodes the header once per key and hands the signing input to the key store's `Signer`, which holds (or
reaches) the private key. Verification everywhere (introspection, revocation, the tests) still goes through PyJWT
or joserfc, which check this output independently.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson

from bankgate.tokens.keys import Signer

__all__ = ["CompactSigner"]


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class CompactSigner:
    """Signs claims as `header.payload.signature` under one signer, the header encoded once."""

    __slots__ = ("_prefix", "_sign")

    def __init__(self, signer: Signer, typ: str = "at+jwt") -> None:
        header = json.dumps({"alg": signer.alg, "kid": signer.kid, "typ": typ}, separators=(",", ":")).encode()
        self._prefix = _b64(header) + b"."
        self._sign = signer.sign

    def __repr__(self) -> str:
        return "CompactSigner(<key hidden>)"

    def sign(self, claims: dict[str, Any]) -> str:
        signing_input = self._prefix + _b64(orjson.dumps(claims))
        return (signing_input + b"." + _b64(self._sign(signing_input))).decode("ascii")
