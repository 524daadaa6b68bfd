"""The web console's rules, in process: server-side sessions (only a hash stored, idle and absolute limits on the
injectable clock, sign-out deletes), the cookie's flags, CSRF on every POST, the security headers on every answer,
and the M2M user's pages calling the same checks as the JSON routes (one answer for every account-related refusal,
the throttle, the strength rules)."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest

from bankgate.clock import ManualClock
from bankgate.console.web import CSP
from bankgate.credentials.users import PASSWORD_RULES
from bankgate.oauth.account import NOT_RECOGNISED
from conftest import PASSWORD, Server

SIGN_IN, FIRST, HOME, SIGN_OUT = ("/console/me/sign-in", "/console/me/first-sign-in", "/console/me",
                                  "/console/me/sign-out")
NEW_PASSWORD = "Quiet-Meadow-42-Ferry"


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def _cookie(response: httpx.Response, name: str) -> Any:
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if name in jar:
            return header, jar[name]
    return None


def _browser(server: Server, cookies: dict[str, str] | None = None) -> httpx.Client:
    """Another browser on the same in-process server, with only the cookies given."""
    return httpx.Client(transport=server.http._transport, base_url=server.base_url, cookies=cookies)


def _user(server: Server, name: str = "Console User", *, reset: bool = True) -> dict[str, Any]:
    user = server.cli_json("users", "create", "--name", name)
    if reset:
        answer = server.http.post(f"/api/v1/users/{user['username']}/password",
                                  json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD})
        assert answer.status_code == 200, answer.text
    return user


def _sign_in(server: Server, username: str, password: str = PASSWORD, **headers: str) -> httpx.Response:
    token = _csrf(server.http.get(SIGN_IN, headers=headers))
    return server.http.post(SIGN_IN, data={"csrf_token": token, "username": username, "password": password},
                            headers=headers)


def _signed_in(server: Server, user: dict[str, Any]) -> str:
    answer = _sign_in(server, user["username"])
    assert answer.status_code == 303 and answer.headers["location"] == HOME, answer.text
    return str(_cookie(answer, "bankgate_console")[1].value)


def _is_sign_in_redirect(response: httpx.Response, *, ended: bool) -> bool:
    return response.status_code == 303 and response.headers["location"] == SIGN_IN + ("?ended=1" if ended else "")


# -- headers --------------------------------------------------------------------------------------------------


def test_every_console_answer_carries_the_security_headers_and_pages_are_not_cached(server: Server) -> None:
    user = _user(server)
    _signed_in(server, user)
    answers = {path: server.http.get(path) for path in (SIGN_IN, FIRST, HOME, "/console/nowhere", "/console/")}
    answers["csrf"] = server.http.post(SIGN_OUT, data={"csrf_token": "forged"})
    answers["method"] = server.http.put(HOME)
    for name, answer in answers.items():
        assert answer.headers["content-security-policy"] == CSP, name
        assert answer.headers["x-frame-options"] == "DENY", name
        assert answer.headers["referrer-policy"] == "no-referrer", name
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["cache-control"] == "no-store", name
    assert answers["/console/nowhere"].status_code == 404 and "text/html" in answers["/console/nowhere"].headers[
        "content-type"]
    assert answers["method"].status_code == 405 and "This page answers GET, HEAD only" in answers["method"].text
    assert set(answers["method"].headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP


def test_pages_hold_no_inline_script_or_style_and_static_files_are_cached_for_a_year(server: Server) -> None:
    user = _user(server)
    _signed_in(server, user)
    for path in (SIGN_IN, FIRST, HOME):
        html = server.http.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert "<style" not in html and " style=" not in html and re.search(r"\son[a-z]+=", html) is None, path
        for asset in re.findall(r'(?:href|src)="(/console/static/[^"]+)"', html):
            static = server.http.get(asset)
            assert static.status_code == 200
            assert static.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert static.headers["content-security-policy"] == CSP
            assert server.http.get(asset, headers={"If-None-Match": static.headers["etag"]}).status_code == 304
    assert server.http.get("/console/static/nothing.js").status_code == 404


# -- the cookie and the session -------------------------------------------------------------------------------


def test_the_session_cookie_is_httponly_samesite_strict_on_the_console_path_and_secure_only_over_tls(
    server_factory: Any,
) -> None:
    server = server_factory({"BANKGATE_TRUSTED_PROXIES": "127.0.0.1/32"})
    user = _user(server)
    plain = _sign_in(server, user["username"])
    header, cookie = _cookie(plain, "bankgate_console")
    assert cookie["httponly"] and cookie["samesite"].lower() == "strict" and cookie["path"] == "/console"
    assert not cookie["secure"] and not cookie["max-age"] and not cookie["expires"]
    assert PASSWORD not in header and cookie.value not in plain.headers.get("location", "")
    proxied = _sign_in(server, user["username"], **{"X-Forwarded-Proto": "https"})
    assert _cookie(proxied, "bankgate_console")[1]["secure"]


def test_x_forwarded_proto_from_an_untrusted_peer_does_not_make_the_cookie_secure(server: Server) -> None:
    user = _user(server)
    answer = _sign_in(server, user["username"], **{"X-Forwarded-Proto": "https"})
    assert answer.status_code == 303 and not _cookie(answer, "bankgate_console")[1]["secure"]


def test_the_database_holds_only_a_hash_of_the_session_id(server: Server) -> None:
    user = _user(server)
    session_id = _signed_in(server, user)
    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        rows = db.execute("SELECT * FROM console_sessions").fetchall()
    assert len(rows) == 1
    assert hashlib.sha256(session_id.encode()).hexdigest() in rows[0]
    assert session_id not in repr(rows)
    assert rows[0][1] == "user" and rows[0][5] == "127.0.0.1"


def test_sign_out_deletes_the_session_so_its_cookie_signs_no_one_in_again(server: Server) -> None:
    user = _user(server)
    session_id = _signed_in(server, user)
    home = server.http.get(HOME)
    assert home.status_code == 200 and user["username"] in home.text
    out = server.http.post(SIGN_OUT, data={"csrf_token": _csrf(home)})
    assert out.status_code == 303 and out.headers["location"] == SIGN_IN + "?signed_out=1"
    assert 'bankgate_console=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    replayed = _browser(server, {"bankgate_console": session_id}).get(HOME)
    assert _is_sign_in_redirect(replayed, ended=True)
    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        assert db.execute("SELECT count(*) FROM console_sessions").fetchone() == (0,)
    assert "Your session ended" in server.http.get(SIGN_IN + "?ended=1").text


def test_without_a_session_the_pages_send_to_sign_in(server: Server) -> None:
    assert _is_sign_in_redirect(server.http.get(HOME), ended=False)
    assert _is_sign_in_redirect(_browser(server, {"bankgate_console": "x" * 43}).get(HOME), ended=True)
    assert server.http.get("/console/").headers["location"] == HOME


def test_an_idle_session_ends_and_a_used_one_ends_at_its_lifetime(server_factory: Any, clock: ManualClock) -> None:
    server = server_factory({"BANKGATE_CONSOLE_IDLE_TIMEOUT": "600", "BANKGATE_CONSOLE_SESSION_LIFETIME": "1500"},
                            clock=clock)
    user = _user(server)
    _signed_in(server, user)
    clock.advance(599)
    assert server.http.get(HOME).status_code == 200
    clock.advance(599)
    assert server.http.get(HOME).status_code == 200  # used: the idle time starts again
    clock.advance(600)
    assert _is_sign_in_redirect(server.http.get(HOME), ended=True)

    _signed_in(server, user)
    for _ in range(2):
        clock.advance(500)
        assert server.http.get(HOME).status_code == 200
    clock.advance(500)  # 1500 s after sign-in, however busy
    assert _is_sign_in_redirect(server.http.get(HOME), ended=True)


def test_a_disabled_user_is_signed_out(server: Server) -> None:
    user = _user(server)
    _signed_in(server, user)
    server.cli("users", "disable", user["username"])
    assert _is_sign_in_redirect(server.http.get(HOME), ended=True)


# -- CSRF and forms -------------------------------------------------------------------------------------------


def test_a_post_without_the_csrf_token_or_with_another_is_refused_and_changes_nothing(server: Server) -> None:
    user = _user(server, reset=False)
    fields = {"username": user["username"], "passphrase": user["initial_passphrase"],
              "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
    fresh = _browser(server)  # no form cookie yet
    for data in (fields, {**fields, "csrf_token": "0" * 64}):
        refused = fresh.post(FIRST, data=data)
        assert refused.status_code == 403 and "This form has expired" in refused.text
        assert _cookie(refused, "bankgate_console") is None
    token = _csrf(server.http.get(FIRST))
    other = token[:-1] + ("0" if token[-1] != "0" else "1")  # another token, whatever its last character was
    assert server.http.post(FIRST, data={**fields, "csrf_token": other}).status_code == 403
    # The passphrase is still unused: the right token lets it through.
    assert server.http.post(FIRST, data={**fields, "csrf_token": token}).status_code == 303

    home = server.http.get(HOME)
    assert server.http.post(SIGN_OUT, data={"reason": "none"}).status_code == 403
    assert server.http.post(SIGN_OUT, data={"csrf_token": token}).status_code == 403  # the pre-session token
    assert server.http.get(HOME).status_code == 200
    assert server.http.post(SIGN_OUT, data={"csrf_token": _csrf(home)}).status_code == 303


def test_a_form_that_is_not_url_encoded_or_names_a_field_twice_is_a_400_page(server: Server) -> None:
    token = _csrf(server.http.get(SIGN_IN))
    as_json = server.http.post(SIGN_IN, json={"csrf_token": token, "username": "a", "password": "b"})
    assert as_json.status_code == 400 and "application/x-www-form-urlencoded" in as_json.text
    twice = server.http.post(SIGN_IN, content=f"csrf_token={token}&username=a&username=b&password=c",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert twice.status_code == 400 and "username was sent twice" in twice.text


def test_secrets_in_the_query_string_are_refused_before_the_console(server: Server) -> None:
    answer = server.http.post(SIGN_IN + "?password=Blue-Harbour-7-Lantern")
    assert answer.status_code == 400


# -- the user's pages ---------------------------------------------------------------------------------------------


def test_sign_in_answers_an_unknown_user_and_a_wrong_password_alike(server: Server) -> None:
    user = _user(server)
    unknown = _sign_in(server, "nobody-here", "Wrong-Password-123")
    wrong = _sign_in(server, user["username"], "Wrong-Password-123")
    assert unknown.status_code == wrong.status_code == 401
    message = "the username or password is wrong"
    assert message in unknown.text and message in wrong.text
    assert _cookie(wrong, "bankgate_console") is None
    events = [e for e in server.audit() if e["event"] == "console.sign_in"]
    assert [e["outcome"] for e in events] == ["failure", "failure"]


def test_sign_in_is_throttled_like_the_authorize_route(server_factory: Any) -> None:
    server = server_factory({"BANKGATE_THROTTLE_ACCOUNT_IP_FAILURES": "2"})
    user = _user(server)
    for _ in range(2):
        assert _sign_in(server, user["username"], "Wrong-Password-123").status_code == 401
    blocked = _sign_in(server, user["username"])
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert "too many failed attempts" in blocked.text


def test_the_initial_passphrase_leads_to_the_first_sign_in_form_with_the_servers_rules(server: Server) -> None:
    user = _user(server, reset=False)
    answer = _sign_in(server, user["username"], user["initial_passphrase"])
    assert answer.status_code == 200 and "First sign-in" in answer.text
    assert _cookie(answer, "bankgate_console") is None  # not signed in with a passphrase
    for rule in PASSWORD_RULES:
        assert rule in answer.text


def test_first_sign_in_refuses_as_the_json_route_does_then_signs_in(server: Server) -> None:
    user = _user(server, reset=False)
    name, passphrase = user["username"], user["initial_passphrase"]
    token = _csrf(server.http.get(FIRST))

    def first(username: str, passphrase: str, new: str, confirm: str | None = None) -> httpx.Response:
        return server.http.post(FIRST, data={"csrf_token": token, "username": username, "passphrase": passphrase,
                                             "new_password": new, "confirm_password": new if confirm is None
                                             else confirm})

    differ = first(name, passphrase, NEW_PASSWORD, NEW_PASSWORD + "x")
    assert differ.status_code == 400 and "The two new passwords differ" in differ.text
    wrong, unknown = first(name, "aaaaa-bbbbb-ccccc-ddddd-eeeee", NEW_PASSWORD), first("nobody", passphrase,
                                                                                         NEW_PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert NOT_RECOGNISED in wrong.text and NOT_RECOGNISED in unknown.text
    weak = first(name, passphrase, "short1A")
    assert weak.status_code == 400 and PASSWORD_RULES[0] in weak.text.split('role="alert"')[1]
    assert "short1A" not in weak.text and passphrase not in weak.text
    done = first(name, passphrase, NEW_PASSWORD)
    assert done.status_code == 303 and done.headers["location"] == HOME + "?welcome=1"
    assert _cookie(done, "bankgate_console") is not None
    assert "Your password is set" in server.http.get(done.headers["location"]).text
    again = first(name, passphrase, NEW_PASSWORD + "2")
    assert again.status_code == 401 and NOT_RECOGNISED in again.text  # used: answered as a wrong passphrase

    events = [e for e in server.audit() if e["event"] == "user.password_reset"]
    assert [(e["outcome"], e["detail"].get("reason")) for e in events] == [
        ("failure", "wrong_passphrase"), ("failure", "unknown_user"), ("failure", "weak_password"),
        ("success", None), ("failure", "passphrase_used")]
    assert all(e["actor"].startswith("console:") and e["source_ip"] == "127.0.0.1" for e in events)
    trail = repr(events)
    assert passphrase not in trail and NEW_PASSWORD not in trail


def test_the_home_page_shows_the_certificates_a_curl_without_the_password_and_the_allow_list(
    server: Server, tmp_path: Any
) -> None:
    user = _user(server)
    issued = server.cli_json("certs", "issue", user["username"], "--out", str(tmp_path))
    server.cli("ips", "allow", user["username"], "127.0.0.1/32")
    _signed_in(server, user)
    home = server.http.get(HOME).text
    assert re.fullmatch(r"[0-9A-F]{40}", issued["thumbprint"])
    assert issued["thumbprint"] in home and issued["serial"] in home and "valid" in home
    assert f"-u &#39;{user['username']}:&lt;your password&gt;&#39;" in home
    assert "--cert &lt;your-certificate.crt.pem&gt; --key &lt;your-private-key.key.pem&gt;" in home
    assert f"{server.base_url}/api/v1/authorizations/authorize" in home
    assert PASSWORD not in home and "127.0.0.1/32" in home

    pem = server.http.get(f"/console/me/certificates/{issued['serial']}.pem")
    assert pem.status_code == 200 and pem.headers["x-certificate-thumbprint"] == issued["thumbprint"]
    assert pem.text == (tmp_path / f"{issued['serial']}.crt.pem").read_text()
    assert pem.headers["content-security-policy"] == CSP


def test_a_user_downloads_only_their_own_certificates(server: Server, tmp_path: Any) -> None:
    alice, bob = _user(server, "Alice"), _user(server, "Bob")
    bobs = server.cli_json("certs", "issue", bob["username"], "--out", str(tmp_path))
    _signed_in(server, alice)
    answer = server.http.get(f"/console/me/certificates/{bobs['serial']}.pem")
    assert answer.status_code == 404 and "BEGIN CERTIFICATE" not in answer.text


@pytest.mark.parametrize("path", [HOME, f"{HOME}/certificates/01.pem"])
def test_the_user_pages_need_a_session(server: Server, path: str) -> None:
    assert _is_sign_in_redirect(server.http.get(path), ended=False)


def test_a_password_typed_into_the_username_field_stays_out_of_the_audit_trail(server: Server) -> None:
    token = _csrf(server.http.get(FIRST))
    typed = "Secret Typed Here!9"
    refused = server.http.post(FIRST, data={"csrf_token": token, "username": typed, "passphrase": "x",
                                            "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD})
    assert refused.status_code == 401
    assert _sign_in(server, typed, "whatever").status_code == 401
    trail = repr(server.audit())
    assert typed not in trail and "user.password_reset" in trail and "console.sign_in" in trail


def test_signing_in_again_ends_the_session_the_browser_brought(server: Server) -> None:
    user = _user(server)
    first = _signed_in(server, user)
    second = _signed_in(server, user)
    assert first != second
    assert _is_sign_in_redirect(_browser(server, {"bankgate_console": first}).get(HOME), ended=True)
    assert _browser(server, {"bankgate_console": second}).get(HOME).status_code == 200


# -- the session store, on SQLite and PostgreSQL --------------------------------------------------------------


async def test_sessions_are_found_by_their_id_only_and_end_idle_at_their_lifetime_or_on_close(
    services: Any, clock: ManualClock
) -> None:
    from bankgate.console.sessions import ConsoleSessions, session_hash

    sessions = ConsoleSessions(services.store, idle_timeout=100, lifetime=250, clock=clock)
    session_id, opened = await sessions.open("user", "u-1", "203.0.113.7")
    assert opened.id_hash == session_hash(session_id) and session_id not in repr(opened)
    assert await sessions.find(opened.id_hash) is None  # the stored hash is not a session id
    assert await sessions.find(session_id[:-1] + ("A" if session_id[-1] != "A" else "B")) is None
    clock.advance(99)
    found = await sessions.find(session_id)
    assert found is not None and (found.principal_kind, found.principal_id, found.source_ip) == (
        "user", "u-1", "203.0.113.7")
    assert found.last_seen == clock.now()
    clock.advance(99)
    assert await sessions.find(session_id) is not None
    clock.advance(53)  # 251 s after it opened, used 53 s ago
    assert await sessions.find(session_id) is None

    idle_id, _ = await sessions.open("user", "u-1", None)
    clock.advance(100)
    assert await sessions.find(idle_id) is None

    kept, _ = await sessions.open("user", "u-1", None)
    other, _ = await sessions.open("admin", "u-1", None)
    await sessions.close(kept)
    assert await sessions.find(kept) is None and await sessions.find(other) is not None
    again, _ = await sessions.open("user", "u-2", None)
    assert await sessions.close_all("admin", "u-1") == 1
    assert await sessions.find(other) is None and await sessions.find(again) is not None
