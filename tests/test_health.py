"""Liveness (`/livez`, `/healthz`) and readiness (`/readyz`): readiness names the check that fails (database, Redis,
signing keys, migrations) with a 503 + Retry-After, while liveness keeps answering; and `bankgate migrate`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bankgate.config import load_settings
from bankgate.store.migrate import head_revision
from conftest import Server, free_port, run_cli
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
    throwaway_postgres: PostgresCluster, server_factory: Any  # noqa: F811 - the cluster outlives the server
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


def test_schema_of_a_newer_version_fails_readiness(server: Server) -> None:
    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    checks = _assert_unready(_ready(server), "migrations")
    assert "9999" in checks["migrations"] and "newer" in checks["migrations"], checks


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


# -- bankgate migrate ----------------------------------------------------------------------------------------


def _tables(url: str) -> dict[str, Any]:
    """The database's tables and its alembic version rows."""
    async def read() -> dict[str, Any]:
        engine = create_async_engine(load_settings(database_url=url).sqlalchemy_url)
        try:
            async with engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    names = (await conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))).scalars()
                else:
                    names = (await conn.execute(text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).scalars()
                tables = sorted(names)
                versions = ([tuple(row) for row in await conn.execute(text("SELECT version_num FROM alembic_version"))]
                            if "alembic_version" in tables else [])
            return {"tables": tables, "versions": versions}
        finally:
            await engine.dispose()

    return asyncio.run(read())


@pytest.mark.real_migrations
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrate_check_then_migrate(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    where = ("--data-dir", str(tmp_path / "data"), "--database-url", url)
    head = head_revision()

    check = run_cli("migrate", "--check", *where, check=False)
    assert check.returncode == 1, check.stderr
    assert "pending migrations:" in check.stdout and "0001" in check.stdout and f"{head}  " in check.stdout
    assert _tables(url) == {"tables": [], "versions": []}  # --check changed nothing

    pending = json.loads(run_cli("migrate", "--check", "--json", *where, check=False).stdout)["pending"]
    assert pending[0]["revision"] == "0001" and pending[-1]["revision"] == head

    applied = json.loads(run_cli("migrate", "--json", *where).stdout)["applied"]
    assert [step["revision"] for step in applied] == [step["revision"] for step in pending]
    assert _tables(url)["versions"] == [(head,)]

    again = run_cli("migrate", "--check", *where)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert json.loads(run_cli("migrate", "--json", *where).stdout) == {"applied": []}


@pytest.mark.real_migrations
def test_migrate_refuses_a_schema_of_a_newer_version(tmp_path: Path) -> None:
    where = ("--data-dir", str(tmp_path))
    run_cli("migrate", *where)
    with sqlite3.connect(tmp_path / "bankgate.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    for args in (("migrate", "--check"), ("migrate",)):
        result = run_cli(*args, *where, check=False)
        assert result.returncode == 1
        assert result.stderr.startswith("error: the database schema is at revision 9999"), result.stderr
        assert "Traceback" not in result.stderr
    assert _tables(f"sqlite:///{tmp_path / 'bankgate.db'}")["versions"] == [("9999",)]


def test_migrate_reports_an_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql://bankgate:pw-not-shown@127.0.0.1:{free_port()}/nowhere"
    result = run_cli("migrate", "--check", "--data-dir", str(tmp_path), "--database-url", url, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert "pw-not-shown" not in result.stderr + result.stdout


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_two_replicas_migrating_at_once_both_succeed(kind: str, request: pytest.FixtureRequest,
                                                     tmp_path: Path) -> None:
    url = request.getfixturevalue("postgres_url") if kind == "postgresql" else f"sqlite:///{tmp_path / 'one.db'}"
    command = [sys.executable, "-m", "bankgate", "migrate", "--json", "--data-dir", str(tmp_path),
               "--database-url", url]
    env = {**os.environ, "BANKGATE_DATA_DIR": str(tmp_path)}
    replicas = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    results = [replica.communicate(timeout=120) for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0, 0], results
    applied = sorted(len(json.loads(out)["applied"]) for out, _ in results)
    assert applied[0] == 0 and applied[1] > 0, results  # one migrated everything, the other found it done
    assert _tables(url)["versions"] == [(head_revision(),)]
