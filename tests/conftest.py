"""Shared fixtures: real SQLite files, a real PostgreSQL database per session, real servers on real sockets."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import types
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.command import upgrade as _ALEMBIC_UPGRADE

from bankgate.clock import SYSTEM, Clock, ManualClock
from bankgate.config import Settings, listen_url, load_settings
from bankgate.runtime import Runtime
from bankgate.services import Services
from bankgate.store import Store
from server_process import ServeProcess

POSTGRES_URL = os.environ.get("BANKGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BANKGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# argon2id at OWASP's floor (what production accepts at least) instead of the 64 MiB default: the suite hashes
# hundreds of passwords. Set here, so real `bankgate serve` processes and in-process CLI calls inherit it.
os.environ.setdefault("BANKGATE_PASSWORD_HASH_MEMORY_KIB", "19456")
os.environ.setdefault("BANKGATE_PASSWORD_HASH_TIME_COST", "2")
os.environ.setdefault("BANKGATE_PASSWORD_HASH_PARALLELISM", "1")

# A test process starts hundreds of runtimes (in-process servers): none freezes the heap after a full collection
# of it, which costs ~0.15 s each in a test process (`bankgate serve` processes still do it).
Runtime.freeze_heap = False


class _SqliteSchemaReplay:
    """Migrates an empty SQLite database by replaying what bankgate's migrations built on the first one.

    The suite creates some 800 SQLite databases, and alembic takes ~50 ms of CPU to run every migration on each
    (SQLite's batch mode copies tables). The first empty SQLite database of a test process is migrated for real;
    the statements its schema is made of (`sqlite_master`, in creation order) and its revision are recorded and
    executed as they are on every later empty one: the same schema, byte for byte, the way the PostgreSQL
    databases are copies of one migrated template. Everything around it is bankgate's own: the lock, the pending
    revisions it reports, the rest of `init`. A database that is not empty is migrated by alembic as always, and so
    is every database of a test marked `real_migrations` (the tests of the migrations themselves).
    """

    def __init__(self) -> None:
        self.enabled = True
        self.schema: tuple[list[str], str] | None = None

    def upgrade(self, config: Any, revision: str) -> None:
        connection = config.attributes.get("connection")
        if not (self.enabled and revision == "head" and connection is not None
                and connection.dialect.name == "sqlite"):
            _ALEMBIC_UPGRADE(config, revision)
            return
        empty = not connection.exec_driver_sql("SELECT 1 FROM sqlite_master").first()
        if not empty or self.schema is None:
            _ALEMBIC_UPGRADE(config, revision)
            if empty:
                self.schema = self._record(connection)
            return
        statements, version = self.schema
        for statement in statements:
            connection.exec_driver_sql(statement)
        connection.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES (?)", (version,))

    @staticmethod
    def _record(connection: Any) -> tuple[list[str], str]:
        rows = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND substr(name, 1, 7) <> 'sqlite_' ORDER BY rowid"
        ).all()
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
        return [row[0] for row in rows], version


def _install_schema_replay() -> _SqliteSchemaReplay:
    from bankgate.store import migrate

    replay = _SqliteSchemaReplay()
    migrate.command = types.SimpleNamespace(upgrade=replay.upgrade)  # the one alembic command bankgate runs
    return replay


_SCHEMA_REPLAY = _install_schema_replay()


@pytest.fixture(autouse=True)
def _schema_replay(request: pytest.FixtureRequest) -> Iterator[None]:
    _SCHEMA_REPLAY.enabled = request.node.get_closest_marker("real_migrations") is None
    yield
    _SCHEMA_REPLAY.enabled = True


def _service_unavailable(what: str, why: str) -> None:
    message = f"{what} is not reachable ({why}); set BANKGATE_TEST_POSTGRES_URL/BANKGATE_TEST_REDIS_URL"
    if IN_CI:
        pytest.fail(f"in CI every service must be up: {message}")
    pytest.skip(message)


async def _pg_admin(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    try:
        asyncio.run(_pg_admin(POSTGRES_URL, "SELECT 1"))
    except Exception as exc:  # any failure to connect means: no server here
        _service_unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (a database of this test process's pool, emptied after
    its last test: see `PostgresDatabases`)."""
    name = postgres_databases.take_empty()
    try:
        yield postgres_databases.url(name)
    finally:
        postgres_databases.give_back_empty(name)


#: What a migrated database's schema is made of (tables, columns, constraints, indexes, sequences, functions,
#: triggers, views) and its alembic revision: a database whose fingerprint is the template's is the template's
#: schema, whatever a test did with its rows.
_SCHEMA_FINGERPRINT = """
SELECT md5(coalesce(string_agg(item, E'\\n' ORDER BY item), '')) FROM (
    SELECT format('column %s.%s %s %s %s', table_name, column_name, data_type, is_nullable, column_default) AS item
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT format('relation %s %s', relname, relkind) FROM pg_class
      WHERE relnamespace = 'public'::regnamespace
    UNION ALL SELECT format('function %s', oid::regprocedure) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    UNION ALL SELECT format('trigger %s', pg_get_triggerdef(oid)) FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT format('schema %s', nspname) FROM pg_namespace
      WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
    UNION ALL SELECT format('extension %s', extname) FROM pg_extension
    UNION ALL SELECT format('revision %s', version_num) FROM public.alembic_version
) AS items
"""


class PostgresDatabases:
    """The PostgreSQL databases of one test process, each reused by its next tests.

    Creating a database (from a template or not) and dropping it cost the server most of a second each, as it
    writes and syncs the new database's files: for hundreds of tests, minutes. Instead, once a test is done with
    its database, any connection still open to it is closed and the database is returned to its state when new:
    an empty one gets its `public` schema (and any other) dropped and created again; a migrated one has every row
    deleted and its sequences restarted, once its schema is found to be the template's still (else it is dropped
    and the next test gets a new copy). A database that cannot be reset (a test dropped it, say) is dropped and
    forgotten. The pool's databases are dropped at the end of the run.
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._base = server_url.rpartition("/")[0]
        self._empty: list[str] = []
        self._migrated: list[str] = []
        self._fingerprints: dict[str, str] = {}  # of the templates
        self._all: set[str] = set()

    def url(self, name: str) -> str:
        return f"{self._base}/{name}"

    def take_empty(self) -> str:
        if self._empty:
            return self._empty.pop()
        return self._create('CREATE DATABASE "{name}"')

    def take_migrated(self, template: str) -> str:
        if self._migrated:
            return self._migrated.pop()
        return self._create(f'CREATE DATABASE "{{name}}" TEMPLATE "{template}"')

    def give_back_empty(self, name: str) -> None:
        if self._reset(name, _empty_database, name):
            self._empty.append(name)

    def give_back_migrated(self, name: str, template: str) -> None:
        if template not in self._fingerprints:
            self._fingerprints[template] = asyncio.run(_on_database(self.url(template), _fingerprint))
        if self._reset(name, _delete_rows, self._fingerprints[template]):
            self._migrated.append(name)

    def close(self) -> None:
        for name in sorted(self._all):
            self._drop(name)

    def _create(self, statement: str) -> str:
        name = f"bankgate_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg_admin(self.server_url, statement.format(name=name)))
        self._all.add(name)
        return name

    def _reset(self, name: str, reset: Any, *args: Any) -> bool:
        """Close every other connection to `name`, then `reset(connection, *args)`: whether the database is as
        new (else it is dropped)."""
        try:
            asyncio.run(_on_database(self.server_url, _disconnect_others, name))
            if asyncio.run(_on_database(self.url(name), reset, *args)):
                return True
        except Exception:  # noqa: S110 - whatever keeps it from being reset, a new database replaces it
            pass
        self._drop(name)
        return False

    def _drop(self, name: str) -> None:
        self._all.discard(name)
        asyncio.run(_pg_admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _on_database(url: str, job: Any, *args: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await job(conn, *args)
    finally:
        await conn.close()


async def _disconnect_others(conn: Any, name: str) -> None:
    await conn.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                       "WHERE datname = $1 AND pid <> pg_backend_pid()", name)


async def _fingerprint(conn: Any) -> str:
    return str(await conn.fetchval(_SCHEMA_FINGERPRINT))


async def _empty_database(conn: Any, name: str) -> bool:
    schemas = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                               "AND nspname NOT IN ('information_schema', 'public')")
    async with conn.transaction():
        for row in schemas:
            await conn.execute(f'DROP SCHEMA "{row[0]}" CASCADE')
        await conn.execute("DROP SCHEMA public CASCADE")
        await conn.execute("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
        await conn.execute("COMMENT ON SCHEMA public IS 'standard public schema'")
        await conn.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
        await conn.execute(f'ALTER DATABASE "{name}" RESET ALL')
    return True


async def _delete_rows(conn: Any, fingerprint: str) -> bool:
    if await _fingerprint(conn) != fingerprint:
        return False
    tables = [row[0] for row in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
    sequences = [row[0] for row in await conn.fetch(
        "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'")]
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # no foreign-key order to follow
        for table in tables:
            await conn.execute(f'DELETE FROM public."{table}"')  # noqa: S608 - a name from the catalog
        for sequence in sequences:
            await conn.execute(f'ALTER SEQUENCE public."{sequence}" RESTART')
    return True


@pytest.fixture(scope="session")
def postgres_databases(postgres_server_url: str) -> Iterator[PostgresDatabases]:
    """This test process's reusable PostgreSQL databases (see `PostgresDatabases`)."""
    databases = PostgresDatabases(postgres_server_url)
    try:
        yield databases
    finally:
        databases.close()


async def _migrate(url: str) -> None:
    store = Store(Settings(database_url=url).sqlalchemy_url)
    try:
        await store.migrate()
    finally:
        await store.close()


@pytest.fixture(scope="session")
def postgres_template(postgres_server_url: str) -> Iterator[str]:
    """The name of a PostgreSQL database migrated to the head revision once per test process, which
    `migrated_postgres_url` copies: copying is cheaper than running every migration again for each test."""
    name = f"bankgate_test_template_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
    base, _, _ = postgres_server_url.rpartition("/")
    try:
        asyncio.run(_migrate(f"{base}/{name}"))
        yield name
    finally:
        asyncio.run(_pg_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def migrated_postgres_url(postgres_databases: PostgresDatabases, postgres_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, already migrated to the head revision (and nothing more: no
    master key, no signing key): a copy of `postgres_template`, reused by the next test once emptied (see
    `PostgresDatabases`)."""
    name = postgres_databases.take_migrated(postgres_template)
    try:
        yield postgres_databases.url(name)
    finally:
        postgres_databases.give_back_migrated(name, postgres_template)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test against both databases: a SQLite file, then a fresh PostgreSQL database. A test that takes the
    `services` fixture gets its PostgreSQL database already migrated (that fixture migrates to the head revision
    before the test sees the database, so the test starts from the same state); any other test gets an empty one,
    as it may migrate (or not) itself."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if "services" in request.fixturenames:
        return request.getfixturevalue("migrated_postgres_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        client.ping()
        client.close()
    except Exception as exc:  # any failure to connect means: no server here
        _service_unavailable("Redis", f"{type(exc).__name__}: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """The test Redis, with every key this test wrote under its unique prefix deleted afterwards.

    Tests put their keys under `redis_prefix` (read it with `request.getfixturevalue` or as a fixture).
    """
    yield redis_server_url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"bankgate-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CLI_LOCK = threading.Lock()


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `bankgate` command in this process (its `main`, so its error handling too) and return what it printed.

    As a subprocess it costs ~3 s of imports per call; in process a few milliseconds. The contract stays the one of
    `subprocess.run`: `.stdout`, `.stderr`, `.returncode` (an uncaught exception prints its traceback and exits 1).
    The command calls `asyncio.run`, so from inside a running event loop (an async test) it runs in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        result = _run_cli_here(args, env)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
            result = worker.submit(_run_cli_here, args, env).result(timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"bankgate {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@functools.cache
def _cli_command() -> Any:
    """The `bankgate` command as click builds it from the Typer app: what `main` runs, built once per test process
    (building it walks every command's signature: ~20 ms, paid by each call otherwise)."""
    import typer.main

    from bankgate.cli import app

    return typer.main.get_command(app)


def _run_cli_here(args: tuple[str, ...], env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    from click.testing import CliRunner

    from bankgate.cli import main

    # `main` hands `token` to the client SDK's command and runs the rest as the Typer app, which is this command
    run = main if args[:1] == ("token",) else _cli_command()
    argv = ["bankgate", *args]
    # One command at a time: the isolation swaps process-wide sys.stdout/sys.stderr/os.environ/sys.argv.
    with _CLI_LOCK, CliRunner().isolation(env=env) as (stdout, stderr, _):
        saved_argv, sys.argv = sys.argv, argv
        try:
            run()
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except Exception:
            traceback.print_exc(file=sys.stderr)
            code = 1
        finally:
            sys.argv = saved_argv
            sys.stdout.flush()
            sys.stderr.flush()
        out, err = stdout.getvalue().decode(errors="replace"), stderr.getvalue().decode(errors="replace")
    return subprocess.CompletedProcess(argv, code, out, err)


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(run_cli(*args, "--json", env=env).stdout)


def basic(api_key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{api_key}:{secret}".encode()).decode()


class Server:
    """A bankgate server for tests: in process (`InProcessServer`, the default) or a real `bankgate serve` process
    on a free loopback port (`ProcessServer`). Both name the same URLs and take the same helpers."""

    base_url: str
    data_dir: Path
    env: dict[str, str]

    @property
    def http(self) -> httpx.Client:
        raise NotImplementedError

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--data-dir", str(self.data_dir), env=self.env, check=check)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def create_client(self, *scopes: str, auth_mode: str = "oauth2", name: str = "test client") -> dict[str, Any]:
        args = ["clients", "create", "--name", name, "--auth-mode", auth_mode]
        for scope in scopes or ("app_1",):
            args += ["--scope", scope]
        return self.cli_json(*args)

    def token(self, client: dict[str, Any], **params: str) -> httpx.Response:
        data = {"grant_type": "client_credentials", **params}
        return self.http.post(
            "/oauth/token", data=data, headers={"Authorization": basic(client["api_key"], client["secret_key"])}
        )

    def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        """The audit trail, once the server's batch writer has written what it holds."""
        self.flush_audit()
        return self.cli_json("audit", "tail", "--limit", str(limit))

    def flush_audit(self) -> None:
        raise NotImplementedError

    def log(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class ProcessServer(Server):
    """A real `bankgate serve` process on a free loopback port: for what lives in the socket or the process."""

    def __init__(
        self, base_url: str, data_dir: Path, env: dict[str, str], process: ServeProcess, log_path: Path
    ) -> None:
        self.base_url = base_url
        self.data_dir = data_dir
        self.env = env
        self.process = process
        self.log_path = log_path
        self._http = httpx.Client(base_url=self.base_url, timeout=10, verify=False)  # noqa: S501 - plain-HTTP helper

    @property
    def http(self) -> httpx.Client:
        return self._http

    def flush_audit(self) -> None:
        time.sleep(0.3)  # the batch writer flushes every 0.05 s in tests

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self._http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class InProcessServer(Server):
    """The app `bankgate serve` runs (`create_app`, after the same init and issuer choice), in this process behind
    Starlette's `TestClient`: its lifespan and background jobs run in a portal thread, requests come from
    127.0.0.1, and `base_url` names a free port nothing listens on (the issuer a real server there would use)."""

    def __init__(self, data_dir: Path, env: dict[str, str], clock: Clock = SYSTEM) -> None:
        from starlette.testclient import TestClient

        from bankgate.app import create_app

        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.env = env
        with _CLI_LOCK, _environment(env):
            settings = load_settings(host="127.0.0.1", port=port)
        issuer = _outside_loop(_prepare, settings)
        settings = settings.model_copy(update={"issuer": issuer})
        self.clock = clock
        self.app = create_app(settings, issuer=settings.issuer_for(settings.host, settings.port), clock=clock)
        self._log = _LogCapture()
        logging.getLogger().addHandler(self._log)
        self._client = TestClient(self.app, base_url=self.base_url, raise_server_exceptions=False,
                                  follow_redirects=False, client=("127.0.0.1", free_port()))
        try:
            self._client.__enter__()
        except BaseException:
            logging.getLogger().removeHandler(self._log)
            raise

    @property
    def http(self) -> httpx.Client:
        return self._client

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def flush_audit(self) -> None:
        self._client.portal.call(self.runtime.services.audit.flush)

    def log(self) -> str:
        return self._log.text()

    def stop(self) -> None:
        # The lifespan's shutdown in a daemon thread, waited for a while: a shutdown stuck on a database the test
        # already dropped must not hang the whole run (a real process would simply be killed).
        closing = threading.Thread(target=self._client.__exit__, args=(None, None, None), daemon=True)
        try:
            if getattr(self._client, "portal", None) is not None:
                closing.start()
                closing.join(30)
                if closing.is_alive():
                    warnings.warn(f"the in-process server at {self.base_url} did not stop within 30 s", stacklevel=2)
        finally:
            logging.getLogger().removeHandler(self._log)


class _LogCapture(logging.Handler):
    """What a server process prints of its logs (no handler but Python's last resort): warnings and worse,
    message and traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._lines: list[str] = []
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))

    def text(self) -> str:
        return "".join(line + "\n" for line in self._lines)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def _prepare(settings: Settings) -> str:
    """What `bankgate serve` does before it listens: initialise, then choose (and store) the issuer URL."""
    services = await Services.open(settings, initialise=True)
    try:
        await services.init()
        return (await services.resolve_issuer(listen_url(settings.host, settings.port))).url
    finally:
        await services.close()


def _outside_loop(job: Any, *args: Any) -> Any:
    """`asyncio.run(job(*args))`, in a worker thread when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(job(*args))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(asyncio.run, job(*args)).result(timeout=120)


def _server_env(data_dir: Path, env: dict[str, str] | None) -> dict[str, str]:
    return {
        **os.environ,
        "BANKGATE_DATA_DIR": str(data_dir),
        "BANKGATE_CLIENT_CACHE_TTL": "0",
        "BANKGATE_AUDIT_FLUSH_INTERVAL": "0.05",
        "BANKGATE_KEY_REFRESH_INTERVAL": "0.5",
        **(env or {}),
    }


#: How long a `bankgate serve` process may take to answer /healthz: a deadline, met in about a second on a quiet
#: machine, generous for a loaded one (several servers starting at once on two cores).
START_TIMEOUT = 60


def start_server(
    data_dir: Path, log_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> ProcessServer:
    """Start `bankgate serve` (plus `args`, e.g. `--tls`) and wait until `/healthz` answers: a real process, forked
    from one that has imported bankgate already (`server_process`)."""
    port = free_port()
    while str(port) in args:  # a port the caller took for another listener (--admin-port) may come up again
        port = free_port()
    scheme = "https" if "--tls" in args else "http"
    full_env = _server_env(data_dir, env)
    process = ServeProcess(["serve", "--host", "127.0.0.1", "--port", str(port), *args], full_env, log_path)
    server = ProcessServer(f"{scheme}://127.0.0.1:{port}", data_dir, full_env, process, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"bankgate serve exited with {process.returncode}:\n{server.log()}")
        try:
            # Readiness only: tests that speak TLS build their own clients trusting the bankgate CA.
            if httpx.get(f"{server.base_url}/healthz", timeout=1, verify=False).status_code == 200:  # noqa: S501
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.stop()
    raise AssertionError(f"bankgate serve did not start within {START_TIMEOUT} s:\n{server.log()}")


def _wants_process(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("real_server") is not None


@pytest.fixture
def server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Start servers with chosen settings (environment variables); all are stopped after the test.

    In process unless `process=True`, `args` (flags of `bankgate serve`) are given, or the test is marked
    `real_server`: then a real `bankgate serve` on a free port. An in-process server reads `clock` (e.g. the
    `clock` fixture's `ManualClock`, which a test advances instead of sleeping).
    """
    started: list[Server] = []

    def make(
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        args: tuple[str, ...] = (),
        *,
        process: bool = False,
        clock: Clock | None = None,
    ) -> Server:
        directory = data_dir or tmp_path / f"data-{len(started)}"
        server: Server
        if process or args or _wants_process(request):
            assert clock is None, "a real server process reads the machine's clock"
            server = start_server(directory, tmp_path / f"server-{len(started)}.log", env, args)
        else:
            server = InProcessServer(directory, _server_env(directory, env), clock or SYSTEM)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: Any) -> Server:
    """A sandbox server on SQLite with default settings (client cache off, fast audit flushes)."""
    return server_factory()


@pytest.fixture
def real_server(server_factory: Any) -> Server:
    """`server`, as a real `bankgate serve` process on a free loopback port."""
    return server_factory(process=True)


@pytest.fixture(scope="module")
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One sandbox server with default settings for a whole test module whose tests only add their own clients."""
    directory = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    server: Server
    if request.node.get_closest_marker("real_server") is not None:
        server = start_server(directory / "data", directory / "server.log")
    else:
        server = InProcessServer(directory / "data", _server_env(directory / "data", None))
    yield server
    server.stop()


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says so (`clock.advance(seconds)`), for in-process servers and
    services: a token's, a cache entry's or a block's whole life without sleeping."""
    return ManualClock()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for an in-process bankgate on the test's database (SQLite, then PostgreSQL)."""
    return load_settings(data_dir=tmp_path, database_url=database_url)


@pytest.fixture
async def services(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Services]:
    """An initialised bankgate (schema, signing key, CA), in process: on the machine's clock, or on the test's
    `clock` (a `ManualClock`) when the test asks for that fixture too."""
    clock = request.getfixturevalue("clock") if "clock" in request.fixturenames else SYSTEM
    opened = await Services.open(settings, initialise=True, clock=clock)
    await opened.init()
    try:
        yield opened
    finally:
        await opened.close()


async def dump_database(store: Store) -> list[tuple[str, str, Any]]:
    """Every value of every column of every table, as (table, column, value): for "nothing secret in clear"."""

    def read(connection: sa.Connection) -> list[tuple[str, str, Any]]:
        found: list[tuple[str, str, Any]] = []
        for name in sa.inspect(connection).get_table_names():
            table = sa.Table(name, sa.MetaData(), autoload_with=connection)
            for row in connection.execute(sa.select(table)).mappings():
                found.extend((name, column, value) for column, value in row.items())
        return found

    async with store.connect() as conn:
        return await conn.run_sync(read)


# -- the certificate style over TLS ----------------------------------------------------------------------------

AUTHORIZE = "/api/v1/authorizations/authorize"
PASSWORD = "Blue-Harbour-7-Lantern"


def user_basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


class Tls:
    """What a test needs to talk to the TLS server: the CA to trust and certificates to present."""

    def __init__(self, server: Server, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.ca = workdir / "ca.pem"
        server.cli("ca-cert", "--out", str(self.ca))

    def client(self, cert: tuple[str, str] | None = None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            context.load_cert_chain(*cert)
        return httpx.Client(base_url=self.server.base_url, verify=context, timeout=10)

    def new_user(
        self, name: str, *, reset: bool = True, certificate: bool = True, scopes: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """A user (with `scopes`: the applications its tokens carry), its certificate, its password set."""
        scope_args = [arg for scope in scopes for arg in ("--scope", scope)]
        user = self.server.cli_json("users", "create", "--name", name, *scope_args)
        if certificate:
            out = self.workdir / user["username"]
            issued = self.server.cli_json("certs", "issue", user["username"], "--out", str(out))
            user["certificate"] = issued
            user["cert"] = (str(out / f"{issued['serial']}.crt.pem"), str(out / f"{issued['serial']}.key.pem"))
        if reset:
            with self.client() as http:
                answer = http.post(f"/api/v1/users/{user['username']}/password",
                                   json={"passphrase": user["initial_passphrase"], "new_password": PASSWORD})
            assert answer.status_code == 200, answer.text
        return user

    def authorize(self, user: dict[str, Any], password: str = PASSWORD, cert: Any = "own") -> httpx.Response:
        with self.client(user["cert"] if cert == "own" else cert) as http:
            return http.get(AUTHORIZE, headers=user_basic(user["username"], password))


# -- a real browser -------------------------------------------------------------------------------------------

CHROMIUM = os.environ.get("BANKGATE_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium (`apt-get install -y chromium`) driven by Playwright, one per test module. Skipped with a
    reason when either is missing, except under CI=true, where that fails."""
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "playwright is not installed (pip install -e '.[test]')"
    if why is None and not os.access(CHROMIUM, os.X_OK):
        why = f"no chromium at {CHROMIUM} (apt-get install -y chromium, or set BANKGATE_TEST_CHROMIUM)"
    if why is not None:
        if IN_CI:
            pytest.fail(f"in CI the browser tests must run: {why}")
        pytest.skip(why)
    with sync_playwright() as playwright:
        # As root (a container) chromium runs only without its sandbox.
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def tls(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    """A `bankgate serve --tls` for a whole test module, with its CA at hand."""
    directory = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2] + "-tls")
    server = start_server(directory / "data", directory / "server.log", args=("--tls",))
    try:
        yield Tls(server, directory)
    finally:
        server.stop()
