"""The built-in PKI: a certificate authority per environment, client certificates for M2M users, thumbprints."""

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
