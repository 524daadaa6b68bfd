"""Start-up cost: what a server (or a `bankgate` command) pays before it answers, on an initialised SQLite file.

Times, in the same run:

* `Services.open` on the initialised database (settings, engine, schema check against the migration scripts);
* the same, then `services.keys.load()`: the signing keys as every runtime loads them at start (a new `Services`
  each time, so nothing is cached), the active RSA key decrypted from the vault and parsed;
* the baseline: the same DER parsed by cryptography with OpenSSL's RSA key check (both primes tested), which is
  what loading the key cost before the vault's authenticated decryption was trusted to vouch for it.

Prints the median and best of `--runs` timings (ms) and the ratio of the key load to the baseline. Usage:

    python benchmarks/startup.py            # 21 runs each
    python benchmarks/startup.py --runs 51
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bankgate.config import load_settings
from bankgate.services import Services


async def _timed(runs: int, job: Callable[[], Awaitable[object]]) -> list[float]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        await job()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        settings = load_settings(data_dir=Path(directory))
        services = await Services.open(settings, initialise=True)
        try:
            await services.keys.ensure_active("RS256", retire_publish_for=0)  # what `init` and `serve` make sure of
        finally:
            await services.close()

        async def open_close(load: bool) -> None:
            opened = await Services.open(settings)
            try:
                if load:
                    await opened.keys.load()
            finally:
                await opened.close()

        opening = await _timed(runs, lambda: open_close(False))
        opened_loaded = await _timed(runs, lambda: open_close(True))
        loading = [max(0.0, both - alone) for both, alone in zip(opened_loaded, sorted(opening), strict=True)]

    der = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    async def checked() -> None:
        serialization.load_der_private_key(der, password=None)

    baseline = await _timed(runs, checked)
    for name, timings in (("Services.open + close", opening), ("Services.open + keys.load + close", opened_loaded),
                          ("keys.load (the difference)", loading),
                          ("baseline: RSA DER with OpenSSL's key check", baseline)):
        print(f"{name:45s} median {statistics.median(timings):8.3f} ms   best {min(timings):8.3f} ms")
    print(f"keys.load / baseline: {statistics.median(loading) / statistics.median(baseline):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21)
    asyncio.run(main(parser.parse_args().runs))
