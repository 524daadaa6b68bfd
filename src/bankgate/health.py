"""Liveness and readiness: what `/livez`, `/healthz` and `/readyz` answer.

Liveness does no I/O: the process answers. Readiness checks, within `readiness_timeout` seconds in total, that the
database answers a `SELECT 1`, that Redis answers when the server uses it, that the key ring has an active signing
key, and that the database schema is at the newest migration (remembered after the first success). A failing check
is named with a short reason that never carries a secret or a connection URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sqlalchemy import text

from bankgate.store.migrate import current_revision, head_revision, known

if TYPE_CHECKING:
    from bankgate.runtime import Runtime

__all__ = ["RETRY_AFTER", "Readiness"]

#: Seconds a load balancer is told to wait before asking `/readyz` again after a 503.
RETRY_AFTER = 5


class NotReady(Exception):
    """A check failed; the message is the short reason shown in `/readyz`."""


class Readiness:
    """The readiness checks of one server process."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._at_head = False  # once the schema was seen at head, it stays there for this process

    def _checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        checks: dict[str, Callable[[], Awaitable[None]]] = {"database": self._database}
        ping = getattr(self._runtime.idempotency, "ping", None)
        if ping is not None:
            checks["redis"] = ping
        checks["signing_keys"] = self._signing_keys
        checks["migrations"] = self._migrations
        return checks

    async def check(self) -> tuple[bool, dict[str, str]]:
        """Run every check at once within the timeout; return (ready, {check: "ok" or reason})."""
        checks = self._checks()
        timeout = self._runtime.settings.readiness_timeout
        tasks = {name: asyncio.ensure_future(_run(check)) for name, check in checks.items()}
        _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        for task in pending:
            task.cancel()
        results: dict[str, str] = {}
        for name, task in tasks.items():
            if task in pending:
                results[name] = f"no answer within {timeout:g} s"
            else:
                results[name] = task.result()
        return all(value == "ok" for value in results.values()), results

    async def _database(self) -> None:
        async with self._runtime.services.store.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _signing_keys(self) -> None:
        active = getattr(self._runtime.keys, "active", None)
        if active is None or active.signer is None:
            raise NotReady("no active signing key; run `bankgate keys rotate`")

    async def _migrations(self) -> None:
        if self._at_head:
            return
        async with self._runtime.services.store.connect() as conn:
            current = await conn.run_sync(current_revision)
        head = head_revision()
        if current is not None and not known(current):
            raise NotReady(f"the database schema is at {current}, newer than this version knows ({head})")
        if current != head:
            raise NotReady(f"the database schema is at {current or 'no revision'}, not {head}; run `bankgate migrate`")
        self._at_head = True


async def _run(check: Callable[[], Awaitable[None]]) -> str:
    try:
        await check()
    except NotReady as exc:
        return str(exc)
    except Exception as exc:  # the reason names the kind of failure, never the URL or a password
        return f"unreachable ({type(exc).__name__})"
    return "ok"
