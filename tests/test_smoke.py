import subprocess
import sys

from conftest import Server


def test_quick_token_round_trip(server: Server) -> None:
    client = server.create_client("app_1", "app_2")
    response = server.token(client, scope="app_2")
    assert response.status_code == 201, response.text
    assert response.json()["scope"] == "app_2"
    events = [e["event"] for e in server.audit()]
    assert "token.issued" in events


def test_the_installed_entry_point_runs_as_a_process() -> None:
    """Every other test calls the command in process: this one runs the real `python -m bankgate`."""
    result = subprocess.run([sys.executable, "-m", "bankgate", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "clients" in result.stdout and "serve" in result.stdout
    failed = subprocess.run([sys.executable, "-m", "bankgate", "clients", "show", "no-such-key", "--data-dir",
                             "/nonexistent/bankgate"], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error:") and "Traceback" not in failed.stderr
