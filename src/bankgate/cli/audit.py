"""`bankgate audit`: reading the audit trail."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from bankgate.cli._common import Invocation, command, console, parse_time

__all__ = ["app"]

app = typer.Typer(help="The audit trail.", no_args_is_help=True)


@command(app, "tail")
def tail(
    cli: Invocation,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="How many events.")] = 20,
    event: Annotated[str | None, typer.Option(help="Only this event, e.g. token.issued, or every event of a "
                                              "kind: client.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only events of this actor, e.g. cli:alice.")] = None,
    since: Annotated[str | None, typer.Option(help="Only events at or after this time (2026-12-01T09:00Z) or this "
                                              "long ago (30m, 7d).", show_default=False)] = None,
    until: Annotated[str | None, typer.Option(help="Only events before this time or this long ago.",
                                              show_default=False)] = None,
) -> None:
    """The latest audit events, oldest first."""
    start = parse_time(since) if since is not None else None
    end = parse_time(until) if until is not None else None
    events = cli.run(lambda s: s.admin.audit.tail(limit, event=event, actor=actor, since=start, until=end))
    if cli.json:
        cli.emit_json([e.as_json() for e in events])
        return
    table = Table("at", "event", "actor", "source IP", "outcome", "detail")
    for e in events:
        row = e.as_json()
        table.add_row(row["at"], e.event, e.actor, e.source_ip or "-", e.outcome,
                      json.dumps(row["detail"], separators=(",", ":")))
    console.print(table)
