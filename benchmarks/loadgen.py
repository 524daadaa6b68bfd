"""A small HTTP/1.1 keep-alive load generator that can present a client certificate.

wrk and h2load cannot do mutual TLS, so the certificate-style benchmark drives the server with this instead: N
connections, each sending its request again as soon as the previous answer is read, for a fixed time. It is
written on raw asyncio streams (with uvloop) because an HTTP client library would cost more CPU per request than
the server under test; it understands only what it needs (status line, Content-Length).

    python benchmarks/loadgen.py https://127.0.0.1:8443/api/v1/authorizations/authorize \
        --header "Authorization: Basic …" --cert c.pem --key k.pem --cafile ca.pem -c 16 -d 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "requests_per_second": self.requests / self.seconds if self.seconds else 0.0,
            "p50_ms": self.percentile(50) * 1000,
            "p99_ms": self.percentile(99) * 1000,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
        }


async def _connection(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    request: bytes,
    deadline: float,
    result: LoadResult,
    source_ip: str | None,
) -> None:
    local = (source_ip, 0) if source_ip else None
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, local_addr=local, server_hostname=host if context else None
        )
    except OSError:
        result.errors += 1
        return
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
        result.errors += 1
    finally:
        writer.close()


async def run_load(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    connections: int = 16,
    duration: float = 10.0,
    cafile: str | None = None,
    cert: tuple[str, str] | None = None,
    source_ip: str | None = None,
) -> LoadResult:
    parts = urlsplit(url)
    context = None
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        if cert:
            context.load_cert_chain(*cert)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if context else 80)
    lines = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(_connection(host, port, context, request, deadline, result, source_ip) for _ in range(connections))
    )
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("--data", default="")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--cafile")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--source-ip", help="bind connections to this local address, e.g. 127.0.0.2")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    headers = dict(h.split(":", 1) for h in args.header)
    result = asyncio.run(
        run_load(
            args.url,
            method=args.method,
            headers={k.strip(): v.strip() for k, v in headers.items()},
            body=args.data.encode(),
            connections=args.connections,
            duration=args.duration,
            cafile=args.cafile,
            cert=(args.cert, args.key) if args.cert else None,
            source_ip=args.source_ip,
        )
    )
    print(json.dumps(result.as_json()))


if __name__ == "__main__":
    main()
