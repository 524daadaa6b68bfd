"""The resource side's cost: the guard in front of a `GET`, and the Idempotency-Key layer in front of a `POST`.

Two pairs, each measured in the same run: uvicorn apps (benchmarks/guard_app.py) pinned to one core, wrk pinned to
the other; the apps of a pair are measured in alternation (A B, then B A, ...), so a change in the machine's speed
during the run weighs on both.

1. Guard: `GET /resource` (a small JSON answer) behind `GuardMiddleware(guard=Guard.remote(issuer))`, against the
   same app without it. A real `bankgate serve` (fresh data directory) grants one token (`POST /oauth/token`,
   Basic key:secret) and publishes the JWKS the guard fetches; every request reuses that token, as a client
   should. Target: protected req/s >= 0.90 of unprotected.
2. Idempotency: `POST /payments` (parse the JSON, validate, record the payment in a SQLite file with `PaymentBook`)
   behind `IdempotencyMiddleware(SqlIdempotencyStore)` on the same database, once with a unique
   `Idempotency-Key` per request and once with none (the middleware passes such requests through); each on a
   server and SQLite file of its own. The keyed route is `atomic`, as in the sandbox: the payment commits with its
   key. Target: with keys >= 0.80 of without, and the layer adds <= 40 us of server CPU to a keyed request. A
   third server claims each key before the handler runs (the way for any handler, `BENCH_ATOMIC=0`), a fourth
   (atomic) is sent the same 64 keys over and over, so that after the warm-up every request is a replay (target:
   <= 0.5 of a first request's server CPU), and if Redis answers on 127.0.0.1:6379 a fifth with
   `RedisIdempotencyStore` joins the rotation (no target).

Before measuring, it checks that the protected app answers 200 with the token and 401 without or with a forged
one, and that a repeated key is answered with `Idempotent-Replayed: true`; any non-2xx answer or socket error during
a run voids it (wrk's timeout is 30 s, so slow answers count in the latency instead of being dropped), and after
the payments runs each database must hold a payment (and, with keys, a key record) for every answer wrk counted, so
nothing was silently replayed. Prints req/s, p99 latency, the server's CPU time per request (read from /proc: on a
shared machine it shows what the ratio would be with a core to each side), the CPU the middleware adds to each
request (keyed minus unkeyed: a figure independent of how much the handler itself costs) and each ratio against its
target. Usage:

    python benchmarks/guard.py                        # both pairs, 2 rounds of 10 s runs
    python benchmarks/guard.py --duration 20 --rounds 3 --connections 32 --json results.json
    python benchmarks/guard.py --only guard           # or --only idempotency
    python benchmarks/guard.py --only server-guard --compare-src /tmp/old/src   # in process, see below
    python benchmarks/guard.py --only server-guard --metrics --rounds 5        # metrics on against off
    python benchmarks/guard.py --only layer --rounds 5 --compare-src /tmp/old/src  # in process, see below

`--only layer` measures the Idempotency-Key layer in process, without wrk or HTTP: the payments app of
`guard_app.py` on a SQLite file (atomic route, then claimed first) called directly, 16 requests at a time, CPU time
(`time.process_time`) per request of interleaved batches without a key, with unique keys, and of the same keys
again (replays); it prints what the layer adds to a keyed request (keyed minus no key) and a replay against a
first request, beside their targets (<= 40 us, <= 0.5). Each round runs in a fresh process; `--compare-src` as
below. On a shared host the figures move by a third from round to round: use several rounds.

`--only server-guard` measures, in process and without wrk, the per-request cost of `bankgate serve`'s own guard
(`Runtime.guard.authenticate`, the one in front of `/api/v1/whoami` and the sandbox payments) with a reused token,
while the deny lists hold 100 revoked clients: microseconds per call of the fastest of 50 batches of 1,000 calls (the
batch least disturbed by other processes), best and median over `--rounds` (default 2, use more) rounds, each in a
fresh process. With `--compare-src` the code at that `src` directory
(e.g. a worktree of an older commit) is measured in alternation with this one, so both see the same machine. With
`--metrics`, this code is also measured with Prometheus metrics on (`BANKGATE_METRICS=on`: every verdict counted),
in alternation with metrics off, and the ratio of the medians printed.

Needs `wrk` and `taskset` (Debian: apt-get install wrk util-linux) and two cores. Every process it starts is
stopped on the way out, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx

HERE = Path(__file__).resolve().parent
GUARD_TARGET = 0.90
IDEMPOTENCY_TARGET = 0.80
REDIS_URL = "redis://127.0.0.1:6379/0"
PAYMENT = json.dumps({"application_id": "app_1", "amount": "12.50", "currency": "EUR",
                      "reference": "Invoice 2026-001"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


class Processes:
    """The servers this run started; `stop` or leaving the `with` block stops them (SIGINT, then SIGKILL)."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], *, log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        self._running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self._running:
            self._running.remove(process)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(list(self._running)):
            self.stop(process)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before it was ready; see its log:\n"
                             + log.read_text(errors="replace")[-3000:])
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} not ready after {timeout} s")


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


class Target(NamedTuple):
    url: str
    lua: Callable[[], str]  # a fresh wrk script for each run
    pid: int  # the server's process, whose CPU time is read from /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(label: str, target: Target, args: argparse.Namespace, duration: int) -> dict[str, float]:
    """One wrk run; any non-2xx answer or socket error voids it. A slow answer counts in the latency: the
    timeout (30 s) is far above wrk's default of 2 s, past which wrk would drop it from the figures.

    Also the server's CPU time per request: on a shared machine other processes take turns on the server's
    core, which lowers req/s but not the CPU a request costs."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(target.lua())
    cpu_before = cpu_seconds(target.pid)
    try:
        done = subprocess.run(
            pinned(args.client_core, ["wrk", "-t1", f"-c{args.connections}", f"-d{duration}s", "--timeout", "30s",
                                      "--latency", "-s", script.name, target.url]),
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(script.name)
    cpu = cpu_seconds(target.pid) - cpu_before
    out = done.stdout
    if done.returncode != 0:
        raise SystemExit(f"{label}: wrk failed ({done.returncode}):\n{out}{done.stderr}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if non_2xx or socket_errors:
        what = f"{non_2xx.group(1)} non-2xx answers" if non_2xx else f"socket errors ({socket_errors.group(1)})"  # type: ignore[union-attr]
        raise SystemExit(f"{label}: wrk saw {what}; not a valid measurement:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _seconds(re.search(r"\s99%\s+(\S+)", out).group(1)) * 1000,  # type: ignore[union-attr]
        "requests": requests,
        "server_cpu_us_per_request": cpu / max(requests, 1) * 1e6,
        "server_cpu_share": cpu / duration,
    }


def alternate(label: str, targets: dict[str, Target], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """A 2 s warm-up of each app, then `args.rounds` rounds of one measured run per app, in reverse order every
    other round (A B, B A, ...), so that a change in the machine's speed weighs on every app alike. Each app's
    figures: mean req/s and median p99 over its runs, the runs, and the requests sent (warm-up included)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    sent = dict.fromkeys(targets, 0)
    for name, target in targets.items():
        sent[name] += int(run_wrk(f"{label}, {name} (warm-up)", target, args, 2)["requests"])
    names = list(targets)
    for turn in range(args.rounds):
        for name in names if turn % 2 == 0 else names[::-1]:
            figures = run_wrk(f"{label}, {name}", targets[name], args, args.duration)
            sent[name] += int(figures["requests"])
            runs[name].append(figures)
    return {
        name: {
            "requests_per_second": statistics.fmean(run["requests_per_second"] for run in runs[name]),
            "p99_ms": statistics.median(run["p99_ms"] for run in runs[name]),
            "server_cpu_us_per_request": statistics.median(run["server_cpu_us_per_request"] for run in runs[name]),
            "runs": runs[name],
            "requests_sent": sent[name],
        }
        for name in names
    }


def compare(subject: dict[str, Any], baseline: dict[str, Any], target: float | None) -> dict[str, Any]:
    """The ratio of mean req/s, and the ratios of each round's pair of runs (their spread shows the noise)."""
    ratio = subject["requests_per_second"] / baseline["requests_per_second"]
    rounds = [a["requests_per_second"] / b["requests_per_second"] for a, b in zip(subject["runs"], baseline["runs"],
                                                                              strict=True)]
    result: dict[str, Any] = {
        "ratio": ratio,
        "ratio_by_round": rounds,
        # What the ratio would be with the server's core to itself: CPU per request, baseline over subject.
        "cpu_ratio": baseline["server_cpu_us_per_request"] / subject["server_cpu_us_per_request"],
        # What the middleware adds to each request, in server CPU: the figure that does not depend on the handler.
        "added_cpu_us": subject["server_cpu_us_per_request"] - baseline["server_cpu_us_per_request"],
    }
    if target is not None:
        result.update(target=target, met=ratio >= target)
    return result


def get_lua(token: str) -> str:
    return f'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer {token}"\n'


REPLAY_KEYS = 64  # per wrk thread: the keys a replay run sends over and over


def post_lua(with_keys: bool, replay_prefix: str | None = None) -> str:
    """POST /payments; with `with_keys`, an Idempotency-Key unique to this script (a fresh one per wrk run), wrk
    thread and request; with `replay_prefix`, one of `REPLAY_KEYS` keys per thread, the same in every run (after
    the warm-up every request is a replay)."""
    key = 'wrk.headers["Idempotency-Key"] = prefix .. counter\n' if with_keys else ""
    if replay_prefix is not None:
        key = f'wrk.headers["Idempotency-Key"] = "{replay_prefix}-" .. tid .. "-" .. (counter % {REPLAY_KEYS})\n'
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = '{PAYMENT}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        "local threads = 0\n"
        "function setup(thread)\n"
        "  threads = threads + 1\n"
        '  thread:set("tid", threads)\n'
        "end\n"
        "function init(args)\n"
        f'  prefix = "{secrets.token_hex(8)}-" .. tid .. "-"\n'
        "  counter = 0\n"
        "end\n"
        "function request()\n"
        "  counter = counter + 1\n"
        f"  {key}"
        "  return wrk.format()\n"
        "end\n"
    )


@contextlib.contextmanager
def app_server(procs: Processes, args: argparse.Namespace, workdir: Path, name: str,
               env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """uvicorn serving `guard_app:app` (chosen by `env`) pinned to the server core; yields its base URL and pid."""
    port = free_port()
    log = workdir / f"{name}.log"
    process = procs.start(
        pinned(args.server_core, [sys.executable, "-m", "uvicorn", "guard_app:app", "--port", str(port),
                                  "--http", "httptools", "--loop", "uvloop", "--no-access-log",
                                  "--log-level", "warning"]),
        log=log, cwd=HERE, env={**os.environ, **env},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/", process, log)
        yield base, process.pid
    finally:
        procs.stop(process)
    if process.returncode not in (0, -signal.SIGINT):
        raise SystemExit(f"{name} exited with {process.returncode}; see its log:\n"
                         + log.read_text(errors="replace")[-3000:])


# -- 1. the guard ----------------------------------------------------------------------------------------------


def start_bankgate(
    procs: Processes, args: argparse.Namespace, workdir: Path
) -> tuple[subprocess.Popen[bytes], str, str]:
    """A fresh `bankgate serve` (on the load generator's core: it only answers the JWKS fetch during the runs)
    with one client; returns the process, its base URL and an access token for that client."""
    env = {**os.environ, "BANKGATE_DATA_DIR": str(workdir / "bankgate"), "BANKGATE_ENVIRONMENT": "sandbox"}
    bankgate = [sys.executable, "-m", "bankgate"]
    subprocess.run([*bankgate, "init"], env=env, check=True, capture_output=True)
    created = json.loads(subprocess.run(
        [*bankgate, "clients", "create", "--name", "bench", "--scope", "app_1", "--json"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout)
    port = free_port()
    log = workdir / "bankgate.log"
    server = procs.start(pinned(args.client_core, [*bankgate, "serve", "--port", str(port)]), log=log, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/.well-known/jwks.json", server, log)
    answer = httpx.post(base + "/oauth/token", auth=(created["api_key"], created["secret_key"]),
                        data={"grant_type": "client_credentials", "scope": "app_1"})
    if answer.status_code not in (200, 201):
        raise SystemExit(f"POST /oauth/token answered {answer.status_code}: {answer.text}")
    return server, base, str(answer.json()["access_token"])


def check_guard(base: str, token: str, *, protected: bool) -> None:
    url = base + "/resource"
    good = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    if good.status_code != 200 or good.json().get("id") != "acc_1":
        raise SystemExit(f"GET /resource with the token answered {good.status_code}: {good.text}")
    if protected:
        for headers in ({}, {"Authorization": "Bearer " + token[:-4] + "AAAA"}):
            refused = httpx.get(url, headers=headers)
            if refused.status_code != 401 or "www-authenticate" not in refused.headers:
                raise SystemExit(f"the protected app answered {refused.status_code} to {headers or 'no token'}; "
                                 "it must refuse with 401")


def guard_pair(procs: Processes, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    bankgate, issuer, token = start_bankgate(procs, args, workdir)
    try:
        with contextlib.ExitStack() as servers:
            script = functools.partial(get_lua, token)
            targets: dict[str, Target] = {}
            for name, env in (("protected", {"BENCH_APP": "guard", "BENCH_ISSUER": issuer}),
                              ("unprotected", {"BENCH_APP": "bare"})):
                base, pid = servers.enter_context(app_server(procs, args, workdir, f"guard-{name}", env))
                check_guard(base, token, protected=name == "protected")
                targets[name] = Target(base + "/resource", script, pid)
            runs = alternate("guard", targets, args)
    finally:
        procs.stop(bankgate)
    return {**runs, **compare(runs["protected"], runs["unprotected"], GUARD_TARGET)}


# -- 2. the Idempotency-Key layer ------------------------------------------------------------------------------


def fresh_database(path: Path) -> None:
    from bankgate.store import Store

    async def migrate() -> None:
        store = Store(f"sqlite+aiosqlite:///{path}")
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())


def check_replay(base: str) -> None:
    url = base + "/payments"
    headers = {"Content-Type": "application/json", "Idempotency-Key": "check-" + secrets.token_hex(8)}
    first = httpx.post(url, content=PAYMENT, headers=headers)
    again = httpx.post(url, content=PAYMENT, headers=headers)
    plain = httpx.post(url, content=PAYMENT, headers={"Content-Type": "application/json"})
    if first.status_code != 201 or "idempotent-replayed" in first.headers:
        raise SystemExit(f"the first keyed POST answered {first.status_code} {dict(first.headers)}: {first.text}")
    if again.headers.get("idempotent-replayed") != "true" or again.json().get("id") != first.json()["id"]:
        raise SystemExit(f"a repeated key was not replayed: {again.status_code} {dict(again.headers)} {again.text}")
    if plain.status_code != 201 or "idempotent-replayed" in plain.headers:
        raise SystemExit(f"a POST without a key answered {plain.status_code}: {plain.text}")


def count_rows(db: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def redis_reachable() -> bool:
    try:
        import redis

        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2) as client:
            return bool(client.ping())
    except Exception:
        return False


def redis_keys(prefix: str, *, delete: bool) -> int:
    import redis

    with redis.Redis.from_url(REDIS_URL, socket_timeout=10) as client:
        names = list(client.scan_iter(match=prefix + "*", count=1000))
        if delete:
            for start in range(0, len(names), 1000):
                client.delete(*names[start:start + 1000])
        return len(names)


def check_recorded(name: str, figures: dict[str, Any], db: Path, *, with_keys: bool, prefix: str | None) -> None:
    """Every answer wrk counted made its own payment (and, with keys, its own key record): nothing was replayed.
    The replay check made two payments and one key record; requests in flight when wrk stopped may add more."""
    sent = figures.pop("requests_sent")
    payments = count_rows(db, "payments") - 2
    records = (count_rows(db, "idempotency_keys") if prefix is None else redis_keys(prefix, delete=False)) - 1
    if payments < sent:
        raise SystemExit(f"{name}: wrk counted {sent} answers but only {payments} payments were recorded")
    if with_keys and records < sent:
        raise SystemExit(f"{name}: wrk counted {sent} answers but only {records} keys were recorded")
    if not with_keys and records != 0:
        raise SystemExit(f"{name}: requests without a key left {records} key records")
    figures["payments_recorded"] = payments


def check_replayed(figures: dict[str, Any], db: Path) -> None:
    """A replay run made no payment beyond the first request of each of its keys (and the replay check's two)."""
    figures.pop("requests_sent")
    payments = count_rows(db, "payments") - 2
    if payments > REPLAY_KEYS:  # wrk runs one thread
        raise SystemExit(f"replay: {payments} payments were recorded for {REPLAY_KEYS} keys; replays ran again")
    figures["payments_recorded"] = payments


def idempotency_pair(procs: Processes, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One server per kind of run, each on a fresh SQLite file of its own, all measured in alternation."""
    prefix = f"bankgate-bench:{secrets.token_hex(6)}:"
    kinds = {"sqlite_keyed": ("sql", True), "no_key": ("sql", False), "sqlite_claim_first": ("claim", True),
             "sqlite_replay": ("sql", True)}
    if not args.no_redis and redis_reachable():
        kinds["redis_keyed"] = (REDIS_URL, True)
    try:
        with contextlib.ExitStack() as servers:
            targets: dict[str, Target] = {}
            for name, (store, with_keys) in kinds.items():
                db = workdir / f"{name}.db"
                fresh_database(db)
                base, pid = servers.enter_context(app_server(
                    procs, args, workdir, f"idempotency-{name}",
                    {"BENCH_APP": "idempotency", "BENCH_DB": str(db),
                     "BENCH_IDEMPOTENCY_STORE": "sql" if store == "claim" else store,
                     "BENCH_ATOMIC": "0" if store == "claim" else "1", "BENCH_REDIS_PREFIX": prefix},
                ))
                check_replay(base)
                replaying = secrets.token_hex(8) if name == "sqlite_replay" else None
                targets[name] = Target(base + "/payments", functools.partial(post_lua, with_keys, replaying), pid)
            runs = alternate("idempotency", targets, args)
        for name, (store, with_keys) in kinds.items():
            if name == "sqlite_replay":
                check_replayed(runs[name], workdir / f"{name}.db")
                continue
            check_recorded(name, runs[name], workdir / f"{name}.db", with_keys=with_keys,
                           prefix=prefix if store == REDIS_URL else None)
    finally:
        if "redis_keyed" in kinds:
            redis_keys(prefix, delete=True)
    result: dict[str, Any] = {**runs, **compare(runs["sqlite_keyed"], runs["no_key"], IDEMPOTENCY_TARGET)}
    result["claim_first"] = compare(runs["sqlite_claim_first"], runs["no_key"], None)
    first, replay = runs["sqlite_keyed"], runs["sqlite_replay"]
    result["replay_ratio"] = replay["server_cpu_us_per_request"] / first["server_cpu_us_per_request"]
    if "redis_keyed" in runs:
        result["redis"] = compare(runs["redis_keyed"], runs["no_key"], None)
    return result


# -- report ------------------------------------------------------------------------------------------------------


def _line(label: str, figures: dict[str, Any]) -> str:
    each = ", ".join(f"{run['requests_per_second']:,.0f}" for run in figures["runs"])
    return (f"  {label:<34} {figures['requests_per_second']:>9,.0f} req/s   p99 {figures['p99_ms']:>6.1f} ms"
            f"   {figures['server_cpu_us_per_request']:>6,.0f} us CPU/req   (runs: {each})")


def _ratio(compared: dict[str, Any]) -> str:
    spread = ", ".join(f"{ratio:.2f}" for ratio in compared["ratio_by_round"])
    text = (f"  ratio {compared['ratio']:.3f} (by round: {spread}; "
            f"by server CPU per request: {compared['cpu_ratio']:.2f}; "
            f"added: {compared['added_cpu_us']:,.0f} us CPU/req)")
    if "target" in compared:
        text += f"   target >= {compared['target']:.2f}: {'met' if compared['met'] else 'NOT met'}"
    return text


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nuvicorn (httptools, uvloop) on core {args.server_core}; wrk 1 thread, {args.connections} connections "
          f"on core {args.client_core}; {args.rounds} rounds of {args.duration} s runs, alternating, after a 2 s "
          "warm-up; req/s: mean of the runs, p99 and server CPU per request: median")
    guard = results.get("guard")
    if guard:
        print("\n1. Guard: GET /resource, one Bearer token reused")
        print(_line("GuardMiddleware(Guard.remote)", guard["protected"]))
        print(_line("no middleware", guard["unprotected"]))
        print(_ratio(guard))
    idem = results.get("idempotency")
    if idem:
        print("\n2. Idempotency-Key: POST /payments, payment recorded in SQLite")
        print(_line("unique key, atomic, SQL store", idem["sqlite_keyed"]))
        print(_line("no key (passed through)", idem["no_key"]))
        print(_ratio(idem))
        print(f"  layer adds {idem['added_cpu_us']:,.0f} us CPU per keyed request "
              f"(target <= {LAYER_TARGET_US:.0f}: {'met' if idem['added_cpu_us'] <= LAYER_TARGET_US else 'NOT met'})")
        print(_line("same keys again (replays), atomic", idem["sqlite_replay"]))
        print(f"  replay / first request by server CPU: {idem['replay_ratio']:.2f} "
              f"(target <= {REPLAY_TARGET}: {'met' if idem['replay_ratio'] <= REPLAY_TARGET else 'NOT met'})")
        print(_line("unique key, claimed first, SQL", idem["sqlite_claim_first"]))
        print(_ratio(idem["claim_first"]) + "   (claimed before the handler, against no key; no target)")
        if "redis" in idem:
            print(_line("unique key, RedisIdempotencyStore", idem["redis_keyed"]))
            print(_ratio(idem["redis"]) + "   (Redis against no key; no target)")
        else:
            print("  (Redis store not measured: no Redis on 127.0.0.1:6379, or --no-redis)")


SERVER_GUARD_CALLS = 1_000
SERVER_GUARD_BATCHES = 50


def server_guard_round(revoked: int = 100) -> float:
    """One round in this process: microseconds per `authenticate` of the server's guard with a reused token."""
    from bankgate.config import load_settings
    from bankgate.runtime import Runtime
    from bankgate.services import Services

    async def run(data_dir: Path) -> float:
        settings = load_settings(data_dir=data_dir)
        services = await Services.open(settings, initialise=True)
        await services.init()
        client = await services.clients.create("bench", ["app_1"])
        for n in range(revoked):
            other = await services.clients.create(f"revoked {n}", ["app_1"])
            await services.clients.revoke(other.client.api_key)
        await services.close()
        runtime = await Runtime.start(settings, "http://bench.test")
        try:
            token = runtime.tokens.issue(client_id=client.client.id, scope=("app_1",), ttl=3600).access_token
            scope = {"type": "http", "method": "GET", "path": "/resource", "client": ("127.0.0.1", 40000),
                     "headers": [(b"host", b"bench.test"), (b"authorization", f"Bearer {token}".encode())]}
            guard = runtime.guard
            for _ in range(2000):  # verified once, then remembered; warm the allow-list decision too
                await guard.authenticate(scope)
            best = float("inf")
            for _ in range(SERVER_GUARD_BATCHES):  # the fastest batch: the least disturbed by other processes
                started = time.perf_counter()
                for _ in range(SERVER_GUARD_CALLS):
                    await guard.authenticate(scope)
                best = min(best, (time.perf_counter() - started) / SERVER_GUARD_CALLS * 1e6)
            return best
        finally:
            await runtime.stop()

    with tempfile.TemporaryDirectory(prefix="bankgate-server-guard-") as tmp:
        return asyncio.run(run(Path(tmp)))


def server_guard(args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of `server_guard_round`, each in a fresh process, this code and `--compare-src` in alternation."""
    sources: dict[str, str | None] = {"this code": None}
    if args.compare_src:
        sources = {"compared": str(args.compare_src), "this code": None}
    if args.metrics:
        sources["this code, metrics on"] = None
    figures: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(args.rounds):
        for name, src in sources.items():
            env = {**os.environ, "PYTHONPATH": src} if src else dict(os.environ)
            env["BANKGATE_METRICS"] = "on" if name.endswith("metrics on") else "off"
            out = subprocess.run([sys.executable, __file__, "--server-guard-round"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            figures[name].append(float(out.strip().splitlines()[-1]))
    results = {name: {"us_per_call": values, "best": min(values), "median": statistics.median(values)}
               for name, values in figures.items()}
    for name, result in results.items():
        print(f"server guard, {name}: best {result['best']:.2f} us, median {result['median']:.2f} us per call "
              f"({', '.join(f'{v:.2f}' for v in result['us_per_call'])})")
    if args.compare_src:
        delta = results["this code"]["median"] - results["compared"]["median"]
        print(f"server guard: this code minus compared: {delta:+.2f} us per call (median), "
              f"{results['this code']['best'] - results['compared']['best']:+.2f} us (best)")
    if args.metrics:
        on, off = results["this code, metrics on"], results["this code"]
        print(f"server guard, metrics on/off: {on['median'] / off['median']:.3f} (median), "
              f"{on['best'] / off['best']:.3f} (best); {on['median'] - off['median']:+.2f} us per call (median)")
    return results


# -- 3. the Idempotency-Key layer in process: CPU per request -------------------------------------------------

LAYER_TARGET_US = 40.0  # server CPU the layer may add to a keyed request
REPLAY_TARGET = 0.5  # a replay's CPU against a first request's
LAYER_BATCH = 800  # requests per measured batch, 16 at a time
LAYER_CYCLES = 7  # batches of each kind per round, interleaved
LAYER_CONCURRENCY = 16
LAYER_KINDS = ("no_key", "keyed", "replay")


async def _layer_round(workdir: Path) -> dict[str, dict[str, float]]:
    """The payments app of `guard_app` (atomic route, and claimed first) driven in process, without HTTP:
    CPU per request (`time.process_time`) of batches without a key, with a unique key, and of replays of the
    previous keyed batch, interleaved; the median batch of each kind."""
    sys.path.insert(0, str(HERE))
    os.environ["BENCH_APP"] = "bare"  # the module's own app: not used here
    import guard_app

    results: dict[str, dict[str, float]] = {}
    for route, atomic in (("atomic", "1"), ("claim_first", "0")):
        database = workdir / f"{route}.db"
        await _migrated(database)
        os.environ.update(BENCH_DB=str(database), BENCH_IDEMPOTENCY_STORE="sql", BENCH_ATOMIC=atomic)
        results[route] = await _layer_route(guard_app.payments_app(), route)
    return results


async def _layer_route(app: Any, route: str) -> dict[str, float]:
    body = PAYMENT.encode()
    statuses: dict[int, int] = {}
    replayed = 0

    async def one(key: bytes | None) -> None:
        headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        if key is not None:
            headers.append((b"idempotency-key", key))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/payments", "raw_path": b"/payments", "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000), "state": {}}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal replayed
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1
                replayed += (b"idempotent-replayed", b"true") in message["headers"]

        await app(scope, receive, send)

    async def caller(part: list[bytes | None]) -> None:
        for key in part:
            await one(key)

    async def batch(keys: list[bytes | None]) -> float:
        share = len(keys) // LAYER_CONCURRENCY
        started = time.process_time()
        await asyncio.gather(*(caller(keys[n * share:(n + 1) * share]) for n in range(LAYER_CONCURRENCY)))
        return (time.process_time() - started) / len(keys) * 1e6

    lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await lifespan_in.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                       lifespan_in.get, lifespan_out.put))
    await lifespan_out.get()
    figures: dict[str, list[float]] = {kind: [] for kind in LAYER_KINDS}
    no_keys: list[bytes | None] = [None] * LAYER_BATCH
    warm: list[bytes | None] = [f"warm-{n}".encode() for n in range(LAYER_BATCH)]
    for keys in (no_keys, warm, warm):
        await batch(keys)
    replayed = 0
    for cycle in range(LAYER_CYCLES):
        keys: list[bytes | None] = [f"{cycle}-{n}".encode() for n in range(LAYER_BATCH)]
        figures["no_key"].append(await batch(no_keys))
        figures["keyed"].append(await batch(keys))
        figures["replay"].append(await batch(keys))
    await lifespan_in.put({"type": "lifespan.shutdown"})
    await lifespan_out.get()
    await lifespan
    if set(statuses) != {201} or replayed != LAYER_CYCLES * LAYER_BATCH:
        raise SystemExit(f"{route}: the app answered {statuses} with {replayed} replays; the figures would be "
                         "of something else")
    return {kind: statistics.median(values) for kind, values in figures.items()}


async def _migrated(path: Path) -> None:
    from bankgate.store import Store

    store = Store(f"sqlite+aiosqlite:///{path}")
    try:
        await store.migrate()
    finally:
        await store.close()


def layer_round() -> dict[str, dict[str, float]]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bankgate-layer-") as tmp:
        return uvloop.run(_layer_round(Path(tmp)))


def layer_cpu(args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of `layer_round`, each in a fresh process, this code and `--compare-src` in alternation."""
    sources: dict[str, str | None] = {"this code": None}
    if args.compare_src:
        sources = {"compared": str(args.compare_src), "this code": None}
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in sources}
    for _ in range(args.rounds):
        for name, src in sources.items():
            env = {**os.environ, "PYTHONPATH": src} if src else dict(os.environ)
            out = subprocess.run([sys.executable, __file__, "--layer-round"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            rounds[name].append(json.loads(out.strip().splitlines()[-1]))
    print(f"\n3. Idempotency-Key layer in process (no HTTP): POST /payments on SQLite, {LAYER_CONCURRENCY} at a "
          f"time; CPU per request (time.process_time), median of {LAYER_CYCLES} interleaved batches of "
          f"{LAYER_BATCH}; {args.rounds} rounds, each in a fresh process")
    results: dict[str, Any] = {}
    for name, measured in rounds.items():
        results[name] = {}
        for route in ("atomic", "claim_first"):
            figures = {kind: statistics.median(r[route][kind] for r in measured) for kind in LAYER_KINDS}
            added = figures["keyed"] - figures["no_key"]
            replay = figures["replay"] / figures["keyed"]
            results[name][route] = {**figures, "added_us": added, "replay_ratio": replay,
                                    "rounds": [r[route] for r in measured]}
            label = "atomic route" if route == "atomic" else "claimed first"
            print(f"  {name:<10} {label:<14} no key {figures['no_key']:6.1f} us   first (unique key) "
                  f"{figures['keyed']:6.1f} us   replay {figures['replay']:6.1f} us")
            added_verdict = f"target <= {LAYER_TARGET_US:.0f}: {'met' if added <= LAYER_TARGET_US else 'NOT met'}"
            replay_verdict = f"target <= {REPLAY_TARGET}: {'met' if replay <= REPLAY_TARGET else 'NOT met'}"
            print(f"  {'':<10} {'':<14} layer adds {added:5.1f} us CPU per keyed request ({added_verdict}); "
                  f"replay / first {replay:.2f} ({replay_verdict})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measured run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="measured runs per app, alternating (default 2)")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--only", choices=["guard", "idempotency", "server-guard", "layer"],
                        help="measure one part only")
    parser.add_argument("--compare-src", type=Path, help="server-guard: also measure the code in this src directory")
    parser.add_argument("--metrics", action="store_true", help="server-guard: also measure with Prometheus metrics on")
    parser.add_argument("--server-guard-round", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layer-round", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis store even if Redis answers")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.server_guard_round:
        print(f"{server_guard_round():.4f}")
        return
    if args.layer_round:
        print(json.dumps(layer_round()))
        return
    if args.only == "layer":
        results = layer_cpu(args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return
    if args.only == "server-guard":
        results = server_guard(args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install wrk util-linux)")
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results: dict[str, Any] = {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections}
    try:
        with tempfile.TemporaryDirectory(prefix="bankgate-guard-bench-") as tmp, Processes() as procs:
            workdir = Path(tmp)
            if args.only in (None, "guard"):
                results["guard"] = guard_pair(procs, args, workdir)
            if args.only in (None, "idempotency"):
                results["idempotency"] = idempotency_pair(procs, args, workdir)
    except KeyboardInterrupt:
        raise SystemExit("interrupted; the servers it started are stopped") from None
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
