"""nginx for real, with the shipped configuration (deploy/nginx/bankgate.conf): the file is rendered with a test's
ports and paths and an unprivileged nginx runs it in the foreground. Without nginx the tests that need it are
skipped, except in CI, where they fail."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IN_CI, free_port

__all__ = ["NGINX", "SHIPPED_CONFIG", "render_nginx_config", "require_nginx", "running_nginx"]

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "bankgate.conf"
#: The upstream line of the shipped file, which a deployment points at its replicas (compose.yaml rewrites it too).
UPSTREAM_LINE = "server 127.0.0.1:8000;"


def require_nginx() -> str:
    """The nginx binary; skips the test (fails it in CI) when there is none."""
    if NGINX is None:
        message = "nginx is not installed (apt-get install nginx-light); only the nginx integration tests need it"
        if IN_CI:
            pytest.fail(f"in CI nginx must be installed (.ci/run installs it): {message}")
        pytest.skip(message)
    return NGINX


def render_nginx_config(directory: Path, listen: int, upstreams: list[int]) -> str:
    """The shipped file with this test's ports and paths (TLS files read from `directory`), its upstream holding
    one `server` line per port in `upstreams`, plus what an unprivileged nginx needs."""
    text = SHIPPED_CONFIG.read_text()
    built = subprocess.run([NGINX or "nginx", "-V"], capture_output=True, text=True).stderr
    temp = [f"client_body_temp_path {directory}/body;", f"proxy_temp_path {directory}/proxy;"]
    temp += [f"{m}_temp_path {directory}/{m};" for m in ("fastcgi", "uwsgi", "scgi")
             if f"--without-http_{m}_module" not in built]
    servers = "\n        ".join(f"server 127.0.0.1:{port};" for port in upstreams)
    replacements = {
        "listen 443 ssl;": f"listen 127.0.0.1:{listen} ssl;",
        UPSTREAM_LINE: servers,
        "/etc/bankgate/": f"{directory}/",
        "worker_processes auto;": "worker_processes 1;",
        "http {\n": "http {\n    access_log off;\n    " + "\n    ".join(temp) + "\n",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx/bankgate.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def running_nginx(directory: Path, upstreams: list[int]) -> Iterator[int]:
    """nginx on a free loopback port with the shipped configuration in front of `upstreams`, until the block ends.
    `directory` holds ca.pem, server.pem and server.key (as /etc/bankgate/ does); yields the HTTPS port."""
    binary = require_nginx()
    listen = free_port()
    config = directory / "nginx.conf"
    config.write_text(render_nginx_config(directory, listen, upstreams))
    log_path = directory / "nginx.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(config), "-e", "stderr",
             "-g", f"daemon off; master_process off; pid {directory}/nginx.pid;"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "nginx did not start"
                    time.sleep(0.05)
            yield listen
        finally:
            process.terminate()
            process.wait(10)
