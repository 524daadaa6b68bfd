"""Prometheus metrics of the server (prometheus-client), fed by its events (`bankgate.events`), not by a middleware:
tokens issued and denied, guard verdicts, Idempotency-Key outcomes, throttle blocks and backing-service errors are
counted where the server already tells them, and request durations come from the `http.request` event every
request produces, the token endpoints' fast paths included.

Labels take values from fixed vocabularies (anything else counts as `other`): never a key, a token, an address or a
raw path, so that no caller can create series. Under `bankgate serve --workers N` the figures live in
`PROMETHEUS_MULTIPROC_DIR` (set by `serve` before the workers start) and a scrape of any worker adds up all of them.

Imported only when metrics are on (`BANKGATE_METRICS`): with metrics off the server neither imports
prometheus-client nor adds a sink, so its events cost nothing.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bankgate.events import AuditEvent
from bankgate.idempotency import OUTCOMES
from bankgate.outage import unavailable_service

if TYPE_CHECKING:
    from bankgate.runtime import Runtime

__all__ = [
    "MULTIPROC_DIR",
    "CacheStats",
    "MetricsSink",
    "ServerMetrics",
    "forget_dead_workers",
    "metrics_route",
]

log = logging.getLogger("bankgate")

#: prometheus-client's own variable: set, every metric of this process lives in a file there (multiprocess mode).
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between updates of what is read rather than told: cache hit counts, the revocation list's age.
REFRESH_INTERVAL = 5.0
OTHER = "other"

STYLES = frozenset({"api_key", "certificate", "admin"})
#: Why a token was refused: the reasons the endpoints write to the audit trail (`audit_reason`, `UserAuthError`).
TOKEN_REASONS = frozenset({
    "access_denied", "authorization_parse_failure", "certificate_expired", "certificate_revoked", "client_revoked",
    "foreign_certificate", "invalid_client", "invalid_grant", "invalid_request", "invalid_scope", "ip_not_allowed",
    "malformed_basic", "no_certificate", "no_credentials", "passphrase_not_reset", "rate_limited", "slow_down",
    "throttled", "totp_replayed", "unauthorized_client", "unknown_admin", "unknown_api_key", "unknown_certificate",
    "unknown_user", "unsupported_auth_scheme", "unsupported_grant_type", "user_disabled", "wrong_environment",
    "wrong_password", "wrong_secret",
})
#: The guard's refusals: the error code of the answer's body (`invalid_request` also for no credentials at all).
GUARD_REASONS = frozenset({
    "access_denied", "insufficient_scope", "invalid_client", "invalid_request", "invalid_token", "slow_down",
    "temporarily_unavailable",
})
THROTTLE_SCOPES = frozenset({"ip", "account_ip", "account"})
SERVICES = {"database": "database", "Redis": "redis"}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUSES: dict[object, str] = {status: str(status) for status in range(100, 600)}
#: Distinct routes counted at most; the `http.request` event names route templates, so a server has a few dozen.
MAX_ROUTES = 200
_ROUTE = re.compile(r"/[A-Za-z0-9_./{}*-]{0,127}|unmatched")
#: From half a millisecond (a remembered token at the guard) to 10 s (a request waiting on a slow database).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _bounded(value: object, vocabulary: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in vocabulary else OTHER


class _Children:
    """A labelled metric's children by label values, remembered: prometheus-client checks the values on every
    `labels()` call, which the hot paths need not pay for twice."""

    __slots__ = ("_found", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._found: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._found.get(values)
        if child is None:
            child = self._found[values] = self._metric.labels(*values)
        return child


class MetricsSink:
    """An `EventSink` turning the server's events into counters and histograms (see the module's docstring).

    An event is counted in a plain dictionary, folded into prometheus-client's metrics by `fold` (at every scrape and
    every few seconds): a dictionary increment costs a tenth of a metric's, whose value sits behind a lock (and,
    under several workers, in a memory-mapped file)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Iterable[str]) -> _Children:
            return _Children(Counter(name, doc, list(labels), registry=registry))

        self._issued = counter("bankgate_tokens_issued_total", "Access tokens issued, by style (api_key: client "
                               "credentials; certificate: the authorize endpoint over mutual TLS; admin).", ["style"])
        self._denied = counter("bankgate_tokens_denied_total", "Token requests refused, by style and reason.",
                               ["style", "reason"])
        self._guard = counter("bankgate_guard_verdicts_total", "Guard verdicts on API calls: allowed (reason "
                              "none) or denied, by reason.", ["verdict", "reason"])
        self._idempotency = counter("bankgate_idempotency_requests_total", "Requests with an Idempotency-Key, by "
                                    "outcome.", ["outcome"])
        self._blocks = counter("bankgate_throttle_blocks_total", "Brute-force blocks placed, by what is blocked: "
                               "a source address, an account from one address, an account everywhere.", ["scope"])
        self._backend = counter("bankgate_backend_errors_total", "Failures of the database and Redis, by service "
                                "and whether a request was refused (refused) or background work failed (failed).",
                                ["service", "kind"])
        self._requests = counter("bankgate_http_requests_total", "HTTP requests answered, by route template, "
                                 "method and status.", ["route", "method", "status"])
        self._duration = _Children(Histogram(
            "bankgate_http_request_duration_seconds", "Seconds from a request's first byte reaching the app to "
            "its answer's last byte, by route template and method.", ["route", "method"], registry=registry,
            buckets=DURATION_BUCKETS,
        ))
        self._bounds = (*DURATION_BUCKETS, float("inf"))
        self._counts: dict[tuple[_Children, tuple[str, ...]], int] = {}
        self._observed: dict[tuple[str, str], list[float]] = {}  # (route, method) -> [sum, count per bucket, ...]
        self._allowed = (self._guard, ("allowed", "none"))
        self._routes: set[str] = set()
        self._handlers = {
            "token.issued": self._token_issued,
            "admin.token_issued": self._admin_token_issued,
            "token.denied": self._token_denied,
            "guard.allowed": self._guard_allowed,
            "guard.denied": self._guard_denied,
            "throttle.blocked": self._throttle_blocked,
            "outage.error": self._outage_error,
            "http.request": self._http_request,
            **{f"idempotency.{outcome}": self._idempotency_outcome for outcome in OUTCOMES},
        }
        self._failed: set[str] = set()

    def __repr__(self) -> str:
        return f"MetricsSink(events={len(self._handlers)})"

    def wants(self, event: str) -> bool:
        return event in self._handlers

    def record(self, event: AuditEvent) -> None:
        """Count `event`; a defect here is logged once per event name and never fails the request."""
        try:
            self._handlers[event.event](event)
        except Exception:
            if event.event not in self._failed:
                self._failed.add(event.event)
                log.exception("metrics: event %s could not be counted", event.event)

    def fold(self) -> None:
        """Add what was counted since the last fold to the metrics."""
        counts, self._counts = self._counts, {}
        for (children, labels), count in counts.items():
            children(*labels).inc(count)
        observed, self._observed = self._observed, {}
        for labels, (total, *buckets) in observed.items():
            # Histogram.observe, many observations at once: its sum and its (not cumulative) bucket counts.
            child = self._duration(*labels)
            child._sum.inc(total)
            for index, observations in enumerate(buckets):
                if observations:
                    child._buckets[index].inc(observations)

    def _count(self, children: _Children, *labels: str) -> None:
        key = (children, labels)
        self._counts[key] = self._counts.get(key, 0) + 1

    @staticmethod
    def _style(event: AuditEvent) -> str:
        style = event.detail.get("style")
        if style in STYLES:
            return str(style)
        # The token endpoint serves merchant clients and administrators; an admin key pair names itself.
        return "admin" if event.actor.startswith("bka_") else "api_key"

    def _token_issued(self, event: AuditEvent) -> None:
        self._count(self._issued, self._style(event))

    def _admin_token_issued(self, event: AuditEvent) -> None:
        self._count(self._issued, "admin")

    def _token_denied(self, event: AuditEvent) -> None:
        self._count(self._denied, self._style(event), _bounded(event.detail.get("reason"), TOKEN_REASONS))

    def _guard_allowed(self, event: AuditEvent) -> None:
        counts, key = self._counts, self._allowed  # the hottest event of all: one dictionary update
        counts[key] = counts.get(key, 0) + 1

    def _guard_denied(self, event: AuditEvent) -> None:
        self._count(self._guard, "denied", _bounded(event.detail.get("reason"), GUARD_REASONS))

    def _idempotency_outcome(self, event: AuditEvent) -> None:
        self._count(self._idempotency, event.event.partition(".")[2])

    def _throttle_blocked(self, event: AuditEvent) -> None:
        self._count(self._blocks, _bounded(event.detail.get("scope"), THROTTLE_SCOPES))

    def _outage_error(self, event: AuditEvent) -> None:
        detail = event.detail
        kind = "refused" if detail.get("refused") else "failed"
        self._count(self._backend, SERVICES.get(detail.get("service"), OTHER), kind)  # type: ignore[arg-type]

    def _http_request(self, event: AuditEvent) -> None:
        detail = event.detail
        route = detail.get("route")
        if route not in self._routes:
            route = self._route(route)
        method = detail.get("method")
        if method not in METHODS:
            method = "OTHER"
        key = (self._requests, (route, method, _STATUSES.get(detail.get("status"), OTHER)))
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        duration = detail.get("duration")
        if isinstance(duration, (int, float)) and duration >= 0:
            observed = self._observed.get((route, method))
            if observed is None:
                observed = self._observed[(route, method)] = [0.0] * (len(self._bounds) + 1)
            observed[0] += duration
            observed[1 + bisect.bisect_left(self._bounds, duration)] += 1

    def _route(self, route: object) -> str:
        """The route template, if it looks like one and the routes counted so far are few enough; else `other`."""
        if not isinstance(route, str):
            return OTHER
        if len(self._routes) >= MAX_ROUTES or not _ROUTE.fullmatch(route):
            return OTHER
        self._routes.add(route)
        return route


class CacheStats(Protocol):
    """What a cache tells of itself: lookups answered from memory and lookups that were not (plain counts)."""

    hits: int
    misses: int


class _Families:
    """Metric families computed for one scrape, in the shape `generate_latest` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class ServerMetrics:
    """The metrics of one server process: the sink its events go to, what is read at each refresh (cache hit
    counts, the revocation list's age) and at each scrape (the certificates' expiry), and the text exposition."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.directory = os.environ.get(MULTIPROC_DIR) or None
        self.registry = CollectorRegistry(auto_describe=False)
        self.sink = MetricsSink(self.registry)
        self._cache_hits = _Children(Counter("bankgate_cache_hits_total", "Lookups answered from a per-process "
                                             "cache, by cache.", ["cache"], registry=self.registry))
        self._cache_misses = _Children(Counter("bankgate_cache_misses_total", "Lookups a per-process cache could "
                                               "not answer (read from the database or verified again), by cache.",
                                               ["cache"], registry=self.registry))
        self._revocation_age = Gauge(
            "bankgate_revocation_sync_age_seconds", "Seconds since the revocation deny lists were last reloaded "
            "(the oldest over the server's processes); tokens are refused with 503 past the allowed staleness.",
            registry=self.registry, multiprocess_mode="livemax",
        )
        self._counted: dict[str, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"ServerMetrics(multiprocess={self.directory is not None})"

    def caches(self) -> Mapping[str, CacheStats]:
        """The server's per-process caches, by the name their counts carry."""
        runtime = self._runtime
        found: dict[str, CacheStats] = {
            "clients": runtime.services.clients.cache,
            "ip_allow_list": runtime.services.allowlist.cache,
            "verified_tokens": runtime.guard.verifier,
        }
        users = getattr(runtime, "_user_auth_caches", None)  # made at the first certificate-style request
        if users is not None:
            found.update({"users": users.users, "certificates": users.certificates, "passwords": users.passwords})
        return found

    async def refresh(self) -> None:
        """Fold the events and the caches' counts since the last refresh into the metrics; set the revocation
        list's age."""
        self.sink.fold()
        for name, cache in self.caches().items():
            hits, misses = cache.hits, cache.misses
            before_hits, before_misses = self._counted.get(name, (0, 0))
            if hits > before_hits:
                self._cache_hits(name).inc(hits - before_hits)
            if misses > before_misses:
                self._cache_misses(name).inc(misses - before_misses)
            self._counted[name] = (hits, misses)
        age = self._runtime.services.revocations.age()
        if age is not None:
            self._revocation_age.set(age)

    async def exposition(self) -> bytes:
        """The text exposition format: this process's figures (all workers' in multiprocess mode), then the
        certificates' expiry read now from the database (left out while the database does not answer)."""
        await self.refresh()
        if self.directory is None:
            text = generate_latest(self.registry)
        else:
            forget_dead_workers(self.directory)
            every_worker = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(every_worker, path=self.directory)
            text = generate_latest(every_worker)
        try:
            expiry = await self._runtime.services.users.certificate_expiry()
        except Exception as exc:
            if unavailable_service(exc) is None:
                raise
            return text
        family = GaugeMetricFamily(
            "bankgate_user_certificate_expiry_timestamp_seconds", "The earliest notAfter (UNIX time) of each user's "
            "valid certificates.", labels=["user"],
        )
        for username, not_after in sorted(expiry.items()):
            family.add_metric([username], not_after)
        return text + generate_latest(_Families([family]))

    def close(self) -> None:
        """This process stops: in multiprocess mode its live gauges stop counting (counters stay in the totals)."""
        if self.directory is not None:
            with contextlib.suppress(OSError):
                mark_process_dead(os.getpid(), self.directory)


_WORKER_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def forget_dead_workers(directory: str) -> None:
    """`mark_process_dead` for every process whose live gauges are in `directory` and which no longer runs (a
    worker killed and replaced never said goodbye)."""
    for path in Path(directory).glob("gauge_live*.db"):
        match = _WORKER_FILE.fullmatch(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, directory)
        except PermissionError:
            continue


async def _metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: the Prometheus text exposition format. On the admin listener (`BANKGATE_METRICS=admin`) only
    for the addresses the admin API answers (`BANKGATE_ADMIN_ALLOWED_IPS`; in production none until set)."""
    runtime: Runtime = request.app.state.runtime
    if runtime.settings.metrics == "admin":
        source_ip = runtime.proxies.client_ip(request.scope)
        if not runtime.admin_api.networks.allows(source_ip):
            description = (f"/metrics does not answer {source_ip or 'this address'}: it answers the addresses in "
                           "BANKGATE_ADMIN_ALLOWED_IPS, as the admin API does")
            return JSONResponse({"error": "access_denied", "error_description": description}, 403,
                                headers={"Cache-Control": "no-store"})
    metrics = runtime.metrics
    assert metrics is not None  # the route exists only when metrics are on
    return Response(await metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                         "Cache-Control": "no-store"})


def metrics_route() -> Route:
    return Route("/metrics", _metrics_endpoint, methods=["GET"])
