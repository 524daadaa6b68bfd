"""The Idempotency-Key middleware in front of real Starlette and FastAPI apps, over httpx's ASGI transport and over a
real uvicorn socket (draft-ietf-httpapi-idempotency-key-header-06)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
import sqlalchemy
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bankgate.config import Settings
from bankgate.guard import Principal
from bankgate.idempotency import (
    AtomicKey,
    IdempotencyMiddleware,
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    SqlIdempotencyStore,
    Write,
    atomic_key,
    fingerprint,
)
from bankgate.store import Store, schema
from conftest import free_port

PAYMENT = {"amount": "10.00", "currency": "EUR", "reference": "invoice 42"}
REPORT_CHUNKS = [bytes(range(256)), b"\x00\xff" * 1000, b"%PDF-1.7 end"]


def idem(key: str | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key or str(uuid.uuid4())}


class Shop:
    """A small payments app whose handlers count how often they really run."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def create_payment(self, request: Request) -> Response:
        self.runs["payments"] += 1
        number = self.runs["payments"]
        payment = await request.json()
        await asyncio.sleep(0.05)  # long enough for simultaneous retries to find the key in progress
        return JSONResponse(
            {"id": f"pay_{number}", **payment, "idempotency_key": getattr(request.state, "idempotency_key", None)},
            status_code=201,
            headers={"Location": f"/payments/pay_{number}", "X-Request-Id": f"req_{number}"},
        )

    async def list_payments(self, request: Request) -> Response:
        self.runs["list"] += 1
        return JSONResponse({"count": self.runs["payments"]})

    async def report(self, request: Request) -> Response:
        self.runs["report"] += 1

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in REPORT_CHUNKS:
                await asyncio.sleep(0)
                yield chunk

        return StreamingResponse(chunks(), media_type="application/pdf", headers={"X-Pages": "3"})

    async def flaky(self, request: Request) -> Response:
        self.runs["flaky"] += 1
        if self.runs["flaky"] == 1:
            return PlainTextResponse("upstream bank timed out", status_code=502)
        return JSONResponse({"run": self.runs["flaky"]}, status_code=201)

    async def boom(self, request: Request) -> Response:
        self.runs["boom"] += 1
        if self.runs["boom"] == 1:
            raise RuntimeError("handler crashed")
        return JSONResponse({"run": self.runs["boom"]}, status_code=201)

    async def refuse(self, request: Request) -> Response:
        self.runs["refuse"] += 1
        return JSONResponse({"error": "insufficient_funds", "run": self.runs["refuse"]}, status_code=402)

    async def slow(self, request: Request) -> Response:
        self.runs["slow"] += 1
        self.started.set()
        await self.release.wait()
        return JSONResponse({"run": self.runs["slow"]}, status_code=201)

    async def sleepy(self, request: Request) -> Response:
        self.runs["sleepy"] += 1
        await asyncio.sleep(float(request.query_params["seconds"]))
        return JSONResponse({"run": self.runs["sleepy"]}, status_code=201)

    def routes(self) -> list[Route]:
        return [
            Route("/payments", self.create_payment, methods=["POST", "PUT"]),
            Route("/payments", self.list_payments, methods=["GET"]),
            Route("/report", self.report, methods=["POST"]),
            Route("/flaky", self.flaky, methods=["POST"]),
            Route("/boom", self.boom, methods=["POST"]),
            Route("/refuse", self.refuse, methods=["POST"]),
            Route("/slow", self.slow, methods=["POST"]),
            Route("/sleepy", self.sleepy, methods=["POST"]),
        ]

    def app(self, store: IdempotencyStore, **options: Any) -> ASGIApp:
        return with_principal(
            Starlette(routes=self.routes(), middleware=[Middleware(IdempotencyMiddleware, store=store, **options)])
        )


def with_principal(app: ASGIApp) -> ASGIApp:
    """Stands in for the guard: `X-Test-Client: <id>` becomes `scope["state"]["principal"]`."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = dict(scope["headers"]).get(b"x-test-client")
            if client:
                scope.setdefault("state", {})["principal"] = Principal(
                    subject=client.decode(), kind="client", environment="sandbox", scopes=("app_1",), expires_at=0
                )
        await app(scope, receive, send)

    return guarded


def client_for(app: ASGIApp, *, client: tuple[str, int] = ("203.0.113.7", 50000)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.test", timeout=30)


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"]
    for word in words:
        assert word in problem["detail"], problem
    return problem


@pytest.fixture
def shop() -> Shop:
    return Shop()


@pytest.fixture
def memory() -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore()


@pytest.fixture
async def http(shop: Shop, memory: MemoryIdempotencyStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(shop.app(memory)) as client:
        yield client


# -- stores shared by processes ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    """Where the store lives, resolved before the event loop runs (the PostgreSQL fixture runs its own loop)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'idem.db'}"
        return "sqlite", Settings(database_url=url, data_dir=tmp_path).sqlalchemy_url, ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        return "postgresql", Settings(database_url=url, data_dir=tmp_path).sqlalchemy_url, ""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return "memory", "", ""


@pytest.fixture
async def any_store(store_location: tuple[str, str, str]) -> AsyncIterator[IdempotencyStore]:
    kind, url, prefix = store_location
    database: Store | None = None
    store: IdempotencyStore
    if kind in ("sqlite", "postgresql"):
        database = Store(url)
        await database.migrate()
        store = SqlIdempotencyStore(database)
    elif kind == "redis":
        store = RedisIdempotencyStore(url, prefix=prefix)
    else:
        store = MemoryIdempotencyStore()
    yield store
    await store.close()
    if database is not None:
        await database.close()


# -- the first request runs, retries replay ------------------------------------------------------------------


async def test_a_retry_replays_status_location_headers_and_body_without_running_the_handler_again(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    headers = idem()
    first = await http.post("/payments", json=PAYMENT, headers=headers)
    retry = await http.post("/payments", json=PAYMENT, headers=headers)

    assert first.status_code == retry.status_code == 201
    assert shop.runs["payments"] == 1
    assert retry.content == first.content
    assert retry.headers["location"] == first.headers["location"] == "/payments/pay_1"
    assert retry.headers["x-request-id"] == "req_1"
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert retry.headers.get_list("content-length") == [str(len(first.content))]
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert first.json()["idempotency_key"] == headers["Idempotency-Key"]


async def test_one_hundred_simultaneous_identical_posts_run_the_handler_exactly_once(
    shop: Shop, any_store: IdempotencyStore
) -> None:
    headers = idem()
    async with client_for(shop.app(any_store)) as http:
        answers = await asyncio.gather(*(http.post("/payments", json=PAYMENT, headers=headers) for _ in range(100)))

    assert shop.runs["payments"] == 1
    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) <= {201, 409}, statuses
    created = [answer for answer in answers if answer.status_code == 201]
    assert [answer.headers.get("idempotent-replayed") for answer in created].count(None) == 1
    assert {answer.content for answer in created} == {created[0].content}
    for answer in answers:
        if answer.status_code == 409:
            assert int(answer.headers["retry-after"]) >= 1


async def test_a_streamed_binary_response_is_replayed_byte_for_byte(shop: Shop, http: httpx.AsyncClient) -> None:
    headers = idem()
    first = await http.post("/report", content=b"\x00binary request\xff", headers=headers)
    retry = await http.post("/report", content=b"\x00binary request\xff", headers=headers)

    assert shop.runs["report"] == 1
    assert first.content == retry.content == b"".join(REPORT_CHUNKS)
    assert retry.headers["content-type"] == "application/pdf"
    assert retry.headers["x-pages"] == "3"
    assert retry.headers["content-length"] == str(len(first.content))
    assert "transfer-encoding" not in retry.headers


async def test_a_4xx_answer_of_the_handler_is_kept_and_replayed(shop: Shop, http: httpx.AsyncClient) -> None:
    headers = idem()
    first = await http.post("/refuse", json=PAYMENT, headers=headers)
    retry = await http.post("/refuse", json=PAYMENT, headers=headers)

    assert first.status_code == retry.status_code == 402
    assert retry.json() == first.json() == {"error": "insufficient_funds", "run": 1}
    assert shop.runs["refuse"] == 1


async def test_the_handler_sees_the_key_in_scope_state(http: httpx.AsyncClient) -> None:
    answer = await http.post("/payments", json=PAYMENT, headers=idem("order-7781"))

    assert answer.json()["idempotency_key"] == "order-7781"


async def test_put_patch_and_delete_are_protected_too(memory: MemoryIdempotencyStore) -> None:
    runs: Counter[str] = Counter()

    async def handler(request: Request) -> Response:
        runs[request.method] += 1
        return PlainTextResponse(request.method)

    app = Starlette(
        routes=[Route("/thing", handler, methods=["PUT", "PATCH", "DELETE"])],
        middleware=[Middleware(IdempotencyMiddleware, store=memory)],
    )
    async with client_for(app) as http:
        for method in ("PUT", "PATCH", "DELETE"):
            headers = idem()
            for _ in range(2):
                answer = await http.request(method, "/thing", headers=headers)
                assert answer.text == method

    assert runs == {"PUT": 1, "PATCH": 1, "DELETE": 1}


# -- refusals ------------------------------------------------------------------------------------------------


async def test_the_same_key_with_a_different_body_is_refused_with_422(shop: Shop, http: httpx.AsyncClient) -> None:
    headers = idem()
    await http.post("/payments", json=PAYMENT, headers=headers)

    answer = await http.post("/payments", json={**PAYMENT, "amount": "99.00"}, headers=headers)

    assert_problem(answer, 422, "different request", "new key")
    assert shop.runs["payments"] == 1


async def test_the_same_key_on_another_path_or_method_is_a_mismatch(http: httpx.AsyncClient) -> None:
    headers = idem()
    await http.post("/payments", json=PAYMENT, headers=headers)

    assert_problem(await http.put("/payments", json=PAYMENT, headers=headers), 422)
    assert_problem(await http.post("/payments?x=1", json=PAYMENT, headers=headers), 422)
    assert_problem(await http.post("/report", json=PAYMENT, headers=headers), 422)


async def test_the_mismatch_status_can_be_409_as_banked_documents(shop: Shop, memory: MemoryIdempotencyStore) -> None:
    headers = idem()
    async with client_for(shop.app(memory, mismatch_status=409)) as http:
        await http.post("/payments", json=PAYMENT, headers=headers)
        answer = await http.post("/payments", json={**PAYMENT, "amount": "1.00"}, headers=headers)

    assert_problem(answer, 409, "different request")


async def test_a_retry_while_the_first_request_runs_gets_409_with_retry_after(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    headers = idem()
    first = asyncio.create_task(http.post("/slow", json=PAYMENT, headers=headers))
    await asyncio.wait_for(shop.started.wait(), 5)

    retry = await http.post("/slow", json=PAYMENT, headers=headers)
    other_body = await http.post("/slow", json={**PAYMENT, "amount": "2.00"}, headers=headers)
    shop.release.set()
    done = await first

    assert_problem(retry, 409, "still being processed")
    assert 1 <= int(retry.headers["retry-after"]) <= 30
    assert_problem(other_body, 422)  # a different request is a mismatch even while the first one runs
    assert done.status_code == 201
    assert shop.runs["slow"] == 1


async def test_a_missing_key_passes_through_unless_required(shop: Shop, http: httpx.AsyncClient) -> None:
    assert (await http.post("/payments", json=PAYMENT)).status_code == 201
    assert (await http.post("/payments", json=PAYMENT)).status_code == 201

    assert shop.runs["payments"] == 2


async def test_a_missing_key_where_required_is_refused_with_400_saying_what_to_send(
    shop: Shop, memory: MemoryIdempotencyStore
) -> None:
    async with client_for(shop.app(memory, required=True)) as http:
        answer = await http.post("/payments", json=PAYMENT)

    assert_problem(answer, 400, "Idempotency-Key header", "UUID", "POST /payments")
    assert shop.runs["payments"] == 0


async def test_required_may_be_a_predicate_on_the_scope(shop: Shop, memory: MemoryIdempotencyStore) -> None:
    app = shop.app(memory, required=lambda scope: scope["path"] == "/payments")
    async with client_for(app) as http:
        assert_problem(await http.post("/payments", json=PAYMENT), 400)
        assert (await http.post("/refuse", json=PAYMENT)).status_code == 402


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"", "empty"),
        (b"k" * 256, "more than 255"),
        (b"   ", "only spaces"),
        (b"tab\there", "printable"),
        (b"caf\xc3\xa9", "printable"),
        (b"\xff\xfe", "printable"),
        (b"del\x7f", "printable"),
    ],
    ids=["empty", "too-long", "spaces", "tab", "utf8", "not-utf8", "del"],
)
async def test_an_invalid_key_is_refused_with_400(
    shop: Shop, memory: MemoryIdempotencyStore, value: bytes, words: str
) -> None:
    status, _, body = await drive(shop.app(memory), [(b"idempotency-key", value)])

    problem = json.loads(body)
    assert status == 400
    assert words in problem["detail"]
    assert shop.runs["payments"] == 0


async def test_a_key_sent_twice_is_refused_with_400(shop: Shop, memory: MemoryIdempotencyStore) -> None:
    status, _, body = await drive(shop.app(memory), [(b"idempotency-key", b"a"), (b"idempotency-key", b"a")])

    assert status == 400
    assert "sent 2 times" in json.loads(body)["detail"]
    assert shop.runs["payments"] == 0


async def test_a_draft_style_quoted_key_names_the_same_key_as_the_bare_token(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    key = str(uuid.uuid4())
    await http.post("/payments", json=PAYMENT, headers={"Idempotency-Key": f'"{key}"'})
    retry = await http.post("/payments", json=PAYMENT, headers={"Idempotency-Key": key})

    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["idempotency_key"] == key
    assert shop.runs["payments"] == 1


async def test_a_body_over_the_limit_is_refused_with_413_before_the_key_is_claimed(
    shop: Shop, memory: MemoryIdempotencyStore
) -> None:
    headers = idem()

    async def streamed() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 600

    async with client_for(shop.app(memory, max_body_bytes=1024)) as http:
        declared = await http.post("/payments", content=b"x" * 1025, headers=headers)
        chunked = await http.post("/payments", content=streamed(), headers=headers)
        fits = await http.post("/payments", json=PAYMENT, headers=headers)

    assert_problem(declared, 413, "1024 bytes")
    assert_problem(chunked, 413, "1024 bytes")
    assert fits.status_code == 201  # the refused attempts claimed nothing
    assert shop.runs["payments"] == 1


# -- failures release the key --------------------------------------------------------------------------------


async def test_a_5xx_from_the_handler_is_not_kept_and_the_retry_runs_again(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    headers = idem()
    first = await http.post("/flaky", json=PAYMENT, headers=headers)
    retry = await http.post("/flaky", json=PAYMENT, headers=headers)
    replay = await http.post("/flaky", json=PAYMENT, headers=headers)

    assert first.status_code == 502
    assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
    assert replay.headers["idempotent-replayed"] == "true"
    assert shop.runs["flaky"] == 2


async def test_an_exception_in_the_handler_releases_the_key_so_the_retry_runs_again(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    headers = idem()
    crashed = await http.post("/boom", json=PAYMENT, headers=headers)
    retry = await http.post("/boom", json=PAYMENT, headers=headers)

    assert crashed.status_code == 500
    assert retry.status_code == 201
    assert retry.json() == {"run": 2}


async def test_an_exception_raised_through_the_middleware_reaches_the_server(memory: MemoryIdempotencyStore) -> None:
    async def crash(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("handler crashed")

    app = IdempotencyMiddleware(crash, store=memory)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as http:
        with pytest.raises(RuntimeError, match="handler crashed"):
            await http.post("/x", content=b"1", headers=idem("k"))

    assert (await memory.claim("anonymous:127.0.0.1", "k", fingerprint("POST", "/x", b"", b"1"),
                               lease=30, retention=60)).outcome == "claimed"


@pytest.mark.parametrize("status", [401, 403, 429])
async def test_refusals_that_say_the_request_did_not_run_are_not_kept(
    memory: MemoryIdempotencyStore, status: int
) -> None:
    runs: list[int] = []

    async def refuse(request: Request) -> Response:
        runs.append(status)
        return JSONResponse({"error": "not now"}, status_code=status)

    app = Starlette(routes=[Route("/pay", refuse, methods=["POST"])],
                    middleware=[Middleware(IdempotencyMiddleware, store=memory)])
    headers = idem()
    async with client_for(app) as http:
        for _ in range(2):
            answer = await http.post("/pay", json=PAYMENT, headers=headers)
            assert answer.status_code == status
            assert "idempotent-replayed" not in answer.headers

    assert len(runs) == 2


async def test_the_lease_is_renewed_while_a_long_handler_runs(shop: Shop, memory: MemoryIdempotencyStore) -> None:
    headers = idem()
    async with client_for(shop.app(memory, lease=0.3)) as http:
        first = asyncio.create_task(http.post("/sleepy?seconds=1.0", json=PAYMENT, headers=headers))
        await asyncio.sleep(0.7)  # two leases later: only the renewals keep the key
        retry = await http.post("/sleepy?seconds=1.0", json=PAYMENT, headers=headers)
        done = await first
        replay = await http.post("/sleepy?seconds=1.0", json=PAYMENT, headers=headers)

    assert retry.status_code == 409
    assert done.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert shop.runs["sleepy"] == 1


# -- what passes straight through ----------------------------------------------------------------------------


async def test_get_passes_through_even_with_a_key(shop: Shop, http: httpx.AsyncClient) -> None:
    headers = idem()
    for _ in range(2):
        answer = await http.get("/payments", headers=headers)
        assert answer.status_code == 200
        assert "idempotent-replayed" not in answer.headers

    assert shop.runs["list"] == 2


async def test_non_http_scopes_pass_through(shop: Shop, memory: MemoryIdempotencyStore) -> None:
    sent: list[Message] = []
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await shop.app(memory)({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    assert [message["type"] for message in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- keys belong to a principal ------------------------------------------------------------------------------


async def test_the_same_key_of_two_clients_runs_once_for_each(shop: Shop, http: httpx.AsyncClient) -> None:
    key = str(uuid.uuid4())
    alice = await http.post("/payments", json=PAYMENT, headers={**idem(key), "X-Test-Client": "alice"})
    bob = await http.post("/payments", json=PAYMENT, headers={**idem(key), "X-Test-Client": "bob"})
    alice_again = await http.post("/payments", json=PAYMENT, headers={**idem(key), "X-Test-Client": "alice"})

    assert alice.status_code == bob.status_code == 201
    assert alice.json()["id"] != bob.json()["id"]
    assert alice_again.json()["id"] == alice.json()["id"]
    assert shop.runs["payments"] == 2


async def test_without_a_principal_keys_fall_back_to_the_client_address(
    shop: Shop, memory: MemoryIdempotencyStore
) -> None:
    headers = idem()
    app = shop.app(memory)
    async with client_for(app, client=("198.51.100.1", 1)) as one, client_for(app, client=("198.51.100.2", 1)) as two:
        first = await one.post("/payments", json=PAYMENT, headers=headers)
        other = await two.post("/payments", json=PAYMENT, headers=headers)
        replay = await one.post("/payments", json=PAYMENT, headers=headers)

    assert first.json()["id"] != other.json()["id"]
    assert replay.json()["id"] == first.json()["id"]
    assert shop.runs["payments"] == 2


async def test_principal_of_decides_whom_a_key_belongs_to(shop: Shop, memory: MemoryIdempotencyStore) -> None:
    def tenant(scope: Scope) -> str | None:
        return dict(scope["headers"]).get(b"x-tenant", b"").decode() or None

    headers = idem()
    async with client_for(shop.app(memory, principal_of=tenant)) as http:
        await http.post("/payments", json=PAYMENT, headers={**headers, "X-Tenant": "t1"})
        await http.post("/payments", json=PAYMENT, headers={**headers, "X-Tenant": "t2"})
        await http.post("/payments", json=PAYMENT, headers={**headers, "X-Tenant": "t1"})

    assert shop.runs["payments"] == 2


# -- a store that cannot be reached --------------------------------------------------------------------------


@pytest.fixture(params=["redis", "sqlite-without-schema", "postgresql"])
async def unreachable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
    """Real stores pointed at nothing: a closed port, or a database that was never initialised."""
    port = free_port()
    if request.param == "redis":
        store: IdempotencyStore = RedisIdempotencyStore(f"redis://127.0.0.1:{port}/0")
        yield store
        await store.close()
        return
    if request.param == "postgresql":
        database = Store(f"postgresql+asyncpg://bankgate@127.0.0.1:{port}/bankgate")
    else:
        database = Store(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    yield SqlIdempotencyStore(database)
    await database.close()


async def test_an_unreachable_store_answers_503_and_the_handler_never_runs(
    shop: Shop, unreachable: IdempotencyStore
) -> None:
    async with client_for(shop.app(unreachable)) as http:
        answer = await http.post("/payments", json=PAYMENT, headers=idem())

    assert_problem(answer, 503, "not processed", "same Idempotency-Key")
    assert int(answer.headers["retry-after"]) >= 1
    assert shop.runs["payments"] == 0


class HangingStore(MemoryIdempotencyStore):
    """A store whose server stopped answering: the chosen operations never return."""

    def __init__(self, *hanging: str) -> None:
        super().__init__()
        self.hanging = set(hanging)
        self.cancelled: Counter[str] = Counter()

    async def _hang(self, name: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled[name] += 1
            raise

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        if "claim" in self.hanging:
            await self._hang("claim")
        return await super().claim(*args, **kwargs)

    async def complete(self, *args: Any, **kwargs: Any) -> bool:
        if "complete" in self.hanging:
            await self._hang("complete")
        return await super().complete(*args, **kwargs)

    async def extend(self, *args: Any, **kwargs: Any) -> bool:
        if "extend" in self.hanging:
            await self._hang("extend")
        return await super().extend(*args, **kwargs)


async def test_a_store_that_stops_answering_gets_503_after_the_store_timeout(shop: Shop) -> None:
    store = HangingStore("claim")
    async with client_for(shop.app(store, store_timeout=0.5)) as http:
        started = asyncio.get_running_loop().time()
        answer = await http.post("/payments", json=PAYMENT, headers=idem())
        waited = asyncio.get_running_loop().time() - started

    assert_problem(answer, 503, "not processed", "same Idempotency-Key")
    assert 0.5 <= waited < 5
    assert store.cancelled["claim"] == 1  # the call was cut off, not left running
    assert shop.runs["payments"] == 0


async def test_a_completion_that_hangs_is_cut_off_and_the_response_still_leaves(shop: Shop) -> None:
    store = HangingStore("complete")
    async with client_for(shop.app(store, store_timeout=0.5)) as http:
        answer = await http.post("/payments", json=PAYMENT, headers=idem())

    assert answer.status_code == 201  # the payment was made: the client is told so
    assert store.cancelled["complete"] == 1
    assert shop.runs["payments"] == 1


async def test_a_renewal_that_hangs_is_cut_off_within_a_third_of_the_lease_and_tried_again(shop: Shop) -> None:
    store = HangingStore("extend")
    async with client_for(shop.app(store, lease=0.3, store_timeout=30)) as http:
        answer = await http.post("/sleepy?seconds=1.0", json=PAYMENT, headers=idem())

    assert answer.status_code == 201
    assert store.cancelled["extend"] >= 3  # not one renewal left hanging for the 30 s store timeout


async def test_a_cancelled_request_is_not_mistaken_for_a_store_timeout(shop: Shop) -> None:
    store = HangingStore("claim")
    async with client_for(shop.app(store, store_timeout=30)) as http:
        request = asyncio.create_task(http.post("/payments", json=PAYMENT, headers=idem()))
        await asyncio.sleep(0.2)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    assert store.cancelled["claim"] == 1
    assert shop.runs["payments"] == 0


async def test_an_unreachable_store_does_not_stop_requests_without_a_key(
    shop: Shop, unreachable: IdempotencyStore
) -> None:
    async with client_for(shop.app(unreachable)) as http:
        assert (await http.get("/payments")).status_code == 200
        assert (await http.post("/payments", json=PAYMENT)).status_code == 201


# -- FastAPI and a real socket -------------------------------------------------------------------------------


class NewPayment(BaseModel):
    amount: str
    currency: str
    reference: str


async def test_a_fastapi_app_is_protected_the_same_way(memory: MemoryIdempotencyStore) -> None:
    api = FastAPI()
    api.add_middleware(IdempotencyMiddleware, store=memory, required=True)
    made: list[NewPayment] = []

    @api.post("/api/v1/payments", status_code=201)
    async def create(payment: NewPayment, request: Request) -> dict[str, str]:
        made.append(payment)
        return {"id": f"pay_{len(made)}", "key": request.state.idempotency_key}

    headers = idem()
    async with client_for(api) as http:
        first = await http.post("/api/v1/payments", json=PAYMENT, headers=headers)
        retry = await http.post("/api/v1/payments", json=PAYMENT, headers=headers)
        invalid = await http.post("/api/v1/payments", json={"amount": "1"}, headers=idem())
        missing = await http.post("/api/v1/payments", json=PAYMENT)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json() == {"id": "pay_1", "key": headers["Idempotency-Key"]}
    assert retry.headers["idempotent-replayed"] == "true"
    assert invalid.status_code == 422  # FastAPI's own validation, run on the replayed body
    assert_problem(missing, 400, "POST /api/v1/payments")
    assert len(made) == 1


@pytest.fixture
async def served(shop: Shop, tmp_path: Path) -> AsyncIterator[str]:
    """The shop behind uvicorn on a free loopback port, keys in a SQLite file."""
    database = Store(Settings(data_dir=tmp_path).sqlalchemy_url)
    await database.migrate()
    port = free_port()
    config = uvicorn.Config(
        shop.app(SqlIdempotencyStore(database)), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        await database.close()


async def test_over_a_real_socket_simultaneous_retries_run_once_and_replays_carry_fresh_date_headers(
    shop: Shop, served: str
) -> None:
    headers = idem()
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        answers = await asyncio.gather(*(http.post("/payments", json=PAYMENT, headers=headers) for _ in range(30)))
        replay = await http.post("/payments", json=PAYMENT, headers=headers)

    assert shop.runs["payments"] == 1
    assert {answer.status_code for answer in answers} <= {201, 409}
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["location"] == "/payments/pay_1"
    assert len(replay.headers.get_list("date")) == 1
    assert len(replay.headers.get_list("server")) == 1
    assert replay.headers.get_list("content-length") == [str(len(replay.content))]


# -- properties ----------------------------------------------------------------------------------------------


async def drive(
    app: ASGIApp, headers: list[tuple[bytes, bytes]], body: bytes = b"{}"
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One POST through the app with exactly these raw header bytes (no HTTP client normalises them)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/payments",
        "raw_path": b"/payments",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("203.0.113.9", 1),
        "server": ("shop.test", 80),
    }
    inbox: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
VALID_KEYS = st.one_of(
    st.text(PRINTABLE, min_size=1, max_size=255),
    st.text(st.sampled_from('" \\a'), min_size=1, max_size=12),  # quotes and escapes: RFC 8941 look-alikes
).filter(lambda key: key.strip(" ") != "")
INVALID_KEYS = st.one_of(
    st.just(b""),
    st.integers(1, 300).map(lambda n: b" " * n),
    st.text(PRINTABLE, min_size=256, max_size=400).map(str.encode),
    st.tuples(st.text(PRINTABLE, max_size=50), st.binary(min_size=1, max_size=3), st.text(PRINTABLE, max_size=50))
    .filter(lambda parts: any(byte < 0x20 or byte > 0x7E for byte in parts[1]))
    .map(lambda parts: parts[0].encode() + parts[1] + parts[2].encode()),
)


def _run_key(value: bytes) -> tuple[int, dict[bytes, bytes], bytes, Shop]:
    shop = Shop()
    status, headers, body = asyncio.run(drive(shop.app(MemoryIdempotencyStore()), [(b"idempotency-key", value)],
                                              json.dumps(PAYMENT).encode()))
    return status, headers, body, shop


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=VALID_KEYS)
def test_every_valid_key_is_accepted(key: str) -> None:
    status, _, _, shop = _run_key(key.encode())

    assert status == 201
    assert shop.runs["payments"] == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=INVALID_KEYS)
def test_every_invalid_key_is_refused_with_400_and_never_a_500(value: bytes) -> None:
    status, headers, body, shop = _run_key(value)

    assert status == 400
    assert headers[b"content-type"] == b"application/problem+json"
    assert json.loads(body)["status"] == 400
    assert shop.runs["payments"] == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=300))
def test_any_key_bytes_get_a_4xx_or_run_never_a_500(value: bytes) -> None:
    status, _, _, _ = _run_key(value)

    assert status in (201, 400)


REQUEST = st.tuples(
    st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]), st.text(max_size=30), st.binary(max_size=30),
    st.binary(max_size=60),
)


@given(request=REQUEST)
def test_the_fingerprint_is_deterministic_and_hex_sha256(request: tuple[str, str, bytes, bytes]) -> None:
    first = fingerprint(*request)

    assert first == fingerprint(*request)
    assert len(first) == 64 and int(first, 16) >= 0


@given(one=REQUEST, two=REQUEST)
def test_different_requests_have_different_fingerprints(
    one: tuple[str, str, bytes, bytes], two: tuple[str, str, bytes, bytes]
) -> None:
    if one != two:
        assert fingerprint(*one) != fingerprint(*two)


@given(text=st.binary(min_size=1, max_size=40), cut=st.integers(0, 40), cut2=st.integers(0, 40))
def test_moving_bytes_between_path_query_and_body_changes_the_fingerprint(text: bytes, cut: int, cut2: int) -> None:
    """No framing ambiguity: path "a" + body "bc" is not path "ab" + body "c", whatever the split."""
    cut, cut2 = sorted((cut % (len(text) + 1), cut2 % (len(text) + 1)))
    splits = {
        ("POST", text[:cut].decode("latin-1"), text[cut:cut2], text[cut2:]),
        ("POST", text[:cut2].decode("latin-1"), b"", text[cut2:]),
        ("POST", text[:cut].decode("latin-1"), text[cut:], b""),
        ("POST", "", text[:cut], text[cut:]),
    }
    assert len({fingerprint(*split) for split in splits}) == len(splits)


def test_the_fingerprint_separates_path_and_body_at_their_boundary() -> None:
    assert fingerprint("POST", "a", b"", b"bc") != fingerprint("POST", "ab", b"", b"c")
    assert fingerprint("POST", "/p", b"a=1", b"") != fingerprint("POST", "/p?a=1", b"", b"")
    assert fingerprint("POST", "/p", b"", b"") != fingerprint("post", "/p", b"", b"")


# -- atomic routes: the handler's writes commit with the key ----------------------------------------------------


class Till:
    """A payments app whose handler records each payment with `AtomicKey.commit`, in the key store's database."""

    def __init__(self, database: Store) -> None:
        self.database = database
        self.runs = 0
        self.rail_up = False

    async def pay(self, request: Request) -> Response:
        self.runs += 1
        order = await request.json()
        if order.get("amount") == "bad":
            return JSONResponse({"errors": [{"field": "amount"}], "run": self.runs}, status_code=422)
        if order.get("amount") == "rail-down" and not self.rail_up:
            self.rail_up = True  # down for the first attempt only
            return PlainTextResponse("the payment rail timed out", status_code=502)
        atomic = atomic_key(request.scope)
        assert atomic is not None and atomic.key == request.state.idempotency_key
        payment_id = f"pay_{uuid.uuid4().hex[:16]}"
        response = JSONResponse({"id": payment_id, **order}, status_code=201,
                                headers={"Location": f"/pay/{payment_id}"})
        row = {"id": payment_id, "principal": "client:a", "application_id": "app_1", "amount": "1.00",
               "currency": "EUR", "reference": "r", "status": "accepted", "environment": "sandbox",
               "idempotency_key": atomic.key, "created_at": 0.0}
        await atomic.commit(response, Write(schema.payments.insert(), row))
        return response

    async def payments(self) -> int:
        async with self.database.connect() as conn:
            return len((await conn.execute(sqlalchemy.select(schema.payments.c.id))).all())

    def app(self, store: IdempotencyStore) -> ASGIApp:
        return with_principal(Starlette(
            routes=[Route("/pay", self.pay, methods=["POST"])],
            middleware=[Middleware(IdempotencyMiddleware, store=store, atomic=lambda scope: True)],
        ))


@pytest.fixture(params=["sqlite", "postgresql"])
def till_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database's URL, resolved before the event loop runs (the PostgreSQL fixture runs its own loop)."""
    if request.param == "postgresql":
        return Settings(database_url=request.getfixturevalue("postgres_url"), data_dir=tmp_path).sqlalchemy_url
    return f"sqlite+aiosqlite:///{tmp_path / 'till.db'}"


@pytest.fixture
async def till(till_database: str) -> AsyncIterator[tuple[Till, httpx.AsyncClient]]:
    database = Store(till_database)
    await database.migrate()
    store = SqlIdempotencyStore(database)
    till = Till(database)
    async with client_for(till.app(store)) as client:
        yield till, client
    await store.close()
    await database.close()


async def test_an_atomic_route_records_the_payment_with_its_key_and_replays_it(
    till: tuple[Till, httpx.AsyncClient],
) -> None:
    shop, http = till
    key = idem()
    first = await http.post("/pay", json=PAYMENT, headers=key)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers

    again = await http.post("/pay", json=PAYMENT, headers=key)

    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert shop.runs == 1 and await shop.payments() == 1  # answered from the key's record, before the handler
    mismatch = await http.post("/pay", json={**PAYMENT, "amount": "99.00"}, headers=key)
    assert_problem(mismatch, 422, "different request")
    assert await shop.payments() == 1


async def test_simultaneous_identical_posts_on_an_atomic_route_make_one_payment_and_no_409(
    till: tuple[Till, httpx.AsyncClient],
) -> None:
    shop, http = till
    key = idem()

    responses = await asyncio.gather(*(http.post("/pay", json=PAYMENT, headers=key) for _ in range(100)))

    assert [r.status_code for r in responses] == [201] * 100  # each waits for the commit, none is told to wait
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    assert await shop.payments() == 1


async def test_an_answer_sent_without_a_commit_is_kept_unless_it_is_a_5xx(
    till: tuple[Till, httpx.AsyncClient],
) -> None:
    shop, http = till
    invalid, flaky = idem(), idem()
    refused = await http.post("/pay", json={**PAYMENT, "amount": "bad"}, headers=invalid)
    again = await http.post("/pay", json={**PAYMENT, "amount": "bad"}, headers=invalid)
    assert refused.status_code == again.status_code == 422
    assert again.headers["idempotent-replayed"] == "true" and again.json() == refused.json()

    down = await http.post("/pay", json={**PAYMENT, "amount": "rail-down"}, headers=flaky)
    retried = await http.post("/pay", json={**PAYMENT, "amount": "rail-down"}, headers=flaky)
    assert down.status_code == 502 and retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert await shop.payments() == 1


async def test_a_commit_the_database_refuses_answers_503_and_writes_nothing(tmp_path: Path) -> None:
    database = Store(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")  # never initialised: no tables
    till = Till(database)
    async with client_for(till.app(SqlIdempotencyStore(database))) as http:
        response = await http.post("/pay", json=PAYMENT, headers=idem())
    assert_problem(response, 503, "not processed", "same Idempotency-Key")
    assert response.headers["retry-after"] == "1"
    await database.close()


async def test_commit_refuses_what_cannot_be_kept_before_touching_the_store(
    till: tuple[Till, httpx.AsyncClient],
) -> None:
    shop, _ = till
    store = SqlIdempotencyStore(shop.database)
    layer = IdempotencyMiddleware(shop.app(store), store=store, atomic=lambda scope: True)
    key = AtomicKey(layer, "client:a", "k-1", fingerprint("POST", "/pay", b"", b"{}"))
    with pytest.raises(ValueError, match="502"):
        await key.commit(PlainTextResponse("rail down", status_code=502))
    with pytest.raises(TypeError, match="StreamingResponse"):
        await key.commit(StreamingResponse(iter([b"x"])))
    assert key.outcome is None
    assert await key.commit(JSONResponse({"id": "pay_1"}, status_code=201)) is True
    with pytest.raises(RuntimeError, match="once"):
        await key.commit(JSONResponse({"id": "pay_2"}, status_code=201))
    claim = await store.claim("client:a", "k-1", fingerprint("POST", "/pay", b"", b"{}"), lease=30, retention=60)
    assert claim.outcome == "completed" and claim.response is not None
    assert claim.response.body == b'{"id":"pay_1"}' and claim.response.status == 201


async def test_atomic_routes_need_a_store_in_the_handlers_database(shop: Shop) -> None:
    for store in (MemoryIdempotencyStore(), RedisIdempotencyStore("redis://127.0.0.1:1/0")):
        with pytest.raises(ValueError, match="SqlIdempotencyStore"):
            IdempotencyMiddleware(shop.app(store), store=store, atomic=lambda scope: True)


async def test_routes_outside_atomic_still_claim_first(tmp_path: Path, shop: Shop) -> None:
    database = Store(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    await database.migrate()
    store = SqlIdempotencyStore(database)
    app = with_principal(Starlette(routes=shop.routes(), middleware=[
        Middleware(IdempotencyMiddleware, store=store, atomic=lambda scope: scope["path"] == "/pay")
    ]))
    async with client_for(app) as http:
        key = idem()
        responses = await asyncio.gather(*(http.post("/payments", json=PAYMENT, headers=key) for _ in range(10)))
    assert shop.runs["payments"] == 1
    assert 409 in {r.status_code for r in responses}  # claimed before the handler: the others are told to wait
    await store.close()
    await database.close()


# -- a replay is one read: no handler, no write transaction ------------------------------------------------------

# A write, or SQLite's write lock. (A plain BEGIN ... ROLLBACK around `;` is the pool's liveness ping on PostgreSQL.)
_WRITING = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|SAVEPOINT|BEGIN\s+(IMMEDIATE|EXCLUSIVE))\b", re.IGNORECASE)


class Statements:
    """Every statement a `Store`'s database is sent, however it is sent: through SQLAlchemy (engine events), on
    asyncpg's own connection (its query logger, on each connection checked out of the pool), or on a SQLite file's
    inline connection (SQLite's trace callback, once that connection is open)."""

    def __init__(self, database: Store) -> None:
        self.database = database
        self.seen: list[str] = []
        engine = database.engine.sync_engine
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._cursor)
        if database.dialect == "postgresql":
            sqlalchemy.event.listen(engine, "checkout", self._checkout)

    def _cursor(self, connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement)

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(self._logged)

    def _logged(self, record: Any) -> None:
        self.seen.append(record.query)

    def _traced(self, statement: str) -> None:
        self.seen.append(statement)

    def follow_inline(self) -> None:
        inline = self.database.inline
        if inline is not None:
            assert inline._inline is not None, "the inline connection opens with the first write"
            inline._inline.set_trace_callback(self._traced)

    async def taken(self) -> list[str]:
        """What was sent since the last call (asyncpg tells its loggers on the next turns of the loop)."""
        for _ in range(3):
            await asyncio.sleep(0)
        taken, self.seen = self.seen, []
        return taken


def _writes(statements: list[str]) -> list[str]:
    return [statement for statement in statements if _WRITING.match(statement)]


@pytest.mark.parametrize("atomic", [False, True], ids=["claimed-first", "atomic"])
async def test_a_replay_runs_no_handler_and_opens_no_write_transaction(till_database: str, atomic: bool) -> None:
    database = Store(till_database)
    await database.migrate()
    store = SqlIdempotencyStore(database)
    statements = Statements(database)
    shop, till = Shop(), Till(database)
    app, path = (till.app(store), "/pay") if atomic else (shop.app(store), "/payments")
    key = idem()
    try:
        async with client_for(app) as http:
            assert (await http.post(path, json=PAYMENT, headers=idem())).status_code == 201  # opens the connections
            statements.follow_inline()
            await statements.taken()

            first = await http.post(path, json=PAYMENT, headers=key)
            assert first.status_code == 201
            assert _writes(await statements.taken())  # what a first request does is seen

            replay = await http.post(path, json=PAYMENT, headers=key)
            sent = await statements.taken()
            mismatch = await http.post(path, json={**PAYMENT, "amount": "99.00"}, headers=key)
            sent_on_mismatch = await statements.taken()
    finally:
        await store.close()
        await database.close()

    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert_problem(mismatch, 422, "different request")
    assert (till.runs if atomic else shop.runs["payments"]) == 2  # the warm-up and the first request
    assert any(statement.lstrip().upper().startswith("SELECT") for statement in sent), sent  # one read ...
    assert _writes(sent) == [] and _writes(sent_on_mismatch) == []  # ... and nothing else


class CommandLog(redis.asyncio.Redis):
    """A Redis client that notes the name of every command it sends."""

    commands: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]).upper())
        return await super().execute_command(*args, **options)


async def test_a_replay_from_redis_is_one_get(shop: Shop, redis_url: str, redis_prefix: str) -> None:
    client = CommandLog.from_url(redis_url)
    client.commands = []
    store = RedisIdempotencyStore(client, prefix=redis_prefix)
    key = idem()
    try:
        async with client_for(shop.app(store)) as http:
            first = await http.post("/payments", json=PAYMENT, headers=key)
            assert "EVALSHA" in client.commands  # the first request claims and completes by script
            client.commands.clear()
            replay = await http.post("/payments", json=PAYMENT, headers=key)
            on_replay = list(client.commands)
            client.commands.clear()
            mismatch = await http.post("/payments", json={**PAYMENT, "amount": "99.00"}, headers=key)
    finally:
        await client.aclose()

    assert replay.headers["idempotent-replayed"] == "true" and replay.content == first.content
    assert on_replay == ["GET"]
    assert_problem(mismatch, 422, "different request")
    assert client.commands == ["GET"]
    assert shop.runs["payments"] == 1


async def test_first_requests_and_retries_over_two_connections_make_one_payment(till_database: str) -> None:
    """Two processes' worth of stores on one database: retries that find the key completed are answered by the
    read, those that race the first request by the commit; either way one payment and one first answer."""
    databases = [Store(till_database), Store(till_database)]
    await databases[0].migrate()
    stores = [SqlIdempotencyStore(database) for database in databases]
    tills = [Till(database) for database in databases]
    key = idem()
    try:
        async with client_for(tills[0].app(stores[0])) as one, client_for(tills[1].app(stores[1])) as other:
            for http in (one, other):  # each opens its connections with a payment of its own
                assert (await http.post("/pay", json=PAYMENT, headers=idem())).status_code == 201
            first_wave = await asyncio.gather(*(
                (one, other)[n % 2].post("/pay", json=PAYMENT, headers=key) for n in range(40)
            ))
            ran = sum(till.runs for till in tills)
            second_wave = await asyncio.gather(*(
                (one, other)[n % 2].post("/pay", json=PAYMENT, headers=key) for n in range(40)
            ))
        payments = await tills[0].payments()
    finally:
        for store, database in zip(stores, databases, strict=True):
            await store.close()
            await database.close()

    answers = first_wave + second_wave
    assert [answer.status_code for answer in answers] == [201] * 80
    assert sum("idempotent-replayed" not in answer.headers for answer in answers) == 1
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert all(answer.headers["idempotent-replayed"] == "true" for answer in second_wave)
    assert payments == 3  # the two warm-ups and the one keyed payment
    assert sum(till.runs for till in tills) == ran  # the second wave never reached a handler
