"""bankgate.client against a real `bankgate serve` (OAuth2 client_credentials): single flight under 1,000
coroutines and 32 threads, 401 -> one refresh, typed errors without retry storms, idempotency keys that survive a
lost answer, and the token request made once by two processes sharing a file cache."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from bankgate.client import (
    Bankgate,
    BankgateAuth,
    ClientCredentials,
    FileCache,
    InvalidClient,
    InvalidScope,
    MemoryCache,
    RedisCache,
    RequestsAuth,
    Token,
    UnauthorizedClient,
)
from client_helpers import LosingProxy, issued
from conftest import Server, basic

# The SDK speaks HTTP to the server's URL (and across processes): a real server.
pytestmark = pytest.mark.real_server

ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 2026-001"}


def _expired(source: ClientCredentials) -> Token:
    """A token for `source` that expired a minute ago, as a cache would hold it."""
    return Token(value="expired.token.value", expires_at=time.time() - 60, lifetime=7200)


def _payments(server: Server) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        return list(db.execute("SELECT id FROM payments"))


def test_bankgate_preset_discovers_the_token_endpoint_and_pays(shared: Server) -> None:
    client = shared.create_client("app_1")
    bankgate = Bankgate(shared.base_url, api_key=client["api_key"], secret_key=client["secret_key"], scope="app_1")
    with bankgate.client() as api:
        accounts = api.get("/api/v1/accounts")
        assert accounts.status_code == 200, accounts.text
        paid = api.post("/api/v1/payments", json=ORDER)
        assert paid.status_code == 201, paid.text
        assert api.get(paid.headers["location"]).json()["id"] == paid.json()["id"]
    token = bankgate.token()
    assert token.scope == "app_1" and token.lifetime == 7200
    assert issued(shared, client["api_key"]) == 1


def test_a_thousand_coroutines_on_an_expired_token_make_one_token_request(shared: Server) -> None:
    client = shared.create_client("app_1")
    source = ClientCredentials(f"{shared.base_url}/oauth/token", client["api_key"], client["secret_key"], "app_1")
    cache = MemoryCache()
    cache.set(source.cache_key, _expired(source))
    auth = BankgateAuth(source, cache=cache)

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=shared.base_url, auth=auth, limits=limits, timeout=60) as api:
            answers = await asyncio.gather(*(api.get("/api/v1/whoami") for _ in range(1000)))
        return [a.status_code for a in answers]

    statuses = asyncio.run(main())
    assert statuses == [200] * 1000
    assert issued(shared, client["api_key"]) == 1


def test_thirty_two_threads_on_an_expired_token_make_one_token_request(shared: Server) -> None:
    client = shared.create_client("app_1")
    source = ClientCredentials(f"{shared.base_url}/oauth/token", client["api_key"], client["secret_key"])
    cache = MemoryCache()
    cache.set(source.cache_key, _expired(source))
    auth = BankgateAuth(source, cache=cache)
    barrier = threading.Barrier(32)
    statuses: list[int] = []

    with httpx.Client(base_url=shared.base_url, auth=auth, timeout=60) as api:
        def work() -> None:
            barrier.wait()
            statuses.extend(api.get("/api/v1/whoami").status_code for _ in range(3))

        threads = [threading.Thread(target=work) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 96
    assert issued(shared, client["api_key"]) == 1


def test_a_token_revoked_on_the_server_is_replaced_once_and_the_call_succeeds(shared: Server) -> None:
    client = shared.create_client("app_1")
    source = ClientCredentials(f"{shared.base_url}/oauth/token", client["api_key"], client["secret_key"])
    auth = BankgateAuth(source, cache=MemoryCache())
    with httpx.Client(base_url=shared.base_url, auth=auth) as api:
        assert api.get("/api/v1/whoami").status_code == 200
        first = auth.token()
        revoked = shared.http.post("/oauth/revoke", data={"token": first.value},
                                   headers={"Authorization": basic(client["api_key"], client["secret_key"])})
        assert revoked.status_code == 200
        answer = api.get("/api/v1/whoami")
        assert answer.status_code == 200
        assert [r.status_code for r in answer.history] == [401]
        assert auth.token().value != first.value
    assert issued(shared, client["api_key"]) == 2


def test_a_second_401_is_returned_not_looped(shared: Server) -> None:
    """A token the API keeps refusing (another server's token here) costs one refresh, then the 401 comes back."""
    client = shared.create_client("app_1")
    source = ClientCredentials(f"{shared.base_url}/oauth/token", client["api_key"], client["secret_key"])
    cache = MemoryCache()
    auth = BankgateAuth(source, cache=cache)
    auth.token()
    calls: list[str] = []

    def spoil(request: httpx.Request) -> None:
        calls.append(request.url.path)
        if request.url.path == "/api/v1/whoami":
            request.headers["Authorization"] = "Bearer not-a-token"

    with httpx.Client(base_url=shared.base_url, auth=auth, event_hooks={"request": [spoil]}) as api:
        answer = api.get("/api/v1/whoami")
    assert answer.status_code == 401
    assert calls == ["/api/v1/whoami", "/api/v1/whoami"]
    assert issued(shared, client["api_key"]) == 2


def test_wrong_secret_is_a_typed_error_without_a_retry_storm(shared: Server) -> None:
    client = shared.create_client("app_1")
    secret = "sk_test_" + "x" * 43
    source = ClientCredentials(f"{shared.base_url}/oauth/token", client["api_key"], secret)
    auth = BankgateAuth(source, cache=MemoryCache())

    async def main() -> list[BaseException | httpx.Response]:
        async with httpx.AsyncClient(base_url=shared.base_url, auth=auth) as api:
            return await asyncio.gather(*(api.get("/api/v1/whoami") for _ in range(50)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, InvalidClient) for o in outcomes), outcomes[:3]
    error = outcomes[0]
    assert isinstance(error, InvalidClient) and error.status == 401 and error.error == "invalid_client"
    assert "check the API key and secret" in str(error)
    assert secret not in str(error) and secret not in repr(error)
    # 50 callers waited for the same attempt: the server saw one failed token request, not 50.
    assert issued(shared, client["api_key"], "token.denied") == 1


def test_scope_outside_the_client_and_basic_mode_clients_are_typed_errors(shared: Server) -> None:
    client = shared.create_client("app_1")
    source = ClientCredentials(f"{shared.base_url}/oauth/token", client["api_key"], client["secret_key"], "app_9")
    with pytest.raises(InvalidScope) as refused:
        BankgateAuth(source, cache=MemoryCache()).token()
    assert "app_9" in str(refused.value) and refused.value.status == 400
    assert client["secret_key"] not in str(refused.value)

    basic_client = shared.create_client("app_1", auth_mode="basic")
    source = ClientCredentials(f"{shared.base_url}/oauth/token", basic_client["api_key"], basic_client["secret_key"])
    with pytest.raises(UnauthorizedClient, match="Basic"):
        BankgateAuth(source, cache=MemoryCache()).token()


def test_a_payment_whose_answer_is_lost_is_retried_with_the_same_key_and_paid_once(shared: Server) -> None:
    client = shared.create_client("app_1")
    host, port = shared.base_url.removeprefix("http://").split(":")
    proxy = LosingProxy((host, int(port)), lose=1)
    # The token comes straight from the server; only the API calls go through the proxy.
    bankgate = Bankgate(shared.base_url, api_key=client["api_key"], secret_key=client["secret_key"], scope="app_1",
                        cache=MemoryCache())
    bankgate.token()
    before = len(_payments(shared))
    try:
        with bankgate.client(base_url=proxy.url) as api:
            paid = api.post("/api/v1/payments", json=ORDER)
    finally:
        proxy.close()
    assert paid.status_code == 201, paid.text
    assert paid.headers.get("idempotent-replayed") == "true"  # the first attempt did pay; this is its answer
    assert proxy.connections == 2
    assert len(_payments(shared)) == before + 1
    key = paid.request.headers["Idempotency-Key"]
    assert str(uuid.UUID(key)) == key


def test_an_explicit_idempotency_key_is_kept_and_get_requests_get_none(shared: Server) -> None:
    client = shared.create_client("app_1")
    bankgate = Bankgate(shared.base_url, api_key=client["api_key"], secret_key=client["secret_key"])
    with bankgate.client() as api:
        mine = api.post("/api/v1/payments", json=ORDER, headers={"Idempotency-Key": "order-42"})
        again = api.post("/api/v1/payments", json=ORDER, headers={"Idempotency-Key": "order-42"})
        listing = api.get("/api/v1/accounts")
    assert mine.request.headers["Idempotency-Key"] == "order-42"
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == mine.json()["id"]
    assert "Idempotency-Key" not in listing.request.headers


def test_requests_session_pays_with_a_key_and_refreshes_after_revocation(shared: Server) -> None:
    client = shared.create_client("app_1")
    bankgate = Bankgate(shared.base_url, api_key=client["api_key"], secret_key=client["secret_key"],
                        cache=MemoryCache())
    http = bankgate.requests_session()
    paid = http.post(f"{shared.base_url}/api/v1/payments", json=ORDER)
    assert paid.status_code == 201, paid.text
    assert uuid.UUID(paid.request.headers["Idempotency-Key"])
    shared.http.post("/oauth/revoke", data={"token": bankgate.token().value},
                     headers={"Authorization": basic(client["api_key"], client["secret_key"])})
    again = http.get(f"{shared.base_url}/api/v1/whoami")
    assert again.status_code == 200 and [r.status_code for r in again.history] == [401]
    plain = requests.get(f"{shared.base_url}/api/v1/whoami", auth=RequestsAuth(bankgate.auth), timeout=10)
    assert plain.status_code == 200
    assert issued(shared, client["api_key"]) == 2


_WORKER = """
import sys, time
from pathlib import Path
from bankgate.client import BankgateAuth, ClientCredentials, FileCache, RedisCache
url, key, secret, where, go = sys.argv[1:6]
cache = RedisCache(where, prefix=sys.argv[6]) if where.startswith("redis://") else FileCache(where)
auth = BankgateAuth(ClientCredentials(url, key, secret), cache=cache)
while not Path(go).exists():
    time.sleep(0.005)
print(auth.token().value)
"""


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_two_processes_sharing_a_cache_make_one_token_request(shared: Server, tmp_path: Path, kind: str,
                                                             request: pytest.FixtureRequest) -> None:
    client = shared.create_client("app_1")
    if kind == "file":
        where, prefix = str(tmp_path / "tokens"), ""
    else:
        where, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    go = tmp_path / "go"
    args = [sys.executable, "-c", _WORKER, f"{shared.base_url}/oauth/token", client["api_key"], client["secret_key"],
            where, str(go), prefix]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.0)  # both are waiting for the start signal
    go.touch()
    outputs = [w.communicate(timeout=60) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    tokens = {out.strip() for out, _ in outputs}
    assert len(tokens) == 1
    assert issued(shared, client["api_key"]) == 1
    if kind == "file":
        files = list((tmp_path / "tokens").glob("*.json"))
        assert len(files) == 1 and (files[0].stat().st_mode & 0o777) == 0o600
        assert client["secret_key"] not in files[0].read_text() and client["api_key"] not in files[0].name
    else:
        cache = RedisCache(where, prefix=prefix)
        source = ClientCredentials(f"{shared.base_url}/oauth/token", client["api_key"], client["secret_key"])
        assert cache.get(source.cache_key) is not None


def test_no_secret_in_logs_or_repr(shared: Server, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    client = shared.create_client("app_1")
    caplog.set_level(logging.DEBUG)
    bankgate = Bankgate(shared.base_url, api_key=client["api_key"], secret_key=client["secret_key"],
                        cache=FileCache(tmp_path / "cache"))
    with bankgate.client() as api:
        api.get("/api/v1/whoami")
        api.post("/api/v1/payments", json=ORDER)
    token = bankgate.token()
    wrong = ClientCredentials(f"{shared.base_url}/oauth/token", client["api_key"], client["secret_key"] + "x")
    with pytest.raises(InvalidClient) as refused:
        BankgateAuth(wrong, cache=MemoryCache()).token()
    shown = " ".join([
        caplog.text, repr(bankgate), repr(bankgate.auth), repr(bankgate.source), repr(token), str(token),
        repr(bankgate.auth.cache), repr(wrong), str(refused.value), repr(refused.value), repr(refused.value.args),
    ])
    assert "/api/v1/whoami" in caplog.text  # the logs were captured at all
    for secret in (client["secret_key"], token.value, basic(client["api_key"], client["secret_key"])[6:]):
        assert secret not in shown
    assert os.environ.get("BANKGATE_SECRET_KEY") is None or os.environ["BANKGATE_SECRET_KEY"] not in shown
