"""The `bankgate` command: set up, serve, onboard clients and users, rotate keys, read the audit trail.

Each command parses its input, calls one use case of `bankgate.admin` and renders the result; errors of any command
are rendered once, here, as one line on stderr.
"""

from __future__ import annotations

import sys
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
from bankgate.vault import MasterKeyError

__all__ = ["app", "main"]

#: Errors whose message is all an operator needs: printed as one line, exit status 1.
_EXPECTED = (AdminError, CliError, ClientNotFoundError, MasterKeyError, PassphraseError, SchemaMissingError,
             ScopeError, UnknownSettingError, ValueError)


def _fail(message: str) -> NoReturn:
    # soft_wrap: one line whatever the terminal width, so scripts can read it
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


class _Boundary(TyperGroup):
    """The one place that turns an error of any command into its one-line message (and never a traceback)."""

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
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """API authentication for payment and banking APIs: token server, API keys, signing keys, audit."""


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
