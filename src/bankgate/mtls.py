"""Mutual TLS under uvicorn: the client certificate of the connection in every request's ASGI scope.

No released uvicorn passes the client certificate to the application. These subclasses of uvicorn's two HTTP/1.1
protocols (h11 and httptools) read it once per connection, after the TLS handshake (asyncio and uvloop call
`connection_made` only once the handshake is complete), and put it in the standard ASGI TLS extension
(asgiref `specs/tls.rst`, version 0.2) of each request:

    scope["extensions"]["tls"] = {"server_cert": None, "client_cert_chain": [PEM], "client_cert_name": RFC 4514,
                                  "client_cert_error": None, "tls_version": 0x0304, "cipher_suite": 0x1302}

Python's `ssl` verifies a presented certificate during the handshake (`CERT_OPTIONAL` refuses an untrusted one),
so `client_cert_error` is always None. Plain-HTTP connections get no extension, as the spec demands. WebSocket
upgrades are not covered (uvicorn hands them to another protocol class; bankgate serves none).

Select them with `uvicorn.run(..., http="bankgate.mtls:HttpToolsTLSProtocol")` (or `H11TLSProtocol`).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["PROTOCOLS", "H11TLSProtocol", "HttpToolsTLSProtocol", "tls_extension"]

#: What `SSLObject.version()` says -> the TLS protocol version number the ASGI spec asks for.
_TLS_VERSIONS = {"SSLv3": 0x0300, "TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
#: OpenSSL cipher name -> IANA cipher suite number, learnt from the server's contexts as connections arrive.
_CIPHER_IDS: dict[str, int] = {}

ASGIApp = Any


def _cipher_suite(ssl_object: ssl.SSLObject) -> int | None:
    cipher = ssl_object.cipher()
    if not cipher:
        return None
    name = cipher[0]
    if name not in _CIPHER_IDS:
        # `get_ciphers()` ids are OpenSSL's: 0x0300XXXX, where the low 16 bits are the IANA number.
        for entry in ssl_object.context.get_ciphers():
            _CIPHER_IDS.setdefault(entry["name"], entry["id"] & 0xFFFF)
    return _CIPHER_IDS.get(name)


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension of a connection; None when the connection is not TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        from cryptography import x509  # here: uvicorn workers import this module before they answer health checks

        chain.append(ssl.DER_cert_to_PEM_cert(der))
        name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_suite(ssl_object),
    }


def _with_tls(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    """`app` for one connection: every request scope gets its own copy of the connection's TLS extension."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        extensions = scope.setdefault("extensions", {})
        extensions["tls"] = {**tls, "client_cert_chain": list(tls["client_cert_chain"])}
        await app(scope, receive, send)

    return asgi


def _dropped_when_idle(protocol: H11Protocol | HttpToolsProtocol) -> bool:
    """At shutdown, drop an idle TLS connection at once (as a plain-HTTP one is closed at once).

    A graceful TLS close sends close_notify and waits, up to the event loop's 30 s SSL shutdown timeout, for the
    peer's: a client keeping the connection idle in its pool never reads it, so never answers, and uvicorn would
    wait for that connection before it exits. A connection with a response under way is left to finish.
    """
    transport = protocol.transport
    if transport.get_extra_info("ssl_object") is None:
        return False
    cycle = protocol.cycle
    if cycle is None or cycle.response_complete or transport.is_closing():
        transport.abort()
        return True
    return False


class H11TLSProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the ASGI TLS extension on TLS connections."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream protocol always gets a Transport
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _with_tls(self.app, tls)

    def shutdown(self) -> None:
        if not _dropped_when_idle(self):
            super().shutdown()


class HttpToolsTLSProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the ASGI TLS extension on TLS connections."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream protocol always gets a Transport
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _with_tls(self.app, tls)

    def shutdown(self) -> None:
        if not _dropped_when_idle(self):
            super().shutdown()


#: `--http` choice -> the uvicorn `http=` import string.
PROTOCOLS = {
    "h11": "bankgate.mtls:H11TLSProtocol",
    "httptools": "bankgate.mtls:HttpToolsTLSProtocol",
}
