"""Prometheus metrics at `/metrics` (`BANKGATE_METRICS`): counters moved by exactly what the server did, labels from
bounded vocabularies only (never a key, a secret, a token or an address), the admin listener only when configured,
nothing loaded when off, and one real `bankgate serve --workers 2` whose workers' counts add up."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import AUTHORIZE, PASSWORD, Server, basic, free_port, user_basic

METRICS_ON = {"BANKGATE_METRICS": "on"}
ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 1"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ROOT = Path(__file__).resolve().parents[1]


def scrape(server: Server, url: str = "/metrics") -> tuple[Samples, str]:
    answer = server.http.get(url)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["cache-control"] == "no-store"
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, answer.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def label_values(text: str) -> set[str]:
    return set(re.findall(r'="([^"]*)"', text))


def _token(server: Server, client: dict[str, Any]) -> str:
    answer = server.token(client)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["access_token"])


def test_counters_move_by_exactly_what_the_server_did_with_bounded_labels(server_factory: Any, clock: Any) -> None:
    server = server_factory({**METRICS_ON, "BANKGATE_THROTTLE_ACCOUNT_IP_FAILURES": "2"}, clock=clock)
    client = server.create_client("app_1")
    admin = server.cli_json("admins", "create", "metrics-owner", "--role", "owner")
    before, _ = scrape(server)

    tokens = [_token(server, client) for _ in range(3)]
    admin_token = server.http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                   headers={"Authorization": basic(admin["api_key"], admin["secret_key"])})
    assert admin_token.status_code == 201, admin_token.text
    assert server.token(client, scope="app_9").status_code == 400  # invalid_scope
    assert server.http.post("/oauth/token", data={"grant_type": "client_credentials"}).status_code == 401
    bearer = {"Authorization": f"Bearer {tokens[0]}"}
    assert server.http.get("/api/v1/whoami", headers=bearer).status_code == 200
    assert server.http.get("/api/v1/whoami", headers=bearer).status_code == 200
    assert server.http.get("/api/v1/whoami", headers={"Authorization": "Bearer not.a.token"}).status_code == 401
    assert server.http.get("/api/v1/whoami").status_code == 401
    key = str(uuid.uuid4())
    paid = [server.http.post("/api/v1/payments", json=ORDER, headers={**bearer, "Idempotency-Key": key})
            for _ in range(2)]
    assert [answer.status_code for answer in paid] == [201, 201]
    assert paid[1].headers["idempotent-replayed"] == "true"
    other = {**ORDER, "amount": "99.00"}
    mismatch = server.http.post("/api/v1/payments", json=other, headers={**bearer, "Idempotency-Key": key})
    assert mismatch.status_code == 422
    wrong = {"Authorization": basic(client["api_key"], "sk_test_wrong")}
    for _ in range(2):  # the second failure from this address blocks the key here (threshold 2)
        answer = server.http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=wrong)
        assert answer.status_code == 401
    assert server.token(client).status_code == 429  # blocked: throttled, not even checked

    after, text = scrape(server)
    assert moved(before, after, "bankgate_tokens_issued_total", style="api_key") == 3
    assert moved(before, after, "bankgate_tokens_issued_total", style="admin") == 1
    assert moved(before, after, "bankgate_tokens_denied_total", style="api_key", reason="invalid_scope") == 1
    assert moved(before, after, "bankgate_tokens_denied_total", style="api_key", reason="no_credentials") == 1
    assert moved(before, after, "bankgate_tokens_denied_total", style="api_key", reason="wrong_secret") == 2
    assert moved(before, after, "bankgate_tokens_denied_total", style="api_key", reason="throttled") == 1
    assert moved(before, after, "bankgate_throttle_blocks_total", scope="account_ip") == 1
    assert moved(before, after, "bankgate_throttle_blocks_total", scope="ip") == 0
    # whoami twice, the payments three times (the guard runs before the Idempotency-Key layer)
    assert moved(before, after, "bankgate_guard_verdicts_total", verdict="allowed", reason="none") == 5
    assert moved(before, after, "bankgate_guard_verdicts_total", verdict="denied", reason="invalid_token") == 1
    # no Authorization: the body's code (RFC 6750 §3.1 sends none in the challenge)
    assert moved(before, after, "bankgate_guard_verdicts_total", verdict="denied", reason="invalid_request") == 1
    assert moved(before, after, "bankgate_idempotency_requests_total", outcome="fresh") == 1
    assert moved(before, after, "bankgate_idempotency_requests_total", outcome="replayed") == 1
    assert moved(before, after, "bankgate_idempotency_requests_total", outcome="mismatch") == 1
    # the token verified once, then found in the verifier's cache for the next four calls; the forged one missed
    assert moved(before, after, "bankgate_cache_misses_total", cache="verified_tokens") == 2
    assert moved(before, after, "bankgate_cache_hits_total", cache="verified_tokens") == 4
    assert value(after, "bankgate_revocation_sync_age_seconds") >= 0

    secrets = {client["api_key"], client["secret_key"], admin["api_key"], admin["secret_key"], *tokens, key,
               "127.0.0.1", admin_token.json()["access_token"]}
    assert not [secret for secret in secrets if secret in text]
    # the request metrics (told by every request's `http.request`) are labelled by route template, method, status
    # and histogram bucket; every other label comes from the bounded vocabularies below
    requests = {"/oauth/token", "/api/v1/whoami", "/api/v1/payments", "/metrics", "GET", "POST", "200", "201",
                "400", "401", "422", "429"}
    labels = label_values(re.sub(r'le="[^"]*"', "", text)) - requests
    assert labels <= {"api_key", "certificate", "admin", "allowed", "denied", "none", "fresh", "replayed",
                      "mismatch", "ip", "account_ip", "account", "clients", "ip_allow_list", "verified_tokens",
                      "invalid_scope", "no_credentials", "wrong_secret", "throttled", "invalid_token",
                      "invalid_request"}, labels


def test_request_durations_per_route_come_from_the_http_request_event(server_factory: Any) -> None:
    server = server_factory(METRICS_ON)
    events = server.runtime.events
    before, _ = scrape(server)

    def emit() -> None:
        channel = events.channel("http.request")
        for duration in (0.0004, 0.003, 0.2):
            channel.emit("-", "success", "127.0.0.1", {"method": "POST", "route": "/oauth/token", "status": 201,
                                                       "duration": duration, "request_id": "r1"})
        channel.emit("-", "failure", "203.0.113.9", {"method": "BREW", "route": "/etc/passwd?x=bk_test_secret",
                                                     "status": 404, "duration": 0.001, "request_id": "r2"})
        channel.emit("-", "failure", None, {"route": 7, "status": "x"})  # malformed: counted, never a failure

    server.http.portal.call(emit)  # type: ignore[attr-defined]
    after, text = scrape(server)
    route = {"route": "/oauth/token", "method": "POST"}
    assert moved(before, after, "bankgate_http_request_duration_seconds_count", **route) == 3
    assert moved(before, after, "bankgate_http_request_duration_seconds_bucket", **route, le="0.0005") == 1
    assert moved(before, after, "bankgate_http_request_duration_seconds_bucket", **route, le="0.005") == 2
    assert moved(before, after, "bankgate_http_request_duration_seconds_bucket", **route, le="0.25") == 3
    assert moved(before, after, "bankgate_http_requests_total", **route, status="201") == 3
    assert moved(before, after, "bankgate_http_requests_total", route="other", method="OTHER", status="404") == 1
    assert moved(before, after, "bankgate_http_requests_total", route="other", method="OTHER", status="other") == 1
    assert "passwd" not in text and "203.0.113.9" not in text and "bk_test_secret" not in text


def test_every_request_is_timed_under_its_route_template_fast_paths_and_unknown_paths_included(
    server_factory: Any,
) -> None:
    server = server_factory(METRICS_ON)
    client = server.create_client("app_1")
    before, _ = scrape(server)
    assert server.token(client).status_code == 201  # the token endpoint: a fast path around Starlette
    for _ in range(2):
        assert server.http.get("/api/v1/whoami").status_code == 401
    assert server.http.get("/oauth/authorize-me/bk_test_not_a_route").status_code == 404
    after, text = scrape(server)
    token = {"route": "/oauth/token", "method": "POST"}
    assert moved(before, after, "bankgate_http_requests_total", **token, status="201") == 1
    assert moved(before, after, "bankgate_http_request_duration_seconds_count", **token) == 1
    whoami = {"route": "/api/v1/whoami", "method": "GET"}
    assert moved(before, after, "bankgate_http_requests_total", **whoami, status="401") == 2
    assert moved(before, after, "bankgate_http_request_duration_seconds_count", **whoami) == 2
    assert moved(before, after, "bankgate_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert "authorize-me" not in text and "bk_test_not_a_route" not in text


def test_database_and_redis_errors_and_store_unavailable_are_counted(server_factory: Any) -> None:
    # An Idempotency-Key store nobody answers on: every keyed payment is refused with 503.
    server = server_factory({**METRICS_ON, "BANKGATE_IDEMPOTENCY_STORE": f"redis://127.0.0.1:{free_port()}/0"})
    client = server.create_client("app_1")
    bearer = {"Authorization": f"Bearer {_token(server, client)}"}
    before, _ = scrape(server)
    for _ in range(2):
        answer = server.http.post("/api/v1/payments", json=ORDER,
                                  headers={**bearer, "Idempotency-Key": str(uuid.uuid4())})
        assert answer.status_code == 503, answer.text
    after, _ = scrape(server)
    assert moved(before, after, "bankgate_idempotency_requests_total", outcome="store_unavailable") == 2
    assert moved(before, after, "bankgate_backend_errors_total", service="redis", kind="refused") == 2
    assert moved(before, after, "bankgate_backend_errors_total", service="database", kind="refused") == 0


def test_certificate_style_tokens_and_each_users_earliest_certificate_expiry(server_factory: Any) -> None:
    # Behind a trusted TLS-terminating proxy (Traefik's header) so the in-process server sees the certificate.
    server = server_factory({**METRICS_ON, "BANKGATE_TRUSTED_PROXIES": "127.0.0.1/32",
                             "BANKGATE_CLIENT_CERT_HEADER": "traefik"})
    user = server.cli_json("users", "create", "--name", "Metrics Testuser")
    out = server.data_dir.parent / "certs"
    first = server.cli_json("certs", "issue", user["username"], "--out", str(out))
    second = server.cli_json("certs", "issue", user["username"], "--out", str(out))
    reset = server.http.post(f"/api/v1/users/{user['username']}/password",
                             json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD})
    assert reset.status_code == 200, reset.text
    pem = (out / f"{first['serial']}.crt.pem").read_text()
    der = base64.b64encode(base64.b64decode("".join(pem.strip().splitlines()[1:-1]))).decode()
    before, _ = scrape(server)
    headers = {"X-Forwarded-Tls-Client-Cert": der}
    assert server.http.get(AUTHORIZE, headers={**headers, **user_basic(user["username"], PASSWORD)}
                           ).status_code == 200
    assert server.http.get(AUTHORIZE, headers={**headers, **user_basic(user["username"], "Wrong-Password-1")}
                           ).status_code == 401
    after, text = scrape(server)
    assert moved(before, after, "bankgate_tokens_issued_total", style="certificate") == 1
    assert moved(before, after, "bankgate_tokens_denied_total", style="certificate", reason="wrong_password") == 1
    not_after = min(first["not_after"], second["not_after"])
    expiry = value(after, "bankgate_user_certificate_expiry_timestamp_seconds", user=user["username"])
    assert expiry == pytest.approx(not_after, abs=1)
    assert first["thumbprint"] not in text and str(first["serial"]) not in text


def test_admin_mode_serves_metrics_on_the_admin_listener_only(server_factory: Any) -> None:
    admin_port = free_port()
    server = server_factory({"BANKGATE_METRICS": "admin", "BANKGATE_ADMIN_PORT": str(admin_port)})
    public = server.http.get("/metrics")
    assert public.status_code == 404
    assert "bankgate_" not in public.text
    samples, _ = scrape(server, f"http://127.0.0.1:{admin_port}/metrics")
    assert ("bankgate_revocation_sync_age_seconds", frozenset()) in samples
    assert server.http.get(f"http://127.0.0.1:{admin_port}/healthz").status_code == 404


def test_admin_mode_in_production_answers_only_the_admin_allowed_addresses(server_factory: Any) -> None:
    production = {"BANKGATE_ENVIRONMENT": "production", "BANKGATE_METRICS": "admin"}
    admin_port = free_port()
    closed = server_factory({**production, "BANKGATE_ADMIN_PORT": str(admin_port)})
    refused = closed.http.get(f"http://127.0.0.1:{admin_port}/metrics")
    assert refused.status_code == 403
    assert refused.json()["error"] == "access_denied"
    assert "BANKGATE_ADMIN_ALLOWED_IPS" in refused.json()["error_description"]
    admin_port = free_port()
    allowed = server_factory({**production, "BANKGATE_ADMIN_PORT": str(admin_port),
                              "BANKGATE_ADMIN_ALLOWED_IPS": "127.0.0.1/32"})
    samples, _ = scrape(allowed, f"http://127.0.0.1:{admin_port}/metrics")
    assert ("bankgate_revocation_sync_age_seconds", frozenset()) in samples


def test_on_mode_serves_the_main_port_and_admin_mode_needs_an_admin_port(server_factory: Any, tmp_path: Path) -> None:
    from conftest import run_cli

    server = server_factory(METRICS_ON)
    assert server.http.get("/metrics").status_code == 200
    refused = run_cli("serve", "--metrics", "admin", "--data-dir", str(tmp_path / "d"), check=False)
    assert refused.returncode != 0
    assert "--admin-port" in refused.stdout + refused.stderr


def test_metrics_off_adds_no_sink_and_loads_no_prometheus_client(tmp_path: Path) -> None:
    # In a fresh interpreter: this test process may have imported prometheus-client for the other tests.
    program = f"""
import asyncio, sys, httpx
from bankgate.app import create_app
from bankgate.config import Settings

async def main():
    settings = Settings(data_dir={str(tmp_path)!r}, issuer="http://testserver")
    app = create_app(settings)
    async with app.starlette.router.lifespan_context(app.starlette):
        runtime = app.state.runtime
        assert runtime.metrics is None
        sinks = [type(sink).__name__ for sink in runtime.events.sinks]
        assert sinks == ["AuditLog", "AccessLogSink"], sinks
        assert not runtime.events.channel("guard.allowed").sinks
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/metrics")).status_code == 404
    loaded = sorted(name for name in sys.modules if name.startswith(("prometheus_client", "bankgate.metrics")))
    print(loaded)
asyncio.run(main())
"""
    from conftest import run_cli

    run_cli("init", "--data-dir", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BANKGATE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_metric_the_dashboard_queries_is_one_the_server_exports(server_factory: Any) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "bankgate.json").read_text())
    queries: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, item in node.items():
                if name in ("expr", "query") and isinstance(item, str):
                    queries.append(item)
                else:
                    walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    assert queries
    used = {name for query in queries for name in re.findall(r"\bbankgate_[a-z0-9_]+", query)}
    server = server_factory(METRICS_ON)
    user = server.cli_json("users", "create", "--name", "Dashboard Testuser")  # so that the expiry gauge shows
    server.cli_json("certs", "issue", user["username"], "--out", str(server.data_dir.parent / "certs"))
    _, text = scrape(server)
    exported = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            if kind == "counter" and name.endswith("_total"):
                exported.add(name)
    assert used, queries
    assert used <= exported, sorted(used - exported)


@pytest.mark.real_server
def test_serve_with_two_workers_adds_up_the_workers_counts(server_factory: Any, tmp_path: Path) -> None:
    directory = tmp_path / "metrics"  # made by serve, 0700
    server = server_factory({**METRICS_ON, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
                            args=("--workers", "2"))
    client = server.create_client("app_1")
    authorization = {"Authorization": basic(client["api_key"], client["secret_key"])}
    issued = 0
    deadline = time.monotonic() + 60
    # A new connection per request: the kernel spreads them over both workers' accept queues.
    while time.monotonic() < deadline:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            answer = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=authorization)
        assert answer.status_code == 201, answer.text
        issued += 1
        workers = {path.name.rsplit("_", 1)[1] for path in directory.glob("counter_*.db")}
        if issued >= 20 and len(workers) >= 2:
            break
    assert len(workers) >= 2, "every request went to one worker"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # Each worker folds its counts in every few seconds (the one answering a scrape, at once): whichever worker
    # answers, every worker's tokens are soon reported, never more.
    seen: list[float] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and seen[-4:] != [issued] * 4:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            text = http.get("/metrics").text
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        seen.append(value(samples, "bankgate_tokens_issued_total", style="api_key"))
        assert seen[-1] <= issued, seen
        time.sleep(0.5)
    assert seen[-4:] == [issued] * 4, seen

    # A worker killed outright never marks itself dead: the next scrape forgets its live gauges, and its counts
    # stay in the totals.
    victim = int(sorted(workers)[0].removesuffix(".db"))
    assert (directory / f"gauge_livemax_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (directory / f"gauge_livemax_{victim}.db").exists():
        with contextlib.suppress(httpx.TransportError), httpx.Client(base_url=server.base_url, timeout=10) as http:
            text = http.get("/metrics").text
        time.sleep(0.5)
    assert not (directory / f"gauge_livemax_{victim}.db").exists()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert value(samples, "bankgate_tokens_issued_total", style="api_key") == issued
