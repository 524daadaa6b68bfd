"""The `bankgate` command: set up, serve, onboard clients, rotate keys, read the audit trail."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import shlex
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

try:
    import typer
except ModuleNotFoundError:  # a client-only install: `bankgate token` needs no server extra, the rest does
    from bankgate.client._cli import without_server_extra

    without_server_extra(sys.argv)
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from bankgate.audit import AuditEvent, Outcome
from bankgate.config import Settings, listen_url, load_settings
from bankgate.credentials.allowlist import AllowEntry, SubjectKind, describe_default, parse_cidr
from bankgate.credentials.clients import ClientNotFoundError, IssuedSecret
from bankgate.credentials.scopes import ScopeError
from bankgate.credentials.users import NewUser, PassphraseError, UserRecord, WeakPasswordError
from bankgate.files import private_dir, write_private
from bankgate.pki import CertificateNotFoundError, CertificateRecord, IssuedCertificate
from bankgate.services import InitReport, IssuerChoice, Services
from bankgate.store import SchemaMissingError
from bankgate.vault import MasterKeyError

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="bankgate",
    help="API authentication for payment and banking APIs: token server, API keys, signing keys, audit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
clients_app = typer.Typer(help="API key pairs (client credentials): create, list, show, revoke, rotate.",
                          no_args_is_help=True)
keys_app = typer.Typer(help="Token signing keys: rotate, list.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

console = Console()
errors = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory [env: BANKGATE_DATA_DIR, default: ./.bankgate]",
                 show_default=False),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="Database URL [env: BANKGATE_DATABASE_URL, default: SQLite in the "
                 "data directory]", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

# Quickstart's sandbox client: two business applications, as in the seed's example.
QUICKSTART_CLIENT = "quickstart sandbox client"
QUICKSTART_SCOPES = ("app_12345", "app_67890")


class CliError(Exception):
    pass


def _settings(data_dir: Path | None, database_url: str | None = None, **more: Any) -> Settings:
    try:
        return load_settings(data_dir=data_dir, database_url=database_url, **more)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid settings: {problems}") from None


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _run(settings: Settings, job: Callable[[Services], Awaitable[T]], *, initialise: bool = False) -> T:
    async def main() -> T:
        services = await Services.open(settings, initialise=initialise)
        try:
            return await job(services)
        finally:
            await services.close()

    return asyncio.run(main())


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def parse_duration(text: str) -> float:
    """`0`, `90`, `90s`, `30m`, `24h`, `7d` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 0, 90s, 30m, 24h or 7d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _ts(value: float | None) -> str:
    """A UTC time for tables, short and with a space so a narrow column wraps it instead of cutting it."""
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- set-up and serving ------------------------------------------------------------------------------------


@app.command()
def init(
    issuer: Annotated[str | None, typer.Option(help="Public URL used as `iss` by every server on this database "
                                               "started without --issuer; stored in the database "
                                               "[env: BANKGATE_ISSUER]", show_default=False)] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create the master key, the database schema and the first signing key. Safe to run twice."""
    settings = _settings(data_dir, database_url, issuer=issuer)

    async def job(services: Services) -> tuple[InitReport, str | None]:
        report = await services.init()
        previous = await services.stored_issuer()
        if settings.issuer and settings.issuer.rstrip("/") != previous:
            await services.set_issuer(settings.issuer)
            await services.audit.write(AuditEvent("issuer.set", _actor(), "success", None,
                                                  {"issuer": settings.issuer.rstrip("/"), "previous": previous}))
        return report, await services.stored_issuer()

    report, stored_issuer = _run(settings, job, initialise=True)
    if as_json:
        _emit_json(
            {
                "data_dir": report.data_dir,
                "database": report.database,
                "environment": report.environment,
                "issuer": stored_issuer,
                "signing_key": report.signing_key.as_json(),
                "created_signing_key": report.created_key,
            }
        )
        return
    console.print(f"[green]ready[/green] {report.environment} environment, database {report.database}")
    verb = "created" if report.created_key else "kept"
    console.print(f"signing key {verb}: {report.signing_key.alg} kid={report.signing_key.kid}")
    if stored_issuer:
        console.print(f"issuer {stored_issuer} (servers started without --issuer use it)", highlight=False)
    else:
        console.print("issuer: the first server to start stores its own address; set one with --issuer URL",
                      highlight=False)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [env: BANKGATE_HOST, default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env: BANKGATE_PORT, default 8000]")] = None,
    issuer: Annotated[str | None, typer.Option(help="Public URL used as `iss` by this server [env: BANKGATE_ISSUER, "
                                               "default: the one stored in the database, else http(s)://host:port, "
                                               "then stored for the others]", show_default=False)] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes sharing the database.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request (off: the audit trail records "
                                                  "authentication).")] = False,
    tls: Annotated[bool, typer.Option("--tls", help="Serve HTTPS with a certificate from the environment's CA and "
                                      "ask clients for their certificate (mutual TLS).")] = False,
    hostname: Annotated[list[str] | None, typer.Option("--hostname", help="A DNS name or IP address the server "
                                                       "certificate must name, besides localhost (repeat).",
                                                       show_default=False)] = None,
    http: Annotated[str, typer.Option("--http", help="HTTP/1.1 implementation: httptools or h11.")] = "httptools",
    trusted_proxy: Annotated[list[str] | None, typer.Option("--trusted-proxy", help="CIDR of a proxy whose "
                                                            "X-Forwarded-For and client certificate header count "
                                                            "(repeat) [env: BANKGATE_TRUSTED_PROXIES]",
                                                            show_default=False)] = None,
    client_cert_header: Annotated[str | None, typer.Option("--client-cert-header", help="How trusted proxies "
                                                           "forward the client certificate: nginx, envoy, traefik, "
                                                           "alb or caddy [env: BANKGATE_CLIENT_CERT_HEADER]",
                                                           show_default=False)] = None,
    client_cert_header_name: Annotated[str | None, typer.Option("--client-cert-header-name", help="The header's "
                                                                "name when not the usual one (nginx, caddy).",
                                                                show_default=False)] = None,
    max_header_bytes: Annotated[int | None, typer.Option("--max-header-bytes", help="Largest request line plus "
                                                         "headers; larger gets 431 [env: BANKGATE_MAX_HEADER_BYTES, "
                                                         "default 16384]", show_default=False)] = None,
    max_headers: Annotated[int | None, typer.Option("--max-headers", help="Most header fields in a request; more "
                                                    "gets 431 [env: BANKGATE_MAX_HEADERS, default 100]",
                                                    show_default=False)] = None,
    header_timeout: Annotated[float | None, typer.Option("--header-timeout", help="Seconds a request's headers "
                                                         "may take; then 408 [env: BANKGATE_HEADER_TIMEOUT, "
                                                         "default 10]", show_default=False)] = None,
    body_timeout: Annotated[float | None, typer.Option("--body-timeout", help="Seconds without a byte of a "
                                                       "request body being read; then 408 [env: "
                                                       "BANKGATE_BODY_TIMEOUT, default 10]",
                                                       show_default=False)] = None,
    keep_alive_timeout: Annotated[float | None, typer.Option("--keep-alive-timeout", help="Seconds an idle "
                                                             "connection stays open [env: "
                                                             "BANKGATE_KEEP_ALIVE_TIMEOUT, default 5]",
                                                             show_default=False)] = None,
    shutdown_timeout: Annotated[float | None, typer.Option("--shutdown-timeout", help="Seconds running requests "
                                                           "may take to finish on SIGTERM before they are "
                                                           "cancelled [env: BANKGATE_SHUTDOWN_TIMEOUT, default 10]",
                                                           show_default=False)] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the HTTP server (uvicorn). Initialises the data directory first if needed."""
    from bankgate.server import HTTP_IMPLEMENTATIONS
    from bankgate.server import serve as run_server

    if http not in HTTP_IMPLEMENTATIONS:
        raise CliError(f"--http {http} is not one of: {', '.join(HTTP_IMPLEMENTATIONS)}")
    settings = _settings(data_dir, database_url, host=host, port=port, issuer=issuer,
                         trusted_proxies=trusted_proxy or None, client_cert_header=client_cert_header,
                         client_cert_header_name=client_cert_header_name, max_header_bytes=max_header_bytes,
                         max_headers=max_headers, header_timeout=header_timeout, body_timeout=body_timeout,
                         keep_alive_timeout=keep_alive_timeout, shutdown_timeout=shutdown_timeout)

    async def prepare(services: Services) -> tuple[InitReport, IssuerChoice]:
        report = await services.init()
        return report, await services.resolve_issuer(listen_url(settings.host, settings.port, tls=tls))

    report, chosen = _run(settings, prepare, initialise=True)
    errors.print(f"bankgate {report.environment}: {chosen.describe()}; signing key {report.signing_key.alg} "
                 f"{report.signing_key.kid}", highlight=False, markup=False, soft_wrap=True)
    settings = settings.model_copy(update={"issuer": chosen.url})
    run_server(settings, workers=workers, access_log=access_log, tls=tls, hostnames=hostname or [], http=http)


@app.command()
def quickstart(
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set up a sandbox with a ready client, print its key, secret and a curl line, and serve."""
    from bankgate.server import serve as run_server

    settings = _settings(data_dir, database_url, host=host, port=port)
    if settings.environment != "sandbox":
        raise CliError("quickstart makes a demo client and is for the sandbox only; use init/serve in production")

    async def prepare(services: Services) -> IssuedSecret:
        await services.init()
        for record in await services.clients.list():
            if record.name == QUICKSTART_CLIENT and record.active:
                # Secrets are stored hashed, so a restart cannot show the old one: issue a fresh one.
                issued = await services.clients.rotate_secret(record.api_key, overlap=0)
                await _audit(services, "client.secret_rotated", issued.client.api_key, {"overlap_seconds": 0})
                return issued
        issued = await services.clients.create(QUICKSTART_CLIENT, list(QUICKSTART_SCOPES), "oauth2")
        await _audit(services, "client.created", issued.client.api_key, {"scopes": list(QUICKSTART_SCOPES)})
        return issued

    issued = _run(settings, prepare, initialise=True)
    # A one-process demo on any port: its own address is its issuer (or BANKGATE_ISSUER), never the stored one,
    # which stays for the `serve` processes of this database.
    base = settings.issuer_for(settings.host, settings.port)
    settings = settings.model_copy(update={"issuer": base})
    credentials = f"{issued.client.api_key}:{issued.secret_key}"
    curl = (
        f"curl -s -X POST {base}/oauth/token -u {shlex.quote(credentials)} "
        f"-d grant_type=client_credentials -d scope={QUICKSTART_SCOPES[0]}"
    )
    console.print("\n[bold]bankgate sandbox is starting[/bold]")
    console.print(f"  API key     {issued.client.api_key}")
    console.print(f"  Secret key  {issued.secret_key}")
    console.print(f"  Scopes      {' '.join(issued.client.scopes)}")
    console.print("\nGet a token (in another terminal):")
    console.print(curl, soft_wrap=True, highlight=False, markup=False)
    console.print(f"Then: curl -s {base}/api/v1/whoami -H 'Authorization: Bearer <access_token>'",
                  soft_wrap=True, highlight=False, markup=False)
    payment = json.dumps({"application_id": QUICKSTART_SCOPES[0], "amount": "12.50", "currency": "EUR",
                          "reference": "Invoice 1"})
    console.print("\nPay in the sandbox (send it twice: the second answer is replayed, not paid again):")
    console.print(f"curl -si -X POST {base}/api/v1/payments -H 'Authorization: Bearer <access_token>' "
                  f"-H 'Idempotency-Key: {uuid.uuid4()}' -H 'Content-Type: application/json' "
                  f"-d {shlex.quote(payment)}", soft_wrap=True, highlight=False, markup=False)
    console.print(f"\nJWKS: {base}/.well-known/jwks.json   metadata: {base}/.well-known/oauth-authorization-server\n")
    run_server(settings)


# -- clients -----------------------------------------------------------------------------------------------


def _propagation(settings: Settings) -> str:
    """How soon running servers apply a change made here: one poll of the change feed, plus the query."""
    return f"{settings.revocation_sync_interval + 0.5:g} s"


async def _audit(services: Services, event: str, subject: str, detail: dict[str, Any]) -> None:
    await services.audit.write(AuditEvent(event, _actor(), "success", None, {"api_key": subject, **detail}))


@clients_app.command("create")
def clients_create(
    name: Annotated[str, typer.Option("--name", help="Who the client is, e.g. 'Acme web shop'.")],
    scope: Annotated[list[str], typer.Option("--scope", help="An allowed business application ID (repeat).")],
    auth_mode: Annotated[str, typer.Option("--auth-mode", help="oauth2 (tokens) or basic (key:secret on every "
                                                              "call).")] = "oauth2",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create an API key pair. The secret is shown this once and stored only as a keyed hash."""

    async def job(services: Services) -> IssuedSecret:
        issued = await services.clients.create(name, scope, auth_mode)
        await _audit(services, "client.created", issued.client.api_key,
                     {"client_id": issued.client.id, "scopes": list(issued.client.scopes), "auth_mode": auth_mode})
        return issued

    issued = _run(_settings(data_dir, database_url), job)
    if as_json:
        _emit_json(issued.as_json())
        return
    console.print(f"[green]created[/green] client {issued.client.name!r} ({issued.client.environment})")
    console.print(f"  client id   {issued.client.id}")
    console.print(f"  API key     {issued.client.api_key}")
    console.print(f"  Secret key  {issued.secret_key}   [yellow](shown once: store it now)[/yellow]")
    console.print(f"  scopes      {' '.join(issued.client.scopes)}   auth mode {issued.client.auth_mode}")


@clients_app.command("list")
def clients_list(data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """List clients (never their secrets)."""
    records = _run(_settings(data_dir, database_url), lambda s: s.clients.list())
    if as_json:
        _emit_json([r.as_json() for r in records])
        return
    # Keys are printed whole (never cut with an ellipsis); the other columns give way on a narrow terminal.
    table = Table()
    table.add_column("API key", no_wrap=True)
    for header in ("name", "scopes", "mode", "env", "status", "created"):
        table.add_column(header)
    for r in records:
        table.add_row(r.api_key, r.name, " ".join(r.scopes), r.auth_mode, r.environment, r.status,
                      _ts(r.created_at))
    console.print(table)


@clients_app.command("show")
def clients_show(
    api_key: str, data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: AsJson = False
) -> None:
    """Show one client."""
    record = _run(_settings(data_dir, database_url), lambda s: s.clients.get(api_key))
    if as_json:
        _emit_json(record.as_json())
        return
    for key, value in record.as_json().items():
        console.print(f"{key:>12}  {value}", highlight=False, markup=False)


@clients_app.command("revoke")
def clients_revoke(
    api_key: str, data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: AsJson = False
) -> None:
    """Revoke a client: its key pair and every token it holds stop working on every running server within 1 s."""
    settings = _settings(data_dir, database_url)

    async def job(services: Services) -> Any:
        record = await services.clients.revoke(api_key)
        await _audit(services, "client.revoked", api_key, {"client_id": record.id})
        return record

    record = _run(settings, job)
    if as_json:
        _emit_json(record.as_json())
        return
    console.print(f"[green]revoked[/green] {api_key}; running servers refuse it and its tokens within "
                  f"{_propagation(settings)}")


@clients_app.command("rotate-secret")
def clients_rotate_secret(
    api_key: str,
    overlap: Annotated[str, typer.Option(help="How long the current secret keeps working: 0, 30m, 24h, 7d.")] = "24h",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Issue a new secret; the current one keeps working for the overlap window."""
    seconds = parse_duration(overlap)

    async def job(services: Services) -> IssuedSecret:
        issued = await services.clients.rotate_secret(api_key, seconds)
        await _audit(services, "client.secret_rotated", api_key, {"overlap_seconds": seconds})
        return issued

    issued = _run(_settings(data_dir, database_url), job)
    if as_json:
        _emit_json({**issued.as_json(), "previous_secret_valid_for_seconds": seconds})
        return
    console.print(f"[green]new secret[/green] for {api_key}: {issued.secret_key}   [yellow](shown once)[/yellow]")
    console.print(f"the previous secret keeps working for {overlap}")


# -- signing keys ------------------------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate(
    alg: Annotated[str | None, typer.Option(help="RS256, ES256 or EdDSA [default: BANKGATE_SIGNING_ALG]")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Make a new signing key active; earlier keys stay in the JWKS until their tokens have expired."""
    settings = _settings(data_dir, database_url, signing_alg=alg)

    async def job(services: Services) -> Any:
        key = await services.keys.rotate(settings.signing_alg, retire_publish_for=services.key_publish_seconds)
        await services.audit.write(
            AuditEvent("key.rotated", _actor(), "success", None, {"kid": key.kid, "alg": key.alg})
        )
        return key

    key = _run(settings, job)
    if as_json:
        _emit_json(key.as_json())
        return
    console.print(f"[green]active[/green] {key.alg} key {key.kid}; running servers switch within "
                  f"{settings.key_refresh_interval:g} s")


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """Signing keys still published in the JWKS, newest first."""
    keys = _run(_settings(data_dir, database_url), lambda s: s.keys.load())
    if as_json:
        _emit_json([k.as_json() for k in keys])
        return
    table = Table()
    table.add_column("kid", no_wrap=True)
    for header in ("alg", "status", "created", "published until"):
        table.add_column(header)
    for key in keys:
        row = key.as_json()
        table.add_row(key.kid, key.alg, row["status"], _ts(key.created_at), _ts(key.publish_until))
    console.print(table)


# -- audit -------------------------------------------------------------------------------------------------


@audit_app.command("tail")
def audit_tail(
    limit: Annotated[int, typer.Option(min=1, max=10000, help="How many events.")] = 20,
    event: Annotated[str | None, typer.Option(help="Only this event, e.g. token.issued.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """The latest audit events, oldest first."""
    events = _run(_settings(data_dir, database_url), lambda s: s.audit.tail(limit, event=event))
    if as_json:
        _emit_json([e.as_json() for e in events])
        return
    table = Table("at", "event", "actor", "source IP", "outcome", "detail")
    for e in events:
        row = e.as_json()
        table.add_row(row["at"], e.event, e.actor, e.source_ip or "-", e.outcome,
                      json.dumps(row["detail"], separators=(",", ":")))
    console.print(table)


# -- M2M users and IP allow lists --------------------------------------------------------------------------

users_app = typer.Typer(help="Certificate-bound M2M users: create, list, show, reset the initial passphrase, "
                        "revoke.",
                        no_args_is_help=True)
ips_app = typer.Typer(help="IP allow lists of users and API keys, per environment.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(ips_app, name="ips")


async def _audit_user(services: Services, event: str, username: str, detail: dict[str, Any],
                      outcome: Outcome = "success") -> None:
    await services.audit.write(AuditEvent(event, _actor(), outcome, None, {"username": username, **detail}))


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Option("--name", help="Who the user is, e.g. 'API Testuser'.")],
    username: Annotated[str | None, typer.Option("--username", help="Login name [default: made from the "
                                                                    "name]", show_default=False)] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="An application ID the user may act for "
                                                    "(its tokens carry it as scope); repeat for more.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create an M2M user with an initial passphrase, shown this once; the user exchanges it for a password."""

    async def job(services: Services) -> NewUser:
        new = await services.users.create(name, username, scope or ())
        await _audit_user(services, "user.created", new.user.username,
                          {"user_id": new.user.id, "environment": new.user.environment})
        return new

    new = _run(_settings(data_dir, database_url), job)
    if as_json:
        _emit_json(new.as_json())
        return
    console.print(f"[green]created[/green] user {new.user.username!r} ({new.user.name}, {new.user.environment})",
                  highlight=False)
    console.print(f"  user id             {new.user.id}")
    console.print(f"  initial passphrase  {new.initial_passphrase}   [yellow](shown once: hand it over "
                  "securely)[/yellow]")
    console.print(f"  expires             {_ts(new.user.passphrase_expires_at)}")
    console.print(f"the user sets a password with it: bankgate users reset-password {new.user.username}",
                  highlight=False, markup=False)


@users_app.command("list")
def users_list(data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """List M2M users (never a password or passphrase)."""
    records = _run(_settings(data_dir, database_url), lambda s: s.users.list())
    if as_json:
        _emit_json([r.as_json() for r in records])
        return
    table = Table()
    table.add_column("username", no_wrap=True)
    for header in ("name", "env", "status", "password", "created"):
        table.add_column(header)
    for r in records:
        if r.must_reset:
            state = f"passphrase until {_ts(r.passphrase_expires_at)}"
        else:
            state = f"set {_ts(r.password_changed_at)}"
        table.add_row(r.username, r.name, r.environment, r.status, state, _ts(r.created_at))
    console.print(table)


async def _get_user(services: Services, username: str) -> UserRecord:
    user = await services.users.find(username)
    if user is None:
        raise CliError(f"no user named {username}; see `bankgate users list`")
    return user


@users_app.command("show")
def users_show(
    username: str, data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: AsJson = False
) -> None:
    """Show one user and its IP allow list."""

    async def job(services: Services) -> dict[str, Any]:
        user = await _get_user(services, username)
        entries = await services.allowlist.list("user", user.id)
        return {**user.as_json(), "ip_allow_list": [e.cidr for e in entries]}

    settings = _settings(data_dir, database_url)
    shown = _run(settings, job)
    if as_json:
        _emit_json(shown)
        return
    for key, value in shown.items():
        if key == "ip_allow_list":
            value = " ".join(value) if value else f"none ({describe_default(settings.environment)})"
        console.print(f"{key:>22}  {value}", highlight=False, markup=False)


@users_app.command("reset-password")
def users_reset_password(
    username: str,
    passphrase: Annotated[str | None, typer.Option(help="The initial passphrase [asked for, hidden, when not "
                                                   "given, so it stays out of the shell history]",
                                                   show_default=False)] = None,
    new_password: Annotated[str | None, typer.Option(help="The new password [asked for twice, hidden, when not "
                                                     "given]", show_default=False)] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Exchange the single-use initial passphrase for a password (12+ characters mixing three kinds, or 20+)."""
    # Prompts go to stderr so that --json output stays parseable.
    if passphrase is None:
        passphrase = str(typer.prompt("Initial passphrase", hide_input=True, err=True))
    if new_password is None:
        new_password = str(typer.prompt("New password", hide_input=True, confirmation_prompt=True, err=True))

    async def job(services: Services) -> UserRecord:
        try:
            user = await services.users.reset_password(username, passphrase, new_password)
        except PassphraseError as exc:
            await _audit_user(services, "user.password_reset", username, {"reason": exc.reason}, "failure")
            raise CliError(str(exc)) from None
        except WeakPasswordError as exc:
            await _audit_user(services, "user.password_reset", username, {"reason": "weak_password"}, "failure")
            raise CliError(str(exc)) from None
        await _audit_user(services, "user.password_reset", username, {"user_id": user.id})
        return user

    user = _run(_settings(data_dir, database_url), job)
    if as_json:
        _emit_json(user.as_json())
        return
    console.print(f"[green]password set[/green] for {escape(user.username)}; the initial passphrase no longer "
                  "works", highlight=False)


@users_app.command("revoke")
def users_revoke(
    username: str, data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: AsJson = False
) -> None:
    """Revoke an M2M user: it gets no token any more, and every token it holds is refused by every running server
    within 1 s."""
    settings = _settings(data_dir, database_url)

    async def job(services: Services) -> UserRecord:
        await _get_user(services, username)
        user = await services.users.revoke(username)
        await _audit_user(services, "user.revoked", username, {"user_id": user.id})
        return user

    user = _run(settings, job)
    if as_json:
        _emit_json(user.as_json())
        return
    console.print(f"[green]revoked[/green] user {escape(user.username)}; running servers refuse it and its tokens "
                  f"within {_propagation(settings)}", highlight=False)


@users_app.command("new-passphrase")
def users_new_passphrase(
    username: str, data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: AsJson = False
) -> None:
    """Issue a fresh initial passphrase (e.g. the first one expired); the current password stops working."""

    async def job(services: Services) -> NewUser:
        await _get_user(services, username)
        new = await services.users.new_passphrase(username)
        await _audit_user(services, "user.passphrase_reissued", username, {"user_id": new.user.id})
        return new

    new = _run(_settings(data_dir, database_url), job)
    if as_json:
        _emit_json(new.as_json())
        return
    console.print(f"[green]new initial passphrase[/green] for {escape(new.user.username)}: "
                  f"{new.initial_passphrase}   [yellow](shown once)[/yellow]", highlight=False)
    console.print(f"  expires  {_ts(new.user.passphrase_expires_at)}; the previous password no longer works")


@dataclass(frozen=True, slots=True)
class _Subject:
    kind: SubjectKind
    id: str
    label: str  # the username or API key, as the operator wrote it

    def as_json(self) -> dict[str, str]:
        return {"subject": self.label, "kind": self.kind, "subject_id": self.id}


async def _subject(services: Services, who: str) -> _Subject:
    """An API key (bk_…) names a client, anything else a user; both must belong to the configured environment."""
    environment = services.settings.environment
    if who.startswith("bk_"):
        try:
            client = await services.clients.get(who)
        except ClientNotFoundError:
            raise CliError(f"no client with API key {who}; see `bankgate clients list`") from None
        subject, owner_environment = _Subject("client", client.id, client.api_key), client.environment
    else:
        user = await services.users.find(who)
        if user is None:
            raise CliError(f"no user named {who}; see `bankgate users list` (API keys start with bk_)")
        subject, owner_environment = _Subject("user", user.id, user.username), user.environment
    if owner_environment != environment:
        raise CliError(f"{who} belongs to the {owner_environment} environment, not {environment}; "
                       f"run this with BANKGATE_ENVIRONMENT={owner_environment}")
    return subject


async def _ip_audit(services: Services, event: str, subject: _Subject, cidr: str) -> None:
    await services.audit.write(AuditEvent(event, _actor(), "success", None, {
        **subject.as_json(), "cidr": cidr, "environment": services.settings.environment}))


@ips_app.command("allow")
def ips_allow(
    subject: Annotated[str, typer.Argument(help="A username or an API key (bk_…).")],
    cidr: Annotated[str, typer.Argument(help="An address or CIDR: 203.0.113.7, 203.0.113.0/24, 2001:db8::/48.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Allow a user or API key to connect from an address or network, in the configured environment."""
    network = str(parse_cidr(cidr))
    settings = _settings(data_dir, database_url)

    async def job(services: Services) -> tuple[_Subject, AllowEntry]:
        found = await _subject(services, subject)
        entry = await services.allowlist.allow(found.kind, found.id, network)
        await _ip_audit(services, "ip.allowed", found, entry.cidr)
        return found, entry

    found, entry = _run(settings, job)
    if as_json:
        _emit_json({**entry.as_json(), **found.as_json()})
        return
    written = "" if entry.cidr == cidr.strip() else f" (from {escape(cidr.strip())})"
    console.print(f"[green]allowed[/green] {escape(entry.cidr)}{written} for {found.kind} {escape(found.label)} in "
                  f"{entry.environment}; running servers apply it within {_propagation(settings)}",
                  highlight=False)


@ips_app.command("remove")
def ips_remove(
    subject: Annotated[str, typer.Argument(help="A username or an API key (bk_…).")],
    cidr: Annotated[str, typer.Argument(help="The entry to remove, as listed by `bankgate ips list`.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Remove an allow-list entry of a user or API key."""
    network = str(parse_cidr(cidr))
    settings = _settings(data_dir, database_url)

    async def job(services: Services) -> tuple[_Subject, list[AllowEntry]]:
        found = await _subject(services, subject)
        if not await services.allowlist.remove(found.kind, found.id, network):
            raise CliError(f"{network} is not on the allow list of {found.label} in {settings.environment}; "
                           f"see `bankgate ips list {found.label}`")
        await _ip_audit(services, "ip.removed", found, network)
        return found, await services.allowlist.list(found.kind, found.id)

    found, remaining = _run(settings, job)
    if as_json:
        _emit_json({**found.as_json(), "removed": network, "environment": settings.environment,
                    "remaining": [e.cidr for e in remaining]})
        return
    console.print(f"[green]removed[/green] {escape(network)} for {found.kind} {escape(found.label)}; running servers "
                  f"apply it within {_propagation(settings)}", highlight=False)
    if not remaining:
        console.print(f"no entry left: {describe_default(settings.environment)}", highlight=False, markup=False)


@ips_app.command("list")
def ips_list(
    subject: Annotated[str | None, typer.Argument(help="Only this username or API key (bk_…).",
                                                  show_default=False)] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """List allow-list entries of the configured environment, and what applies to those without one."""
    settings = _settings(data_dir, database_url)
    default = describe_default(settings.environment)

    async def job(services: Services) -> dict[str, Any]:
        if subject is not None:
            found = await _subject(services, subject)
            entries = await services.allowlist.list(found.kind, found.id)
            return {"environment": settings.environment, "default": default, **found.as_json(),
                    "uses_default": not entries,
                    "entries": [{**e.as_json(), "subject": found.label} for e in entries]}
        labels = {("user", u.id): u.username for u in await services.users.list()
                  if u.environment == settings.environment}
        labels.update({("client", c.id): c.api_key for c in await services.clients.list()
                       if c.environment == settings.environment})
        entries = await services.allowlist.list()
        listed = {(e.kind, e.subject_id) for e in entries}
        return {"environment": settings.environment, "default": default,
                "entries": [{**e.as_json(), "subject": labels.get((e.kind, e.subject_id), e.subject_id)}
                            for e in entries],
                "without_entries": [label for key, label in labels.items() if key not in listed]}

    shown = _run(settings, job)
    if as_json:
        _emit_json(shown)
        return
    if shown["entries"]:
        table = Table()
        table.add_column("user or API key", no_wrap=True)
        for header in ("kind", "CIDR", "added"):
            table.add_column(header)
        for e in shown["entries"]:
            table.add_row(e["subject"], e["kind"], e["cidr"], _ts(e["created_at"]))
        console.print(table)
    if subject is not None and shown["uses_default"]:
        console.print(f"{shown['subject']} has no entry; {default}",
                      highlight=False, markup=False)
        return
    if subject is None:
        if not shown["entries"]:
            console.print(f"no entries in {settings.environment}", highlight=False, markup=False)
        if shown["without_entries"]:
            console.print(f"without an entry: {', '.join(shown['without_entries'])}", highlight=False, markup=False)
        console.print(default, highlight=False, markup=False)


# -- client certificates and the certificate authority -----------------------------------------------------

certs_app = typer.Typer(help="Client certificates of M2M users: issue, list, show, download, revoke.",
                        no_args_is_help=True)
app.add_typer(certs_app, name="certs")


async def _cert_user(services: Services, username: str) -> UserRecord:
    user = await services.users.find(username)
    if user is None:
        raise CliError(f"no user named {username}; see `bankgate users list`")
    return user


async def _cert(services: Services, serial: str) -> CertificateRecord:
    try:
        return await services.pki.get(serial)
    except CertificateNotFoundError as exc:
        raise CliError(f"{exc}; see `bankgate certs list USERNAME`") from None


async def _audit_cert(services: Services, event: str, record: CertificateRecord, username: str | None) -> None:
    detail = {"serial": record.serial, "thumbprint": record.thumbprint, "user_id": record.user_id,
              "username": username, "environment": record.environment}
    await services.audit.write(AuditEvent(event, _actor(), "success", None, detail))


def _write_issued(issued: IssuedCertificate, out: Path) -> dict[str, str | None]:
    files: dict[str, str | None] = {"certificate_file": str(out / f"{issued.serial}.crt.pem"),
                                    "private_key_file": None, "pkcs12_file": None}
    write_private(out / f"{issued.serial}.crt.pem", issued.certificate_pem.encode("ascii"), replace=False)
    if issued.private_key_pem is not None and issued.pkcs12 is not None:
        files["private_key_file"] = str(out / f"{issued.serial}.key.pem")
        files["pkcs12_file"] = str(out / f"{issued.serial}.p12")
        write_private(out / f"{issued.serial}.key.pem", issued.private_key_pem.encode("ascii"), replace=False)
        write_private(out / f"{issued.serial}.p12", issued.pkcs12, replace=False)
    return files


@certs_app.command("issue")
def certs_issue(
    username: Annotated[str, typer.Argument(help="The M2M user the certificate is for.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for <serial>.crt.pem and, without --csr, "
                                      "<serial>.key.pem and <serial>.p12.", show_default=False)],
    csr: Annotated[Path | None, typer.Option("--csr", help="A certificate signing request (PKCS#10, PEM or DER) "
                                             "made by the user, so that bankgate never sees their private key.",
                                             show_default=False)] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Days the certificate is valid.")] = 365,
    key_type: Annotated[str, typer.Option("--key-type", help="Without --csr: ec (P-256) or rsa (2048 bits).")] = "ec",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Issue a client certificate (mutual TLS) for a user; the PKCS#12 password is shown this once."""
    if key_type not in ("ec", "rsa"):
        raise CliError(f"--key-type {key_type} is not one of: ec, rsa")
    request = csr.read_bytes() if csr is not None else None
    private_dir(out)

    async def job(services: Services) -> tuple[UserRecord, IssuedCertificate, dict[str, str | None]]:
        user = await _cert_user(services, username)
        issued = await services.pki.issue(user, csr_pem=request, days=days, key_type=key_type)  # type: ignore[arg-type]
        try:
            files = _write_issued(issued, out)
        except OSError:
            await services.pki.revoke(issued.serial)  # its key is lost: the certificate must not stay usable
            raise
        await _audit_cert(services, "cert.issued", issued.record, user.username)
        return user, issued, files

    user, issued, files = _run(_settings(data_dir, database_url), job)
    shown = {
        "serial": issued.serial,
        "username": user.username,
        "user_id": user.id,
        "environment": issued.record.environment,
        "subject": issued.record.subject,
        "thumbprint": issued.thumbprint,
        "x5t#S256": issued.x5t_s256,
        "not_before": int(issued.not_before),
        "not_after": int(issued.not_after),
        **files,
        "pkcs12_password": issued.pkcs12_password,
    }
    if as_json:
        _emit_json(shown)
        return
    console.print(f"[green]issued[/green] certificate {issued.serial} for {user.username} ({shown['environment']})",
                  highlight=False, soft_wrap=True)
    console.print(f"  thumbprint  {issued.thumbprint}", highlight=False)
    console.print(f"  valid       {_ts(issued.not_before)} to {_ts(issued.not_after)}", highlight=False)
    for key in ("certificate_file", "private_key_file", "pkcs12_file"):
        if files[key]:
            console.print(f"  {key.removesuffix('_file').replace('_', ' '):<11} {files[key]}", highlight=False,
                          markup=False)
    if issued.pkcs12_password:
        console.print(f"  PKCS#12 password  {issued.pkcs12_password}   [yellow](shown once: hand it over "
                      "separately from the file)[/yellow]", highlight=False)


@certs_app.command("list")
def certs_list(
    username: Annotated[str, typer.Argument(help="The M2M user.", show_default=False)],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """A user's certificates, oldest first (during a renewal two can be valid)."""

    async def job(services: Services) -> list[CertificateRecord]:
        user = await _cert_user(services, username)
        return await services.pki.list_for_user(user.id)

    records = _run(_settings(data_dir, database_url), job)
    if as_json:
        _emit_json([r.as_json() for r in records])
        return
    if not records:
        console.print(f"{username} has no certificate; issue one with `bankgate certs issue {username} --out DIR`",
                      highlight=False, markup=False, soft_wrap=True)
    now = time.time()
    # Two lines per certificate rather than a table: serial and thumbprint (40 characters each) stay whole and
    # copyable on a narrow terminal.
    for r in records:
        status = "expired" if r.status == "valid" and now >= r.not_after else r.status
        console.print(f"{r.serial}  {status:<8} {_ts(r.not_before)} to {_ts(r.not_after)}", highlight=False,
                      markup=False, soft_wrap=True)
        console.print(f"  thumbprint {r.thumbprint}", highlight=False, markup=False, soft_wrap=True)


@certs_app.command("show")
def certs_show(
    serial: Annotated[str, typer.Argument(help="The certificate's serial number (hex).", show_default=False)],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Show one certificate."""
    record = _run(_settings(data_dir, database_url), lambda s: _cert(s, serial))
    if as_json:
        _emit_json({**record.as_json(), "certificate_pem": record.certificate_pem})
        return
    for key, value in record.as_json().items():
        shown = _ts(value) if key in ("not_before", "not_after", "revoked_at", "created_at") else value
        console.print(f"{key:>12}  {shown}", highlight=False, markup=False)


@certs_app.command("download")
def certs_download(
    serial: Annotated[str, typer.Argument(help="The certificate's serial number (hex).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", help="File to write the PEM certificate to "
                                             "[default: print it].", show_default=False)] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """The certificate (PEM, public): what the user downloads to learn its thumbprint."""
    record = _run(_settings(data_dir, database_url), lambda s: _cert(s, serial))
    if out is None:
        sys.stdout.write(record.certificate_pem)
        return
    write_private(out, record.certificate_pem.encode("ascii"))
    errors.print(f"wrote {out} (thumbprint {record.thumbprint})", highlight=False, markup=False)


@certs_app.command("revoke")
def certs_revoke(
    serial: Annotated[str, typer.Argument(help="The certificate's serial number (hex).", show_default=False)],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Revoke a certificate: no new token is issued for it, and every token bound to it is refused by every running
    server within 1 s."""

    async def job(services: Services) -> tuple[CertificateRecord, bool]:
        before = await _cert(services, serial)
        record = await services.pki.revoke(before.serial)  # idempotent: run again, it denies the tokens anyway
        if before.status == "revoked":
            return record, False
        user = await services.users.get_by_id(record.user_id)
        await _audit_cert(services, "cert.revoked", record, user.username if user else None)
        return record, True

    settings = _settings(data_dir, database_url)
    record, changed = _run(settings, job)
    if as_json:
        _emit_json(record.as_json())
        return
    verb = "revoked" if changed else "already revoked"
    console.print(f"[green]{verb}[/green] {record.serial} (thumbprint {record.thumbprint}) at "
                  f"{_ts(record.revoked_at)}; running servers refuse the tokens bound to it within "
                  f"{_propagation(settings)}", highlight=False, soft_wrap=True)


@app.command("ca-cert")
def ca_cert(
    out: Annotated[Path | None, typer.Option("--out", help="File to write the CA certificate to "
                                             "[default: print it].", show_default=False)] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """The environment's CA certificate (PEM): clients trust it for `serve --tls`, proxies verify clients with it."""

    async def job(services: Services) -> str:
        authority, created = await services.pki.ensure_ca()
        if created:
            subject = authority.certificate.subject.rfc4514_string()
            await services.audit.write(AuditEvent("ca.created", _actor(), "success", None,
                                                  {"environment": authority.environment, "subject": subject}))
        return authority.certificate_pem

    pem = _run(_settings(data_dir, database_url), job)
    if out is None:
        sys.stdout.write(pem)
        return
    write_private(out, pem.encode("ascii"))
    errors.print(f"wrote {out}", highlight=False, markup=False)


def _fail(message: str) -> NoReturn:
    # soft_wrap: one line whatever the terminal width, so scripts can read it
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(1)


def main() -> None:
    if sys.argv[1:2] == ["token"]:  # the client SDK's command, shared with client-only installs
        from bankgate.client._cli import main as token_main

        raise SystemExit(token_main(sys.argv[2:]))
    try:
        app()
    except (CliError, ClientNotFoundError, MasterKeyError, SchemaMissingError, ScopeError, ValueError) as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:  # server down, no such database, bad URL: one line, no traceback
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        _fail(f"database: {reason[0] if reason else type(exc).__name__}")
    except OSError as exc:
        _fail(str(exc) or type(exc).__name__)
