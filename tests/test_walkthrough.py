"""The README runs as printed: its certificate-style walkthrough as examples/certificate-style.sh, and every shell
snippet from "Getting a token" to the sandbox payments pasted in order into one shell after `scripts/run`, as a
newcomer would, then the client SDK's snippets."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
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


# -- the README, pasted as a newcomer would ------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = (f"<!-- {edge}: shell snippets run in order by tests/test_walkthrough.py -->" for edge in ("begin", "end"))
#: What each shell snippet between the markers prints (in order), at least: a snippet added there needs a line here.
EXPECTED = [
    ['"token_type": "Bearer"', '"scope": "app_12345"'],  # a token with a JSON body, then with the query string
    ['"kind": "client"', '"scopes": ["app_12345"]'],  # ACCESS_TOKEN extracted, whoami
    ['{"status": "ok"}'],  # the walkthrough's manager: user, certificate, allow list, TLS server up
    ["x-certificate-thumbprint:", '"expires_in": "300"', '"kind": "user"', '"certificate_bound": true'],
    ["HTTP/1.1 201 Created", '"status": "accepted"', '"reference": "Invoice 1"'],  # a payment with a key pair token
    ['"status": "accepted"', '"amount": "30.00"'],  # a payment with the walkthrough user's certificate-bound token
]


def readme_region() -> str:
    text = README.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"README.md should hold {BEGIN} and {END} once each"
    return text[text.index(BEGIN):text.index(END)]


def squeeze(text: str) -> str:
    """Case and white space aside (the server's JSON is compact, the README's spaced; header names vary in case)."""
    return re.sub(r"\s+", "", text).lower()


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def _quickstart(data_dir: Path, port: int, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """What `scripts/run` starts, and the `export KEY=… SECRET=…` line it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bankgate", "quickstart", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert process.stdout is not None
    printed = ""
    while not (exports := [line for line in printed.splitlines() if line.startswith("export KEY=")]):
        line = process.stdout.readline()
        assert line, f"quickstart exited without printing the export line:\n{printed}"
        printed += line
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                return process, exports[0]
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, "quickstart did not serve"
            time.sleep(0.1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's snippets use curl")
def test_the_readme_snippets_run_as_printed_after_scripts_run(tmp_path: Path) -> None:
    """The export line `scripts/run` printed, then every shell snippet from "Getting a token" to the payments, in
    one shell in order (the ports alone changed to free ones), then the client SDK's snippets with what it set."""
    port, tls_port = free_port(), free_port()
    ports = {"127.0.0.1:8000": f"127.0.0.1:{port}", "localhost:8443": f"localhost:{tls_port}",
             "--port 8443": f"--port {tls_port}"}

    def local(snippet: str) -> str:
        for old, new in ports.items():
            snippet = snippet.replace(old, new)
        return snippet

    region = readme_region()
    snippets = fenced(region, "sh")
    assert len(snippets) == len(EXPECTED), "a shell snippet was added or removed between the markers: update EXPECTED"
    for old in ports:
        assert old in region, f"the README's snippets no longer use {old}"
    sdk = fenced(README.read_text().partition("## Calling an API from Python")[2].partition("\n## ")[0], "python")
    assert len(sdk) == 2, "the client SDK section should hold its two snippets (key pair, certificate)"
    # scripts/run's .venv: here, this interpreter's scripts.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    env = {**os.environ, "COLUMNS": "80"}  # a narrow terminal: the lines to paste must not be wrapped
    env.pop("BANKGATE_DATA_DIR", None)
    quickstart, export = _quickstart(tmp_path / ".bankgate", port, env)
    try:
        script = ["set -eo pipefail", "trap 'kill $(jobs -p) 2>/dev/null' EXIT", export]
        for n, snippet in enumerate(snippets):
            script += [f"printf '\\n>>> snippet {n}\\n'", local(snippet)]
        # Then Python, started from that shell (the walkthrough's server still running), with its SERIAL.
        script.append("export SERIAL")
        for n, snippet in enumerate(sdk):
            (tmp_path / f"sdk_{n}.py").write_text(local(snippet))
            script += [f"printf '\\n>>> python {n}\\n'", f"python3 sdk_{n}.py"]
        script.append("printf '\\n>>> done\\n'")
        # A session of its own: whatever happens, the walkthrough's server in the background goes with it.
        shell = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            printed, errors = shell.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)
        assert shell.returncode == 0 and ">>> done" in printed, printed + errors
        outputs = re.split(r"^>>> (?:snippet|python) \d+$", printed.partition(">>> done")[0], flags=re.M)[1:]
        for n, (output, expected) in enumerate(zip(outputs, EXPECTED, strict=False)):
            for text in expected:
                assert squeeze(text) in squeeze(output), (
                    f"snippet {n} printed no {text!r}:\n{snippets[n]}\n--- printed:\n{output}\n{errors}")
        assert re.fullmatch(r"\s*201 pay_\w+\s*", outputs[len(snippets)]), outputs[len(snippets)]  # paid in Python
    finally:
        quickstart.terminate()
        quickstart.wait(10)
