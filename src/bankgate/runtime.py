"""What one running server holds: the services, the key ring it signs with, and its view of the network."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from bankgate import tracing
from bankgate.certheaders import ClientCertificateSource
from bankgate.clock import SYSTEM, Clock
from bankgate.config import Settings
from bankgate.credentials.authenticate import ClientAuthentication
from bankgate.events import Events, Outcome
from bankgate.health import Readiness
from bankgate.idempotency import open_store
from bankgate.logs import AccessLogSink
from bankgate.net import TrustedProxies
from bankgate.outage import DATABASE, DefectLog, OutageLog, unavailable_service
from bankgate.resource import server_guard
from bankgate.services import Services
from bankgate.tokens.issuer import TokenIssuer
from bankgate.tokens.keys import KEY_CHANGE, KeyRing

if TYPE_CHECKING:
    from bankgate.metrics import ServerMetrics

__all__ = ["Runtime"]

log = logging.getLogger("bankgate")

REVOCATION_PURGE_INTERVAL = 3600.0
#: How often counts of repeated defects that stopped are told (a count is due at most once a minute).
DEFECT_FLUSH_INTERVAL = 10.0
IDEMPOTENCY_PURGE_INTERVAL = 300.0


class Runtime:
    #: Whether `start` ends with a full collection and moves everything loaded so far out of the cyclic
    #: collector's reach (`gc.freeze`): right for a server process, which starts one runtime and keeps it. A process
    #: that starts many (the test suite) turns it off: each full collection walks its whole heap again.
    freeze_heap = True

    def __init__(self, services: Services, keys: KeyRing, issuer_url: str) -> None:
        self.services = services
        self.settings: Settings = services.settings
        self.keys = keys
        self.issuer_url = issuer_url
        #: Outages of the database and Redis, logged once each with a count (requests, background jobs, audit).
        self.outages = OutageLog(log)
        services.audit.outages = self.outages
        #: Defects (500s, background jobs' bugs): a traceback once, then a count a minute while they repeat.
        self.defects = DefectLog(log, clock=services.clock.monotonic)
        #: Where the server's events go: the audit writer first, the JSON access log (when `serve` turns it on),
        #: the metrics; `events.add(sink)` for tracing.
        self.events = Events([services.audit, AccessLogSink()])
        self.outages.tell(self.events)
        services.throttle.tell(self.events)
        #: Prometheus metrics (`BANKGATE_METRICS`), a sink of the events; None when off: nothing imported, no sink.
        self.metrics: ServerMetrics | None = None
        if self.settings.metrics != "off":
            from bankgate.metrics import ServerMetrics

            self.metrics = ServerMetrics(self)
            self.events.add(self.metrics.sink)
        self.tokens = TokenIssuer(
            keys, issuer=issuer_url, audience=self.settings.audience, environment=self.settings.environment,
            clock=services.clock,
        )
        self.proxies = TrustedProxies(self.settings.trusted_proxies)
        self.client_certs = ClientCertificateSource(
            self.proxies, self.settings.client_cert_header, name=self.settings.client_cert_header_name
        )
        #: How every entrance checks a client key pair (throttled); each renders and audits its refusals.
        self.client_auth = ClientAuthentication(services.clients, services.throttle, self.settings.environment)
        self.guard = server_guard(self)  # every API route authenticates through this one guard
        self.guard.tell(self.events)
        self.idempotency = open_store(self.settings.idempotency_store, services.store)
        self.readiness = Readiness(self)
        self.sandbox: Any = None
        if self.settings.environment == "sandbox":
            from bankgate.sandbox import sandbox_app

            self.sandbox = sandbox_app(self)
        from bankgate.adminapi import AdminApi

        #: The admin API (`/admin/v1`) and the administrators' side of the token endpoint.
        self.admin_api = AdminApi(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._key_reloads: set[asyncio.Task[None]] = set()
        # A key retired at once, here or (seen on the change feed) in another process.
        services.changes.subscribe(KEY_CHANGE, self._key_retired)

    def __repr__(self) -> str:
        return f"Runtime(issuer={self.issuer_url!r}, active_kid={self.keys.active.kid!r})"

    @classmethod
    async def start(cls, settings: Settings, issuer_url: str, *, clock: Clock = SYSTEM) -> Runtime:
        services = await Services.open(settings, clock=clock)
        try:
            keys = KeyRing(await services.keys.load(), clock=clock)
        except BaseException:
            await services.close()
            raise
        runtime = cls(services, keys, issuer_url)
        try:
            await services.revocations.sync()
            await services.changes.sync()
        except BaseException:
            await services.close()
            raise
        services.audit.start()
        tracing.start(runtime)  # nothing when BANKGATE_TRACING is off
        # Any statement that completes shows the database answers again: that ends an outage in the log.
        event.listen(services.store.engine.sync_engine, "after_cursor_execute", runtime._statement_ran)
        # Everything loaded so far lives as long as the server: keep it out of the cyclic collector's scans,
        # which otherwise walk these objects again and again under load.
        if cls.freeze_heap:
            gc.collect()
            gc.freeze()
        runtime._tasks = [
            asyncio.create_task(runtime._every(settings.key_refresh_interval, runtime.refresh_keys)),
            asyncio.create_task(runtime._every(REVOCATION_PURGE_INTERVAL, services.revocations.purge)),
            asyncio.create_task(runtime._every(REVOCATION_PURGE_INTERVAL, services.changes.purge)),
            asyncio.create_task(runtime._every(settings.revocation_sync_interval, runtime.sync_changes)),
            asyncio.create_task(runtime._every(IDEMPOTENCY_PURGE_INTERVAL, runtime.idempotency.purge)),
            # Blocks and issuance counts shared with the other server processes (each also purges its old rows).
            asyncio.create_task(runtime._every(settings.throttle_sync_interval, services.throttle.sync)),
            asyncio.create_task(runtime._every(settings.rate_limit_sync_interval, services.limiter.sync)),
            asyncio.create_task(runtime._every(DEFECT_FLUSH_INTERVAL, runtime._flush_defects)),
        ]
        if runtime.metrics is not None:
            from bankgate.metrics import REFRESH_INTERVAL

            runtime._tasks.append(asyncio.create_task(runtime._every(REFRESH_INTERVAL, runtime.metrics.refresh)))
        return runtime

    async def _flush_defects(self) -> None:
        self.defects.flush()

    def _statement_ran(self, *_: Any) -> None:
        self.outages.reachable(DATABASE)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            event.remove(self.services.store.engine.sync_engine, "after_cursor_execute", self._statement_ran)
        tasks = [*self._tasks, *self._key_reloads]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.defects.flush()
        await self.services.audit.stop()
        await self.idempotency.close()
        await self.services.close()
        if self.metrics is not None:
            self.metrics.close()
        tracing.stop(self)

    async def sync_changes(self) -> None:
        """Revocations and changes made by other processes: what a cached token, record or answer may depend on."""
        try:
            await self.services.revocations.sync()
        finally:
            await self.services.changes.sync()

    async def refresh_keys(self) -> None:
        self.keys.replace(await self.services.keys.load(known=self.keys.by_kid))

    def _key_retired(self, kid: str) -> None:
        """Stop publishing and accepting `kid` now, forget the tokens verified before (some were signed with it),
        and reload the ring at once: the retirement may have rotated to a new active key."""
        self.keys.withdraw(kid)
        self.guard.verifier.forget()
        try:
            task = asyncio.get_running_loop().create_task(self._reload_keys())
        except RuntimeError:  # no loop: the periodic refresh brings the new key
            return
        self._key_reloads.add(task)
        task.add_done_callback(self._key_reloads.discard)

    async def _reload_keys(self) -> None:
        try:
            await self.refresh_keys()
        except Exception as exc:
            failing = unavailable_service(exc)
            if failing is None:
                self.defects.failed(exc, "reloading the signing keys after a retirement failed; will retry")
            else:
                self.outages.failed(failing, exc)

    async def _every(self, interval: float, job: Any) -> None:
        """Run `job` every `interval` seconds. An outage goes to the outage log (one line, not one per run). Any
        other failure is a defect, logged in full."""
        failing: str | None = None
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception as exc:
                failing = unavailable_service(exc)
                if failing is None:
                    self.defects.failed(exc, f"background job {getattr(job, '__name__', job)} failed; will retry")
                else:
                    self.outages.failed(failing, exc)
            else:
                # A job may succeed without a statement (nothing to do): the database's outage ends only when a
                # statement completes (`_statement_ran`); another service's when a job that failed on it works.
                if failing is not None and failing != DATABASE:
                    self.outages.reachable(failing)
                failing = None

    def audit(
        self,
        event: str,
        actor: str,
        outcome: Outcome,
        source_ip: str | None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Tell the sinks that want `event` (the audit writer wants all but the per-request verdicts)."""
        self.events.channel(event).emit(actor, outcome, source_ip, detail)
