"""`bankgate ips`: IP allow lists of users and API keys, per environment."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bankgate.admin import AllowListing
from bankgate.cli._common import Invocation, command, console, propagation, ts
from bankgate.credentials.allowlist import describe_default, parse_cidr

__all__ = ["app"]

app = typer.Typer(help="IP allow lists of users and API keys, per environment.", no_args_is_help=True)

Who = Annotated[str, typer.Argument(help="A username or an API key (bk_…).")]


@command(app, "allow")
def allow(
    cli: Invocation,
    subject: Who,
    cidr: Annotated[str, typer.Argument(help="An address or CIDR: 203.0.113.7, 203.0.113.0/24, 2001:db8::/48.")],
) -> None:
    """Allow a user or API key to connect from an address or network, in the configured environment."""
    settings = cli.settings()
    found, entry = cli.run(lambda s: s.admin.ips.allow(cli.actor, subject, cidr), settings=settings)
    if cli.json:
        cli.emit_json({**entry.as_json(), **found.as_json()})
        return
    written = "" if entry.cidr == cidr.strip() else f" (from {escape(cidr.strip())})"
    console.print(f"[green]allowed[/green] {escape(entry.cidr)}{written} for {found.kind} {escape(found.label)} in "
                  f"{entry.environment}; running servers apply it within {propagation(settings)}",
                  highlight=False)


@command(app, "remove")
def remove(
    cli: Invocation,
    subject: Who,
    cidr: Annotated[str, typer.Argument(help="The entry to remove, as listed by `bankgate ips list`.")],
) -> None:
    """Remove an allow-list entry of a user or API key."""
    network = str(parse_cidr(cidr))
    settings = cli.settings()
    found, remaining = cli.run(lambda s: s.admin.ips.remove(cli.actor, subject, network), settings=settings)
    if cli.json:
        cli.emit_json({**found.as_json(), "removed": network, "environment": settings.environment,
                       "remaining": [e.cidr for e in remaining]})
        return
    console.print(f"[green]removed[/green] {escape(network)} for {found.kind} {escape(found.label)}; running servers "
                  f"apply it within {propagation(settings)}", highlight=False)
    if not remaining:
        console.print(f"no entry left: {describe_default(settings.environment)}", highlight=False, markup=False)


def _as_json(listing: AllowListing) -> dict[str, Any]:
    entries = [{**e.as_json(), "subject": label} for label, e in listing.entries]
    if listing.subject is not None:
        return {"environment": listing.environment, "default": listing.default, **listing.subject.as_json(),
                "uses_default": not entries, "entries": entries}
    return {"environment": listing.environment, "default": listing.default, "entries": entries,
            "without_entries": list(listing.without_entries)}


@command(app, "list")
def list_(
    cli: Invocation,
    subject: Annotated[str | None, typer.Argument(help="Only this username or API key (bk_…).",
                                                  show_default=False)] = None,
) -> None:
    """List allow-list entries of the configured environment, and what applies to those without one."""
    listing = cli.run(lambda s: s.admin.ips.listing(subject))
    if cli.json:
        cli.emit_json(_as_json(listing))
        return
    if listing.entries:
        table = Table()
        table.add_column("user or API key", no_wrap=True)
        for header in ("kind", "CIDR", "added"):
            table.add_column(header)
        for label, e in listing.entries:
            table.add_row(label, e.kind, e.cidr, ts(e.created_at))
        console.print(table)
    if listing.subject is not None:
        if not listing.entries:
            console.print(f"{listing.subject.label} has no entry; {listing.default}", highlight=False, markup=False)
        return
    if not listing.entries:
        console.print(f"no entries in {listing.environment}", highlight=False, markup=False)
    if listing.without_entries:
        console.print(f"without an entry: {', '.join(listing.without_entries)}", highlight=False, markup=False)
    console.print(listing.default, highlight=False, markup=False)
