"""What one running server holds: the services, the key ring it signs with, and its view of the network."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import event

from bankgate.config import Settings
from bankgate.events import Events, Outcome
from bankgate.outage import DATABASE, OutageLog, unavailable_service
from bankgate.services import Services
from bankgate.tokens.issuer import TokenIssuer
from bankgate.tokens.keys import KeyRing

__all__ = ["Runtime"]

log = logging.getLogger("bankgate")

REVOCATION_PURGE_INTERVAL = 3600.0
IDEMPOTENCY_PURGE_INTERVAL = 300.0


class Runtime:
    def __init__(self, services: Services, keys: KeyRing, issuer_url: str) -> None:
        from bankgate.certheaders import ClientCertificateSource
        from bankgate.net import TrustedProxies

        self.services = services
        self.settings: Settings = services.settings
        self.keys = keys
        self.issuer_url = issuer_url
        #: Outages of the database and Redis, logged once each with a count (requests, background jobs, audit).
        self.outages = OutageLog(log)
        services.audit.outages = self.outages
        #: Where the server's events go: the audit writer first; `events.add(sink)` for metrics or tracing.
        self.events = Events([services.audit])
        self.tokens = TokenIssuer(
            keys, issuer=issuer_url, audience=self.settings.audience, environment=self.settings.environment
        )
        self.proxies = TrustedProxies(self.settings.trusted_proxies)
        self.client_certs = ClientCertificateSource(
            self.proxies, self.settings.client_cert_header, name=self.settings.client_cert_header_name
        )
        from bankgate.guard.local import server_guard

        self.guard = server_guard(self)  # every API route authenticates through this one guard
        self.guard.tell(self.events)
        from bankgate.idempotency import open_store

        self.idempotency = open_store(self.settings.idempotency_store, services.store)
        self.sandbox: Any = None
        if self.settings.environment == "sandbox":
            from bankgate.sandbox import sandbox_app

            self.sandbox = sandbox_app(self)
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Runtime(issuer={self.issuer_url!r}, active_kid={self.keys.active.kid!r})"

    @classmethod
    async def start(cls, settings: Settings, issuer_url: str) -> Runtime:
        services = await Services.open(settings)
        try:
            keys = KeyRing(await services.keys.load())
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
        # Any statement that completes shows the database answers again: that ends an outage in the log.
        event.listen(services.store.engine.sync_engine, "after_cursor_execute", runtime._statement_ran)
        # Everything loaded so far lives as long as the server: keep it out of the cyclic collector's scans,
        # which otherwise walk these objects again and again under load.
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
        ]
        return runtime

    def _statement_ran(self, *_: Any) -> None:
        self.outages.reachable(DATABASE)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            event.remove(self.services.store.engine.sync_engine, "after_cursor_execute", self._statement_ran)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.services.audit.stop()
        await self.idempotency.close()
        await self.services.close()

    async def sync_changes(self) -> None:
        """Revocations and changes made by other processes: what a cached token, record or answer may depend on."""
        try:
            await self.services.revocations.sync()
        finally:
            await self.services.changes.sync()

    async def refresh_keys(self) -> None:
        self.keys.replace(await self.services.keys.load(known=self.keys.by_kid))

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
                    log.exception("background job %s failed; will retry", getattr(job, "__name__", job))
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
