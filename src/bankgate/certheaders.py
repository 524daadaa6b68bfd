"""The client certificate a request presents, decided in one place.

1. Direct mutual TLS: the ASGI TLS extension (`scope["extensions"]["tls"]["client_cert_chain"][0]`, filled in by
   `bankgate.mtls` or any server implementing asgiref's TLS extension).
2. Behind a TLS-terminating proxy, and only when the connection comes from a configured trusted proxy: the header
   that proxy forwards the certificate in. A header from anyone else is ignored, whatever it holds.

Forwarding formats (a certificate is always checked to parse as X.509 before it is returned):

* nginx: `$ssl_client_escaped_cert`, URL-encoded PEM, in `X-SSL-Client-Cert` (the name is configurable).
* Envoy: `x-forwarded-client-cert` (XFCC), comma-separated elements of `;`-separated `Key=value` pairs, values
  double-quoted when they hold `,;=` with `\\"` escaping a quote. Each proxy appends its own element, so only the
  last one (added by the trusted proxy next to bankgate) counts: its `Cert` (URL-encoded PEM), else the first
  certificate of its `Chain`; when it has a `Hash` (hex SHA-256 of the DER), that must match.
* Traefik: `X-Forwarded-Tls-Client-Cert`, the base64 DER of each certificate (PEM without armour or newlines),
  comma-separated, leaf first; older versions URL-encode the whole value.
* AWS ALB: `X-Amzn-Mtls-Clientcert-Leaf` (verify mode) or `X-Amzn-Mtls-Clientcert` (passthrough, whole chain):
  URL-encoded PEM whose `+`, `=` and `/` are left as they are, so it is path-unescaped (`+` is not a space).
* Caddy: `{http.request.tls.client.certificate_der_base64}`, base64 DER, in `X-Client-Cert-Der` (configurable).

Malformed input gives None, never an exception: a request with a garbled header is a request without a
certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ssl
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bankgate.net import TrustedProxies

__all__ = ["DEFAULT_HEADERS", "ClientCertificateSource", "HeaderStyle", "parse_forwarded"]

HeaderStyle = Literal["nginx", "envoy", "traefik", "alb", "caddy"]
STYLES: tuple[str, ...] = get_args(HeaderStyle)

#: The header names each style reads, in order of preference (lower case, as in ASGI scopes).
DEFAULT_HEADERS: dict[str, tuple[str, ...]] = {
    "nginx": ("x-ssl-client-cert",),
    "envoy": ("x-forwarded-client-cert",),
    "traefik": ("x-forwarded-tls-client-cert",),
    "alb": ("x-amzn-mtls-clientcert-leaf", "x-amzn-mtls-clientcert"),
    "caddy": ("x-client-cert-der",),
}
#: Longer values are refused before any parsing: a certificate chain fits easily, a flood does not.
MAX_VALUE = 64 * 1024
_PARSE_ERRORS = (ValueError, TypeError, IndexError, UnicodeError, binascii.Error)


def _checked_der(der: bytes) -> bytes | None:
    """`der` when it parses as an X.509 certificate and has no trailing bytes, else None."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        if certificate.public_bytes(serialization.Encoding.DER) != der:
            return None
    except _PARSE_ERRORS:
        return None
    return der


def _first_pem(text: str) -> bytes | None:
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("ascii"))
    except _PARSE_ERRORS:
        return None
    return certificates[0].public_bytes(serialization.Encoding.DER) if certificates else None


def _b64_der(text: str) -> bytes | None:
    try:
        der = base64.b64decode(text.strip(), validate=True)
    except _PARSE_ERRORS:
        return None
    return _checked_der(der) if der else None


def _split_unquoted(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes (backslash escapes inside them), keeping quotes and escapes.

    Hand-written because XFCC is Envoy's own syntax: neither `http.cookies`, `email` header parsing nor `csv`
    handles its `\\"` escapes and `Key="a,b";Key=c` mix.
    """
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted or escaped:
        raise ValueError("unbalanced quotes")
    parts.append("".join(current))
    return parts


def _unquote_xfcc(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def _envoy(value: str) -> bytes | None:
    elements = _split_unquoted(value, ",")
    pairs: dict[str, str] = {}
    for pair in _split_unquoted(elements[-1], ";"):  # the element the trusted proxy appended
        key, sep, raw = pair.partition("=")
        if not sep:
            return None
        key = key.strip().lower()
        if key in ("cert", "chain", "hash") and key in pairs:
            return None  # one element describes one certificate
        pairs[key] = _unquote_xfcc(raw)
    if "cert" in pairs:
        der = _first_pem(unquote(pairs["cert"]))
    elif "chain" in pairs:
        der = _first_pem(unquote(pairs["chain"]))
    else:
        return None
    if der is None:
        return None
    expected = pairs.get("hash")
    if expected is not None and not hmac.compare_digest(hashlib.sha256(der).hexdigest(), expected.lower()):
        return None
    return der


def parse_forwarded(style: str, values: dict[str, list[str]]) -> bytes | None:
    """The DER certificate in a proxy's headers (`values`: header name -> its values), or None.

    Single-valued headers repeated in one request are ambiguous and refused; XFCC lines are joined with commas
    as HTTP lists are.
    """
    try:
        if style == "envoy":
            lines = next((v for v in values.values() if v), [])
            return _envoy(",".join(lines)) if lines else None
        for found in values.values():  # in order of preference
            if not found:
                continue
            if len(found) != 1:
                return None
            value = found[0].strip()
            if not value:
                continue
            if style in ("nginx", "alb"):
                # unquote, not unquote_plus: ALB leaves '+' of base64 unescaped, and nginx escapes it as %2B.
                return _first_pem(unquote(value))
            if style == "traefik":
                first = unquote(value).split(",")[0]
                return _b64_der(first)
            if style == "caddy":
                return _b64_der(value)
            return None
    except _PARSE_ERRORS:
        return None
    return None


class ClientCertificateSource:
    """Where the client certificate of a request comes from; see the module docstring.

    `header` is the style of the trusted proxy (None: direct TLS only); `name` overrides the header name it
    forwards in (nginx and Caddy let the operator choose it).
    """

    def __init__(self, proxies: TrustedProxies, header: str | None, *, name: str | None = None) -> None:
        if header is not None and header not in STYLES:
            raise ValueError(f"client certificate header style {header!r} is not one of: {', '.join(STYLES)}")
        self._proxies = proxies
        self.style = header
        names: Iterable[str] = ((name,) if name else DEFAULT_HEADERS[header]) if header else ()
        self.header_names: tuple[bytes, ...] = tuple(n.strip().lower().encode("latin-1") for n in names)

    def __repr__(self) -> str:
        return f"ClientCertificateSource(style={self.style!r}, headers={self.header_names!r})"

    def der(self, scope: Mapping[str, Any]) -> bytes | None:
        """The DER bytes of the certificate the request presents, or None."""
        tls = (scope.get("extensions") or {}).get("tls")
        if tls:
            chain = tls.get("client_cert_chain") or ()
            if chain:
                try:
                    return _checked_der(ssl.PEM_cert_to_DER_cert(chain[0]))
                except _PARSE_ERRORS:
                    return None
        if not self.header_names:
            return None
        client = scope.get("client")
        if not client or not self._proxies.trusts(client[0]):
            return None
        values: dict[str, list[str]] = {name.decode("latin-1"): [] for name in self.header_names}
        for name, value in scope.get("headers", ()):
            if name in self.header_names:
                if len(value) > MAX_VALUE:
                    return None
                values[name.decode("latin-1")].append(value.decode("latin-1"))
        return parse_forwarded(self.style or "", values)
