"""Revocation reaches guards running apart from the server: `GET /oauth/revocations` publishes revoked tokens and
subjects to clients with the `bankgate:revocations` application, and `Guard.remote(..., revocations=True)` polls it
into the same `DenyList` the server checks its own tokens with. A revoked client's token is refused by the remote
guard within one poll; a list that cannot be refreshed fails closed (503).

In process: the server app with its lifespan over `httpx.ASGITransport`, the remote guard reaching it through the
same transport, a small API behind `GuardMiddleware` over a second one; a fake clock where time matters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankgate.app import BankgateApp, create_app
from bankgate.config import Settings
from bankgate.guard import (
    DenyList,
    Guard,
    GuardMiddleware,
    RemoteJWKS,
    RemoteRevocations,
    RevocationUnavailable,
    TokenVerifier,
    principal_of,
)
from bankgate.guard.revocations import FEED_SCOPE, parse_feed
from bankgate.runtime import Runtime
from bankgate.services import Services
from conftest import basic

ISSUER = "https://bankgate.test"
FEED = f"{ISSUER}/oauth/revocations"
API = "https://api.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    runtime: Runtime
    http: httpx.AsyncClient  # to the bankgate server
    feed_credentials: tuple[str, str]
    clients: dict[str, Any]

    async def bearer(self, name: str) -> str:
        client = self.clients[name]
        response = await self.http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                        headers={"Authorization": basic(client.client.api_key, client.secret_key)})
        assert response.status_code == 201, response.text
        return str(response.json()["access_token"])


@asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = Settings(data_dir=tmp_path, issuer=ISSUER, audit_flush_interval=0.05)
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        clients = {
            "resource server": await services.clients.create("resource server", [FEED_SCOPE]),
            "payer": await services.clients.create("payer", ["app_1"]),
            "bystander": await services.clients.create("bystander", ["app_1"]),
        }
    finally:
        await services.close()
    app = create_app(settings, issuer=ISSUER)
    assert isinstance(app, BankgateApp)
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
            feed = clients["resource server"]
            yield World(app.state.runtime, http, (feed.client.api_key, feed.secret_key), clients)


async def hello(scope: Any, receive: Any, send: Any) -> None:
    principal = principal_of(scope)
    assert principal is not None
    body = principal.subject.encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def protected(guard: Guard) -> AsyncIterator[httpx.AsyncClient]:
    """An API apart from the server, behind `GuardMiddleware` with `guard`."""
    transport = httpx.ASGITransport(app=GuardMiddleware(hello, guard=guard))
    async with httpx.AsyncClient(transport=transport, base_url=API) as api:
        yield api


def remote_guard(http: httpx.AsyncClient, feed: RemoteRevocations) -> Guard:
    keys = RemoteJWKS(f"{ISSUER}/.well-known/jwks.json", http=http)
    return Guard(TokenVerifier(keys, issuer=ISSUER, audience="bankgate-api", environment="sandbox",
                               is_revoked=None, revocations=feed))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the feed ---------------------------------------------------------------------------------------------------


async def test_the_feed_lists_revoked_tokens_and_subjects_with_a_cursor(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        auth = {"Authorization": basic(*w.feed_credentials)}
        first = await w.http.get("/oauth/revocations", headers=auth)
        assert first.status_code == 200, first.text
        assert first.headers["cache-control"] == "no-store"
        assert first.json()["tokens"] == [] and first.json()["subjects"] == []

        payer = w.clients["payer"]
        token = await w.bearer("payer")
        jti = w.runtime.tokens.read(token)["jti"]
        revoked = await w.http.post("/oauth/revoke", data={"token": token},
                                    headers={"Authorization": basic(payer.client.api_key, payer.secret_key)})
        assert revoked.status_code == 200, revoked.text
        await w.runtime.services.clients.revoke(w.clients["bystander"].client.api_key)

        second = await w.http.get("/oauth/revocations", params={"since": first.json()["next"]}, headers=auth)
        assert second.status_code == 200, second.text
        tokens, subjects, cursor = parse_feed(second.json())
        assert [j for j, _ in tokens] == [jti]
        assert tokens[0][1] == w.runtime.tokens.read(token)["exp"]
        assert subjects == [(f"client:{w.clients['bystander'].client.id}", None)]
        assert float(cursor) >= float(first.json()["next"]) and float(cursor) > 0


async def test_the_feed_refuses_anonymous_callers_clients_without_the_application_and_bad_cursors(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        anonymous = await w.http.get("/oauth/revocations")
        assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"

        payer = w.clients["payer"]
        wrong_secret = await w.http.get("/oauth/revocations",
                                        headers={"Authorization": basic(payer.client.api_key, "sk_test_" + "x" * 43)})
        assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"

        outsider = await w.http.get("/oauth/revocations",
                                    headers={"Authorization": basic(payer.client.api_key, payer.secret_key)})
        assert outsider.status_code == 403, outsider.text
        assert outsider.json()["error"] == "insufficient_scope"
        assert FEED_SCOPE in outsider.json()["error_description"]

        auth = {"Authorization": basic(*w.feed_credentials)}
        for since in ("yesterday", "nan", "inf", "-1"):
            refused = await w.http.get("/oauth/revocations", params={"since": since}, headers=auth)
            assert refused.status_code == 400, (since, refused.text)
            assert refused.json()["error"] == "invalid_request"

        await w.runtime.services.clients.revoke(w.feed_credentials[0])
        revoked = await w.http.get("/oauth/revocations", headers=auth)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error_description"]


async def test_the_feed_is_documented_in_openapi(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        document = (await w.http.get("/openapi.json")).json()
    operation = document["paths"]["/oauth/revocations"]["get"]
    assert operation["security"] == [{"clientBasic": []}]
    assert {"200", "401", "403"} <= set(operation["responses"])


# -- the remote guard -------------------------------------------------------------------------------------------


async def test_a_remote_guard_refuses_a_revoked_clients_token_within_one_poll(tmp_path: Path) -> None:
    clock = Clock()
    async with world(tmp_path) as w:
        feed = RemoteRevocations(FEED, w.feed_credentials, interval=5.0, http=w.http, clock=clock)
        async with protected(remote_guard(w.http, feed)) as api:
            token, other = await w.bearer("payer"), await w.bearer("bystander")
            allowed = await api.get("/", headers=bearer(token))  # the first request waits for the first poll
            assert allowed.status_code == 200 and allowed.text == w.clients["payer"].client.id

            await w.runtime.services.clients.revoke(w.clients["payer"].client.api_key)

            clock.now += 1.0  # within the interval: the list as it was
            assert (await api.get("/", headers=bearer(token))).status_code == 200
            clock.now += 5.0  # past it: this request starts a poll and is answered from the list as it was
            assert (await api.get("/", headers=bearer(token))).status_code == 200
            await feed.wait()

            refused = await api.get("/", headers=bearer(token))
            assert refused.status_code == 401, refused.text
            assert refused.json() == {"error": "invalid_token", "error_description": "the token has been revoked"}
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
            assert (await api.get("/", headers=bearer(other))).status_code == 200


async def test_a_remote_guard_refuses_a_token_revoked_by_its_owner(tmp_path: Path) -> None:
    clock = Clock()
    async with world(tmp_path) as w:
        feed = RemoteRevocations(FEED, w.feed_credentials, interval=5.0, http=w.http, clock=clock)
        async with protected(remote_guard(w.http, feed)) as api:
            token, kept = await w.bearer("payer"), await w.bearer("payer")
            assert (await api.get("/", headers=bearer(token))).status_code == 200
            payer = w.clients["payer"]
            await w.http.post("/oauth/revoke", data={"token": token},
                              headers={"Authorization": basic(payer.client.api_key, payer.secret_key)})
            clock.now += 5.0
            await feed.ready()
            await feed.wait()
            assert (await api.get("/", headers=bearer(token))).status_code == 401
            assert (await api.get("/", headers=bearer(kept))).status_code == 200


async def test_guard_remote_with_revocations_polls_the_issuer_on_its_own(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        guard = Guard.remote(ISSUER, revocations=True, revocation_credentials=w.feed_credentials,
                             revocation_interval=0.05, http=w.http)
        async with protected(guard) as api:
            token = await w.bearer("payer")
            assert (await api.get("/", headers=bearer(token))).status_code == 200
            await w.runtime.services.clients.revoke(w.clients["payer"].client.api_key)
            started = time.monotonic()
            while (await api.get("/", headers=bearer(token))).status_code == 200:
                assert time.monotonic() - started < 5.0, "the remote guard still accepts a revoked client's token"
                await asyncio.sleep(0.02)
            assert (await api.get("/", headers=bearer(token))).status_code == 401


async def test_a_remote_guard_fails_closed_when_the_feed_cannot_be_read(tmp_path: Path) -> None:
    clock = Clock()
    async with world(tmp_path) as w:
        payer = w.clients["payer"]
        wrong = RemoteRevocations(FEED, (payer.client.api_key, payer.secret_key), interval=5.0, http=w.http,
                                  clock=clock)  # a client without the application: 403 on every poll
        async with protected(remote_guard(w.http, wrong)) as api:
            refused = await api.get("/", headers=bearer(await w.bearer("payer")))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "temporarily_unavailable"
            assert refused.headers["retry-after"] == "2"


async def test_a_remote_guard_answers_from_its_list_until_it_is_too_old_then_fails_closed(tmp_path: Path) -> None:
    clock = Clock()
    async with world(tmp_path) as w:
        reachable = [True]

        async def issuer(request: httpx.Request) -> httpx.Response:
            if not reachable[0]:
                raise httpx.ConnectError("the issuer is down", request=request)
            return await w.http.send(request)

        flaky = httpx.AsyncClient(transport=httpx.MockTransport(issuer), base_url=ISSUER)
        feed = RemoteRevocations(FEED, w.feed_credentials, interval=5.0, max_staleness=30.0, http=flaky,
                                 clock=clock)
        async with flaky, protected(remote_guard(w.http, feed)) as api:
            token = await w.bearer("payer")
            assert (await api.get("/", headers=bearer(token))).status_code == 200
            reachable[0] = False
            clock.now += 20.0  # a poll fails; the list is 20 s old, within its bound
            assert (await api.get("/", headers=bearer(token))).status_code == 200
            await feed.wait()
            clock.now += 11.0  # 31 s: too old to say whether the token was revoked
            assert (await api.get("/", headers=bearer(token))).status_code == 503
            reachable[0] = True
            clock.now += 5.0  # the issuer is back: the next request waits for a poll, then is answered
            assert (await api.get("/", headers=bearer(token))).status_code == 200


# -- configuration and the deny list itself ---------------------------------------------------------------------


def test_guard_remote_with_revocations_needs_a_key_pair_and_https() -> None:
    with pytest.raises(ValueError, match="revocation_credentials"):
        Guard.remote(ISSUER, revocations=True)
    with pytest.raises(ValueError, match="https"):
        Guard.remote("http://auth.example.com", revocations=True, revocation_credentials=("bk_test_a", "sk_test_b"))
    guard = Guard.remote("http://127.0.0.1:8000", revocations=True, revocation_credentials=("bk_test_a", "s3cr3t"))
    assert "s3cr3t" not in repr(guard.verifier.revocations) and "s3cr3t" not in repr(guard)
    assert Guard.remote(ISSUER).verifier.revocations is None


def test_a_deny_list_fails_closed_until_loaded_and_when_stale() -> None:
    clock = Clock()
    deny = DenyList(max_staleness=30.0, source="the feed", clock=clock)
    with pytest.raises(RevocationUnavailable, match="the feed"):
        deny.token_denied("j1", "client:c1", None, 100)
    deny.refreshed()
    assert deny.token_denied("j1", "client:c1", None, 100) is False
    clock.now += 31.0
    with pytest.raises(RevocationUnavailable):
        deny.denied("j1")
    deny.add_token("j1", time.time() + 60)
    assert deny.denied("j1") is True  # a known revocation needs no fresh list


def test_a_deny_list_refuses_tokens_issued_up_to_a_subjects_cut_off() -> None:
    deny = DenyList()
    deny.remember("cert:abc", 200.0)
    deny.remember("client:c1")
    deny.remember("client:c1", 100.0)  # a cut-off never narrows a revocation of every token
    deny.refreshed()
    assert deny.token_denied("j", "client:c1", None, 10**9) is True
    assert deny.token_denied("j", "user:u1", "cert:abc", 200) is True
    assert deny.token_denied("j", "user:u1", "cert:abc", 201) is False
    assert deny.token_denied("j", "user:u1", None, 1) is False


def test_a_deny_list_forgets_tokens_that_expired_anyway() -> None:
    deny = DenyList()
    deny.add_token("old", 50.0)
    deny.add_token("live", 500.0)
    deny.refreshed(now=100.0)
    assert deny.denied("live") is True and deny.denied("old") is False


@pytest.mark.parametrize(
    "document",
    [[], {"tokens": [], "subjects": []}, {"tokens": [{"jti": "a"}], "subjects": [], "next": "1"},
     {"tokens": [], "subjects": [{"subject": "client:x", "not_before": "soon"}], "next": "1"},
     {"tokens": [{"jti": "a", "expires_at": float("nan")}], "subjects": [], "next": "1"},
     {"tokens": [{"jti": "a", "expires_at": True}], "subjects": [], "next": "1"}],
)
def test_a_malformed_feed_is_refused_whole(document: object) -> None:
    with pytest.raises(ValueError):
        parse_feed(document)
