"""Optimistic concurrency for clients and users: every change of a row increments its `version`; a change that says
which version it read applies only to that version, checked by the UPDATE itself (`... WHERE version = :read`), so
two writers that read the same version cannot both win, and there is no moment between a read and a write."""

from __future__ import annotations

from sqlalchemy import Table, Update

__all__ = ["VersionConflict", "bump", "check_version"]


class VersionConflict(Exception):
    """The row is no longer at the version the caller read; nothing was written."""

    def __init__(self, expected: int, current: int | None) -> None:
        super().__init__(f"version {expected} expected, {current} found")
        self.expected = expected
        self.current = current


def bump(statement: Update, table: Table, expected: int | None) -> Update:
    """`statement` incrementing the row's version, and applying only at `expected` when one is given."""
    statement = statement.values(version=table.c.version + 1)
    if expected is not None:
        statement = statement.where(table.c.version == expected)
    return statement


def check_version(expected: int | None) -> None:
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 1):
        raise ValueError(f"expected version {expected!r} is not a positive integer; read the record for its version")
