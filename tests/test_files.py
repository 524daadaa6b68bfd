"""Files bankgate writes are owner-only (0600, directories 0700) whatever the umask and the directory they go in."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bankgate.config import load_settings
from bankgate.files import private_dir, write_private
from bankgate.server import prepare_tls
from bankgate.services import Services
from conftest import cli_json, run_cli


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a plain `open()` makes files 0644 and `mkdir()` directories 0755."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _everything_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def _assert_owner_only(root: Path, *, except_root: bool = True) -> None:
    found = _everything_under(root)
    assert found, f"nothing under {root}"
    wrong = {str(p.relative_to(root)): oct(_mode(p)) for p in found
             if _mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert wrong == {}, f"not owner-only under {root}: {wrong}"
    if not except_root:
        assert _mode(root) == 0o700


async def _write_while_open(data_dir: Path) -> list[str]:
    """Open the database as the server does, write to it, and list the SQLite files while the connection holds
    the WAL open (SQLite removes `-wal` and `-shm` when the last connection closes)."""
    services = await Services.open(load_settings(data_dir=data_dir))
    try:
        await services.clients.create("while open", ["app_1"], "oauth2")
        names = sorted(p.name for p in data_dir.iterdir() if p.name.startswith("bankgate.db"))
        _assert_owner_only(data_dir)
        return names
    finally:
        await services.close()


def test_init_in_an_existing_0755_directory_makes_every_file_owner_only(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    assert _mode(data) == 0o755

    run_cli("init", "--data-dir", str(data))
    client = cli_json("clients", "create", "--name", "Shop", "--scope", "app_1", "--data-dir", str(data))
    assert client["api_key"].startswith("bk_test_")
    user = cli_json("users", "create", "--name", "File Tester", "--data-dir", str(data))
    issued = cli_json("certs", "issue", user["username"], "--out", str(data / "certs"), "--data-dir", str(data))
    run_cli("certs", "download", issued["serial"], "--out", str(data / "downloaded.pem"), "--data-dir", str(data))
    run_cli("ca-cert", "--out", str(data / "ca.pem"), "--data-dir", str(data))
    prepare_tls(load_settings(data_dir=data))  # what `serve --tls` writes: server key + certificate, the CA

    names = asyncio.run(_write_while_open(data))
    assert names == ["bankgate.db", "bankgate.db-shm", "bankgate.db-wal"]
    _assert_owner_only(data)
    assert {p.name for p in (data / "certs").iterdir()} == {f"{issued['serial']}{s}" for s in
                                                            (".crt.pem", ".key.pem", ".p12")}
    assert {p.name for p in (data / "tls").iterdir()} == {"server.pem", "sandbox-ca.pem"}
    assert _mode(data) == 0o755  # a directory the operator made is theirs: left as it was


def test_a_data_directory_bankgate_creates_is_0700_with_the_master_key_in_the_environment(
    tmp_path: Path, umask_022: None
) -> None:
    # With BANKGATE_MASTER_KEY, no master.key is written: the database is the first file, and makes the directory.
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    data = tmp_path / "new" / "data"
    run_cli("init", "--data-dir", str(data), env={"BANKGATE_MASTER_KEY": master})
    assert _mode(data) == 0o700
    assert _mode(data.parent) == 0o700
    assert not (data / "master.key").exists()
    _assert_owner_only(tmp_path / "new", except_root=False)


def test_files_left_readable_by_an_older_version_are_made_owner_only_on_the_next_open(
    tmp_path: Path, umask_022: None
) -> None:
    data = tmp_path / "data"
    run_cli("init", "--data-dir", str(data))
    for name in ("bankgate.db", "master.key"):
        (data / name).chmod(0o644)
    (data / "bankgate.db-wal").write_bytes(b"")  # a WAL left behind by a crash, created before the fix
    (data / "bankgate.db-wal").chmod(0o644)
    run_cli("clients", "list", "--data-dir", str(data))
    _assert_owner_only(data)


def test_certificate_files_the_cli_writes_replace_an_existing_readable_file_with_an_owner_only_one(
    tmp_path: Path, umask_022: None
) -> None:
    data = tmp_path / "data"
    run_cli("init", "--data-dir", str(data))
    user = cli_json("users", "create", "--name", "Download Tester", "--data-dir", str(data))
    issued = cli_json("certs", "issue", user["username"], "--out", str(tmp_path / "out"), "--data-dir", str(data))
    target = tmp_path / "mine.pem"
    target.write_text("old")
    assert _mode(target) == 0o644
    run_cli("certs", "download", issued["serial"], "--out", str(target), "--data-dir", str(data))
    assert _mode(target) == 0o600
    assert target.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert _mode(tmp_path / "out") == 0o700
    assert _mode(tmp_path / "out" / f"{issued['serial']}.crt.pem") == 0o600


def test_write_private_is_owner_only_even_under_a_umask_that_removes_owner_bits(tmp_path: Path) -> None:
    previous = os.umask(0o277)  # owner may not even write: the mode must be set, not left to open(2)
    try:
        private_dir(tmp_path / "a" / "b")
        write_private(tmp_path / "a" / "b" / "key.pem", b"secret")
        with pytest.raises(FileExistsError):
            write_private(tmp_path / "a" / "b" / "key.pem", b"other", replace=False)
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(tmp_path / "a" / "b" / "key.pem") == 0o600
    assert (tmp_path / "a" / "b" / "key.pem").read_bytes() == b"secret"
