"""Client certificates for mutual TLS: a PEM pair or a PKCS#12 (.p12/.pfx) file with its password, presented on the
token call and on every API call (the certificate style requires it, in the sandbox too)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bankgate.client._errors import MissingDependency

__all__ = ["CertInput", "ClientCertificate", "VerifyInput", "build_ssl_context"]

VerifyInput = bool | str | os.PathLike[str] | ssl.SSLContext


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate and its private key.

    Build with `ClientCertificate.from_pem(cert, key)` or `ClientCertificate.from_pkcs12(path, password)`. A PKCS#12
    key is never written to disk in clear: `ssl` can only load files, so it goes to a 0600 temporary file encrypted
    with a random one-time password, deleted as soon as it is loaded.
    """

    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    key_password: bytes | None = field(default=None, repr=False)
    source: str = ""
    #: The files the pair was read from, loaded from there as they are (no copy of the key is made).
    files: tuple[str, str] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"ClientCertificate(source={self.source!r}, sha256={self.fingerprint[:16]}…)"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate PEM: part of the token cache key (never the key)."""
        return hashlib.sha256(self.cert_pem).hexdigest()

    @classmethod
    def from_pem(cls, cert: str | os.PathLike[str], key: str | os.PathLike[str] | None = None,
                 password: str | bytes | None = None) -> ClientCertificate:
        """From a certificate PEM file and its key PEM file (or one file holding both)."""
        cert_pem = Path(cert).read_bytes()
        key_pem = Path(key).read_bytes() if key is not None else cert_pem
        secret = password.encode() if isinstance(password, str) else password
        return cls(cert_pem, key_pem, secret, str(cert), (os.fspath(cert), os.fspath(key if key is not None else cert)))

    @classmethod
    def from_pkcs12(cls, data: str | os.PathLike[str] | bytes, password: str | bytes | None) -> ClientCertificate:
        """From a PKCS#12 file (path or bytes) and its password; needs the `cryptography` package."""
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.serialization import pkcs12
        except ImportError as exc:
            raise MissingDependency("cryptography", "a PKCS#12 client certificate", extra="pkcs12") from exc
        raw = data if isinstance(data, bytes) else Path(data).read_bytes()
        secret = password.encode() if isinstance(password, str) else password
        try:
            key, certificate, chain = pkcs12.load_key_and_certificates(raw, secret)
        except ValueError:
            raise ValueError("cannot open the PKCS#12 file: wrong password or not a PKCS#12 file") from None
        if key is None or certificate is None:
            raise ValueError("the PKCS#12 file holds no certificate with its private key")
        one_time = secrets.token_urlsafe(24).encode()
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM) + b"".join(
            extra.public_bytes(serialization.Encoding.PEM) for extra in chain or ())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(one_time))
        return cls(cert_pem, key_pem, one_time, "<pkcs12>" if isinstance(data, bytes) else str(data))

    def load_into(self, context: ssl.SSLContext) -> None:
        """Load the pair into `context`: from the files it was read from, else through 0600 temporary files deleted
        at once (a PKCS#12 key is written there encrypted under its one-time password)."""
        if self.files is not None:
            self._load(context, *self.files)
            return
        paths: list[str] = []
        try:
            for content in (self.cert_pem, self.key_pem):
                fd, path = tempfile.mkstemp(prefix="bankgate-", suffix=".pem")
                paths.append(path)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
            self._load(context, paths[0], paths[1])
        finally:
            for path in paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _load(self, context: ssl.SSLContext, cert_path: str, key_path: str) -> None:
        try:
            context.load_cert_chain(cert_path, key_path, password=self.key_password)
        except ssl.SSLError:
            raise ValueError(f"cannot load the client certificate {self.source!r}: the key does not match the "
                             "certificate, or its password is wrong") from None


CertInput = ClientCertificate | tuple[str, str] | str | os.PathLike[str] | None


def as_certificate(cert: Any, password: str | bytes | None = None) -> ClientCertificate | None:
    """Accept a `ClientCertificate`, a `(cert.pem, key.pem)` pair, a `.p12`/`.pfx` path or a combined PEM path."""
    if cert is None or isinstance(cert, ClientCertificate):
        return cert
    if isinstance(cert, tuple | list):
        return ClientCertificate.from_pem(cert[0], cert[1], password)
    if str(cert).lower().endswith((".p12", ".pfx")):
        return ClientCertificate.from_pkcs12(cert, password)
    return ClientCertificate.from_pem(cert, None, password)


def build_ssl_context(verify: VerifyInput = True, cert: ClientCertificate | None = None) -> ssl.SSLContext:
    """An `SSLContext` trusting `verify` (True: the system/certifi roots; a path: that CA bundle; False: nothing is
    checked, for local tests only) and presenting `cert`."""
    if isinstance(verify, ssl.SSLContext):
        context = verify
    elif verify is True:
        import httpx

        context = httpx.create_ssl_context()
    elif verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=os.fspath(verify))
    if cert is not None:
        cert.load_into(context)
    return context
