"""The certificate style end to end, as the seed tells it, over real mutual TLS: a manager creates an M2M user and
a certificate; the user resets the passphrase, downloads the certificate, and gets a short certificate-bound JWT
from GET /api/v1/authorizations/authorize."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import AUTHORIZE, PASSWORD, Tls, user_basic

SEED_CLAIMS = {"iss", "exp", "nbf", "aud", "sub", "oid", "name", "userType", "thumbprint", "azp", "ver", "iat"}


def test_seed_walkthrough_returns_a_certificate_bound_jwt_with_the_seed_claims(tls: Tls) -> None:
    user = tls.new_user("API Testuser")
    response = tls.authorize(user)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "expires_in"}
    assert body["expires_in"] == "300"  # a string, as the seed shows it
    assert response.headers["cache-control"] == "no-store"

    with tls.client() as http:
        keys = KeySet.import_key_set(http.get("/.well-known/jwks.json").json())
        issuer = http.get("/.well-known/oauth-authorization-server").json()["issuer"]
    token = jwt.decode(body["access_token"], keys)
    assert token.header["alg"] == "RS256" and token.header["kid"]
    claims = token.claims
    assert set(claims) >= SEED_CLAIMS
    assert claims["iss"] == issuer and issuer.startswith("https://")
    assert claims["sub"] == claims["oid"] == user["user_id"]
    assert claims["name"] == "API Testuser"
    assert claims["userType"] == "4"
    assert claims["ver"] == "1.0"
    assert claims["azp"] == claims["aud"]
    assert claims["exp"] - claims["iat"] == 300
    der = x509.load_pem_x509_certificate(Path(user["cert"][0]).read_bytes()).public_bytes(Encoding.DER)
    assert claims["thumbprint"] == hashlib.sha1(der).hexdigest().upper() == user["certificate"]["thumbprint"]  # noqa: S324
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert claims["cnf"] == {"x5t#S256": expected}


def test_authorize_before_the_passphrase_reset_says_to_reset_first(tls: Tls) -> None:
    user = tls.new_user("Not Reset Yet", reset=False)
    response = tls.authorize(user, password=user["initial_passphrase"])
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "reset the initial passphrase first" in response.json()["detail"]


def test_certificate_download_before_the_reset_is_refused_with_the_same_advice(tls: Tls) -> None:
    user = tls.new_user("Download Too Early", reset=False)
    with tls.client() as http:
        response = http.get(f"/api/v1/users/{user['username']}/certificates",
                            headers=user_basic(user["username"], user["initial_passphrase"]))
    assert response.status_code == 403
    assert "reset the initial passphrase first" in response.json()["detail"]


def test_user_downloads_the_certificate_with_its_thumbprint_after_the_reset(tls: Tls) -> None:
    user = tls.new_user("Downloader")
    with tls.client() as http:
        listing = http.get(f"/api/v1/users/{user['username']}/certificates",
                           headers=user_basic(user["username"], PASSWORD))
        assert listing.status_code == 200, listing.text
        [entry] = listing.json()["certificates"]
        assert entry["thumbprint"] == user["certificate"]["thumbprint"]
        pem = http.get(entry["download"], headers=user_basic(user["username"], PASSWORD))
        assert pem.status_code == 200
        assert pem.headers["x-certificate-thumbprint"] == entry["thumbprint"]
        assert pem.text == Path(user["cert"][0]).read_text()
        other = http.get(entry["download"], headers=user_basic(user["username"], "Wrong-Password-123"))
        assert other.status_code == 401


def test_password_reset_refuses_a_wrong_passphrase_a_weak_password_and_a_second_use(tls: Tls) -> None:
    user = tls.new_user("Resetter", reset=False, certificate=False)
    url = f"/api/v1/users/{user['username']}/password"
    with tls.client() as http:
        wrong = http.post(url, json={"passphrase": "aaaaa-bbbbb-ccccc-ddddd-eeeee", "new_password": PASSWORD})
        assert wrong.status_code == 401
        weak = http.post(url, json={"passphrase": user["initial_passphrase"], "new_password": "short1A"})
        assert weak.status_code == 400
        assert "at least 12 characters" in weak.json()["detail"]
        assert "short1A" not in weak.text
        ok = http.post(url, json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD})
        assert ok.status_code == 200
        again = http.post(url, json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD + "x"})
        assert again.status_code == 401  # as a wrong passphrase: "used" would tell that the user exists
        assert again.json()["detail"] == wrong.json()["detail"]


def test_authorize_without_a_client_certificate_is_401_problem_details(tls: Tls) -> None:
    user = tls.new_user("No Cert")
    response = tls.authorize(user, cert=None)
    assert response.status_code == 401
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 401 and "client certificate" in problem["detail"]


def test_authorize_with_another_users_certificate_is_401_as_a_wrong_password(tls: Tls) -> None:
    alice, bob = tls.new_user("Alice"), tls.new_user("Bob")
    response = tls.authorize(alice, cert=bob["cert"])
    assert response.status_code == 401
    assert response.json()["detail"] == "the username or password is wrong"


def test_authorize_with_a_revoked_certificate_is_401(tls: Tls) -> None:
    user = tls.new_user("Revoked Cert")
    assert tls.authorize(user).status_code == 200
    tls.server.cli("certs", "revoke", user["certificate"]["serial"])
    response = tls.authorize(user)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_a_user_may_hold_two_valid_certificates_during_a_renewal(tls: Tls) -> None:
    user = tls.new_user("Renewing")
    out = tls.workdir / "renewal"
    second = tls.server.cli_json("certs", "issue", user["username"], "--out", str(out))
    second_cert = (str(out / f"{second['serial']}.crt.pem"), str(out / f"{second['serial']}.key.pem"))
    first = tls.authorize(user)
    renewed = tls.authorize(user, cert=second_cert)
    assert first.status_code == renewed.status_code == 200
    thumbprints = {jwt.decode(r.json()["access_token"], _keys(tls)).claims["thumbprint"] for r in (first, renewed)}
    assert thumbprints == {user["certificate"]["thumbprint"], second["thumbprint"]}


def _keys(tls: Tls) -> KeySet:
    with tls.client() as http:
        return KeySet.import_key_set(http.get("/.well-known/jwks.json").json())


@pytest.fixture(scope="module")
def parser_user(tls: Tls) -> dict[str, Any]:
    return tls.new_user("Parser")


@pytest.mark.parametrize(
    "authorization",
    ["Basic", "Basic %%%", "Bearer abc", "Basic " + base64.b64encode(b"no-colon").decode(),
     "Basic " + base64.b64encode(b"\xff\xfe:x").decode()],
)
def test_malformed_authorization_is_400_authorization_parse_failure(
    tls: Tls, parser_user: dict[str, Any], authorization: str
) -> None:
    with tls.client(parser_user["cert"]) as http:
        response = http.get(AUTHORIZE, headers={"Authorization": authorization})
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["errorCode"] == "AuthorizationParseFailure"
    assert error["errorDescription"]


def test_wrong_password_is_401_and_every_outcome_is_audited_with_thumbprint_and_ip(tls: Tls) -> None:
    user = tls.new_user("Audited")
    assert tls.authorize(user, password="Wrong-Password-123").status_code == 401
    assert tls.authorize(user).status_code == 200
    events = [e for e in tls.server.audit(100) if e["actor"] == user["username"] and e["event"].startswith("token.")]
    denied = [e for e in events if e["event"] == "token.denied"]
    issued = [e for e in events if e["event"] == "token.issued"]
    assert denied and issued
    for event in (denied[-1], issued[-1]):
        assert event["source_ip"] == "127.0.0.1"
        assert event["detail"]["thumbprint"] == user["certificate"]["thumbprint"]
    log = tls.server.log() + json.dumps(events)
    assert PASSWORD not in log and "Wrong-Password-123" not in log


def test_production_without_an_allow_list_entry_refuses_with_403(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory({"BANKGATE_ENVIRONMENT": "production"}, args=("--tls",))
    tls = Tls(server, tmp_path)
    user = tls.new_user("Prod User", reset=False)
    response = tls.authorize(user, password=user["initial_passphrase"])
    assert response.status_code == 403
    assert "not allowed" in response.json()["detail"]
    with tls.client() as http:
        reset = http.post(f"/api/v1/users/{user['username']}/password",
                          json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD})
    assert reset.status_code == 403  # production fails closed on every endpoint of the user
    server.cli("ips", "allow", user["username"], "127.0.0.1/32")
    server.cli("ips", "allow", user["username"], "::1/128")
    with tls.client() as http:
        reset = http.post(f"/api/v1/users/{user['username']}/password",
                          json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD})
    assert reset.status_code == 200, reset.text
    assert tls.authorize(user).status_code == 200


def test_an_expired_certificate_is_refused(tls: Tls) -> None:
    """Issued two days in the past for one day: the TLS handshake or, failing that, the endpoint refuses it."""
    import asyncio
    import time

    from bankgate.clock import ManualClock
    from bankgate.config import load_settings
    from bankgate.services import Services

    user = tls.new_user("Expired Cert")
    two_days_ago = ManualClock(time.time() - 2 * 86400)

    async def issue() -> Any:
        services = await Services.open(load_settings(data_dir=tls.server.data_dir), clock=two_days_ago)
        try:
            return await services.pki.issue(await services.users.get(user["username"]), days=1)
        finally:
            await services.close()

    issued = asyncio.run(issue())
    cert, key = tls.workdir / "expired.crt.pem", tls.workdir / "expired.key.pem"
    cert.write_text(issued.certificate_pem)
    key.write_text(issued.private_key_pem)
    try:
        response = tls.authorize(user, cert=(str(cert), str(key)))
    except (httpx.TransportError, ssl.SSLError):
        return  # refused during the handshake: the certificate never reached the application
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def _der_b64(pem_path: str) -> str:
    certificate = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    return base64.b64encode(certificate.public_bytes(Encoding.DER)).decode()


def test_behind_a_trusted_proxy_the_forwarded_certificate_is_accepted(server_factory: Any, tmp_path: Path) -> None:
    # The manager's steps on a TLS server, then the same data behind a TLS-terminating proxy (Traefik's header).
    tls = Tls(server_factory(args=("--tls",)), tmp_path)
    user = tls.new_user("Behind Proxy")
    tls.server.stop()
    proxied = server_factory(
        data_dir=tls.server.data_dir, args=("--trusted-proxy", "127.0.0.1/32", "--client-cert-header", "traefik")
    )
    headers = {**user_basic(user["username"], PASSWORD), "X-Forwarded-Tls-Client-Cert": _der_b64(user["cert"][0])}
    response = proxied.http.get(AUTHORIZE, headers=headers)
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], KeySet.import_key_set(
        proxied.http.get("/.well-known/jwks.json").json())).claims
    assert claims["thumbprint"] == user["certificate"]["thumbprint"]


def test_a_forwarded_certificate_from_an_untrusted_address_is_ignored(server_factory: Any, tmp_path: Path) -> None:
    tls = Tls(server_factory(args=("--tls",)), tmp_path)
    user = tls.new_user("Forger")
    tls.server.stop()
    untrusting = server_factory(data_dir=tls.server.data_dir, args=("--client-cert-header", "traefik"))
    headers = {**user_basic(user["username"], PASSWORD), "X-Forwarded-Tls-Client-Cert": _der_b64(user["cert"][0])}
    response = untrusting.http.get(AUTHORIZE, headers=headers)
    assert response.status_code == 401
    assert "no client certificate" in response.json()["detail"]
