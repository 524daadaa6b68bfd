"""The cut-off that disabling a client or user (or taking an application away from it) puts on its tokens.

A subject revocation with a cut-off refuses every token of the subject issued at or before it (see
`bankgate.tokens.revocation`). The cut-off is set a little in the future, `settle` seconds: another server process
may still answer from the record it cached until its next sync, and a token it issues in that window must die too.
Tokens carry `iat` in whole seconds, so a token is safe from the cut-off only from the second after it; `enable`
waits for that second, so that the tokens a client or user gets after it returns stay valid.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from sqlalchemy import select

from bankgate.store import Store, schema

__all__ = ["cutoff", "wait_past_cutoff"]


def cutoff(now: float, settle: float) -> float:
    return now + settle


async def wait_past_cutoff(store: Store, subject: str, now: Callable[[], float]) -> None:
    """Return once a token issued now would be newer than the subject's cut-off (at once when it has none)."""
    table = schema.revoked_subjects
    async with store.connect() as conn:
        not_before = (await conn.execute(select(table.c.not_before).where(table.c.subject == subject))).scalar()
    if not_before is None:
        return
    delay = math.floor(not_before) + 1 - now()
    if delay > 0:
        await asyncio.sleep(delay)
