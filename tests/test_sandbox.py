"""The sandbox payments API over real sockets: both token styles and Basic pay; a retried payment is replayed, not
paid twice, under concurrency, across server processes sharing SQLite or PostgreSQL, and after `kill -9`."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, Tls, basic

PAYMENTS = "/api/v1/payments"
#: Processes behind one load balancer share one issuer name (by default each names itself after its own port).
SAME_ISSUER = {"BANKGATE_ISSUER": "http://bankgate.test"}
ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 2026-001"}


def _bearer(server: Server, client: dict[str, Any]) -> dict[str, str]:
    response = server.token(client)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _pay(server: Server, headers: dict[str, str], key: str | None, order: dict[str, Any] | None = None,
         **kwargs: Any) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return server.http.post(PAYMENTS, json=order or ORDER, headers={**headers, **extra}, **kwargs)


def _sqlite_rows(server: Server, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        return list(db.execute(f"SELECT * FROM {table}"))  # noqa: S608 - table names are the tests' own


# -- the walk-through --------------------------------------------------------------------------------------------


def test_oauth2_client_pays_and_a_retry_is_replayed_not_paid_twice(server: Server) -> None:
    client = server.create_client("app_1", "app_2")
    headers = _bearer(server, client)

    accounts = server.http.get("/api/v1/accounts", headers=headers)
    assert accounts.status_code == 200
    assert [a["application_id"] for a in accounts.json()["accounts"]] == ["app_1", "app_2"]
    assert all(a["iban"].startswith("NL") and a["currency"] == "EUR" for a in accounts.json()["accounts"])

    key = str(uuid.uuid4())
    first = _pay(server, headers, key)
    assert first.status_code == 201, first.text
    payment = first.json()
    assert payment["status"] == "accepted" and payment["id"].startswith("pay_")
    assert {k: payment[k] for k in ORDER} == ORDER
    assert isinstance(payment["created_at"], int)
    assert first.headers["location"] == f"{PAYMENTS}/{payment['id']}"
    assert "idempotent-replayed" not in first.headers

    retry = _pay(server, headers, key)
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["location"] == first.headers["location"]
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert retry.content == first.content

    fetched = server.http.get(first.headers["location"], headers=headers)
    assert fetched.status_code == 200 and fetched.json() == payment
    assert len(_sqlite_rows(server, "payments")) == 1

    # A new key is a new payment.
    assert _pay(server, headers, str(uuid.uuid4())).status_code == 201
    assert len(_sqlite_rows(server, "payments")) == 2


def test_a_fresh_token_replays_the_same_payment_for_the_same_client(server: Server) -> None:
    client = server.create_client("app_1")
    key = str(uuid.uuid4())
    first = _pay(server, _bearer(server, client), key)
    again = _pay(server, _bearer(server, client), key)  # a new token, same client: same principal
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


def test_idempotency_keys_are_scoped_per_client(server: Server) -> None:
    one, two = server.create_client("app_1"), server.create_client("app_1")
    key = "shared-key-0001"
    first = _pay(server, _bearer(server, one), key)
    second = _pay(server, _bearer(server, two), key)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in second.headers
    assert first.json()["id"] != second.json()["id"]
    # Neither can read the other's idempotent response, but both own app_1, so both may read both payments.
    assert len(_sqlite_rows(server, "payments")) == 2


def test_same_key_with_another_payment_is_refused_with_422(server: Server) -> None:
    headers = _bearer(server, server.create_client("app_1"))
    key = str(uuid.uuid4())
    assert _pay(server, headers, key).status_code == 201
    changed = _pay(server, headers, key, {**ORDER, "amount": "99.00"})
    assert changed.status_code == 422
    assert changed.headers["content-type"].startswith("application/problem+json")
    assert "different request" in changed.json()["detail"]
    assert len(_sqlite_rows(server, "payments")) == 1


def test_mismatch_status_can_be_409_as_banked_documents(server_factory: Any) -> None:
    server = server_factory({"BANKGATE_IDEMPOTENCY_MISMATCH_STATUS": "409"})
    headers = _bearer(server, server.create_client("app_1"))
    assert _pay(server, headers, "k-1").status_code == 201
    assert _pay(server, headers, "k-1", {**ORDER, "reference": "other"}).status_code == 409


def test_payment_without_idempotency_key_is_refused_and_nothing_is_written(server: Server) -> None:
    headers = _bearer(server, server.create_client("app_1"))
    refused = _pay(server, headers, None)
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "Idempotency-Key" in refused.json()["detail"]
    for bad in (b"x" * 256, "caf\u00e9".encode(), "caf\u00e9".encode("latin-1")):
        response = server.http.post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": bad})
        assert response.status_code == 400, (bad, response.text)
    assert _sqlite_rows(server, "payments") == []
    assert _sqlite_rows(server, "idempotency_keys") == []


def test_invalid_payments_get_field_errors_and_the_answer_is_kept_for_the_key(server: Server) -> None:
    headers = _bearer(server, server.create_client("app_1"))
    bad = {"application_id": "app_1", "amount": 12.5, "currency": "eur", "reference": ""}
    response = _pay(server, headers, "bad-1", bad)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"amount", "currency", "reference"}
    # 4xx answers are stored: the same request with the same key gets the same answer.
    again = _pay(server, headers, "bad-1", bad)
    assert again.status_code == 422 and again.headers["idempotent-replayed"] == "true"

    for amount in ("0", "0.00", "-1", "1e3", "12.345", " 1", "1.", "abc", "\uff11\uff12"):
        answer = _pay(server, headers, f"amount-{amount.encode().hex()}", {**ORDER, "amount": amount})
        assert answer.status_code == 422, amount
        assert [e["field"] for e in answer.json()["errors"]] == ["amount"]
    assert _pay(server, headers, "jpy", {**ORDER, "currency": "JPY", "amount": "1.5"}).status_code == 422
    assert _pay(server, headers, "jpy-ok", {**ORDER, "currency": "JPY", "amount": "1500"}).status_code == 201
    assert _pay(server, headers, "bhd-ok", {**ORDER, "currency": "BHD", "amount": "1.125"}).status_code == 201
    assert _pay(server, headers, "xyz", {**ORDER, "currency": "XYZ"}).status_code == 422
    not_json = server.http.post(PAYMENTS, content=b"\xff\xfe", headers={**headers, "Idempotency-Key": "nj"})
    assert not_json.status_code == 400
    assert len(_sqlite_rows(server, "payments")) == 2


def test_paying_for_another_application_is_403_and_its_payments_are_invisible(server: Server) -> None:
    mine, theirs = server.create_client("app_1"), server.create_client("app_2")
    refused = _pay(server, _bearer(server, mine), "k", {**ORDER, "application_id": "app_2"})
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    assert 'scope="app_2"' in refused.headers["www-authenticate"]
    assert _sqlite_rows(server, "payments") == []

    theirs_headers = _bearer(server, theirs)
    paid = _pay(server, theirs_headers, "k", {**ORDER, "application_id": "app_2"})
    assert paid.status_code == 201
    assert server.http.get(paid.headers["location"], headers=_bearer(server, mine)).status_code == 404
    assert server.http.get(f"{PAYMENTS}/pay_missing", headers=theirs_headers).status_code == 404


def test_basic_mode_key_pair_pays_on_every_call(server: Server) -> None:
    client = server.create_client("app_1", auth_mode="basic")
    headers = {"Authorization": basic(client["api_key"], client["secret_key"])}
    first = _pay(server, headers, "basic-1")
    assert first.status_code == 201, first.text
    retry = _pay(server, headers, "basic-1")
    assert retry.headers["idempotent-replayed"] == "true" and retry.json() == first.json()
    assert server.http.get(first.headers["location"], headers=headers).status_code == 200
    assert len(_sqlite_rows(server, "payments")) == 1


def test_certificate_bound_user_pays_over_mutual_tls(tls: Tls) -> None:
    user = tls.new_user("Payments Robot", scopes=("app_1",))
    token = tls.authorize(user).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())}
    with tls.client(user["cert"]) as http:
        first = http.post(PAYMENTS, json=ORDER, headers=headers)
        assert first.status_code == 201, first.text
        retry = http.post(PAYMENTS, json=ORDER, headers=headers)
        assert retry.headers["idempotent-replayed"] == "true" and retry.json() == first.json()
        assert http.get("/api/v1/accounts", headers=headers).json()["accounts"][0]["application_id"] == "app_1"
    with tls.client() as http:  # the same token without its certificate
        refused = http.post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": "other"})
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"


def test_production_server_has_no_sandbox_payments(server_factory: Any) -> None:
    production = server_factory({"BANKGATE_ENVIRONMENT": "production"})
    assert production.http.post(PAYMENTS, json=ORDER).status_code == 404


# -- concurrency -----------------------------------------------------------------------------------------------


async def _storm(urls: list[str], headers: dict[str, str], key: str, count: int) -> list[httpx.Response]:
    """`count` identical payments, spread over `urls`, sent at once on separate connections."""
    clients = [httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=count))
               for url in urls]
    try:
        return await asyncio.gather(*(
            clients[i % len(clients)].post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": key})
            for i in range(count)
        ))
    finally:
        for client in clients:
            await client.aclose()


def _assert_one_payment(responses: list[httpx.Response], *, atomic: bool = True) -> str:
    """One payment made, every other answer its replay; on the atomic route (the payment commits with its key,
    the default) no retry is ever told to wait, with a key claimed first (Redis) some get 409."""
    statuses = [r.status_code for r in responses]
    if atomic:
        assert set(statuses) == {201}, statuses
    unexpected = [(r.status_code, r.text) for r in responses if r.status_code not in (201, 409)]
    assert not unexpected, unexpected[:3]
    fresh = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
    assert len(fresh) == 1, statuses
    replays = [r for r in responses if r.status_code == 201 and "idempotent-replayed" in r.headers]
    assert all(r.json()["id"] == fresh[0].json()["id"] for r in replays)
    for conflict in (r for r in responses if r.status_code == 409):
        assert int(conflict.headers["retry-after"]) >= 1
    return str(fresh[0].json()["id"])


@pytest.mark.real_server  # concurrent connections from outside, or several processes
def test_a_hundred_simultaneous_identical_payments_make_one(server: Server) -> None:
    headers = _bearer(server, server.create_client("app_1"))
    responses = asyncio.run(_storm([server.base_url], headers, str(uuid.uuid4()), 100))
    _assert_one_payment(responses)
    assert len(_sqlite_rows(server, "payments")) == 1


@pytest.mark.real_server  # concurrent connections from outside, or several processes
def test_two_processes_sharing_sqlite_make_one_payment(server_factory: Any, tmp_path: Path) -> None:
    first = server_factory(SAME_ISSUER, data_dir=tmp_path / "shared")
    second = server_factory(SAME_ISSUER, data_dir=tmp_path / "shared")
    headers = _bearer(first, first.create_client("app_1"))
    responses = asyncio.run(_storm([first.base_url, second.base_url], headers, str(uuid.uuid4()), 100))
    _assert_one_payment(responses)
    assert len(_sqlite_rows(first, "payments")) == 1


@pytest.mark.real_server  # concurrent connections from outside, or several processes
def test_two_processes_sharing_postgresql_make_one_payment(
    server_factory: Any, postgres_url: str, tmp_path: Path
) -> None:
    env = {**SAME_ISSUER, "BANKGATE_DATABASE_URL": postgres_url}
    first = server_factory(env, data_dir=tmp_path / "shared")
    second = server_factory(env, data_dir=tmp_path / "shared")
    headers = _bearer(first, first.create_client("app_1"))
    responses = asyncio.run(_storm([first.base_url, second.base_url], headers, str(uuid.uuid4()), 100))
    _assert_one_payment(responses)
    assert _pg_count(postgres_url) == 1


def _pg_count(url: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM payments"))
        finally:
            await conn.close()

    return asyncio.run(count())


@pytest.mark.real_server  # concurrent connections from outside, or several processes
def test_two_processes_sharing_redis_for_idempotency_make_one_payment(
    server_factory: Any, redis_url: str, tmp_path: Path
) -> None:
    env = {**SAME_ISSUER, "BANKGATE_IDEMPOTENCY_STORE": redis_url}
    first = server_factory(env, data_dir=tmp_path / "shared")
    second = server_factory(env, data_dir=tmp_path / "shared")
    headers = _bearer(first, first.create_client("app_1"))
    responses = asyncio.run(_storm([first.base_url, second.base_url], headers, str(uuid.uuid4()), 100))
    _assert_one_payment(responses, atomic=False)
    assert len(_sqlite_rows(first, "payments")) == 1
    assert _sqlite_rows(first, "idempotency_keys") == []  # the records live in Redis


def test_with_a_processing_delay_the_key_is_claimed_first_and_a_retry_meanwhile_gets_409(
    server_factory: Any,
) -> None:
    server = server_factory({"BANKGATE_SANDBOX_PROCESSING_DELAY": "1.5"})
    headers = _bearer(server, server.create_client("app_1"))
    key = str(uuid.uuid4())
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(_pay(server, headers, key)))
    first.start()
    _wait_for(lambda: len(_sqlite_rows(server, "payments")) == 1)  # recorded, the rail still "processing"

    meanwhile = _pay(server, headers, key)
    first.join(30)

    assert meanwhile.status_code == 409 and 1 <= int(meanwhile.headers["retry-after"]) <= 30
    assert answers[0].status_code == 201
    after = _pay(server, headers, key)
    assert after.headers["idempotent-replayed"] == "true" and after.json() == answers[0].json()
    assert len(_sqlite_rows(server, "payments")) == 1


# -- crashes ---------------------------------------------------------------------------------------------------


def _wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.real_server  # a process killed with SIGKILL
def test_kill_9_after_the_payment_is_written_then_a_retry_after_the_lease_pays_once(
    server_factory: Any, tmp_path: Path
) -> None:
    env = {**SAME_ISSUER, "BANKGATE_SANDBOX_PROCESSING_DELAY": "30", "BANKGATE_IDEMPOTENCY_LEASE": "2"}
    data = tmp_path / "shared"
    doomed = server_factory(env, data_dir=data)
    headers = _bearer(doomed, doomed.create_client("app_1"))
    key = str(uuid.uuid4())

    lost: list[BaseException] = []

    def first_attempt() -> None:
        try:
            doomed.http.post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": key}, timeout=60)
        except httpx.HTTPError as exc:  # the connection dies with the server: the answer is lost
            lost.append(exc)

    attempt = threading.Thread(target=first_attempt)
    attempt.start()
    _wait_for(lambda: len(_sqlite_rows(doomed, "payments")) == 1)  # committed; the answer not yet sent
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait()
    attempt.join(10)
    assert lost, "the first attempt's answer should have been lost"

    survivor = server_factory({**SAME_ISSUER, "BANKGATE_IDEMPOTENCY_LEASE": "2"}, data_dir=data)
    early = survivor.http.post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": key})
    if early.status_code == 409:  # still within the dead request's lease: told when to come back
        wait = int(early.headers["retry-after"])
        assert 1 <= wait <= 2
        time.sleep(wait + 0.2)
    retry = survivor.http.post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": key})
    assert retry.status_code == 201, retry.text
    assert len(_sqlite_rows(survivor, "payments")) == 1
    assert retry.json()["id"] == _sqlite_rows(survivor, "payments")[0][0]
    again = survivor.http.post(PAYMENTS, json=ORDER, headers={**headers, "Idempotency-Key": key})
    assert again.headers["idempotent-replayed"] == "true" and again.json() == retry.json()


@pytest.mark.parametrize("retention", ["2592000"])
def test_thirty_day_retention_is_accepted_and_recorded(server_factory: Any, retention: str) -> None:
    server = server_factory({"BANKGATE_IDEMPOTENCY_RETENTION": retention})
    headers = _bearer(server, server.create_client("app_1"))
    assert _pay(server, headers, "k-30").status_code == 201
    (row,) = _sqlite_rows(server, "idempotency_keys")
    columns = [c[1] for c in sqlite3.connect(server.data_dir / "bankgate.db").execute(
        "PRAGMA table_info(idempotency_keys)")]
    record = dict(zip(columns, row, strict=True))
    assert record["state"] == "completed"
    assert record["expires_at"] - record["created_at"] == pytest.approx(2592000, abs=5)


def test_openapi_document_describes_the_sandbox_and_guard_answers(server: Server) -> None:
    document = server.http.get("/openapi.json").json()
    for path in ("/api/v1/accounts", "/api/v1/payments", "/api/v1/payments/{payment_id}", "/api/v1/whoami"):
        assert path in document["paths"], path
    pay = document["paths"]["/api/v1/payments"]["post"]
    assert {"201", "400", "401", "403", "409", "422"} <= set(pay["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in pay["parameters"])
