"""`bankgate.guard` is a library of its own (`pip install 'bankgate[guard]'`): importing it, and using what it
documents (`Guard`, `Guard.remote`, `GuardMiddleware`), loads PyJWT, cryptography and httpx, never the server's
stack; the FastAPI dependencies bring Starlette and nothing more; without cryptography or PyJWT the import says
what to install. Each check runs in a fresh interpreter, so what other tests imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Third-party packages of the server (and its command line) that the guard must not load.
SERVER_PACKAGES = ("sqlalchemy", "alembic", "argon2", "typer", "uvicorn", "pydantic_settings", "pydantic",
                   "redis", "aiosqlite", "asyncpg", "orjson", "starlette", "fastapi")
#: The bankgate modules a guard may load; anything else (store, config, runtime, services, the endpoints) is the
#: server. `bankgate.oauth.http` and `bankgate.web` are dependency-free ASGI helpers, `bankgate.clock` the
#: standard library's clocks, `bankgate.events` the event sinks the guard tells its verdicts.
GUARD_MODULES = ("bankgate", "bankgate.guard", "bankgate.certheaders", "bankgate.net", "bankgate.pki",
                 "bankgate.pki.thumbprints", "bankgate.oauth", "bankgate.oauth.http", "bankgate.web",
                 "bankgate.clock", "bankgate.events")


def _loaded_after(code: str) -> dict[str, list[str]]:
    """Top-level packages and bankgate modules in `sys.modules` after running `code` in a fresh interpreter."""
    script = code + (
        "\nimport json, sys\n"
        "print(json.dumps({'packages': sorted({m.split('.')[0] for m in sys.modules}),"
        " 'bankgate': sorted(m for m in sys.modules if m == 'bankgate' or m.startswith('bankgate.'))}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def _server_modules(loaded: dict[str, list[str]]) -> list[str]:
    heavy = [name for name in loaded["packages"] if name in SERVER_PACKAGES]
    foreign = [name for name in loaded["bankgate"]
               if not any(name == allowed or name.startswith(allowed + ".") for allowed in GUARD_MODULES[1:])
               and name != "bankgate"]
    return heavy + foreign


def test_importing_the_guard_loads_none_of_the_server() -> None:
    loaded = _loaded_after("import bankgate.guard")
    assert _server_modules(loaded) == []
    assert {"jwt", "cryptography", "httpx"} <= set(loaded["packages"])


def test_a_remote_guard_and_its_middleware_load_none_of_the_server() -> None:
    code = """
import asyncio
from bankgate.guard import Guard, GuardMiddleware, Principal, RemoteRevocations, TokenVerifier, principal_of

async def app(scope, receive, send):
    pass

guard = Guard.remote("https://auth.example.com", revocations=True, revocation_credentials=("bk_test_a", "sk_test_b"),
                     trusted_proxies=["10.0.0.0/8"], client_cert_header="nginx")
middleware = GuardMiddleware(app, guard=guard, exclude=["/healthz"])
sent = []

async def send(message):
    sent.append(message)

async def receive():
    return {"type": "http.request"}

asyncio.run(middleware({"type": "http", "path": "/", "headers": [], "client": ("10.1.2.3", 1)}, receive, send))
assert sent[0]["status"] == 401, sent
"""
    assert _server_modules(_loaded_after(code)) == []


def test_the_fastapi_dependencies_bring_starlette_and_nothing_else_of_the_server() -> None:
    loaded = _loaded_after("from bankgate.guard import require_scope, require_principal, GuardHTTPException")
    assert "starlette" in loaded["packages"]
    assert [name for name in _server_modules(loaded) if name != "starlette"] == []


@pytest.mark.parametrize("missing", ["cryptography", "jwt"])
def test_without_the_guard_extra_the_import_says_what_to_install(missing: str) -> None:
    code = f"""
import sys
sys.modules[{missing!r}] = None  # as if not installed
try:
    import bankgate.guard
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("bankgate.guard imported without {missing}")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "pip install 'bankgate[guard]'" in result.stdout
    assert missing in result.stdout


def test_the_fastapi_dependencies_say_what_to_install_without_starlette() -> None:
    code = """
import sys
sys.modules["starlette"] = None
import bankgate.guard
try:
    bankgate.guard.require_scope
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("require_scope loaded without Starlette")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "pip install fastapi" in result.stdout


#: Imports each module first in a fork of an interpreter that has imported no bankgate module (only the third-party
#: packages the server uses, which cannot take part in a cycle of bankgate's): one line per module, its name and
#: `ok` or the error.
_IMPORT_FIRST = """
import importlib, os, sys, traceback
for package in ("sqlalchemy.ext.asyncio", "alembic.command", "starlette.applications", "httpx", "jwt",
                "cryptography.x509", "argon2", "pydantic_settings", "jinja2", "uvicorn"):
    importlib.import_module(package)
assert not any(name.startswith("bankgate") for name in sys.modules)
for first in sys.argv[1:]:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        try:
            importlib.import_module(first)
            answer = "ok"
        except BaseException:
            answer = traceback.format_exc().replace(chr(10), " | ")
        os.write(writer, answer.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        print(first, pipe.read())
    os.waitpid(pid, 0)
"""


def test_the_server_imports_without_a_cycle_whatever_is_imported_first() -> None:
    firsts = ("bankgate.runtime", "bankgate.resource", "bankgate.oauth.endpoint", "bankgate.oauth.whoami",
              "bankgate.credentials.authenticate", "bankgate.tokens.revocation", "bankgate.app")
    result = subprocess.run([sys.executable, "-c", _IMPORT_FIRST, *firsts], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{first} ok" for first in firsts], result.stdout
