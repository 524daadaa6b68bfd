"""Domain and storage behaviour, each test run against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import JWKRegistry

from bankgate.audit import AuditEvent
from bankgate.clock import ManualClock
from bankgate.config import Settings, load_settings
from bankgate.credentials.clients import ClientAuthError, ClientNotFoundError
from bankgate.credentials.scopes import ScopeError
from bankgate.services import KEY_PUBLISH_MARGIN, Services
from bankgate.store import SchemaMissingError, Store, schema
from bankgate.store.migrate import alembic_config
from bankgate.vault import MasterKeyError, Vault
from conftest import dump_database
from key_helpers import decrypted_signing_keys

API_KEY = re.compile(r"bk_test_[A-Za-z0-9]{24}")
SECRET_KEY = re.compile(r"sk_test_[A-Za-z0-9]{43}")
TABLES = {"alembic_version", *schema.metadata.tables}
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def make_settings(data_dir: Path, database_url: str, **more: Any) -> Settings:
    return load_settings(data_dir=data_dir, database_url=database_url, **more)


def values_as_bytes(dump: list[tuple[str, str, Any]]) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for _, _, v in dump if v is not None]


async def auth_reason(services: Services, api_key: str, secret: str) -> str:
    with pytest.raises(ClientAuthError) as caught:
        await services.clients.authenticate(api_key, secret)
    return caught.value.reason


# -- initialisation and migrations -------------------------------------------------------------------------


async def test_init_twice_keeps_one_signing_key(settings: Settings) -> None:
    first_services = await Services.open(settings, initialise=True)
    try:
        first = await first_services.init()
    finally:
        await first_services.close()
    second_services = await Services.open(settings, initialise=True)
    try:
        second = await second_services.init()
        keys = await second_services.keys.load()
    finally:
        await second_services.close()

    assert first.created_key is True
    assert second.created_key is False
    assert second.signing_key.kid == first.signing_key.kid
    assert [k.kid for k in keys] == [first.signing_key.kid]
    assert first.signing_key.alg == "RS256"
    assert second.environment == "sandbox"


@pytest.mark.real_migrations
async def test_migration_creates_every_table_and_records_the_revision(services: Services) -> None:
    def inspect(connection: sa.Connection) -> tuple[set[str], list[tuple[Any, ...]]]:
        names = set(sa.inspect(connection).get_table_names())
        rows = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
        versions = [tuple(row) for row in rows]
        return names, versions

    async with services.store.connect() as conn:
        names, versions = await conn.run_sync(inspect)
    assert names == TABLES
    assert versions == [(HEAD,)]


@pytest.mark.real_migrations
async def test_migrations_build_exactly_the_declared_schema(services: Services) -> None:
    def differences(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [d for d in compare_metadata(context, schema.metadata) if d[0] != "remove_table"]

    async with services.store.connect() as conn:
        assert await conn.run_sync(differences) == []


async def test_reopening_with_initialise_runs_no_migration_twice_and_keeps_data(
    settings: Settings, services: Services
) -> None:
    issued = await services.clients.create("kept", ["app_1"])
    again = await Services.open(settings, initialise=True)
    try:
        async with again.store.connect() as conn:
            versions = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
        assert [tuple(v) for v in versions] == [(HEAD,)]
        assert (await again.clients.get(issued.client.api_key)).name == "kept"
        record = await again.clients.authenticate(issued.client.api_key, issued.secret_key)
        assert record.id == issued.client.id
    finally:
        await again.close()


# -- client onboarding -------------------------------------------------------------------------------------


async def test_create_issues_sandbox_key_pair_in_documented_format(services: Services) -> None:
    issued = await services.clients.create("Acme web shop", ["app_12345", "app_67890"], "basic")
    assert API_KEY.fullmatch(issued.client.api_key)
    assert SECRET_KEY.fullmatch(issued.secret_key)
    assert issued.client.environment == "sandbox"
    assert issued.client.auth_mode == "basic"
    assert issued.client.scopes == ("app_12345", "app_67890")
    assert issued.client.status == "active"
    assert issued.as_json() == {
        "client_id": issued.client.id,
        "api_key": issued.client.api_key,
        "secret_key": issued.secret_key,
        "scopes": ["app_12345", "app_67890"],
        "auth_mode": "basic",
        "environment": "sandbox",
    }
    stored = await services.clients.get(issued.client.api_key)
    assert (stored.id, stored.name, stored.scopes, stored.auth_mode) == (
        issued.client.id, "Acme web shop", ("app_12345", "app_67890"), "basic"
    )


async def test_every_client_gets_distinct_keys(services: Services) -> None:
    issued = [await services.clients.create(f"client {i}", ["app_1"]) for i in range(5)]
    assert len({i.client.api_key for i in issued}) == 5
    assert len({i.secret_key for i in issued}) == 5
    assert [r.api_key for r in await services.clients.list()] == [i.client.api_key for i in issued]


async def test_production_settings_issue_live_key_pairs(tmp_path: Path, database_url: str) -> None:
    production = await Services.open(make_settings(tmp_path, database_url, environment="production"),
                                      initialise=True)
    try:
        issued = await production.clients.create("bank", ["app_1"])
        rotated = await production.clients.rotate_secret(issued.client.api_key, overlap=0)
    finally:
        await production.close()
    assert re.fullmatch(r"bk_live_[A-Za-z0-9]{24}", issued.client.api_key)
    assert re.fullmatch(r"sk_live_[A-Za-z0-9]{43}", issued.secret_key)
    assert re.fullmatch(r"sk_live_[A-Za-z0-9]{43}", rotated.secret_key)
    assert issued.client.environment == "production"


@pytest.mark.parametrize("bad", ["bad scope!", "", " app_1", "-app", "app/1", "a" * 129])
async def test_create_rejects_malformed_application_id_with_clear_message(
    services: Services, bad: str
) -> None:
    with pytest.raises(ScopeError, match="is not a valid application ID") as caught:
        await services.clients.create("x", ["app_ok", bad])
    assert repr(bad) in str(caught.value)
    assert await services.clients.list() == []


async def test_create_drops_duplicate_scopes_keeping_first_order(services: Services) -> None:
    issued = await services.clients.create("x", ["app_2", "app_1", "app_2", "app_1", "app_3"])
    assert issued.client.scopes == ("app_2", "app_1", "app_3")
    assert (await services.clients.get(issued.client.api_key)).scopes == ("app_2", "app_1", "app_3")


async def test_create_requires_at_least_one_scope(services: Services) -> None:
    with pytest.raises(ScopeError, match="at least one application ID"):
        await services.clients.create("x", [])
    assert await services.clients.list() == []


async def test_create_rejects_unknown_auth_mode(services: Services) -> None:
    with pytest.raises(ValueError, match="auth mode 'jwt' is not one of: oauth2, basic"):
        await services.clients.create("x", ["app_1"], "jwt")
    assert await services.clients.list() == []


@pytest.mark.parametrize("name", ["", "   ", "n" * 201])
async def test_create_rejects_blank_or_overlong_name(services: Services, name: str) -> None:
    with pytest.raises(ValueError, match="name of 1 to 200 characters"):
        await services.clients.create(name, ["app_1"])


async def test_secret_is_never_stored_in_clear_only_as_keyed_hash(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1"])
    rotated = await services.clients.rotate_secret(issued.client.api_key, overlap=3600)
    secrets_in_clear = [issued.secret_key, rotated.secret_key]

    dump = await dump_database(services.store)
    stored = values_as_bytes(dump)
    for secret in secrets_in_clear:
        assert not any(secret.encode() in value for value in stored), "a secret is stored in clear"
        # not even its random part, nor a plain (unkeyed) digest of it
        assert not any(secret.removeprefix("sk_test_").encode() in value for value in stored)
        assert not any(hashlib.sha256(secret.encode()).hexdigest().encode() in value for value in stored)

    hashes = [v for table, column, v in dump if (table, column) == ("client_secrets", "secret_hash")]
    assert sorted(hashes) == sorted(services.vault.hash_secret(s) for s in secrets_in_clear)
    # Keyed: another master key gives another digest for the same secret.
    other = Vault(secrets.token_bytes(32))
    assert not set(hashes) & {other.hash_secret(s) for s in secrets_in_clear}


# -- authentication ----------------------------------------------------------------------------------------


async def test_authenticate_accepts_the_right_secret(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1", "app_2"])
    record = await services.clients.authenticate(issued.client.api_key, issued.secret_key)
    assert record.id == issued.client.id
    assert record.scopes == ("app_1", "app_2")


async def test_authenticate_rejects_wrong_secret(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1"])
    other = await services.clients.create("y", ["app_1"])
    altered = issued.secret_key[:-1] + ("1" if issued.secret_key.endswith("0") else "0")
    assert await auth_reason(services, issued.client.api_key, altered) == "wrong_secret"
    assert await auth_reason(services, issued.client.api_key, other.secret_key) == "wrong_secret"
    assert await auth_reason(services, issued.client.api_key, "") == "wrong_secret"


async def test_authenticate_rejects_unknown_api_key(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1"])
    assert await auth_reason(services, "bk_test_" + "A" * 24, issued.secret_key) == "unknown_api_key"
    overlong = issued.client.api_key + "x" * 100
    assert await auth_reason(services, overlong, issued.secret_key) == "unknown_api_key"
    with pytest.raises(ClientNotFoundError, match="no client with API key bk_test_nope"):
        await services.clients.get("bk_test_nope")


async def test_authenticate_rejects_revoked_client(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1"])
    revoked = await services.clients.revoke(issued.client.api_key)
    assert revoked.status == "revoked"
    assert revoked.revoked_at is not None and revoked.revoked_at <= time.time()
    assert await auth_reason(services, issued.client.api_key, issued.secret_key) == "client_revoked"
    # revoking again is harmless and keeps the first revocation time
    assert (await services.clients.revoke(issued.client.api_key)).revoked_at == revoked.revoked_at


async def test_authenticate_rejects_client_of_another_environment(tmp_path: Path, database_url: str) -> None:
    sandbox = await Services.open(make_settings(tmp_path, database_url), initialise=True)
    production = await Services.open(make_settings(tmp_path, database_url, environment="production"))
    try:
        issued = await sandbox.clients.create("sandbox client", ["app_1"])
        assert await auth_reason(production, issued.client.api_key, issued.secret_key) == "wrong_environment"
        assert (await sandbox.clients.authenticate(issued.client.api_key, issued.secret_key)).active
    finally:
        await production.close()
        await sandbox.close()


# -- secret rotation ---------------------------------------------------------------------------------------


async def test_rotate_secret_keeps_old_secret_valid_during_overlap(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1"])
    rotated = await services.clients.rotate_secret(issued.client.api_key, overlap=3600)
    assert rotated.secret_key != issued.secret_key
    assert SECRET_KEY.fullmatch(rotated.secret_key)
    assert rotated.client.api_key == issued.client.api_key
    for secret in (issued.secret_key, rotated.secret_key):
        assert (await services.clients.authenticate(issued.client.api_key, secret)).id == issued.client.id
    old, new = rotated.client.secrets
    assert old.expires_at == pytest.approx(time.time() + 3600, abs=30)
    assert new.expires_at is None


async def test_rotate_secret_with_zero_overlap_ends_old_secret_at_once(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1"])
    rotated = await services.clients.rotate_secret(issued.client.api_key, overlap=0)
    assert await auth_reason(services, issued.client.api_key, issued.secret_key) == "wrong_secret"
    assert (await services.clients.authenticate(issued.client.api_key, rotated.secret_key)).active
    assert len(rotated.client.as_json()["secrets"]) == 1  # type: ignore[arg-type]


async def test_old_secret_stops_working_when_overlap_expires(services: Services, clock: ManualClock) -> None:
    issued = await services.clients.create("x", ["app_1"])
    rotated = await services.clients.rotate_secret(issued.client.api_key, overlap=0.3)
    assert (await services.clients.authenticate(issued.client.api_key, issued.secret_key)).active
    clock.advance(0.5)
    assert await auth_reason(services, issued.client.api_key, issued.secret_key) == "wrong_secret"
    assert (await services.clients.authenticate(issued.client.api_key, rotated.secret_key)).active


async def test_second_rotation_shortens_but_never_extends_earlier_overlap(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1"])
    first = await services.clients.rotate_secret(issued.client.api_key, overlap=3600)
    second = await services.clients.rotate_secret(issued.client.api_key, overlap=0)
    assert await auth_reason(services, issued.client.api_key, issued.secret_key) == "wrong_secret"
    assert await auth_reason(services, issued.client.api_key, first.secret_key) == "wrong_secret"
    assert (await services.clients.authenticate(issued.client.api_key, second.secret_key)).active

    third = await services.clients.rotate_secret(issued.client.api_key, overlap=60)
    fourth = await services.clients.rotate_secret(issued.client.api_key, overlap=86400)
    by_age = fourth.client.secrets
    assert by_age[-3].expires_at == pytest.approx(time.time() + 60, abs=30)  # `second`: not extended to a day
    for secret in (second.secret_key, third.secret_key, fourth.secret_key):
        assert (await services.clients.authenticate(issued.client.api_key, secret)).active


async def test_rotating_secret_of_revoked_client_fails(services: Services) -> None:
    issued = await services.clients.create("x", ["app_1"])
    await services.clients.revoke(issued.client.api_key)
    with pytest.raises(ValueError, match="is revoked; create a new client"):
        await services.clients.rotate_secret(issued.client.api_key, overlap=0)
    with pytest.raises(ClientNotFoundError):
        await services.clients.rotate_secret("bk_test_unknown", overlap=0)
    with pytest.raises(ValueError, match="zero or positive"):
        await services.clients.rotate_secret(issued.client.api_key, overlap=-1)


# -- client cache across processes -------------------------------------------------------------------------


async def test_revoke_on_the_same_instance_applies_at_once_despite_cache(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, client_cache_ttl=60)
    services = await Services.open(settings, initialise=True)
    try:
        issued = await services.clients.create("x", ["app_1"])
        await services.clients.authenticate(issued.client.api_key, issued.secret_key)  # now cached
        await services.clients.revoke(issued.client.api_key)
        assert await auth_reason(services, issued.client.api_key, issued.secret_key) == "client_revoked"
    finally:
        await services.close()


async def test_revoke_by_another_instance_may_be_served_from_cache_but_stops_within_cache_ttl(
    tmp_path: Path, database_url: str
) -> None:
    ttl = 0.5
    settings = make_settings(tmp_path, database_url, client_cache_ttl=ttl)
    clock = ManualClock()
    server = await Services.open(settings, initialise=True, clock=clock)
    cli = await Services.open(settings, clock=clock)  # as `bankgate clients revoke` would, in another process
    try:
        issued = await server.clients.create("x", ["app_1"])
        cached_from = clock.monotonic()
        await server.clients.authenticate(issued.client.api_key, issued.secret_key)
        cached_until = clock.monotonic() + ttl

        await cli.clients.revoke(issued.client.api_key)
        if clock.monotonic() < cached_from + ttl * 0.8:
            # the documented staleness: the server still holds the record it cached before the revocation
            assert (await server.clients.authenticate(issued.client.api_key, issued.secret_key)).active
        clock.advance(max(0.0, cached_until - clock.monotonic()) + 0.05)
        assert await auth_reason(server, issued.client.api_key, issued.secret_key) == "client_revoked"
    finally:
        await cli.close()
        await server.close()


async def test_without_client_cache_a_revoke_by_another_instance_applies_at_once(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, client_cache_ttl=0)
    server = await Services.open(settings, initialise=True)
    cli = await Services.open(settings)
    try:
        issued = await server.clients.create("x", ["app_1"])
        await server.clients.authenticate(issued.client.api_key, issued.secret_key)
        rotated = await cli.clients.rotate_secret(issued.client.api_key, overlap=0)
        assert await auth_reason(server, issued.client.api_key, issued.secret_key) == "wrong_secret"
        assert (await server.clients.authenticate(issued.client.api_key, rotated.secret_key)).active
        await cli.clients.revoke(issued.client.api_key)
        assert await auth_reason(server, issued.client.api_key, rotated.secret_key) == "client_revoked"
    finally:
        await cli.close()
        await server.close()


# -- signing keys ------------------------------------------------------------------------------------------


def _der(private_key: Any) -> bytes:
    return private_key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


async def test_signing_keys_rotate_across_algorithms_and_load_newest_first(services: Services) -> None:
    [rsa_key] = await services.keys.load()
    es_key = await services.keys.rotate("ES256", retire_publish_for=services.key_publish_seconds)
    ed_key = await services.keys.rotate("EdDSA", retire_publish_for=services.key_publish_seconds)

    loaded = await services.keys.load()
    private_keys = await decrypted_signing_keys(services)
    assert [k.kid for k in loaded] == [ed_key.kid, es_key.kid, rsa_key.kid]
    assert [k.alg for k in loaded] == ["EdDSA", "ES256", "RS256"]
    assert [k.as_json()["status"] for k in loaded] == ["active", "retired", "retired"]
    assert [k.public_jwk["kty"] for k in loaded] == ["OKP", "EC", "RSA"]
    for key in loaded:
        assert "d" not in key.public_jwk and "p" not in key.public_jwk
        # kid is the RFC 7638 thumbprint, computed here by another library
        assert key.kid == JWKRegistry.import_key(key.public_jwk).thumbprint()
        # the decrypted private key matches the published public key
        token = jwt.encode({"sub": "check"}, private_keys[key.kid], algorithm=key.alg, headers={"kid": key.kid})
        public = jwt.PyJWK(key.jwk).key
        assert jwt.decode(token, public, algorithms=[key.alg])["sub"] == "check"


async def test_retired_key_is_published_for_token_ttl_plus_margin(services: Services) -> None:
    [old] = await services.keys.load()
    new = await services.keys.rotate("ES256", retire_publish_for=services.key_publish_seconds)
    loaded = {k.kid: k for k in await services.keys.load()}
    retired = loaded[old.kid]
    assert retired.retired_at == pytest.approx(new.created_at, abs=1e-3)
    assert retired.publish_until == pytest.approx(
        retired.retired_at + services.settings.token_ttl + KEY_PUBLISH_MARGIN, abs=1e-3
    )
    assert loaded[new.kid].retired_at is None and loaded[new.kid].publish_until is None


async def test_key_disappears_from_load_once_publish_until_has_passed(services: Services) -> None:
    [old] = await services.keys.load()
    new = await services.keys.rotate("RS256", retire_publish_for=0.3)
    assert [k.kid for k in await services.keys.load()] == [new.kid, old.kid]
    await asyncio.sleep(0.5)
    assert [k.kid for k in await services.keys.load()] == [new.kid]


async def test_private_signing_keys_are_encrypted_at_rest(services: Services) -> None:
    await services.keys.rotate("ES256", retire_publish_for=services.key_publish_seconds)
    await services.keys.rotate("EdDSA", retire_publish_for=services.key_publish_seconds)
    loaded = await services.keys.load()
    private_keys = await decrypted_signing_keys(services)
    dump = await dump_database(services.store)
    stored = values_as_bytes(dump)
    async with services.store.connect() as conn:
        rows = await conn.execute(sa.text("SELECT kid, private_key FROM signing_keys"))
        blobs = {kid: bytes(blob) for kid, blob in rows}
    assert set(blobs) == {k.kid for k in loaded}
    for key in loaded:
        der = _der(private_keys[key.kid])
        assert len(der) > 32
        assert not any(der in value for value in stored), f"{key.alg} private key stored in clear"
        assert not any(base64.b64encode(der) in value for value in stored)
        blob = blobs[key.kid]
        assert der not in blob and len(blob) == len(der) + 12 + 16  # nonce + AES-GCM tag


async def test_ensure_active_keeps_matching_key_and_rotates_for_another_algorithm(services: Services) -> None:
    publish = services.key_publish_seconds
    [rsa_key] = await services.keys.load()
    same, created = await services.keys.ensure_active("RS256", retire_publish_for=publish)
    assert (same.kid, created) == (rsa_key.kid, False)

    es_key, created = await services.keys.ensure_active("ES256", retire_publish_for=publish)
    assert created is True and es_key.alg == "ES256" and es_key.kid != rsa_key.kid
    loaded = await services.keys.load()
    assert [(k.kid, k.retired_at is None) for k in loaded] == [(es_key.kid, True), (rsa_key.kid, False)]

    again, created = await services.keys.ensure_active("ES256", retire_publish_for=publish)
    assert (again.kid, created) == (es_key.kid, False)


async def test_init_with_another_configured_algorithm_rotates(tmp_path: Path, database_url: str) -> None:
    first = await Services.open(make_settings(tmp_path, database_url), initialise=True)
    try:
        rsa_report = await first.init()
    finally:
        await first.close()
    second = await Services.open(make_settings(tmp_path, database_url, signing_alg="EdDSA"), initialise=True)
    try:
        ed_report = await second.init()
        loaded = await second.keys.load()
    finally:
        await second.close()
    assert ed_report.created_key is True and ed_report.signing_key.alg == "EdDSA"
    assert [k.kid for k in loaded] == [ed_report.signing_key.kid, rsa_report.signing_key.kid]


# -- master key ----------------------------------------------------------------------------------------------


async def test_opening_with_another_master_key_fails_and_says_so(
    tmp_path: Path, database_url: str, services: Services
) -> None:
    issued = await services.clients.create("x", ["app_1"])
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    for initialise in (False, True):
        with pytest.raises(MasterKeyError, match="initialised with another master key"):
            await Services.open(
                make_settings(tmp_path, database_url, master_key=other), initialise=initialise
            )

    # the right key, given in settings instead of the file, opens it
    right = (tmp_path / "master.key").read_text().strip()
    reopened = await Services.open(make_settings(tmp_path / "elsewhere", database_url, master_key=right))
    try:
        assert (await reopened.clients.authenticate(issued.client.api_key, issued.secret_key)).active
        assert len(await reopened.keys.load()) == 1
    finally:
        await reopened.close()
    assert not (tmp_path / "elsewhere" / "master.key").exists()


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"too short").decode()])
async def test_malformed_master_key_is_refused(tmp_path: Path, database_url: str, bad: str) -> None:
    with pytest.raises(MasterKeyError, match="must hold 32 bytes in base64"):
        await Services.open(make_settings(tmp_path, database_url, master_key=bad), initialise=True)


async def test_opening_an_uninitialised_data_dir_says_to_run_init(tmp_path: Path, database_url: str) -> None:
    fresh = tmp_path / "fresh"
    with pytest.raises(MasterKeyError, match=r"no master key: .*run `bankgate init` first"):
        await Services.open(make_settings(fresh, database_url))
    assert not fresh.exists()


async def test_opening_a_database_without_schema_says_to_run_init(tmp_path: Path, database_url: str) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(SchemaMissingError, match=r"no bankgate schema; run `bankgate init` first"):
        await Services.open(make_settings(tmp_path, database_url, master_key=key))


async def test_opening_a_migrated_but_never_initialised_database_says_to_run_init(
    tmp_path: Path, database_url: str
) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    settings = make_settings(tmp_path, database_url, master_key=key)
    store = Store(settings.sqlalchemy_url)
    try:
        await store.migrate()
    finally:
        await store.close()
    with pytest.raises(MasterKeyError, match=r"not initialised; run `bankgate init` first"):
        await Services.open(settings)


async def test_master_key_file_is_created_private(settings: Settings, services: Services) -> None:
    path = settings.data_dir / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text().strip(), validate=True)) == 32
    before = path.read_bytes()
    again = await Services.open(settings, initialise=True)
    await again.close()
    assert path.read_bytes() == before


# -- revocation list ---------------------------------------------------------------------------------------


async def test_revoking_a_token_twice_reports_it_was_already_revoked(services: Services) -> None:
    expires = time.time() + 600
    assert await services.revocations.revoke("jti-1", "client-1", expires) is True
    assert await services.revocations.revoke("jti-1", "client-1", expires) is False
    assert await services.revocations.is_revoked("jti-1") is True
    assert await services.revocations.is_revoked("jti-2") is False


async def test_purge_removes_only_expired_revocations(services: Services) -> None:
    now = time.time()
    await services.revocations.revoke("expired-1", "c", now - 10)
    await services.revocations.revoke("expired-2", "c", now - 1)
    await services.revocations.revoke("live", "c", now + 600)
    assert await services.revocations.purge() == 2
    assert [await services.revocations.is_revoked(j) for j in ("expired-1", "expired-2", "live")] == [
        False, False, True
    ]
    assert await services.revocations.purge() == 0


async def test_purge_at_an_explicit_time_uses_that_time(services: Services) -> None:
    await services.revocations.revoke("soon", "c", 2_000.0)
    await services.revocations.revoke("later", "c", 3_000.0)
    assert await services.revocations.purge(now=0.0) == 0
    assert await services.revocations.purge(now=2_500.0) == 1
    assert await services.revocations.is_revoked("later") is True


# -- audit ---------------------------------------------------------------------------------------------------


def _event(n: int, name: str = "test.event") -> AuditEvent:
    return AuditEvent(name, f"actor-{n}", "success", "203.0.113.7", {"n": n}, at=1_700_000_000 + n)


async def _empty_audit_trail(services: Services) -> None:
    """Drop the events `init` wrote (its signing key), so a test sees only its own."""
    async with services.store.begin() as conn:
        await conn.execute(schema.audit_events.delete())


async def test_audit_tail_returns_newest_events_oldest_first(services: Services) -> None:
    await _empty_audit_trail(services)
    await services.audit.write(*[_event(n) for n in range(5)])
    tail = await services.audit.tail(3)
    assert [e.detail["n"] for e in tail] == [2, 3, 4]
    assert tail[-1].as_json() == {
        "event": "test.event",
        "at": "2023-11-14T22:13:24.000Z",
        "actor": "actor-4",
        "source_ip": "203.0.113.7",
        "outcome": "success",
        "detail": {"n": 4},
    }
    assert len(await services.audit.tail(100)) == 5


async def test_recorded_audit_events_are_written_on_flush(services: Services) -> None:
    await _empty_audit_trail(services)
    services.audit.record(_event(1))
    failed = AuditEvent("token.failed", "bk_test_x", "failure", None, {"reason": "wrong_secret"})
    services.audit.record(failed)
    assert await services.audit.tail(10) == []
    await services.audit.flush()
    tail = await services.audit.tail(10)
    assert [(e.event, e.outcome) for e in tail] == [("test.event", "success"), ("token.failed", "failure")]
    assert tail[1].source_ip is None and tail[1].detail == {"reason": "wrong_secret"}
    await services.audit.flush()  # nothing pending: writes nothing more
    assert len(await services.audit.tail(10)) == 2


async def test_audit_background_flusher_writes_recorded_events(tmp_path: Path, database_url: str) -> None:
    services = await Services.open(make_settings(tmp_path, database_url, audit_flush_interval=0.05),
                                   initialise=True)
    try:
        await _empty_audit_trail(services)
        services.audit.start()
        services.audit.record(_event(1))
        deadline = time.monotonic() + 5
        while not await services.audit.tail(5) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        services.audit.record(_event(2))
        await services.audit.stop()  # flushes what is still queued
        assert [e.detail["n"] for e in await services.audit.tail(5)] == [1, 2]
    finally:
        await services.close()


async def test_audit_tail_filters_by_event(services: Services) -> None:
    await _empty_audit_trail(services)
    await services.audit.write(
        _event(1, "client.created"), _event(2, "token.issued"), _event(3, "client.created"),
        _event(4, "token.issued"), _event(5, "token.issued"),
    )
    assert [e.detail["n"] for e in await services.audit.tail(10, event="client.created")] == [1, 3]
    assert [e.detail["n"] for e in await services.audit.tail(2, event="token.issued")] == [4, 5]
    assert await services.audit.tail(10, event="key.rotated") == []
