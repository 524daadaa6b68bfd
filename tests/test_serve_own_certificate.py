"""`bankgate serve --tls --tls-cert FILE --tls-key FILE`: the operator's own server certificate (here from a CA made
by the test, apart from bankgate's) while client certificates are still verified against the bankgate CA; and the
warning at start of a production server on plain HTTP with no trusted proxy in front."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Tls, run_cli

WARNING = "warning: production over plain HTTP"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def operator_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA of the operator's own and a server certificate it signs for localhost and 127.0.0.1:
    (ca.pem, server.pem, server.key with mode 0600)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Operator Root CA")).issuer_name(_name("Operator Root CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(_pem_key(key))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


def test_the_operators_certificate_is_served_and_bankgate_client_certificates_still_authorize(
    server_factory: Any, tmp_path: Path
) -> None:
    ca, cert, key = operator_certificate(tmp_path / "operator")
    server = server_factory(args=("--tls", "--tls-cert", str(cert), "--tls-key", str(key)))
    assert server.base_url.startswith("https://")

    tls = Tls(server, tmp_path)  # writes the bankgate CA to tmp_path/ca.pem, which clients must no longer need
    bankgate_ca = tls.ca
    with pytest.raises(httpx.ConnectError):  # the server is not presenting a bankgate-issued certificate
        httpx.get(f"{server.base_url}/healthz", verify=ssl.create_default_context(cafile=str(bankgate_ca)),
                  timeout=10)
    tls.ca = ca  # the client trusts the operator's CA alone
    user = tls.new_user("Own Certificate Payments")
    answer = tls.authorize(user)
    assert answer.status_code == 200, answer.text
    assert answer.json()["access_token"]

    # Client certificates are still those of the bankgate CA: one the operator's CA signed is refused.
    stranger = tmp_path / "stranger"
    _, stranger_cert, stranger_key = operator_certificate(stranger)
    with pytest.raises(httpx.TransportError):
        tls.authorize(user, cert=(str(stranger_cert), str(stranger_key)))
    assert tls.authorize(user, cert=None).status_code == 401


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("key-mode", "chmod 600"),
        ("mismatch", "cannot be used together"),
        ("missing", "is not a readable file"),
        ("no-tls", "add --tls"),
        ("key-alone", "go together"),
    ],
)
def test_unusable_operator_files_are_refused_before_serving(tmp_path: Path, change: str, expected: str) -> None:
    _, cert, key = operator_certificate(tmp_path / "operator")
    _, other_cert, _ = operator_certificate(tmp_path / "other")
    args = ["--tls", "--tls-cert", str(cert), "--tls-key", str(key)]
    if change == "key-mode":
        key.chmod(0o644)
    elif change == "mismatch":
        args[2] = str(other_cert)
    elif change == "missing":
        args[4] = str(tmp_path / "nowhere.key")
    elif change == "no-tls":
        args = args[1:]
    elif change == "key-alone":
        args = ["--tls", "--tls-key", str(key)]
    result = run_cli("serve", "--port", "1", *args, env={"BANKGATE_DATA_DIR": str(tmp_path / "data")}, check=False)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was written


def test_production_over_plain_http_warns_at_start_unless_a_trusted_proxy_is_configured(
    server_factory: Any
) -> None:
    plain = server_factory({"BANKGATE_ENVIRONMENT": "production"}, process=True)
    assert WARNING in plain.log()
    proxied = server_factory({"BANKGATE_ENVIRONMENT": "production", "BANKGATE_TRUSTED_PROXIES": "127.0.0.1/32"},
                             process=True)
    sandbox = server_factory(process=True)
    for quiet in (proxied, sandbox):
        assert "bankgate " in quiet.log()  # the start line was written
        assert WARNING not in quiet.log()
