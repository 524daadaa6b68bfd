"""Setting up and serving: init, migrate, serve, quickstart, ca-cert."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import shlex
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bankgate.cli._common import CliError, Invocation, command, console, errors
from bankgate.config import listen_url
from bankgate.files import write_private

if TYPE_CHECKING:
    from bankgate.credentials.clients import IssuedSecret
    from bankgate.services import InitReport, IssuerChoice, Services

__all__ = ["register"]

# Quickstart's sandbox client: two business applications, as in the seed's example.
QUICKSTART_CLIENT = "quickstart sandbox client"
QUICKSTART_SCOPES = ("app_12345", "app_67890")
#: Prints the `access_token` of the JSON on stdin: python3 is on every machine, jq is not.
PYTHON_ONE_LINER = 'import json, sys; print(json.load(sys.stdin)["access_token"])'


def init(
    cli: Invocation,
    issuer: Annotated[str | None, typer.Option(help="Public URL used as `iss` by every server on this database "
                                               "started without --issuer; stored in the database "
                                               "[env: BANKGATE_ISSUER]", show_default=False)] = None,
) -> None:
    """Create the master key, the database schema and the first signing key. Safe to run twice."""
    settings = cli.settings(issuer=issuer)

    async def job(services: Services) -> tuple[InitReport, str | None]:
        return await services.admin.setup.initialise(cli.actor, settings.issuer)

    report, stored_issuer = cli.run(job, settings=settings, initialise=True)
    if cli.json:
        cli.emit_json(
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


def migrate(
    cli: Invocation,
    check: Annotated[bool, typer.Option("--check", help="List the pending migrations and exit 1 if there are any; "
                                        "change nothing.")] = False,
) -> None:
    """Upgrade the database schema to this version's newest migration (under a lock: replicas may run it at once)."""
    from bankgate.store import Store

    settings = cli.settings()

    async def job() -> list[tuple[str, str]]:
        store = Store(settings.sqlalchemy_url)
        try:
            return await (store.pending_migrations() if check else store.migrate())
        finally:
            await store.close()

    steps = asyncio.run(job())
    if cli.json:
        cli.emit_json({"pending" if check else "applied": [{"revision": r, "description": d} for r, d in steps]})
    elif not steps:
        console.print("the database schema is up to date", highlight=False)
    else:
        console.print("pending migrations:" if check else "applied migrations:", highlight=False)
        for revision, description in steps:
            console.print(f"  {revision}  {description}", highlight=False, markup=False)
    if check and steps:
        raise typer.Exit(1)


def serve(
    cli: Invocation,
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
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="With --tls: serve this certificate (PEM, "
                                                  "full chain) instead of one from the environment's CA; client "
                                                  "certificates are still verified against that CA.",
                                                  show_default=False)] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="With --tls-cert: its private key (PEM, "
                                                 "unencrypted, mode 0600).", show_default=False)] = None,
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
    admin_port: Annotated[int | None, typer.Option("--admin-port", help="Also listen on this port for /admin and "
                                                   "/console only; the main port then answers 404 there [env: "
                                                   "BANKGATE_ADMIN_PORT]", show_default=False)] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help="Prometheus metrics at GET /metrics: off, on, or "
                                                "admin (on the --admin-port listener only) [env: BANKGATE_METRICS, "
                                                "default off]", show_default=False)] = None,
    log_format: Annotated[str | None, typer.Option("--log-format", help="text, or json: one JSON object per line "
                                                   "on stderr (with --access-log: one per request, with route, "
                                                   "status, duration, request id) [env: BANKGATE_LOG_FORMAT, "
                                                   "default text]", show_default=False)] = None,
    tracing: Annotated[str | None, typer.Option("--tracing", help="OpenTelemetry spans of every request: otlp "
                                                "(OTEL_EXPORTER_OTLP_* says where), console or off; needs "
                                                "`pip install 'bankgate[otel]'` [env: BANKGATE_TRACING, default "
                                                "off]", show_default=False)] = None,
) -> None:
    """Run the HTTP server (uvicorn). Initialises the data directory first if needed."""
    from bankgate.server import HTTP_IMPLEMENTATIONS, check_operator_tls, plain_http_warning
    from bankgate.server import serve as run_server
    from bankgate.tracing import TracingUnavailable
    from bankgate.tracing import require as require_tracing

    if http not in HTTP_IMPLEMENTATIONS:
        raise CliError(f"--http {http} is not one of: {', '.join(HTTP_IMPLEMENTATIONS)}")
    _require_tested_uvicorn()
    if (tls_cert is None) != (tls_key is None):
        raise CliError("--tls-cert and --tls-key go together: give the certificate and its private key")
    if tls_cert is not None and tls_key is not None:
        if not tls:
            raise CliError("--tls-cert and --tls-key serve HTTPS: add --tls")
        try:
            check_operator_tls(tls_cert, tls_key)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    settings = cli.settings(host=host, port=port, issuer=issuer,
                            trusted_proxies=trusted_proxy or None, client_cert_header=client_cert_header,
                            client_cert_header_name=client_cert_header_name, max_header_bytes=max_header_bytes,
                            max_headers=max_headers, header_timeout=header_timeout, body_timeout=body_timeout,
                            keep_alive_timeout=keep_alive_timeout, shutdown_timeout=shutdown_timeout,
                            admin_port=admin_port, metrics=metrics, log_format=log_format, tracing=tracing)
    say = _startup_lines(settings.log_format)
    try:
        require_tracing(settings)
    except TracingUnavailable as exc:
        raise CliError(str(exc)) from None

    async def prepare(services: Services) -> tuple[InitReport, IssuerChoice]:
        report = await services.init()
        return report, await services.resolve_issuer(listen_url(settings.host, settings.port, tls=tls))

    report, chosen = cli.run(prepare, settings=settings, initialise=True)
    say(logging.INFO, f"bankgate {report.environment}: {chosen.describe()}; signing key "
        f"{report.signing_key.alg} {report.signing_key.kid}")
    warning = plain_http_warning(settings, tls=tls)
    if warning:
        say(logging.WARNING, warning)
    settings = settings.model_copy(update={"issuer": chosen.url})
    run_server(settings, workers=workers, access_log=access_log, tls=tls, hostnames=hostname or [], http=http,
               tls_cert=tls_cert, tls_key=tls_key)


def _startup_lines(log_format: str) -> Callable[[int, str], None]:
    """How `serve` says what it starts with: a plain line on stderr, or in `json` a log record like every other
    line the server writes."""
    if log_format != "json":
        return lambda level, text: errors.print(text, style="yellow" if level >= logging.WARNING else None,
                                                highlight=False, markup=False, soft_wrap=True)
    from bankgate.server import log_config

    logging.config.dictConfig(log_config("json"))
    logger = logging.getLogger("bankgate.serve")
    logger.setLevel(logging.INFO)
    return logger.log


def _require_tested_uvicorn() -> None:
    """Before anything is written: a server on an untested uvicorn does not start (bankgate.uvicorn_range)."""
    from bankgate.uvicorn_range import UntestedUvicorn, check_uvicorn

    try:
        check_uvicorn()
    except UntestedUvicorn as exc:
        raise CliError(str(exc)) from None


def quickstart(
    cli: Invocation,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Set up a sandbox with a ready client, print its key, secret and a curl line, and serve."""
    from bankgate.server import serve as run_server

    settings = cli.settings(host=host, port=port)
    if settings.environment != "sandbox":
        raise CliError("quickstart makes a demo client and is for the sandbox only; use init/serve in production")
    _require_tested_uvicorn()

    async def prepare(services: Services) -> IssuedSecret:
        await services.init()
        return await services.admin.clients.demo(cli.actor, QUICKSTART_CLIENT, QUICKSTART_SCOPES)

    issued = cli.run(prepare, settings=settings, initialise=True)
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
    # What the README's snippets expect in the shell they are pasted into: the key pair, then a token.
    token = (f'ACCESS_TOKEN=$(curl -s -X POST {base}/oauth/token -u "$KEY:$SECRET" -d grant_type=client_credentials '
             f"-d scope={QUICKSTART_SCOPES[0]} | python3 -c {shlex.quote(PYTHON_ONE_LINER)})")
    payment = json.dumps({"application_id": QUICKSTART_SCOPES[0], "amount": "12.50", "currency": "EUR",
                          "reference": "Invoice 1"})
    lines = [
        "\nOr keep the key pair and a token in that shell, as the README's snippets expect:",
        f"export KEY={shlex.quote(issued.client.api_key)} SECRET={shlex.quote(issued.secret_key)}",
        token,
        f'curl -s {base}/api/v1/whoami -H "Authorization: Bearer $ACCESS_TOKEN"',
        "\nPay in the sandbox (send it twice: the second answer is replayed, not paid again):",
        f'curl -si -X POST {base}/api/v1/payments -H "Authorization: Bearer $ACCESS_TOKEN" '
        f"-H 'Idempotency-Key: {uuid.uuid4()}' -H 'Content-Type: application/json' -d {shlex.quote(payment)}",
        f"\nJWKS: {base}/.well-known/jwks.json   metadata: {base}/.well-known/oauth-authorization-server\n",
    ]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    run_server(settings)


def ca_cert(
    cli: Invocation,
    out: Annotated[Path | None, typer.Option("--out", help="File to write the CA certificate to "
                                             "[default: print it].", show_default=False)] = None,
) -> None:
    """The environment's CA certificate (PEM): clients trust it for `serve --tls`, proxies verify clients with it."""
    pem = cli.run(lambda services: services.admin.certs.ca_certificate(cli.actor))
    if out is None:
        sys.stdout.write(pem)
        return
    write_private(out, pem.encode("ascii"))
    errors.print(f"wrote {out}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Set-up commands sit on the root: `bankgate init`, `bankgate serve`."""
    command(app, "init", local=True)(init)
    command(app, "migrate", local=True)(migrate)
    command(app, "serve", json_output=False, local=True)(serve)
    command(app, "quickstart", json_output=False, local=True)(quickstart)
    command(app, "ca-cert", json_output=False, local=True)(ca_cert)
