"""The built-in PKI: a certificate authority per environment, client certificates for M2M users, thumbprints.

The names below are loaded on first use (PEP 562): the guard needs only `thumbprints`, and must not pull the
certificate service, its store and the vault in with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankgate.pki.authority import CertificateAuthority, CertificateRequestError
    from bankgate.pki.certificates import (
        CertificateNotFoundError,
        CertificateRecord,
        CertificateService,
        IssuedCertificate,
    )
    from bankgate.pki.thumbprints import thumbprint_sha1, x5t_s256

__all__ = [
    "CertificateAuthority",
    "CertificateNotFoundError",
    "CertificateRecord",
    "CertificateRequestError",
    "CertificateService",
    "IssuedCertificate",
    "thumbprint_sha1",
    "x5t_s256",
]

_MODULE_OF = {
    "CertificateAuthority": "authority",
    "CertificateRequestError": "authority",
    "CertificateNotFoundError": "certificates",
    "CertificateRecord": "certificates",
    "CertificateService": "certificates",
    "IssuedCertificate": "certificates",
    "thumbprint_sha1": "thumbprints",
    "x5t_s256": "thumbprints",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'bankgate.pki' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bankgate.pki.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
