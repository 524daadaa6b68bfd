"""The shipped deployment files agree: the systemd unit, the Docker image and compose file, and the Kubernetes
manifests run the same commands and probe the same path, a path the server answers. The unit is checked by
`systemd-analyze verify` when it is installed; the YAML files are parsed with PyYAML when it is installed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Server

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "systemd" / "bankgate.service"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
NGINX = DEPLOY / "nginx" / "bankgate.conf"
PROBE = "/livez"  # liveness: the process answers
READY = "/readyz"  # readiness: database, keys and migrations checked
PORT = 8000


def unit_entries() -> dict[str, list[str]]:
    """Each key of the unit with its values in order (a key may repeat)."""
    entries: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        entries.setdefault(key, []).append(value)
    return entries


def command(argv: list[str]) -> list[str]:
    """A command line with the program by its name, wherever it is installed."""
    return [Path(argv[0]).name, *argv[1:]]


def unit_commands() -> tuple[list[str], list[str]]:
    entries = unit_entries()
    (pre,) = entries["ExecStartPre"]
    (start,) = entries["ExecStart"]
    return command(shlex.split(pre)), command(shlex.split(start))


def dockerfile_instruction(name: str) -> str:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]
    assert len(found) == 1, f"{DOCKERFILE} should have one {name}, has {len(found)}"
    return found[0]


def probed_path(check: str) -> str:
    match = re.search(r"https?://127\.0\.0\.1:(\d+)(/[\w/]*)", check)
    assert match, f"no local URL in the health check {check!r}"
    assert int(match.group(1)) == PORT
    return match.group(2)


def yaml_documents(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the YAML files are not parsed")
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def test_the_probed_paths_are_answered_without_credentials(server: Server) -> None:
    answer = server.http.get(PROBE)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"
    ready = server.http.get(READY)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_the_systemd_unit_initialises_then_serves_as_an_unprivileged_hardened_service() -> None:
    entries = unit_entries()
    assert unit_commands() == (["bankgate", "init"], ["bankgate", "serve"])
    assert entries["User"] == ["bankgate"]
    assert entries["EnvironmentFile"] == ["/etc/bankgate/env"]
    assert "0600" in UNIT.read_text()  # the note on the environment file's mode
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ReadWritePaths": "/var/lib/bankgate"}.items():
        assert entries.get(key) == [value], f"{key}={value} is missing from {UNIT.name}"
    environment = dict(value.split("=", 1) for value in entries["Environment"])
    assert environment["BANKGATE_DATA_DIR"] == "/var/lib/bankgate"
    assert environment["BANKGATE_PORT"] == str(PORT)
    assert environment["BANKGATE_CLIENT_CERT_HEADER"] == "nginx"
    # nginx on the same host (deploy/nginx/bankgate.conf) proxies to this address and port.
    assert f"server {environment['BANKGATE_HOST']}:{PORT};" in NGINX.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The unit names /opt/bankgate/bin/bankgate; verify checks the program exists, so point it at this one.
    installed = Path(sys.executable).with_name("bankgate")
    assert installed.exists()
    unit = tmp_path / "bankgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/bankgate/bin/bankgate", str(installed)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_rejects_a_broken_unit(tmp_path: Path) -> None:
    """The verification above can fail: a misspelt key is reported."""
    installed = Path(sys.executable).with_name("bankgate")
    unit = tmp_path / "bankgate.service"
    text = UNIT.read_text().replace("/opt/bankgate/bin/bankgate", str(installed))
    unit.write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "NoNewPrivilege" in result.stdout + result.stderr


def test_the_image_runs_the_units_command_as_a_non_root_user_and_probes_the_same_path() -> None:
    _, serve = unit_commands()
    assert json.loads(dockerfile_instruction("CMD")) == serve
    assert dockerfile_instruction("FROM") == "python:3.11-slim"
    assert dockerfile_instruction("USER") == "bankgate"
    assert "RUN pip install '.[server]'" in DOCKERFILE.read_text()
    assert probed_path(dockerfile_instruction("HEALTHCHECK")) == PROBE


def test_compose_runs_the_units_commands_behind_the_shipped_nginx_config() -> None:
    (compose,) = yaml_documents(COMPOSE)
    services = compose["services"]
    init, serve = unit_commands()
    assert services["bankgate-init"]["command"] == init
    assert services["bankgate"]["command"] == serve
    assert services["bankgate"]["deploy"]["replicas"] == 2
    assert probed_path(" ".join(services["bankgate"]["healthcheck"]["test"])) == PROBE
    assert {"postgres", "redis", "nginx"} <= set(services)

    nginx = services["nginx"]
    config = next(volume.split(":")[0] for volume in nginx["volumes"] if volume.endswith("/nginx.conf:ro"))
    assert (COMPOSE.parent / config).resolve() == NGINX
    # nginx points the shipped upstream at the replicas: the line it rewrites must be in the file.
    rewritten = re.search(r"sed 's/(.+?)/", " ".join(nginx["command"]))
    assert rewritten and rewritten.group(1) in NGINX.read_text()

    environment = services["bankgate"]["environment"]
    assert environment["BANKGATE_CLIENT_CERT_HEADER"] == "nginx"
    assert environment["BANKGATE_TRUSTED_PROXIES"] == f"{nginx['networks']['bankgate']['ipv4_address']}/32"
    assert environment["BANKGATE_DATABASE_URL"].startswith("postgresql://")
    assert environment["BANKGATE_MASTER_KEY"].startswith("${BANKGATE_MASTER_KEY:?")  # never a key in the file


def test_kubernetes_runs_the_units_commands_probes_the_same_path_and_reads_the_master_key_from_a_secret() -> None:
    documents = {(d["kind"], d["metadata"]["name"]): d
                 for path in sorted(KUBERNETES.glob("*.yaml")) for d in yaml_documents(path)}
    assert set(documents) == {("Deployment", "bankgate"), ("Service", "bankgate"), ("Secret", "bankgate")}
    pod = documents[("Deployment", "bankgate")]["spec"]["template"]["spec"]
    init, serve = unit_commands()
    (init_container,) = pod["initContainers"]
    (container,) = pod["containers"]
    assert init_container["command"] == init
    assert container["command"] == serve
    for probe, path in (("readinessProbe", READY), ("livenessProbe", PROBE)):
        assert container[probe]["httpGet"]["path"] == path
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["ports"] == [{"name": "http", "containerPort": PORT}]
    assert pod["securityContext"]["runAsNonRoot"] is True

    secret = documents[("Secret", "bankgate")]
    assert "BANKGATE_MASTER_KEY" in secret["stringData"]
    for each in (init_container, container):
        assert {"secretRef": {"name": "bankgate"}} in each["envFrom"]
        assert "BANKGATE_MASTER_KEY" not in {variable["name"] for variable in each["env"]}
        assert {"name": "BANKGATE_PORT", "value": str(PORT)} in each["env"]

    service = documents[("Service", "bankgate")]["spec"]
    assert service["selector"] == documents[("Deployment", "bankgate")]["spec"]["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] == "http"
