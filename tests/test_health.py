"""Liveness (`/livez`, `/healthz`) and readiness (`/readyz`): readiness names the check that fails (database, Redis,
signing keys, migrations) with a 503 + Retry-After, while liveness keeps answering; and `bankgate migrate`."""

from __future__ import annotations

import socket
import sqlite3
import time
from typing import Any

import httpx

from conftest import Server, free_port
from pg_cluster import PostgresCluster, throwaway_postgres  # noqa: F401 - the fixture


def _ready(server: Server) -> httpx.Response:
    return server.http.get("/readyz")


def _assert_unready(response: httpx.Response, failing: str) -> dict[str, str]:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"][failing] != "ok", body
    return body["checks"]  # type: ignore[no-any-return]


def test_liveness_and_readiness_on_sqlite(server: Server) -> None:
    live = server.http.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert live.headers["cache-control"] == "no-store"
    health = server.http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers["cache-control"] == "no-store"
    ready = _ready(server)
    assert ready.status_code == 200, ready.text
    assert ready.headers["cache-control"] == "no-store"
    assert ready.json() == {"status": "ready", "checks": {
        "database": "ok", "signing_keys": "ok", "migrations": "ok"}}


def test_routes_are_documented(server: Server) -> None:
    paths = server.http.get("/openapi.json").json()["paths"]
    for path in ("/livez", "/healthz", "/readyz"):
        assert "200" in paths[path]["get"]["responses"], path
    assert "Retry-After" in paths["/readyz"]["get"]["responses"]["503"]["headers"]


def test_readiness_on_postgresql(server_factory: Any, postgres_url: str) -> None:
    server = server_factory({"BANKGATE_DATABASE_URL": postgres_url})
    ready = _ready(server)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "signing_keys": "ok", "migrations": "ok"}


def test_database_outage_fails_readiness_not_liveness_and_recovers(
    server_factory: Any, throwaway_postgres: PostgresCluster  # noqa: F811 - the fixture
) -> None:
    server = server_factory({"BANKGATE_DATABASE_URL": throwaway_postgres.url})
    assert _ready(server).status_code == 200
    throwaway_postgres.stop()
    checks = _assert_unready(_ready(server), "database")
    assert checks["signing_keys"] == "ok"
    assert "postgres" not in checks["database"] and "@" not in checks["database"], checks  # no URL, no user
    assert server.http.get("/livez").status_code == 200
    assert server.http.get("/healthz").status_code == 200
    throwaway_postgres.start()
    throwaway_postgres.wait_accepting()
    deadline = time.monotonic() + 20
    while (response := _ready(server)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)  # the pool drops its dead connections on the next checkouts
    assert response.status_code == 200, response.text


def test_schema_behind_head_fails_readiness(server: Server) -> None:
    database = server.data_dir / "bankgate.db"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = '0006'")
    checks = _assert_unready(_ready(server), "migrations")
    assert "0006" in checks["migrations"] and "bankgate migrate" in checks["migrations"], checks
    assert checks["database"] == "ok"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = '0007'")
    assert _ready(server).status_code == 200


def test_unreachable_redis_fails_readiness(server_factory: Any) -> None:
    server = server_factory({"BANKGATE_IDEMPOTENCY_STORE": f"redis://:pw-not-shown@127.0.0.1:{free_port()}/0"})
    response = _ready(server)
    checks = _assert_unready(response, "redis")
    assert "pw-not-shown" not in response.text
    assert checks["database"] == "ok"
    assert server.http.get("/livez").status_code == 200


def test_reachable_redis_is_checked(server_factory: Any, redis_url: str) -> None:
    server = server_factory({"BANKGATE_IDEMPOTENCY_STORE": redis_url})
    response = _ready(server)
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["redis"] == "ok"


def test_a_check_without_answer_fails_within_the_timeout(server_factory: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        server = server_factory({"BANKGATE_IDEMPOTENCY_STORE": f"redis://127.0.0.1:{port}/0",
                                 "BANKGATE_READINESS_TIMEOUT": "0.3"})
        started = time.monotonic()
        checks = _assert_unready(_ready(server), "redis")
        assert time.monotonic() - started < 3
        assert checks["redis"] == "no answer within 0.3 s", checks
        assert checks["database"] == "ok"
