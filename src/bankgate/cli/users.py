"""`bankgate users`: certificate-bound M2M users."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bankgate.cli._common import Cursor, Invocation, Limit, command, console, more, propagation, repeat_options, ts
from bankgate.credentials.allowlist import describe_default
from bankgate.credentials.users import UserRecord
from bankgate.store.paging import DEFAULT_LIMIT

if TYPE_CHECKING:
    from bankgate.services import Services

__all__ = ["app"]

app = typer.Typer(help="Certificate-bound M2M users: create, list, show, update, reset the initial passphrase, "
                  "disable, enable, revoke, delete.", no_args_is_help=True)

Username = Annotated[str, typer.Argument(help="The user's login name.", show_default=False)]


def _show(cli: Invocation, user: UserRecord) -> None:
    if cli.json:
        cli.emit_json(user.as_json())
        return
    for key, value in user.as_json().items():
        console.print(f"{key:>22}  {value}", highlight=False, markup=False)


@command(app, "create")
def create(
    cli: Invocation,
    name: Annotated[str, typer.Option("--name", help="Who the user is, e.g. 'API Testuser'.")],
    username: Annotated[str | None, typer.Option("--username", help="Login name [default: made from the "
                                                                    "name]", show_default=False)] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="An application ID the user may act for "
                                                    "(its tokens carry it as scope); repeat for more.")] = None,
) -> None:
    """Create an M2M user with an initial passphrase, shown this once; the user exchanges it for a password."""
    new = cli.run(lambda s: s.admin.users.create(cli.actor, name, username, scope or ()))
    if cli.json:
        cli.emit_json(new.as_json())
        return
    console.print(f"[green]created[/green] user {new.user.username!r} ({new.user.name}, {new.user.environment})",
                  highlight=False)
    console.print(f"  user id             {new.user.id}")
    console.print(f"  initial passphrase  {new.initial_passphrase}   [yellow](shown once: hand it over "
                  "securely)[/yellow]")
    console.print(f"  expires             {ts(new.user.passphrase_expires_at)}")
    console.print(f"the user sets a password with it: bankgate users reset-password {new.user.username}",
                  highlight=False, markup=False)


@command(app, "list")
def list_(
    cli: Invocation,
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted users.")] = False,
    status: Annotated[str | None, typer.Option("--status", help="Only users of this status: active, disabled, "
                                               "revoked or deleted.", show_default=False)] = None,
    search: Annotated[str | None, typer.Option("--search", help="Only users whose username or name contains this "
                                               "(ignoring case).", show_default=False)] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> None:
    """List M2M users, oldest first, a page at a time (never a password or passphrase)."""
    page = cli.run(lambda s: s.admin.users.page(limit=limit, cursor=cursor, status=status, q=search,
                                                deleted=deleted))
    if cli.json:
        cli.emit_json([r.as_json() for r in page.items])
    else:
        table = Table()
        table.add_column("username", no_wrap=True)
        for header in ("name", "env", "status", "password", "created"):
            table.add_column(header)
        for r in page.items:
            if r.must_reset:
                state = f"passphrase until {ts(r.passphrase_expires_at)}"
            else:
                state = f"set {ts(r.password_changed_at)}"
            table.add_row(r.username, r.name, r.environment, r.status, state, ts(r.created_at))
        console.print(table)
    more(cli, "bankgate users list" + repeat_options(deleted=deleted, status=status, search=search, limit=limit),
         page.next_cursor)


@command(app, "show")
def show(cli: Invocation, username: Username) -> None:
    """Show one user and its IP allow list."""

    async def job(services: Services) -> dict[str, Any]:
        user = await services.admin.users.get(username)
        entries = await services.admin.users.allow_list(user)
        return {**user.as_json(), "ip_allow_list": [e.cidr for e in entries]}

    settings = cli.settings()
    shown = cli.run(job, settings=settings)
    if cli.json:
        cli.emit_json(shown)
        return
    for key, value in shown.items():
        if key == "ip_allow_list":
            value = " ".join(value) if value else f"none ({describe_default(settings.environment)})"
        console.print(f"{key:>22}  {value}", highlight=False, markup=False)


@command(app, "update")
def update(
    cli: Invocation,
    username: Username,
    name: Annotated[str | None, typer.Option("--name", help="A new name.", show_default=False)] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="The application IDs the user may act for, "
                                                    "replacing the current ones (repeat). Taking one away refuses "
                                                    "every token issued until now.", show_default=False)] = None,
) -> None:
    """Rename a user or replace the applications it may act for."""
    _show(cli, cli.run(lambda s: s.admin.users.update(cli.actor, username, name=name, scopes=scope)))


@command(app, "reset-password", local=True)
def reset_password(
    cli: Invocation,
    username: Username,
    passphrase: Annotated[str | None, typer.Option(help="The initial passphrase [asked for, hidden, when not "
                                                   "given, so it stays out of the shell history]",
                                                   show_default=False)] = None,
    new_password: Annotated[str | None, typer.Option(help="The new password [asked for twice, hidden, when not "
                                                     "given]", show_default=False)] = None,
) -> None:
    """Exchange the single-use initial passphrase for a password (12+ characters mixing three kinds, or 20+)."""
    # Prompts go to stderr so that --json output stays parseable.
    if passphrase is None:
        passphrase = str(typer.prompt("Initial passphrase", hide_input=True, err=True))
    if new_password is None:
        new_password = str(typer.prompt("New password", hide_input=True, confirmation_prompt=True, err=True))
    given, chosen = passphrase, new_password
    user = cli.run(lambda s: s.admin.users.reset_password(cli.actor, username, given, chosen))
    if cli.json:
        cli.emit_json(user.as_json())
        return
    console.print(f"[green]password set[/green] for {escape(user.username)}; the initial passphrase no longer "
                  "works", highlight=False)


@command(app, "new-passphrase")
def new_passphrase(cli: Invocation, username: Username) -> None:
    """Issue a fresh initial passphrase (e.g. the first one expired); the current password stops working."""
    new = cli.run(lambda s: s.admin.users.new_passphrase(cli.actor, username))
    if cli.json:
        cli.emit_json(new.as_json())
        return
    console.print(f"[green]new initial passphrase[/green] for {escape(new.user.username)}: "
                  f"{new.initial_passphrase}   [yellow](shown once)[/yellow]", highlight=False)
    console.print(f"  expires  {ts(new.user.passphrase_expires_at)}; the previous password no longer works")


@command(app, "disable")
def disable(cli: Invocation, username: Username) -> None:
    """Suspend a user: it gets no token, and the tokens it holds are refused by every running server within 1 s
    (for good: enabling it again does not bring them back)."""
    settings = cli.settings()
    user = cli.run(lambda s: s.admin.users.disable(cli.actor, username), settings=settings)
    if cli.json:
        cli.emit_json(user.as_json())
        return
    console.print(f"[green]disabled[/green] user {escape(user.username)}; running servers refuse it and its tokens "
                  f"within {propagation(settings)}", highlight=False)


@command(app, "enable")
def enable(cli: Invocation, username: Username) -> None:
    """Let a disabled user get tokens again (those issued before it was disabled stay refused)."""
    user = cli.run(lambda s: s.admin.users.enable(cli.actor, username))
    if cli.json:
        cli.emit_json(user.as_json())
        return
    console.print(f"[green]enabled[/green] user {escape(user.username)}; it can get new tokens", highlight=False)


@command(app, "revoke")
def revoke(cli: Invocation, username: Username) -> None:
    """Revoke an M2M user: it gets no token any more, and every token it holds is refused by every running server
    within 1 s."""
    settings = cli.settings()
    user = cli.run(lambda s: s.admin.users.revoke(cli.actor, username), settings=settings)
    if cli.json:
        cli.emit_json(user.as_json())
        return
    console.print(f"[green]revoked[/green] user {escape(user.username)}; running servers refuse it and its tokens "
                  f"within {propagation(settings)}", highlight=False)


@command(app, "delete")
def delete(cli: Invocation, username: Username) -> None:
    """Delete an M2M user: password, passphrase and IP allow list go, its certificates are revoked and its tokens
    refused like a revocation; the audit trail keeps its history."""
    settings = cli.settings()
    user = cli.run(lambda s: s.admin.users.delete(cli.actor, username), settings=settings)
    if cli.json:
        cli.emit_json(user.as_json())
        return
    console.print(f"[green]deleted[/green] user {escape(user.username)}; running servers refuse its tokens and "
                  f"certificates within {propagation(settings)}", highlight=False)
