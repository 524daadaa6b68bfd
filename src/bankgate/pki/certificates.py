"""Client certificates of M2M users (seed 000: "a new M2M user created, including requesting a new certificate ...
download the certificate that contains the Thumbprint"), issued by the environment's built-in CA.

Only public parts are stored: the certificate, its thumbprints and its status. A generated private key leaves this
module once, in the `IssuedCertificate` handed to whoever asked for it (as PEM and in a password-protected PKCS#12
bundle); the CA's own key is stored encrypted with the vault. A certificate is recognised by the SHA-256 of its
exact DER bytes (RFC 8705 `x5t#S256`), so only a certificate this service issued can ever match.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bankgate.changes import ChangeFeed
from bankgate.clock import SYSTEM, Clock
from bankgate.credentials.users import UserRecord
from bankgate.pki.authority import (
    CertificateAuthority,
    CertificateRequestError,
    check_public_key,
    load_authority,
    new_authority,
)
from bankgate.pki.thumbprints import thumbprint_sha1, x5t_s256
from bankgate.store import Store, schema
from bankgate.store.paging import Keyset, Page, fetch_page
from bankgate.tokens.revocation import RevocationList
from bankgate.vault import Vault

__all__ = [
    "ENVIRONMENTS",
    "CertificateNotFoundError",
    "CertificateRecord",
    "CertificateService",
    "IssuedCertificate",
    "KeyType",
    "normalise_serial",
]

ENVIRONMENTS = ("sandbox", "production")
KeyType = Literal["ec", "rsa"]
#: PBKDF2 rounds protecting a PKCS#12 bundle (OpenSSL 3 uses 2048; the password is random, so this is plenty).
PKCS12_KDF_ROUNDS = 50_000
SERVER_CERT_DAYS = 365
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class CertificateNotFoundError(LookupError):
    pass


def _serial_text(number: int) -> str:
    """Upper-case hex with an even number of digits, as `openssl x509 -serial` prints it."""
    text = format(number, "X")
    return "0" + text if len(text) % 2 else text


def normalise_serial(text: str) -> str:
    """Accept a serial however it was copied (`0a:1b`, `0x0A1B`, `A1B`) and return the stored form."""
    cleaned = re.sub(r"[\s:]", "", text).removeprefix("0x").removeprefix("0X")
    if not cleaned or len(cleaned) > 40 or not re.fullmatch(r"[0-9A-Fa-f]+", cleaned):
        raise CertificateNotFoundError(f"{text[:60]!r} is not a certificate serial number (hex digits)")
    return _serial_text(int(cleaned, 16))


def _ca_context(environment: str) -> bytes:
    return b"bankgate certificate authority " + environment.encode()


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    serial: str
    user_id: str
    environment: str
    thumbprint: str
    x5t_s256: str
    subject: str
    not_before: float
    not_after: float
    certificate_pem: str = field(repr=False)
    status: Literal["valid", "revoked"]
    revoked_at: float | None
    created_at: float

    def usable_at(self, now: float) -> bool:
        """Not revoked, and `now` lies within the certificate's validity."""
        return self.status == "valid" and self.not_before <= now < self.not_after

    @property
    def der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode("ascii")).public_bytes(
            serialization.Encoding.DER
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "user_id": self.user_id,
            "environment": self.environment,
            "thumbprint": self.thumbprint,
            "x5t#S256": self.x5t_s256,
            "subject": self.subject,
            "not_before": int(self.not_before),
            "not_after": int(self.not_after),
            "status": self.status,
            "revoked_at": int(self.revoked_at) if self.revoked_at else None,
            "created_at": int(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate as issued: shown once. Without a CSR it also holds the generated private key, as PEM and in a
    PKCS#12 bundle protected by `pkcs12_password`; none of those is stored anywhere by bankgate."""

    record: CertificateRecord
    private_key_pem: str | None = field(default=None, repr=False)
    pkcs12: bytes | None = field(default=None, repr=False)
    pkcs12_password: str | None = field(default=None, repr=False)

    # The certificate's own facts are the record's; these read them through.
    @property
    def serial(self) -> str:
        return self.record.serial

    @property
    def thumbprint(self) -> str:
        return self.record.thumbprint

    @property
    def x5t_s256(self) -> str:
        return self.record.x5t_s256

    @property
    def not_before(self) -> float:
        return self.record.not_before

    @property
    def not_after(self) -> float:
        return self.record.not_after

    @property
    def certificate_pem(self) -> str:
        return self.record.certificate_pem

    def as_json(self) -> dict[str, Any]:
        """Everything the holder receives, secrets included (the PKCS#12 bundle in base64): show it once."""
        body: dict[str, Any] = {
            "serial": self.serial,
            "user_id": self.record.user_id,
            "environment": self.record.environment,
            "subject": self.record.subject,
            "thumbprint": self.thumbprint,
            "x5t#S256": self.x5t_s256,
            "not_before": int(self.not_before),
            "not_after": int(self.not_after),
            "certificate_pem": self.certificate_pem,
        }
        if self.private_key_pem is not None:
            body["private_key_pem"] = self.private_key_pem
        if self.pkcs12 is not None:
            body["pkcs12"] = base64.b64encode(self.pkcs12).decode("ascii")
            body["pkcs12_password"] = self.pkcs12_password
        return body


@dataclass(frozen=True, slots=True)
class _Built:
    certificate: x509.Certificate
    private_key_pem: str | None = field(default=None, repr=False)
    pkcs12: bytes | None = field(default=None, repr=False)
    pkcs12_password: str | None = field(default=None, repr=False)


def _load_csr(csr: bytes) -> x509.CertificateSigningRequest:
    try:
        pem = csr.lstrip().startswith(b"-----BEGIN")
        request = x509.load_pem_x509_csr(csr) if pem else x509.load_der_x509_csr(csr)
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateRequestError("the file is not a certificate signing request (PKCS#10, PEM or DER)") from None
    try:
        valid = request.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CertificateRequestError(
            "the certificate signing request's signature does not verify: it was not signed by the key it carries"
        )
    return request


def _pkcs12(name: str, key: Any, certificate: x509.Certificate, ca: x509.Certificate, password: str) -> bytes:
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(PKCS12_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode())
    )
    return pkcs12.serialize_key_and_certificates(name.encode(), key, certificate, [ca], encryption)


def _build_client(
    ca: CertificateAuthority, user: UserRecord, csr: bytes | None, days: int, key_type: KeyType, now: float
) -> _Built:
    """Runs in a worker thread: key generation, signing and PKCS#12 key derivation are CPU work."""
    when = dt.datetime.fromtimestamp(int(now), dt.UTC)
    if csr is not None:
        public_key = check_public_key(_load_csr(csr).public_key())
        certificate = ca.sign_client(public_key, common_name=user.username, organization=user.name, days=days,
                                     now=when)
        return _Built(certificate)
    if key_type == "rsa":
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(65537, 2048)
    elif key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"key type {key_type!r} is not one of: ec, rsa")
    certificate = ca.sign_client(key.public_key(), common_name=user.username, organization=user.name, days=days,
                                 now=when)
    password = secrets.token_urlsafe(18)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    bundle = _pkcs12(user.username, key, certificate, ca.certificate, password)
    return _Built(certificate, key_pem, bundle, password)


def _check_hostname(host: str) -> str:
    host = host.strip()
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(host):
        raise ValueError(f"hostname {host[:80]!r} is neither a DNS name nor an IP address")
    return host.lower()


class CertificateService:
    """The built-in CA of each environment and the client certificates it issued, in the store."""

    def __init__(
        self,
        store: Store,
        vault: Vault,
        environment: str,
        *,
        changes: ChangeFeed | None = None,
        revocations: RevocationList | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self._store = store
        self._vault = vault
        self._environment = environment
        self._now = clock.now
        self._changes = changes or ChangeFeed(store)
        self._revocations = revocations or RevocationList(store)
        self._authorities: dict[str, CertificateAuthority] = {}
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"CertificateService(environment={self._environment!r})"

    # -- the certificate authority ------------------------------------------------------------------------

    async def ensure_ca(self, environment: str | None = None) -> tuple[CertificateAuthority, bool]:
        """The environment's CA, created on first use; the flag says whether this call created it."""
        env = environment or self._environment
        if env not in ENVIRONMENTS:
            raise ValueError(f"environment {env!r} is not one of: {', '.join(ENVIRONMENTS)}")
        cached = self._authorities.get(env)
        if cached is not None:
            return cached, False
        async with self._lock:
            created = False
            authority = await self._load_ca(env)
            if authority is None:
                fresh = new_authority(env)
                der = fresh.private_key.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                try:
                    async with self._store.begin() as conn:
                        await conn.execute(
                            schema.certificate_authorities.insert().values(
                                environment=env,
                                certificate_pem=fresh.certificate_pem,
                                private_key=self._vault.encrypt(der, context=_ca_context(env)),
                                created_at=self._now(),
                            )
                        )
                    authority, created = fresh, True
                except IntegrityError:  # another process created it first: use theirs
                    authority = await self._load_ca(env)
            if authority is None:
                raise RuntimeError(f"the {env} certificate authority could not be created")
            self._authorities[env] = authority
            return authority, created

    async def _load_ca(self, environment: str) -> CertificateAuthority | None:
        table = schema.certificate_authorities
        async with self._store.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.environment == environment))).mappings().first()
        if row is None:
            return None
        der = self._vault.decrypt(row["private_key"], context=_ca_context(environment))
        return load_authority(environment, row["certificate_pem"], der)

    async def ca_certificate_pem(self, environment: str | None = None) -> str:
        """The CA certificate clients and proxies trust (and the trust root for `serve --tls`)."""
        authority, _ = await self.ensure_ca(environment)
        return authority.certificate_pem

    async def server_certificate(self, hostnames: list[str]) -> tuple[str, str]:
        """A TLS server certificate (PEM) and its key (PKCS#8 PEM, unencrypted: write it 0600) signed by this
        environment's CA, for localhost, 127.0.0.1, ::1 and `hostnames`."""
        names = [_check_hostname(h) for h in ["localhost", "127.0.0.1", "::1", *hostnames] if h.strip()]
        authority, _ = await self.ensure_ca()
        now = dt.datetime.fromtimestamp(self._now(), dt.UTC)
        days = min(SERVER_CERT_DAYS, (authority.not_after - now).days)
        if days < 1:
            raise RuntimeError(f"the {self._environment} CA expires within a day; it cannot sign a server certificate")
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = authority.sign_server(key.public_key(), hostnames=names, days=days, now=now)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem

    # -- client certificates ------------------------------------------------------------------------------

    async def issue(
        self, user: UserRecord, *, csr_pem: bytes | None = None, days: int = 365, key_type: KeyType = "ec"
    ) -> IssuedCertificate:
        """Sign a client certificate for `user` (CN = username, O = name, extendedKeyUsage clientAuth).

        With `csr_pem` (PKCS#10, PEM or DER) the CSR's signature is checked and only its public key is used; the
        subject is always bankgate's. Without it a key pair is generated and returned once, never stored.
        A user may hold several valid certificates (a renewal overlaps the old one).
        """
        if user.status != "active":
            advice = ("enable the user before issuing a certificate" if user.status == "disabled"
                      else "create a new user instead")
            raise ValueError(f"user {user.username} is {user.status}; {advice}")
        authority, _ = await self.ensure_ca(user.environment)
        now = self._now()
        built = await asyncio.to_thread(_build_client, authority, user, csr_pem, days, key_type, now)
        certificate = built.certificate
        der = certificate.public_bytes(serialization.Encoding.DER)
        record = CertificateRecord(
            serial=_serial_text(certificate.serial_number),
            user_id=user.id,
            environment=user.environment,
            thumbprint=thumbprint_sha1(der),
            x5t_s256=x5t_s256(der),
            subject=certificate.subject.rfc4514_string(),
            not_before=certificate.not_valid_before_utc.timestamp(),
            not_after=certificate.not_valid_after_utc.timestamp(),
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            status="valid",
            revoked_at=None,
            created_at=now,
        )
        async with self._store.begin() as conn:
            await conn.execute(
                schema.certificates.insert().values(
                    serial=record.serial,
                    user_id=record.user_id,
                    environment=record.environment,
                    thumbprint=record.thumbprint,
                    x5t_s256=record.x5t_s256,
                    subject=record.subject,
                    not_before=record.not_before,
                    not_after=record.not_after,
                    certificate_pem=record.certificate_pem,
                    status=record.status,
                    created_at=record.created_at,
                )
            )
        return IssuedCertificate(
            record=record,
            private_key_pem=built.private_key_pem,
            pkcs12=built.pkcs12,
            pkcs12_password=built.pkcs12_password,
        )

    @staticmethod
    def _record(row: Any) -> CertificateRecord:
        return CertificateRecord(
            serial=row["serial"],
            user_id=row["user_id"],
            environment=row["environment"],
            thumbprint=row["thumbprint"],
            x5t_s256=row["x5t_s256"],
            subject=row["subject"],
            not_before=row["not_before"],
            not_after=row["not_after"],
            certificate_pem=row["certificate_pem"],
            status=row["status"],
            revoked_at=row["revoked_at"],
            created_at=row["created_at"],
        )

    async def find_by_der(self, der: bytes) -> CertificateRecord | None:
        """The certificate with exactly these DER bytes, issued in this service's environment, whatever its
        status (check `usable_at`); None for any other certificate."""
        table = schema.certificates
        async with self._store.connect() as conn:
            row = (
                await conn.execute(
                    select(table)
                    .where(table.c.x5t_s256 == x5t_s256(der))
                    .where(table.c.environment == self._environment)
                )
            ).mappings().first()
        return self._record(row) if row is not None else None

    async def get(self, serial: str) -> CertificateRecord:
        key = normalise_serial(serial)
        table = schema.certificates
        async with self._store.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.serial == key))).mappings().first()
        if row is None:
            raise CertificateNotFoundError(f"no certificate with serial {key}")
        return self._record(row)

    async def page(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        user_id: str | None = None,
        status: str | None = None,
        expiring_within: float | None = None,
    ) -> Page[CertificateRecord]:
        """One page of certificates: oldest first, or with `expiring_within` (seconds) the valid ones whose
        validity ends within that time from now, soonest first (the dashboard's "expiring within 30 days"); of
        `user_id` and `status` (valid or revoked). Raises `PagingError` for a bad limit or cursor."""
        table = schema.certificates
        query = select(table)
        if user_id is not None:
            query = query.where(table.c.user_id == user_id)
        if status is not None:
            if status not in ("valid", "revoked"):
                raise ValueError(f"status {status!r} is not one of: valid, revoked")
            query = query.where(table.c.status == status)
        keyset = _BY_CREATION
        if expiring_within is not None:
            if not 0 < expiring_within <= 100 * 365 * 86400:
                raise ValueError("expiring within needs a positive number of seconds (30 days: 2592000)")
            now = self._now()
            query = query.where(table.c.status == "valid").where(table.c.not_after > now)
            query = query.where(table.c.not_after <= now + expiring_within)
            keyset = _BY_EXPIRY
        # The window moves with the clock, so a cursor carries the filters but not `now`.
        filters = {"user_id": user_id, "status": status, "expiring_within": expiring_within}
        async with self._store.connect() as conn:
            rows, following = await fetch_page(conn, query, keyset, limit=limit, cursor=cursor, filters=filters)
        return Page(tuple(self._record(row) for row in rows), following)

    async def list_for_user(self, user_id: str) -> list[CertificateRecord]:
        """The user's certificates, oldest first (revoked and expired ones included)."""
        table = schema.certificates
        async with self._store.connect() as conn:
            rows = (
                await conn.execute(
                    select(table).where(table.c.user_id == user_id).order_by(table.c.created_at, table.c.serial)
                )
            ).mappings()
            return [self._record(row) for row in rows]

    async def revoke(self, serial: str) -> CertificateRecord:
        """Mark the certificate revoked and, in the same transaction, every token bound to it (RFC 8705 §3.1:
        `cert:<x5t#S256>` on the subject deny list). Idempotent: a revoked certificate keeps its first revocation
        time."""
        record = await self.get(serial)
        table = schema.certificates
        subject = f"cert:{record.x5t_s256}"
        change = ("cert", hashlib.sha256(record.der).hexdigest())
        async with self._store.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.serial == record.serial)
                .where(table.c.status == "valid")
                .values(status="revoked", revoked_at=self._now())
            )
            await self._revocations.write_subject(conn, subject)
            await self._changes.record(conn, change)
        self._revocations.remember(subject)
        self._changes.announce(change)
        return await self.get(record.serial)


_BY_CREATION = Keyset("certificates", (schema.certificates.c.created_at, schema.certificates.c.serial),
                      ((float, int), (str,)))
_BY_EXPIRY = Keyset("certificates-expiring", (schema.certificates.c.not_after, schema.certificates.c.serial),
                    ((float, int), (str,)))
