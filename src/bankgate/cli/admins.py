"""`bankgate admins`: administrators of the admin API and console, with their roles."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from bankgate.cli._common import CliError, Invocation, command, console, ts
from bankgate.credentials.admins import ROLES, AdminRecord, IssuedAdminSecret

__all__ = ["app"]

app = typer.Typer(help="Administrators of the admin API and console: create, list, show, disable, enable, delete, "
                  "rotate-secret, set-password, set-role.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="The administrator's name.", show_default=False)]
RoleOption = Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")]


def _show(cli: Invocation, record: AdminRecord) -> None:
    if cli.json:
        cli.emit_json(record.as_json())
        return
    for key, value in record.as_json().items():
        console.print(f"{key:>16}  {value}", highlight=False, markup=False)


def _show_secret(cli: Invocation, issued: IssuedAdminSecret, verb: str) -> None:
    if cli.json:
        cli.emit_json(issued.as_json())
        return
    admin = issued.admin
    console.print(f"[green]{verb}[/green] administrator {admin.name!r} ({admin.role}, {admin.environment})")
    console.print(f"  API key     {admin.api_key}", highlight=False)
    console.print(f"  Secret key  {issued.secret_key}   [yellow](shown once: store it now)[/yellow]",
                  highlight=False)


@command(app, "create")
def create(cli: Invocation, name: Name, role: RoleOption) -> None:
    """Create an administrator with its admin API key pair. The secret is shown this once."""
    _show_secret(cli, cli.run(lambda s: s.admin.admins.create(cli.actor, name, role)), "created")


@command(app, "list")
def list_(
    cli: Invocation,
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted administrators.")] = False,
) -> None:
    """List administrators (never their secrets)."""
    records = cli.run(lambda s: s.admin.admins.list(deleted=deleted))
    if cli.json:
        cli.emit_json([r.as_json() for r in records])
        return
    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("API key", no_wrap=True)
    for header in ("role", "status", "console", "created"):
        table.add_column(header)
    for r in records:
        console_state = "password+TOTP" if r.password_hash is not None else "-"
        table.add_row(r.name, r.api_key, r.role, r.status, console_state, ts(r.created_at))
    console.print(table)


@command(app, "show")
def show(cli: Invocation, name: Name) -> None:
    """Show one administrator."""
    _show(cli, cli.run(lambda s: s.admin.admins.get(name)))


@command(app, "disable")
def disable(cli: Invocation, name: Name) -> None:
    """Disable an administrator: its key pair, tokens and console sign-in stop working until enabled."""
    _show(cli, cli.run(lambda s: s.admin.admins.disable(cli.actor, name)))


@command(app, "enable")
def enable(cli: Invocation, name: Name) -> None:
    """Enable a disabled administrator again."""
    _show(cli, cli.run(lambda s: s.admin.admins.enable(cli.actor, name)))


@command(app, "delete")
def delete(cli: Invocation, name: Name) -> None:
    """Delete an administrator for good (its credentials go; the name stays taken)."""
    _show(cli, cli.run(lambda s: s.admin.admins.delete(cli.actor, name)))


@command(app, "set-role")
def set_role(cli: Invocation, name: Name, role: RoleOption) -> None:
    """Change an administrator's role."""
    _show(cli, cli.run(lambda s: s.admin.admins.set_role(cli.actor, name, role)))


@command(app, "rotate-secret")
def rotate_secret(cli: Invocation, name: Name) -> None:
    """A new admin API secret; the previous one stops working at once. Shown this once."""
    _show_secret(cli, cli.run(lambda s: s.admin.admins.rotate_secret(cli.actor, name)), "rotated the secret of")


@command(app, "set-password", local=True)
def set_password(
    cli: Invocation,
    name: Name,
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from standard input (one line).")] = False,
) -> None:
    """Set the console password and enrol a TOTP authenticator (its otpauth:// URI is shown this once)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("no password on standard input")
    else:
        password = str(typer.prompt("Console password", hide_input=True, confirmation_prompt=True, err=True))
    enrolment = cli.run(lambda s: s.admin.admins.set_password(cli.actor, name, password))
    if cli.json:
        cli.emit_json(enrolment.as_json())
        return
    console.print(f"[green]set[/green] the console password of {name!r}; add this to an authenticator app "
                  "[yellow](shown once)[/yellow]:")
    console.print(f"  {enrolment.uri}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"  secret  {enrolment.secret}", highlight=False, markup=False)
