"""The `bankgate` command: set up, serve, onboard clients and users, rotate keys, read the audit trail.

Each command parses its input, calls one use case of `bankgate.admin` and renders the result; errors of any command
are rendered once, here, as one line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

try:
    import typer
    from typer.core import TyperGroup
except ModuleNotFoundError:  # a client-only install: `bankgate token` needs no server extra, the rest does
    from bankgate.client._cli import without_server_extra

    without_server_extra(sys.argv)
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

import bankgate
from bankgate.admin import AdminError
from bankgate.cli import admins, audit, certs, clients, ips, keys, server, users
from bankgate.cli._common import CliError, errors
from bankgate.config import UnknownSettingError
from bankgate.credentials.clients import ClientNotFoundError
from bankgate.credentials.scopes import ScopeError
from bankgate.credentials.users import PassphraseError
from bankgate.store import SchemaMissingError
from bankgate.store.migrate import SchemaTooNewError
from bankgate.vault import MasterKeyError

__all__ = ["app", "main"]

#: Errors whose message is all an operator needs: printed as one line, exit status 1.
_EXPECTED = (AdminError, CliError, ClientNotFoundError, MasterKeyError, PassphraseError, SchemaMissingError,
             SchemaTooNewError, ScopeError, UnknownSettingError, ValueError)


def _fail(message: str) -> NoReturn:
    # soft_wrap: one line whatever the terminal width, so scripts can read it
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


class _Boundary(TyperGroup):
    """The one place that turns an error of any command into its one-line message (and never a traceback)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if any(arg == "--admin-secret" or arg.startswith("--admin-secret=") for arg in args):
            # refused before anything runs: the shell history and `ps` would keep it
            errors.print("[red]error:[/red] the admin secret is never given on the command line: set "
                         "BANKGATE_ADMIN_SECRET or let bankgate ask for it (hidden)", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        return list(super().parse_args(ctx, args))

    def invoke(self, ctx: Any) -> Any:  # typer.Context (typer's own click)
        try:
            return super().invoke(ctx)
        except _EXPECTED as exc:
            _fail(str(exc))
        except SQLAlchemyError as exc:  # server down, no such database, bad URL: one line, no traceback
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            _fail(f"database: {reason[0] if reason else type(exc).__name__}")
        except OSError as exc:
            _fail(str(exc) or type(exc).__name__)


app = typer.Typer(
    name="bankgate",
    cls=_Boundary,
    help="API authentication for payment and banking APIs: token server, API keys, signing keys, audit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bankgate {bankgate.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    server_url: Annotated[str | None, typer.Option(
        "--server", envvar="BANKGATE_SERVER", show_default=False,
        help="Act through this server's admin API (https://auth.example.com) instead of the local database; "
             "the secret comes from BANKGATE_ADMIN_SECRET or a hidden prompt.")] = None,
    admin_key: Annotated[str | None, typer.Option(
        "--admin-key", envvar="BANKGATE_ADMIN_KEY", show_default=False,
        help="With --server: the administrator's API key (bka_…).")] = None,
    ca_file: Annotated[Path | None, typer.Option(
        "--ca-file", envvar="BANKGATE_CA_FILE", show_default=False,
        help="With --server: trust this CA (PEM) for the server's certificate.")] = None,
) -> None:
    """API authentication for payment and banking APIs: token server, API keys, signing keys, audit."""
    if server_url:
        from bankgate.cli._remote import Remote

        ctx.obj = Remote(server_url, admin_key, ca_file)


server.register(app)
app.add_typer(clients.app, name="clients")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(users.app, name="users")
app.add_typer(ips.app, name="ips")
app.add_typer(certs.app, name="certs")
app.add_typer(admins.app, name="admins")


def main() -> None:
    if sys.argv[1:2] == ["token"]:  # the client SDK's command, shared with client-only installs
        from bankgate.client._cli import main as token_main

        raise SystemExit(token_main(sys.argv[2:]))
    app()
