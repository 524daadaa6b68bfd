"""`bankgate clients`: API key pairs (client credentials)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from bankgate.cli._common import (
    Cursor,
    Invocation,
    Limit,
    command,
    console,
    more,
    parse_duration,
    propagation,
    repeat_options,
    ts,
)
from bankgate.credentials.clients import ClientRecord
from bankgate.store.paging import DEFAULT_LIMIT

__all__ = ["app"]

app = typer.Typer(help="API key pairs (client credentials): create, list, show, update, disable, enable, rotate, "
                  "revoke, delete.", no_args_is_help=True)

ApiKey = Annotated[str, typer.Argument(help="The client's API key (bk_…).", show_default=False)]


def _show(cli: Invocation, record: ClientRecord) -> None:
    if cli.json:
        cli.emit_json(record.as_json())
        return
    for key, value in record.as_json().items():
        console.print(f"{key:>12}  {value}", highlight=False, markup=False)


@command(app, "create")
def create(
    cli: Invocation,
    name: Annotated[str, typer.Option("--name", help="Who the client is, e.g. 'Acme web shop'.")],
    scope: Annotated[list[str], typer.Option("--scope", help="An allowed business application ID (repeat).")],
    auth_mode: Annotated[str, typer.Option("--auth-mode", help="oauth2 (tokens) or basic (key:secret on every "
                                                              "call).")] = "oauth2",
) -> None:
    """Create an API key pair. The secret is shown this once and stored only as a keyed hash."""
    issued = cli.run(lambda s: s.admin.clients.create(cli.actor, name, scope, auth_mode))
    if cli.json:
        cli.emit_json(issued.as_json())
        return
    console.print(f"[green]created[/green] client {issued.client.name!r} ({issued.client.environment})")
    console.print(f"  client id   {issued.client.id}")
    console.print(f"  API key     {issued.client.api_key}")
    console.print(f"  Secret key  {issued.secret_key}   [yellow](shown once: store it now)[/yellow]")
    console.print(f"  scopes      {' '.join(issued.client.scopes)}   auth mode {issued.client.auth_mode}")


@command(app, "list")
def list_(
    cli: Invocation,
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted clients.")] = False,
    status: Annotated[str | None, typer.Option("--status", help="Only clients of this status: active, disabled, "
                                               "revoked or deleted.", show_default=False)] = None,
    search: Annotated[str | None, typer.Option("--search", help="Only clients whose name contains this or whose "
                                               "API key starts with it (ignoring case).", show_default=False)] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> None:
    """List clients, oldest first, a page at a time (never their secrets)."""
    page = cli.run(lambda s: s.admin.clients.page(limit=limit, cursor=cursor, status=status, q=search,
                                                  deleted=deleted))
    if cli.json:
        cli.emit_json([r.as_json() for r in page.items])
    else:
        # Keys are printed whole (never cut with an ellipsis); the other columns give way on a narrow terminal.
        table = Table()
        table.add_column("API key", no_wrap=True)
        for header in ("name", "scopes", "mode", "env", "status", "created"):
            table.add_column(header)
        for r in page.items:
            table.add_row(r.api_key, r.name, " ".join(r.scopes), r.auth_mode, r.environment, r.status,
                          ts(r.created_at))
        console.print(table)
    more(cli, "bankgate clients list" + repeat_options(deleted=deleted, status=status, search=search, limit=limit),
         page.next_cursor)


@command(app, "show")
def show(cli: Invocation, api_key: ApiKey) -> None:
    """Show one client."""
    _show(cli, cli.run(lambda s: s.admin.clients.get(api_key)))


@command(app, "update")
def update(
    cli: Invocation,
    api_key: ApiKey,
    name: Annotated[str | None, typer.Option("--name", help="A new name.", show_default=False)] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="The allowed application IDs, replacing the "
                                                    "current ones (repeat). Taking one away refuses every token "
                                                    "issued until now.", show_default=False)] = None,
    auth_mode: Annotated[str | None, typer.Option("--auth-mode", help="oauth2 or basic. Leaving oauth2 refuses "
                                                  "every token issued until now.", show_default=False)] = None,
) -> None:
    """Rename a client, replace its allowed applications or switch its auth mode."""
    _show(cli, cli.run(lambda s: s.admin.clients.update(cli.actor, api_key, name=name, scopes=scope,
                                                        auth_mode=auth_mode)))


@command(app, "disable")
def disable(cli: Invocation, api_key: ApiKey) -> None:
    """Suspend a client: it gets no token, and the tokens it holds are refused by every running server within 1 s
    (for good: enabling it again does not bring them back)."""
    settings = cli.settings()
    record = cli.run(lambda s: s.admin.clients.disable(cli.actor, api_key), settings=settings)
    if cli.json:
        cli.emit_json(record.as_json())
        return
    console.print(f"[green]disabled[/green] {api_key}; running servers refuse it and its tokens within "
                  f"{propagation(settings)}; `bankgate clients enable {api_key}` lets it get new tokens",
                  highlight=False, soft_wrap=True)


@command(app, "enable")
def enable(cli: Invocation, api_key: ApiKey) -> None:
    """Let a disabled client get tokens again (those issued before it was disabled stay refused)."""
    record = cli.run(lambda s: s.admin.clients.enable(cli.actor, api_key))
    if cli.json:
        cli.emit_json(record.as_json())
        return
    console.print(f"[green]enabled[/green] {api_key}; it can get new tokens", highlight=False)


@command(app, "revoke")
def revoke(cli: Invocation, api_key: ApiKey) -> None:
    """Revoke a client: its key pair and every token it holds stop working on every running server within 1 s."""
    settings = cli.settings()
    record = cli.run(lambda s: s.admin.clients.revoke(cli.actor, api_key), settings=settings)
    if cli.json:
        cli.emit_json(record.as_json())
        return
    console.print(f"[green]revoked[/green] {api_key}; running servers refuse it and its tokens within "
                  f"{propagation(settings)}")


@command(app, "delete")
def delete(cli: Invocation, api_key: ApiKey) -> None:
    """Delete a client: its secrets and IP allow list go, its tokens are refused like a revocation; the audit trail
    keeps its history."""
    settings = cli.settings()
    record = cli.run(lambda s: s.admin.clients.delete(cli.actor, api_key), settings=settings)
    if cli.json:
        cli.emit_json(record.as_json())
        return
    console.print(f"[green]deleted[/green] {api_key}; running servers refuse its tokens within "
                  f"{propagation(settings)}", highlight=False)


@command(app, "rotate-secret")
def rotate_secret(
    cli: Invocation,
    api_key: ApiKey,
    overlap: Annotated[str, typer.Option(help="How long the current secret keeps working: 0, 30m, 24h, 7d.")] = "24h",
) -> None:
    """Issue a new secret; the current one keeps working for the overlap window."""
    seconds = parse_duration(overlap)
    issued = cli.run(lambda s: s.admin.clients.rotate_secret(cli.actor, api_key, seconds))
    if cli.json:
        cli.emit_json({**issued.as_json(), "previous_secret_valid_for_seconds": seconds})
        return
    console.print(f"[green]new secret[/green] for {api_key}: {issued.secret_key}   [yellow](shown once)[/yellow]")
    console.print(f"the previous secret keeps working for {overlap}")
