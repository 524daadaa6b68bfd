"""The built-in certificate authority of one environment, in memory: it signs client certificates (the seed's M2M
certificates, presented over mutual TLS) and the server certificate of `bankgate serve --tls`.

Certificates follow RFC 5280 profiles that strict verifiers accept too (Python 3.13's VERIFY_X509_STRICT, Go,
browsers): the CA has critical basicConstraints and keyUsage plus a subject key identifier; every leaf carries an
authority key identifier, an extended key usage and is never valid beyond its CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_VALIDITY_DAYS",
    "MAX_LEAF_DAYS",
    "CertificateAuthority",
    "CertificateRequestError",
    "PublicKey",
    "check_public_key",
    "load_authority",
    "new_authority",
]

CA_VALIDITY_DAYS = 3650
MAX_LEAF_DAYS = 3650
#: Leaves start a little in the past, so a client whose clock lags does not see a "not yet valid" certificate.
BACKDATE = dt.timedelta(minutes=5)
#: RFC 5280 upper bounds (ub-common-name, ub-organization-name).
NAME_LIMIT = 64

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class CertificateRequestError(ValueError):
    """A certificate signing request (or the key in it) cannot be used; the message says why."""


def check_public_key(key: object) -> PublicKey:
    """The key types a client certificate may carry: RSA >= 2048 bits, EC P-256/P-384/P-521, Ed25519."""
    if isinstance(key, rsa.RSAPublicKey):
        if not 2048 <= key.key_size <= 8192:
            raise CertificateRequestError(f"an RSA key must have 2048 to 8192 bits, not {key.key_size}")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise CertificateRequestError(
                f"elliptic curve {key.curve.name} is not accepted; use P-256, P-384 or P-521"
            )
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise CertificateRequestError("the key must be RSA (2048 bits or more), EC P-256/P-384/P-521 or Ed25519")


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name[:NAME_LIMIT])]
    if organization and organization.strip():
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization.strip()[:NAME_LIMIT]))
    return x509.Name(attributes)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    environment: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def _leaf(
        self, subject: x509.Name, public_key: PublicKey, *, days: int, now: dt.datetime
    ) -> x509.CertificateBuilder:
        if not 1 <= days <= MAX_LEAF_DAYS:
            raise ValueError(f"a certificate is valid for 1 to {MAX_LEAF_DAYS} days, not {days}")
        not_after = now + dt.timedelta(days=days)
        if not_after > self.not_after:
            raise ValueError(
                f"a certificate valid for {days} days would outlive the {self.environment} CA, which expires on "
                f"{self.not_after:%Y-%m-%d}; choose fewer days"
            )
        ca_key_id = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False
            )
        )

    def sign_client(
        self, public_key: PublicKey, *, common_name: str, organization: str | None, days: int, now: dt.datetime
    ) -> x509.Certificate:
        """A TLS client certificate (extendedKeyUsage clientAuth) for `common_name`."""
        builder = (
            self._leaf(_name(common_name, organization), public_key, days=days, now=now)
            .add_extension(_usage(public_key, server=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        return builder.sign(self.private_key, hashes.SHA256())

    def sign_server(
        self, public_key: PublicKey, *, hostnames: list[str], days: int, now: dt.datetime
    ) -> x509.Certificate:
        """A TLS server certificate (extendedKeyUsage serverAuth) naming every host in `hostnames`."""
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hostnames):  # ordered, without repeats
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = (
            self._leaf(_name(hostnames[0], "bankgate"), public_key, days=days, now=now)
            .add_extension(_usage(public_key, server=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
        )
        return builder.sign(self.private_key, hashes.SHA256())


def _usage(public_key: PublicKey, *, server: bool) -> x509.KeyUsage:
    # A TLS server with an RSA key may be asked for RSA key transport (TLS 1.2), which needs keyEncipherment.
    encipher = server and isinstance(public_key, rsa.RSAPublicKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def new_authority(environment: str, *, now: dt.datetime | None = None) -> CertificateAuthority:
    """A fresh self-signed CA (EC P-256). The random suffix keeps two installations' CA names apart."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"bankgate {environment} CA {secrets.token_hex(4)}", "bankgate")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(environment, certificate, key)


def load_authority(environment: str, certificate_pem: str, private_key_der: bytes) -> CertificateAuthority:
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    key = serialization.load_der_private_key(private_key_der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"the {environment} CA key is not an EC key")
    return CertificateAuthority(environment, certificate, key)
