"""Two replicas behind nginx, as deploy/docker/compose.yaml runs them: two real `bankgate serve` processes (sandbox,
so payments exist) on one PostgreSQL database and one master key, each with a data directory of its own (as two
hosts would have), and the shipped nginx configuration in front with an upstream of both.

Whatever replica a request reaches, it is one server: a token issued by either is accepted by the other; a payment
retried on the other replica, or sent to both at once, is paid once and every answer is the first one (with the
Idempotency-Key records in Redis, as compose has them, the loser of a race is told 409 + Retry-After first); a token
revoked on one is refused by the other within the revocation sync interval. Each runs with the Idempotency-Key
records in the database, then in Redis.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import os
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankgate.config import load_settings
from bankgate.services import Services
from conftest import ProcessServer, _pg_admin, basic, run_cli, start_server
from nginx_helpers import require_nginx, running_nginx

pytestmark = pytest.mark.real_server

WHOAMI = "/api/v1/whoami"
PAYMENTS = "/api/v1/payments"
ORDER = {"application_id": "app_12345", "amount": "12.50", "currency": "EUR", "reference": "Invoice 7"}
ISSUER = "https://api.example.com"  # the public URL, the name on nginx's certificate
SYNC_INTERVAL = 0.2
#: A revocation reaches the other replica within one sync interval plus one query: generous for a loaded machine.
REVOCATION_DEADLINE = 5.0


@dataclass
class Deployment:
    replicas: tuple[ProcessServer, ProcessServer]
    nginx: httpx.Client  # https://localhost:<port>, trusting the bankgate CA that signed nginx's certificate
    database_url: str
    client: dict[str, Any]
    idempotency_store: str  # "database" or "redis"

    def token_from(self, http: httpx.Client) -> str:
        answer = http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "app_12345"},
                           headers={"Authorization": basic(self.client["api_key"], self.client["secret_key"])})
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["access_token"]
        return token

    def payments_with_key(self, key: str) -> int:
        async def count() -> int:
            import asyncpg

            conn = await asyncpg.connect(self.database_url, timeout=5)
            try:
                found: int = await conn.fetchval("SELECT count(*) FROM payments WHERE idempotency_key = $1", key)
                return found
            finally:
                await conn.close()

        return asyncio.run(count())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _tls_files(settings: Any) -> tuple[str, str, str]:
    """What nginx needs from the deployment: the CA it verifies clients with, its own certificate and key."""
    services = await Services.open(settings)
    try:
        cert, key = await services.pki.server_certificate(["api.example.com"])
        return await services.pki.ca_certificate_pem(), cert, key
    finally:
        await services.close()


@contextlib.contextmanager
def fresh_database(postgres_server_url: str, postgres_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database, migrated (copied from the session's template), dropped afterwards."""
    name = f"bankgate_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(postgres_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    base, _, _ = postgres_server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module", params=["database", "redis"])
def deployment(
    request: pytest.FixtureRequest, postgres_server_url: str, postgres_template: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """The deployment with its Idempotency-Key records in the shared database (the default: a payment commits with
    its key), then in Redis as compose.yaml has them (the key claimed before the payment is made)."""
    require_nginx()
    redis_url = request.getfixturevalue("redis_server_url") if request.param == "redis" else None
    with fresh_database(postgres_server_url, postgres_template) as database_url:
        yield from _deploy(database_url, redis_url, tmp_path_factory.mktemp("replicas"))


def _deploy(database_url: str, redis_url: str | None, root: Path) -> Iterator[Deployment]:
    public = root / "nginx"  # what /etc/bankgate/ holds for nginx
    public.mkdir()
    master_key = base64.b64encode(os.urandom(32)).decode()
    shared = {
        "BANKGATE_ISSUER": ISSUER,
        "BANKGATE_DATABASE_URL": database_url,
        "BANKGATE_MASTER_KEY": master_key,
        "BANKGATE_TRUSTED_PROXIES": "127.0.0.1/32",
        "BANKGATE_CLIENT_CERT_HEADER": "nginx",
        "BANKGATE_REVOCATION_SYNC_INTERVAL": str(SYNC_INTERVAL),
        "BANKGATE_CLIENT_CACHE_TTL": "60",  # the default: changes must travel by the change feed, not expiry
    }
    if redis_url is not None:
        # Records expire after the retention, the shortest allowed: nothing of this test stays in the shared Redis.
        shared |= {"BANKGATE_IDEMPOTENCY_STORE": redis_url,
                   "BANKGATE_IDEMPOTENCY_RETENTION": "60"}
    # `bankgate init` once, before the replicas (compose's bankgate-init).
    init_env = {**shared, "BANKGATE_DATA_DIR": str(root / "init")}
    run_cli("init", env=init_env)
    ca_pem, server_pem, server_key = asyncio.run(_tls_files(load_settings(
        data_dir=root / "init", database_url=database_url, master_key=master_key)))
    for name, text in (("ca.pem", ca_pem), ("server.pem", server_pem), ("server.key", server_key)):
        (public / name).write_text(text)
        (public / name).chmod(0o600)

    # Two replicas started at once, on their own data directories: the database and the master key are shared.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        started = [pool.submit(start_server, root / f"replica-{n}", root / f"replica-{n}.log", shared,
                               ("--access-log",)) for n in "ab"]
    try:
        replicas = [future.result() for future in started]
        ports = [int(replica.base_url.rpartition(":")[2]) for replica in replicas]
        with running_nginx(public, ports) as listen:
            context = ssl.create_default_context(cafile=str(public / "ca.pem"))
            with httpx.Client(base_url=f"https://localhost:{listen}", verify=context, timeout=10) as nginx:
                client = replicas[0].cli_json("clients", "create", "--name", "Acme shop", "--scope", "app_12345")
                yield Deployment((replicas[0], replicas[1]), nginx, database_url, client,
                                 "redis" if redis_url else "database")
    finally:
        for future in started:
            if future.exception() is None:
                future.result().stop()


def test_both_replicas_answer_behind_nginx_and_serve_one_issuer(deployment: Deployment) -> None:
    a, b = deployment.replicas
    issuers = {replica.http.get("/.well-known/oauth-authorization-server").json()["issuer"]
               for replica in (a, b)}
    assert issuers == {ISSUER}
    before = [replica.log().count(" /readyz ") for replica in (a, b)]
    for _ in range(6):
        ready = deployment.nginx.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    after = [replica.log().count(" /readyz ") for replica in (a, b)]
    # nginx spreads requests over both replicas (round robin): each answered some of them.
    assert all(n > m for n, m in zip(after, before, strict=True)), (before, after)


def test_a_token_issued_by_either_replica_is_accepted_by_the_other(deployment: Deployment) -> None:
    a, b = deployment.replicas
    from_a, from_b = deployment.token_from(a.http), deployment.token_from(b.http)
    for token in (from_a, from_b):
        for replica in (a, b):
            answer = replica.http.get(WHOAMI, headers=_bearer(token))
            assert answer.status_code == 200, answer.text
            assert answer.json()["scopes"] == ["app_12345"]
    # Through nginx, whichever replica each call reaches: a token from nginx, and each replica's own.
    for token in (deployment.token_from(deployment.nginx), from_a, from_b):
        for _ in range(4):
            answer = deployment.nginx.get(WHOAMI, headers=_bearer(token))
            assert answer.status_code == 200, answer.text


def test_a_payment_retried_on_the_other_replica_is_paid_once_with_the_same_answer(deployment: Deployment) -> None:
    a, b = deployment.replicas
    token = deployment.token_from(a.http)
    key = str(uuid.uuid4())
    headers = {**_bearer(token), "Idempotency-Key": key}
    first = a.http.post(PAYMENTS, json=ORDER, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    retried = b.http.post(PAYMENTS, json=ORDER, headers=headers)
    assert retried.status_code == 201, retried.text
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.json() == first.json() and retried.headers["location"] == first.headers["location"]
    through_nginx = deployment.nginx.post(PAYMENTS, json=ORDER, headers=headers)
    assert through_nginx.status_code == 201 and through_nginx.json() == first.json()
    assert deployment.payments_with_key(key) == 1
    # The payment itself is seen from both replicas.
    for replica in (a, b):
        shown = replica.http.get(first.headers["location"], headers=_bearer(token))
        assert shown.status_code == 200 and shown.json() == first.json()


def test_a_payment_sent_to_both_replicas_at_once_is_paid_once(deployment: Deployment) -> None:
    a, b = deployment.replicas
    token = deployment.token_from(b.http)

    async def both_at_once(key: str) -> list[httpx.Response]:
        headers = {**_bearer(token), "Idempotency-Key": key}
        async with httpx.AsyncClient(base_url=a.base_url, timeout=10) as to_a, \
                httpx.AsyncClient(base_url=b.base_url, timeout=10) as to_b:
            return list(await asyncio.gather(to_a.post(PAYMENTS, json=ORDER, headers=headers),
                                             to_b.post(PAYMENTS, json=ORDER, headers=headers)))

    for _ in range(5):  # several races, so that some of them overlap for real
        key = str(uuid.uuid4())
        answers = asyncio.run(both_at_once(key))
        paid = [answer for answer in answers if answer.status_code == 201]
        fresh = [answer for answer in paid if "idempotent-replayed" not in answer.headers]
        assert len(fresh) == 1, [(answer.status_code, answer.text) for answer in answers]
        if deployment.idempotency_store == "database":
            # A payment commits with its key: the other request waits for that commit and replays its answer.
            assert len(paid) == 2 and paid[0].json() == paid[1].json(), [answer.text for answer in answers]
        else:
            # The key is claimed first: the other request is told to retry (unless it came once the first ended),
            # and its retry gets the first answer.
            for answer in answers:
                if answer.status_code == 409:
                    assert "retry-after" in answer.headers, answer.headers
                    for replica in (a, b):
                        retried = replica.http.post(PAYMENTS, json=ORDER,
                                                    headers={**_bearer(token), "Idempotency-Key": key})
                        assert retried.status_code == 201 and retried.headers["idempotent-replayed"] == "true"
                        assert retried.json() == fresh[0].json()
                else:
                    assert answer.status_code == 201 and answer.json() == fresh[0].json(), answer.text
        assert deployment.payments_with_key(key) == 1


def test_a_token_revoked_on_one_replica_is_refused_by_the_other_within_the_sync_interval(
    deployment: Deployment,
) -> None:
    a, b = deployment.replicas
    for revoking, other in ((a, b), (b, a)):
        token = deployment.token_from(other.http)
        assert other.http.get(WHOAMI, headers=_bearer(token)).status_code == 200
        revoked = revoking.http.post("/oauth/revoke", data={"token": token}, headers={
            "Authorization": basic(deployment.client["api_key"], deployment.client["secret_key"])})
        assert revoked.status_code == 200, revoked.text
        assert revoking.http.get(WHOAMI, headers=_bearer(token)).status_code == 401  # at once where revoked
        deadline = time.monotonic() + REVOCATION_DEADLINE
        while (answer := other.http.get(WHOAMI, headers=_bearer(token))).status_code == 200:
            assert time.monotonic() < deadline, f"the other replica still accepts the token {REVOCATION_DEADLINE} s on"
            time.sleep(SYNC_INTERVAL / 4)
        assert answer.status_code == 401 and answer.json()["error_description"] == "the token has been revoked"
        assert deployment.nginx.get(WHOAMI, headers=_bearer(token)).status_code == 401
