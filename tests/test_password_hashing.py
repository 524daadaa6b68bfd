"""argon2id parameters of M2M users' passwords and passphrases: configurable, with a floor in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bankgate.config import load_settings
from bankgate.services import Services

PASSWORD = "Blue-Harbour-7-Lantern"


def test_production_refuses_argon2_parameters_below_the_owasp_floor(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 19456 KiB and 2 passes"):
        load_settings(data_dir=tmp_path, environment="production", password_hash_memory_kib=8192)
    with pytest.raises(ValidationError, match="at least 19456 KiB and 2 passes"):
        load_settings(data_dir=tmp_path, environment="production", password_hash_time_cost=1)
    settings = load_settings(data_dir=tmp_path, environment="production", password_hash_memory_kib=19456,
                             password_hash_time_cost=2)
    assert settings.password_hasher().memory_cost == 19456


def test_too_little_memory_for_the_lanes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="8 KiB of memory per lane"):
        load_settings(data_dir=tmp_path, password_hash_memory_kib=64, password_hash_parallelism=16)


async def test_hashes_use_the_configured_parameters_and_older_ones_still_verify(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    before = load_settings(data_dir=tmp_path, database_url=url, password_hash_memory_kib=1024,
                           password_hash_time_cost=1, password_hash_parallelism=1)
    services = await Services.open(before, initialise=True)
    try:
        await services.init()
        created = await services.users.create("Treasury bot")
        stored = (await services.users.get(created.user.username)).passphrase_hash
        assert stored is not None and "$m=1024,t=1,p=1$" in stored
    finally:
        await services.close()

    after = load_settings(data_dir=tmp_path, database_url=url, password_hash_memory_kib=2048,
                          password_hash_time_cost=2, password_hash_parallelism=2)
    services = await Services.open(after)
    try:
        user = await services.users.get(created.user.username)
        assert await services.users.verify_passphrase(user, created.initial_passphrase)
        assert not await services.users.verify_passphrase(user, created.initial_passphrase + "x")
        reset = await services.users.reset_password(user.username, created.initial_passphrase, PASSWORD)
        assert reset.password_hash is not None and "$m=2048,t=2,p=2$" in reset.password_hash
    finally:
        await services.close()
