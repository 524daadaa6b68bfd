"""What tracing does with OpenTelemetry: the provider and its exporter, the request spans, the database and Redis
spans. Imported only when tracing is on (`bankgate.tracing`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from sqlalchemy import event

from bankgate import __version__
from bankgate.tracing import current

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TraceState
    from sqlalchemy.engine import Connection, Engine, ExceptionContext
    from sqlalchemy.engine.interfaces import ExecutionContext

    from bankgate.config import Settings
    from bankgate.net import TrustedProxies
    from bankgate.routenames import RouteNames
    from bankgate.web.asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestSpans", "Tracing"]

SCOPE_NAME = "bankgate"
_W3C = TraceContextTextMapPropagator()
_CONTEXT_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
#: Methods named as they are (OpenTelemetry's HTTP conventions); any other is `_OTHER`, so names stay bounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_SPAN_ATTRIBUTE = "_bankgate_span"


def _failed(span: Span, exc: BaseException) -> None:
    """Mark `span` failed with the exception's class only: its message might quote a value it refused (a driver's
    error quotes statements, a parser its input), and no span carries a secret."""
    kind = type(exc).__qualname__
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))


class _RequestRoots(Sampler):
    """Only a request starts a trace (a share `ratio` of them): a statement or command of a background job (the
    change-feed sync every half second, the audit writer) makes no root span of its own."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is not SpanKind.SERVER:
            return SamplingResult(Decision.DROP)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"RequestRoots{{{self._ratio.get_description()}}}"


def _resource() -> Resource:
    """OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES as OpenTelemetry reads them; `bankgate` when they name none."""
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "bankgate"}))
    return resource


def _processor(mode: str) -> SpanProcessor:
    exporter: SpanExporter
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: the OTEL_EXPORTER_OTLP_* variables
        return BatchSpanProcessor(exporter)
    if mode == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())  # for a look by eye: printed as each span ends
    raise ValueError(f"BANKGATE_TRACING={mode} is not one of: off, otlp, console")


class Tracing:
    """The process's tracer provider with its exporter, and what it instruments."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(SCOPE_NAME, __version__)
        self._redis = RedisInstrumentor()

    @classmethod
    def open(cls, settings: Settings) -> Tracing:
        provider = TracerProvider(resource=_resource(),
                                  sampler=ParentBased(root=_RequestRoots(settings.tracing_sample_ratio)))
        provider.add_span_processor(_processor(settings.tracing))
        tracing = cls(provider)
        # Every Redis command of this process (the Redis Idempotency-Key store), arguments replaced by `?`.
        tracing._redis.instrument(tracer_provider=provider)
        return tracing

    def close(self) -> None:
        self._redis.uninstrument()
        self.provider.shutdown()  # flushes what the exporter still holds

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                _failed(span, exc)
                raise

    # -- database statements (SQLAlchemy's engine events) --------------------------------------------------------

    def watch_engine(self, engine: Engine) -> None:
        """A span for each statement run on `engine` within a traced request: the statement with its `?`/`$1`
        placeholders, never the values (the engine hides parameters from errors too)."""
        event.listen(engine, "before_cursor_execute", self._statement_starts)
        event.listen(engine, "after_cursor_execute", self._statement_ends)
        event.listen(engine, "handle_error", self._statement_fails)

    def unwatch_engine(self, engine: Engine) -> None:
        for name, listener in (("before_cursor_execute", self._statement_starts),
                               ("after_cursor_execute", self._statement_ends),
                               ("handle_error", self._statement_fails)):
            if event.contains(engine, name, listener):
                event.remove(engine, name, listener)

    def _statement_starts(self, conn: Connection, cursor: Any, statement: str, parameters: Any,
                          context: ExecutionContext | None, executemany: bool) -> None:
        if context is None or not trace.get_current_span().is_recording():
            return
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        system = conn.dialect.name
        attributes: dict[str, str | int] = {
            "db.system.name": system,
            "db.operation.name": operation,
            "db.query.text": statement,
        }
        url = conn.engine.url
        if url.host:
            attributes["server.address"] = url.host
        if url.port:
            attributes["server.port"] = url.port
        span = self.tracer.start_span(f"{operation} {system}", kind=SpanKind.CLIENT, attributes=attributes)
        setattr(context, _SPAN_ATTRIBUTE, span)

    @staticmethod
    def _statement_ends(conn: Connection, cursor: Any, statement: str, parameters: Any,
                        context: ExecutionContext | None, executemany: bool) -> None:
        span: Span | None = getattr(context, _SPAN_ATTRIBUTE, None)
        if span is not None:
            setattr(context, _SPAN_ATTRIBUTE, None)
            span.end()

    @staticmethod
    def _statement_fails(failure: ExceptionContext) -> None:
        span: Span | None = getattr(failure.execution_context, _SPAN_ATTRIBUTE, None)
        if span is not None:
            setattr(failure.execution_context, _SPAN_ATTRIBUTE, None)
            _failed(span, failure.original_exception)
            span.end()


class RequestSpans:
    """The server span of every HTTP request (pure ASGI), named `METHOD /route/{template}`.

    Attributes are OpenTelemetry's HTTP server conventions, without what could carry a secret: no header but the
    user agent, no query string, no raw path (the route template instead). An exception escaping the app (the
    `ErrorBoundary` outside answers it) marks the span as an error with the exception's class, not its message.
    """

    def __init__(self, app: ASGIApp, *, names: RouteNames, proxies: TrustedProxies, trust_any_parent: bool) -> None:
        self.app = app
        self._names = names
        self._proxies = proxies
        self._trust_any_parent = trust_any_parent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracing = current()
        if scope["type"] != "http" or tracing is None:
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        user_agent: str | None = None
        for name, value in scope["headers"]:
            if name in _CONTEXT_HEADERS:
                carrier[_CONTEXT_HEADERS[name]] = value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
        parent, links = self._parent(scope, carrier)
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        route = self._names(scope["path"])
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "http.route": route,
            "url.scheme": self._proxies.scheme(scope),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        client_ip = self._proxies.client_ip(scope)
        if client_ip:
            attributes["client.address"] = client_ip
        if user_agent:
            attributes["user_agent.original"] = user_agent
        with tracing.tracer.start_as_current_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes, links=links,
            record_exception=False, set_status_on_exception=False,
        ) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                        span.set_attribute("error.type", str(status))
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            except BaseException as exc:
                _failed(span, exc)
                raise

    def _parent(self, scope: Scope, carrier: dict[str, str]) -> tuple[Context, list[Link]]:
        """The context the request's span continues: the caller's when its `traceparent` may be believed; else a
        new trace (an empty context, so no decision of the caller's, sampled or not, applies), linked to the
        caller's span when it sent one."""
        root = otel_context.Context()
        if "traceparent" not in carrier:
            return root, []
        remote = _W3C.extract(carrier, context=root)
        client = scope.get("client")
        if self._trust_any_parent or self._proxies.trusts(client[0] if client else None):
            return remote, []
        caller = trace.get_current_span(remote).get_span_context()
        return root, [Link(caller)] if caller.is_valid else []
