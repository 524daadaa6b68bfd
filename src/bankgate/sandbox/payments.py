"""The sandbox's payments: validated, recorded once per Idempotency-Key, and read back by their owner."""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bankgate.credentials.scopes import APPLICATION_ID
from bankgate.idempotency import Write
from bankgate.sandbox.currencies import MINOR_UNITS
from bankgate.store import Store, schema
from bankgate.store.inline import Compiled

__all__ = [
    "DUPLICATE",
    "FieldError",
    "KeyReused",
    "PaymentBook",
    "PaymentOrder",
    "PaymentRecord",
    "validate_order",
]

_INSERT_STATEMENT = schema.payments.insert()  # every column, named after it
_INSERT = Compiled(_INSERT_STATEMENT)
#: What the database raises when a payment with the same (principal, idempotency key) exists already.
DUPLICATE = (IntegrityError, sqlite3.IntegrityError)
_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,14})(\.[0-9]+)?")
_MAX_REFERENCE = 140


class KeyReused(Exception):
    """The idempotency key already made another payment (its stored response has expired since)."""


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class PaymentOrder:
    application_id: str
    amount: str
    currency: str
    reference: str


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    id: str
    principal: str
    application_id: str
    amount: str
    currency: str
    reference: str
    status: str
    environment: str
    created_at: float

    @property
    def order(self) -> PaymentOrder:
        return PaymentOrder(self.application_id, self.amount, self.currency, self.reference)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "application_id": self.application_id,
            "amount": self.amount,
            "currency": self.currency,
            "reference": self.reference,
            "created_at": int(self.created_at),
        }


def validate_order(body: Any) -> PaymentOrder | list[FieldError]:
    """A payment order from a parsed JSON body, or every field error found (not just the first)."""
    if not isinstance(body, dict):
        return [FieldError("body", 'send a JSON object: {"application_id", "amount", "currency", "reference"}')]
    errors: list[FieldError] = []
    application_id = body.get("application_id")
    if not isinstance(application_id, str) or not APPLICATION_ID.fullmatch(application_id):
        errors.append(FieldError("application_id", "required: one of your application IDs, e.g. \"app_12345\""))
    currency = body.get("currency")
    if not isinstance(currency, str) or currency not in MINOR_UNITS:
        errors.append(FieldError("currency", "required: an ISO 4217 currency code in capitals, e.g. \"EUR\""))
    amount = body.get("amount")
    if not isinstance(amount, str):
        errors.append(FieldError("amount", "required: the amount as a decimal string, e.g. \"12.50\" (not a "
                                           "number, which would lose precision)"))
    elif not _AMOUNT.fullmatch(amount) or Decimal(amount) <= 0:
        errors.append(FieldError("amount", "must be a positive decimal string such as \"12.50\": digits, at most "
                                           "one '.', no sign, exponent or spaces"))
    elif isinstance(currency, str) and currency in MINOR_UNITS:
        decimals = len(amount.partition(".")[2])
        if decimals > MINOR_UNITS[currency]:
            errors.append(FieldError("amount", f"{currency} amounts have at most {MINOR_UNITS[currency]} decimal "
                                               f"places; {amount!r} has {decimals}"))
    reference = body.get("reference")
    if not isinstance(reference, str) or not reference.strip() or len(reference) > _MAX_REFERENCE \
            or not reference.isprintable():
        errors.append(FieldError("reference", f"required: 1 to {_MAX_REFERENCE} printable characters that the "
                                              "payee will see, e.g. \"Invoice 2024-001\""))
    unknown = sorted(set(body) - {"application_id", "amount", "currency", "reference"})
    if unknown:
        errors.append(FieldError(str(unknown[0])[:64], "unknown field; a payment has application_id, amount, "
                                                        "currency and reference"))
    if errors:
        return errors
    return PaymentOrder(str(application_id), str(amount), str(currency), str(reference))


class PaymentBook:
    def __init__(self, store: Store, environment: str) -> None:
        self._store = store
        self._environment = environment

    def __repr__(self) -> str:
        return f"PaymentBook(environment={self._environment!r})"

    def draft(
        self, principal: str, order: PaymentOrder, idempotency_key: str | None
    ) -> tuple[PaymentRecord, Write]:
        """A new payment, and the write that records it (for `AtomicKey.commit`; `create` makes it itself)."""
        record = PaymentRecord(
            id="pay_" + secrets.token_hex(12),
            principal=principal,
            application_id=order.application_id,
            amount=order.amount,
            currency=order.currency,
            reference=order.reference,
            status="accepted",
            environment=self._environment,
            created_at=time.time(),
        )
        row = {
            "id": record.id, "principal": principal, "application_id": record.application_id,
            "amount": record.amount, "currency": record.currency, "reference": record.reference,
            "status": record.status, "environment": record.environment, "idempotency_key": idempotency_key,
            "created_at": record.created_at,
        }
        return record, Write(_INSERT_STATEMENT, row)

    async def create(self, principal: str, order: PaymentOrder, idempotency_key: str | None) -> PaymentRecord:
        """Record a payment. With an idempotency key, at most one payment exists per (principal, key), whatever
        happened to earlier attempts: a retry after a crash finds the payment the first attempt committed."""
        table = schema.payments
        record, write = self.draft(principal, order, idempotency_key)
        row = write.params
        try:
            if self._store.inline is not None:
                # A SQLite file: one statement on the process's inline writer, committed with its turn's others.
                await self._store.inline.submit(_insert, row)
            else:
                async with self._store.begin() as conn:
                    await conn.execute(table.insert().values(dict(row)))
        except DUPLICATE:
            if idempotency_key is None:
                raise
            async with self._store.connect() as conn:
                found = (await conn.execute(
                    select(table).where(table.c.principal == principal, table.c.idempotency_key == idempotency_key)
                )).first()
            if found is None:
                raise
            existing = self._record(found)
            if existing.order != order:
                raise KeyReused from None
            return existing
        return record

    async def get(self, payment_id: str) -> PaymentRecord | None:
        if len(payment_id) > 40:
            return None
        table = schema.payments
        async with self._store.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.id == payment_id))).first()
        return self._record(row) if row is not None else None

    async def count(self) -> int:
        async with self._store.connect() as conn:
            return len((await conn.execute(select(schema.payments.c.id))).all())

    @staticmethod
    def _record(row: Any) -> PaymentRecord:
        r = row._mapping
        return PaymentRecord(id=r["id"], principal=r["principal"], application_id=r["application_id"],
                             amount=r["amount"], currency=r["currency"], reference=r["reference"],
                             status=r["status"], environment=r["environment"], created_at=r["created_at"])


def _insert(connection: sqlite3.Connection, row: Mapping[str, Any]) -> None:
    connection.execute(_INSERT.sql, _INSERT.args(row))
