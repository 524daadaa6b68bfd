"""The built-in PKI: one CA per environment, client certificates for M2M users, thumbprints; storage behaviour against
SQLite and PostgreSQL, and the `certs` / `ca-cert` commands."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bankgate.config import Settings, load_settings
from bankgate.credentials.users import UserRecord
from bankgate.pki import (
    CertificateNotFoundError,
    CertificateRecord,
    CertificateRequestError,
    thumbprint_sha1,
    x5t_s256,
)
from bankgate.pki.authority import CA_VALIDITY_DAYS, new_authority
from bankgate.services import Services
from bankgate.store import schema
from conftest import cli_json, run_cli

THUMBPRINT = re.compile(r"^[0-9A-F]{40}$")
X5T_S256 = re.compile(r"^[A-Za-z0-9_-]{43}$")
SERIAL = re.compile(r"^(?:[0-9A-F]{2}){1,20}$")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
async def user(services: Services) -> UserRecord:
    return (await services.users.create("Acme Payments Ltd", "acme")).user


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def der_of(pem: str) -> bytes:
    return load(pem).public_bytes(serialization.Encoding.DER)


async def ca_rows(services: Services) -> list[dict[str, Any]]:
    async with services.store.connect() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(schema.certificate_authorities))).mappings()]


def make_csr(key: Any, common_name: str = "whatever the client asked for") -> bytes:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


# -- thumbprints -------------------------------------------------------------------------------------------


def test_thumbprints_follow_the_seed_and_rfc_8705() -> None:
    der = b"\x30\x03\x02\x01\x01"
    assert thumbprint_sha1(der) == hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - the seed's format
    assert THUMBPRINT.match(thumbprint_sha1(der))
    assert x5t_s256(der) == base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert X5T_S256.match(x5t_s256(der))


# -- the certificate authority -----------------------------------------------------------------------------


async def test_init_creates_the_environment_ca_once(services: Services, settings: Settings) -> None:
    rows = await ca_rows(services)
    assert [r["environment"] for r in rows] == ["sandbox"]
    await services.init()
    reopened = await Services.open(settings)
    try:
        await reopened.init()
        assert await reopened.pki.ca_certificate_pem() == rows[0]["certificate_pem"]
    finally:
        await reopened.close()
    assert len(await ca_rows(services)) == 1
    events = [e.event for e in await services.audit.tail(50)]
    assert events.count("ca.created") == 1


async def test_one_ca_per_environment_created_on_demand(services: Services) -> None:
    sandbox = await services.pki.ca_certificate_pem("sandbox")
    _, created = await services.pki.ensure_ca("production")
    assert created is True
    production = await services.pki.ca_certificate_pem("production")
    assert production != sandbox
    assert load(production).subject != load(sandbox).subject
    assert "production" in load(production).subject.rfc4514_string()
    assert sorted(r["environment"] for r in await ca_rows(services)) == ["production", "sandbox"]
    assert (await services.pki.ensure_ca("production"))[1] is False
    with pytest.raises(ValueError, match="not one of"):
        await services.pki.ensure_ca("staging")


async def test_processes_racing_to_create_a_ca_end_up_with_the_same_one(settings: Settings,
                                                                        services: Services) -> None:
    others = [await Services.open(settings) for _ in range(3)]
    try:
        results = await asyncio.gather(*(s.pki.ensure_ca("production") for s in others))
    finally:
        for other in others:
            await other.close()
    assert len({r[0].certificate_pem for r in results}) == 1
    assert sum(created for _, created in results) <= 1
    assert len([r for r in await ca_rows(services) if r["environment"] == "production"]) == 1


async def test_ca_is_a_proper_ca_and_its_key_is_not_stored_in_clear(services: Services) -> None:
    authority, _ = await services.pki.ensure_ca()
    certificate = authority.certificate
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    certificate.verify_directly_issued_by(certificate)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert abs(lifetime - dt.timedelta(days=CA_VALIDITY_DAYS)) < dt.timedelta(minutes=10)

    raw_key = authority.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stored = (await ca_rows(services))[0]["private_key"]
    assert raw_key not in stored
    scalar = authority.private_key.private_numbers().private_value.to_bytes(32, "big")
    assert scalar not in stored
    with pytest.raises(ValueError):
        serialization.load_der_private_key(stored, password=None)
    assert "PRIVATE" not in (await ca_rows(services))[0]["certificate_pem"]
    assert "private_key" not in repr(authority) and "EllipticCurvePrivateKey" not in repr(authority)


# -- issuing -----------------------------------------------------------------------------------------------


async def test_issue_with_a_generated_key_returns_key_and_pkcs12_once(services: Services, user: UserRecord) -> None:
    issued = await services.pki.issue(user)
    authority, _ = await services.pki.ensure_ca()
    certificate = load(issued.certificate_pem)
    der = certificate.public_bytes(serialization.Encoding.DER)

    assert SERIAL.match(issued.serial) and int(issued.serial, 16) == certificate.serial_number
    assert THUMBPRINT.match(issued.thumbprint) and issued.thumbprint == hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - the seed's format
    assert X5T_S256.match(issued.x5t_s256) and issued.x5t_s256 == x5t_s256(der)
    assert issued.not_before == certificate.not_valid_before_utc.timestamp()
    assert issued.not_after == certificate.not_valid_after_utc.timestamp()
    assert dt.timedelta(days=365) <= dt.timedelta(seconds=issued.not_after - issued.not_before) <= dt.timedelta(
        days=365, minutes=10)

    certificate.verify_directly_issued_by(authority.certificate)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme"
    assert certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme Payments Ltd"
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    issuer_key_id = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuer_key_id

    assert issued.private_key_pem is not None and issued.pkcs12 is not None and issued.pkcs12_password
    key = serialization.load_pem_private_key(issued.private_key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == certificate.public_key()

    bundle = pkcs12.load_pkcs12(issued.pkcs12, issued.pkcs12_password.encode())
    assert bundle.cert is not None and bundle.cert.certificate == certificate
    assert bundle.key is not None and bundle.key.public_key() == certificate.public_key()
    assert [c.certificate for c in bundle.additional_certs] == [authority.certificate]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(issued.pkcs12, b"not the password")

    shown = repr(issued)
    assert issued.pkcs12_password not in shown and "PRIVATE KEY" not in shown
    body = issued.as_json()
    assert body["x5t#S256"] == issued.x5t_s256 and body["pkcs12_password"] == issued.pkcs12_password
    assert base64.b64decode(body["pkcs12"]) == issued.pkcs12


async def test_issue_can_make_an_rsa_key(services: Services, user: UserRecord) -> None:
    issued = await services.pki.issue(user, key_type="rsa", days=30)
    key = load(issued.certificate_pem).public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert round((issued.not_after - issued.not_before) / 86400) == 30


async def test_private_keys_of_issued_certificates_are_not_stored(services: Services, user: UserRecord) -> None:
    issued = await services.pki.issue(user)
    assert issued.private_key_pem is not None
    key = serialization.load_pem_private_key(issued.private_key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    secret_bytes = key.private_numbers().private_value.to_bytes(32, "big")
    async with services.store.connect() as conn:
        for table in (schema.certificates, schema.certificate_authorities, schema.users):
            for row in (await conn.execute(sa.select(table))).mappings():
                for value in row.values():
                    blob = value if isinstance(value, bytes) else str(value).encode()
                    assert secret_bytes not in blob
                    assert issued.private_key_pem.encode() not in blob
                    assert issued.pkcs12_password.encode() not in blob  # type: ignore[union-attr]


async def test_issue_from_a_csr_uses_only_its_public_key(services: Services, user: UserRecord) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = await services.pki.issue(user, csr_pem=make_csr(key, "admin"))
    certificate = load(issued.certificate_pem)
    assert certificate.public_key() == key.public_key()
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme"
    assert issued.private_key_pem is None and issued.pkcs12 is None and issued.pkcs12_password is None
    assert "private_key_pem" not in issued.as_json() and "pkcs12" not in issued.as_json()


async def test_issue_accepts_a_der_csr(services: Services, user: UserRecord) -> None:
    key = rsa.generate_private_key(65537, 2048)
    der = x509.load_pem_x509_csr(make_csr(key)).public_bytes(serialization.Encoding.DER)
    issued = await services.pki.issue(user, csr_pem=der)
    assert load(issued.certificate_pem).public_key() == key.public_key()


async def test_csr_whose_signature_does_not_verify_is_refused(services: Services, user: UserRecord) -> None:
    tampered = make_csr(ec.generate_private_key(ec.SECP256R1()), "alice")
    request = x509.load_pem_x509_csr(tampered).public_bytes(serialization.Encoding.DER)
    forged = request.replace(b"alice", b"mally")  # same structure, other content: the signature no longer fits
    assert forged != request
    with pytest.raises(CertificateRequestError, match="signature does not verify"):
        await services.pki.issue(user, csr_pem=forged)
    assert await services.pki.list_for_user(user.id) == []


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n", "not a certificate"),
        (b"\x00\x01garbage", "not a certificate"),
        (b"", "not a certificate"),
    ],
)
async def test_garbage_csr_is_refused(services: Services, user: UserRecord, csr: bytes, message: str) -> None:
    with pytest.raises(CertificateRequestError, match=message):
        await services.pki.issue(user, csr_pem=csr)


async def test_weak_keys_in_a_csr_are_refused(services: Services, user: UserRecord) -> None:
    with pytest.raises(CertificateRequestError, match="2048"):
        weak = rsa.generate_private_key(65537, 1024)  # noqa: S505 - to be refused
        await services.pki.issue(user, csr_pem=make_csr(weak))
    with pytest.raises(CertificateRequestError, match="curve"):
        await services.pki.issue(user, csr_pem=make_csr(ec.generate_private_key(ec.SECP256K1())))


async def test_validity_must_be_sensible_and_within_the_ca(services: Services, user: UserRecord) -> None:
    with pytest.raises(ValueError, match="1 to 3650 days"):
        await services.pki.issue(user, days=0)
    with pytest.raises(ValueError, match="1 to 3650 days"):
        await services.pki.issue(user, days=3651)
    authority, _ = await services.pki.ensure_ca()
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    a_day_later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    with pytest.raises(ValueError, match="would outlive the sandbox CA"):
        authority.sign_client(key, common_name="acme", organization=None, days=3650, now=a_day_later)


async def test_a_disabled_user_gets_no_certificate(services: Services, user: UserRecord) -> None:
    with pytest.raises(ValueError, match="disabled"):
        await services.pki.issue(dataclasses.replace(user, status="disabled"))


# -- lookup, listing, revocation ---------------------------------------------------------------------------


async def test_a_user_may_hold_two_valid_certificates_during_a_renewal(services: Services, user: UserRecord) -> None:
    first = await services.pki.issue(user)
    second = await services.pki.issue(user)
    listed = await services.pki.list_for_user(user.id)
    assert [c.serial for c in listed] == [first.serial, second.serial]
    assert all(c.status == "valid" and c.usable_at(time.time()) for c in listed)
    assert first.thumbprint != second.thumbprint
    other = (await services.users.create("Other Ltd", "other")).user
    assert await services.pki.list_for_user(other.id) == []


async def test_find_by_der_returns_the_record_of_exactly_that_certificate(services: Services,
                                                                          user: UserRecord) -> None:
    issued = await services.pki.issue(user)
    record = await services.pki.find_by_der(der_of(issued.certificate_pem))
    assert isinstance(record, CertificateRecord)
    assert record == issued.record
    assert record.user_id == user.id and record.environment == "sandbox"
    assert record.subject == "O=Acme Payments Ltd,CN=acme"
    assert record.as_json()["x5t#S256"] == issued.x5t_s256

    # Same subject and key, other CA: not ours.
    stranger = new_authority("sandbox")
    key = serialization.load_pem_private_key(issued.private_key_pem.encode(), password=None)  # type: ignore[union-attr]
    lookalike = stranger.sign_client(key.public_key(), common_name="acme", organization="Acme Payments Ltd",  # type: ignore[arg-type]
                                     days=30, now=dt.datetime.now(dt.UTC))
    assert await services.pki.find_by_der(lookalike.public_bytes(serialization.Encoding.DER)) is None
    assert await services.pki.find_by_der(b"") is None


async def test_find_by_der_ignores_certificates_of_another_environment(settings: Settings, services: Services,
                                                                       user: UserRecord) -> None:
    issued = await services.pki.issue(user)
    production = await Services.open(settings.model_copy(update={"environment": "production"}))
    try:
        assert await production.pki.find_by_der(der_of(issued.certificate_pem)) is None
        assert (await production.pki.get(issued.serial)).environment == "sandbox"
    finally:
        await production.close()


async def test_get_accepts_a_serial_however_it_was_copied(services: Services, user: UserRecord) -> None:
    issued = await services.pki.issue(user)
    pairs = ":".join(issued.serial[i:i + 2] for i in range(0, len(issued.serial), 2))
    for spelling in (issued.serial, issued.serial.lower(), "0x" + issued.serial.lower(), pairs.lower(),
                     issued.serial.lstrip("0")):
        assert (await services.pki.get(spelling)).serial == issued.serial


async def test_unknown_serials_raise_a_lookup_error(services: Services) -> None:
    with pytest.raises(CertificateNotFoundError, match="no certificate with serial 0ABC"):
        await services.pki.get("abc")
    with pytest.raises(LookupError, match="not a certificate serial"):
        await services.pki.get("not-hex")
    with pytest.raises(LookupError):
        await services.pki.revoke("F" * 41)


async def test_revoke_marks_the_certificate_unusable_once(services: Services, user: UserRecord) -> None:
    first = await services.pki.issue(user)
    second = await services.pki.issue(user)
    revoked = await services.pki.revoke(first.serial)
    assert revoked.status == "revoked" and revoked.revoked_at is not None
    assert not revoked.usable_at(time.time())
    again = await services.pki.revoke(first.serial.lower())
    assert again.revoked_at == revoked.revoked_at
    statuses = {c.serial: c.status for c in await services.pki.list_for_user(user.id)}
    assert statuses == {first.serial: "revoked", second.serial: "valid"}
    found = await services.pki.find_by_der(der_of(first.certificate_pem))
    assert found is not None and found.status == "revoked"


def test_usable_only_within_the_validity_window() -> None:
    record = CertificateRecord("0A", "u", "sandbox", "A" * 40, "x" * 43, "CN=a", 100.0, 200.0, "", "valid", None, 50.0)
    assert not record.usable_at(99.9)
    assert record.usable_at(100.0) and record.usable_at(199.9)
    assert not record.usable_at(200.0)
    assert not dataclasses.replace(record, status="revoked", revoked_at=150.0).usable_at(150.0)


async def test_server_certificate_names_loopback_and_given_hosts(services: Services) -> None:
    certificate_pem, key_pem = await services.pki.server_certificate(["api.example.test", "10.1.2.3", "[fd00::1]"])
    certificate = load(certificate_pem)
    authority, _ = await services.pki.ensure_ca()
    certificate.verify_directly_issued_by(authority.certificate)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "api.example.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1", "10.1.2.3", "fd00::1"]
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert key.public_key() == certificate.public_key()
    with pytest.raises(ValueError, match="neither a DNS name nor an IP address"):
        await services.pki.server_certificate(["not a host"])


# -- the command line --------------------------------------------------------------------------------------


def bg(data_dir: Path, *args: str, check: bool = True) -> Any:
    return run_cli(*args, "--data-dir", str(data_dir), check=check)


def bg_json(data_dir: Path, *args: str) -> Any:
    return cli_json(*args, "--data-dir", str(data_dir))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    bg_json(directory, "init")
    bg_json(directory, "users", "create", "--name", "Acme Payments Ltd", "--username", "acme")
    return directory


def one_line_error(result: Any, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_certs_issue_writes_certificate_key_and_pkcs12(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shown = bg_json(data_dir, "certs", "issue", "acme", "--out", str(out), "--days", "90")
    assert set(shown) == {"serial", "username", "user_id", "environment", "subject", "thumbprint", "x5t#S256",
                          "not_before", "not_after", "certificate_file", "private_key_file", "pkcs12_file",
                          "pkcs12_password"}
    serial = shown["serial"]
    assert shown["certificate_file"] == str(out / f"{serial}.crt.pem")
    assert shown["private_key_file"] == str(out / f"{serial}.key.pem")
    assert shown["pkcs12_file"] == str(out / f"{serial}.p12")
    assert stat.S_IMODE((out / f"{serial}.key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / f"{serial}.p12").stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate((out / f"{serial}.crt.pem").read_bytes())
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert shown["thumbprint"] == thumbprint_sha1(der) and THUMBPRINT.match(shown["thumbprint"])
    assert shown["x5t#S256"] == x5t_s256(der)
    assert shown["not_after"] - shown["not_before"] == 90 * 86400 + 300
    bundle = pkcs12.load_pkcs12((out / f"{serial}.p12").read_bytes(), shown["pkcs12_password"].encode())
    assert bundle.cert is not None and bundle.cert.certificate == certificate
    assert bundle.key is not None and bundle.key.public_key() == certificate.public_key()

    events = [e for e in bg_json(data_dir, "audit", "tail") if e["event"] == "cert.issued"]
    assert len(events) == 1 and events[0]["detail"]["serial"] == serial
    assert events[0]["detail"]["username"] == "acme"
    assert shown["pkcs12_password"] not in json.dumps(events)


def test_certs_issue_from_a_csr_writes_only_the_certificate(data_dir: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = tmp_path / "acme.csr"
    csr.write_bytes(make_csr(key))
    out = tmp_path / "out"
    shown = bg_json(data_dir, "certs", "issue", "acme", "--out", str(out), "--csr", str(csr))
    assert shown["private_key_file"] is None and shown["pkcs12_file"] is None and shown["pkcs12_password"] is None
    assert sorted(p.name for p in out.iterdir()) == [f"{shown['serial']}.crt.pem"]
    certificate = x509.load_pem_x509_certificate((out / f"{shown['serial']}.crt.pem").read_bytes())
    assert certificate.public_key() == key.public_key()


def test_certs_issue_without_json_shows_password_and_paths(data_dir: Path, tmp_path: Path) -> None:
    out = bg(data_dir, "certs", "issue", "acme", "--out", str(tmp_path / "o")).stdout
    assert re.search(r"thumbprint\s+[0-9A-F]{40}", out)
    assert "PKCS#12 password" in out and ".p12" in out and ".key.pem" in out


def test_certs_list_show_download_and_revoke(data_dir: Path, tmp_path: Path) -> None:
    first = bg_json(data_dir, "certs", "issue", "acme", "--out", str(tmp_path / "o"))
    second = bg_json(data_dir, "certs", "issue", "acme", "--out", str(tmp_path / "o"))
    listed = bg_json(data_dir, "certs", "list", "acme")
    assert [c["serial"] for c in listed] == [first["serial"], second["serial"]]
    assert {c["status"] for c in listed} == {"valid"}
    assert "certificate_pem" not in listed[0]

    shown = bg_json(data_dir, "certs", "show", first["serial"].lower())
    assert shown["thumbprint"] == first["thumbprint"] and shown["x5t#S256"] == first["x5t#S256"]
    assert shown["certificate_pem"] == (tmp_path / "o" / f"{first['serial']}.crt.pem").read_text()

    target = tmp_path / "download.pem"
    result = bg(data_dir, "certs", "download", first["serial"], "--out", str(target))
    assert first["thumbprint"] in result.stderr
    assert target.read_text() == shown["certificate_pem"]
    assert bg(data_dir, "certs", "download", first["serial"]).stdout == shown["certificate_pem"]

    revoked = bg_json(data_dir, "certs", "revoke", first["serial"])
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    again = bg(data_dir, "certs", "revoke", first["serial"]).stdout
    assert "already revoked" in again
    statuses = [c["status"] for c in bg_json(data_dir, "certs", "list", "acme")]
    assert statuses == ["revoked", "valid"]
    table = bg(data_dir, "certs", "list", "acme").stdout
    assert "revoked" in table and "valid" in table
    events = [e for e in bg_json(data_dir, "audit", "tail") if e["event"] == "cert.revoked"]
    assert len(events) == 1 and events[0]["detail"]["serial"] == first["serial"]
    assert events[0]["detail"]["username"] == "acme"


def test_ca_cert_prints_or_writes_the_environment_ca(data_dir: Path, tmp_path: Path) -> None:
    printed = bg(data_dir, "ca-cert").stdout
    certificate = x509.load_pem_x509_certificate(printed.encode())
    assert "sandbox" in certificate.subject.rfc4514_string()
    target = tmp_path / "ca.pem"
    bg(data_dir, "ca-cert", "--out", str(target))
    assert target.read_text() == printed
    issued = bg_json(data_dir, "certs", "issue", "acme", "--out", str(tmp_path / "o"))
    leaf = x509.load_pem_x509_certificate(Path(issued["certificate_file"]).read_bytes())
    leaf.verify_directly_issued_by(certificate)


def test_ca_cert_of_production_is_another_ca(data_dir: Path) -> None:
    sandbox = bg(data_dir, "ca-cert").stdout
    production = run_cli("ca-cert", "--data-dir", str(data_dir), env={"BANKGATE_ENVIRONMENT": "production"}).stdout
    assert production != sandbox
    assert "production" in x509.load_pem_x509_certificate(production.encode()).subject.rfc4514_string()


def test_certs_commands_fail_in_one_line(data_dir: Path, tmp_path: Path) -> None:
    one_line_error(bg(data_dir, "certs", "issue", "nobody", "--out", str(tmp_path / "o"), check=False),
                   "no user named nobody")
    bad = tmp_path / "bad.csr"
    bad.write_text("hello")
    one_line_error(bg(data_dir, "certs", "issue", "acme", "--out", str(tmp_path / "o"), "--csr", str(bad),
                      check=False), "not a certificate signing request")
    one_line_error(bg(data_dir, "certs", "issue", "acme", "--out", str(tmp_path / "o"), "--key-type", "dsa",
                      check=False), "--key-type dsa")
    one_line_error(bg(data_dir, "certs", "show", "ABCD", check=False), "no certificate with serial ABCD")
    one_line_error(bg(data_dir, "certs", "revoke", "xyz", check=False), "not a certificate serial")
    one_line_error(bg(data_dir, "certs", "list", "nobody", check=False), "no user named nobody")
    assert not any((tmp_path / "o").iterdir())  # nothing half-written
