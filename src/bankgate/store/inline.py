"""Short writes to a SQLite file, run on the event loop's own thread and committed in groups.

An uncontended SQLite statement takes a few microseconds; its commit in WAL mode (synchronous=NORMAL: no fsync)
writes every page it changed to the log, which costs several times the statement. aiosqlite adds several thread
hops per transaction, holding the file's write lock across each of them. For the hot writes of a request (an
idempotency key, a payment) `InlineSqlite` queues each unit of work and runs every unit queued during one turn of
the event loop at once, in one transaction (`BEGIN IMMEDIATE` ... `COMMIT`), on one connection of the process's own:
the commit's cost is shared by all of them, the write lock is held only while they run (never across an await),
and each caller gets its result once the transaction has committed, so a write it was told about is visible to
every other connection.

A unit that fails is undone alone (SQLite undoes the failing statement; several statements that must stand or fall
together use `savepoint`) and the others commit. When another connection (another process, or the `Store`'s
engine) holds the write lock, the group is tried again after a short asyncio sleep, which lets the holder finish.
Large writes and WAL checkpoints run in a worker thread on a second connection, so the loop never waits for a big
write or an fsync. The pragmas are those of `bankgate.store.engine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect

__all__ = ["Compiled", "InlineSqlite", "savepoint"]

logger = logging.getLogger("bankgate.store")

T = TypeVar("T")

_BUSY_TIMEOUT = 10.0  # seconds, as the engine's busy_timeout
_CACHE_KIB = -32768  # PRAGMA cache_size in KiB (negative): 32 MiB, not 2, keeps the index pages random keys touch
_CHECKPOINT_EVERY = 1000  # units of work; grouped, they leave roughly SQLite's default of 1000 pages in the WAL


@contextlib.contextmanager
def savepoint(connection: sqlite3.Connection) -> Iterator[None]:
    """Make the statements of a unit of work atomic within its group: all kept, or all undone if it raises."""
    connection.execute("SAVEPOINT bankgate_unit")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK TO bankgate_unit")
        connection.execute("RELEASE bankgate_unit")
        raise
    connection.execute("RELEASE bankgate_unit")


class Compiled:
    """A SQLAlchemy Core statement compiled once to a driver's own SQL (SQLite's qmark style by default), with the
    order of its named parameters: running it then skips SQLAlchemy's per-call statement processing."""

    __slots__ = ("_pick", "defaults", "order", "sql")

    def __init__(self, statement: Any, dialect: Dialect | None = None) -> None:
        compiled = statement.compile(dialect=dialect or _QMARK)
        self.sql: str = compiled.string
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.defaults: dict[str, Any] = dict(compiled.params)
        # itemgetter gives a bare value, not a 1-tuple, for a single name
        self._pick = operator.itemgetter(*self.order) if len(self.order) > 1 else None

    def args(self, params: Mapping[str, Any]) -> Sequence[Any]:
        if self._pick is not None:
            try:
                picked: tuple[Any, ...] = self._pick(params)
                return picked
            except KeyError:
                pass
        return [params[name] if name in params else self.defaults[name] for name in self.order]


_QMARK = sqlite.dialect(paramstyle="qmark")


class _Group:
    """The units of work queued on one event loop since its last commit."""

    __slots__ = ("deadline", "delay", "units")

    def __init__(self) -> None:
        self.units: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self.delay = 0.0002
        self.deadline = time.monotonic() + _BUSY_TIMEOUT


class InlineSqlite:
    """One SQLite file's inline writer: `run(work, ...)` (or `submit`, its frameless form) on the loop,
    `run_in_thread(work, ...)` off it, and `read(work, ...)` for a read at once, outside any group.

    `work` receives a `sqlite3.Connection` inside the group's transaction and must not await. A unit of one
    writing statement needs nothing more; several statements that must stand or fall together go in
    `with savepoint(connection):`. Its return value (or exception) reaches the caller after the commit.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._inline: sqlite3.Connection | None = None
        self._worker: sqlite3.Connection | None = None  # used in `_thread` only
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bankgate-sqlite")
        self._writes = 0
        self._checkpoint: asyncio.Future[None] | None = None
        self._closed = False
        self._groups: dict[asyncio.AbstractEventLoop, _Group] = {}
        # One connection: loops of different threads (rare: a sync test client beside the server) take turns.
        self._lock = threading.Lock()
        self._reading = False  # `read`'s transaction is open on the inline connection

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
        """Run `work(connection, *args)` on the loop's thread with the other units of this turn of the loop, and
        return its result once they are committed."""
        return await self.submit(work, *args)

    def submit(self, work: Callable[..., T], *args: Any) -> Awaitable[T]:
        """`run` without a coroutine of its own: queue the unit now and return what to await (its future), which
        saves a frame on every suspension and resumption of the callers' hot paths. (The first call, which has to
        open the connection, returns a coroutine that queues the unit once it is open.)"""
        if self._closed:
            raise RuntimeError("the SQLite writer is closed")
        if self._inline is None:
            return self._open_then_run(work, args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = _Group()
            loop.call_soon(self._flush, loop)
        group.units.append((work, args, future))
        return future

    def read(self, work: Callable[..., T], *args: Any) -> T | None:
        """Run a reading `work(connection, *args)` now, on the caller's thread, outside any write transaction: for
        a read that should not wait for the next group. A WAL reader sees every committed write and holds up no
        writer. The reads of one turn of the event loop share one read transaction, ended before the turn's group
        begins or at the next turn, whichever comes first: SQLite's locking of a read transaction's snapshot (on
        its shared memory) would otherwise cost each read more than its statement. None when there is nothing to
        read on yet (no write has opened the connection) or SQLite cannot serve a reader this instant (busy: a
        recovery or a WAL reset under way): the caller then takes its write path."""
        connection = self._inline
        if connection is None:
            return None
        with self._lock:
            try:
                if not self._reading:
                    connection.execute("BEGIN")
                    self._reading = True
                    asyncio.get_running_loop().call_soon(self._end_read)
                return work(connection, *args)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    return None
                raise

    def _end_read(self) -> None:
        with self._lock:
            self._stop_reading()

    def _stop_reading(self) -> None:
        """End the read transaction of `read`, if one is open (under `_lock`): before a write, or at the turn's end,
        so that the next reads see a fresh snapshot and the WAL can be checkpointed."""
        if self._reading:
            self._reading = False
            connection = self._inline
            if connection is not None and connection.in_transaction:
                connection.execute("COMMIT")

    async def _open_then_run(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        opened = await asyncio.get_running_loop().run_in_executor(self._thread, self._open_inline)
        if self._inline is None and not self._closed:
            self._inline = opened
        else:
            opened.close()
        return await self.submit(work, *args)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        group = self._groups.get(loop)
        if group is None:
            return
        checkpoint = self._checkpoint
        if checkpoint is not None and not checkpoint.done() and checkpoint.get_loop() is loop:
            # Let it finish first: racing it, this process's own writes could keep it from ever completing.
            checkpoint.add_done_callback(lambda _: self._flush(loop))
            return
        connection = self._inline
        if connection is None:
            del self._groups[loop]
            _settle([(future, None, RuntimeError("the SQLite writer is closed")) for _, _, future in group.units])
            return
        with self._lock:
            self._stop_reading()
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY and time.monotonic() < group.deadline:
                    loop.call_later(group.delay, self._flush, loop)  # another connection writes: let it finish
                    group.delay = min(group.delay * 2, 0.005)
                    return
                del self._groups[loop]
                _settle([(future, None, exc) for _, _, future in group.units])
                return
            del self._groups[loop]
            done = self._apply(connection, group)
        _settle(done)
        self._after_write(len(done))

    @staticmethod
    def _apply(
        connection: sqlite3.Connection, group: _Group
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """Run the group's units in the open transaction and commit: (future, result, exception) for each."""
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            for work, args, future in group.units:
                if future.done():
                    continue  # its caller was cancelled before it ran: it does not run
                try:
                    done.append((future, work(connection, *args), None))
                except Exception as exc:
                    done.append((future, None, exc))
                    if not connection.in_transaction:
                        # SQLite gave up the whole transaction (e.g. disk full): nothing of the group was written.
                        raise
            connection.execute("COMMIT")
        except Exception as exc:
            if connection.in_transaction:
                connection.rollback()
            ran = {id(future) for future, _, _ in done}
            left = [future for _, _, future in group.units if id(future) not in ran and not future.done()]
            return [(future, None, exc) for future, _, _ in done] + [(future, None, exc) for future in left]
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
        return done

    async def run_in_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work(connection, *args)` in the worker thread, on a connection that waits for locks (autocommit)."""
        if self._closed:
            raise RuntimeError("the SQLite writer is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._in_thread, work, *args)

    def _in_thread(self, work: Callable[..., T], *args: Any) -> T:
        if self._worker is None:
            self._worker = self._open(inline=False)
        return work(self._worker, *args)

    def _after_write(self, units: int) -> None:
        self._writes += units
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
        """Commit what this loop has queued, then close both connections."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if loop in self._groups and self._inline is not None:
            group = self._groups.pop(loop)
            with self._lock:
                self._stop_reading()
                self._inline.execute("PRAGMA busy_timeout=2000")  # once, at the end: waiting is fine here
                with contextlib.suppress(sqlite3.Error):
                    self._inline.execute("BEGIN IMMEDIATE")
                done = self._apply(self._inline, group) if self._inline.in_transaction else [
                    (future, None, RuntimeError("the SQLite writer is closed")) for _, _, future in group.units
                ]
            _settle(done)
        if self._inline is not None:
            with self._lock:
                self._stop_reading()
                self._inline.close()
                self._inline = None
        for group in self._groups.values():
            _settle([(future, None, RuntimeError("the SQLite writer is closed")) for _, _, future in group.units])
        self._groups.clear()
        await loop.run_in_executor(self._thread, self._close_worker)
        self._thread.shutdown(wait=False)


def _settle(done: Sequence[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, exc in done:
        if future.done():
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


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
