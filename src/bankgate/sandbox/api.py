"""The sandbox payments API: `GET /api/v1/accounts`, `POST /api/v1/payments` (Idempotency-Key required),
`GET /api/v1/payments/{id}`. It exists so that integrators can try the whole flow against a sandbox server: get a
token (either style), pay, retry the same payment and see it replayed rather than paid twice.

Every route sits behind the server's guard; `POST` also behind the Idempotency-Key layer. When the key records
live in the same database as the payments (the default), a payment and its key commit in one transaction
(`AtomicKey`); with a processing delay (a slow payment rail, simulated) or another key store, the key is claimed
before the payment is made, so a retry during the delay gets 409.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Scope

from bankgate.guard import GuardMiddleware, Principal, insufficient_scope, principal_of
from bankgate.idempotency import AtomicStore, IdempotencyMiddleware, atomic_key
from bankgate.sandbox.payments import DUPLICATE, FieldError, KeyReused, PaymentBook, PaymentRecord, validate_order
from bankgate.web.errors import OAUTH, PROBLEM, ErrorFormat, HttpError, render_error

__all__ = ["ACCOUNTS_PATH", "PATHS", "PAYMENTS_PATH", "PAYMENT_PATH", "account_for", "error_response", "sandbox_app"]

PAYMENTS_PATH = "/api/v1/payments"
PAYMENT_PATH = PAYMENTS_PATH + "/{payment_id}"
ACCOUNTS_PATH = "/api/v1/accounts"
#: The sandbox API's routes (also the route templates of its requests in the logs and metrics).
PATHS = (ACCOUNTS_PATH, PAYMENTS_PATH, PAYMENT_PATH)


def error_response(error: HttpError, route_format: ErrorFormat = PROBLEM) -> Response:
    """`error` as a Starlette response, rendered by the server's one renderer."""
    status, headers, body = render_error(error, route_format)
    response = Response(body, status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """An RFC 9457 problem response."""
    return error_response(HttpError(status, title, detail, title=title, extra=extra or None))


def _iban(application_id: str) -> str:
    """A made-up but well-formed (ISO 13616 check digits) Dutch IBAN, stable per application."""
    digits = str(int.from_bytes(hashlib.sha256(application_id.encode()).digest()[:8], "big"))[-10:].zfill(10)
    bank = "BGAT"
    numeric = "".join(str(int(c, 36)) for c in bank + digits + "NL00")
    check = 98 - int(numeric) % 97
    return f"NL{check:02d}{bank}{digits}"


def account_for(application_id: str) -> dict[str, Any]:
    digest = hashlib.sha256(application_id.encode()).hexdigest()[:16]
    return {"id": f"acc_{digest}", "application_id": application_id, "name": f"Sandbox account for {application_id}",
            "iban": _iban(application_id), "currency": "EUR", "status": "active"}


def _principal(request: Request) -> Principal:
    principal = principal_of(request.scope)
    assert principal is not None, "the guard runs before every sandbox route"
    return principal


async def accounts(request: Request) -> Response:
    principal = _principal(request)
    return JSONResponse({"accounts": [account_for(app) for app in principal.scopes]})


class SandboxApi:
    def __init__(self, book: PaymentBook, processing_delay: float) -> None:
        self._book = book
        self._delay = processing_delay

    async def create_payment(self, request: Request) -> Response:
        principal = _principal(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep to parse
            return problem(400, "Bad Request", "the body is not JSON: send application/json like "
                           '{"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "…"}')
        order = validate_order(body)
        if isinstance(order, list):
            return self._invalid(order)
        if not principal.has_scope(order.application_id):
            return error_response(insufficient_scope(principal, order.application_id), OAUTH)
        key = request.scope.get("state", {}).get("idempotency_key")
        atomic = atomic_key(request.scope)
        if atomic is not None:
            record, write = self._book.draft(principal.key, order, key)
            response = self._created(record)
            try:
                await atomic.commit(response, write)  # when the key was used already, the layer answers instead
                return response
            except DUPLICATE:
                pass  # a payment has this key but the key's record has ended: `create` finds that payment
        try:
            payment = await self._book.create(principal.key, order, key)
        except KeyReused:
            return problem(409, "Conflict", "this Idempotency-Key was used for another payment; send a new key")
        if self._delay:
            await asyncio.sleep(self._delay)
        return self._created(payment)

    @staticmethod
    def _created(payment: PaymentRecord) -> Response:
        return JSONResponse(payment.as_json(), 201, headers={"Location": f"{PAYMENTS_PATH}/{payment.id}"})

    async def get_payment(self, request: Request) -> Response:
        principal = _principal(request)
        payment = await self._book.get(request.path_params["payment_id"])
        if payment is None or not principal.has_scope(payment.application_id):
            # Another application's payment is as invisible as one that does not exist.
            return problem(404, "Not Found", "no payment with this id among your applications' payments")
        return JSONResponse(payment.as_json())

    @staticmethod
    def _invalid(errors: list[FieldError]) -> Response:
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return problem(422, "Unprocessable Content", detail,
                       errors=[{"field": e.field, "message": e.message} for e in errors])


def sandbox_app(runtime: Any) -> Any:
    """The sandbox API as one ASGI app: guard -> Idempotency-Key layer -> routes."""
    settings = runtime.settings
    api = SandboxApi(PaymentBook(runtime.services.store, settings.environment), settings.sandbox_processing_delay)
    router = Router(routes=[
        Route(ACCOUNTS_PATH, accounts, methods=["GET"]),
        Route(PAYMENTS_PATH, api.create_payment, methods=["POST"]),
        Route(PAYMENT_PATH, api.get_payment, methods=["GET"]),
    ])

    def required(scope: Scope) -> bool:
        path: str = scope["path"]
        return settings.idempotency_required or path == PAYMENTS_PATH

    def atomic(scope: Scope) -> bool:
        path: str = scope["path"]
        return path == PAYMENTS_PATH

    # A payment commits with its key when both live in one database and nothing slow comes between them.
    joined = isinstance(runtime.idempotency, AtomicStore) and not settings.sandbox_processing_delay
    idempotent = IdempotencyMiddleware(
        router,  # database trouble under a route: the app's ErrorBoundary answers 503
        store=runtime.idempotency,
        required=required,
        retention=settings.idempotency_retention,
        lease=settings.idempotency_lease,
        mismatch_status=settings.idempotency_mismatch_status,
        atomic=atomic if joined else None,
        outages=runtime.outages,
        events=runtime.events,
    )
    return GuardMiddleware(idempotent, guard=runtime.guard)
