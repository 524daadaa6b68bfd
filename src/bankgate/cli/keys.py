"""`bankgate keys`: token signing keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from bankgate.cli._common import Invocation, command, console, ts

__all__ = ["app"]

app = typer.Typer(help="Token signing keys: rotate, list.", no_args_is_help=True)


@command(app, "rotate")
def rotate(
    cli: Invocation,
    alg: Annotated[str | None, typer.Option(help="RS256, ES256 or EdDSA [default: BANKGATE_SIGNING_ALG]")] = None,
) -> None:
    """Make a new signing key active; earlier keys stay in the JWKS until their tokens have expired."""
    settings = cli.settings(signing_alg=alg)  # checks the algorithm
    key = cli.run(lambda s: s.admin.keys.rotate(cli.actor, settings.signing_alg), settings=settings)
    if cli.json:
        cli.emit_json(key.as_json())
        return
    console.print(f"[green]active[/green] {key.alg} key {key.kid}; running servers switch within "
                  f"{settings.key_refresh_interval:g} s")


@command(app, "list")
def list_(cli: Invocation) -> None:
    """Signing keys still published in the JWKS, newest first."""
    keys = cli.run(lambda s: s.admin.keys.list())
    if cli.json:
        cli.emit_json([k.as_json() for k in keys])
        return
    table = Table()
    table.add_column("kid", no_wrap=True)
    for header in ("alg", "status", "created", "published until"):
        table.add_column(header)
    for key in keys:
        row = key.as_json()
        table.add_row(key.kid, key.alg, row["status"], ts(key.created_at), ts(key.publish_until))
    console.print(table)
