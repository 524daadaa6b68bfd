"""The `bankgate` command against data directories in tmp dirs: in process through Typer's runner, and the real
entry point as a subprocess where the process itself is what is checked."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import bankgate
from bankgate.cli import app
from bankgate.config import load_settings
from bankgate.credentials.clients import ClientAuthError
from bankgate.services import KEY_PUBLISH_MARGIN, Services
from bankgate.vault import Vault, load_master_key
from conftest import run_cli

ISSUED_KEYS = {"client_id", "api_key", "secret_key", "scopes", "auth_mode", "environment"}
AUDIT_KEYS = {"event", "at", "actor", "source_ip", "outcome"}
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def invoke(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`bankgate ARGS` in this process: what it printed and its exit status, as a subprocess would report them.
    An exception other than the command's own exit is raised, not rendered: it would be a traceback for a user."""
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    completed = subprocess.CompletedProcess(["bankgate", *args], result.exit_code, result.stdout, result.stderr)
    if check and result.exit_code != 0:
        raise AssertionError(f"bankgate {' '.join(args)} failed ({result.exit_code}):\n{result.stderr}")
    return completed


def bg(data_dir: Path, *args: str, env: dict[str, str] | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    return invoke(*args, "--data-dir", str(data_dir), env=env, check=check)


def bg_json(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(bg(data_dir, *args, "--json", env=env).stdout)


def create(data_dir: Path, *scopes: str, auth_mode: str = "oauth2", name: str = "Acme web shop",
           env: dict[str, str] | None = None) -> dict[str, Any]:
    args = ["clients", "create", "--name", name, "--auth-mode", auth_mode]
    for scope in scopes or ("app_1",):
        args += ["--scope", scope]
    return bg_json(data_dir, *args, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> str:
    assert result.returncode == code, result.stderr
    message = result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert len(message.splitlines()) == 1, f"not one line:\n{result.stderr}"
    assert message.startswith("error: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def authenticate(data_dir: Path, api_key: str, secret: str, database_url: str | None = None) -> str:
    """`ok`, or why the key pair is refused, as the token endpoint would see it."""

    async def check() -> str:
        services = await Services.open(load_settings(data_dir=data_dir, database_url=database_url))
        try:
            await services.clients.authenticate(api_key, secret)
            return "ok"
        except ClientAuthError as exc:
            return exc.reason
        finally:
            await services.close()

    return asyncio.run(check())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    bg_json(directory, "init")
    return directory


# -- init --------------------------------------------------------------------------------------------------


def test_init_twice_creates_one_signing_key_and_reports_it(tmp_path: Path) -> None:
    directory = tmp_path / "fresh"
    first = bg_json(directory, "init")
    second = bg_json(directory, "init")

    assert set(first) == {"data_dir", "database", "environment", "issuer", "signing_key", "created_signing_key"}
    assert first["issuer"] is None  # until `init --issuer URL` or the first `serve` stores one
    assert first["created_signing_key"] is True
    assert second["created_signing_key"] is False
    assert second["signing_key"]["kid"] == first["signing_key"]["kid"]
    assert first["signing_key"]["alg"] == "RS256" and first["signing_key"]["status"] == "active"
    assert first["environment"] == "sandbox"
    assert first["data_dir"] == str(directory.resolve())
    assert first["database"] == f"sqlite+aiosqlite:///{directory.resolve() / 'bankgate.db'}"
    assert stat.S_IMODE((directory / "master.key").stat().st_mode) == 0o600
    assert [k["kid"] for k in bg_json(directory, "keys", "list")] == [first["signing_key"]["kid"]]


def test_init_without_json_says_whether_the_key_was_created_or_kept(tmp_path: Path) -> None:
    first = bg(tmp_path / "d", "init").stdout
    second = bg(tmp_path / "d", "init").stdout
    assert "signing key created: RS256" in first
    assert "signing key kept: RS256" in second


# -- clients -----------------------------------------------------------------------------------------------


def test_clients_create_prints_the_key_pair_once_with_exact_keys(data_dir: Path) -> None:
    issued = create(data_dir, "app_12345", "app_67890", "app_12345", auth_mode="basic")
    assert set(issued) == ISSUED_KEYS
    assert re.fullmatch(r"bk_test_[A-Za-z0-9]{24}", issued["api_key"])
    assert re.fullmatch(r"sk_test_[A-Za-z0-9]{43}", issued["secret_key"])
    assert issued["scopes"] == ["app_12345", "app_67890"]
    assert issued["auth_mode"] == "basic"
    assert issued["environment"] == "sandbox"
    assert authenticate(data_dir, issued["api_key"], issued["secret_key"]) == "ok"


def test_clients_create_without_json_shows_key_and_secret_whole(data_dir: Path) -> None:
    out = bg(data_dir, "clients", "create", "--name", "shop", "--scope", "app_1").stdout
    api_key = re.search(r"bk_test_[A-Za-z0-9]+", out)
    secret = re.search(r"sk_test_[A-Za-z0-9]+", out)
    assert api_key and len(api_key.group()) == 32
    assert secret and len(secret.group()) == 51
    assert authenticate(data_dir, api_key.group(), secret.group()) == "ok"


def test_secret_is_in_no_file_of_the_data_dir(data_dir: Path) -> None:
    issued = create(data_dir)
    rotated = bg_json(data_dir, "clients", "rotate-secret", issued["api_key"], "--overlap", "1h")
    for path in data_dir.iterdir():
        content = path.read_bytes()
        for secret in (issued["secret_key"], rotated["secret_key"]):
            assert secret.encode() not in content, f"secret in clear in {path.name}"


def test_clients_list_shows_every_client_but_no_secret_and_no_hash(data_dir: Path) -> None:
    first = create(data_dir, "app_1", name="first")
    second = create(data_dir, "app_2", auth_mode="basic", name="second")
    vault = Vault(load_master_key(None, data_dir, create=False))

    result = bg(data_dir, "clients", "list", "--json")
    listed = json.loads(result.stdout)
    assert [c["api_key"] for c in listed] == [first["api_key"], second["api_key"]]
    assert [(c["name"], c["scopes"], c["auth_mode"]) for c in listed] == [
        ("first", ["app_1"], "oauth2"), ("second", ["app_2"], "basic")
    ]
    assert all(c["status"] == "active" and c["environment"] == "sandbox" for c in listed)
    for client in (first, second):
        assert client["secret_key"] not in result.stdout
        assert vault.hash_secret(client["secret_key"]) not in result.stdout
    for entry in listed:
        assert not {key for key in entry if "secret_key" in key or "hash" in key}
        for secret in entry["secrets"]:
            assert set(secret) == {"created_at", "expires_at"}


def test_clients_list_table_prints_api_keys_whole(data_dir: Path) -> None:
    issued = [create(data_dir, "app_12345", "app_67890", name=f"client number {n}") for n in range(2)]
    for columns in ("80", "60"):
        out = bg(data_dir, "clients", "list", env={"COLUMNS": columns}).stdout
        for client in issued:
            assert client["api_key"] in out, f"API key cut at {columns} columns:\n{out}"


def test_clients_list_is_empty_before_any_client(data_dir: Path) -> None:
    assert bg_json(data_dir, "clients", "list") == []


def test_clients_show_one_client(data_dir: Path) -> None:
    issued = create(data_dir, "app_1", "app_2", auth_mode="basic")
    shown = bg_json(data_dir, "clients", "show", issued["api_key"])
    assert shown["client_id"] == issued["client_id"]
    assert shown["api_key"] == issued["api_key"]
    assert shown["scopes"] == ["app_1", "app_2"]
    assert shown["auth_mode"] == "basic"
    assert shown["status"] == "active" and shown["revoked_at"] is None
    assert len(shown["secrets"]) == 1 and shown["secrets"][0]["expires_at"] is None
    assert "secret_key" not in shown

    text = bg(data_dir, "clients", "show", issued["api_key"]).stdout
    assert issued["api_key"] in text and issued["secret_key"] not in text


def test_clients_revoke_stops_the_key_pair(data_dir: Path) -> None:
    issued = create(data_dir)
    revoked = bg_json(data_dir, "clients", "revoke", issued["api_key"])
    assert revoked["status"] == "revoked" and isinstance(revoked["revoked_at"], int)
    assert bg_json(data_dir, "clients", "show", issued["api_key"])["status"] == "revoked"
    assert authenticate(data_dir, issued["api_key"], issued["secret_key"]) == "client_revoked"
    assert "revoked" in bg(data_dir, "clients", "revoke", issued["api_key"]).stdout  # twice is harmless


def test_rotate_secret_overlap_decides_how_long_the_previous_secret_works(data_dir: Path) -> None:
    issued = create(data_dir)
    key = issued["api_key"]

    day = bg_json(data_dir, "clients", "rotate-secret", key, "--overlap", "24h")
    assert set(day) == ISSUED_KEYS | {"previous_secret_valid_for_seconds"}
    assert day["previous_secret_valid_for_seconds"] == 86400
    assert day["api_key"] == key and day["secret_key"] != issued["secret_key"]
    shown = bg_json(data_dir, "clients", "show", key)["secrets"]
    assert len(shown) == 2
    assert shown[0]["expires_at"] - shown[0]["created_at"] == pytest.approx(86400, abs=5)
    assert authenticate(data_dir, key, issued["secret_key"]) == "ok"
    assert authenticate(data_dir, key, day["secret_key"]) == "ok"

    half_hour = bg_json(data_dir, "clients", "rotate-secret", key, "--overlap", "30m")
    assert half_hour["previous_secret_valid_for_seconds"] == 1800
    shown = bg_json(data_dir, "clients", "show", key)["secrets"]
    assert len(shown) == 3
    rotated_at = shown[2]["created_at"]
    # the shorter overlap also shortens the earlier one: neither older secret outlives 30 minutes
    assert [s["expires_at"] for s in shown[:2]] == [pytest.approx(rotated_at + 1800, abs=2)] * 2

    now = bg_json(data_dir, "clients", "rotate-secret", key, "--overlap", "0")
    assert now["previous_secret_valid_for_seconds"] == 0
    assert len(bg_json(data_dir, "clients", "show", key)["secrets"]) == 1
    for old in (issued, day, half_hour):
        assert authenticate(data_dir, key, old["secret_key"]) == "wrong_secret"
    assert authenticate(data_dir, key, now["secret_key"]) == "ok"


def test_rotate_secret_of_a_revoked_client_is_refused(data_dir: Path) -> None:
    issued = create(data_dir)
    bg(data_dir, "clients", "revoke", issued["api_key"])
    result = bg(data_dir, "clients", "rotate-secret", issued["api_key"], "--overlap", "0", check=False)
    assert_one_line_error(result, "is revoked", "create a new client")


# -- signing keys ------------------------------------------------------------------------------------------


def test_keys_rotate_keeps_the_old_key_listed_as_retired(data_dir: Path) -> None:
    [first] = bg_json(data_dir, "keys", "list")
    rotated = bg_json(data_dir, "keys", "rotate")
    assert set(rotated) == {"kid", "alg", "status", "created_at", "retired_at", "published_until"}
    assert rotated["status"] == "active" and rotated["alg"] == "RS256" and rotated["kid"] != first["kid"]

    listed = bg_json(data_dir, "keys", "list")
    assert [(k["kid"], k["status"]) for k in listed] == [
        (rotated["kid"], "active"), (first["kid"], "retired")
    ]
    retired = listed[1]
    published_for = retired["published_until"] - retired["retired_at"]
    assert published_for == pytest.approx(7200 + KEY_PUBLISH_MARGIN, abs=1)

    ed = bg_json(data_dir, "keys", "rotate", "--alg", "EdDSA")
    assert ed["alg"] == "EdDSA"
    assert [k["alg"] for k in bg_json(data_dir, "keys", "list")] == ["EdDSA", "RS256", "RS256"]


def test_keys_list_table_prints_kids_whole(data_dir: Path) -> None:
    bg_json(data_dir, "keys", "rotate", "--alg", "ES256")
    kids = [k["kid"] for k in bg_json(data_dir, "keys", "list")]
    out = bg(data_dir, "keys", "list").stdout
    for kid in kids:
        assert kid in out, out


def test_keys_retire_unpublishes_a_key_at_once_and_refuses_the_active_key_alone(data_dir: Path) -> None:
    [first] = bg_json(data_dir, "keys", "list")
    # `--` before the key id: a kid is base64url and may begin with "-", which would read as an option
    refused = invoke("keys", "retire", "--data-dir", str(data_dir), "--", first["kid"], check=False)
    assert_one_line_error(refused, "rotate")
    assert [k["kid"] for k in bg_json(data_dir, "keys", "list")] == [first["kid"]]

    done = json.loads(invoke("keys", "retire", "--data-dir", str(data_dir), "--rotate", "--json", "--",
                             first["kid"]).stdout)
    assert done["retired"]["kid"] == first["kid"]
    new_kid = done["rotated_to"]["kid"]
    assert new_kid != first["kid"]
    assert [k["kid"] for k in bg_json(data_dir, "keys", "list")] == [new_kid]

    events = bg_json(data_dir, "audit", "tail", "--limit", "3")
    assert [(e["event"], e["outcome"]) for e in events] == [
        ("key.retired", "failure"), ("key.rotated", "success"), ("key.retired", "success")
    ]
    assert events[-1]["actor"].startswith("cli")


def test_keys_rotate_rejects_an_unknown_algorithm(data_dir: Path) -> None:
    result = bg(data_dir, "keys", "rotate", "--alg", "HS256", check=False)
    assert_one_line_error(result, "invalid settings", "signing_alg")


# -- audit -------------------------------------------------------------------------------------------------


def test_audit_tail_shows_the_newest_events_oldest_first(data_dir: Path) -> None:
    issued = create(data_dir)
    rotated = bg_json(data_dir, "clients", "rotate-secret", issued["api_key"], "--overlap", "0")
    bg(data_dir, "clients", "revoke", issued["api_key"])
    key = bg_json(data_dir, "keys", "rotate")

    result = bg(data_dir, "audit", "tail", "--limit", "10", "--json")
    first_key, ca_created, *events = json.loads(result.stdout)
    assert (first_key["event"], first_key["actor"], first_key["detail"]["by"]) == ("key.rotated", "system", "init")
    assert (ca_created["event"], ca_created["actor"], ca_created["detail"]["environment"]) == ("ca.created", "system",
                                                                                          "sandbox")
    assert [e["event"] for e in events] == ["client.created", "client.secret_rotated", "client.revoked",
                                            "key.rotated"]
    for event in events:
        assert set(event) >= AUDIT_KEYS
        assert event["outcome"] == "success"
        assert event["actor"].startswith("cli")
        assert event["source_ip"] is None
        assert ISO_UTC.fullmatch(event["at"])
    assert [e["detail"].get("api_key") for e in events[:3]] == [issued["api_key"]] * 3
    assert events[0]["detail"]["scopes"] == ["app_1"]
    assert events[1]["detail"]["overlap_seconds"] == 0
    assert events[3]["detail"] == {"kid": key["kid"], "alg": "RS256"}
    for secret in (issued["secret_key"], rotated["secret_key"]):
        assert secret not in result.stdout

    newest = bg_json(data_dir, "audit", "tail", "--limit", "2")
    assert [e["event"] for e in newest] == ["client.revoked", "key.rotated"]
    only = bg_json(data_dir, "audit", "tail", "--event", "client.revoked")
    assert [e["event"] for e in only] == ["client.revoked"]


def test_audit_tail_filters_by_kind_actor_and_time(data_dir: Path) -> None:
    issued = create(data_dir)
    bg(data_dir, "clients", "disable", issued["api_key"])
    mine = bg_json(data_dir, "audit", "tail", "--event", "client.", "--since", "1h")
    assert [e["event"] for e in mine] == ["client.created", "client.disabled"]
    actor = mine[0]["actor"]
    assert actor.startswith("cli")
    assert [e["event"] for e in bg_json(data_dir, "audit", "tail", "--actor", actor)] == [
        "client.created", "client.disabled"]
    assert bg_json(data_dir, "audit", "tail", "--actor", "api:nobody") == []
    assert bg_json(data_dir, "audit", "tail", "--until", "2000-01-01T00:00Z") == []
    later = bg_json(data_dir, "audit", "tail", "--since", "2999-01-01T00:00:00+01:00")
    assert later == []
    result = bg(data_dir, "audit", "tail", "--since", "yesterday", check=False)
    assert result.returncode == 2 and "'yesterday' is neither a time" in result.stderr


# -- where settings come from ------------------------------------------------------------------------------


def test_the_installed_entry_point_prints_its_version() -> None:
    result = run_cli("--version")
    assert result.stdout == f"bankgate {bankgate.__version__}\n" == "bankgate 0.1.0\n"


def test_data_dir_comes_from_bankgate_data_dir_when_no_flag(tmp_path: Path) -> None:
    """The real entry point (`python -m bankgate`), as a subprocess."""
    directory = tmp_path / "from-env"
    env = {"BANKGATE_DATA_DIR": str(directory)}
    report = json.loads(run_cli("init", "--json", env=env).stdout)
    assert report["data_dir"] == str(directory.resolve())
    created = run_cli("clients", "create", "--name", "x", "--scope", "app_1", "--json", env=env)
    issued = json.loads(created.stdout)
    assert (directory / "bankgate.db").is_file() and (directory / "master.key").is_file()
    assert [c["api_key"] for c in bg_json(directory, "clients", "list")] == [issued["api_key"]]


def test_production_environment_variable_issues_live_keys(tmp_path: Path) -> None:
    env = {"BANKGATE_ENVIRONMENT": "production"}
    assert bg_json(tmp_path / "d", "init", env=env)["environment"] == "production"
    issued = create(tmp_path / "d", env=env)
    assert re.fullmatch(r"bk_live_[A-Za-z0-9]{24}", issued["api_key"])
    assert re.fullmatch(r"sk_live_[A-Za-z0-9]{43}", issued["secret_key"])
    assert issued["environment"] == "production"


def test_toml_file_in_data_dir_is_honoured_and_environment_variables_win(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "bankgate.toml").write_text('environment = "production"\ntoken_ttl = 600\n')
    assert bg_json(directory, "init")["environment"] == "production"
    issued = create(directory)
    assert issued["api_key"].startswith("bk_live_") and issued["environment"] == "production"

    bg_json(directory, "keys", "rotate")
    retired = bg_json(directory, "keys", "list")[1]
    published_for = retired["published_until"] - retired["retired_at"]
    assert published_for == pytest.approx(600 + KEY_PUBLISH_MARGIN, abs=1)

    sandbox = {"BANKGATE_ENVIRONMENT": "sandbox"}
    assert create(directory, env=sandbox)["api_key"].startswith("bk_test_")


def test_invalid_toml_setting_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "bankgate.toml").write_text('environment = "staging"\n')
    assert_one_line_error(bg(directory, "init", check=False), "invalid settings", "environment")


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["clients", "show"], ["clients", "revoke"], ["clients", "rotate-secret"]]
)
def test_unknown_api_key_is_a_one_line_error(data_dir: Path, command: list[str]) -> None:
    result = bg(data_dir, *command, "bk_test_" + "x" * 24, check=False)
    assert_one_line_error(result, f"no client with API key bk_test_{'x' * 24}")
    assert result.stdout == ""


def test_bad_scope_is_refused_and_nothing_is_written(data_dir: Path) -> None:
    result = bg(data_dir, "clients", "create", "--name", "x", "--scope", "app_1", "--scope", "bad scope!",
                check=False)
    assert_one_line_error(result, "'bad scope!' is not a valid application ID")
    assert bg_json(data_dir, "clients", "list") == []
    assert [e["event"] for e in bg_json(data_dir, "audit", "tail")] == ["key.rotated", "ca.created"]  # init's only


def test_unknown_auth_mode_is_refused(data_dir: Path) -> None:
    result = bg(data_dir, "clients", "create", "--name", "x", "--scope", "app_1", "--auth-mode", "jwt",
                check=False)
    assert_one_line_error(result, "auth mode 'jwt' is not one of: oauth2, basic")
    assert bg_json(data_dir, "clients", "list") == []


def test_clients_create_without_scope_is_a_usage_error(data_dir: Path) -> None:
    result = bg(data_dir, "clients", "create", "--name", "x", check=False)
    assert result.returncode == 2
    assert "--scope" in result.stderr and "Traceback" not in result.stderr


def test_bad_overlap_is_a_usage_error_and_changes_nothing(data_dir: Path) -> None:
    issued = create(data_dir)
    result = bg(data_dir, "clients", "rotate-secret", issued["api_key"], "--overlap", "abc", check=False)
    assert result.returncode == 2
    assert "'abc' is not a duration like 0, 90s, 30m, 24h or 7d" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(bg_json(data_dir, "clients", "show", issued["api_key"])["secrets"]) == 1
    assert authenticate(data_dir, issued["api_key"], issued["secret_key"]) == "ok"


@pytest.mark.parametrize(
    "command",
    [
        ["clients", "list"],
        ["clients", "show", "bk_test_x"],
        ["clients", "create", "--name", "x", "--scope", "app_1"],
        ["keys", "list"],
        ["keys", "rotate"],
        ["audit", "tail"],
    ],
)
def test_commands_on_an_uninitialised_data_dir_say_to_run_init(tmp_path: Path, command: list[str]) -> None:
    directory = tmp_path / "never-initialised"
    result = bg(directory, *command, check=False)
    assert_one_line_error(result, "run `bankgate init` first")
    assert not directory.exists()


def test_another_master_key_is_refused_with_a_clear_message(data_dir: Path) -> None:
    env = {"BANKGATE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    result = bg(data_dir, "clients", "list", env=env, check=False)
    assert_one_line_error(result, "initialised with another master key")


def test_unreachable_database_is_a_one_line_error(tmp_path: Path) -> None:
    result = bg(tmp_path / "d", "init", "--database-url", "postgresql://postgres@127.0.0.1:1/nothing",
                check=False)
    assert_one_line_error(result)


# -- PostgreSQL ----------------------------------------------------------------------------------------------


def test_cli_works_against_postgresql(tmp_path: Path, postgres_url: str) -> None:
    directory = tmp_path / "pg"
    db = ["--database-url", postgres_url]

    report = bg_json(directory, "init", *db)
    assert report["database"].startswith("postgresql+asyncpg://")
    assert report["created_signing_key"] is True
    assert bg_json(directory, "init", *db)["created_signing_key"] is False

    issued = create(directory, "app_1", "app_2", env={"BANKGATE_DATABASE_URL": postgres_url})
    assert [c["api_key"] for c in bg_json(directory, "clients", "list", *db)] == [issued["api_key"]]
    rotated = bg_json(directory, "clients", "rotate-secret", issued["api_key"], "--overlap", "0", *db)
    assert authenticate(directory, issued["api_key"], rotated["secret_key"], postgres_url) == "ok"
    assert authenticate(directory, issued["api_key"], issued["secret_key"], postgres_url) == "wrong_secret"
    bg(directory, "clients", "revoke", issued["api_key"], *db)
    bg_json(directory, "keys", "rotate", "--alg", "ES256", *db)
    assert [k["status"] for k in bg_json(directory, "keys", "list", *db)] == ["active", "retired"]
    events = [e["event"] for e in bg_json(directory, "audit", "tail", *db)][2:]  # after init's key and CA
    assert events == ["client.created", "client.secret_rotated", "client.revoked", "key.rotated"]
    assert not (directory / "bankgate.db").exists()  # everything went to PostgreSQL

    # The same database from another data directory needs the same master key.
    elsewhere = tmp_path / "elsewhere"
    assert_one_line_error(bg(elsewhere, "init", *db, check=False), "another master key")
    env = {"BANKGATE_MASTER_KEY": (directory / "master.key").read_text().strip()}
    assert bg_json(elsewhere, "clients", "show", issued["api_key"], *db, env=env)["status"] == "revoked"


def test_missing_postgresql_database_is_not_mistaken_for_a_missing_schema(
    tmp_path: Path, postgres_url: str
) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/bankgate_no_such_database"
    result = bg(tmp_path / "d", "init", "--database-url", missing, check=False)
    assert_one_line_error(result, "does not exist")
    assert "run `bankgate init`" not in result.stderr
