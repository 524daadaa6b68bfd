"""Listing cost: the first page and a page deep in a long list cost the same (keyset pagination, never OFFSET).

On a fresh SQLite file (or `--database-url`) it writes 10,000 clients with their secret hashes in one transaction
straight through the store (as `ClientRegistry.create` writes them, without 10,000 transactions) and 20,000 audit
events through the audit writer, then times, in the same run:

* `services.admin.clients.page(limit=50)`: the first page, and the page after the 9,950th client (its cursor is
  found by walking the list once, which also checks that the walk shows every client exactly once);
* the same with a filter (`status="active"`);
* `services.admin.audit.page(limit=50)`: newest first, deep in the trail, and one busy client's events (the token
  events of 10 clients make the trail: 2,000 each, found under the client id, its API key also searched);
* the baseline: a bare `SELECT * FROM clients LIMIT 50` on the same connection pool (no order, no filter, no
  record building), and for comparison the same deep page read with `ORDER BY created_at, id LIMIT 50 OFFSET 9950`.

Prints the median and best of `--runs` timings (ms) of each and the ratio of each page to the baseline. Target: the
first page of clients under 50 ms; the deep page within 2x the first. Usage:

    python benchmarks/admin_list.py                     # 10,000 clients, 31 runs each
    python benchmarks/admin_list.py --clients 50000 --runs 51 --json results.json
    python benchmarks/admin_list.py --database-url postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bankgate.audit import AuditEvent
from bankgate.config import load_settings
from bankgate.credentials.keys import new_api_key, new_secret_key
from bankgate.services import Services
from bankgate.store import schema

PAGE = 50
TARGET_FIRST_PAGE_MS = 50.0


async def timed(job: Callable[[], Awaitable[Any]], runs: int) -> dict[str, float]:
    await job()  # warm: statement caches, the page cache
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await job()
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(samples), "best_ms": min(samples)}


async def fill(services: Services, clients: int, events: int) -> list[str]:
    """Clients (with a secret hash each) in one transaction; audit events, token events of the first 10 clients, in
    batches of the writer's size."""
    base = time.time() - clients
    rows, secrets = [], []
    for n in range(clients):
        client_id = str(uuid.uuid4())
        created = base + n // 3  # three clients a second: ties on created_at, broken by the id
        rows.append({"id": client_id, "api_key": new_api_key("test"), "name": f"shop {n}", "auth_mode": "oauth2",
                     "scopes": '["app_1"]', "environment": "sandbox", "status": "active" if n % 10 else "disabled",
                     "created_at": created})
        secrets.append({"client_id": client_id, "secret_hash": services.vault.hash_secret(new_secret_key("test")),
                        "created_at": created})
    async with services.store.begin() as conn:
        await conn.execute(schema.clients.insert(), rows)
        await conn.execute(schema.client_secrets.insert(), secrets)
    start = time.time() - events
    for first in range(0, events, 500):
        await services.audit.write(*(
            AuditEvent("token.issued", rows[n % 10]["api_key"], "success", "10.0.0.1",
                       {"client_id": rows[n % 10]["id"], "jti": uuid.uuid4().hex}, at=start + n)
            for n in range(first, min(events, first + 500))))
    return [row["api_key"] for row in rows]


async def cursor_at(fetch: Callable[..., Awaitable[Any]], position: int, expected: int) -> str:
    """The cursor after the `position`-th item, walking the whole list once (and checking it on the way)."""
    seen: set[str] = set()
    cursor, found = None, None
    while True:
        page = await fetch(limit=PAGE, cursor=cursor)
        for record in page.items:
            if record.api_key in seen:
                raise SystemExit(f"client {record.api_key} was listed twice")
            seen.add(record.api_key)
        if found is None and len(seen) >= position:
            found = page.next_cursor
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    if len(seen) != expected or found is None:
        raise SystemExit(f"the walk showed {len(seen)} clients, not {expected}")
    return found


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp), database_url=args.database_url)
        services = await Services.open(settings, initialise=True)
        try:
            await services.init()
            started = time.perf_counter()
            keys = await fill(services, args.clients, args.events)
            print(f"wrote {args.clients:,} clients and {args.events:,} audit events in "
                  f"{time.perf_counter() - started:.1f} s ({services.store.dialect})")
            admin = services.admin
            deep = args.clients - PAGE
            deep_cursor = await cursor_at(admin.clients.page, deep, args.clients)
            active = admin.clients.page(limit=PAGE, status="active")
            active_deep = (await active).next_cursor
            for _ in range(int(deep * 0.9 / PAGE) - 1):  # to about the same depth among the active ones
                active_deep = (await admin.clients.page(limit=PAGE, status="active", cursor=active_deep)).next_cursor
            audit_deep = None
            for _ in range(args.events // PAGE - 2):
                audit_deep = (await admin.audit.page(limit=PAGE, cursor=audit_deep)).next_cursor

            async def bare() -> None:
                async with services.store.connect() as conn:
                    (await conn.execute(sa.text("SELECT * FROM clients LIMIT :n"), {"n": PAGE})).all()

            async def offset() -> None:
                async with services.store.connect() as conn:
                    (await conn.execute(sa.text("SELECT * FROM clients ORDER BY created_at, id LIMIT :n OFFSET :skip"),
                                        {"n": PAGE, "skip": deep})).all()

            runs = args.runs
            figures = {
                "baseline: SELECT * FROM clients LIMIT 50": await timed(bare, runs),
                "clients, first page": await timed(lambda: admin.clients.page(limit=PAGE), runs),
                f"clients, page after {deep:,}": await timed(
                    lambda: admin.clients.page(limit=PAGE, cursor=deep_cursor), runs),
                "clients, status=active, first page": await timed(
                    lambda: admin.clients.page(limit=PAGE, status="active"), runs),
                "clients, status=active, deep page": await timed(
                    lambda: admin.clients.page(limit=PAGE, status="active", cursor=active_deep), runs),
                f"comparison: OFFSET {deep:,} (bare rows)": await timed(offset, runs),
                "audit, newest page": await timed(lambda: admin.audit.page(limit=PAGE), runs),
                "audit, deep page": await timed(lambda: admin.audit.page(limit=PAGE, cursor=audit_deep), runs),
                "audit, one busy client's newest page": await timed(
                    lambda: admin.audit.page(limit=PAGE, subject=keys[7]), runs),
            }
        finally:
            await services.close()
    baseline = figures["baseline: SELECT * FROM clients LIMIT 50"]["median_ms"]
    print(f"\n{'median ms':>10} {'best ms':>8} {'x baseline':>10}  query ({runs} runs each)")
    for name, figure in figures.items():
        figure["ratio_to_baseline"] = figure["median_ms"] / baseline
        print(f"{figure['median_ms']:10.2f} {figure['best_ms']:8.2f} {figure['ratio_to_baseline']:10.1f}  {name}")
    first = figures["clients, first page"]["median_ms"]
    deep_ms = figures[f"clients, page after {deep:,}"]["median_ms"]
    print(f"\nfirst page {first:.2f} ms (target < {TARGET_FIRST_PAGE_MS:.0f} ms): "
          f"{'met' if first < TARGET_FIRST_PAGE_MS else 'MISSED'}; deep page / first page {deep_ms / first:.2f}")
    return {"clients": args.clients, "events": args.events, "runs": runs, "figures": figures,
            "target_met": first < TARGET_FIRST_PAGE_MS}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--database-url", default=None, help="default: a SQLite file in a temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if result["target_met"] else 1)
