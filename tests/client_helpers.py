"""Test scaffolding for the client SDK tests: loopback servers that answer fixed bodies, a proxy that loses the
first answer, and the server's own count of issued tokens."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conftest import Server


def issued(server: Server, actor: str, event: str = "token.issued") -> int:
    """How many `event`s the server's audit trail holds for `actor` (an API key or a username)."""
    server.flush_audit()
    events = server.cli_json("audit", "tail", "--limit", "10000", "--event", event)
    return sum(1 for e in events if e["actor"] == actor)


Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


class Loopback:
    """A threaded HTTP server on 127.0.0.1 whose answers come from `handler(method, path, headers, body)`."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((self.command, self.path, headers))
                status, extra, payload = handler(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in {"content-type": "application/json", **extra}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.requests if p.split("?")[0] == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def loopback(handler: Handler) -> Iterator[Loopback]:
    server = Loopback(handler)
    try:
        yield server
    finally:
        server.close()


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


def _read_request(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 request (headers and a Content-Length body) from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


class LosingProxy:
    """A TCP proxy to `upstream` (host, port) that forwards the first `lose` requests but closes the client's
    connection instead of passing the answer back: the request is done upstream, the answer is lost."""

    def __init__(self, upstream: tuple[str, int], lose: int = 1) -> None:
        self.upstream = upstream
        self.lose = lose
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            losing = self.lose > 0
            self.lose -= 1 if losing else 0
            threading.Thread(target=self._serve, args=(client, losing), daemon=True).start()

    def _serve(self, client: socket.socket, losing: bool) -> None:
        upstream = socket.create_connection(self.upstream)
        if losing:
            upstream.sendall(_read_request(client))
            upstream.settimeout(10)
            upstream.recv(65536)  # the answer arrives (so the work is done upstream) ...
            upstream.close()
            client.close()  # ... and never reaches the client
            return

        def pipe(source: socket.socket, target: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    target.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, target):
                    with suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def close(self) -> None:
        self._stop = True
        self.listener.close()
