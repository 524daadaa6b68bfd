"""The token endpoint's success status (`BANKGATE_TOKEN_STATUS`), and a strict RFC 6749 client against a real server.

The strict client is node's `openid-client` v6 (`tests/interop/`, pinned by its package-lock.json; `scripts/test`
installs it): it accepts only 200 from the token endpoint, as RFC 6749 §5.1 says, not the 201 the Banked seed
documents and bankgate answers by default.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankgate.app import create_app
from bankgate.config import load_settings
from bankgate.services import Services
from conftest import IN_CI

INTEROP = Path(__file__).parent / "interop"
SCRIPT = INTEROP / "client_credentials.mjs"


def _node() -> str:
    """The node binary, with openid-client installed; skipped (with the reason) when missing, failed under CI."""
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed: the strict-client interop test needs node >= 20"
    elif not (INTEROP / "node_modules" / "openid-client" / "package.json").is_file():
        reason = "tests/interop has no node_modules: run `npm ci --prefix tests/interop` (scripts/test does)"
    else:
        return node
    if IN_CI:
        pytest.fail(f"in CI the interop test must run: {reason}")
    pytest.skip(reason)


def _strict_client(node: str, base_url: str, client: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "BANKGATE_ISSUER": base_url, "BANKGATE_API_KEY": client["api_key"],
           "BANKGATE_SECRET_KEY": client["secret_key"], "BANKGATE_SCOPE": "app_1"}
    return subprocess.run([node, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.real_server  # node speaks to it over a socket
def test_a_strict_rfc_6749_client_gets_a_token_with_status_200_and_fails_on_201(server_factory: Any) -> None:
    node = _node()
    strict = server_factory({"BANKGATE_TOKEN_STATUS": "200"})
    client = strict.create_client("app_1")
    result = _strict_client(node, strict.base_url, client)
    assert result.returncode == 0, result.stderr
    tokens = json.loads(result.stdout)
    assert tokens["token_type"].lower() == "bearer" and tokens["scope"] == "app_1"
    whoami = strict.http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert whoami.status_code == 200, whoami.text

    seed_style = server_factory()  # the default: 201, as the Banked seed documents
    refused = _strict_client(node, seed_style.base_url, seed_style.create_client("app_1"))
    assert refused.returncode == 1, refused.stdout
    assert "unexpected HTTP response status code" in refused.stderr, refused.stderr
    assert "HTTP status 201" in refused.stderr, refused.stderr
    assert client["secret_key"] not in refused.stderr + result.stderr


@pytest.mark.parametrize("status", [None, "200", "201"])
async def test_the_token_endpoint_answers_the_configured_status_and_openapi_documents_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str | None
) -> None:
    if status is not None:
        monkeypatch.setenv("BANKGATE_TOKEN_STATUS", status)
    settings = load_settings(data_dir=tmp_path)
    expected = int(status or "201")
    assert settings.token_status == expected
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        issued = await services.clients.create("status", ["app_1"], "oauth2")
    finally:
        await services.close()
    app = create_app(settings)
    starlette = app.starlette  # type: ignore[attr-defined]
    basic = base64.b64encode(f"{issued.client.api_key}:{issued.secret_key}".encode()).decode()
    async with starlette.router.lifespan_context(starlette), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
    ) as http:
        answer = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                 headers={"Authorization": f"Basic {basic}"})
        assert answer.status_code == expected, answer.text
        assert answer.json()["token_type"] == "Bearer"
        responses = (await http.get("/openapi.json")).json()["paths"]["/oauth/token"]["post"]["responses"]
    assert str(expected) in responses
    assert str(401 - expected) not in responses  # 200 <-> 201: only the configured success status


def test_a_token_status_other_than_200_or_201_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    from conftest import run_cli

    result = run_cli("serve", "--data-dir", str(tmp_path), env={"BANKGATE_TOKEN_STATUS": "204"}, check=False)
    assert result.returncode == 1
    assert "token_status" in result.stderr and "must be 201" in result.stderr
    assert "Traceback" not in result.stderr
