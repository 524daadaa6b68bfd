"""The certificate style under load: `GET /api/v1/authorizations/authorize` over mutual TLS with keep-alive, and what
a password-guessing attacker can make the server do while legitimate clients keep asking for tokens.

The server (`bankgate serve --tls`, issuance rate limit off) runs pinned to one core; the load generators
(benchmarks/loadgen.py, which can present a client certificate, unlike wrk) run on the other. In the same run:

* `openssl speed rsa2048` signs/s on the server's core: the ceiling of an RS256 token endpoint;
* argon2id verifications/s on that core (bankgate's password hasher, parameters as configured): the work an
  unthrottled password guesser could force per core.

Scenarios:
1. legitimate: 16 connections asking for tokens with the right password -> tokens/s, p99, ratio to openssl;
2. attack: an attacker holding a stolen certificate guesses passwords from 127.0.0.2 (16 connections) while a
   legitimate client on 127.0.0.1 (4 connections) keeps asking -> the argon2 verifications/s the attacker forces
   (every 401 costs one), how many guesses were refused unchecked (429), and the legitimate p99.

    python benchmarks/authorize_endpoint.py --duration 10
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from token_endpoint import free_port, openssl_rsa_signs, pinned, stop

HERE = Path(__file__).resolve().parent
PASSWORD = "Blue-Harbour-7-Lantern"  # noqa: S105 - a benchmark user's password


def _cli(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "bankgate", *args, "--json"], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def argon2_verifications_per_second(core: int, seconds: float = 3.0) -> float:
    code = (
        "import time\n"
        "from argon2 import PasswordHasher\n"
        "h = PasswordHasher(); stored = h.hash('x' * 20); n = 0; t = time.perf_counter()\n"
        f"while time.perf_counter() - t < {seconds}:\n"
        "    h.verify(stored, 'x' * 20); n += 1\n"
        "print(n / (time.perf_counter() - t))\n"
    )
    out = subprocess.run(pinned(core, [sys.executable, "-c", code]), capture_output=True, text=True, check=True)
    return float(out.stdout)


def _load(core: int, url: str, authorization: str, tls: dict[str, str], connections: int, duration: float,
          source_ip: str | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, str(HERE / "loadgen.py"), url, "-H", f"Authorization: {authorization}",
            "-c", str(connections), "-d", str(duration), "--cafile", tls["ca"], "--cert", tls["cert"],
            "--key", tls["key"]]
    if source_ip:
        argv += ["--source-ip", source_ip]
    return subprocess.Popen(pinned(core, argv), stdout=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=600)
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    signs = openssl_rsa_signs(args.server_core, 3)
    argon2_rate = argon2_verifications_per_second(args.server_core)
    results: dict[str, Any] = {"openssl_rsa2048_signs_per_second": signs,
                               "argon2id_verifications_per_second_per_core": argon2_rate}
    with tempfile.TemporaryDirectory(prefix="bankgate-bench-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "BANKGATE_DATA_DIR": str(work / "data"), "BANKGATE_ISSUANCE_RATE_LIMIT": "0"}
        subprocess.run([sys.executable, "-m", "bankgate", "init"], env=env, check=True, capture_output=True)
        user = _cli(env, "users", "create", "--name", "Benchmark User")
        _cli(env, "users", "reset-password", user["username"], "--passphrase", user["initial_passphrase"],
             "--new-password", PASSWORD)
        cert = _cli(env, "certs", "issue", user["username"], "--out", str(work / "certs"))
        subprocess.run([sys.executable, "-m", "bankgate", "ca-cert", "--out", str(work / "ca.pem")], env=env,
                       check=True, capture_output=True)
        tls = {"ca": str(work / "ca.pem"), "cert": str(work / "certs" / f"{cert['serial']}.crt.pem"),
               "key": str(work / "certs" / f"{cert['serial']}.key.pem")}
        good = "Basic " + base64.b64encode(f"{user['username']}:{PASSWORD}".encode()).decode()
        bad = "Basic " + base64.b64encode(f"{user['username']}:Not-The-Password-1".encode()).decode()

        port = free_port()
        log = (work / "server.log").open("wb")
        server = subprocess.Popen(
            pinned(args.server_core, [sys.executable, "-m", "bankgate", "serve", "--tls", "--port", str(port)]),
            env=env, stdout=log, stderr=log,
        )
        url = f"https://localhost:{port}/api/v1/authorizations/authorize"
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                probe = _result(_load(args.client_core, url, good, tls, 1, 0.5))
                if probe["statuses"].get("200"):
                    break
                time.sleep(0.3)
            _result(_load(args.client_core, url, good, tls, 16, 2))  # warm-up
            legit = _result(_load(args.client_core, url, good, tls, 16, args.duration))
            legit["ratio_to_openssl"] = legit["requests_per_second"] / signs
            results["legitimate"] = legit

            attacker = _load(args.client_core, url, bad, tls, 16, args.duration, source_ip="127.0.0.2")
            during = _load(args.client_core, url, good, tls, 4, args.duration, source_ip="127.0.0.1")
            attack, legit_during = _result(attacker), _result(during)
            attack["argon2_verifications_forced_per_second"] = attack["statuses"].get("401", 0) / args.duration
            results["attack"] = {"attacker": attack, "legitimate_during_attack": legit_during}
        finally:
            stop(server)

    legit, attack = results["legitimate"], results["attack"]
    print(f"\nopenssl speed rsa2048 on core {args.server_core}: {signs:,.0f} signs/s; "
          f"argon2id verify: {argon2_rate:,.1f}/s per core")
    print(f"authorize over mTLS, keep-alive, 16 connections: {legit['requests_per_second']:,.0f} tokens/s, "
          f"p99 {legit['p99_ms']:.1f} ms, ratio to openssl {legit['ratio_to_openssl']:.2f}, "
          f"statuses {legit['statuses']}")
    a, d = attack["attacker"], attack["legitimate_during_attack"]
    print(f"attack from 127.0.0.2 (stolen certificate, wrong passwords): {a['requests']} guesses, "
          f"statuses {a['statuses']}, argon2 verifications forced: {a['argon2_verifications_forced_per_second']:.2f}/s")
    print(f"legitimate client on 127.0.0.1 meanwhile: {d['requests_per_second']:,.0f} tokens/s, "
          f"p99 {d['p99_ms']:.1f} ms, statuses {d['statuses']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
