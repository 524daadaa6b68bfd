"""The HTTP edges of `bankgate serve`, on real sockets: bounded headers (431), deadlines for unfinished requests
(408), a ceiling on graceful shutdown, and an access log without query-string secrets. Both HTTP/1.1
implementations, plain HTTP and TLS."""

from __future__ import annotations

import functools
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bankgate.accesslog import redact_query
from conftest import Server, start_server

IMPLEMENTATIONS = [("httptools", False), ("h11", False), ("httptools", True), ("h11", True)]
TIMEOUT = 0.5  # --header-timeout, --body-timeout and --keep-alive-timeout of the servers below
MARGIN = 4.0  # what a loaded machine may add to a deadline before the server acts
MiB = 1024 * 1024


def _edge_args(http: str, tls: bool) -> tuple[str, ...]:
    return ("--http", http, "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
            "--keep-alive-timeout", str(TIMEOUT), *(("--tls",) if tls else ()))


@pytest.fixture(scope="module", params=IMPLEMENTATIONS, ids=[f"{h}-{'tls' if t else 'http'}" for h, t in
                                                              IMPLEMENTATIONS])
def edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per implementation and transport, default size limits, short (`TIMEOUT`) deadlines."""
    http, tls = request.param
    directory = tmp_path_factory.mktemp(f"edges-{http}-{'tls' if tls else 'http'}")
    server = start_server(directory / "data", directory / "server.log", args=_edge_args(http, tls))
    yield server
    server.stop()


@functools.cache
def _client_context() -> ssl.SSLContext:
    """One client context for every connection (building one loads the system's CA store: ~20 ms each); each
    connection still makes its own full handshake."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # what is tested here is HTTP over TLS, not the certificate
    return context


def _connect(server: Server, timeout: float = 10) -> socket.socket:
    host, port = server.base_url.rsplit("/", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    if server.base_url.startswith("https"):
        sock = _client_context().wrap_socket(sock)
    return sock


def _read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection, and whether it did so within `within` s."""
    deadline = time.monotonic() + within
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, ssl.SSLError):
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def _read_response(sock: socket.socket, within: float = 10) -> bytes:
    """One whole response (headers and a Content-Length body), leaving the connection open."""
    sock.settimeout(within)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def _exchange(server: Server, request: bytes, within: float = 10) -> tuple[bytes, bool]:
    with _connect(server) as sock:
        sock.sendall(request)
        return _read_until_closed(sock, within)


def _get(headers: list[tuple[str, str]], path: str = "/healthz") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{n}: {v}" for n, v in headers), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


# -- header size and count ---------------------------------------------------------------------------------------


def test_headers_within_the_default_limits_are_served(edge: Server) -> None:
    headers = [(f"X-Field-{i}", "v" * 100) for i in range(90)]  # 90 fields, about 11 KiB
    answer, closed = _exchange(edge, _get(headers))
    assert _status(answer) == 200 and closed


@pytest.mark.parametrize("headers", [
    pytest.param([("X-Big", "a" * 17000)], id="one-large-field"),
    pytest.param([(f"X-Field-{i}", "v" * 400) for i in range(45)], id="many-medium-fields"),
    pytest.param([(f"X-Field-{i}", "v") for i in range(101)], id="101-fields"),
])
def test_headers_over_the_limits_get_431_and_the_connection_closes(edge: Server, headers: list[Any]) -> None:
    answer, closed = _exchange(edge, _get(headers))
    assert _status(answer) == 431, answer[:300]
    assert b"connection: close" in answer.lower() and closed
    assert b'"error": "invalid_request"' in answer
    assert b"send smaller headers" in answer
    answer, _ = _exchange(edge, _get([]))
    assert _status(answer) == 200


def test_a_long_url_counts_toward_the_header_limit(edge: Server) -> None:
    answer, closed = _exchange(edge, _get([], path="/healthz?x=" + "a" * 17000))
    assert _status(answer) == 431 and closed


def test_ten_unfinished_32_mib_headers_leave_memory_flat(edge: Server) -> None:
    """Each connection sends a header field that never ends: the server refuses it past the limit, keeps nothing
    of the rest and closes the connection (uvicorn with httptools used to buffer it all: +386 MiB for ten)."""
    before = _rss(edge.process.pid)["VmRSS"]
    chunk = b"a" * 65536
    closed: list[bool] = []

    def flood() -> None:
        with _connect(edge) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ")
                for _ in range(32 * MiB // len(chunk)):
                    sock.sendall(chunk)
            except OSError:
                closed.append(True)  # the server closed the connection while the header was still coming
                return
            closed.append(_read_until_closed(sock, 10)[1])

    threads = [threading.Thread(target=flood) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert edge.process.poll() is None
    peak = _rss(edge.process.pid)["VmHWM"]
    assert peak - before < 48 * MiB, f"server memory grew by {(peak - before) / MiB:.0f} MiB"
    assert closed == [True] * 10
    answer, _ = _exchange(edge, _get([]))
    assert _status(answer) == 200


# -- deadlines for unfinished requests -------------------------------------------------------------------------


def test_a_connection_that_never_sends_a_byte_is_closed(edge: Server) -> None:
    with _connect(edge) as sock:
        answer, closed = _read_until_closed(sock, TIMEOUT + MARGIN)
    assert closed and answer == b""


def test_headers_that_do_not_finish_in_time_get_408(edge: Server) -> None:
    """A slow sender (one byte at a time) does not move the deadline: it runs from the request's first byte."""
    started = time.monotonic()
    with _connect(edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer = b""
        for byte in b"Host: 127.0.0.1\r\nX-Slow: " + b"s" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.1)
            try:
                answer += sock.recv(65536)
                break
            except TimeoutError:
                continue
        rest, closed = _read_until_closed(sock, TIMEOUT + MARGIN)
    assert _status(answer + rest) == 408 and closed
    assert f"the request headers did not arrive within {TIMEOUT:g} s".encode() in answer + rest
    assert time.monotonic() - started < TIMEOUT + MARGIN


def test_a_stalled_body_gets_408_and_the_connection_closes(edge: Server) -> None:
    request = (b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               b"Content-Length: 100\r\n\r\ngrant_type=client_")
    answer, closed = _exchange(edge, request, TIMEOUT + MARGIN)
    assert _status(answer) == 408 and closed
    assert f"the request body stopped arriving for {TIMEOUT:g} s".encode() in answer
    assert "Traceback" not in edge.log()


def test_a_second_request_on_a_kept_alive_connection_has_its_deadline_too(edge: Server) -> None:
    with _connect(edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _status(_read_response(sock)) == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer, closed = _read_until_closed(sock, TIMEOUT + MARGIN)
    assert _status(answer) == 408 and closed


def test_a_body_trickling_in_after_an_early_answer_is_not_waited_for(edge: Server) -> None:
    """The server answers 401 without reading the body; the rest of it, a byte at a time, is bounded too."""
    started = time.monotonic()
    with _connect(edge) as sock:
        sock.sendall(b"POST /api/v1/payments HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer nope\r\n"
                     b"Idempotency-Key: k1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        assert _status(_read_response(sock)) == 401
        closed = False
        while not closed and time.monotonic() - started < TIMEOUT + 2 * MARGIN:
            try:
                sock.sendall(b" ")
            except OSError:
                break
            closed = _read_until_closed(sock, 0.3)[1]
    assert time.monotonic() - started < TIMEOUT + 2 * MARGIN, "the connection was kept open"


def test_a_large_body_does_not_count_toward_the_next_requests_headers(edge: Server) -> None:
    body = b"grant_type=client_credentials&pad=" + b"p" * 16300
    with _connect(edge) as sock:
        sock.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded"
                     b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                     + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answers, closed = _read_until_closed(sock, 10)
    assert b"HTTP/1.1 401 " in answers and answers.count(b"HTTP/1.1 200 OK\r\n") == 1 and closed


def test_pipelined_requests_are_all_answered(edge: Server) -> None:
    with _connect(edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2
                     + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answers, closed = _read_until_closed(sock, 10)
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == 3 and closed


def test_an_idle_kept_alive_connection_is_closed(edge: Server) -> None:
    with _connect(edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer, closed = _read_until_closed(sock, TIMEOUT + MARGIN)
    assert _status(answer) == 200 and closed


def test_many_half_open_requests_all_time_out(edge: Server) -> None:
    """300 connections that stop in the middle of their headers or bodies: every one is closed, none is kept."""
    partial = [b"GET /healthz HTTP/1.1\r\nHost: 1", b"",
               b"POST /oauth/token HTTP/1.1\r\nHost: 1\r\nContent-Length: 50\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n\r\ngrant"]
    sockets = []
    try:
        for i in range(300):
            sock = _connect(edge)
            sock.sendall(partial[i % len(partial)])
            sockets.append(sock)
        deadline = time.monotonic() + TIMEOUT + 2 * MARGIN
        for sock in sockets:
            _, closed = _read_until_closed(sock, max(deadline - time.monotonic(), 0.01))
            assert closed
    finally:
        for sock in sockets:
            sock.close()
    answer, _ = _exchange(edge, _get([]))
    assert _status(answer) == 200


# -- graceful shutdown has a ceiling --------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
def test_sigterm_exits_within_the_grace_period_while_a_body_is_unfinished(server_factory: Any, tls: bool) -> None:
    server = server_factory(args=("--shutdown-timeout", "1", "--body-timeout", "60", "--header-timeout", "60",
                                  *(("--tls",) if tls else ())))
    with _connect(server) as holding, _connect(server) as half_open:
        holding.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                        b"Content-Type: application/x-www-form-urlencoded\r\n\r\ngrant_type=")
        half_open.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert _status(_exchange(server, _get([]))[0]) == 200  # the server has read both by now
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(1 + MARGIN + 2)
        except Exception:
            pytest.fail(f"still running {time.monotonic() - started:.1f} s after SIGTERM with a 1 s grace period")
    assert "timeout graceful shutdown exceeded" in server.log()


# -- the access log ------------------------------------------------------------------------------------------


SECRETS = {"token": "tok-0123456789", "client_secret": "cs-0123456789", "passphrase": "pp-0123456789",
           "new_password": "np-0123456789", "Access_Token": "at-0123456789", "api%5Fkey": "ak-0123456789",
           "code": "co-0123456789"}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_access_log_never_writes_a_query_string_secret(server_factory: Any, workers: str) -> None:
    server = server_factory(args=("--access-log", "--workers", workers))
    targets = [f"/oauth/introspect?token={SECRETS['token']}",
               f"/healthz?client_secret={SECRETS['client_secret']}&keep=visible",
               f"/api/v1/users/u/password?passphrase={SECRETS['passphrase']}&new_password={SECRETS['new_password']}",
               f"/healthz?Access_Token={SECRETS['Access_Token']}&api%5Fkey={SECRETS['api%5Fkey']}",
               f"/healthz?code={SECRETS['code']}&page=2"]
    for target in targets:
        with _connect(server) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            _read_until_closed(sock, 10)
    deadline = time.monotonic() + 10
    while "page=2" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    assert "GET /healthz?client_secret=***&keep=visible HTTP/1.1" in log
    assert "GET /oauth/introspect?token=*** HTTP/1.1" in log
    assert "GET /healthz?code=***&page=2 HTTP/1.1" in log
    for value in SECRETS.values():
        assert value not in log


@pytest.mark.parametrize(("target", "logged"), [
    ("/x", "/x"),
    ("/x?", "/x?"),
    ("/x?a=1&b=2", "/x?a=1&b=2"),
    ("/x?token=abc", "/x?token=***"),
    ("/x?TOKEN=abc&token=def", "/x?TOKEN=***&token=***"),
    ("/x?client%5Fsecret=abc", "/x?client%5Fsecret=***"),
    ("/x?refresh_token=a%20b&token_type_hint=access_token", "/x?refresh_token=***&token_type_hint=***"),
    ("/x?password&flag", "/x?password&flag"),
    ("/x?my-api-key=k&my_secret_value=v", "/x?my-api-key=***&my_secret_value=***"),
    ("/x?assertion=eyJ&a=b=c", "/x?assertion=***&a=b=c"),
])
def test_redact_query_hides_every_secret_parameter_value(target: str, logged: str) -> None:
    assert redact_query(target) == logged


def test_the_edge_settings_come_from_flags_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bankgate.config import load_settings
    from bankgate.server import limits_from

    for name, value in {"MAX_HEADER_BYTES": "8192", "MAX_HEADERS": "20", "HEADER_TIMEOUT": "3", "BODY_TIMEOUT": "4",
                        "SHUTDOWN_TIMEOUT": "5", "KEEP_ALIVE_TIMEOUT": "6"}.items():
        monkeypatch.setenv(f"BANKGATE_{name}", value)
    settings = load_settings(data_dir=tmp_path, header_timeout=2.5)  # a flag wins over the environment
    limits = limits_from(settings)
    assert (limits.max_header_bytes, limits.max_headers, limits.header_timeout, limits.body_timeout) == (
        8192, 20, 2.5, 4)
    assert (settings.shutdown_timeout, settings.keep_alive_timeout) == (5, 6)
