"""`bankgate keys`: token signing keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from bankgate.cli._common import Invocation, command, console, ts

__all__ = ["app"]

app = typer.Typer(help="Token signing keys: rotate, list, retire.", no_args_is_help=True)


@command(app, "rotate")
def rotate(
    cli: Invocation,
    alg: Annotated[str | None, typer.Option(help="RS256, ES256 or EdDSA [default: BANKGATE_SIGNING_ALG]")] = None,
) -> None:
    """Make a new signing key active; earlier keys stay in the JWKS until their tokens have expired."""
    settings = cli.settings(signing_alg=alg)  # checks the algorithm
    # Through --server, the server's own BANKGATE_SIGNING_ALG is the default, not this machine's.
    chosen = settings.signing_alg if cli.remote is None or alg is not None else None
    key = cli.run(lambda s: s.admin.keys.rotate(cli.actor, chosen), settings=settings)
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


@command(app, "retire")
def retire(
    cli: Invocation,
    kid: Annotated[str, typer.Argument(help="the key's kid, as `bankgate keys list` shows it")],
    rotate: Annotated[bool, typer.Option("--rotate", help="if KID is the active key, make a new one first")] = False,
) -> None:
    """Retire a signing key at once (a compromised key): it leaves the JWKS now and every token it signed is
    refused now here, within a second on the other servers."""
    done = cli.run(lambda s: s.admin.keys.retire(cli.actor, kid, rotate=rotate))
    if cli.json:
        cli.emit_json(done.as_json())
        return
    if done.rotated_to is not None:
        console.print(f"[green]active[/green] {done.rotated_to.alg} key {done.rotated_to.kid}")
    console.print(f"[red]retired[/red] {done.retired.alg} key {done.retired.kid}: unpublished, its tokens refused")
