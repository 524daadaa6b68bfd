"""The Idempotency-Key layer's cost in CPU instructions: a figure a noisy host cannot blur.

Timings on a shared VM drift by a third within an hour, which hides changes of a few per cent. This script counts
instructions instead, with valgrind's callgrind: the payments app of `benchmarks/guard_app.py` (the same handler,
middleware and SQLite store as `guard.py`'s idempotency pair) is called in-process, without HTTP, 16 requests at a
time, without a key, with a unique `Idempotency-Key` per request on the atomic route (the payment commits with its
key, as in the sandbox), and with a unique key claimed before the handler runs (`BENCH_ATOMIC=0`, the way for any
handler). Each configuration runs twice, with two request counts; the difference of the two totals divided by the
difference of the counts is the count per request, start-up and warm-up cancelling out. The configurations run side
by side (one core each).

    python benchmarks/instructions.py                  # 1,600 and 4,800 requests per configuration, ~4 min
    python benchmarks/instructions.py --requests 800 2400

Prints instructions per request of each, the instructions the layer adds, and the ratios (no key over key: the share
of throughput a CPU-bound server keeps, HTTP's own cost left out, so it reads lower than `guard.py`'s ratio). Needs
valgrind (Debian: apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONCURRENCY = 16
WARM_UP = 50  # requests per concurrent caller before counting starts to matter (they cancel out anyway)
BODY = json.dumps({"application_id": "app_1", "amount": "12.50", "currency": "EUR",
                   "reference": "Invoice 2026-001"}).encode()
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


# -- inside valgrind: drive the app --------------------------------------------------------------------------------


MODES = ("plain", "atomic", "claim")


async def _drive(mode: str, requests: int, database: Path) -> None:
    from bankgate.store import Store

    store = Store(f"sqlite+aiosqlite:///{database}")
    await store.migrate()
    await store.close()
    os.environ.update(BENCH_APP="idempotency", BENCH_DB=str(database), BENCH_IDEMPOTENCY_STORE="sql",
                      BENCH_ATOMIC="0" if mode == "claim" else "1")
    sys.path.insert(0, str(HERE))
    import guard_app

    app = guard_app.app
    statuses: dict[int, int] = {}

    async def one(number: int) -> None:
        headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
                   (b"content-length", str(len(BODY)).encode())]
        if mode != "plain":
            headers.append((b"idempotency-key", f"key-{number}".encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/payments", "raw_path": b"/payments", "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000), "state": {}}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await asyncio.Event().wait()  # no disconnect while the response is under way
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    async def caller(first: int, count: int) -> None:
        for number in range(first, first + count):
            await one(number)

    lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await lifespan_in.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, lifespan_in.get, lifespan_out.put)
    )
    await lifespan_out.get()
    await asyncio.gather(*(caller(-(caller_number + 1) * WARM_UP, WARM_UP) for caller_number in range(CONCURRENCY)))
    share = requests // CONCURRENCY
    await asyncio.gather(*(caller(caller_number * share, share) for caller_number in range(CONCURRENCY)))
    await lifespan_in.put({"type": "lifespan.shutdown"})
    await lifespan_out.get()
    await lifespan
    if set(statuses) != {201}:
        raise SystemExit(f"the app answered {statuses}, not only 201: the count would be of something else")


def inner(mode: str, requests: int) -> None:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bankgate-instructions-") as tmp:
        uvloop.run(_drive(mode, requests, Path(tmp) / "bankgate.db"))


# -- outside: run valgrind and compare ---------------------------------------------------------------------------


def count(mode: str, requests: int) -> int:
    """Instructions of one whole run under callgrind."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
               "--inner", mode, str(requests)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the run under valgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_request(mode: str, small: int, large: int) -> float:
    return (count(mode, large) - count(mode, small)) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs=2, default=[1600, 4800], metavar=("SMALL", "LARGE"),
                        help="the two request counts whose difference is measured")
    parser.add_argument("--inner", nargs=2, metavar=("MODE", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner[0], int(args.inner[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    small, large = sorted(args.requests)
    if large - small < CONCURRENCY * 10:
        raise SystemExit("give two request counts at least 160 apart")
    with ThreadPoolExecutor(max_workers=len(MODES)) as pool:
        futures = {mode: pool.submit(per_request, mode, small, large) for mode in MODES}
        counts = {mode: future.result() for mode, future in futures.items()}
    plain = counts["plain"]
    print(f"POST /payments in-process, {CONCURRENCY} at a time, SQLite; instructions per request "
          f"({large:,} minus {small:,} requests):")
    print(f"  {'no key':<44} {plain:>10,.0f}")
    for mode, label in (("atomic", "unique key, atomic (payment commits with key)"),
                        ("claim", "unique key, claimed before the handler")):
        print(f"  {label:<44} {counts[mode]:>10,.0f}   added {counts[mode] - plain:>8,.0f}   "
              f"ratio {plain / counts[mode]:.3f}")
    print("  (ratio: no key / key, HTTP's share of the baseline left out)")

if __name__ == "__main__":
    main()
