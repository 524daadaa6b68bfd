"""The apps `benchmarks/guard.py` serves with uvicorn (and `benchmarks/instructions.py` calls in-process), chosen
by `BENCH_APP`:

* `bare`: a Starlette app with one JSON `GET /resource` route, nothing in front of it;
* `guard`: the same app wrapped in `GuardMiddleware(guard=Guard.remote(BENCH_ISSUER))`: keys from the issuer's JWKS;
* `idempotency`: `POST /payments` (parse the JSON body, validate it, record the payment with `PaymentBook` in the
  SQLite file `BENCH_DB`) behind `IdempotencyMiddleware`, whose store is `SqlIdempotencyStore` on the same database
  (`BENCH_IDEMPOTENCY_STORE=sql`) or `RedisIdempotencyStore` (a redis:// URL, keys under `BENCH_REDIS_PREFIX`).
  With the SQL store the route is `atomic` (the payment commits with its key, as in the sandbox) unless
  `BENCH_ATOMIC=0`, which claims the key before the handler runs, as for any other handler.

The handlers are the same in both halves of each pair; only the middleware differs.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MODE = os.environ.get("BENCH_APP", "bare")


async def resource(request: Request) -> Response:
    return JSONResponse({"id": "acc_1", "application_id": "app_1", "currency": "EUR", "balance": "1250.00"})


def resource_app() -> Starlette:
    middleware: list[Middleware] = []
    if MODE == "guard":
        from bankgate.guard import Guard, GuardMiddleware

        middleware.append(Middleware(GuardMiddleware, guard=Guard.remote(issuer=os.environ["BENCH_ISSUER"])))
    return Starlette(routes=[Route("/resource", resource, methods=["GET"])], middleware=middleware)


def payments_app() -> Starlette:
    from bankgate.idempotency import (
        IdempotencyMiddleware,
        IdempotencyStore,
        RedisIdempotencyStore,
        SqlIdempotencyStore,
        atomic_key,
    )
    from bankgate.sandbox.payments import DUPLICATE, PaymentBook, PaymentRecord, validate_order
    from bankgate.store import Store

    store = Store(f"sqlite+aiosqlite:///{os.environ['BENCH_DB']}")
    book = PaymentBook(store, "sandbox")
    spec = os.environ.get("BENCH_IDEMPOTENCY_STORE", "sql")
    keys: IdempotencyStore = (
        SqlIdempotencyStore(store) if spec == "sql"
        else RedisIdempotencyStore(spec, prefix=os.environ["BENCH_REDIS_PREFIX"])
    )

    atomic = spec == "sql" and os.environ.get("BENCH_ATOMIC", "1") != "0"

    def created(payment: PaymentRecord) -> Response:
        return JSONResponse(payment.as_json(), 201, headers={"Location": f"/payments/{payment.id}"})

    async def create_payment(request: Request) -> Response:  # the sandbox's handler, less its scope check
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"detail": "the body is not JSON"}, 400)
        order = validate_order(body)
        if isinstance(order, list):
            return JSONResponse({"errors": [{"field": e.field, "message": e.message} for e in order]}, 422)
        key = request.scope.get("state", {}).get("idempotency_key")
        joined = atomic_key(request.scope)
        if joined is not None:
            record, write = book.draft("client:bench", order, key)
            response = created(record)
            try:
                await joined.commit(response, write)
                return response
            except DUPLICATE:
                pass
        return created(await book.create("client:bench", order, key))

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await keys.close()
        await store.close()

    return Starlette(
        routes=[Route("/payments", create_payment, methods=["POST"])],
        middleware=[
            Middleware(
                IdempotencyMiddleware,
                store=keys,
                principal_of=lambda scope: "client:bench",
                retention=float(os.environ.get("BENCH_RETENTION", "600")),
                atomic=(lambda scope: True) if atomic else None,
            )
        ],
        lifespan=lifespan,
    )


app = payments_app() if MODE == "idempotency" else resource_app()
gc.collect()
gc.freeze()  # as `bankgate serve` does at start-up (Runtime.start): full collections walk only what requests made
