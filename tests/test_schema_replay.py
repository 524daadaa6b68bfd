"""The suite's replay of the SQLite schema (conftest's `_SqliteSchemaReplay`) builds what alembic builds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import _SCHEMA_REPLAY, run_cli


def _migrate(directory: Path) -> list[tuple[str, ...]]:
    run_cli("migrate", "--data-dir", str(directory))
    with sqlite3.connect(directory / "bankgate.db") as db:
        rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        rows += db.execute("SELECT 'revision', version_num, '', '' FROM alembic_version").fetchall()
    return [tuple(map(str, row)) for row in rows]


def test_the_replayed_schema_is_alembics_byte_for_byte(tmp_path: Path) -> None:
    _migrate(tmp_path / "first")  # recorded here, unless an earlier test of this process migrated an empty one
    assert _SCHEMA_REPLAY.enabled and _SCHEMA_REPLAY.schema is not None
    replayed = _migrate(tmp_path / "replayed")

    _SCHEMA_REPLAY.enabled = False
    try:
        migrated = _migrate(tmp_path / "alembic")
    finally:
        _SCHEMA_REPLAY.enabled = True

    assert ("table", "clients", "clients") in [row[:3] for row in migrated]
    assert migrated[-1][0] == "revision"
    assert replayed == migrated
