"""The command line through the admin API (`bankgate --server URL --admin-key bka_… …`): the same commands and output
as on the server's own database, run and audited there as `api:<administrator>`, the secret only from the
environment or a hidden prompt."""

from __future__ import annotations

import contextlib
import inspect
import json
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from conftest import Server, Tls, run_cli


class Operator:
    """An administrator at a machine without the database: every command goes through `--server`."""

    def __init__(self, server: Server, created: dict[str, Any], workdir: Path, base_url: str | None = None) -> None:
        self.name: str = created["name"]
        self.api_key: str = created["api_key"]
        self.secret_key: str = created["secret_key"]
        self.base_url = base_url or server.base_url
        # A data directory that does not exist: nothing may be read or created locally.
        self.nowhere = workdir / "no-local-data"
        self.outputs: list[str] = []

    def env(self, secret: str | None = None) -> dict[str, str]:
        return {"BANKGATE_ADMIN_SECRET": secret or self.secret_key, "BANKGATE_DATA_DIR": str(self.nowhere)}

    def run(self, *args: str, check: bool = True, secret: str | None = None,
            before: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        argv = ("--server", self.base_url, "--admin-key", self.api_key, *before, *args)
        assert not any(self.secret_key in arg for arg in argv)
        result = run_cli(*argv, env=self.env(secret), check=check)
        self.outputs += [result.stdout, result.stderr]
        return result

    def json(self, *args: str, **options: Any) -> Any:
        return json.loads(self.run(*args, "--json", **options).stdout)


def _operator(server: Server, tmp_path: Path, name: str, role: str) -> Operator:
    return Operator(server, server.cli_json("admins", "create", name, "--role", role), tmp_path)


def _csr(path: Path, common_name: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .sign(key, hashes.SHA256()))
    path.write_bytes(request.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_operator_manages_credentials_through_a_real_server(real_server: Server, tmp_path: Path) -> None:
    owner = _operator(real_server, tmp_path, "ops-owner", "owner")
    manager = _operator(real_server, tmp_path, "integration", "integration-manager")

    # clients: create, list, update (PATCH with the ETag it read), revoke
    created = owner.json("clients", "create", "--name", "Acme shop", "--scope", "app_12345")
    api_key = created["api_key"]
    assert created["secret_key"].startswith("sk_test_") and created["scopes"] == ["app_12345"]
    listed = owner.json("clients", "list")
    assert [c["api_key"] for c in listed] == [api_key] and listed[0]["name"] == "Acme shop"
    updated = owner.json("clients", "update", api_key, "--name", "Acme web shop", "--scope", "app_67890")
    assert updated["name"] == "Acme web shop" and updated["scopes"] == ["app_67890"]
    assert updated["version"] == listed[0]["version"] + 1
    revoked = owner.run("clients", "revoke", api_key)
    assert f"revoked {api_key}" in revoked.stdout
    assert real_server.cli_json("clients", "show", api_key)["status"] == "revoked"  # on the server's database

    # users: create, a new initial passphrase
    user = manager.json("users", "create", "--name", "API Testuser", "--scope", "app_12345")
    username = user["username"]
    assert user["initial_passphrase"] and user["scopes"] == ["app_12345"]
    fresh = manager.json("users", "new-passphrase", username)
    assert fresh["initial_passphrase"] not in ("", user["initial_passphrase"])

    # IP allow list: add, list
    allowed = manager.run("ips", "allow", username, "192.0.2.7/24")
    assert f"allowed 192.0.2.0/24 (from 192.0.2.7/24) for user {username}" in allowed.stdout
    listing = manager.json("ips", "list")
    assert [(e["subject"], e["cidr"]) for e in listing["entries"]] == [(username, "192.0.2.0/24")]

    # a certificate from the user's CSR: only the certificate comes back, written 0600 like a local issue
    out = tmp_path / "certs"
    issued = manager.json("certs", "issue", username, "--csr", str(_csr(tmp_path / "user.csr", username)),
                          "--out", str(out))
    certificate = Path(issued["certificate_file"])
    assert issued["private_key_file"] is None and issued["pkcs12_file"] is None and issued["pkcs12_password"] is None
    assert certificate.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert certificate.stat().st_mode & 0o777 == 0o600
    assert [c["serial"] for c in manager.json("certs", "list", username)] == [issued["serial"]]

    # the server audited each change as the administrator who made it, through the API
    real_server.flush_audit()
    trail = owner.json("audit", "tail", "--limit", "50", "--actor", "api:ops-owner")
    assert {"client.created", "client.updated", "client.revoked"} <= {e["event"] for e in trail}
    assert all(e["actor"] == "api:ops-owner" for e in trail)
    assert [e["at"] for e in trail] == sorted(e["at"] for e in trail)  # oldest first, as locally
    managed = owner.json("audit", "tail", "--actor", "api:integration")
    assert {"user.created", "cert.issued"} <= {e["event"] for e in managed}

    # a manager may not rotate signing keys: the server's 403 message, exit status 1
    refused = manager.run("keys", "rotate", check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "error: the integration-manager role does not allow keys:write; ask an owner [403]" in refused.stderr
    assert owner.json("keys", "rotate")["status"] == "active"

    # nothing local was needed, and the secret never showed: not in any output, not in the server's log
    assert not owner.nowhere.exists()
    real_server.flush_audit()
    log = real_server.log()
    for operator in (owner, manager):
        assert all(operator.secret_key not in text for text in owner.outputs + manager.outputs)
        assert operator.secret_key not in log


def test_every_group_answers_through_the_api(real_server: Server, tmp_path: Path) -> None:
    owner = _operator(real_server, tmp_path, "ops-owner", "owner")
    api_key = owner.json("clients", "create", "--name", "Acme shop", "--scope", "app_12345")["api_key"]
    assert owner.json("clients", "show", api_key)["name"] == "Acme shop"
    assert owner.json("clients", "disable", api_key)["status"] == "disabled"
    assert owner.json("clients", "enable", api_key)["status"] == "active"
    rotated = owner.json("clients", "rotate-secret", api_key, "--overlap", "0")
    assert rotated["secret_key"].startswith("sk_test_") and rotated["previous_secret_valid_for_seconds"] == 0
    assert owner.json("clients", "delete", api_key)["status"] == "deleted"
    assert owner.json("clients", "list", "--status", "deleted")[0]["api_key"] == api_key
    refused = owner.run("clients", "enable", api_key, check=False)  # the server's 409, as one line
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and "[409]" in refused.stderr

    username = owner.json("users", "create", "--name", "API Testuser", "--username", "api-testuser")["username"]
    assert owner.json("users", "update", username, "--scope", "app_12345")["scopes"] == ["app_12345"]
    owner.run("ips", "allow", username, "2001:db8::/48")
    assert owner.json("users", "show", username)["ip_allow_list"] == ["2001:db8::/48"]
    removed = owner.json("ips", "remove", username, "2001:db8::/48")
    assert removed["removed"] == "2001:db8::/48" and removed["remaining"] == []
    missing = owner.run("users", "show", "nobody", check=False)
    assert missing.returncode == 1 and "[404]" in missing.stderr

    # a generated key arrives inside the PKCS#12 bundle only, its password shown once
    out = tmp_path / "generated"
    issued = owner.json("certs", "issue", username, "--out", str(out))
    bundle = Path(issued["pkcs12_file"])
    assert issued["pkcs12_password"] and issued["private_key_file"] is None
    assert bundle.stat().st_mode & 0o777 == 0o600
    key, certificate, _ = pkcs12.load_key_and_certificates(bundle.read_bytes(), issued["pkcs12_password"].encode())
    assert key is not None and certificate is not None
    assert format(certificate.serial_number, "X") == issued["serial"].lstrip("0")
    downloaded = owner.run("certs", "download", issued["serial"])
    assert downloaded.stdout == Path(issued["certificate_file"]).read_text()
    assert owner.json("certs", "show", issued["serial"])["thumbprint"] == issued["thumbprint"]
    assert owner.json("certs", "revoke", issued["serial"])["status"] == "revoked"
    assert owner.json("users", "disable", username)["status"] == "disabled"
    assert owner.json("users", "delete", username)["status"] == "deleted"

    active = [k for k in owner.json("keys", "list") if k["status"] == "active"]
    retired = owner.json("keys", "retire", active[0]["kid"], "--rotate")
    assert retired["retired"]["kid"] == active[0]["kid"] and retired["rotated_to"]["status"] == "active"

    auditor = owner.json("admins", "create", "reader", "--role", "auditor")
    assert auditor["secret_key"].startswith("ska_test_")
    assert owner.json("admins", "set-role", "reader", "--role", "integration-manager")["role"] == "integration-manager"
    assert {a["name"] for a in owner.json("admins", "list")} == {"ops-owner", "reader"}
    assert owner.json("admins", "disable", "reader")["status"] == "disabled"
    assert owner.json("admins", "delete", "reader")["status"] == "deleted"
    assert {a["name"] for a in owner.json("admins", "list", "--deleted")} == {"ops-owner", "reader"}
    assert owner.json("audit", "tail", "--limit", "3", "--event", "admin.*")


def test_the_remote_use_cases_take_what_the_local_ones_take() -> None:
    """The commands call either with the same arguments: a use case changed locally must change here too."""
    from bankgate.admin import Admin
    from bankgate.cli._remote import RemoteServices

    remote = RemoteServices(cast(Any, None)).admin
    local = Admin(cast(Any, None))
    checked = 0
    for group, operations in vars(remote).items():
        for name, method in inspect.getmembers(operations, inspect.iscoroutinefunction):
            if name.startswith("_"):
                continue
            mine = {(p.name, p.kind) for p in inspect.signature(method).parameters.values()}
            theirs = inspect.signature(getattr(getattr(local, group), name)).parameters.values()
            required = {(p.name, p.kind) for p in theirs if p.default is inspect.Parameter.empty}
            # every parameter here is one of the use case's, and every one it requires is here (the optional
            # ones left out, e.g. `expected_version`, are for the API's own If-Match)
            assert mine <= {(p.name, p.kind) for p in theirs} and required <= mine, f"{group}.{name}"
            checked += 1
    assert checked >= 35


def test_a_wrong_secret_is_one_clear_line_and_exit_status_1(real_server: Server, tmp_path: Path) -> None:
    owner = _operator(real_server, tmp_path, "ops-owner", "owner")
    wrong = owner.secret_key[:-4] + ("AAAA" if not owner.secret_key.endswith("AAAA") else "BBBB")
    failed = owner.run("clients", "list", check=False, secret=wrong)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith(f"error: the admin API refused the key pair of {owner.api_key}")
    assert "check --admin-key and BANKGATE_ADMIN_SECRET" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    assert wrong not in failed.stderr and wrong not in real_server.log()


def test_local_and_remote_lists_print_the_same(real_server: Server, tmp_path: Path) -> None:
    owner = _operator(real_server, tmp_path, "ops-owner", "owner")
    for name in ("Acme shop", "Beta bank"):
        real_server.create_client("app_12345", name=name)
    real_server.cli("users", "create", "--name", "API Testuser")
    for listing in (("clients", "list"), ("users", "list"), ("keys", "list")):
        local, remote = real_server.cli(*listing), owner.run(*listing)
        assert remote.stdout == local.stdout, listing
        local_json = real_server.cli_json(*listing)
        assert local_json and owner.json(*listing) == local_json, listing
    # pages: the API's cursor comes back as the command for the next page, and that command works
    first = owner.run("clients", "list", "--limit", "1", "--search", "a")
    assert "more: bankgate clients list --search a --limit 1 --cursor " in first.stdout
    cursor = first.stdout.rsplit("--cursor ", 1)[1].strip()
    second = owner.json("clients", "list", "--limit", "1", "--search", "a", "--cursor", cursor)
    assert [c["name"] for c in second] == ["Beta bank"]


def test_a_secret_on_the_command_line_is_refused(tmp_path: Path) -> None:
    for argv in (("--admin-secret", "ska_test_x"), ("--admin-secret=ska_test_x",)):
        refused = run_cli("--server", "https://auth.example.com", "--admin-key", "bka_test_x", *argv, "clients",
                          "list", check=False)
        assert refused.returncode == 2 and refused.stdout == ""
        assert "the admin secret is never given on the command line: set BANKGATE_ADMIN_SECRET" in refused.stderr
        assert "ska_test_x" not in refused.stderr


@pytest.mark.parametrize("argv", [("init",), ("serve",), ("quickstart",), ("ca-cert",),
                                  ("users", "reset-password", "api-testuser"),
                                  ("admins", "set-password", "ops-owner", "--password-stdin"),
                                  ("audit", "tail", "--export", "trail.csv")])
def test_local_commands_say_they_need_local_access(argv: tuple[str, ...], tmp_path: Path) -> None:
    refused = run_cli("--server", "https://auth.example.com", "--admin-key", "bka_test_x", *argv,
                      env={"BANKGATE_ADMIN_SECRET": "ska_test_x", "BANKGATE_DATA_DIR": str(tmp_path / "none")},
                      check=False)
    assert refused.returncode == 1
    shown = " ".join(argv[:1] if len(argv) == 1 or argv[0] not in ("users", "admins", "audit") else argv[:2])
    shown += " --export" if argv[0] == "audit" else ""
    assert f"error: `bankgate {shown}` needs local access to the database; run it on the server, without --server" \
        in refused.stderr
    assert not (tmp_path / "none").exists() and not Path("trail.csv").exists()


def test_the_secret_goes_over_https_only(tmp_path: Path) -> None:
    env = {"BANKGATE_ADMIN_SECRET": "ska_test_x", "BANKGATE_DATA_DIR": str(tmp_path)}
    refused = run_cli("--server", "http://auth.example.com", "--admin-key", "bka_test_x", "clients", "list",
                      env=env, check=False)
    assert refused.returncode == 1
    assert "the admin secret goes only over HTTPS (plain HTTP to a loopback address alone)" in refused.stderr
    in_url = run_cli("--server", "https://bka_test_x:ska_test_y@auth.example.com", "--admin-key", "bka_test_x",
                     "clients", "list", env=env, check=False)
    assert in_url.returncode == 1 and "--server takes no credentials in the URL" in in_url.stderr
    assert "ska_test_y" not in in_url.stderr
    missing = run_cli("--server", "https://auth.example.com", "clients", "list",
                      env={**env, "BANKGATE_ADMIN_KEY": ""}, check=False)
    assert missing.returncode == 1 and "--server needs the administrator's API key" in missing.stderr


def test_over_tls_with_a_private_ca(tls: Tls, tmp_path: Path) -> None:
    owner = Operator(tls.server, tls.server.cli_json("admins", "create", "tls-owner", "--role", "owner"), tmp_path)
    untrusted = owner.run("clients", "list", check=False)
    assert untrusted.returncode == 1 and "cannot reach the admin API" in untrusted.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    trusted = owner.run("admins", "list", before=("--ca-file", str(tls.ca)))
    assert "tls-owner" in trusted.stdout


class LosingProxy:
    """A TCP relay to the server that lets the first connection's request through and then hangs up instead of
    relaying the answer: what a client sees when a connection breaks after the server acted."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(self.target)
            lose = self.connections == 1
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, lose), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, lose: bool) -> None:
        try:
            while data := source.recv(65536):
                if lose:  # the server answered: drop the answer and the connection
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_a_change_whose_answer_is_lost_is_sent_again_with_the_same_idempotency_key(
    real_server: Server, tmp_path: Path
) -> None:
    proxy = LosingProxy(real_server.base_url)
    try:
        owner = Operator(real_server, real_server.cli_json("admins", "create", "ops-owner", "--role", "owner"),
                         tmp_path, base_url=proxy.url)
        created = owner.json("clients", "create", "--name", "Acme shop", "--scope", "app_12345")
    finally:
        proxy.close()
    assert proxy.connections == 2  # the lost answer, then the retry
    # one client, whose secret is the one printed: the retry got the first answer again, nothing was made twice
    assert [c["api_key"] for c in real_server.cli_json("clients", "list")] == [created["api_key"]]
    token = real_server.http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "app_12345"},
                                  auth=(created["api_key"], created["secret_key"]))
    assert token.status_code == 201 and token.json()["access_token"], token.text
    real_server.flush_audit()
    events = [e["event"] for e in real_server.cli_json("audit", "tail", "--limit", "50")]
    assert events.count("client.created") == 1
