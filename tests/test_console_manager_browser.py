"""The integration manager's console in a real browser (Debian's chromium through Playwright) against a real
`bankgate serve --tls`: an administrator made with the CLI signs in with its password and a TOTP code computed from
its otpauth URI, onboards a client (whose secret, read off the page, gets a token) and an M2M user (a CSR uploaded,
the test's address allow-listed); the user then takes over in its own pages and gets a certificate-bound token over
mutual TLS with the certificate it downloaded. An auditor's POST is refused. No Content-Security-Policy violation
anywhere.

Screenshots of each page go to the test's directory, or to $BANKGATE_CONSOLE_SCREENSHOTS (docs/console holds the
committed ones, `manager-*.png`)."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from bankgate.cli import app as cli_app
from bankgate.credentials.admins import totp_code
from conftest import Tls
from test_console_browser import Watched

pytestmark = pytest.mark.real_server
ADMIN_PASSWORD = "Quiet-Harbour-Lantern-42"
NEW_PASSWORD = "Quiet-Meadow-42-Ferry"


def _screenshot(page: Any, name: str, tmp_path: Path) -> None:
    directory = Path(os.environ.get("BANKGATE_CONSOLE_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"manager-{name}.png"), full_page=True)


def _enrol(tls: Tls, name: str, role: str) -> bytes:
    server = tls.server
    server.cli_json("admins", "create", name, "--role", role)
    args = ["admins", "set-password", name, "--password-stdin", "--json", "--data-dir", str(server.data_dir)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:  # Playwright's loop runs in this thread
        result = worker.submit(CliRunner().invoke, cli_app, args, input=ADMIN_PASSWORD + "\n", env=server.env).result()
    assert result.exit_code == 0, result.stderr
    secret = parse_qs(urlparse(json.loads(result.stdout)["otpauth_uri"]).query)["secret"][0]
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


def _sign_in(page: Any, base_url: str, name: str, secret: bytes) -> None:
    page.goto(f"{base_url}/console/admin")
    assert page.url.endswith("/console/admin/sign-in")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.fill("input[name=totp]", totp_code(secret, int(time.time()) // 30))  # a real process: the machine's clock
    page.click("button[type=submit]")
    assert page.url.endswith("/console/admin"), page.content()


@pytest.fixture
def tabs(browser: Any) -> Iterator[list[Watched]]:
    opened: list[Any] = []

    def context() -> Any:
        made = browser.new_context(ignore_https_errors=True, accept_downloads=True,
                                   viewport={"width": 1180, "height": 760})
        opened.append(made)
        return made

    try:
        yield [Watched(context()), Watched(context()), Watched(context())]
    finally:
        for made in opened:
            made.close()


def test_a_manager_onboards_a_client_and_a_user_who_then_gets_a_certificate_bound_token(
    tls: Tls, tabs: list[Watched], tmp_path: Path
) -> None:
    server = tls.server
    manager_tab, user_tab, auditor_tab = tabs
    secret = _enrol(tls, "onboarding", "integration-manager")
    page = manager_tab.page

    page.goto(f"{server.base_url}/console/admin/sign-in")
    _screenshot(page, "sign-in", tmp_path)
    _sign_in(page, server.base_url, "onboarding", secret)
    assert "integration-manager" in page.locator(".lead").first.inner_text()
    assert page.locator("nav a", has_text="Audit trail").count() == 1
    manager_tab.no_inline_code()

    # A client: its secret read off the answer page, and a real token with it.
    page.click("nav >> text=Clients")
    page.click("text=New client")
    _screenshot(page, "client-new", tmp_path)
    page.fill("input[name=name]", "Acme Payments")
    page.fill("input[name=scopes]", "app_12345 app_67890")
    page.click("button:has-text('Create client')")
    assert "you will not see this again" in page.content()
    assert "/clients/new" in page.url  # the POST's answer: no redirect carries the secret
    api_key, secret_key = page.inner_text("#api-key"), page.inner_text("#secret-key")
    assert secret_key.startswith("sk_test_") and secret_key not in page.url
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("button[data-copy=secret-key]")  # shown by the script where the clipboard is available
    assert page.evaluate("navigator.clipboard.readText()") == secret_key
    assert page.locator("button[data-copy=secret-key]").inner_text() == "Copied"
    _screenshot(page, "client-secret", tmp_path)
    with tls.client() as http:  # with the secret as the clipboard holds it
        token = http.post("/oauth/token", auth=(api_key, page.evaluate("navigator.clipboard.readText()")),
                          data={"grant_type": "client_credentials", "scope": "app_12345"})
    assert token.status_code == 201, token.text
    page.click("text=Done")
    assert page.url.endswith(f"/console/admin/clients/{api_key}")
    _screenshot(page, "client", tmp_path)
    page.click("a:has-text('Disable')")
    assert page.locator("h1").inner_text() == "Disable the client"
    _screenshot(page, "confirm", tmp_path)
    page.click("text=Cancel")
    page.click("nav >> text=Clients")
    assert api_key in page.content()
    _screenshot(page, "clients", tmp_path)

    # An M2M user: its passphrase shown once, a CSR made here uploaded, this machine's address allowed.
    page.click("nav >> text=Users")
    page.click("text=New user")
    page.fill("input[name=name]", "Acme Treasury API")
    page.fill("input[name=scopes]", "app_12345")
    page.click("button:has-text('Create user')")
    username, passphrase = page.inner_text("#username"), page.inner_text("#passphrase")
    assert "you will not see this again" in page.content()
    _screenshot(page, "user-created", tmp_path)
    page.click("text=Done")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, username)]))
           .sign(key, hashes.SHA256()))
    csr_file, key_file = tmp_path / "acme.csr", tmp_path / "acme.key.pem"
    csr_file.write_bytes(csr.public_bytes(Encoding.PEM))
    key_file.write_bytes(key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    page.set_input_files("input[name=csr]", str(csr_file))
    page.click("button:has-text('Issue certificate')")
    assert page.locator("h1").inner_text() == "Certificate issued"
    thumbprint = page.inner_text("[data-thumbprint]")
    assert re.fullmatch(r"[0-9A-F]{40}", thumbprint)
    assert "PKCS#12" not in page.content()  # the key stayed with the test
    _screenshot(page, "certificate-issued", tmp_path)
    page.click("text=Done")
    page.fill("input[name=cidr]", "300.0.0.1/8")
    page.click("button:has-text('Allow')")
    assert "300.0.0.1/8" in page.inner_text("#cidr-error")
    page.fill("input[name=cidr]", "127.0.0.1")
    page.click("button:has-text('Allow')")
    assert "127.0.0.1/32" in page.inner_text("#allow-list")
    assert thumbprint in page.inner_text("#certificates")
    _screenshot(page, "user", tmp_path)
    page.click("nav >> text=Users")
    _screenshot(page, "users", tmp_path)
    page.click("nav >> text=Signing keys")
    assert "Rotate" not in page.content()  # an owner's work
    _screenshot(page, "keys", tmp_path)
    page.click("nav >> text=Audit trail")
    page.fill("input[name=event]", "client.*")
    page.click("button:has-text('Filter')")
    assert "client.created" in page.content() and "console:onboarding" in page.content()
    _screenshot(page, "audit", tmp_path)
    page.click("nav >> text=Dashboard")
    _screenshot(page, "dashboard", tmp_path)

    # The user takes over in its own pages: first sign-in, then the certificate the manager issued.
    user_page = user_tab.page
    user_page.goto(f"{server.base_url}/console/me/first-sign-in")
    user_page.fill("input[name=username]", username)
    user_page.fill("input[name=passphrase]", passphrase)
    user_page.fill("#new-password", NEW_PASSWORD)
    user_page.fill("#confirm-password", NEW_PASSWORD)
    user_page.click("button[type=submit]")
    assert user_page.url.endswith("/console/me?welcome=1"), user_page.content()
    assert user_page.inner_text("[data-thumbprint]") == thumbprint
    with user_page.expect_download() as download:
        user_page.click("text=Download PEM")
    certificate_file = tmp_path / "acme.crt.pem"
    certificate_file.write_bytes(Path(download.value.path()).read_bytes())
    der = x509.load_pem_x509_certificate(certificate_file.read_bytes()).public_bytes(Encoding.DER)
    assert hashlib.sha1(der).hexdigest().upper() == thumbprint  # noqa: S324 - the seed's thumbprint
    authorized = tls.authorize({"username": username, "cert": (str(certificate_file), str(key_file))},
                               password=NEW_PASSWORD)
    assert authorized.status_code == 200, authorized.text

    # An auditor sees no change button, and its POST is refused even with its own session's CSRF token.
    auditor_secret = _enrol(tls, "reviewer", "auditor")
    auditor = auditor_tab.page
    _sign_in(auditor, server.base_url, "reviewer", auditor_secret)
    auditor.goto(f"{server.base_url}/console/admin/clients/{api_key}")
    assert auditor.locator("a:has-text('Revoke')").count() == 0
    assert auditor.locator("input[name=cidr]").count() == 0
    csrf = auditor.locator("input[name=csrf_token]").first.get_attribute("value")
    refused = auditor_tab.context.request.post(f"{server.base_url}/console/admin/clients/{api_key}/revoke",
                                               form={"csrf_token": csrf}, max_redirects=0)
    assert refused.status == 403 and "You may not do this" in refused.text()
    auditor.goto(f"{server.base_url}/console/admin/clients/{api_key}/revoke")
    assert auditor.locator("h1").inner_text() == "Not allowed"
    _screenshot(auditor, "auditor-refused", tmp_path)
    assert server.cli_json("clients", "show", api_key)["status"] == "active"

    for tab in tabs:
        assert tab.violations == []
