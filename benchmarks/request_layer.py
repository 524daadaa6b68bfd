"""What the outer request layer (`bankgate.request_layer`) adds to every request, in process: a bare ASGI endpoint,
the same behind the layer with no sink wanting `http.request` (request id, `X-Request-Id`, log context), and with
one sink (the event built and told). Rounds alternate; prints the median microseconds per request and the layer's
cost over the bare endpoint of the same run. With `--instructions`, counts CPU instructions per request instead,
with valgrind's callgrind (two request counts per configuration, their difference: start-up cancels out), a figure
a noisy shared host cannot blur. Usage:

    python benchmarks/request_layer.py [--requests 100000] [--rounds 5]
    python benchmarks/request_layer.py --instructions      # ~1 min; needs valgrind
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

from bankgate.events import AuditEvent, Events
from bankgate.net import TrustedProxies
from bankgate.request_layer import RequestLayer
from bankgate.routenames import RouteNames

HEADERS = [(b"host", b"bankgate.test"), (b"authorization", b"Basic eDp5"), (b"content-type", b"application/json"),
           (b"content-length", b"29"), (b"user-agent", b"bench"), (b"accept", b"*/*")]


async def endpoint(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _send(message: Any) -> None:
    return None


async def _receive() -> Any:
    return {"type": "http.request", "body": b""}


class Discard:
    def wants(self, event: str) -> bool:
        return True

    def record(self, event: AuditEvent) -> None:
        return None


async def per_request(app: Any, requests: int) -> float:
    scope = {"type": "http", "method": "POST", "path": "/oauth/token", "headers": HEADERS,
             "client": ("127.0.0.1", 50000)}
    started = time.perf_counter()
    for _ in range(requests):
        await app(dict(scope), _receive, _send)
    return (time.perf_counter() - started) / requests * 1e6


def configurations() -> dict[str, Any]:
    routes = RouteNames(["/oauth/token", "/admin/v1/clients/{api_key}"])
    quiet = RequestLayer(endpoint, SimpleNamespace(runtime=SimpleNamespace(proxies=TrustedProxies(),
                                                                           events=Events())), routes)
    told = RequestLayer(endpoint, SimpleNamespace(runtime=SimpleNamespace(proxies=TrustedProxies(),
                                                                          events=Events([Discard()]))), routes)
    return {"bare endpoint": endpoint, "layer, no sink": quiet, "layer, one sink": told}


def instructions(name: str, requests: int) -> int:
    """Instructions of one whole run of configuration `name` under callgrind."""
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                           __file__, "--inner", name, "--requests", str(requests)],
                          capture_output=True, text=True, check=False)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the run under valgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def count_instructions(small: int = 2000, large: int = 6000) -> None:
    figures = {name: (instructions(name, large) - instructions(name, small)) / (large - small)
               for name in configurations()}
    bare = figures["bare endpoint"]
    for name, value in figures.items():
        print(f"{name:16} {value:8,.0f} instructions per request (+{value - bare:,.0f} over the bare endpoint)")


async def main(args: argparse.Namespace) -> None:
    apps = configurations()
    if args.inner:
        await per_request(apps[args.inner], args.requests)
        return
    figures: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):
        for name, app in apps.items():
            figures[name].append(await per_request(app, args.requests))
    bare = statistics.median(figures["bare endpoint"])
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"{name:16} {median:6.2f} us per request (+{median - bare:.2f} us over the bare endpoint)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count instructions with valgrind instead")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.instructions:
        count_instructions()
    else:
        asyncio.run(main(arguments))
