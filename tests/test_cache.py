"""The hot paths' time-bounded cache: one load per key at a time, nothing stale stored after a forget."""

from __future__ import annotations

import asyncio

import pytest

from bankgate.cache import TtlCache
from bankgate.services import Services


async def test_requests_that_find_an_entry_expired_share_one_load() -> None:
    cache: TtlCache[str, int] = TtlCache(60)
    loads = 0
    gate = asyncio.Event()

    async def load() -> int:
        nonlocal loads
        loads += 1
        await gate.wait()
        return 42

    waiting = [asyncio.create_task(cache.get("k", load)) for _ in range(100)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*waiting) == [42] * 100
    assert loads == 1
    assert await cache.get("k", load) == 42 and loads == 1  # stored


async def test_a_failed_load_reaches_every_waiter_and_is_not_stored() -> None:
    cache: TtlCache[str, int] = TtlCache(60)
    attempts = 0

    async def broken() -> int:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("database away")

    results = await asyncio.gather(*(cache.get("k", broken) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and attempts == 1

    async def fine() -> int:
        return 7

    assert await cache.get("k", fine) == 7  # the next request tries again


async def test_a_value_loaded_before_a_forget_is_handed_out_but_not_kept() -> None:
    cache: TtlCache[str, str] = TtlCache(60)
    gate = asyncio.Event()

    async def old() -> str:
        await gate.wait()
        return "active"

    first = asyncio.create_task(cache.get("client", old))
    await asyncio.sleep(0.01)
    cache.forget("client")  # e.g. revoked while the load was reading
    gate.set()
    assert await first == "active"

    async def new() -> str:
        return "revoked"

    assert await cache.get("client", new) == "revoked"


async def test_a_caller_that_goes_away_does_not_cancel_the_others_load() -> None:
    cache: TtlCache[str, int] = TtlCache(60)
    gate = asyncio.Event()

    async def load() -> int:
        await gate.wait()
        return 1

    leaving = asyncio.create_task(cache.get("k", load))
    staying = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0.01)
    leaving.cancel()
    gate.set()
    assert await staying == 1
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_zero_ttl_caches_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(0)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        return loads

    assert await cache.get("k", load) == 1
    assert await cache.get("k", load) == 2


async def test_token_requests_at_client_cache_expiry_read_the_client_once(services: Services) -> None:
    issued = await services.clients.create(name="herd", scopes=["app_1"])
    api_key = issued.client.api_key
    reads = 0
    real = services.clients._load

    async def counting(key: str) -> object:
        nonlocal reads
        reads += 1
        return await real(key)

    services.clients._load = counting  # type: ignore[method-assign]
    services.clients.forget(api_key)
    clients = await asyncio.gather(*(services.clients.authenticate(api_key, issued.secret_key) for _ in range(50)))
    assert {client.id for client in clients} == {issued.client.id}
    assert reads == 1
