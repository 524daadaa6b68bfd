"""Server processes sharing a database agree on the issuer (`iss`) without flags: it is stored in the database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankgate.config import Settings
from bankgate.services import Services
from conftest import cli_json, free_port, run_cli

WHOAMI = "/api/v1/whoami"

# What `bankgate serve` prints, and several processes choosing one issuer: real servers.
pytestmark = pytest.mark.real_server


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _issuer(server: Any) -> str:
    return str(server.http.get("/.well-known/oauth-authorization-server").json()["issuer"])


async def _with_issuer(settings: Settings, issuer: str | None) -> Services:
    return await Services.open(settings.model_copy(update={"issuer": issuer}))


async def test_the_first_process_decides_and_the_others_follow(services: Services) -> None:
    first = await services.resolve_issuer("http://127.0.0.1:8001")
    assert first.url == "http://127.0.0.1:8001"
    assert "stored in the database for the servers that share it" in first.source
    second = await services.resolve_issuer("http://127.0.0.1:8002")
    assert second.url == "http://127.0.0.1:8001"
    assert second.source.startswith("stored in the database")
    assert second.conflicts_with is None


async def test_a_configured_issuer_wins_for_its_process_and_is_stored_only_when_none_is(
    services: Services, settings: Settings
) -> None:
    configured = await _with_issuer(settings, "https://auth.example.com/")
    try:
        chosen = await configured.resolve_issuer("http://127.0.0.1:8001")
        assert (chosen.url, chosen.conflicts_with) == ("https://auth.example.com", None)
        assert "stored for servers started without one" in chosen.source
        assert (await services.resolve_issuer("http://127.0.0.1:8002")).url == "https://auth.example.com"
    finally:
        await configured.close()
    other = await _with_issuer(settings, "https://elsewhere.example.com")
    try:
        chosen = await other.resolve_issuer("http://127.0.0.1:8003")
        assert chosen.url == "https://elsewhere.example.com"
        assert chosen.conflicts_with == "https://auth.example.com"  # said at start: the others refuse its tokens
        assert "bankgate init --issuer URL" in chosen.describe()
    finally:
        await other.close()
    assert await services.stored_issuer() == "https://auth.example.com"


async def test_processes_racing_to_store_their_address_all_get_the_same_one(
    services: Services, settings: Settings
) -> None:
    opened = [await Services.open(settings) for _ in range(4)]
    try:
        chosen = await asyncio.gather(*(s.resolve_issuer(f"http://127.0.0.1:{8000 + i}")
                                        for i, s in enumerate(opened)))
    finally:
        for s in opened:
            await s.close()
    assert len({c.url for c in chosen}) == 1
    assert await services.stored_issuer() == chosen[0].url


def test_two_servers_on_one_postgresql_database_accept_each_others_tokens(
    server_factory: Any, postgres_url: str, tmp_path: Path
) -> None:
    env = {"BANKGATE_DATABASE_URL": postgres_url}
    first = server_factory(env, data_dir=tmp_path / "shared")  # same master key (file) and database, no issuer
    second = server_factory(env, data_dir=tmp_path / "shared")
    assert first.base_url != second.base_url
    assert _issuer(first) == _issuer(second) == first.base_url
    assert f"issuer {first.base_url} (this server's address, stored in the database" in first.log()
    assert f"issuer {first.base_url} (stored in the database" in second.log()

    client = first.create_client("app_1")
    from_first = first.token(client).json()["access_token"]
    from_second = second.token(client).json()["access_token"]
    for server in (first, second):
        for token in (from_first, from_second):
            answer = server.http.get(WHOAMI, headers=_bearer(token))
            assert answer.status_code == 200, answer.text


def test_init_issuer_sets_the_issuer_of_servers_started_without_one(server_factory: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shown = cli_json("init", "--issuer", "https://auth.example.com/", "--data-dir", str(data))
    assert shown["issuer"] == "https://auth.example.com"
    server = server_factory(data_dir=data)
    assert _issuer(server) == "https://auth.example.com"
    assert "issuer https://auth.example.com (stored in the database" in server.log()
    token = server.token(server.create_client("app_1")).json()["access_token"]
    assert server.http.get(WHOAMI, headers=_bearer(token)).status_code == 200

    # Setting it again replaces it; running init without --issuer keeps it.
    assert cli_json("init", "--issuer", "https://new.example.com", "--data-dir", str(data))["issuer"] == (
        "https://new.example.com")
    assert cli_json("init", "--data-dir", str(data))["issuer"] == "https://new.example.com"
    changes = [(e["detail"]["issuer"], e["detail"]["previous"])
               for e in cli_json("audit", "tail", "--event", "issuer.set", "--data-dir", str(data))]
    assert sorted(changes) == [("https://auth.example.com", None), ("https://new.example.com",
                                                                      "https://auth.example.com")]


def test_init_refuses_an_issuer_that_is_not_an_http_url(tmp_path: Path) -> None:
    result = run_cli("init", "--issuer", "ftp://auth.example.com", "--data-dir", str(tmp_path / "d"), check=False)
    assert result.returncode == 1
    assert "must be an http:// or https:// URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_with_its_own_issuer_says_it_differs_from_the_stored_one(
    server_factory: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = server_factory(data_dir=data)
    second = server_factory({"BANKGATE_ISSUER": "https://other.example.com"}, data_dir=data)
    assert _issuer(second) == "https://other.example.com"
    assert f"the database holds issuer {first.base_url}" in second.log()
    token = second.token(second.create_client("app_1")).json()["access_token"]
    refused = first.http.get(WHOAMI, headers=_bearer(token))
    assert refused.status_code == 401 and "another issuer" in refused.text


def _quickstart_issuer(data_dir: Path) -> tuple[int, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bankgate", "quickstart", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, "quickstart exited"
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server", timeout=1)
                return port, str(answer.json()["issuer"])
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail("quickstart did not start within 30 s")
    finally:
        process.terminate()
        process.wait(10)


def test_quickstart_uses_its_own_address_on_any_port_whatever_is_stored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("init", "--issuer", "https://auth.example.com", "--data-dir", str(data))
    for _ in range(2):
        port, issuer = _quickstart_issuer(data)
        assert issuer == f"http://127.0.0.1:{port}"
    assert cli_json("init", "--data-dir", str(data))["issuer"] == "https://auth.example.com"
