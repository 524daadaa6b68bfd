"""M2M users (seed 000): an integration manager creates the user with an initial passphrase, which the user must
exchange for a password of their own. Domain behaviour on SQLite and PostgreSQL, then the `bankgate users` commands.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bankgate.config import Settings, load_settings
from bankgate.credentials.users import (
    PassphraseError,
    UserRecord,
    WeakPasswordError,
    check_password_strength,
)
from bankgate.services import Services
from bankgate.store import Store
from conftest import cli_json, dump_database, run_cli

PASSPHRASE = re.compile(r"[a-z2-9]{5}(-[a-z2-9]{5}){4}")
ARGON2ID = re.compile(r"\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+")
STRONG = "Quiet-Harbor-72x"
OTHER_STRONG = "correct horse battery staple"
NEW_USER_KEYS = {"user_id", "username", "initial_passphrase", "passphrase_expires_at", "environment"}


def make_settings(tmp_path: Path, database_url: str, **more: Any) -> Settings:
    return load_settings(data_dir=tmp_path, database_url=database_url, **more)


async def dump_values(store: Store) -> list[tuple[str, str, Any]]:
    """Every non-null value of every column of every table."""
    return [(table, column, value) for table, column, value in await dump_database(store) if value is not None]


def as_text(values: list[tuple[str, str, Any]]) -> str:
    return "\n".join(v.decode("latin-1") if isinstance(v, bytes) else str(v) for _, _, v in values)


async def reason(services: Services, username: str, passphrase: str, password: str = STRONG) -> str:
    with pytest.raises(PassphraseError) as caught:
        await services.users.reset_password(username, passphrase, password)
    return caught.value.reason


# -- creation ----------------------------------------------------------------------------------------------


async def test_create_shows_the_initial_passphrase_once(services: Services) -> None:
    before = time.time()
    new = await services.users.create("API Testuser")
    shown = new.as_json()
    assert set(shown) >= NEW_USER_KEYS
    assert shown["username"] == "api-testuser" and shown["environment"] == "sandbox"
    assert PASSPHRASE.fullmatch(new.initial_passphrase)
    assert before + 7 * 86400 - 1 <= shown["passphrase_expires_at"] <= time.time() + 7 * 86400
    assert new.user.must_reset and new.user.user_type == "4"
    assert new.initial_passphrase not in repr(new)
    stored = await services.users.get("api-testuser")
    assert stored.passphrase_hash is not None and stored.passphrase_hash not in repr(stored)
    assert "passphrase" not in json.dumps(stored.as_json()).replace("must_reset_passphrase", "").replace(
        "passphrase_expires_at", "")


async def test_usernames_come_from_the_name_and_never_collide(services: Services) -> None:
    first = await services.users.create("API Testuser")
    second = await services.users.create("API Testuser")
    assert (first.user.username, second.user.username) == ("api-testuser", "api-testuser-2")
    chosen = await services.users.create("Someone", username="ops.bot_1")
    assert chosen.user.username == "ops.bot_1"
    with pytest.raises(ValueError, match=re.escape("'ops.bot_1' is taken")):
        await services.users.create("Someone else", username="ops.bot_1")
    with pytest.raises(ValueError, match="3 to 64 characters"):
        await services.users.create("Bad", username="No Spaces")
    with pytest.raises(ValueError, match="needs a name"):
        await services.users.create("   ")
    assert [u.username for u in await services.users.list()] == ["api-testuser", "api-testuser-2", "ops.bot_1"]


async def test_passphrase_and_password_are_stored_as_argon2id_and_never_in_clear(services: Services) -> None:
    new = await services.users.create("API Testuser")
    stored = await services.users.get(new.user.username)
    assert stored.passphrase_hash is not None and ARGON2ID.fullmatch(stored.passphrase_hash)
    assert new.initial_passphrase not in as_text(await dump_values(services.store))

    await services.users.reset_password(new.user.username, new.initial_passphrase, STRONG)
    stored = await services.users.get(new.user.username)
    assert stored.password_hash is not None and ARGON2ID.fullmatch(stored.password_hash)
    assert stored.passphrase_hash is None and stored.passphrase_expires_at is None
    everything = as_text(await dump_values(services.store))
    assert STRONG not in everything and new.initial_passphrase not in everything
    hashes = [v for table, _, v in await dump_values(services.store) if table == "users" and str(v).startswith("$")]
    assert hashes == [stored.password_hash]


# -- the passphrase lifecycle ------------------------------------------------------------------------------


async def test_the_passphrase_is_exchanged_for_a_password_once(services: Services) -> None:
    new = await services.users.create("API Testuser")
    assert await services.users.verify_password(new.user, new.initial_passphrase) is False  # not a password
    user = await services.users.reset_password(new.user.username, new.initial_passphrase, STRONG)
    assert not user.must_reset and user.password_changed_at is not None
    assert await services.users.verify_password(user, STRONG) is True
    assert await services.users.verify_password(user, STRONG + "!") is False
    assert await reason(services, new.user.username, new.initial_passphrase, OTHER_STRONG) == "passphrase_used"
    assert await services.users.verify_password(await services.users.get(new.user.username), STRONG) is True


async def test_two_resets_racing_with_one_passphrase_have_one_winner(services: Services) -> None:
    new = await services.users.create("API Testuser")
    results = await asyncio.gather(
        services.users.reset_password(new.user.username, new.initial_passphrase, STRONG),
        services.users.reset_password(new.user.username, new.initial_passphrase, OTHER_STRONG),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, UserRecord)]
    losers = [r for r in results if isinstance(r, PassphraseError)]
    assert len(winners) == 1 and len(losers) == 1 and losers[0].reason == "passphrase_used"
    user = await services.users.get(new.user.username)
    assert [await services.users.verify_password(user, p) for p in (STRONG, OTHER_STRONG)].count(True) == 1


async def test_a_wrong_passphrase_and_an_unknown_user_get_the_same_answer(services: Services) -> None:
    new = await services.users.create("API Testuser")
    with pytest.raises(PassphraseError) as wrong:
        await services.users.reset_password(new.user.username, "aaaaa-bbbbb-ccccc-ddddd-eeeee", STRONG)
    with pytest.raises(PassphraseError) as unknown:
        await services.users.reset_password("nobody", new.initial_passphrase, STRONG)
    assert (wrong.value.reason, unknown.value.reason) == ("wrong_passphrase", "unknown_user")
    assert str(wrong.value) == str(unknown.value) == "the username or initial passphrase is wrong"
    # The right passphrase still works afterwards.
    await services.users.reset_password(new.user.username, new.initial_passphrase, STRONG)


async def test_an_expired_passphrase_is_refused_and_a_new_one_can_be_issued(
    tmp_path: Path, database_url: str
) -> None:
    short = await Services.open(make_settings(tmp_path, database_url, passphrase_ttl=0.5), initialise=True)
    manager = await Services.open(make_settings(tmp_path, database_url))  # the default week
    try:
        new = await short.users.create("API Testuser")
        await asyncio.sleep(0.6)
        with pytest.raises(PassphraseError, match="has expired; ask your integration manager") as caught:
            await short.users.reset_password(new.user.username, new.initial_passphrase, STRONG)
        assert caught.value.reason == "passphrase_expired"

        again = await manager.users.new_passphrase(new.user.username)
        assert again.initial_passphrase != new.initial_passphrase
        assert await reason(manager, new.user.username, new.initial_passphrase) == "wrong_passphrase"
        await manager.users.reset_password(new.user.username, again.initial_passphrase, STRONG)
    finally:
        await short.close()
        await manager.close()


async def test_a_new_passphrase_ends_the_current_password(services: Services) -> None:
    new = await services.users.create("API Testuser")
    await services.users.reset_password(new.user.username, new.initial_passphrase, STRONG)
    again = await services.users.new_passphrase(new.user.username)
    user = await services.users.get(new.user.username)
    assert user.must_reset and again.user.passphrase_expires_at is not None
    assert await services.users.verify_password(user, STRONG) is False
    await services.users.reset_password(new.user.username, again.initial_passphrase, OTHER_STRONG)
    assert await services.users.verify_password(await services.users.get(new.user.username), OTHER_STRONG)


async def test_a_weak_password_is_refused_and_the_passphrase_stays_usable(services: Services) -> None:
    new = await services.users.create("API Testuser")
    for weak in ("short1A!", "api-testuser-Secret-1", new.initial_passphrase, "Password-Secret-99"):
        with pytest.raises(WeakPasswordError):
            await services.users.reset_password(new.user.username, new.initial_passphrase, weak)
    assert (await services.users.get(new.user.username)).must_reset
    await services.users.reset_password(new.user.username, new.initial_passphrase, STRONG)


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("Abc-1234", "too weak"),  # 8 characters
        ("abcdefghijkl", "too weak"),  # 12 characters, one class
        ("abcdefgh1234", "too weak"),  # 12 characters, two classes
        ("aaaaaaaaaaaaaaaaaaaaaaaa", "too few different characters"),
        ("Welcome-To-The-Bank-2025", "common password"),
        ("my-alice-Password-1", "common password"),
        ("Alice.Smith-Secure-9", "must not contain the username"),
        ("x" * 257, "longer than 256"),
    ],
)
def test_password_strength_rules(password: str, says: str) -> None:
    with pytest.raises(WeakPasswordError, match=says):
        check_password_strength(password, username="alice.smith")


@pytest.mark.parametrize("password", ["Quiet-Harbor-72x", "zebra7!Lantern", "correct horse battery staple",
                                      "ЖёлтыйКит-42-море"])
def test_strong_passwords_pass(password: str) -> None:
    check_password_strength(password, username="alice.smith")


def test_the_new_password_must_differ_from_the_passphrase() -> None:
    with pytest.raises(WeakPasswordError, match="differ from the initial passphrase"):
        phrase = "abcde-fghjk-mnpqr-stuvw-xyz23"
        check_password_strength(phrase, username="u-1", passphrase=phrase)


# -- the `bankgate users` commands -------------------------------------------------------------------------


def bg(data_dir: Path, *args: str, env: dict[str, str] | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--data-dir", str(data_dir), env=env, check=check)


def bg_json(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return cli_json(*args, "--data-dir", str(data_dir), env=env)


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def check_password(data_dir: Path, username: str, password: str, database_url: str | None = None) -> bool:
    async def check() -> bool:
        services = await Services.open(load_settings(data_dir=data_dir, database_url=database_url))
        try:
            return await services.users.verify_password(await services.users.get(username), password)
        finally:
            await services.close()

    return asyncio.run(check())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    bg_json(directory, "init")
    return directory


def test_users_create_prints_the_passphrase_once_with_the_documented_keys(data_dir: Path) -> None:
    created = bg_json(data_dir, "users", "create", "--name", "API Testuser", "--username", "api-test")
    assert set(created) >= NEW_USER_KEYS
    assert created["username"] == "api-test" and created["environment"] == "sandbox"
    assert PASSPHRASE.fullmatch(created["initial_passphrase"])
    text = bg(data_dir, "users", "create", "--name", "API Testuser").stdout
    shown = PASSPHRASE.search(text)
    assert shown is not None and "shown once" in text and "api-testuser" in text
    for listing in (bg(data_dir, "users", "list", "--json").stdout, bg(data_dir, "users", "list").stdout,
                    bg(data_dir, "users", "show", "api-test", "--json").stdout):
        assert created["initial_passphrase"] not in listing and shown.group(0) not in listing
        assert "$argon2" not in listing


def test_users_list_and_show(data_dir: Path) -> None:
    created = bg_json(data_dir, "users", "create", "--name", "API Testuser")
    listed = bg_json(data_dir, "users", "list")
    assert [(u["user_id"], u["username"], u["must_reset_passphrase"]) for u in listed] == [
        (created["user_id"], "api-testuser", True)]
    shown = bg_json(data_dir, "users", "show", "api-testuser")
    assert shown["user_id"] == created["user_id"] and shown["ip_allow_list"] == []
    text = " ".join(bg(data_dir, "users", "show", "api-testuser").stdout.split())
    assert "loopback only" in text
    one_line_error(bg(data_dir, "users", "show", "nobody", check=False), "no user named nobody")


def test_users_reset_password_once_and_audit_without_secrets(data_dir: Path) -> None:
    created = bg_json(data_dir, "users", "create", "--name", "API Testuser")
    username, passphrase = created["username"], created["initial_passphrase"]

    wrong = bg(data_dir, "users", "reset-password", username, "--passphrase", "aaaaa-bbbbb-ccccc-ddddd-eeeee",
               "--new-password", STRONG, check=False)
    one_line_error(wrong, "the username or initial passphrase is wrong")
    weak = bg(data_dir, "users", "reset-password", username, "--passphrase", passphrase,
              "--new-password", "weakpass1", check=False)
    one_line_error(weak, "too weak")
    done = bg_json(data_dir, "users", "reset-password", username, "--passphrase", passphrase,
                   "--new-password", STRONG)
    assert done["username"] == username and done["must_reset_passphrase"] is False
    again = bg(data_dir, "users", "reset-password", username, "--passphrase", passphrase,
               "--new-password", OTHER_STRONG, check=False)
    one_line_error(again, "used already")
    for result in (wrong, weak, again):
        assert STRONG not in result.stdout + result.stderr and passphrase not in result.stdout + result.stderr
        assert OTHER_STRONG not in result.stdout + result.stderr
    assert check_password(data_dir, username, STRONG)

    audit = bg(data_dir, "audit", "tail", "--limit", "50", "--json").stdout
    events = [e for e in json.loads(audit) if e["event"].startswith("user.")]
    assert [(e["event"], e["outcome"], e["detail"].get("reason")) for e in events] == [
        ("user.created", "success", None),
        ("user.password_reset", "failure", "wrong_passphrase"),
        ("user.password_reset", "failure", "weak_password"),
        ("user.password_reset", "success", None),
        ("user.password_reset", "failure", "passphrase_used"),
    ]
    assert all(e["detail"]["username"] == username and e["actor"].startswith("cli") for e in events)
    for secret in (STRONG, OTHER_STRONG, passphrase, "weakpass1"):
        assert secret not in audit


def test_users_reset_password_asks_with_hidden_prompts_when_not_given(data_dir: Path) -> None:
    created = bg_json(data_dir, "users", "create", "--name", "API Testuser")
    # No terminal (a new session): the hidden prompt reads standard input, as it would read the keyboard.
    result = subprocess.run(
        [sys.executable, "-m", "bankgate", "users", "reset-password", created["username"], "--json",
         "--data-dir", str(data_dir)],
        input=f"{created['initial_passphrase']}\n{STRONG}\n{STRONG}\n",
        capture_output=True, text=True, timeout=120, start_new_session=True, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["must_reset_passphrase"] is False  # prompts went to stderr, not stdout
    assert "Initial passphrase" in result.stderr and "New password" in result.stderr
    assert STRONG not in result.stdout and created["initial_passphrase"] not in result.stdout
    assert check_password(data_dir, created["username"], STRONG)


def test_users_new_passphrase_reissues_an_expired_one(data_dir: Path) -> None:
    short = {"BANKGATE_PASSPHRASE_TTL": "1"}
    created = bg_json(data_dir, "users", "create", "--name", "API Testuser", env=short)
    time.sleep(1.2)
    expired = bg(data_dir, "users", "reset-password", created["username"], "--passphrase",
                 created["initial_passphrase"], "--new-password", STRONG, check=False)
    one_line_error(expired, "has expired; ask your integration manager for a new one")

    reissued = bg_json(data_dir, "users", "new-passphrase", created["username"])
    assert set(reissued) >= NEW_USER_KEYS and reissued["user_id"] == created["user_id"]
    assert reissued["initial_passphrase"] != created["initial_passphrase"]
    assert reissued["passphrase_expires_at"] > time.time() + 86400
    bg(data_dir, "users", "reset-password", created["username"], "--passphrase", reissued["initial_passphrase"],
       "--new-password", STRONG)
    events = [e for e in bg_json(data_dir, "audit", "tail") if e["event"] == "user.passphrase_reissued"]
    assert len(events) == 1 and reissued["initial_passphrase"] not in json.dumps(events)
    one_line_error(bg(data_dir, "users", "new-passphrase", "nobody", check=False), "no user named nobody")


def test_users_create_refuses_a_taken_or_bad_username(data_dir: Path) -> None:
    bg(data_dir, "users", "create", "--name", "A", "--username", "ops-bot")
    one_line_error(bg(data_dir, "users", "create", "--name", "B", "--username", "ops-bot", check=False),
                   "'ops-bot' is taken")
    one_line_error(bg(data_dir, "users", "create", "--name", "B", "--username", "Ops Bot", check=False),
                   "3 to 64 characters")


def test_users_commands_work_against_postgresql(tmp_path: Path, postgres_url: str) -> None:
    data_dir = tmp_path / "data"
    args = ("--database-url", postgres_url)
    bg_json(data_dir, "init", *args)
    created = bg_json(data_dir, "users", "create", "--name", "API Testuser", *args)
    bg(data_dir, "users", "reset-password", created["username"], "--passphrase", created["initial_passphrase"],
       "--new-password", STRONG, *args)
    assert check_password(data_dir, created["username"], STRONG, postgres_url)
    assert bg_json(data_dir, "users", "show", created["username"], *args)["must_reset_passphrase"] is False
