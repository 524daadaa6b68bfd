"""The integration manager's console pages, in process: sign-in with password and a fresh TOTP code (one answer for
every refusal), what each role sees and may do (an auditor's POST is a 403 page whatever the navigation showed),
CSRF on every POST, confirmation pages before every destructive change, secrets shown once on the POST's answer and
found in no URL, later page, log or database file, and the listings' filters and paging."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from bankgate.cli import app as cli_app
from bankgate.clock import ManualClock
from bankgate.credentials.admins import totp_code
from conftest import Server

ADMIN = "/console/admin"
SIGN_IN = f"{ADMIN}/sign-in"
ADMIN_PASSWORD = "Quiet-Harbour-Lantern-42"
FAILED = "Sign-in failed: check your name, your password and the code"


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def _browser(server: Server) -> httpx.Client:
    """A browser of its own (its own cookie jar) on the in-process server."""
    return httpx.Client(transport=server.http._transport, base_url=server.base_url)


def enrol(server: Server, name: str, role: str) -> bytes:
    """An administrator made with the CLI, its console password set; the TOTP secret of its otpauth URI."""
    server.cli_json("admins", "create", name, "--role", role)
    result = CliRunner().invoke(
        cli_app, ["admins", "set-password", name, "--password-stdin", "--json", "--data-dir", str(server.data_dir)],
        input=ADMIN_PASSWORD + "\n", env=server.env)
    assert result.exit_code == 0, result.stderr
    secret = parse_qs(urlparse(json.loads(result.stdout)["otpauth_uri"]).query)["secret"][0]
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


class Manager:
    """A browser signed in as one administrator."""

    def __init__(self, server: Server, clock: ManualClock, name: str, role: str) -> None:
        self.server, self.clock, self.name = server, clock, name
        self.secret = enrol(server, name, role)
        self.http = _browser(server)
        answer = self.sign_in()
        assert answer.status_code == 303 and answer.headers["location"] == ADMIN, answer.text

    def code(self) -> str:
        return totp_code(self.secret, int(self.clock.now()) // 30)

    def sign_in(self, name: str | None = None, password: str = ADMIN_PASSWORD,
                code: str | None = None) -> httpx.Response:
        self.clock.advance(30)  # a code works once: each sign-in of a test takes the next one
        token = _csrf(self.http.get(SIGN_IN))
        return self.http.post(SIGN_IN, data={"csrf_token": token, "name": name or self.name, "password": password,
                                             "totp": code or self.code()})

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(self, path: str, data: dict[str, str] | None = None, form_page: str | None = None,
             **kwargs: Any) -> httpx.Response:
        """POST with the CSRF token of `form_page` (the dashboard by default: one token a session)."""
        token = _csrf(self.get(form_page or ADMIN))
        return self.http.post(path, data={"csrf_token": token, **(data or {})}, **kwargs)

    def create_client(self, name: str = "Acme Payments", scopes: str = "app_12345 app_67890") -> dict[str, str]:
        answer = self.post(f"{ADMIN}/clients/new", {"name": name, "scopes": scopes, "auth_mode": "oauth2"})
        assert answer.status_code == 200, answer.text
        return {"api_key": _shown(answer, "api-key"), "secret_key": _shown(answer, "secret-key"), "page": answer.text}


def _shown(page: httpx.Response, element: str) -> str:
    found = re.search(rf'<code id="{element}"[^>]*>([^<]+)</code>', page.text)
    assert found, page.text
    return found.group(1)


@pytest.fixture
def console(server_factory: Any, clock: ManualClock) -> Server:
    server: Server = server_factory(clock=clock)
    return server


def _files_hold(directory: Path, secret: str) -> list[str]:
    return [str(p) for p in directory.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# -- signing in -----------------------------------------------------------------------------------------------


def test_sign_in_needs_the_password_and_a_fresh_totp_code_and_every_refusal_reads_the_same(
    console: Server, clock: ManualClock
) -> None:
    owner = Manager(console, clock, "ops-owner", "owner")
    stranger = _browser(console)
    assert stranger.get(ADMIN).headers["location"] == SIGN_IN
    refusals = {
        "wrong password": owner.sign_in(password="Not-The-Password-99"),
        "unknown name": owner.sign_in(name="nobody-here"),
        "wrong code": owner.sign_in(code="000000" if owner.code() != "000000" else "111111"),
    }
    assert owner.sign_in().status_code == 303
    used = owner.code()
    refusals["replayed code"] = owner.sign_in(code=used)  # 30 s later: still in the window, but used already
    bodies = set()
    for reason, answer in refusals.items():
        assert answer.status_code == 401, reason
        assert FAILED in answer.text, reason
        assert "bankgate_console=" not in answer.headers.get("set-cookie", ""), reason
        bodies.add(re.sub(r'value="[^"]*"', "", answer.text).replace("nobody-here", "ops-owner"))
    assert len(bodies) == 1  # nothing tells an unknown name from a wrong code
    console.flush_audit()
    failures = console.cli_json("audit", "tail", "--event", "console.sign_in", "--outcome", "failure")
    assert {e["detail"]["reason"] for e in failures} >= {"wrong_password", "unknown_admin", "totp_replayed"}
    dashboard = owner.get(ADMIN)
    assert dashboard.status_code == 200 and "ops-owner" in dashboard.text and "owner" in dashboard.text


def test_sign_in_is_throttled_with_one_answer(console: Server, clock: ManualClock) -> None:
    owner = Manager(console, clock, "ops-owner", "owner")
    answers = [owner.sign_in(password=f"Wrong-Password-{i}") for i in range(12)]
    throttled = [a for a in answers if a.status_code == 429]
    assert throttled and "Too many failed sign-ins" in throttled[0].text
    assert int(throttled[0].headers["retry-after"]) >= 1
    assert all(a.status_code in (401, 429) for a in answers)


def test_a_disabled_administrator_is_signed_out_at_the_next_page(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    Manager(console, clock, "ops-owner", "owner")
    assert manager.get(f"{ADMIN}/clients").status_code == 200
    console.cli_json("admins", "disable", "onboarding")
    ended = manager.get(f"{ADMIN}/clients")
    assert ended.status_code == 303 and ended.headers["location"] == f"{SIGN_IN}?ended=1"


def test_a_user_session_opens_no_administrator_page(console: Server, clock: ManualClock) -> None:
    user = console.cli_json("users", "create", "--name", "Console User")
    reset = console.http.post(f"/api/v1/users/{user['username']}/password",
                              json={"passphrase": user["initial_passphrase"], "new_password": ADMIN_PASSWORD})
    assert reset.status_code == 200
    browser = _browser(console)
    token = _csrf(browser.get("/console/me/sign-in"))
    signed = browser.post("/console/me/sign-in", data={"csrf_token": token, "username": user["username"],
                                                       "password": ADMIN_PASSWORD})
    assert signed.status_code == 303
    assert browser.get(ADMIN).headers["location"] == f"{SIGN_IN}?ended=1"


# -- roles ----------------------------------------------------------------------------------------------------


def test_an_auditor_sees_no_change_buttons_and_its_posts_are_refused_with_a_403_page(
    console: Server, clock: ManualClock
) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    created = manager.create_client()
    user = console.cli_json("users", "create", "--name", "Audited User")
    auditor = Manager(console, clock, "reviewer", "auditor")
    clients = auditor.get(f"{ADMIN}/clients")
    assert clients.status_code == 200 and created["api_key"] in clients.text
    assert "New client" not in clients.text
    detail = auditor.get(f"{ADMIN}/clients/{created['api_key']}")
    assert detail.status_code == 200
    for button in ("Rotate secret", "Disable", "Revoke", 'name="cidr"'):
        assert button not in detail.text, button
    user_page = auditor.get(f"{ADMIN}/users/{user['username']}")
    assert user_page.status_code == 200 and "Issue certificate" not in user_page.text and "New passphrase" not in (
        user_page.text)
    assert "Rotate" not in auditor.get(f"{ADMIN}/keys").text

    assert auditor.get(f"{ADMIN}/clients/new").status_code == 403
    assert auditor.get(f"{ADMIN}/clients/{created['api_key']}/revoke").status_code == 403
    posts = {
        "create": auditor.post(f"{ADMIN}/clients/new", {"name": "Sneaky", "scopes": "app_1"}),
        "revoke": auditor.post(f"{ADMIN}/clients/{created['api_key']}/revoke"),
        "user": auditor.post(f"{ADMIN}/users/new", {"name": "Sneaky User"}),
        "allow": auditor.post(f"{ADMIN}/ips/{user['username']}", {"cidr": "203.0.113.9"}),
        "rotate key": auditor.post(f"{ADMIN}/keys/rotate"),
    }
    for what, answer in posts.items():
        assert answer.status_code == 403, what
        assert "text/html" in answer.headers["content-type"] and "You may not do this" in answer.text, what
    assert [c["name"] for c in console.cli_json("clients", "list")] == ["Acme Payments"]
    assert console.cli_json("clients", "show", created["api_key"])["status"] == "active"
    assert console.cli_json("ips", "list", user["username"])["entries"] == []
    console.flush_audit()
    forbidden = console.cli_json("audit", "tail", "--event", "console.forbidden")
    assert {e["actor"] for e in forbidden} == {"console:reviewer"} and len(forbidden) >= len(posts)


def test_only_an_owner_rotates_and_retires_signing_keys(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    owner = Manager(console, clock, "ops-owner", "owner")
    keys = manager.get(f"{ADMIN}/keys")
    assert keys.status_code == 200 and "Rotate" not in keys.text and "Retire now" not in keys.text
    assert manager.post(f"{ADMIN}/keys/rotate").status_code == 403
    before = set(re.findall(r"<td><code>([^<]+)</code></td>", owner.get(f"{ADMIN}/keys").text))
    confirm = owner.get(f"{ADMIN}/keys/rotate")
    assert confirm.status_code == 200 and 'action="/console/admin/keys/rotate"' in confirm.text
    assert set(re.findall(r"<td><code>([^<]+)</code></td>", owner.get(f"{ADMIN}/keys").text)) == before
    rotated = owner.post(f"{ADMIN}/keys/rotate")
    assert rotated.status_code == 303
    after = set(re.findall(r"<td><code>([^<]+)</code></td>", owner.get(f"{ADMIN}/keys").text))
    assert len(after - before) == 1
    old = next(iter(before))
    retired = owner.post(f"{ADMIN}/keys/{old}/retire")
    assert retired.status_code == 303 and retired.headers["location"] == f"{ADMIN}/keys?done=retired"
    console.flush_audit()
    assert [e["detail"]["kid"] for e in console.cli_json("audit", "tail", "--event", "key.rotated")][-1:] == list(
        after - before)


# -- CSRF and confirmations -----------------------------------------------------------------------------------


def test_every_post_needs_the_session_s_csrf_token(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    other = Manager(console, clock, "second", "integration-manager")
    forged = {
        "none": manager.http.post(f"{ADMIN}/clients/new", data={"name": "Forged", "scopes": "app_1"}),
        "another session's": manager.http.post(f"{ADMIN}/clients/new", data={
            "csrf_token": _csrf(other.get(ADMIN)), "name": "Forged", "scopes": "app_1"}),
        "sign-out": manager.http.post(f"{ADMIN}/sign-out", data={"csrf_token": "forged"}),
    }
    for what, answer in forged.items():
        assert answer.status_code == 403 and "This form has expired" in answer.text, what
    assert console.cli_json("clients", "list") == []
    assert manager.get(ADMIN).status_code == 200  # still signed in


def test_destructive_actions_show_what_will_happen_before_the_post_does_it(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    created = manager.create_client()
    key = created["api_key"]
    assert console.token(created).status_code == 201
    for action, words in (("disable", "no new token"), ("revoke", "cannot be undone")):
        confirm = manager.get(f"{ADMIN}/clients/{key}/{action}")
        assert confirm.status_code == 200 and words in confirm.text, action
        assert f'<form method="post" action="{ADMIN}/clients/{key}/{action}">' in confirm.text
        assert 'name="csrf_token"' in confirm.text
        assert console.cli_json("clients", "show", key)["status"] == "active"  # a GET changes nothing
    done = manager.post(f"{ADMIN}/clients/{key}/disable")
    assert done.status_code == 303 and done.headers["location"] == f"{ADMIN}/clients/{key}?done=disable"
    assert console.cli_json("clients", "show", key)["status"] == "disabled"
    assert '<p class="notice" role="status">Disabled.</p>' in manager.get(done.headers["location"]).text
    crafted = manager.get(f"{ADMIN}/clients/{key}?done=Call+0800+to+confirm")
    assert "Call 0800" not in crafted.text and 'class="notice"' not in crafted.text
    assert console.token(created).status_code == 401
    assert manager.post(f"{ADMIN}/clients/{key}/enable").status_code == 303
    assert console.token(created).status_code == 201
    assert manager.post(f"{ADMIN}/clients/{key}/revoke").status_code == 303
    assert console.cli_json("clients", "show", key)["status"] == "revoked"
    assert console.token(created).status_code == 401
    again = manager.post(f"{ADMIN}/clients/{key}/enable")
    assert again.status_code == 409 and "text/html" in again.headers["content-type"]
    assert manager.get(f"{ADMIN}/clients/{key}/explode").status_code == 404
    assert manager.get(f"{ADMIN}/clients/bk_test_nothing").status_code == 404
    console.flush_audit()
    events = [e["event"] for e in console.cli_json("audit", "tail", "--subject", key)]
    assert [e for e in events if e.startswith("client.")] == ["client.created", "client.disabled", "client.enabled",
                                                               "client.revoked"]
    assert {e["actor"] for e in console.cli_json("audit", "tail", "--event", "client.*")} == {"console:onboarding"}


# -- secrets shown once ---------------------------------------------------------------------------------------


def test_a_client_secret_is_shown_once_on_the_post_answer_and_nowhere_else(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    answer = manager.post(f"{ADMIN}/clients/new", {"name": "Acme Payments", "scopes": "app_12345",
                                                  "auth_mode": "oauth2"})
    assert answer.status_code == 200 and "location" not in answer.headers
    assert "you will not see this again" in answer.text and 'data-copy="secret-key"' in answer.text
    key, secret = _shown(answer, "api-key"), _shown(answer, "secret-key")
    assert secret.startswith("sk_test_") and secret not in str(answer.url)
    token = console.token({"api_key": key, "secret_key": secret}, scope="app_12345")
    assert token.status_code == 201, token.text

    rotated = manager.post(f"{ADMIN}/clients/{key}/rotate-secret", {"overlap": "0"})
    new_secret = _shown(rotated, "secret-key")
    assert new_secret != secret and "you will not see this again" in rotated.text
    assert console.token({"api_key": key, "secret_key": new_secret}).status_code == 201
    assert console.token({"api_key": key, "secret_key": secret}).status_code == 401

    later = "".join(manager.get(path).text for path in (
        ADMIN, f"{ADMIN}/clients", f"{ADMIN}/clients/{key}", f"{ADMIN}/audit", f"{ADMIN}/audit?event=client.*"))
    console.flush_audit()
    for value in (secret, new_secret):
        assert value not in later
        assert value not in console.log()
        assert _files_hold(console.data_dir, value) == []


def test_a_new_user_s_passphrase_is_shown_once_and_works_once(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    created = manager.post(f"{ADMIN}/users/new", {"name": "Acme Treasury API", "scopes": "app_12345"})
    assert created.status_code == 200 and "you will not see this again" in created.text
    username, passphrase = _shown(created, "username"), _shown(created, "passphrase")
    page = manager.get(f"{ADMIN}/users/{username}")
    assert page.status_code == 200 and passphrase not in page.text and "initial passphrase" in page.text
    reissued = manager.post(f"{ADMIN}/users/{username}/new-passphrase")
    second = _shown(reissued, "passphrase")
    assert second != passphrase
    old = console.http.post(f"/api/v1/users/{username}/password",
                            json={"passphrase": passphrase, "new_password": ADMIN_PASSWORD})
    assert old.status_code in (400, 401)
    new = console.http.post(f"/api/v1/users/{username}/password",
                            json={"passphrase": second, "new_password": ADMIN_PASSWORD})
    assert new.status_code == 200, new.text
    console.flush_audit()
    for value in (passphrase, second):
        assert value not in console.log() and _files_hold(console.data_dir, value) == []
    scopes = manager.post(f"{ADMIN}/users/{username}/scopes", {"scopes": "app_1 app_2"})
    assert scopes.status_code == 303
    assert console.cli_json("users", "show", username)["scopes"] == ["app_1", "app_2"]


# -- certificates and allow lists -----------------------------------------------------------------------------


def _csr(common_name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])).sign(key,
                                                                                                   hashes.SHA256()))
    return request.public_bytes(Encoding.PEM)


def test_a_certificate_from_an_uploaded_csr_shows_the_seed_thumbprint_and_downloads_as_pem(
    console: Server, clock: ManualClock
) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    user = console.cli_json("users", "create", "--name", "Acme Treasury API")
    path = f"{ADMIN}/users/{user['username']}/certificates"
    token = _csrf(manager.get(f"{ADMIN}/users/{user['username']}"))
    issued = manager.http.post(path, data={"csrf_token": token, "days": "90"},
                               files={"csr": ("acme.csr", _csr(user["username"]), "application/pkcs10")})
    assert issued.status_code == 200, issued.text
    thumbprint = re.search(r"data-thumbprint>([0-9A-F]{40})<", issued.text)
    assert thumbprint and "PKCS#12" not in issued.text
    serial = re.search(r"/certificates/([0-9A-Fa-f]+)\.pem", issued.text)
    assert serial
    pem = manager.get(f"{ADMIN}/certificates/{serial.group(1)}.pem")
    assert pem.status_code == 200 and pem.headers["content-type"].startswith("application/x-pem-file")
    der = x509.load_pem_x509_certificate(pem.content).public_bytes(Encoding.DER)
    assert hashlib.sha1(der).hexdigest().upper() == thumbprint.group(1)  # noqa: S324 - the seed's thumbprint
    listed = manager.get(f"{ADMIN}/users/{user['username']}")
    assert thumbprint.group(1) in listed.text

    garbage = manager.http.post(path, data={"csrf_token": token},
                                files={"csr": ("x.csr", b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n", "text/plain")})
    assert garbage.status_code == 400 and 'class="field-error"' in garbage.text
    not_multipart = manager.http.post(path, content=b"{}", headers={"content-type": "application/json"})
    assert not_multipart.status_code == 400 and "could not be read" in not_multipart.text

    confirm = manager.get(f"{ADMIN}/certificates/{serial.group(1)}/revoke")
    assert confirm.status_code == 200 and thumbprint.group(1) in confirm.text
    assert manager.post(f"{ADMIN}/certificates/{serial.group(1)}/revoke").status_code == 303
    assert console.cli_json("certs", "show", serial.group(1))["status"] == "revoked"


def test_a_generated_key_comes_as_pkcs12_whose_password_is_shown_once(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    user = console.cli_json("users", "create", "--name", "Generated Key User")
    token = _csrf(manager.get(f"{ADMIN}/users/{user['username']}"))
    issued = manager.http.post(f"{ADMIN}/users/{user['username']}/certificates",
                               data={"csrf_token": token, "key_type": "ec", "days": "30"},
                               files={"csr": ("", b"", "application/octet-stream")})
    assert issued.status_code == 200, issued.text
    password = _shown(issued, "bundle-password")
    bundle = re.search(r'href="data:application/x-pkcs12;base64,([^"]+)"', issued.text)
    assert bundle and "you will not see either again" in issued.text
    key, certificate, _ = pkcs12.load_key_and_certificates(base64.b64decode(bundle.group(1)), password.encode())
    assert key is not None and certificate is not None
    console.flush_audit()
    assert password not in console.log() and _files_hold(console.data_dir, password) == []


def test_an_allow_list_entry_is_validated_inline_and_removed_through_a_confirmation(
    console: Server, clock: ManualClock
) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    user = console.cli_json("users", "create", "--name", "Allow Listed")
    page = f"{ADMIN}/users/{user['username']}"
    bad = manager.post(f"{ADMIN}/ips/{user['username']}", {"cidr": "300.1.2.3/33"})
    assert bad.status_code == 400
    error = re.search(r'<p class="field-error" id="cidr-error" role="alert">([^<]+)</p>', bad.text)
    assert error and "300.1.2.3/33" in error.group(1)
    assert 'aria-invalid="true"' in bad.text and 'value="300.1.2.3/33"' in bad.text
    assert console.cli_json("ips", "list", user["username"])["entries"] == []
    added = manager.post(f"{ADMIN}/ips/{user['username']}", {"cidr": "203.0.113.0/24"})
    assert added.status_code == 303 and added.headers["location"] == f"{page}?done=allowed"
    assert "203.0.113.0/24" in manager.get(page).text
    client = manager.create_client()
    assert manager.post(f"{ADMIN}/ips/{client['api_key']}", {"cidr": "198.51.100.7"}).status_code == 303
    assert "198.51.100.7/32" in manager.get(f"{ADMIN}/clients/{client['api_key']}").text
    confirm = manager.get(f"{ADMIN}/ips/{user['username']}/remove?cidr=203.0.113.0/24")
    assert confirm.status_code == 200 and 'name="cidr" value="203.0.113.0/24"' in confirm.text
    assert [e["cidr"] for e in console.cli_json("ips", "list", user["username"])["entries"]] == ["203.0.113.0/24"]
    removed = manager.post(f"{ADMIN}/ips/{user['username']}/remove", {"cidr": "203.0.113.0/24"})
    assert removed.status_code == 303
    assert console.cli_json("ips", "list", user["username"])["entries"] == []
    missing = manager.post(f"{ADMIN}/ips/{user['username']}/remove", {"cidr": "203.0.113.0/24"})
    assert missing.status_code == 404


# -- listings -------------------------------------------------------------------------------------------------


def test_lists_filter_and_page_with_the_next_cursor(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    for i in range(27):
        console.cli_json("clients", "create", "--name", f"Bulk {i:02d}", "--scope", "app_1")
    console.cli_json("clients", "create", "--name", "Needle Corp", "--scope", "app_1")
    first = manager.get(f"{ADMIN}/clients")
    assert first.text.count('href="/console/admin/clients/bk_') == 25
    following = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert following
    second = manager.get(following.group(1).replace("&amp;", "&"))
    assert second.text.count('href="/console/admin/clients/bk_') == 3 and 'rel="next"' not in second.text
    found = manager.get(f"{ADMIN}/clients?q=needle")
    assert "Needle Corp" in found.text and "Bulk 00" not in found.text
    assert manager.get(f"{ADMIN}/clients?status=weird").status_code == 400
    assert manager.get(f"{ADMIN}/clients?cursor=forged").status_code == 400

    console.flush_audit()
    audit = manager.get(f"{ADMIN}/audit?event=client.*")
    assert audit.status_code == 200 and audit.text.count("<code>client.created</code>") == 25
    older = re.search(r'href="([^"]+)" rel="next"', audit.text)
    assert older
    rest = manager.get(older.group(1).replace("&amp;", "&"))
    assert rest.text.count("<code>client.created</code>") == 3
    failures = manager.get(f"{ADMIN}/audit?outcome=failure")
    assert "client.created" not in failures.text
    bad = manager.get(f"{ADMIN}/audit?since=yesterday")
    assert bad.status_code == 400 and "is not a date" in bad.text
    window = manager.get(f"{ADMIN}/audit?since=2999-01-01")
    assert window.status_code == 200 and "No event matches" in window.text


def test_the_dashboard_counts_active_credentials_expiring_certificates_and_refusals(
    console: Server, clock: ManualClock
) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    created = manager.create_client()
    manager.create_client("Second")
    manager.post(f"{ADMIN}/clients/{created['api_key']}/disable")
    user = console.cli_json("users", "create", "--name", "Expiring Soon")
    console.cli_json("certs", "issue", user["username"], "--days", "10", "--out", str(console.data_dir / "certs"))
    console.token({"api_key": created["api_key"], "secret_key": "sk_test_wrong"})
    console.flush_audit()
    dashboard = manager.get(ADMIN)
    assert re.search(r'id="active-clients">1<', dashboard.text)
    assert re.search(r'id="active-users">1<', dashboard.text)
    assert re.search(r'id="expiring-count">1<', dashboard.text) and user["username"] in dashboard.text
    refusals = dashboard.text.split("Recent refusals", 1)[1]
    assert "<code>token.denied</code>" in refusals and "<td>wrong_secret</td>" in refusals
    assert "sk_test_wrong" not in dashboard.text


def test_the_administration_pages_answer_only_the_admin_addresses(server_factory: Any, clock: ManualClock) -> None:
    server: Server = server_factory({"BANKGATE_ADMIN_ALLOWED_IPS": "10.0.0.0/8"}, clock=clock)
    secret = enrol(server, "ops-owner", "owner")
    browser = _browser(server)
    page = browser.get(SIGN_IN)
    assert page.status_code == 403 and "BANKGATE_ADMIN_ALLOWED_IPS" in page.text and 'name="totp"' not in page.text
    refused = browser.post(SIGN_IN, data={"csrf_token": "x", "name": "ops-owner", "password": ADMIN_PASSWORD,
                                          "totp": totp_code(secret, int(clock.now()) // 30)})
    assert refused.status_code == 403 and "bankgate_console=" not in refused.headers.get("set-cookie", "")
    assert browser.get("/console/me/sign-in").status_code == 200  # the users' pages are not the admin surface


def test_a_multipart_form_is_read_with_the_same_limits_as_any_form(console: Server, clock: ManualClock) -> None:
    manager = Manager(console, clock, "onboarding", "integration-manager")
    user = console.cli_json("users", "create", "--name", "Upload Limits")
    path = f"{ADMIN}/users/{user['username']}/certificates"
    token = _csrf(manager.get(f"{ADMIN}/users/{user['username']}"))
    boundary = "bankgate-test-boundary"

    def body(*parts: tuple[str, bytes]) -> bytes:
        chunks = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
                  for name, value in parts]
        return b"".join(chunks) + f"--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    twice = manager.http.post(path, content=body(("csrf_token", token.encode()), ("days", b"1"), ("days", b"2")),
                              headers=headers)
    assert twice.status_code == 400 and "the field days was sent twice" in twice.text
    large = manager.http.post(path, content=body(("csrf_token", token.encode()), ("csr", b"A" * 40_000)),
                              headers=headers)
    assert large.status_code == 400 and "larger than" in large.text
    no_boundary = manager.http.post(path, content=b"x", headers={"content-type": "multipart/form-data"})
    assert no_boundary.status_code == 400 and "not valid multipart/form-data" in no_boundary.text
    forged = manager.http.post(path, content=body(("days", b"30")), headers=headers)
    assert forged.status_code == 403 and "This form has expired" in forged.text
    assert console.cli_json("certs", "list", user["username"]) == []
