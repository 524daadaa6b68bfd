"""Running the server for real: the quickstart, several workers, proxies, and a database that goes away."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import _pg_admin, basic, free_port, run_cli

# `bankgate serve` itself: real servers.
pytestmark = pytest.mark.real_server


def _wait_for(url: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited early"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def _quickstart(data_dir: Path) -> tuple[subprocess.Popen[str], int, str]:
    """Start `bankgate quickstart` and return it once it serves, with its port and what it printed."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bankgate", "quickstart", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    _wait_for(f"http://127.0.0.1:{port}/healthz", process)
    assert process.stdout is not None
    printed = ""
    while "curl" not in printed:
        printed += process.stdout.readline()
    return process, port, printed


def test_quickstart_prints_a_working_curl_line_and_serves(tmp_path: Path) -> None:
    process, port, printed = _quickstart(tmp_path / "d")
    try:
        curl_line = next(line for line in printed.splitlines() if line.startswith("curl "))
        assert f"http://127.0.0.1:{port}/oauth/token" in curl_line
        assert re.search(r"-u '?(bk_test_\w+):(sk_test_\w+)'?", curl_line), curl_line
        answer = subprocess.run(curl_line, shell=True, capture_output=True, text=True, timeout=30)  # noqa: S602
        assert '"token_type":"Bearer"' in answer.stdout.replace(" ", ""), answer
        assert '"expires_in":7200' in answer.stdout.replace(" ", "")
    finally:
        _stop(process)


def test_quickstart_restart_issues_a_new_secret_and_the_old_one_stops(tmp_path: Path) -> None:
    printed_credentials = []
    for _ in range(2):
        process, port, printed = _quickstart(tmp_path)
        try:
            key = re.search(r"API key\s+(bk_test_\w+)", printed).group(1)  # type: ignore[union-attr]
            secret = re.search(r"Secret key\s+(sk_test_\w+)", printed).group(1)  # type: ignore[union-attr]
            printed_credentials.append((key, secret))
            if len(printed_credentials) == 2:
                old, new = printed_credentials
                assert old[0] == new[0] and old[1] != new[1]
                url = f"http://127.0.0.1:{port}/oauth/token"
                data = {"grant_type": "client_credentials"}
                assert httpx.post(url, data=data, headers={"Authorization": basic(*new)}).status_code == 201
                assert httpx.post(url, data=data, headers={"Authorization": basic(*old)}).status_code == 401
        finally:
            _stop(process)
    assert len(run_cli("clients", "list", "--json", "--data-dir", str(tmp_path)).stdout.split('"api_key"')) == 2


def test_quickstart_refuses_production(tmp_path: Path) -> None:
    result = run_cli("quickstart", "--data-dir", str(tmp_path), env={"BANKGATE_ENVIRONMENT": "production"},
                     check=False)
    assert result.returncode == 1
    assert "sandbox only" in result.stderr


def test_serve_with_two_workers_issues_tokens_from_both(tmp_path: Path) -> None:
    env = {**os.environ, "BANKGATE_DATA_DIR": str(tmp_path)}
    created = run_cli("clients", "create", "--name", "w", "--scope", "app_1", "--json", env=env, check=False)
    assert created.returncode == 1 and "bankgate init" in created.stderr
    run_cli("init", env=env)
    import json

    client = json.loads(run_cli("clients", "create", "--name", "w", "--scope", "app_1", "--json", env=env).stdout)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bankgate", "serve", "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", process)
        jtis = set()
        for _ in range(20):
            with httpx.Client() as fresh:  # a new connection each time, to reach both workers
                response = fresh.post(
                    f"http://127.0.0.1:{port}/oauth/token",
                    data={"grant_type": "client_credentials"},
                    headers={"Authorization": basic(client["api_key"], client["secret_key"])},
                )
            assert response.status_code == 201
            import jwt

            jtis.add(jwt.decode(response.json()["access_token"], options={"verify_signature": False})["jti"])
        assert len(jtis) == 20
    finally:
        _stop(process)


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(server_factory: Any) -> None:
    for trusted, expected in (("", "127.0.0.1"), ("127.0.0.0/8", "203.0.113.9")):
        server = server_factory({"BANKGATE_TRUSTED_PROXIES": trusted})
        client = server.create_client("app_1")
        server.cli("ips", "allow", client["api_key"], "203.0.113.9/32")
        server.cli("ips", "allow", client["api_key"], "127.0.0.1/32")
        response = server.http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(client["api_key"], client["secret_key"]),
                     "X-Forwarded-For": "198.51.100.7, 203.0.113.9"},
        )
        assert response.status_code == 201
        issued = [e for e in server.audit() if e["event"] == "token.issued"]
        assert issued[-1]["source_ip"] == expected


def test_database_outage_answers_503_temporarily_unavailable_not_500(
    server_factory: Any, postgres_url: str, postgres_server_url: str
) -> None:
    server = server_factory({"BANKGATE_DATABASE_URL": postgres_url})
    server.cli("init")
    client = server.create_client("app_1")
    assert server.token(client).status_code == 201
    name = postgres_url.rsplit("/", 1)[1]
    asyncio.run(_pg_admin(postgres_server_url, f'DROP DATABASE "{name}" WITH (FORCE)'))
    response = server.token(client)
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["retry-after"]
    assert client["secret_key"] not in server.log()


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_oauth_endpoints_refuse_get_with_405_json(server: Any, path: str) -> None:
    response = server.http.get(path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == "invalid_request"
