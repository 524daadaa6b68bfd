"""Short writes to a SQLite file, run on the event loop's own thread.

An uncontended SQLite statement in WAL mode (synchronous=NORMAL: no fsync on commit) takes tens of microseconds,
less than one hop to a worker thread, and aiosqlite takes several hops per transaction (BEGIN, statement, COMMIT),
holding the file's write lock across each of them. For the hot writes of a request (an idempotency key, a
payment) `InlineSqlite` runs the whole unit of work at once on one connection of the process's own, in autocommit
or in one transaction without an await inside, so writes of the same process never wait for each other.

The connection never waits for a lock (busy_timeout=0): when another connection (another process, or the
`Store`'s engine) holds the write lock, the work fails at once and is tried again after a short asyncio sleep,
which lets the holder finish. Large writes and WAL checkpoints run in a worker thread on a second connection, so
the loop never waits for a big write or an fsync. The pragmas are those of `bankgate.store.engine`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect

__all__ = ["Compiled", "InlineSqlite"]

logger = logging.getLogger("bankgate.store")

T = TypeVar("T")

_BUSY_TIMEOUT = 10.0  # seconds, as the engine's busy_timeout
_CACHE_KIB = -32768  # PRAGMA cache_size in KiB (negative): 32 MiB, not 2, keeps the index pages random keys touch
_CHECKPOINT_EVERY = 500  # writes; a few pages each keeps the WAL near SQLite's default of 1000 pages


class Compiled:
    """A SQLAlchemy Core statement compiled once to a driver's own SQL (SQLite's qmark style by default), with the
    order of its named parameters: running it then skips SQLAlchemy's per-call statement processing."""

    __slots__ = ("defaults", "order", "sql")

    def __init__(self, statement: Any, dialect: Dialect | None = None) -> None:
        compiled = statement.compile(dialect=dialect or _QMARK)
        self.sql: str = compiled.string
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.defaults: dict[str, Any] = dict(compiled.params)

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] if name in params else self.defaults[name] for name in self.order]


_QMARK = sqlite.dialect(paramstyle="qmark")


class InlineSqlite:
    """One SQLite file's inline writer: `run(work, ...)` on the loop, `run_in_thread(work, ...)` off it.

    `work` receives a `sqlite3.Connection` in autocommit mode (`isolation_level=None`) and must not await; a unit
    of several statements that must be atomic opens its own `BEGIN IMMEDIATE` ... `COMMIT` (rolled back here if
    it raises).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._inline: sqlite3.Connection | None = None
        self._worker: sqlite3.Connection | None = None  # used in `_thread` only
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bankgate-sqlite")
        self._writes = 0
        self._checkpoint: asyncio.Future[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"InlineSqlite({self._path!r})"

    def _open(self, *, inline: bool) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, timeout=10, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute(f"PRAGMA cache_size={_CACHE_KIB}")
        if inline:
            connection.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in the worker thread
            connection.execute("PRAGMA busy_timeout=0")
        else:
            connection.execute("PRAGMA busy_timeout=10000")
        return connection

    def _open_inline(self) -> sqlite3.Connection:
        """Opened in the worker thread: opening may wait for another process's recovery or checkpoint."""
        return self._open(inline=True)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work(connection, *args)` on the loop's thread, again after a short sleep while the file is busy."""
        if self._closed:
            raise RuntimeError("the SQLite writer is closed")
        checkpoint = self._checkpoint
        if checkpoint is not None and not checkpoint.done() and checkpoint.get_loop() is asyncio.get_running_loop():
            # Let it finish first: racing it, this process's own writes could keep it from ever completing.
            await asyncio.wait([checkpoint])
        if self._inline is None:
            opened = await asyncio.get_running_loop().run_in_executor(self._thread, self._open_inline)
            if self._inline is None:
                self._inline = opened
            else:
                opened.close()
        connection = self._inline
        delay, deadline = 0.0002, time.monotonic() + _BUSY_TIMEOUT
        while True:
            try:
                result = work(connection, *args)
            except sqlite3.OperationalError as exc:
                if connection.in_transaction:
                    connection.rollback()
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.005)
                continue
            except BaseException:
                if connection.in_transaction:
                    connection.rollback()
                raise
            self._after_write()
            return result

    async def run_in_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work(connection, *args)` in the worker thread, on a connection that waits for locks."""
        if self._closed:
            raise RuntimeError("the SQLite writer is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._in_thread, work, *args)

    def _in_thread(self, work: Callable[..., T], *args: Any) -> T:
        if self._worker is None:
            self._worker = self._open(inline=False)
        return work(self._worker, *args)

    def _after_write(self) -> None:
        self._writes += 1
        if self._writes >= _CHECKPOINT_EVERY and (self._checkpoint is None or self._checkpoint.done()):
            self._writes = 0
            self._checkpoint = asyncio.get_running_loop().run_in_executor(
                self._thread, self._in_thread, _checkpoint
            )
            self._checkpoint.add_done_callback(_ignore_failure)

    def _close_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_worker)
        self._thread.shutdown(wait=False)


def _checkpoint(connection: sqlite3.Connection) -> None:
    """Copy the WAL into the database and have the next writer start the WAL over. RESTART, not PASSIVE: a passive
    checkpoint racing writers never catches up, and the WAL would grow without bound. It holds off writers for its
    few milliseconds (the inline ones wait for it on the loop), and gives up after 0.2 s of waiting for them."""
    connection.execute("PRAGMA busy_timeout=200")
    try:
        connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    finally:
        connection.execute("PRAGMA busy_timeout=10000")


def _ignore_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("WAL checkpoint skipped: %s", type(future.exception()).__name__)
