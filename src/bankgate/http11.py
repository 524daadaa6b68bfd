"""uvicorn's two HTTP/1.1 protocols with every request bounded in size and time (RFC 9110 §15.5.9, RFC 6585 §5).

uvicorn leaves a client free to hold server memory and connections: httptools buffers an unfinished header line
without limit, no protocol limits the number of headers, a request whose headers or body stop arriving is waited
for forever (the keep-alive timer only runs between requests), and a connection that never sends a byte stays open.
These subclasses of the TLS-aware protocols in `bankgate.mtls` (so one class serves HTTP and HTTPS) add:

* the request line plus headers: at most `max_header_bytes` bytes and `max_headers` fields, else **431 Request
  Header Fields Too Large** and the connection closed. Bytes are counted as they arrive, so an unfinished header
  costs at most the limit plus one socket read, never what the client goes on sending.
* `header_timeout`: the headers of a request must be complete within this many seconds of its first byte (of the
  connection, for the first request), else **408 Request Timeout** (or a plain close when nothing was sent);
* `body_timeout`: while the application waits for the request body, a gap of this many seconds without a byte
  ends the request with **408** and closes the connection; the application sees `http.disconnect`, as when a
  client goes away.

`http_protocol(name, limits)` is what `uvicorn.Config(http=...)` takes; it pickles, so it reaches `--workers`
processes too. Answers given here are JSON in the shape of the server's other errors (RFC 6749 §5.2).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11

from bankgate.mtls import H11TLSProtocol, HttpToolsTLSProtocol

__all__ = ["H11Protocol", "HttpToolsProtocol", "Limits", "http_protocol"]

logger = logging.getLogger("uvicorn.error")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
TLS_CLOSE_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may cost the server before it is refused (defaults match `Settings`)."""

    max_header_bytes: int = 16384
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 10.0


class _Refused(Exception):
    """Raised inside an httptools callback to stop parsing; the answer is in the protocol's `_refusal`."""


def _head_size(method: bytes, target: bytes, headers: Any) -> int:
    """Bytes of the request line and header fields as sent, give or take optional whitespace."""
    return len(method) + len(target) + len(b"  HTTP/1.1\r\n\r\n") + sum(len(n) + len(v) + 4 for n, v in headers)


def _response(status: int, message: str) -> bytes:
    """A whole error response, written outside uvicorn's request cycle; the connection closes after it."""
    body = json.dumps({"error": "invalid_request", "error_description": message}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    return head + body


def _with_body_deadline(app: ASGIApp, timeout: float, timed_out: Callable[[Any], None]) -> ASGIApp:
    """`app` with its `receive` bounded in time while request body bytes are still due.

    A request whose body had all arrived before the application started (every GET, most small POSTs) goes to
    `app` untouched. `receive` is a bound method of uvicorn's request cycle; its `more_body` and `body` say
    whether a call would wait for the network.
    """

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        cycle = getattr(receive, "__self__", None)
        if cycle is None or not cycle.more_body:
            await app(scope, receive, send)
            return

        async def bounded_receive() -> Any:
            if cycle.body or not cycle.more_body or cycle.disconnected or cycle.response_complete:
                return await receive()
            try:
                async with asyncio.timeout(timeout):
                    return await receive()
            except TimeoutError:
                timed_out(cycle)
                return {"type": "http.disconnect"}

        await app(scope, bounded_receive, send)

    return asgi


class _Bounds:
    """The bookkeeping both protocols share: the header deadline and the refusal to write."""

    limits: Limits
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    app: ASGIApp

    def _start_bounds(self) -> None:
        self._lost = False
        self._refusal: tuple[int, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self.app = _with_body_deadline(self.app, self.limits.body_timeout, self._body_timed_out)
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_begun(self) -> bool:
        raise NotImplementedError

    def _answered(self) -> bool:
        """The request was answered before its body was read (a 401, say) and the body is still arriving: the
        rest of it, and the next request's headers, get one header deadline, however slowly they trickle in."""
        return self.cycle is not None and self.cycle.response_complete

    def _close(self, answer: bytes = b"") -> None:
        """Write `answer` and close; a TLS connection is dropped `TLS_CLOSE_WAIT` s later at the latest.

        A TLS close waits (up to 30 s) for the peer's close_notify, reading and decrypting all the while: a client
        that goes on sending, or never answers, would hold the connection that long.
        """
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(answer)
        self.transport.close()
        if self.transport.get_extra_info("ssl_object") is not None:
            self.loop.call_later(TLS_CLOSE_WAIT, self._drop)

    def _drop(self) -> None:
        if not self._lost:
            self.transport.abort()

    def _bounds_lost(self) -> None:
        self._lost = True
        self._disarm_head_timer()

    def timeout_keep_alive_handler(self) -> None:
        self._close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # a response is under way: the connection closes once it is sent
        elif self._head_begun():
            logger.info("Request headers not complete within %g s: 408, connection closed",
                        self.limits.header_timeout)
            self._close(_response(408, f"the request headers did not arrive within {self.limits.header_timeout:g} s"))
        else:
            self._close()

    def _body_timed_out(self, cycle: Any) -> None:
        logger.info("No request body bytes for %g s: 408, connection closed", self.limits.body_timeout)
        cycle.keep_alive = False
        if cycle.response_started:
            self._close()
        else:
            self._close(_response(408, f"the request body stopped arriving for {self.limits.body_timeout:g} s"))
        cycle.disconnected = True  # whatever the application answers now is dropped

    def _refuse_head(self, problem: str) -> None:
        """Remember a 431 for `send_400_response`; the caller then stops the parser."""
        logger.info("Request refused: %s; 431, connection closed", problem)
        self._refusal = (431, f"{problem}: send smaller headers")

    def _too_many_bytes(self) -> str:
        return f"the request line and headers are larger than {self.limits.max_header_bytes} bytes"

    def _too_many_fields(self) -> str:
        return f"the request has more than {self.limits.max_headers} header fields"


class HttpToolsProtocol(_Bounds, HttpToolsTLSProtocol):
    """uvicorn's httptools protocol, TLS-aware, with bounded requests.

    httptools keeps an unfinished header field (or URL) in its own buffer, out of sight, so the bytes of an
    unfinished head are counted in `data_received`: every byte of a read in which a request began, less the
    previous request's body bytes in front of it, and every byte of the reads after it until its headers end.
    """

    def __init__(self, *args: Any, limits: Limits = Limits(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._head_started = False  # a request has begun and its headers are not complete
        self._in_body = False  # a request's headers are complete and its body is not
        self._completed = False  # a request ended in the current read
        self._head_bytes = 0
        self._body_bytes = 0  # body bytes parsed in the current read
        self._body_before_head = 0  # ... of them before the request now begun
        self._read = 0  # bytes of the current read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream protocol always gets a Transport
        super().connection_made(transport)
        self._start_bounds()

    def connection_lost(self, exc: Exception | None) -> None:
        self._bounds_lost()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        started_before = self._head_started
        self._read = len(data)
        self._body_bytes = 0
        self._completed = False
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._head_started:
            self._head_bytes += len(data) - (0 if started_before else self._body_before_head)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_head(self._too_many_bytes())
                self.send_400_response("")
                return
        if self._head_started or self._answered() or not (self._in_body or self._completed):
            self._arm_head_timer()

    def _head_begun(self) -> bool:
        return self._head_started

    def send_400_response(self, msg: str) -> None:
        self._disarm_head_timer()
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._close(_response(*self._refusal))

    def on_message_begin(self) -> None:
        self._head_started = True
        self._head_bytes = 0
        self._body_before_head = self._body_bytes
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        problem = None
        if len(self.headers) > self.limits.max_headers:
            problem = self._too_many_fields()
        elif (self._head_bytes + self._read > self.limits.max_header_bytes
              and _head_size(self.parser.get_method(), self.url, self.headers) > self.limits.max_header_bytes):
            problem = self._too_many_bytes()
        if problem is not None:
            self._refuse_head(problem)
            raise _Refused
        self._head_started = False
        self._in_body = True
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._completed = True
        super().on_message_complete()


class _H11Connection(h11.Connection):
    """h11's connection, telling its protocol about each request head before uvicorn acts on it."""

    def __init__(self, protocol: H11Protocol, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self._protocol = protocol

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:  # h11's own bound: an unfinished event over the size limit
                self._protocol._refuse_head(self._protocol._too_many_bytes())
            raise
        if type(event) is h11.Request:
            self._protocol._request_head(event)
        return event


class H11Protocol(_Bounds, H11TLSProtocol):
    """uvicorn's h11 protocol, TLS-aware, with bounded requests (h11 bounds its own buffer: the header limit)."""

    def __init__(self, *args: Any, limits: Limits = Limits(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.conn = _H11Connection(self, limits.max_header_bytes)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream protocol always gets a Transport
        super().connection_made(transport)
        self._start_bounds()

    def connection_lost(self, exc: Exception | None) -> None:
        self._bounds_lost()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        super().data_received(data)
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if (state is h11.IDLE or (state is h11.DONE and self.conn.trailing_data[0])
                or (state is h11.SEND_BODY and self._answered())):
            self._arm_head_timer()

    def _head_begun(self) -> bool:
        return self.conn.their_state is not h11.SEND_BODY and bool(self.conn.trailing_data[0].strip())

    def _request_head(self, event: h11.Request) -> None:
        problem = None
        if len(event.headers) > self.limits.max_headers:
            problem = self._too_many_fields()
        elif _head_size(event.method, event.target, event.headers) > self.limits.max_header_bytes:
            problem = self._too_many_bytes()
        if problem is not None:
            self._refuse_head(problem)
            raise h11.RemoteProtocolError(problem, error_status_hint=431)
        self._disarm_head_timer()

    def send_400_response(self, msg: str) -> None:
        self._disarm_head_timer()
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._close(_response(*self._refusal))


_CLASSES: dict[str, type[HttpToolsProtocol | H11Protocol]] = {"httptools": HttpToolsProtocol, "h11": H11Protocol}


def http_protocol(name: str, limits: Limits) -> Callable[..., asyncio.Protocol]:
    """The protocol factory for `uvicorn.Config(http=...)`: `name` is `httptools` or `h11`."""
    return functools.partial(_CLASSES[name], limits=limits)
