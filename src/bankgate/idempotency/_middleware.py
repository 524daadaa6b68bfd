"""The Idempotency-Key middleware (draft-ietf-httpapi-idempotency-key-header-06), pure ASGI.

For POST, PUT, PATCH and DELETE carrying an `Idempotency-Key`, the first request runs and its response is kept;
a retry with the same key and the same request gets that response again (`Idempotent-Replayed: true`) without
running the handler - once the first has finished, from one read of the store (`IdempotencyStore.lookup`: no
write transaction, no lock), on every kind of route; the same key with a different request is refused (422,
section 2.7), and while the first one still runs, a retry gets 409 with `Retry-After`. Keys are scoped per
principal, never global.

Place it behind the guard, which sets `scope["state"]["principal"]`: without a principal, keys fall back to the
client address ("anonymous:<host>"), which every client behind one proxy shares.

Two ways to hold a key:

* by default the key is claimed (a `started` record with a lease) before the handler runs, and the response is kept
  before its last byte leaves: right for any handler, whatever it does (call a payment rail, write elsewhere);
* on routes named `atomic`, whose handler's effects are writes to the store's own database, the handler hands
  those writes and its response to `AtomicKey.commit`, and the key, the writes and the response commit in one
  transaction (the design Stripe describes for its API): no lease and no 409 between retries (a concurrent retry
  waits for the commit and gets the first response), nothing to settle afterwards, and a crash leaves either all
  of it or none, so the retry can never find the writes made but the key free.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from starlette.responses import Response

from bankgate.events import Events
from bankgate.idempotency._types import (
    MAX_KEY_LENGTH,
    AtomicStore,
    Claim,
    IdempotencyStore,
    Ready,
    StoredResponse,
    Write,
    fingerprint,
)
from bankgate.outage import DATABASE, REDIS, OutageLog, StoreUnavailable
from bankgate.web.asgi import ASGIApp, Message, Receive, Scope, Send
from bankgate.web.errors import PROBLEM, HttpError, send_error

__all__ = ["AtomicKey", "IdempotencyMiddleware", "InvalidIdempotencyKey", "atomic_key", "parse_idempotency_key"]

logger = logging.getLogger("bankgate.idempotency")

T = TypeVar("T")

_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HEADER = b"idempotency-key"
# Not replayed: they describe the first connection and moment, not the response (content-length is recomputed).
_NOT_STORED = frozenset(
    {
        b"date",
        b"server",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
    }
)
# Statuses that say "this did not run": refused credentials or permissions (401, 403; they may be fixed, e.g. an
# application granted) and "try again" (429). Kept, they would answer every retry with the same refusal.
_RETRYABLE_4XX = frozenset({401, 403, 429})
# ASGI extensions that send a body the middleware could not capture: hidden from the app on a claimed request.
_UNCAPTURABLE = ("http.response.pathsend", "http.response.zerocopysend")
_UNAVAILABLE_RETRY = 1
_EXAMPLE = "1-255 printable characters, e.g. a UUID"
#: What became of a keyed request, each told as the event `idempotency.<outcome>`.
OUTCOMES = ("fresh", "replayed", "mismatch", "in_progress", "store_unavailable")
_REFUSED = frozenset({"mismatch", "in_progress", "store_unavailable"})


class InvalidIdempotencyKey(ValueError):
    """The `Idempotency-Key` header cannot be used; the message says what is wrong and what to send instead."""


def _sf_string(text: str) -> str | None:
    """The value of an RFC 8941 sf-string (`"..."` with `\\"` and `\\\\` escapes), or None if `text` is not one."""
    out: list[str] = []
    chars = iter(text[1:-1])
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped not in ('"', "\\"):
                return None
            out.append(escaped)
        elif char == '"':
            return None
        else:
            out.append(char)
    return "".join(out)


def parse_idempotency_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key sent in the ASGI `headers`, None when there is none; `InvalidIdempotencyKey` when unusable.

    Section 2.1 of the draft makes the value an RFC 8941 String (`"8e03978e-..."`); most clients (Stripe, Banked)
    send the bare token. Both are accepted and name the same key (a quoted value whose content would not be a valid
    key is taken as it is). A key has 1 to 255 printable ASCII characters (0x20-0x7E), not only spaces, and the
    header appears once.
    """
    values = [value for name, value in headers if name == _HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidIdempotencyKey(
            f"the Idempotency-Key header was sent {len(values)} times; send it once, with one key ({_EXAMPLE})"
        )
    raw = values[0]
    text = raw.decode("latin-1")
    if not (text.isascii() and text.isprintable()):
        raise InvalidIdempotencyKey(
            f"the Idempotency-Key contains a character outside printable ASCII; use {_EXAMPLE}"
        )
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        unquoted = _sf_string(text)
        if unquoted and len(unquoted) <= MAX_KEY_LENGTH and unquoted.strip(" "):
            text = unquoted
    if not text:
        raise InvalidIdempotencyKey(f"the Idempotency-Key header is empty; send {_EXAMPLE}")
    if len(text) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"the Idempotency-Key has {len(text)} characters, more than {MAX_KEY_LENGTH}; send {_EXAMPLE}"
        )
    if not text.strip(" "):
        raise InvalidIdempotencyKey(f"the Idempotency-Key is only spaces; send {_EXAMPLE}")
    return text


def _default_principal(scope: Scope) -> str | None:
    """`scope["state"]["principal"].key` as set by bankgate's guard (a plain string is taken as it is)."""
    state = scope.get("state")
    principal = state.get("principal") if isinstance(state, dict) else None
    if principal is None:
        return None
    if isinstance(principal, str):
        return principal
    key = getattr(principal, "key", None)
    return key if isinstance(key, str) and key else None


def _kept_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The response headers a replay repeats: lower-case names (ASGI apps send them so; others are lowered)."""
    kept = []
    for name, value in headers:
        if type(name) is not bytes or not name.islower():
            name = bytes(name).lower()
        if name not in _NOT_STORED:
            kept.append((name, value if type(value) is bytes else bytes(value)))
    return tuple(kept)


def _target(scope: Scope) -> str:
    return f"{scope['method']} {scope['path']}"


def _anonymous(scope: Scope) -> str:
    client = scope.get("client")
    return f"anonymous:{client[0] if client else 'unknown'}"


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, None if the client went away first; `_TooLarge` past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The app's `receive`: the body the layer has read, in one message, then the server's own messages."""
    body_sent = False

    async def replay_receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


async def _problem(send: Send, status: int, title: str, detail: str, *, retry_after: int | None = None) -> None:
    """An RFC 9457 problem details response, by the server's one renderer."""
    await send_error(send, HttpError(status, title, detail, title=title, retry_after=retry_after), PROBLEM)


async def _replay(send: Send, response: StoredResponse) -> None:
    headers = [
        *response.headers,
        (b"content-length", str(len(response.body)).encode()),
        (b"idempotent-replayed", b"true"),
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _keeps(status: int) -> bool:
    """Whether a response with `status` is kept for replay: below 500, and not a "did not run" refusal."""
    return status < 500 and status not in _RETRYABLE_4XX


class AtomicKey:
    """The `Idempotency-Key` of a request on an `atomic` route, in `scope["state"]["idempotency"]` (see
    `atomic_key`). The handler validates the request, prepares its writes and its response, and calls `commit`
    once, before it answers:

        atomic = atomic_key(request.scope)
        if atomic is not None:
            await atomic.commit(response, Write(INSERT_PAYMENT, row))  # INSERT_PAYMENT = payments.insert(), once
        return response

    When `commit` answers False, nothing was written: the key had been used already (or is in use on a route that
    claims first), and the layer answers the request itself - with the first response, 409 or 422 - whatever the
    handler returns. A database error of one of the writes is raised as it is, with nothing written.
    """

    __slots__ = ("_fingerprint", "_layer", "_principal", "failure", "key", "outcome")

    def __init__(self, layer: IdempotencyMiddleware, principal: str, key: str, request_fingerprint: str) -> None:
        self._layer, self._principal, self.key, self._fingerprint = layer, principal, key, request_fingerprint
        #: What `commit` found, once it has run; or why it failed (nothing was written).
        self.outcome: Claim | None = None
        self.failure: Exception | None = None

    def __repr__(self) -> str:
        return f"AtomicKey(outcome={self.outcome.outcome if self.outcome else None!r})"

    async def commit(self, response: Response, *writes: Write) -> bool:
        """Make `writes` and keep `response` (a complete, non-streaming response below 500) for the key, in one
        transaction, if the key is free; True if they were made."""
        if self.outcome is not None:
            raise RuntimeError("AtomicKey.commit runs once per request")
        status = int(response.status_code)
        if not _keeps(status):
            raise ValueError(f"a {status} response is not kept for replay; answer it without commit")
        body = getattr(response, "body", None)
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"commit keeps a complete response; send a {type(response).__name__} without commit")
        stored = StoredResponse(status, _kept_headers(response.raw_headers), bytes(body))
        return (await self._record(stored, writes)).outcome == "claimed"

    async def _record(self, response: StoredResponse, writes: tuple[Write, ...]) -> Claim:
        layer = self._layer
        store: AtomicStore = layer.store  # type: ignore[assignment]
        try:
            self.outcome = await layer._watch.call(store.commit(
                self._principal, self.key, self._fingerprint, response, writes, retention=layer.retention
            ))
        except Exception as exc:
            self.failure = exc
            raise
        return self.outcome


def atomic_key(scope: Scope) -> AtomicKey | None:
    """The `AtomicKey` of a request on an `atomic` route that carries an `Idempotency-Key`, else None."""
    state = scope.get("state")
    found = state.get("idempotency") if isinstance(state, dict) else None
    return found if isinstance(found, AtomicKey) else None


class _Running:
    __slots__ = ("key", "owner", "principal", "renew_at", "renewing")

    def __init__(self, principal: str, key: str, owner: str, renew_at: float) -> None:
        self.principal, self.key, self.owner, self.renew_at = principal, key, owner, renew_at
        self.renewing = False


class _Watch:
    """The timing of one middleware's requests, on one timer for all of them instead of timers per request.

    Every tick (a third of the lease, at most a second; only while requests are in flight) it renews the lease
    of each claim that has run for a third of a lease since its last renewal, so a long request keeps its key and
    a crashed process loses it after one lease; and it cancels the store calls that passed their deadline, which
    then end in `StoreUnavailable` (a `TimeoutError`). Registering is a dict entry: short requests cost no timer at all.
    """

    def __init__(self, store: IdempotencyStore, lease: float, timeout: float, service: str = DATABASE) -> None:
        self._store, self._lease, self._timeout, self._service = store, lease, timeout, service
        self._period = min(lease / 3, 1.0, timeout)
        self._running: dict[str, _Running] = {}
        self._calls: dict[asyncio.Task[Any], float] = {}
        self._cut: set[asyncio.Task[Any]] = set()
        self._renewals: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def _ensure_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None and self._timer_loop is not loop:
            self._timer.cancel()  # the app moved to another event loop (tests do); the old one is gone
            self._timer = None
        if self._timer is None:
            self._timer = loop.call_later(self._period, self._tick, loop)
            self._timer_loop = loop

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for task, deadline in list(self._calls.items()):
            if deadline <= now and task not in self._cut:
                self._cut.add(task)
                task.cancel()
        for running in list(self._running.values()):
            if running.renew_at <= now and not running.renewing:
                running.renewing = True
                renewal = loop.create_task(self._renew(running))
                self._renewals.add(renewal)
                renewal.add_done_callback(self._renewals.discard)
        if self._calls or self._running:
            self._ensure_timer(loop)

    async def _renew(self, running: _Running) -> None:
        loop = asyncio.get_running_loop()
        try:
            kept = await self.call(
                self._store.extend(running.principal, running.key, running.owner, lease=self._lease),
                min(self._timeout, self._lease / 3),  # a renewal that hangs longer is tried again, in time
            )
        except Exception as exc:
            logger.warning("could not renew an idempotency lease (%s); will try again", type(exc).__name__)
            kept = True
        running.renewing = False
        if not kept:
            logger.warning("an idempotency lease ended while its request was still running")
            self._running.pop(running.owner, None)
            return
        running.renew_at = loop.time() + self._lease / 3

    async def call(self, operation: Awaitable[T], timeout: float | None = None) -> T:
        """Await a store call; `StoreUnavailable` once it has taken longer than `timeout` (by default the store
        timeout; give or take a tick)."""
        task = asyncio.current_task()
        if task is None:
            return await operation
        loop = asyncio.get_running_loop()
        limit = self._timeout if timeout is None else timeout
        self._calls[task] = loop.time() + limit
        self._ensure_timer(loop)
        seen = False
        try:
            return await operation
        except asyncio.CancelledError:
            seen = task in self._cut
            if seen and task.uncancel() == 0:
                raise StoreUnavailable(self._service, f"the idempotency store did not answer within {limit:g} s") \
                    from None
            raise
        finally:
            del self._calls[task]
            if task in self._cut:
                self._cut.discard(task)
                if not seen:
                    task.uncancel()  # the operation swallowed our cancellation and finished: withdraw it

    def start(self, principal: str, key: str, owner: str) -> None:
        loop = asyncio.get_running_loop()
        self._running[owner] = _Running(principal, key, owner, loop.time() + self._lease / 3)
        self._ensure_timer(loop)

    def stop(self, owner: str) -> None:
        # A renewal already under way is left to finish: it only touches a record still `started` under our owner.
        self._running.pop(owner, None)


class IdempotencyMiddleware:
    """Idempotency-Key handling for POST, PUT, PATCH and DELETE, in front of any ASGI app.

    * `store`: where key records live (`SqlIdempotencyStore`, `RedisIdempotencyStore`, `MemoryIdempotencyStore`).
    * `required`: True, or a predicate on the scope, to answer 400 when the header is missing.
    * `retention`: seconds a completed response is replayed (Stripe keeps 24 h, Banked 30 days).
    * `lease`: seconds a running request holds its key without renewal; renewed every `lease / 3` while it runs.
    * `mismatch_status`: 422 as the draft says, or 409 as Banked documents.
    * `principal_of`: who the key belongs to; by default the guard's `scope["state"]["principal"].key`.
    * `max_body_bytes`: larger request bodies are refused with 413 before anything is claimed.
    * `store_timeout`: seconds a store call may take before the request is refused with 503.
    * `atomic`: a predicate on the scope naming the routes whose handlers commit through `AtomicKey` (the store
      must be an `AtomicStore`, e.g. `SqlIdempotencyStore` on the database the handler writes to).
    * `outages`: where an unreachable store is logged, once per outage with a count (`bankgate.outage`); by
      default a log of this layer's own.
    * `events`: where the outcome of each keyed request is told (`idempotency.fresh`, `.replayed`, `.mismatch`,
      `.in_progress`, `.store_unavailable`; actor: the key's principal); free while no sink wants them.

    Responses below 500 are stored and replayed (except 401, 403 and 429: the request did not run); a 5xx response
    or an exception releases the key, so the retry runs again. When the store cannot be reached the request is
    refused with 503 and never runs unclaimed. The key is put in `scope["state"]["idempotency_key"]` for handlers
    that make their own writes unique per key.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore,
        required: bool | Callable[[Scope], bool] = False,
        retention: float = 86400.0,
        lease: float = 30.0,
        mismatch_status: int = 422,
        principal_of: Callable[[Scope], str | None] | None = None,
        max_body_bytes: int = 1_048_576,
        store_timeout: float = 15.0,
        atomic: Callable[[Scope], bool] | None = None,
        outages: OutageLog | None = None,
        events: Events | None = None,
    ) -> None:
        if retention <= 0 or lease <= 0 or store_timeout <= 0:
            raise ValueError("retention, lease and store_timeout are positive numbers of seconds")
        if not 400 <= mismatch_status <= 499:
            raise ValueError(f"mismatch_status is a 4xx status (422 or 409), not {mismatch_status}")
        if atomic is not None and not isinstance(store, AtomicStore):
            raise ValueError(
                f"atomic routes commit their writes with the key, in the store's database: {store!r} cannot; "
                "use SqlIdempotencyStore on the handler's database, or leave `atomic` out"
            )
        self.app = app
        self.store = store
        self.required = required
        self.retention = retention
        self.lease = lease
        self.mismatch_status = mismatch_status
        self.principal_of = principal_of or _default_principal
        self.max_body_bytes = max_body_bytes
        self.store_timeout = store_timeout
        self.atomic = atomic
        self._watch = _Watch(store, lease, store_timeout)
        self.outages = outages or OutageLog(logger)
        told = events or Events()
        self._channels = {outcome: told.channel(f"idempotency.{outcome}") for outcome in OUTCOMES}
        # The store's name in the outage log: a timeout does not say which service it waited for.
        self._service = REDIS if "redis" in type(store).__module__ else DATABASE

    def _tell(self, outcome: str, scope: Scope) -> None:
        channel = self._channels[outcome]
        if channel.sinks:
            channel.emit(self.principal_of(scope) or _anonymous(scope),
                         "failure" if outcome in _REFUSED else "success", None, {"target": _target(scope)})

    def _is_required(self, scope: Scope) -> bool:
        return self.required(scope) if callable(self.required) else bool(self.required)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS:
            await self.app(scope, receive, send)
            return
        try:
            key = parse_idempotency_key(scope["headers"])
        except InvalidIdempotencyKey as exc:
            await _problem(send, 400, "Invalid Idempotency-Key", f"{exc} (on {_target(scope)})")
            return
        if key is None:
            if self._is_required(scope):
                await _problem(
                    send, 400, "Idempotency-Key required",
                    f"send an Idempotency-Key header ({_EXAMPLE}) on {_target(scope)}; reuse it when you retry",
                )
                return
            await self.app(scope, receive, send)
            return

        declared = _declared_length(scope["headers"])
        try:
            if declared is not None and declared > self.max_body_bytes:
                raise _TooLarge
            body = await _read_body(receive, self.max_body_bytes)
        except _TooLarge:
            await _problem(
                send, 413, "Request body too large",
                f"{_target(scope)} with an Idempotency-Key accepts a body of at most {self.max_body_bytes} bytes",
            )
            return
        if body is None:
            return  # the client went away while sending

        principal = self.principal_of(scope) or _anonymous(scope)
        request_fingerprint = fingerprint(scope["method"], scope["path"], scope.get("query_string", b""), body)
        try:
            # A retry of a finished request is answered from one read: no write transaction, no handler. A read
            # answered at once (`Ready`) could not have waited, so it needs no deadline.
            found = self.store.lookup(principal, key, request_fingerprint, retention=self.retention)
            known = found.value if isinstance(found, Ready) else await self._watch.call(found)
        except Exception as exc:
            await self._unavailable(scope, send, exc)
            return
        if known is not None:
            self.outages.reachable(self._service)
            await self._answer(scope, send, known)
            return
        if self.atomic is not None and self.atomic(scope):
            await self._run_atomic(scope, receive, send, body, AtomicKey(self, principal, key, request_fingerprint))
            return
        try:
            claim = await self._watch.call(
                self.store.claim(principal, key, request_fingerprint, lease=self.lease, retention=self.retention)
            )
        except Exception as exc:
            await self._unavailable(scope, send, exc)
            return
        self.outages.reachable(self._service)

        if claim.outcome == "claimed" and claim.owner is not None:
            self._tell("fresh", scope)
            await self._run(scope, receive, send, body, principal, key, claim.owner)
        else:
            await self._answer(scope, send, claim)

    async def _unavailable(self, scope: Scope, send: Send, exc: Exception) -> None:
        self.outages.refused(self._service, exc)
        self._tell("store_unavailable", scope)
        await _problem(
            send, 503, "Idempotency store unavailable",
            f"the request was not processed; retry with the same Idempotency-Key in {_UNAVAILABLE_RETRY} s",
            retry_after=_UNAVAILABLE_RETRY,
        )

    async def _answer(self, scope: Scope, send: Send, claim: Claim) -> None:
        """The answer to a request whose key was not free: the first response, 422 (or 409) or 409."""
        if claim.outcome in ("completed", "mismatch", "in_progress"):
            self._tell("replayed" if claim.outcome == "completed" else claim.outcome, scope)
        if claim.outcome == "completed" and claim.response is not None:
            await _replay(send, claim.response)
        elif claim.outcome == "mismatch":
            await _problem(
                send, self.mismatch_status, "Idempotency-Key reused",
                "this Idempotency-Key was already used for a different request (method, path or body); "
                "send the original request unchanged to get its response, or use a new key for a new request",
            )
        elif claim.outcome == "in_progress":
            wait = max(1, math.ceil(claim.retry_after or 0.0))
            await _problem(
                send, 409, "Request in progress",
                f"a request with this Idempotency-Key is still being processed; retry in {wait} s with the same key",
                retry_after=wait,
            )
        else:
            raise RuntimeError(f"{self.store!r} answered an incomplete claim: {claim!r}")

    @staticmethod
    def _without_uncapturable(scope: Scope) -> Scope:
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _UNCAPTURABLE):
            return {**scope, "extensions": {k: v for k, v in extensions.items() if k not in _UNCAPTURABLE}}
        return scope

    async def _run_atomic(self, scope: Scope, receive: Receive, send: Send, body: bytes, atomic: AtomicKey) -> None:
        """Run the app of an atomic route. A response it sends after a successful `commit` goes out as it is;
        after a `commit` that found the key taken, the layer answers instead. A response sent without a commit
        (e.g. a 422 from validation) is held, then kept with the key, as on other routes, unless the key has
        been taken meanwhile, in which case the layer answers instead of it."""
        state = scope.setdefault("state", {})
        state["idempotency_key"] = atomic.key
        state["idempotency"] = atomic
        scope = self._without_uncapturable(scope)
        held: list[Message] = []
        answered = started = False

        async def atomic_send(message: Message) -> None:
            nonlocal answered, started
            outcome = atomic.outcome
            if outcome is not None:
                if outcome.outcome == "claimed":
                    started = True
                    await send(message)
                return  # the key was taken: the layer answers once the app is done
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
                await self._settle_held(scope, send, atomic, held)

        try:
            await self.app(scope, _replaying(body, receive), atomic_send)
        except Exception as exc:
            if atomic.failure is None or exc is not atomic.failure or started or answered:
                raise
            await self._unavailable(scope, send, exc)  # the commit failed: nothing was written
            return
        if atomic.outcome is not None and atomic.outcome.outcome == "claimed":
            self._tell("fresh", scope)
        elif atomic.outcome is not None and not answered:
            await self._answer(scope, send, atomic.outcome)

    async def _settle_held(self, scope: Scope, send: Send, atomic: AtomicKey, held: list[Message]) -> None:
        start = next((m for m in held if m["type"] == "http.response.start"), None)
        status = int(start["status"]) if start is not None else 0
        if start is not None and _keeps(status):
            response = StoredResponse(
                status,
                _kept_headers(start.get("headers", ())),
                b"".join(bytes(m.get("body", b"")) for m in held if m["type"] == "http.response.body"),
            )
            try:
                claim = await atomic._record(response, ())
            except Exception as exc:
                # Nothing of this request was committed: its answer goes out unkept, and a retry runs it again.
                self.outages.failed(self._service, exc)
            else:
                if claim.outcome != "claimed":
                    await self._answer(scope, send, claim)
                    return
        for message in held:
            await send(message)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, principal: str, key: str, owner: str
    ) -> None:
        """Run the app on a claimed key; keep its response (status < 500) or give the key back."""
        scope.setdefault("state", {})["idempotency_key"] = key
        scope = self._without_uncapturable(scope)

        status = 0
        keep = False
        headers: tuple[tuple[bytes, bytes], ...] = ()
        chunks: list[bytes] = []
        settled = False

        async def settle(response: StoredResponse | None) -> None:
            nonlocal settled
            settled = True
            try:
                if response is None:
                    await self._watch.call(self.store.release(principal, key, owner))
                elif not await self._watch.call(
                    self.store.complete(principal, key, owner, response, retention=self.retention)
                ):
                    logger.warning("an idempotency lease was taken over before its response was kept")
            except Exception as exc:
                # The key stays `started` until its lease ends; a retry after that runs again.
                self.outages.failed(self._service, exc)

        async def capture_send(message: Message) -> None:
            nonlocal status, headers, keep
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                keep = _keeps(status)
                if keep:
                    headers = _kept_headers(message.get("headers", ()))
            elif kind == "http.response.body" and not settled:
                if keep and (chunk := message.get("body", b"")):
                    chunks.append(bytes(chunk))
                if not message.get("more_body", False):
                    # Kept before the last byte leaves, so a client that has the response finds the key completed.
                    await settle(StoredResponse(status, headers, b"".join(chunks)) if keep else None)
            await send(message)

        self._watch.start(principal, key, owner)
        try:
            await self.app(scope, _replaying(body, receive), capture_send)
        except BaseException:
            if not settled:
                await settle(None)
            raise
        finally:
            self._watch.stop(owner)
        if not settled:
            await settle(None)  # the app ended without a complete response
