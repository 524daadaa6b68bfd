"""Brute force over HTTP: failures are counted across two server processes sharing one PostgreSQL database, the
block answers 429 with Retry-After without checking the secret, and clients from other addresses keep working."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from conftest import Server, basic

# Failures are counted per loopback source address, across two server processes: real servers.
pytestmark = pytest.mark.real_server

WRONG = "sk_test_" + "W" * 43


def _token(server: Server, client: dict[str, Any], secret: str, source: str = "127.0.0.1") -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=server.base_url, transport=transport, timeout=10) as http:
        return http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(client["api_key"], secret)},
        )


def test_failures_on_two_server_processes_add_up_and_block_on_both(
    server_factory: Any, postgres_url: str, tmp_path: Any
) -> None:
    env = {"BANKGATE_DATABASE_URL": postgres_url, "BANKGATE_THROTTLE_SYNC_INTERVAL": "0.2"}
    first = server_factory(env, data_dir=tmp_path / "shared")
    second = server_factory(env, data_dir=tmp_path / "shared")  # same master key and database
    client = first.create_client("app_1")
    assert _token(second, client, client["secret_key"]).status_code == 201

    # The per-account-and-address threshold is 5: failures on alternate processes add up to it. The fifth blocks
    # for 1 s, so none of these five can be refused yet.
    servers = [first, second]
    for attempt in range(5):
        assert _token(servers[attempt % 2], client, WRONG).status_code == 401
    # Each further counted failure doubles the block. A process that has synced the block meanwhile refuses
    # without counting (429), so keep going, spread over both processes, until a sixth failure has been counted
    # (a block of 2 s from then), however the syncs fell.
    counted, deadline = 5, time.monotonic() + 10
    while counted < 6 and time.monotonic() < deadline:
        response = _token(servers[counted % 2], client, WRONG)
        assert response.status_code in (401, 429), response.text
        counted += response.status_code == 401
        if response.status_code == 429:
            time.sleep(0.1)
    assert counted == 6
    time.sleep(0.6)  # both processes have synced the 2 s block by now
    for server in (first, second):
        refused = _token(server, client, client["secret_key"])  # even the right secret: not checked
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "slow_down"
        assert int(refused.headers["retry-after"]) >= 1

    # Another address is not blocked by this address's failures.
    assert _token(first, client, client["secret_key"], source="127.0.0.2").status_code == 201
    assert _token(second, client, client["secret_key"], source="127.0.0.2").status_code == 201

    denied = [e for e in first.audit(100) if e["event"] == "token.denied"]
    assert {e["detail"]["reason"] for e in denied} >= {"wrong_secret", "throttled"}


def test_block_grows_with_further_failures(server: Server) -> None:
    client = server.create_client("app_1")
    waits = []
    for _ in range(8):
        response = _token(server, client, WRONG)
        if response.status_code == 429:
            waits.append(int(response.headers["retry-after"]))
            time.sleep(int(response.headers["retry-after"]))
    assert waits and waits == sorted(waits)


def test_a_secret_typed_into_the_key_field_reaches_neither_the_database_nor_the_log(server: Server) -> None:
    import sqlite3

    client = server.create_client("app_1")
    for _ in range(7):  # enough to be counted and blocked
        assert _token(server, {"api_key": client["secret_key"]}, client["api_key"]).status_code in (401, 429)
    time.sleep(0.3)
    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        rows = [str(row) for table in ("auth_throttle", "audit_events") for row in db.execute(f"SELECT * FROM {table}")]  # noqa: S608
    assert rows
    assert not [row for row in rows if client["secret_key"] in row]
    assert client["secret_key"] not in server.log()
