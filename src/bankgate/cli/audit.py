"""`bankgate audit`: reading the audit trail."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypedDict

import typer
from rich.table import Table

from bankgate.admin.audit import render
from bankgate.cli._common import CliError, Invocation, command, console, parse_time
from bankgate.files import private_file

if TYPE_CHECKING:
    from bankgate.services import Services

__all__ = ["app"]

app = typer.Typer(help="The audit trail.", no_args_is_help=True)

Format = Literal["table", "json", "jsonl", "csv"]


class Filters(TypedDict):
    event: str | None
    actor: str | None
    subject: str | None
    outcome: str | None
    since: float | None
    until: float | None


@command(app, "tail")
def tail(
    cli: Invocation,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="How many events.")] = 20,
    event: Annotated[str | None, typer.Option(help="Only this event, e.g. token.issued, or every event of a "
                                              "kind: client.* (or client.).")] = None,
    actor: Annotated[str | None, typer.Option(help="Only events of this actor, e.g. cli:alice.")] = None,
    subject: Annotated[str | None, typer.Option(help="Only events about this client (API key or client id), user "
                                                "(username or user id, its certificates included) or "
                                                "certificate (serial).", show_default=False)] = None,
    outcome: Annotated[str | None, typer.Option(help="Only events of this outcome: success or failure.",
                                                show_default=False)] = None,
    since: Annotated[str | None, typer.Option(help="Only events at or after this time (2026-12-01T09:00Z) or this "
                                              "long ago (30m, 7d).", show_default=False)] = None,
    until: Annotated[str | None, typer.Option(help="Only events before this time or this long ago.",
                                              show_default=False)] = None,
    format: Annotated[str | None, typer.Option("--format", help="table, json, jsonl or csv [default: table; "
                                               "with --export, csv for a .csv file, else jsonl]",
                                               show_default=False)] = None,
    export: Annotated[Path | None, typer.Option("--export", help="Write every matching event (not only the last "
                                                "--limit), oldest first, to this file (created 0600) as jsonl or "
                                                "csv.", show_default=False)] = None,
) -> None:
    """The latest audit events, oldest first; or all of them exported to a file."""
    chosen = _format(cli, format, export)
    start = parse_time(since) if since is not None else None
    end = parse_time(until) if until is not None else None
    filters = Filters(event=event, actor=actor, subject=subject, outcome=outcome, since=start, until=end)
    if export is not None:
        _export(cli, export, "csv" if chosen == "csv" else "jsonl", filters)
        return
    events = cli.run(lambda s: s.admin.audit.tail(limit, **filters))
    if chosen == "json":
        cli.emit_json([e.as_json() for e in events])
    elif chosen in ("jsonl", "csv"):
        sys.stdout.write(render(events, chosen))
    else:
        table = Table("at", "event", "actor", "source IP", "outcome", "detail")
        for e in events:
            row = e.as_json()
            table.add_row(row["at"], e.event, e.actor, e.source_ip or "-", e.outcome,
                          json.dumps(row["detail"], separators=(",", ":")))
        console.print(table)


def _format(cli: Invocation, given: str | None, export: Path | None) -> Format:
    if given is not None and given not in ("table", "json", "jsonl", "csv"):
        raise CliError(f"--format {given} is not one of: table, json, jsonl, csv")
    if cli.json and given not in (None, "json"):
        raise CliError(f"--json and --format {given} say different things; give one of them")
    if export is not None:
        if given in ("table", "json"):
            raise CliError(f"--export writes jsonl or csv, not {given}; give --format jsonl or --format csv")
        return "csv" if given == "csv" or (given is None and export.suffix.lower() == ".csv") else "jsonl"
    if cli.json:
        return "json"
    return given or "table"  # type: ignore[return-value]


def _export(cli: Invocation, path: Path, chosen: Literal["jsonl", "csv"], filters: Filters) -> None:
    async def job(services: Services) -> int:
        chunks = services.admin.audit.export(cli.actor, format=chosen, **filters)
        first = await anext(chunks, None)  # the filters are checked before the file is touched
        private_file(path)
        written = 0
        with path.open("w", encoding="utf-8", newline="") as out:
            if first is not None:
                out.write(first)
                written += len(first)
            async for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
        return written

    size = cli.run(job)
    if cli.json:
        cli.emit_json({"exported_to": str(path), "format": chosen, "bytes": size})
        return
    console.print(f"[green]exported[/green] the matching events to {path} ({chosen}, {size} characters)",
                  highlight=False)
