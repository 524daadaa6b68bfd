"""Token endpoint throughput: `POST /oauth/token` on one core, driven by wrk from the other.

In the same run it measures the two yardsticks on the server's core:
* `openssl speed rsa2048` signatures/s: the physical limit of an RS256 token endpoint;
* a bare Starlette + PyJWT endpoint (benchmarks/baseline_app.py) that signs the same kind of token with no
  authentication, storage or audit: the cost of the HTTP stack alone.

Prints tokens/s, p99 latency and the ratios. With `--metrics`, each algorithm is also measured with Prometheus
metrics on (`BANKGATE_METRICS=on`): two servers, metrics off and on, measured in alternation (off on, on off, ...)
for `--rounds` rounds, on `POST /oauth/token` and on `GET /api/v1/whoami` with a token (the server's guard in front
of a route), and each ratio on/off printed; `--with-logs` adds the JSON access log (`--log-format json
--access-log`) to the server with metrics on, so the ratio is of metrics and logging against neither. Usage:

    python benchmarks/token_endpoint.py                 # RS256 and ES256, 10 s each
    python benchmarks/token_endpoint.py --alg ES256 --duration 20 --json results.json
    python benchmarks/token_endpoint.py --alg RS256 --no-baseline --metrics --duration 3 --rounds 2
    python benchmarks/token_endpoint.py --alg RS256 --no-baseline --metrics --with-logs --duration 3 --rounds 4

Needs `wrk` and `taskset` (Debian: apt-get install wrk util-linux) and two cores.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
TARGETS = {"RS256": ("ratio_to_openssl", 0.70), "ES256": ("tokens_per_second", 3500.0)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before it was ready")
        try:
            httpx.post(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} not ready after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run_wrk(
    url: str, authorization: str, *, core: int, duration: int, connections: int, get: bool = False
) -> dict[str, float]:
    """POST a token request to `url` (or with `get`, a GET with `authorization` alone) for `duration` seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if get:
            script.write(f'wrk.headers["Authorization"] = "{authorization}"\n')
        else:
            script.write(
                'wrk.method = "POST"\n'
                'wrk.body = "grant_type=client_credentials&scope=app_1"\n'
                'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
                f'wrk.headers["Authorization"] = "{authorization}"\n'
            )
    try:
        out = subprocess.run(
            pinned(core, ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        raise SystemExit(f"wrk saw failures; not a valid measurement:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"tokens_per_second": rps, "p99_ms": p99 * 1000, "requests": requests}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def openssl_rsa_signs(core: int, seconds: int) -> float:
    out = subprocess.run(
        pinned(core, ["openssl", "speed", "-seconds", str(seconds), "rsa2048"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # "rsa 2048 bits 0.000296s 0.000016s   3382.7  61811.7": sign/s is the first rate.
    match = re.search(r"rsa\s+2048 bits\s+\S+\s+\S+\s+([\d.]+)", out)
    if not match:
        raise SystemExit(f"could not read openssl speed output:\n{out}")
    return float(match.group(1))


def start_bankgate(
    alg: str, args: argparse.Namespace, workdir: Path, *, metrics: str = "off"
) -> tuple[subprocess.Popen[bytes], str, str]:
    """A `bankgate serve` on the server's core with a fresh data directory and one client: (process, token URL,
    the client's Authorization header), once it answers."""
    data_dir = workdir / f"data-{alg}-metrics-{metrics}"
    env = {
        **os.environ,
        "BANKGATE_DATA_DIR": str(data_dir),
        "BANKGATE_SIGNING_ALG": alg,
        "BANKGATE_ENVIRONMENT": "sandbox",
        "BANKGATE_ISSUANCE_RATE_LIMIT": "0",  # one client asking thousands of times a second is the point here
        "BANKGATE_METRICS": metrics,
    }
    bankgate = [sys.executable, "-m", "bankgate"]
    subprocess.run([*bankgate, "init"], env=env, check=True, capture_output=True)
    created = json.loads(
        subprocess.run(
            [*bankgate, "clients", "create", "--name", "benchmark", "--scope", "app_1", "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    authorization = "Basic " + base64.b64encode(f"{created['api_key']}:{created['secret_key']}".encode()).decode()
    port = free_port()
    log = (workdir / f"server-{alg}-metrics-{metrics}.log").open("wb")
    # --with-logs: the server with metrics on also writes the JSON access log (a line per request, to a file)
    logs = ["--log-format", "json", "--access-log"] if metrics == "on" and getattr(args, "with_logs", False) else []
    server = subprocess.Popen(
        pinned(args.server_core, [*bankgate, "serve", "--port", str(port), *logs]), env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/oauth/token"
    try:
        wait_healthy(url, server)
    except BaseException:
        stop(server)
        raise
    return server, url, authorization


def measure_bankgate(alg: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    server, url, authorization = start_bankgate(alg, args, workdir)
    try:
        run_wrk(url, authorization, core=args.client_core, duration=2, connections=args.connections)  # warm-up
        return run_wrk(url, authorization, core=args.client_core, duration=args.duration, connections=args.connections)
    finally:
        stop(server)


def measure_metrics(alg: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Metrics off and on, two servers measured in alternation (off on, on off, ...), so a change in the machine's
    speed weighs on both: `POST /oauth/token`, and `GET /api/v1/whoami` with a token (the server's guard in front
    of a route). Requests/s of each (mean over the rounds), the server's CPU time per request (read from /proc: on a
    shared machine other processes take turns on the server's core, which lowers req/s but not the CPU a request
    costs) and the ratios on/off."""
    servers = {metrics: start_bankgate(alg, args, workdir, metrics=metrics) for metrics in ("off", "on")}
    results: dict[str, Any] = {}
    try:
        bearers = {}
        for metrics, (_, url, authorization) in servers.items():
            answer = httpx.post(url, data={"grant_type": "client_credentials"},
                                headers={"Authorization": authorization})
            bearers[metrics] = "Bearer " + answer.json()["access_token"]
        for endpoint in ("token", "whoami"):
            runs: dict[str, list[float]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [], "on": []}

            def run(metrics: str, duration: int, endpoint: str = endpoint) -> tuple[float, float]:
                server, url, authorization = servers[metrics]
                if endpoint == "whoami":
                    url, authorization = url.replace("/oauth/token", "/api/v1/whoami"), bearers[metrics]
                before = cpu_seconds(server.pid)
                figures = run_wrk(url, authorization, core=args.client_core, duration=duration,
                                  connections=args.connections, get=endpoint == "whoami")
                used = cpu_seconds(server.pid) - before
                return figures["tokens_per_second"], used / max(figures["requests"], 1) * 1e6

            for metrics in servers:
                run(metrics, 2)  # warm-up
            for turn in range(args.rounds):
                for metrics in ("off", "on") if turn % 2 == 0 else ("on", "off"):
                    rate, cpu_us = run(metrics, args.duration)
                    runs[metrics].append(rate)
                    cpu[metrics].append(cpu_us)
            off, on = sum(runs["off"]) / len(runs["off"]), sum(runs["on"]) / len(runs["on"])
            cpu_off, cpu_on = sum(cpu["off"]) / len(cpu["off"]), sum(cpu["on"]) / len(cpu["on"])
            results[endpoint] = {"metrics_off_per_second": off, "metrics_on_per_second": on, "ratio": on / off,
                                 "ratio_by_round": [b / a for a, b in zip(runs["off"], runs["on"], strict=True)],
                                 "cpu_us_per_request_off": cpu_off, "cpu_us_per_request_on": cpu_on,
                                 "cpu_ratio": cpu_on / cpu_off}
    finally:
        for server, _, _ in servers.values():
            stop(server)
    return results


def measure_baseline(alg: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        pinned(
            args.server_core,
            [sys.executable, "-m", "uvicorn", "baseline_app:app", "--port", str(port), "--no-access-log",
             "--log-level", "warning"],
        ),
        cwd=HERE,
        env={**os.environ, "BASELINE_ALG": alg},
    )
    url = f"http://127.0.0.1:{port}/oauth/token"
    try:
        wait_healthy(url, server)
        run_wrk(url, "Basic eDp5", core=args.client_core, duration=2, connections=args.connections)
        return run_wrk(url, "Basic eDp5", core=args.client_core, duration=args.duration, connections=args.connections)
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alg", action="append", choices=["RS256", "ES256", "EdDSA"], help="repeatable")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare Starlette baseline")
    parser.add_argument("--metrics", action="store_true", help="also measure with Prometheus metrics on against "
                        "off, in alternation, and print the ratio")
    parser.add_argument("--with-logs", action="store_true", help="--metrics: the server with metrics on also "
                        "writes the JSON access log (--log-format json --access-log): metrics and logging against "
                        "neither")
    parser.add_argument("--rounds", type=int, default=2, help="--metrics: measured runs of each server (default 2)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    for tool in ("wrk", "taskset", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install wrk util-linux openssl)")

    signs = openssl_rsa_signs(args.server_core, 3)
    results: dict[str, Any] = {"openssl_rsa2048_signs_per_second": signs, "algorithms": {}}
    with tempfile.TemporaryDirectory(prefix="bankgate-bench-") as tmp:
        for alg in args.alg or ["RS256", "ES256"]:
            figures = measure_bankgate(alg, args, Path(tmp))
            figures["ratio_to_openssl"] = figures["tokens_per_second"] / signs
            if not args.no_baseline and alg in ("RS256", "ES256"):
                baseline = measure_baseline(alg, args)
                figures["baseline_tokens_per_second"] = baseline["tokens_per_second"]
                figures["ratio_to_baseline"] = figures["tokens_per_second"] / baseline["tokens_per_second"]
            results["algorithms"][alg] = figures
            if args.metrics:
                results.setdefault("metrics", {})[alg] = measure_metrics(alg, args, Path(tmp))
    # openssl again at the end, so a drift in the machine's speed during the run shows.
    results["openssl_rsa2048_signs_per_second_after"] = openssl_rsa_signs(args.server_core, 3)

    print(f"\nopenssl speed rsa2048 on core {args.server_core}: {signs:,.0f} signs/s "
          f"(after the run: {results['openssl_rsa2048_signs_per_second_after']:,.0f})")
    print(f"wrk: 1 thread, {args.connections} connections, {args.duration} s, on core {args.client_core}\n")
    print(f"{'alg':<6} {'tokens/s':>10} {'p99 ms':>8} {'/openssl':>9} {'baseline':>10} {'/baseline':>10}  target")
    for alg, f in results["algorithms"].items():
        target = TARGETS.get(alg)
        verdict = ""
        if target:
            key, goal = target
            verdict = f"{key} >= {goal:g}: {'met' if f[key] >= goal else 'NOT met'}"
        baseline = f.get("baseline_tokens_per_second", float("nan"))
        print(
            f"{alg:<6} {f['tokens_per_second']:>10,.0f} {f['p99_ms']:>8.1f} {f['ratio_to_openssl']:>9.2f} "
            f"{baseline:>10,.0f} {f.get('ratio_to_baseline', float('nan')):>10.2f}  {verdict}"
        )
    for alg, endpoints in results.get("metrics", {}).items():
        for endpoint, f in endpoints.items():
            spread = ", ".join(f"{ratio:.3f}" for ratio in f["ratio_by_round"])
            print(f"{alg} {endpoint:<6} metrics off {f['metrics_off_per_second']:>8,.0f} req/s, on "
                  f"{f['metrics_on_per_second']:>8,.0f} req/s, ratio on/off {f['ratio']:.3f} (by round: {spread}); "
                  f"server CPU per request off {f['cpu_us_per_request_off']:,.0f} us, on "
                  f"{f['cpu_us_per_request_on']:,.0f} us, ratio {f['cpu_ratio']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
