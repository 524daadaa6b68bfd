"""Signing keys through the seam: the key store hands out a signer for the active key only, nothing else sees a
private key, and a key retired at once (it may be compromised) leaves the JWKS and is refused at once here and
within one change-feed sync elsewhere, never signing again.

Service level on SQLite and PostgreSQL; then the app in process (its lifespan, over `httpx.ASGITransport`), a second
`Services` on the same database playing the command line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from bankgate.app import BankgateApp, create_app
from bankgate.config import Settings, load_settings
from bankgate.runtime import Runtime
from bankgate.services import Services
from bankgate.tokens import open_key_store
from bankgate.tokens.issuer import TokenIssuer
from bankgate.tokens.jws import CompactSigner
from bankgate.tokens.keys import KeyRetireError, KeyRing, NoActiveKey, SigningKey
from conftest import basic
from key_helpers import decrypted_signing_keys

ISSUER = "http://bankgate.test"
WHOAMI = "/api/v1/whoami"
JWKS = "/.well-known/jwks.json"
#: Every other process refuses a retired key's tokens within this (one change-feed sync is 0.5 s).
DEADLINE = 3.0


async def _events(services: Services, name: str) -> list[Any]:
    return await services.audit.tail(50, event=name)


def _published(keys: list[SigningKey]) -> list[str]:
    return [k.kid for k in keys]


# -- the seam ---------------------------------------------------------------------------------------------


async def test_only_the_active_key_comes_with_a_signer_and_it_signs_what_its_public_key_verifies(
    services: Services,
) -> None:
    [old] = await services.keys.load()
    new = await services.keys.rotate("ES256", retire_publish_for=services.key_publish_seconds)
    loaded = {k.kid: k for k in await services.keys.load()}
    assert loaded[old.kid].signer is None, "a rotated-out key must never sign again"
    signer = loaded[new.kid].signer
    assert signer is not None and (signer.kid, signer.alg) == (new.kid, "ES256")
    assert signer.public_jwk == new.public_jwk
    token = CompactSigner(signer).sign({"sub": "check"})
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": new.kid, "typ": "at+jwt"}
    assert jwt.decode(token, loaded[new.kid].public_key, algorithms=["ES256"])["sub"] == "check"
    # The public key a SigningKey carries is the published one, for the retired key too.
    assert jwt.PyJWK(loaded[old.kid].jwk).key.public_numbers() == loaded[old.kid].public_key.public_numbers()


async def test_no_repr_shows_a_private_key(services: Services) -> None:
    [key] = await services.keys.load()
    private = (await decrypted_signing_keys(services))[key.kid]
    secret = str(private.private_numbers().d)  # type: ignore[union-attr]
    for shown in (repr(key), repr(key.signer), repr(CompactSigner(key.signer)), repr(services.keys),  # type: ignore[arg-type]
                  repr(services.keys.store), repr(KeyRing([key]))):
        assert secret not in shown and "PrivateKey" not in shown and "BEGIN" not in shown, shown
    assert "hidden" in repr(key.signer)


def test_an_unknown_key_store_is_refused_naming_the_ones_there_are(settings: Settings) -> None:
    with pytest.raises(ValueError, match=r"unknown key store 'kms'.*database"):
        open_key_store(settings.model_copy(update={"key_store": "kms"}), None, None)  # type: ignore[arg-type]


# -- retiring a key at once -------------------------------------------------------------------------------


async def test_retiring_the_active_key_alone_is_refused_saying_to_rotate_first(services: Services) -> None:
    [active] = await services.keys.load()
    with pytest.raises(KeyRetireError) as refused:
        await services.keys.retire(active.kid, actor="ops")
    message = str(refused.value)
    assert "active signing key" in message and "rotate first" in message and "--rotate" in message
    assert _published(await services.keys.load()) == [active.kid]
    [event] = await _events(services, "key.retired")
    assert (event.actor, event.outcome, dict(event.detail)) == ("ops", "failure",
                                                                 {"kid": active.kid, "reason": "active_key"})


async def test_retiring_with_rotate_makes_a_new_active_key_and_unpublishes_the_old_one_at_once(
    services: Services,
) -> None:
    [old] = await services.keys.load()
    done = await services.keys.retire(old.kid, actor="ops", rotate=True)
    assert done.retired.kid == old.kid and done.rotated_to is not None
    assert done.rotated_to.alg == services.settings.signing_alg
    loaded = await services.keys.load()
    assert _published(loaded) == [done.rotated_to.kid]  # the old key is not even in its publication window
    assert loaded[0].retired_at is None and loaded[0].signer is not None
    listed = {k.kid: k for k in await services.keys.list()}
    assert listed[old.kid].publish_until is not None and listed[old.kid].publish_until <= time.time()
    assert all(k.signer is None for k in listed.values())
    [rotated] = [e for e in await _events(services, "key.rotated") if e.detail.get("by") != "init"]
    assert dict(rotated.detail) == {"kid": done.rotated_to.kid, "alg": done.rotated_to.alg, "by": "retire"}
    [retired] = await _events(services, "key.retired")
    assert (retired.actor, retired.outcome) == ("ops", "success")
    assert dict(retired.detail) == {"kid": old.kid, "alg": old.alg, "rotated_to": done.rotated_to.kid}
    assert done.as_json()["retired"]["kid"] == old.kid


async def test_retiring_a_rotated_out_key_unpublishes_it_before_its_window_ends(services: Services) -> None:
    [old] = await services.keys.load()
    new = await services.keys.rotate("RS256", retire_publish_for=services.key_publish_seconds)
    assert _published(await services.keys.load()) == [new.kid, old.kid]
    done = await services.keys.retire(old.kid, actor="ops")
    assert done.rotated_to is None and done.retired.kid == old.kid
    assert _published(await services.keys.load()) == [new.kid]


async def test_an_unknown_or_already_retired_key_is_refused_and_nothing_is_rotated(services: Services) -> None:
    [active] = await services.keys.load()
    for rotate in (False, True):
        with pytest.raises(KeyRetireError, match="no published signing key has kid 'nope'"):
            await services.keys.retire("nope", actor="ops", rotate=rotate)
    assert _published(await services.keys.load()) == [active.kid]  # the refusal came before any rotation
    new = await services.keys.rotate("RS256", retire_publish_for=services.key_publish_seconds)
    await services.keys.retire(active.kid, actor="ops")
    with pytest.raises(KeyRetireError, match="already unpublished"):
        await services.keys.retire(active.kid, actor="ops")
    assert _published(await services.keys.load()) == [new.kid]
    reasons = [e.detail["reason"] for e in await _events(services, "key.retired") if e.outcome == "failure"]
    assert reasons == ["unknown_key", "unknown_key", "already_unpublished"]


async def test_a_withdrawn_active_key_never_signs_and_never_comes_back_with_a_stale_reload(
    services: Services,
) -> None:
    keys = await services.keys.load()
    ring = KeyRing(keys)
    issuer = TokenIssuer(ring, issuer=ISSUER, audience="bankgate-api", environment="sandbox")
    issuer.issue(client_id="c", scope=("app_1",), ttl=60)
    assert ring.withdraw(ring.active.kid) is True
    assert ring.jwks == {"keys": []} and ring.by_kid == {}
    with pytest.raises(NoActiveKey):
        issuer.issue(client_id="c", scope=("app_1",), ttl=60)
    with pytest.raises(RuntimeError, match="no active signing key"):
        ring.replace(keys)  # a reload read before the retirement committed
    new = await services.keys.rotate("ES256", retire_publish_for=services.key_publish_seconds)
    ring.replace([new, *keys])
    token = issuer.issue(client_id="c", scope=("app_1",), ttl=60)
    assert token.kid == new.kid and list(ring.by_kid) == [new.kid]


# -- in process: the JWKS, the guard and introspection ----------------------------------------------------


@dataclass
class Running:
    runtime: Runtime
    http: httpx.AsyncClient

    async def token(self, client: Any) -> str:
        response = await self.http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                        headers={"Authorization": basic(client.client.api_key, client.secret_key)})
        assert response.status_code == 201, response.text
        return str(response.json()["access_token"])

    async def jwks_kids(self) -> list[str]:
        response = await self.http.get(JWKS)
        assert response.status_code == 200, response.text
        return [k["kid"] for k in response.json()["keys"]]

    async def whoami(self, token: str) -> httpx.Response:
        return await self.http.get(WHOAMI, headers={"Authorization": f"Bearer {token}"})

    async def introspect(self, client: Any, token: str) -> dict[str, Any]:
        response = await self.http.post("/oauth/introspect", data={"token": token},
                                        headers={"Authorization": basic(client.client.api_key, client.secret_key)})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Running]:
    app = create_app(settings, issuer=ISSUER)
    assert isinstance(app, BankgateApp)
    async with (
        app.starlette.router.lifespan_context(app.starlette),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as http,
    ):
        yield Running(app.state.runtime, http)


async def within(deadline: float, check: Callable[[], Awaitable[bool]]) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"still not so after {time.monotonic() - started:.2f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def _refused(server: Running, token: str) -> bool:
    response = await server.whoami(token)
    return response.status_code == 401 and response.json()["error"] == "invalid_token"


async def test_a_key_retired_by_the_server_leaves_the_jwks_and_its_tokens_are_refused_at_once(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("retire", ["app_1"])
    async with serving(settings) as server:
        token = await server.token(client)
        old = _kid(token)
        for _ in range(3):  # remembered by the guard as verified
            assert (await server.whoami(token)).status_code == 200
        assert (await server.introspect(client, token))["active"] is True

        await server.runtime.services.keys.retire(old, actor="ops", rotate=True)

        assert old not in await server.jwks_kids()
        response = await server.whoami(token)
        assert response.status_code == 401 and response.json()["error"] == "invalid_token", response.text
        assert "not signed by a key of this issuer" in response.json()["error_description"]
        assert await server.introspect(client, token) == {"active": False}

        async def signs_with_a_new_key() -> bool:
            response = await server.http.post(
                "/oauth/token", data={"grant_type": "client_credentials"},
                headers={"Authorization": basic(client.client.api_key, client.secret_key)})
            return response.status_code == 201 and _kid(response.json()["access_token"]) != old

        await within(DEADLINE, signs_with_a_new_key)
        fresh = await server.token(client)
        assert _kid(fresh) != old and (await server.whoami(fresh)).status_code == 200
        assert await server.jwks_kids() == [_kid(fresh)]


async def test_a_key_retired_elsewhere_is_refused_within_one_change_feed_sync(
    services: Services, settings: Settings
) -> None:
    client = await services.clients.create("retire", ["app_1"])
    fast = settings.model_copy(update={"key_refresh_interval": 3600.0})  # only the change feed can tell it
    async with serving(fast) as server:
        token = await server.token(client)
        old = _kid(token)
        assert (await server.whoami(token)).status_code == 200

        elsewhere = await Services.open(load_settings(data_dir=settings.data_dir, database_url=settings.database_url))
        try:
            done = await elsewhere.keys.retire(old, actor="ops", rotate=True)  # as `bankgate keys retire --rotate`
        finally:
            await elsewhere.close()
        assert done.rotated_to is not None

        took = await within(DEADLINE, lambda: _refused(server, token))
        assert took < DEADLINE
        assert old not in await server.jwks_kids()
        assert await server.introspect(client, token) == {"active": False}
        fresh = await server.token(client)
        assert _kid(fresh) == done.rotated_to.kid and (await server.whoami(fresh)).status_code == 200


def test_no_active_key_between_a_retirement_and_the_reload_is_answered_as_an_outage() -> None:
    from bankgate.outage import unavailable_service
    from bankgate.tokens.keys import NoActiveKey

    assert unavailable_service(NoActiveKey("the active signing key was retired")) == "signing keys"
