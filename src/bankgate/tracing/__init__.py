"""OpenTelemetry tracing, an optional extra (`pip install 'bankgate[otel]'`), off by default.

With `BANKGATE_TRACING=otlp` (or `console`) every request gets a server span, outermost in the app's middleware
list (fast paths included), named by its bounded route template (`POST /oauth/token`), with the token signing,
argon2 work, database statements and Redis commands of that request as its children. W3C `traceparent` /
`tracestate` continue the caller's trace when the peer is a trusted proxy (`BANKGATE_TRACING_PARENT=trusted`, the
default) or anyone (`any`); from anyone else the request starts a new trace that links to the caller's.

Off, nothing of OpenTelemetry is imported: the request layer is not in the app at all and `span()` returns a
shared no-op context manager after one global read. All that touches OpenTelemetry lives in `bankgate.tracing._sdk`,
imported only when tracing is on.

One tracing configuration per process, as OpenTelemetry itself has: the first `start` sets it up, the last `stop`
flushes the exporter and takes the instrumentation off again.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankgate.config import Settings
    from bankgate.routenames import RouteNames
    from bankgate.runtime import Runtime
    from bankgate.tracing._sdk import Tracing
    from bankgate.web.asgi import ASGIApp

__all__ = ["INSTALL_HINT", "TracingUnavailable", "current", "request_layers", "require", "span", "start", "stop"]

INSTALL_HINT = "pip install 'bankgate[otel]'"

_NO_SPAN: AbstractContextManager[Any] = contextlib.nullcontext()
#: The process's tracing while a runtime with tracing on runs, else None (the hot paths read only this).
_active: Tracing | None = None
_users = 0


class TracingUnavailable(RuntimeError):
    """Tracing is turned on but OpenTelemetry is not installed."""


def require(settings: Settings) -> None:
    """Refuse tracing turned on without the extra installed, saying how to install it; nothing when off."""
    if settings.tracing == "off":
        return
    try:
        import bankgate.tracing._sdk  # noqa: F401
    except ImportError as exc:
        raise TracingUnavailable(
            f"BANKGATE_TRACING={settings.tracing} needs OpenTelemetry, which is not installed "
            f"({exc.name or 'opentelemetry'} is missing): {INSTALL_HINT}"
        ) from None


def request_layers(settings: Settings, names: RouteNames) -> list[Any]:
    """The outer middleware that gives every request its span (for `bankgate.app`'s middleware list, first):
    none when tracing is off. `names` names the spans by route template (`bankgate.routenames`)."""
    if settings.tracing == "off":
        return []
    require(settings)
    from bankgate.net import TrustedProxies
    from bankgate.tracing._sdk import RequestSpans

    proxies = TrustedProxies(settings.trusted_proxies)
    trust_any = settings.tracing_parent == "any"

    def layer(app: ASGIApp) -> ASGIApp:
        return RequestSpans(app, names=names, proxies=proxies, trust_any_parent=trust_any)

    return [layer]


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current request's span around a step: `with tracing.span("bankgate.token.sign") as
    span:` gives the OpenTelemetry span (for attributes, never a secret), or None from a shared no-op context
    manager when tracing is off."""
    tracing = _active
    if tracing is None:
        return _NO_SPAN
    return tracing.span(name)


def current() -> Tracing | None:
    """The process's running tracing (its `provider` takes more span processors, e.g. a test's in-memory
    exporter), or None."""
    return _active


def start(runtime: Runtime) -> None:
    """Set up tracing for a runtime that starts (the exporter, the database engine's and Redis's spans); nothing
    when its settings turn tracing off."""
    global _active, _users
    if runtime.settings.tracing == "off":
        return
    require(runtime.settings)
    from bankgate.tracing._sdk import Tracing

    if _active is None:
        _active = Tracing.open(runtime.settings)
    _active.watch_engine(runtime.services.store.engine.sync_engine)
    _users += 1


def stop(runtime: Runtime) -> None:
    """A runtime with tracing on stops: its engine is no longer watched; the last one flushes and shuts down."""
    global _active, _users
    tracing = _active
    if runtime.settings.tracing == "off" or tracing is None:
        return
    tracing.unwatch_engine(runtime.services.store.engine.sync_engine)
    _users -= 1
    if _users <= 0:
        _active, _users = None, 0
        tracing.close()
