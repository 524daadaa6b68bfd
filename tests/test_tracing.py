"""OpenTelemetry tracing (`BANKGATE_TRACING`, bankgate.tracing) with the real SDK and its in-memory exporter: one
server span per request with the token signing, argon2, database and Redis work as children; W3C `traceparent`
continued from trusted proxies only; no secret in any span; nothing of OpenTelemetry loaded when tracing is off."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bankgate import tracing
from bankgate.routenames import UNMATCHED, route_names
from conftest import AUTHORIZE, PASSWORD, Server, basic, user_basic

TRACED = {"BANKGATE_TRACING": "console"}
#: The in-process server's requests come from 127.0.0.1: a trusted proxy here, forwarding client certificates.
BEHIND_PROXY = {**TRACED, "BANKGATE_TRUSTED_PROXIES": "127.0.0.1/32", "BANKGATE_CLIENT_CERT_HEADER": "nginx"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 2026-001"}


class Traced:
    """A server with tracing on, its spans caught by the SDK's in-memory exporter."""

    def __init__(self, server: Server) -> None:
        self.server = server
        active = tracing.current()
        assert active is not None, "the server started with tracing on"
        self.exporter = InMemorySpanExporter()
        active.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def request_span(self, name: str) -> ReadableSpan:
        [span] = [s for s in self.spans() if s.kind is SpanKind.SERVER and s.name == name]
        return span

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.parent is not None and s.parent.span_id == parent.context.span_id
                and s.context.trace_id == parent.context.trace_id]


@pytest.fixture
def traced_factory(server_factory: Any) -> Iterator[Any]:
    def make(env: dict[str, str] | None = None) -> Traced:
        return Traced(server_factory({**TRACED, **(env or {})}))

    yield make


@pytest.fixture
def traced(traced_factory: Any) -> Traced:
    return traced_factory()


def _attribute_values(spans: Sequence[ReadableSpan]) -> list[str]:
    """Every attribute value of every span, its events and its links, as text."""
    values: list[str] = [span.name for span in spans]
    for span in spans:
        groups = [span.attributes, span.resource.attributes, *(e.attributes for e in span.events),
                  *(link.attributes for link in span.links)]
        for group in groups:
            values += [str(value) for value in (group or {}).values()]
        if span.status.description:
            values.append(span.status.description)
    return values


def assert_no_secret(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    assert spans
    for value in _attribute_values(spans):
        for secret in secrets:
            assert secret not in value, f"a secret in a span: {value!r}"


def test_a_token_request_is_a_server_span_with_signing_and_database_children(traced: Traced) -> None:
    client = traced.server.create_client("app_1")
    traced.exporter.clear()
    response = traced.server.token(client, scope="app_1")
    assert response.status_code == 201, response.text

    span = traced.request_span("POST /oauth/token")
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["http.request.method"] == "POST"
    assert span.attributes["http.route"] == "/oauth/token"
    assert span.attributes["http.response.status_code"] == 201
    assert span.attributes["client.address"] == "127.0.0.1"
    assert span.status.status_code is not StatusCode.ERROR
    children = traced.children(span)
    [signing] = [s for s in children if s.name == "bankgate.token.sign"]
    assert signing.attributes is not None and signing.attributes["bankgate.token.alg"] == "RS256"
    statements = [s for s in children if s.attributes and s.attributes.get("db.system.name") == "sqlite"]
    assert statements, [s.name for s in children]
    assert all(s.kind is SpanKind.CLIENT for s in statements)
    assert any("?" in str(s.attributes["db.query.text"]) for s in statements if s.attributes)  # placeholders only
    assert_no_secret(traced.spans(), client["secret_key"], response.json()["access_token"],
                     basic(client["api_key"], client["secret_key"]).split()[1])


def test_an_authorize_request_has_the_argon2_verification_as_a_child(traced_factory: Any, tmp_path: Path) -> None:
    traced = traced_factory(BEHIND_PROXY)
    server = traced.server
    user = server.cli_json("users", "create", "--name", "Traced User")
    issued = server.cli_json("certs", "issue", user["username"], "--out", str(tmp_path / "cert"))
    certificate = (tmp_path / "cert" / f"{issued['serial']}.crt.pem").read_text()
    reset = server.http.post(f"/api/v1/users/{user['username']}/password",
                             json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD})
    assert reset.status_code == 200, reset.text
    traced.exporter.clear()

    response = server.http.get(AUTHORIZE, headers={**user_basic(user["username"], PASSWORD),
                                                   "X-SSL-Client-Cert": quote(certificate, safe="")})
    assert response.status_code == 200, response.text

    span = traced.request_span(f"GET {AUTHORIZE}")
    names = [s.name for s in traced.children(span)]
    assert "bankgate.argon2.verify" in names
    assert "bankgate.token.sign" in names
    assert any(name.endswith(" sqlite") for name in names), names
    assert_no_secret(traced.spans(), PASSWORD, user["initial_passphrase"], response.json()["access_token"])


def test_a_traceparent_from_a_trusted_proxy_continues_the_callers_trace(traced_factory: Any) -> None:
    traced = traced_factory(BEHIND_PROXY)
    response = traced.server.http.get("/livez", headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    assert response.status_code == 200

    span = traced.request_span("GET /livez")
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.context.trace_state.get("vendor") == "1"


def test_a_traceparent_from_anyone_else_starts_a_new_trace_linked_to_the_callers(traced: Traced) -> None:
    response = traced.server.http.get("/livez", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200

    span = traced.request_span("GET /livez")
    assert span.parent is None
    assert format(span.context.trace_id, "032x") != TRACE_ID
    [link] = span.links
    assert format(link.context.trace_id, "032x") == TRACE_ID and format(link.context.span_id, "016x") == PARENT_ID


def test_tracing_parent_any_continues_every_callers_trace(traced_factory: Any) -> None:
    traced = traced_factory({"BANKGATE_TRACING_PARENT": "any"})
    traced.server.http.get("/livez", headers={"traceparent": TRACEPARENT})
    span = traced.request_span("GET /livez")
    assert format(span.context.trace_id, "032x") == TRACE_ID


def test_an_unsampled_trusted_parent_records_nothing(traced_factory: Any) -> None:
    traced = traced_factory(BEHIND_PROXY)
    traced.server.http.get("/livez", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    traced.server.http.get("/healthz")
    assert [s.name for s in traced.spans() if s.kind is SpanKind.SERVER] == ["GET /healthz"]


def test_spans_are_named_by_bounded_route_templates(traced: Traced) -> None:
    server = traced.server
    server.http.get("/api/v1/users/someone/certificates")
    server.http.get("/wp-admin/setup-config.php")
    server.http.get("/console/me")
    server.http.request("BREW", "/oauth/token")
    names = {s.name for s in traced.spans() if s.kind is SpanKind.SERVER}
    assert names == {"GET /api/v1/users/{username}/certificates", f"GET {UNMATCHED}", "GET /console/...",
                     "_OTHER /oauth/token"}
    assert not any("someone" in value or "wp-admin" in value for value in _attribute_values(traced.spans()))


def test_the_query_string_stays_out_of_the_span(traced: Traced) -> None:
    client = traced.server.create_client("app_1")
    # A secret under a name the ErrorBoundary does not know passes it; the span still shows no query.
    response = traced.server.token(client, scope="app_1", note=client["secret_key"])
    assert response.status_code in (201, 400), response.text
    hidden = traced.server.http.get(f"/livez?note={quote(client['secret_key'])}")
    assert hidden.status_code == 200
    assert traced.request_span("GET /livez")
    assert_no_secret(traced.spans(), client["secret_key"], quote(client["secret_key"]))


def test_redis_commands_of_a_request_are_its_children(traced_factory: Any, redis_url: str) -> None:
    traced = traced_factory({"BANKGATE_IDEMPOTENCY_STORE": redis_url})
    server = traced.server
    client = server.create_client("app_1")
    token = server.token(client).json()["access_token"]
    traced.exporter.clear()
    response = server.http.post("/api/v1/payments", json=ORDER,
                                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 201, response.text

    span = traced.request_span("POST /api/v1/payments")
    commands = [s for s in traced.children(span) if s.attributes and s.attributes.get("db.system") == "redis"]
    assert commands, [s.name for s in traced.children(span)]
    assert_no_secret(traced.spans(), token, client["secret_key"], json.dumps(ORDER))


def test_route_names_cover_the_direct_admin_sandbox_and_mounted_routes() -> None:
    from bankgate.app import create_app
    from bankgate.config import load_settings

    app: Any = create_app(load_settings(data_dir=Path("unused")))
    names = route_names(app.starlette.router.routes)
    assert names("/oauth/token") == "/oauth/token"
    assert names("/api/v1/users/alice/password") == "/api/v1/users/{username}/password"
    assert names("/admin/v1/clients/bk_test_1/disable") == "/admin/v1/clients/{api_key}/disable"
    assert names("/api/v1/payments/pay_123") == "/api/v1/payments/{payment_id}"
    assert names("/console/admin/users/bob") == "/console/..."
    assert names("/docs/static/swagger-ui.css") == "/docs/static/{name:path}"
    assert names("/etc/passwd") == UNMATCHED


_FRESH_INTERPRETER = """
import asyncio, sys
from starlette.testclient import TestClient
from bankgate.app import create_app
from bankgate.config import load_settings
from bankgate.services import Services

settings = load_settings(data_dir=sys.argv[1])
async def init():
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
    finally:
        await services.close()
asyncio.run(init())
with TestClient(create_app(settings)) as http:
    assert http.post("/oauth/token", data={"grant_type": "client_credentials"},
                     headers={"Authorization": "Basic YmtfdGVzdF94OnNrX3Rlc3RfeQ=="}).status_code == 401
    assert http.get("/healthz").status_code == 200
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""


def test_with_tracing_off_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _FRESH_INTERPRETER, str(tmp_path)], capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


_WITHOUT_OPENTELEMETRY = """
import sys
sys.modules["opentelemetry"] = None  # as if `bankgate[otel]` were not installed
from bankgate.cli import main
sys.argv = ["bankgate", "serve", "--data-dir", sys.argv[1], "--tracing", "otlp"]
main()
"""


def test_tracing_on_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _WITHOUT_OPENTELEMETRY, str(tmp_path)], capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "pip install 'bankgate[otel]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bankgate.db").exists()  # refused before anything was written


def test_create_app_refuses_tracing_without_the_extra(tmp_path: Path) -> None:
    script = ("import sys; sys.modules['opentelemetry'] = None\n"
              "from bankgate.app import create_app\nfrom bankgate.config import load_settings\n"
              "from bankgate.tracing import TracingUnavailable\n"
              "try:\n    create_app(load_settings(data_dir=sys.argv[1], tracing='console'))\n"
              "except TracingUnavailable as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "BANKGATE_TRACING=console needs OpenTelemetry" in result.stdout
    assert "pip install 'bankgate[otel]'" in result.stdout


def test_a_malformed_traceparent_from_another_address_starts_a_plain_new_trace(traced: Traced) -> None:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=traced.server.app, client=("203.0.113.7", 4000))  # type: ignore[attr-defined]
        async with httpx.AsyncClient(transport=transport, base_url=traced.server.base_url) as http:
            return await http.get("/livez", headers={"traceparent": "garbage"})

    assert asyncio.run(call()).status_code == 200
    span = traced.request_span("GET /livez")
    assert span.parent is None and not span.links  # a malformed traceparent is no caller
    assert span.attributes is not None and span.attributes["client.address"] == "203.0.113.7"
