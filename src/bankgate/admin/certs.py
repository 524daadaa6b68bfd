"""Client certificates of M2M users (RFC 8705) and the environment's CA: issue, list, show, revoke."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from bankgate.admin._base import Actor, NotFoundError, UseCases, paging_errors
from bankgate.pki import CertificateNotFoundError, CertificateRecord, IssuedCertificate
from bankgate.pki.certificates import KeyType
from bankgate.store.paging import DEFAULT_LIMIT, Page

__all__ = ["CertificateAdmin"]

T = TypeVar("T")


class CertificateAdmin(UseCases):
    async def issue(
        self,
        actor: Actor,
        username: str,
        deliver: Callable[[IssuedCertificate], T],
        *,
        csr_pem: bytes | None = None,
        days: int = 365,
        key_type: str = "ec",
    ) -> tuple[IssuedCertificate, T]:
        """Issue a certificate and hand it to `deliver` (write files, answer a request). When delivery fails its
        private key is lost, so the certificate is revoked at once and never audited as issued."""
        if key_type not in ("ec", "rsa"):
            raise ValueError(f"--key-type {key_type} is not one of: ec, rsa")
        user = await self._services.admin.users.get(username)
        kind: KeyType = "rsa" if key_type == "rsa" else "ec"
        issued = await self._services.pki.issue(user, csr_pem=csr_pem, days=days, key_type=kind)
        try:
            delivered = deliver(issued)
        except Exception:
            await self._services.pki.revoke(issued.serial)
            raise
        await self._audit_cert(actor, "cert.issued", issued.record, user.username)
        return issued, delivered

    async def list(self, username: str) -> list[CertificateRecord]:
        user = await self._services.admin.users.get(username)
        return await self._services.pki.list_for_user(user.id)

    async def page(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        username: str | None = None,
        status: str | None = None,
        expiring_within: float | None = None,
    ) -> Page[CertificateRecord]:
        """One page of certificates, oldest first; of `username`, of `status` (valid or revoked); with
        `expiring_within` (seconds) only the valid ones whose validity ends within that time, soonest first (the
        dashboard's 30 days: 2592000)."""
        user_id = (await self._services.admin.users.get(username)).id if username is not None else None
        with paging_errors():
            return await self._services.pki.page(limit=limit, cursor=cursor, user_id=user_id, status=status,
                                                 expiring_within=expiring_within)

    async def get(self, serial: str) -> CertificateRecord:
        try:
            return await self._services.pki.get(serial)
        except CertificateNotFoundError as exc:
            raise NotFoundError(f"{exc}; see `bankgate certs list USERNAME`") from None

    async def revoke(self, actor: Actor, serial: str) -> tuple[CertificateRecord, bool]:
        """Revoke (idempotent: run again, it denies the bound tokens anyway); True when it was valid until now."""
        before = await self.get(serial)
        record = await self._services.pki.revoke(before.serial)
        if before.status == "revoked":
            return record, False
        user = await self._services.users.get_by_id(record.user_id)
        await self._audit_cert(actor, "cert.revoked", record, user.username if user else None)
        return record, True

    async def ca_certificate(self, actor: Actor) -> str:
        """The environment's CA certificate (PEM), created on first use."""
        authority, created = await self._services.pki.ensure_ca()
        if created:
            subject = authority.certificate.subject.rfc4514_string()
            await self._audit(actor, "ca.created", {"environment": authority.environment, "subject": subject})
        return authority.certificate_pem

    async def _audit_cert(self, actor: Actor, event: str, record: CertificateRecord, username: str | None) -> None:
        await self._audit(actor, event, {"serial": record.serial, "thumbprint": record.thumbprint,
                                         "user_id": record.user_id, "username": username,
                                         "environment": record.environment})
