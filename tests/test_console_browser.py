"""The M2M user's console in a real browser (Debian's chromium through Playwright) against real `bankgate serve`
processes: the seed's steps from the first sign-in to a certificate-bound token over mutual TLS, with the strict
Content-Security-Policy holding (no violation reported), CSRF and the idle timeout enforced.

Screenshots of each page go to the test's directory, or to $BANKGATE_CONSOLE_SCREENSHOTS (docs/console holds the
committed ones)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conftest import PASSWORD, Tls

NEW_PASSWORD = "Quiet-Meadow-42-Ferry"
pytestmark = pytest.mark.real_server


def _screenshot(page: Any, name: str, tmp_path: Path, *, full_page: bool = True) -> None:
    directory = Path(os.environ.get("BANKGATE_CONSOLE_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"{name}.png"), full_page=full_page)


class Watched:
    """A browser tab that records what the browser reports: CSP violations and script errors."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.violations: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.violations.append(f"page error: {error}"))

    def _console(self, message: Any) -> None:
        # Chromium reports a blocked script, style, frame or form as "Refused to … Content Security Policy …".
        if "Content Security Policy" in message.text or message.text.startswith("Refused to"):
            self.violations.append(message.text)

    def no_inline_code(self) -> None:
        inline = self.page.evaluate(
            "document.querySelectorAll('script:not([src]), style, [style]').length"
        )
        assert inline == 0


@pytest.fixture
def tab(browser: Any) -> Iterator[Watched]:
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True, viewport={"width": 1100,
                                                                                             "height": 760})
    try:
        yield Watched(context)
    finally:
        context.close()


def test_a_new_user_resets_the_passphrase_downloads_the_certificate_and_gets_a_token(
    tls: Tls, tab: Watched, tmp_path: Path
) -> None:
    server = tls.server
    user = server.cli_json("users", "create", "--name", "Acme Treasury API")
    issued = server.cli_json("certs", "issue", user["username"], "--out", str(tmp_path / "cert"))
    key_pair = (str(tmp_path / "cert" / f"{issued['serial']}.crt.pem"),
                str(tmp_path / "cert" / f"{issued['serial']}.key.pem"))
    page = tab.page

    first = page.goto(f"{server.base_url}/console/me")
    assert first is not None and page.url.endswith("/console/me/sign-in")
    assert "default-src 'self'" in first.headers["content-security-policy"]
    _screenshot(page, "sign-in", tmp_path)
    page.fill("input[name=username]", user["username"])
    page.fill("input[name=password]", user["initial_passphrase"])
    page.click("button[type=submit]")
    assert page.locator("h1").inner_text() == "First sign-in"

    page.fill("input[name=passphrase]", user["initial_passphrase"])
    page.fill("#new-password", "short1A")
    page.fill("#confirm-password", "short1A")
    assert page.locator("#strength-hint").is_visible()  # the script's live hint, from the server's numbers
    page.click("button[type=submit]")
    refusal = page.locator("[role=alert]").inner_text()
    assert "too weak" in refusal and "at least 12 characters" in refusal
    _screenshot(page, "first-sign-in", tmp_path)

    page.fill("input[name=passphrase]", user["initial_passphrase"])
    page.fill("#new-password", NEW_PASSWORD)
    page.fill("#confirm-password", NEW_PASSWORD)
    page.click("button[type=submit]")
    assert page.url.endswith("/console/me?welcome=1")
    shown = page.locator("[data-thumbprint]").inner_text()
    assert shown == issued["thumbprint"]
    assert user["username"] in page.locator("#curl").inner_text() and NEW_PASSWORD not in page.content()
    tab.no_inline_code()
    _screenshot(page, "certificates", tmp_path)

    cookie = next(c for c in tab.context.cookies() if c["name"] == "bankgate_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"

    with page.expect_download() as download:
        page.click("text=Download PEM")
    pem = Path(download.value.path()).read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert hashlib.sha1(der).hexdigest().upper() == issued["thumbprint"]  # noqa: S324 - the seed's thumbprint

    token = tls.authorize({**user, "cert": key_pair}, password=NEW_PASSWORD)
    assert token.status_code == 200, token.text
    assert tls.authorize({**user, "cert": key_pair}, password=PASSWORD).status_code == 401

    page.click("text=Sign out")
    assert page.url.endswith("/console/me/sign-in?signed_out=1")
    assert tab.violations == []


def test_a_post_without_the_csrf_token_is_refused(tls: Tls, tab: Watched) -> None:
    server = tls.server
    user = tls.new_user("Csrf Target", certificate=False)
    page = tab.page
    page.goto(f"{server.base_url}/console/me/sign-in")
    page.fill("input[name=username]", user["username"])
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    assert page.url.endswith("/console/me")
    # The browser's own cookies, a form without the token: as a page elsewhere would send it.
    forged = tab.context.request.post(f"{server.base_url}/console/me/sign-out", form={"reason": "forged"},
                                      max_redirects=0)
    assert forged.status == 403 and "This form has expired" in forged.text()
    page.reload()
    assert page.url.endswith("/console/me") and user["username"] in page.content()
    assert tab.violations == []
    # What the watcher would see if a page held inline code: the policy blocks it and the browser says so.
    page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';
                             document.body.appendChild(s); }""")
    page.wait_for_timeout(100)
    assert page.evaluate("window.ran") is None
    assert any("Content Security Policy" in v for v in tab.violations), tab.violations


def test_an_idle_session_is_sent_to_sign_in(server_factory: Any, tab: Watched) -> None:
    server = server_factory({"BANKGATE_CONSOLE_IDLE_TIMEOUT": "2"}, process=True)
    user = server.cli_json("users", "create", "--name", "Idle User")
    reset = server.http.post(f"/api/v1/users/{user['username']}/password",
                             json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD})
    assert reset.status_code == 200
    page = tab.page
    page.goto(f"{server.base_url}/console/me/sign-in")
    page.fill("input[name=username]", user["username"])
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    assert page.url.endswith("/console/me")
    cookie = next(c for c in tab.context.cookies() if c["name"] == "bankgate_console")
    assert not cookie["secure"]  # plain HTTP
    time.sleep(2.2)  # a real process reads the machine's clock (the in-process tests use a ManualClock)
    page.reload()
    assert page.url.endswith("/console/me/sign-in?ended=1")
    assert "Your session ended" in page.locator("[role=status]").inner_text()
    assert tab.violations == []


def test_the_api_page_shows_every_operation_of_the_document(tls: Tls, tab: Watched, tmp_path: Path) -> None:
    server = tls.server
    document = server.http.get("/openapi.json").json()
    operations = sum(len(item) for item in document["paths"].values())
    page = tab.page
    assert page.goto(f"{server.base_url}/docs").status == 200
    page.wait_for_selector(".opblock", timeout=15_000)
    assert page.locator(".opblock").count() == operations
    assert page.locator(".info .title").inner_text().startswith(document["info"]["title"])
    _screenshot(page, "api-docs", tmp_path, full_page=False)
    assert tab.violations == []
