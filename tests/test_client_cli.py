"""`bankgate token` against a real server: prints a token from the shared file cache, `--json` the answer, typed
errors without secrets; and it runs on a client-only install (no server packages importable)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client_helpers import issued
from conftest import Server, run_cli

# `bankgate token` speaks HTTP to the server's URL: a real server.
pytestmark = pytest.mark.real_server

#: Import blocker for the server stack: what a `pip install bankgate` (no extras) machine lacks.
_CLIENT_ONLY = """
import sys, importlib.abc
BLOCKED = {"typer", "rich", "pydantic", "pydantic_settings", "sqlalchemy", "starlette", "uvicorn", "alembic",
           "argon2", "jwt", "orjson", "asyncpg", "aiosqlite", "fastapi"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
import bankgate.client
loaded = sorted(m for m in sys.modules if m.startswith("bankgate") and not m.startswith("bankgate.client"))
assert loaded == ["bankgate"], loaded
sys.argv = ["bankgate", *sys.argv[1:]]
from bankgate.cli import main
"""


def test_token_command_prints_a_cached_token_and_json(shared: Server, tmp_path: Path) -> None:
    client = shared.create_client("app_1")
    args = ("token", "--base-url", shared.base_url, "--api-key", client["api_key"], "--scope", "app_1",
            "--cache-dir", str(tmp_path / "cache"))
    env = {"BANKGATE_SECRET_KEY": client["secret_key"]}
    first = run_cli(*args, env=env)
    again = run_cli(*args, env=env)
    assert first.stdout.strip() == again.stdout.strip() and first.stdout.count(".") == 2  # a JWT, reused
    answer = json.loads(run_cli(*args, "--json", env=env).stdout)
    assert answer["access_token"] == first.stdout.strip()
    assert answer["expires_in"] == 7200 and answer["scope"] == "app_1" and answer["token_type"] == "Bearer"
    assert issued(shared, client["api_key"]) == 1
    for output in (first.stdout, first.stderr, again.stderr):
        assert client["secret_key"] not in output


def test_token_command_reports_a_wrong_secret_without_showing_it(shared: Server, tmp_path: Path) -> None:
    client = shared.create_client("app_1")
    wrong = client["secret_key"][:-4] + "zzzz"
    refused = run_cli("token", "--token-url", f"{shared.base_url}/oauth/token", "--api-key", client["api_key"],
                      "--no-cache", env={"BANKGATE_SECRET_KEY": wrong}, check=False)
    assert refused.returncode == 1
    assert "invalid_client" in refused.stderr and "check the API key and secret" in refused.stderr
    assert wrong not in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr


def test_token_command_works_without_the_server_packages(shared: Server, tmp_path: Path) -> None:
    client = shared.create_client("app_1")
    result = subprocess.run(
        [sys.executable, "-c", _CLIENT_ONLY, "token", "--token-url", f"{shared.base_url}/oauth/token",
         "--api-key", client["api_key"], "--no-cache"],
        capture_output=True, text=True, timeout=60, env={"BANKGATE_SECRET_KEY": client["secret_key"],
                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2
    other = subprocess.run([sys.executable, "-c", _CLIENT_ONLY, "serve"], capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and "pip install 'bankgate[server]'" in other.stderr
