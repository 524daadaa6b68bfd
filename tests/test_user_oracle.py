"""No username oracle on the M2M user's endpoints (password reset, certificate list and download, authorize):
unknown user, wrong password or passphrase, used passphrase, another user's certificate get one answer after the
same work (one argon2 verification), every such failure is throttled, and only a matching credential hears about
onboarding state or the allow list. In process: `create_app` with its lifespan and httpx's ASGI transport; the
client certificate arrives in the ASGI TLS extension as uvicorn would put it there."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from bankgate.app import create_app
from bankgate.config import load_settings
from bankgate.runtime import Runtime
from bankgate.services import Services
from conftest import AUTHORIZE, PASSWORD, user_basic

WRONG_PASSPHRASE = "aaaaa-bbbbb-ccccc-ddddd-eeeee"
WRONG_PASSWORD = "Wrong-Harbour-7-Lantern"
NEW_PASSWORD = "Second-Harbour-8-Beacon"
ELSEWHERE = ("10.9.8.7", 40000)  # not on the sandbox's default allow list (loopback only)


class PresentsCertificate:
    """The app behind a TLS server that asked for a client certificate: `pem` is what the client presented."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pem: str | None = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.pem is not None:
            scope.setdefault("extensions", {})["tls"] = {
                "server_cert": None, "client_cert_chain": [self.pem], "client_cert_name": None,
                "client_cert_error": None, "tls_version": 0x0304, "cipher_suite": None,
            }
        await self.app(scope, receive, send)


class Argon2Calls:
    """Counts argon2 verifications (and how many ran at once) in every thread of this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.running = 0
        self.peak = 0
        lock = threading.Lock()
        original = PasswordHasher.verify

        def verify(hasher: PasswordHasher, stored: str | bytes, password: str | bytes) -> bool:
            with lock:
                self.count += 1
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                return original(hasher, stored, password)
            finally:
                with lock:
                    self.running -= 1

        monkeypatch.setattr(PasswordHasher, "verify", verify)


@dataclass
class Bankgate:
    runtime: Runtime
    tls: PresentsCertificate
    http: httpx.AsyncClient
    elsewhere: httpx.AsyncClient

    async def user(self, username: str, *, reset: bool = True, certificate: bool = False) -> dict[str, Any]:
        users = self.runtime.services.users
        new = await users.create(username.title(), username=username)
        found: dict[str, Any] = {"username": username, "passphrase": new.initial_passphrase}
        if certificate:
            issued = await self.runtime.services.pki.issue(new.user)
            found["pem"] = issued.certificate_pem
        if reset:
            await users.reset_password(username, new.initial_passphrase, PASSWORD)
        return found

    async def authorize(self, username: str, password: str, pem: str) -> httpx.Response:
        self.tls.pem = pem
        try:
            return await self.http.get(AUTHORIZE, headers=user_basic(username, password))
        finally:
            self.tls.pem = None


@pytest.fixture
def bankgate_factory(tmp_path: Path) -> Callable[..., Any]:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make(**settings: Any) -> AsyncIterator[Bankgate]:
        configured = load_settings(data_dir=tmp_path / "data", **settings)
        services = await Services.open(configured, initialise=True)
        await services.init()
        await services.close()
        app = create_app(configured)
        tls = PresentsCertificate(app)
        async with app.starlette.router.lifespan_context(app.starlette):  # type: ignore[attr-defined]
            local = httpx.ASGITransport(app=tls, client=("127.0.0.1", 40000))
            remote = httpx.ASGITransport(app=tls, client=ELSEWHERE)
            async with httpx.AsyncClient(transport=local, base_url="http://bankgate.test") as http, \
                    httpx.AsyncClient(transport=remote, base_url="http://bankgate.test") as elsewhere:
                yield Bankgate(app.state.runtime, tls, http, elsewhere)  # type: ignore[attr-defined]

    return make


@pytest.fixture
async def bankgate(bankgate_factory: Callable[..., Any]) -> AsyncIterator[Bankgate]:
    async with bankgate_factory() as made:
        yield made


def _answer(response: httpx.Response) -> tuple[int, dict[str, Any], dict[str, str | None]]:
    """Everything a caller sees but the `instance` (the path, which holds the username asked about)."""
    body = {key: value for key, value in response.json().items() if key != "instance"}
    headers = {name: response.headers.get(name) for name in ("content-type", "www-authenticate", "retry-after")}
    return response.status_code, body, headers


def _reset(http: httpx.AsyncClient, username: str, passphrase: str,
           new_password: str = PASSWORD) -> Awaitable[httpx.Response]:
    return http.post(f"/api/v1/users/{username}/password",
                     json={"passphrase": passphrase, "new_password": new_password})


def _certificates(http: httpx.AsyncClient, username: str, password: str) -> Awaitable[httpx.Response]:
    return http.get(f"/api/v1/users/{username}/certificates", headers=user_basic(username, password))


# -- one answer -----------------------------------------------------------------------------------------------


async def test_password_reset_answers_unknown_user_wrong_and_used_passphrase_alike(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = await bankgate.user("fresh-user", reset=False)
    onboarded = await bankgate.user("onboarded-user")
    argon2 = Argon2Calls(monkeypatch)
    answers = []
    for username, passphrase in [("nobody-here", fresh["passphrase"]), ("fresh-user", WRONG_PASSPHRASE),
                                 ("onboarded-user", onboarded["passphrase"]), ("onboarded-user", WRONG_PASSPHRASE)]:
        before = argon2.count
        response = await _reset(bankgate.http, username, passphrase)
        assert argon2.count - before == 1, (username, "exactly one argon2 verification")
        answers.append(_answer(response))
    assert answers[0][0] == 401
    assert "the username or initial passphrase is wrong; if you reset it already, use your password" in (
        answers[0][1]["detail"])
    assert all(answer == answers[0] for answer in answers), answers
    # The weak-password rule speaks only to the holder of the passphrase.
    assert _answer(await _reset(bankgate.http, "nobody-here", WRONG_PASSPHRASE, "short1A"))[:2] == answers[0][:2]
    weak = await _reset(bankgate.http, "fresh-user", fresh["passphrase"], "short1A")
    assert weak.status_code == 400 and "too weak" in weak.json()["detail"]
    assert (await _reset(bankgate.http, "fresh-user", fresh["passphrase"])).status_code == 200


async def test_password_reset_says_address_not_allowed_only_after_the_passphrase_matched(
    bankgate: Bankgate,
) -> None:
    fresh = await bankgate.user("fresh-user", reset=False)
    unknown = _answer(await _reset(bankgate.elsewhere, "nobody-here", WRONG_PASSPHRASE))
    wrong = _answer(await _reset(bankgate.elsewhere, "fresh-user", WRONG_PASSPHRASE))
    assert unknown == wrong and wrong[0] == 401
    refused = await _reset(bankgate.elsewhere, "fresh-user", fresh["passphrase"])
    assert refused.status_code == 403 and "not allowed" in refused.json()["detail"]
    assert (await _reset(bankgate.http, "fresh-user", fresh["passphrase"])).status_code == 200


async def test_certificate_endpoints_say_nothing_about_an_account_before_its_password(bankgate: Bankgate) -> None:
    fresh = await bankgate.user("fresh-user", reset=False, certificate=True)
    await bankgate.user("onboarded-user", certificate=True)
    downloads = [
        await bankgate.http.get(f"/api/v1/users/{name}/certificates/01", headers=user_basic(name, WRONG_PASSWORD))
        for name in ("nobody-here", "fresh-user", "onboarded-user")
    ]
    answers = [
        await _certificates(bankgate.http, "nobody-here", WRONG_PASSWORD),
        await _certificates(bankgate.http, "fresh-user", WRONG_PASSWORD),  # was 403 "reset first"
        await _certificates(bankgate.http, "onboarded-user", WRONG_PASSWORD),
        await _certificates(bankgate.elsewhere, "onboarded-user", WRONG_PASSWORD),  # was 403 "not allowed"
        await _certificates(bankgate.elsewhere, "fresh-user", fresh["passphrase"] + "x"),
        *downloads,
    ]
    first = _answer(answers[0])
    assert first[0] == 401 and first[1]["detail"] == "the username or password is wrong"
    assert [_answer(answer) for answer in answers] == [first] * len(answers)

    # Only a matching credential hears about the account.
    early = await _certificates(bankgate.http, "fresh-user", fresh["passphrase"])
    assert early.status_code == 403
    assert "reset the initial passphrase first: POST /api/v1/users/fresh-user/password" in early.json()["detail"]
    elsewhere = await _certificates(bankgate.elsewhere, "onboarded-user", PASSWORD)
    assert elsewhere.status_code == 403 and "not allowed" in elsewhere.json()["detail"]
    assert (await _certificates(bankgate.http, "onboarded-user", PASSWORD)).status_code == 200


async def test_authorize_answers_another_users_certificate_like_a_wrong_password(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await bankgate.user("alice", certificate=True)
    bob = await bankgate.user("bob", certificate=True)
    argon2 = Argon2Calls(monkeypatch)
    answers = []
    for username, password, pem in [
        ("alice", PASSWORD, bob["pem"]),  # alice's right password, bob's certificate
        ("alice", WRONG_PASSWORD, alice["pem"]),
        ("nobody-here", PASSWORD, bob["pem"]),
        ("alice", WRONG_PASSWORD, bob["pem"]),
    ]:
        before = argon2.count
        answers.append(_answer(await bankgate.authorize(username, password, pem)))
        assert argon2.count - before == 1, (username, "exactly one argon2 verification")
    assert answers[0][0] == 401 and answers[0][1]["detail"] == "the username or password is wrong"
    assert answers == [answers[0]] * len(answers)
    assert (await bankgate.authorize("alice", PASSWORD, alice["pem"])).status_code == 200


async def test_authorize_before_the_reset_says_so_only_to_the_holder_of_the_passphrase(bankgate: Bankgate) -> None:
    fresh = await bankgate.user("fresh-user", reset=False, certificate=True)
    other = await bankgate.user("other-user", certificate=True)
    wrong = _answer(await bankgate.authorize("fresh-user", WRONG_PASSWORD, fresh["pem"]))
    assert wrong == _answer(await bankgate.authorize("other-user", WRONG_PASSWORD, other["pem"]))
    assert wrong[0] == 401
    early = await bankgate.authorize("fresh-user", fresh["passphrase"], fresh["pem"])
    assert early.status_code == 403 and "reset the initial passphrase first" in early.json()["detail"]


# -- the same work ----------------------------------------------------------------------------------------------


async def _median_seconds(
    unknown: Callable[[], Awaitable[httpx.Response]],
    known: Callable[[], Awaitable[httpx.Response]],
    status: int,
    rounds: int = 7,
) -> tuple[float, float]:
    """The median work of each request, measured in turns (unknown, known, unknown, …) as this process's CPU time:
    the server runs in this process, so what other programs on the machine do at the same moment does not count."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):
        for side, request in enumerate((unknown, known)):
            started = time.process_time()
            response = await request()
            times[side].append(time.process_time() - started)
            assert response.status_code == status, response.text
    return statistics.median(times[0]), statistics.median(times[1])


async def test_an_unknown_user_takes_as_long_as_a_wrong_password(bankgate_factory: Callable[..., Any]) -> None:
    async with bankgate_factory(throttle_ip_failures=1000, throttle_account_ip_failures=1000) as bankgate:
        await bankgate.user("onboarded-user")
        await bankgate.user("fresh-user", reset=False)
        await _certificates(bankgate.http, "nobody-here", WRONG_PASSWORD)  # the dummy hash is made once
        pairs = {
            "certificates": (lambda: _certificates(bankgate.http, "nobody-here", WRONG_PASSWORD),
                             lambda: _certificates(bankgate.http, "onboarded-user", WRONG_PASSWORD)),
            "reset": (lambda: _reset(bankgate.http, "nobody-here", WRONG_PASSPHRASE),
                      lambda: _reset(bankgate.http, "fresh-user", WRONG_PASSPHRASE)),
            "used passphrase": (lambda: _reset(bankgate.http, "nobody-here", WRONG_PASSPHRASE),
                                lambda: _reset(bankgate.http, "onboarded-user", WRONG_PASSPHRASE)),
        }
        for name, (unknown, known) in pairs.items():
            unknown_seconds, known_seconds = await _median_seconds(unknown, known, 401)
            ratio = unknown_seconds / known_seconds
            assert 0.5 <= ratio <= 2.0, (name, ratio)


async def test_argon2_verifications_run_at_most_the_bound_at_once(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    await bankgate.user("onboarded-user")
    argon2 = Argon2Calls(monkeypatch)
    bound = bankgate.runtime.services.users.max_verifications
    names = [f"nobody-{n}" for n in range(bound + 4)]  # distinct accounts: no per-account block in the way
    answers = await asyncio.gather(*(_certificates(bankgate.http, name, WRONG_PASSWORD) for name in names))
    assert {answer.status_code for answer in answers} == {401}
    assert argon2.count == len(names)
    assert argon2.peak <= bound


# -- throttled ----------------------------------------------------------------------------------------------------


async def test_wrong_or_used_passphrases_are_throttled_before_any_argon2_work(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    onboarded = await bankgate.user("onboarded-user")
    argon2 = Argon2Calls(monkeypatch)
    statuses = [(await _reset(bankgate.http, "onboarded-user", onboarded["passphrase"])).status_code
                for _ in range(5)]  # the threshold per account and address
    assert statuses == [401] * 5 and argon2.count == 5
    for _ in range(3):
        refused = await _reset(bankgate.http, "onboarded-user", onboarded["passphrase"])
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert argon2.count == 5, "a throttled request is refused before argon2"
    # The certificate endpoints count against the same account.
    listing = await _certificates(bankgate.http, "onboarded-user", PASSWORD)
    assert listing.status_code == 429 and argon2.count == 5


async def test_a_user_not_reset_yet_guessing_passwords_is_throttled(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = await bankgate.user("fresh-user", reset=False)
    argon2 = Argon2Calls(monkeypatch)
    statuses = [(await _certificates(bankgate.http, "fresh-user", WRONG_PASSWORD)).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    assert argon2.count == 5
    blocked = await _certificates(bankgate.http, "fresh-user", fresh["passphrase"])
    assert blocked.status_code == 429 and argon2.count == 5


# -- changes take effect at once -------------------------------------------------------------------------------


async def test_reset_through_the_server_then_ask_again_is_200_at_once(bankgate: Bankgate) -> None:
    fresh = await bankgate.user("fresh-user", reset=False, certificate=True)
    early = await bankgate.authorize("fresh-user", fresh["passphrase"], fresh["pem"])
    assert early.status_code == 403  # the server now holds the record as "not reset"
    assert (await _certificates(bankgate.http, "fresh-user", fresh["passphrase"])).status_code == 403
    assert (await _reset(bankgate.http, "fresh-user", fresh["passphrase"])).status_code == 200
    assert (await bankgate.authorize("fresh-user", PASSWORD, fresh["pem"])).status_code == 200
    assert (await _certificates(bankgate.http, "fresh-user", PASSWORD)).status_code == 200


async def test_a_change_made_elsewhere_is_read_again_before_a_negative_answer(
    bankgate: Bankgate, tmp_path: Path
) -> None:
    """Both records are cached by the first requests; the next negative answer would come from them."""
    fresh = await bankgate.user("fresh-user", reset=False)
    assert (await _certificates(bankgate.http, "fresh-user", fresh["passphrase"])).status_code == 403
    assert (await _certificates(bankgate.http, "later-user", WRONG_PASSWORD)).status_code == 401
    other = await Services.open(load_settings(data_dir=tmp_path / "data"))  # the CLI, or another process
    try:
        await other.users.reset_password("fresh-user", fresh["passphrase"], PASSWORD)
        later = await other.users.create("Later User", username="later-user")
    finally:
        await other.close()
    listing = await _certificates(bankgate.http, "fresh-user", PASSWORD)
    assert listing.status_code == 200, listing.text
    early = await _certificates(bankgate.http, "later-user", later.initial_passphrase)
    assert early.status_code == 403 and "reset the initial passphrase first" in early.json()["detail"]


async def test_a_password_changed_elsewhere_works_at_once(bankgate: Bankgate, tmp_path: Path) -> None:
    await bankgate.user("onboarded-user")
    assert (await _certificates(bankgate.http, "onboarded-user", PASSWORD)).status_code == 200  # record cached
    other = await Services.open(load_settings(data_dir=tmp_path / "data"))
    try:
        again = await other.users.new_passphrase("onboarded-user")
        await other.users.reset_password("onboarded-user", again.initial_passphrase, NEW_PASSWORD)
    finally:
        await other.close()
    assert (await _certificates(bankgate.http, "onboarded-user", NEW_PASSWORD)).status_code == 200
    assert (await _certificates(bankgate.http, "onboarded-user", PASSWORD)).status_code == 401


async def test_a_disabled_user_and_another_environments_user_are_answered_as_unknown(
    bankgate: Bankgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import update

    from bankgate.store import schema

    for name in ("disabled-user", "production-user"):
        await bankgate.user(name)
    async with bankgate.runtime.services.store.begin() as conn:
        users = schema.users
        await conn.execute(update(users).where(users.c.username == "disabled-user").values(status="disabled"))
        await conn.execute(update(users).where(users.c.username == "production-user").values(environment="production"))
    argon2 = Argon2Calls(monkeypatch)
    answers = [_answer(await _certificates(bankgate.http, name, PASSWORD))
               for name in ("nobody-here", "disabled-user", "production-user")]  # the right password, even
    assert answers[0][0] == 401 and answers == [answers[0]] * 3
    assert argon2.count == 3
