"""A real `bankgate serve` on a PostgreSQL cluster of the test's own, which the test stops: every route answers
503 + Retry-After in its own format (never a bare 500), the log says so once with a count rather than a traceback
per request, and once the cluster is back the same requests succeed again."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from conftest import Tls
from pg_cluster import PostgresCluster, throwaway_postgres  # noqa: F401 - the fixture

ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 1"}


def _until(check: Callable[[], httpx.Response], status: int, deadline: float = 30.0) -> httpx.Response:
    """Poll until `check()` answers `status` (a cache may answer for a few seconds first); never a bare 500."""
    end = time.monotonic() + deadline
    while True:
        response = check()
        assert response.status_code != 500, response.text
        if response.status_code == status or time.monotonic() > end:
            return response
        time.sleep(0.2)


def test_database_outage_is_503_everywhere_logged_once_and_recovers(
    throwaway_postgres: PostgresCluster, server_factory: Any, tmp_path: Path  # noqa: F811 - outlives the server
) -> None:
    env = {"BANKGATE_DATABASE_URL": throwaway_postgres.url, "BANKGATE_REVOCATION_SYNC_INTERVAL": "1"}
    server = server_factory(env, args=("--tls",))
    tls = Tls(server, tmp_path)
    user = tls.new_user("Outage Testuser", scopes=("app_1",))
    client = server.create_client("app_1")
    token = server.token(client).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    with tls.client(user["cert"]) as mtls:
        assert tls.authorize(user).status_code == 200
        calls: dict[str, Callable[[], httpx.Response]] = {
            "token": lambda: server.token(client),
            "authorize": lambda: tls.authorize(user),
            "whoami": lambda: mtls.get("/api/v1/whoami", headers=bearer),
            "accounts": lambda: mtls.get("/api/v1/accounts", headers=bearer),
            "payments": lambda: mtls.post("/api/v1/payments", json=ORDER,
                                          headers={**bearer, "Idempotency-Key": str(uuid.uuid4())}),
        }
        before = {name: call().status_code for name, call in calls.items()}
        assert before == {"token": 201, "authorize": 200, "whoami": 200, "accounts": 200, "payments": 201}
        logged_before = server.log()

        throwaway_postgres.stop()  # as if the database's machine went away
        refused = 0
        for name, call in calls.items():
            response = _until(call, 503)
            assert response.status_code == 503, (name, response.text)
            assert int(response.headers["retry-after"]) >= 1, name
            body = response.json()
            if name == "token":
                assert body["error"] == "temporarily_unavailable", body
            elif name in ("authorize", "accounts", "payments"):
                assert response.headers["content-type"] == "application/problem+json", (name, body)
                assert body["status"] == 503
            else:
                assert body["error"] == "temporarily_unavailable", body
            for _ in range(20):
                assert call().status_code == 503, name
                refused += 1

        outage_log = server.log()[len(logged_before):]
        assert "Traceback" not in outage_log, outage_log[-3000:]
        lines = [line for line in outage_log.splitlines() if line.strip()]
        assert len(lines) < refused / 10, "\n".join(lines[-40:])
        reported = [line for line in lines if "unavailable" in line or "reachable" in line]
        assert len(reported) == 1 and reported[0].startswith("database unavailable: "), "\n".join(lines)
        assert reported[0].endswith("refusing requests that need it with 503"), reported

        throwaway_postgres.start()
        throwaway_postgres.wait_accepting()
        after = {name: _until(call, 201 if name in ("token", "payments") else 200).status_code
                 for name, call in calls.items()}
        assert after == before
    recovery = server.log()[len(logged_before) + len(outage_log):]
    assert "Traceback" not in recovery, recovery
    assert re.search(r"^database reachable again after \d+ refused requests", recovery, re.MULTILINE), recovery
