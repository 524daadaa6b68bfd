"""The README's "protect your own API" example, run against a real bankgate server's JWKS."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import httpx
import pytest

from conftest import Server

# The example fetches the server's JWKS over HTTP: a real server.
pytestmark = pytest.mark.real_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def example(server: Server, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("BANKGATE_ISSUER", server.base_url)
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.protected_api", None)
    return importlib.import_module("examples.protected_api")


async def test_protected_api_example_accepts_tokens_and_replays_retried_transfers(
    server: Server, example: object
) -> None:
    client = server.create_client("app_12345")
    token = server.token(client).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "transfer-1"}
    body = {"application_id": "app_12345", "amount": "10.00"}
    transport = httpx.ASGITransport(app=example.app)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.post("/transfers", json=body)).status_code == 401
        first = await http.post("/transfers", json=body, headers=headers)
        assert first.status_code == 201, first.text
        retry = await http.post("/transfers", json=body, headers=headers)
        assert retry.status_code == 201 and retry.headers["idempotent-replayed"] == "true"
        assert retry.json() == first.json()
        other_app = await http.post("/transfers", json={**body, "application_id": "app_9"},
                                    headers={**headers, "Idempotency-Key": "transfer-2"})
        assert other_app.status_code == 403
        forged = await http.post("/transfers", json=body,
                                 headers={**headers, "Authorization": f"Bearer {token[:-4]}AAAA"})
        assert forged.status_code == 401 and "invalid_token" in forged.headers["www-authenticate"]
    assert len(example.transfers) == 1  # type: ignore[attr-defined]
