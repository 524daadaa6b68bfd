"""Keyset pagination, one helper for every listing: a `Page` of items and an opaque cursor to the next one.

A page is read with `WHERE (a, b) > (:a, :b) ORDER BY a, b LIMIT n + 1` on a stable, unique order (`created_at, id`
for clients and users, `at, id` for the audit trail), never with OFFSET: page 200 reads an index range of the same
size as page 1. A row written while someone walks the list lands after the cursor (it is newer) or before it, so no
row is ever shown twice and every row that existed when the walk began is shown once.

The cursor is base64url of a small JSON object naming the listing, a fingerprint of its filters and the last key
shown; it is opaque to callers and validated on the way back in, so a cursor that was altered, cut, or taken from
another listing or other filters is refused with a message saying to start again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Keyset", "Page", "PagingError", "check_limit", "fetch_page", "first_rows",
           "search_term", "status_condition"]

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: A cursor longer than this was not made here.
_MAX_CURSOR = 512
_RESTART = "start again without cursor"


class PagingError(ValueError):
    """A limit out of bounds or a cursor that is not one of ours; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: its items, and the cursor to the next page (None on the last one)."""

    items: tuple[T, ...]
    next_cursor: str | None = None


def status_condition(
    column: ColumnElement[Any], status: str | None, statuses: Sequence[str], *, deleted: bool
) -> ColumnElement[bool] | None:
    """The listing's status filter: `status` (one of `statuses`, else `ValueError`), else every record but the
    deleted ones unless `deleted`; None: no condition."""
    if status is not None:
        if status not in statuses:
            raise ValueError(f"status {status!r} is not one of: {', '.join(statuses)}")
        return column == status
    return None if deleted else column != "deleted"


def search_term(q: str, what: str) -> str:
    """A listing's free-text search, lower-cased; 1 to 200 characters of `what` (else `ValueError`)."""
    term = q.strip().lower()
    if not term or len(term) > 200:
        raise ValueError(f"a search needs 1 to 200 characters of {what}")
    return term


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise PagingError(f"limit {limit!r} is not between 1 and {MAX_LIMIT}; ask for at most {MAX_LIMIT} a page")
    return limit


def _fingerprint(filters: Mapping[str, Any]) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Keyset:
    """A listing's order: two columns, the second unique, ascending or descending; `kind` names the listing in its
    cursors and `types` says what each key part must be when a cursor comes back."""

    kind: str
    columns: tuple[ColumnElement[Any], ColumnElement[Any]]
    types: tuple[tuple[type, ...], tuple[type, ...]]
    descending: bool = False

    def encode(self, key: Sequence[Any], filters: Mapping[str, Any]) -> str:
        body = {"k": self.kind, "f": _fingerprint(filters), "d": int(self.descending), "v": list(key)}
        raw = json.dumps(body, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decode(self, cursor: str, filters: Mapping[str, Any]) -> tuple[Any, ...]:
        """The key a cursor points after; PagingError when it is not a cursor of this listing and these filters."""
        if not isinstance(cursor, str) or not cursor or len(cursor) > _MAX_CURSOR:
            raise PagingError(f"the cursor is not valid; {_RESTART}")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            body = json.loads(raw)
        except (binascii.Error, ValueError):
            raise PagingError(f"the cursor is not valid; {_RESTART}") from None
        if not isinstance(body, dict) or not isinstance(body.get("v"), list) or len(body["v"]) != 2:
            raise PagingError(f"the cursor is not valid; {_RESTART}")
        if body.get("k") != self.kind or body.get("d") != int(self.descending):
            raise PagingError(f"the cursor belongs to another listing or order; {_RESTART}")
        if body.get("f") != _fingerprint(filters):
            raise PagingError(f"the cursor was made with other filters; {_RESTART} or with the same filters")
        key = tuple(body["v"])
        for part, allowed in zip(key, self.types, strict=True):
            if isinstance(part, bool) or not isinstance(part, allowed):
                raise PagingError(f"the cursor is not valid; {_RESTART}")
        return key

    def after(self, key: Sequence[Any]) -> ColumnElement[bool]:
        """Rows after `key` in this order, as `a >= x AND (a > x OR b > y)`: the first term is an index range on
        both SQLite and PostgreSQL, the second drops the rows of the same `a` already shown."""
        (a, b), (x, y) = self.columns, key
        if self.descending:
            return and_(a <= x, or_(a < x, b < y))
        return and_(a >= x, or_(a > x, b > y))

    def ordered(self, query: Select[Any]) -> Select[Any]:
        a, b = self.columns
        return query.order_by(a.desc(), b.desc()) if self.descending else query.order_by(a, b)


async def fetch_page(
    conn: AsyncConnection,
    query: Select[Any],
    keyset: Keyset,
    *,
    limit: int,
    cursor: str | None,
    filters: Mapping[str, Any],
    branches: Sequence[ColumnElement[bool]] = (),
) -> tuple[list[Any], str | None]:
    """The rows (mappings) of one page of `query` in `keyset` order, and the cursor to the next page. `filters`
    are what the caller filtered by: a cursor is only accepted back with the same ones.

    `branches` are mutually exclusive conditions (`subject = 'a'`, `subject = 'b'`) of which a row meets one: each
    is read as its own index range in order and the ranges are merged, where `subject IN ('a', 'b')` would read and
    sort every match of both to return the first few."""
    check_limit(limit)
    if cursor is not None:
        query = query.where(keyset.after(keyset.decode(cursor, filters)))
    rows = await first_rows(conn, query, keyset, limit + 1, branches)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    key = tuple(last[column.key] for column in keyset.columns)
    return rows, keyset.encode(key, filters)


async def first_rows(
    conn: AsyncConnection,
    query: Select[Any],
    keyset: Keyset,
    count: int,
    branches: Sequence[ColumnElement[bool]] = (),
) -> list[Any]:
    """The first `count` rows of `query` in `keyset` order; with `branches`, each read apart and merged (see
    `fetch_page`)."""
    if len(branches) <= 1:
        if branches:
            query = query.where(branches[0])
        return list((await conn.execute(keyset.ordered(query).limit(count))).mappings())
    names = [column.key for column in keyset.columns]
    ranges = [list((await conn.execute(keyset.ordered(query.where(b)).limit(count))).mappings()) for b in branches]
    merged = heapq.merge(*ranges, key=lambda row: tuple(row[n] for n in names), reverse=keyset.descending)
    return list(itertools.islice(merged, count))
