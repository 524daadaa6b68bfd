"""`Authorization: Basic`, read one way on every route (RFC 7617, RFC 6749 §2.3.1).

The rule, the same for a client's key pair (`/oauth/token`, introspection, revocation, the guard's Basic clients)
and for an M2M user's username and password (authorize, the certificate endpoints):

* the scheme is `Basic`, any case; the credentials are base64 (RFC 4648, padding included) of UTF-8 text;
* the user-id runs to the first colon and is not empty; everything after the colon is the secret;
* both halves are percent-decoded, as RFC 6749 §2.3.1 has a client form-urlencode them before base64 (a no-op for
  bankgate's own keys and secrets, which hold neither `%` nor `+`). A `+` stays a `+`: clients that send a raw
  secret holding one far outnumber those that encode a space as `+`. A literal `%` followed by two hex digits in a
  password is therefore sent as `%25`;
* an empty secret (`api_key:`) is well-formed: it is a failed authentication (401, counted by the throttle like
  any wrong secret), never a 400 that would tell a guesser the key exists or not any differently.

Anything else is `MalformedBasic` (each route answers 400 in its own format).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = ["BasicCredentials", "MalformedBasic", "NotBasic", "decode_credentials", "parse_basic"]


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """The user-id (API key or username) and the secret (secret key or password) of one Basic header."""

    user_id: str
    secret: str = field(repr=False)


class MalformedBasic(ValueError):
    """Basic credentials that cannot be read; the message says what to send (never echoes the value)."""


class NotBasic(ValueError):
    """Another authentication scheme; `scheme` is its name (at most 20 characters)."""

    def __init__(self, scheme: str) -> None:
        super().__init__(f"the {scheme or 'empty'} authentication scheme is not Basic")
        self.scheme = scheme


def parse_basic(authorization: str, *, what: str = "user:password") -> BasicCredentials:
    """The credentials of `Authorization: Basic …` (see the module's docstring for the rule); `what` names the
    two halves in error messages (`api_key:secret_key`)."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise NotBasic(scheme[:20])
    return decode_credentials(encoded.strip(), what=what)


def decode_credentials(encoded: str, *, what: str = "user:password") -> BasicCredentials:
    """The credentials in the token68 part of a Basic header (the text after `Basic `)."""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise MalformedBasic(f"the Basic credentials are not base64 of UTF-8 text: send base64({what})") from None
    user_id, colon, secret = decoded.partition(":")
    if not colon or not user_id:
        raise MalformedBasic(f"the Basic credentials must be {what}, separated by a colon")
    if "%" in decoded:
        try:
            user_id = unquote(user_id, errors="strict")
            secret = unquote(secret, errors="strict")
        except UnicodeDecodeError:
            raise MalformedBasic(f"the Basic credentials are not URL-encoded UTF-8: send base64({what})") from None
        if not user_id:
            raise MalformedBasic(f"the Basic credentials must be {what}, separated by a colon")
    return BasicCredentials(user_id, secret)
