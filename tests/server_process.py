"""Real `bankgate serve` processes for the tests, forked from a process that has imported bankgate already.

`python -m bankgate serve` spends ~1.3 s of CPU importing bankgate, SQLAlchemy, Alembic, uvicorn and the rest
before it serves; the suite starts about a hundred servers. Here each test process keeps one
`multiprocessing` fork server that has imported all of that once (`PRELOAD`), and every server is a fork of it that
runs `bankgate.cli.main` with the server's own arguments, environment and log file. What a test checks lives in the
process the same way: its own pid, socket, signal handlers, event loop and exit status (SIGKILL included).
The installed entry point itself and everything that must see a new interpreter still start `python -m bankgate`;
the workers of `serve --workers N` start as new interpreters, as they always do.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: What the fork server imports once: the command and everything `serve` loads before it listens. Installed modules
#: only: the fork server does not get the tests' `sys.path` (each fork does), and skips a module it cannot import,
#: such as an optional speed-up of uvicorn's that is not installed.
PRELOAD = ["bankgate.cli", "bankgate.app", "bankgate.server", "bankgate.accesslog", "bankgate.sandbox.api",
           "bankgate.tokens.keystore", "aiosqlite", "cryptography.hazmat.backends.openssl", "encodings.idna",
           "rich._emoji_codes", "uvicorn.main", "uvicorn.config", "uvicorn.lifespan.on", "uvicorn.loops.auto",
           "uvloop", "uvicorn.loops.uvloop", "uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl",
           "uvicorn.protocols.websockets.auto", "uvicorn.protocols.websockets.websockets_sansio_impl"]

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(PRELOAD)
_LIVE: set[ServeProcess] = set()


def _serve(args: Sequence[str], env: dict[str, str], cwd: str, log_path: str) -> None:
    """The forked server: its output to `log_path`, the environment and working directory of the test process
    that asked for it, then `bankgate <args>`."""
    os.chdir(cwd)
    # stdin on descriptor 0, as a new interpreter has it (`serve --workers N` hands it to its workers)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["bankgate", *args]
    from bankgate.cli import main

    main()


class ServeProcess:
    """A forked `bankgate <args>` with the part of `subprocess.Popen`'s interface the tests use."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.args = list(args)
        # not a daemon: `serve --workers N` starts processes of its own
        arguments = (self.args, env, os.getcwd(), str(log_path))
        self._process = _CONTEXT.Process(target=_serve, args=arguments, name="bankgate")
        self._process.start()
        self.pid = self._process.pid
        _LIVE.add(self)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        code = self._process.exitcode
        if code is not None:
            _LIVE.discard(self)
        return code

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@atexit.register
def _kill_leftovers() -> None:
    """A server a test left running must not keep its test process from exiting (multiprocessing joins its
    children at exit): registered after multiprocessing's own exit handler, so it runs first."""
    for process in list(_LIVE):
        process.kill()
