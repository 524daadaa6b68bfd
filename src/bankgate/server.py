"""Running the server with uvicorn (one process, or several workers sharing the database).

Every connection, HTTP or HTTPS, is served by `bankgate.http11`'s protocols: bounded header size and count,
deadlines for unfinished headers and bodies. A stop (SIGTERM, SIGINT) lets running requests finish for at most
`shutdown_timeout` seconds. The access log (`--access-log`) never writes the value of a secret query parameter.

With `tls`, uvicorn serves HTTPS with a server certificate from the environment's built-in CA and asks every client
for a certificate from that CA (`CERT_OPTIONAL`: a request without one still reaches the app, which can then say
what is missing); `bankgate.mtls` puts the client certificate into each request's ASGI TLS extension. With
`tls_cert` and `tls_key`, the operator's own certificate (e.g. from a public CA) is served instead, while client
certificates are still verified against the environment's CA.

It refuses to start on a uvicorn outside the tested range (`bankgate.uvicorn_range`).

With metrics on and several workers, every worker keeps its figures in files of one directory
(`PROMETHEUS_MULTIPROC_DIR`, prometheus-client's multiprocess mode), so that a scrape of any of them adds up all.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import json
import os
import shutil
import ssl
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors import Multiprocess

from bankgate.app import create_app
from bankgate.config import Settings
from bankgate.http11 import Limits, http_protocol
from bankgate.logs import ACCESS_LOGGER, LogFormat
from bankgate.uvicorn_range import check_uvicorn

__all__ = [
    "HTTP_IMPLEMENTATIONS",
    "TLSFiles",
    "app_from_environment",
    "check_operator_tls",
    "limits_from",
    "log_config",
    "plain_http_warning",
    "prepare_operator_tls",
    "prepare_tls",
    "serve",
]

_WORKER_SETTINGS = "BANKGATE_WORKER_SETTINGS"
HTTP_IMPLEMENTATIONS = ("httptools", "h11")
#: TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are all fine and configured apart);
#: uvicorn's own default would allow every TLSv1 suite, CBC and SHA-1 included.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
TLS_DIR = "tls"


def app_from_environment() -> ASGIApp:
    """The app factory uvicorn workers import: settings handed over by `serve` through the environment."""
    payload = json.loads(os.environ[_WORKER_SETTINGS])
    return create_app(Settings(**payload["settings"]), issuer=payload["issuer"])


@dataclass(frozen=True, slots=True)
class TLSFiles:
    server: Path  # the server's certificate, PEM; with its private key unless `key` is given (mode 0600)
    ca: Path  # the environment's CA certificate: the trust root for client certificates
    key: Path | None = None  # the operator's private key, apart from `server` (`serve --tls-key`)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically: a concurrent reader sees the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _certificate_names(settings: Settings, hostnames: Sequence[str]) -> list[str]:
    """The names the server certificate must carry beyond the loopback ones: --hostname values, the bound address
    when it is a specific one, and the host of a configured issuer URL."""
    names = [h for h in hostnames if h.strip()]
    with contextlib.suppress(ValueError):
        if not ipaddress.ip_address(settings.host).is_unspecified:
            names.append(settings.host)
    if settings.issuer:
        host = urlsplit(settings.issuer).hostname
        if host:
            names.append(host)
    return names


async def _tls_material(settings: Settings, hostnames: list[str]) -> tuple[str, str, str]:
    from bankgate.services import Services

    services = await Services.open(settings)
    try:
        certificate, key = await services.pki.server_certificate(hostnames)
        return certificate, key, await services.pki.ca_certificate_pem()
    finally:
        await services.close()


def prepare_tls(settings: Settings, hostnames: Sequence[str] = ()) -> TLSFiles:
    """Issue a fresh server certificate from the environment's CA and write it, with its key and the CA
    certificate, to `<data_dir>/tls/` (directory 0700, files 0600). A fresh certificate on every start keeps its
    names in step with the flags."""
    certificate, key, ca = asyncio.run(_tls_material(settings, _certificate_names(settings, hostnames)))
    directory = settings.data_dir / TLS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    files = TLSFiles(server=directory / "server.pem", ca=directory / f"{settings.environment}-ca.pem")
    _write_private(files.server, key + certificate)
    _write_private(files.ca, ca)
    return files


async def _ca_material(settings: Settings) -> str:
    from bankgate.services import Services

    services = await Services.open(settings)
    try:
        return await services.pki.ca_certificate_pem()
    finally:
        await services.close()


def check_operator_tls(certificate: Path, key: Path) -> None:
    """Refuse an operator's server certificate and key that uvicorn could not serve, or a key others may read:
    ValueError saying what to do."""
    for what, path in (("certificate", certificate), ("key", key)):
        if not path.is_file():
            raise ValueError(f"the TLS {what} {path} is not a readable file")
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"the TLS key {key} is readable by others (mode {mode:04o}); run: chmod 600 {key}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(certificate), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"the TLS certificate {certificate} and key {key} cannot be used together (PEM "
                         f"certificate chain and its unencrypted private key expected): {exc.__class__.__name__}"
                         ) from None


def prepare_operator_tls(settings: Settings, certificate: Path, key: Path) -> TLSFiles:
    """The operator's own server certificate and key (checked by `check_operator_tls`), with the environment's CA
    written to `<data_dir>/tls/` as the trust root for client certificates."""
    check_operator_tls(certificate, key)
    ca = asyncio.run(_ca_material(settings))
    directory = settings.data_dir / TLS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    files = TLSFiles(server=certificate.resolve(), ca=directory / f"{settings.environment}-ca.pem", key=key.resolve())
    _write_private(files.ca, ca)
    return files


def plain_http_warning(settings: Settings, *, tls: bool) -> str | None:
    """What `serve` warns of at start: production over plain HTTP with no trusted proxy terminating TLS in front."""
    if settings.environment != "production" or tls or settings.trusted_proxies:
        return None
    return ("warning: production over plain HTTP: passwords and tokens cross the network in clear and no client "
            "certificate can be presented; serve with --tls (--tls-cert/--tls-key for your own certificate) or "
            "behind a TLS-terminating proxy named with --trusted-proxy")


def tls_options(files: TLSFiles, http: str, limits: Limits | None = None) -> dict[str, Any]:
    """uvicorn options for HTTPS asking for (not requiring) a client certificate from the bankgate CA."""
    return {
        **({"ssl_keyfile": str(files.key)} if files.key else {}),
        "ssl_certfile": str(files.server),  # without `key`: key and certificate in one file, never mismatched
        "ssl_ca_certs": str(files.ca),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "ssl_ciphers": TLS12_CIPHERS,
        "http": http_protocol(http, limits or Limits()),
    }


def log_config(log_format: LogFormat = "text", *, access_log: bool = False) -> dict[str, Any]:
    """uvicorn's logging configuration plus the access log's redaction (applied in every worker too). In `json`,
    every record (uvicorn's, bankgate's, any library's) is one JSON object per line on stderr, and the access log
    is bankgate's own (`bankgate.logs.AccessLogSink`, on when `access_log`) instead of uvicorn's text line."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query_secrets"] = {"()": "bankgate.accesslog.RedactQuerySecrets"}
    config["loggers"]["uvicorn.access"]["filters"] = ["redact_query_secrets"]
    if log_format == "json":
        formatter = {"()": "bankgate.logs.JsonFormatter"}
        config["formatters"] = {"default": formatter, "access": formatter}
        config["handlers"]["access"]["stream"] = "ext://sys.stderr"
        config["root"] = {"handlers": ["default"], "level": "WARNING"}
        config["loggers"][ACCESS_LOGGER] = {"handlers": ["default"], "level": "INFO" if access_log else "WARNING",
                                            "propagate": False}
    return config


def limits_from(settings: Settings) -> Limits:
    return Limits(max_header_bytes=settings.max_header_bytes, max_headers=settings.max_headers,
                  header_timeout=settings.header_timeout, body_timeout=settings.body_timeout)


def serve(
    settings: Settings,
    *,
    workers: int = 1,
    access_log: bool = False,
    tls: bool = False,
    hostnames: Sequence[str] = (),
    http: str = "httptools",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    if http not in HTTP_IMPLEMENTATIONS:
        raise ValueError(f"--http {http!r} is not one of: {', '.join(HTTP_IMPLEMENTATIONS)}")
    check_uvicorn()
    issuer = settings.issuer_for(settings.host, settings.port, tls=tls)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # bankgate decides which proxies to believe (settings.trusted_proxies); uvicorn must not rewrite
        # the client address from X-Forwarded-For on its own.
        "proxy_headers": False,
        "server_header": False,
        "access_log": access_log and settings.log_format == "text",  # in json: bankgate's own access log
        "log_level": "info",
        "lifespan": "on",
        "http": http_protocol(http, limits_from(settings)),
        "timeout_keep_alive": settings.keep_alive_timeout,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "log_config": log_config(settings.log_format, access_log=access_log),
    }
    if tls:
        files = (prepare_operator_tls(settings, tls_cert, tls_key) if tls_cert and tls_key
                 else prepare_tls(settings, hostnames))
        options.update(tls_options(files, http, limits_from(settings)))
    with metrics_directory(enabled=settings.metrics != "off", workers=workers):
        if workers <= 1:
            _run(create_app(settings, issuer=issuer), options, admin_port=settings.admin_port)
            return
        dumped = settings.model_dump(mode="json")
        if settings.master_key is not None:
            dumped["master_key"] = settings.master_key.get_secret_value()
        os.environ[_WORKER_SETTINGS] = json.dumps({"settings": dumped, "issuer": issuer})
        _run("bankgate.server:app_from_environment", {**options, "factory": True, "workers": workers},
             admin_port=settings.admin_port)


_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def metrics_directory(*, enabled: bool, workers: int) -> Iterator[Path | None]:
    """The directory the server's processes keep their metrics in, `PROMETHEUS_MULTIPROC_DIR`, ready before the
    workers start: the operator's (created 0700 if missing, emptied of an earlier run's files: a new server starts
    its counts at zero), else for several workers a fresh 0700 temporary one, removed when the server stops; one
    process without it keeps its metrics in memory."""
    if not enabled:
        yield None
        return
    given = os.environ.get(_MULTIPROC_DIR)
    if given:
        directory = Path(given)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield directory
        return
    if workers <= 1:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="bankgate-metrics-"))
    os.environ[_MULTIPROC_DIR] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(_MULTIPROC_DIR, None)
        shutil.rmtree(directory, ignore_errors=True)


def _run(app: Any, options: dict[str, Any], *, admin_port: int | None) -> None:
    """uvicorn on the public port, and with `admin_port` on a second listener too: one app behind both sockets,
    which tells them apart by the local port of each request (`BankgateApp`)."""
    if admin_port is None:
        uvicorn.run(app, **options)
        return
    config = uvicorn.Config(app, **options)
    admin = uvicorn.Config(app, host=options["host"], port=admin_port, log_config=options["log_config"])
    sockets = [config.bind_socket(), admin.bind_socket()]
    server = uvicorn.Server(config)
    if config.workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        server.run(sockets=sockets)
