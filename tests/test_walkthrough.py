"""The README's certificate-style walkthrough (examples/certificate-style.sh) runs as printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "certificate-style.sh"


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walkthrough uses curl")
def test_certificate_style_walkthrough_ends_with_a_bearer_call(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "WALKTHROUGH_DIR": str(tmp_path),
        "PORT": str(free_port()),
    }
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    *_, token_line, whoami_line = result.stdout.strip().splitlines()
    token = json.loads(token_line)
    assert set(token) == {"access_token", "expires_in"} and token["expires_in"] == "300"
    whoami = json.loads(whoami_line)
    assert whoami["kind"] == "user" and whoami["name"] == "API Testuser" and whoami["certificate_bound"] is True
    assert "x-certificate-thumbprint:" in result.stdout.lower()
