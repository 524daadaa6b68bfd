"""What every command shares: the settings options (declared here once), running a use case, rendering."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
import shlex
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast, get_type_hints

import typer
from pydantic import ValidationError
from rich.console import Console

from bankgate.admin import Actor
from bankgate.config import Settings, load_settings
from bankgate.store.paging import DEFAULT_LIMIT

if TYPE_CHECKING:  # importing the services at run time would make `bankgate --help` pay for the whole server
    from bankgate.cli._remote import Remote
    from bankgate.services import Services

__all__ = ["CliError", "Cursor", "Invocation", "Limit", "command", "console", "errors", "more", "parse_duration",
           "propagation", "repeat_options", "ts"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

console = Console()
errors = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory [env: BANKGATE_DATA_DIR, default: ./.bankgate]",
                 show_default=False),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="Database URL [env: BANKGATE_DATABASE_URL, default: SQLite in the "
                 "data directory]", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
#: The page options every listing shares (`bankgate.store.paging`).
Limit = Annotated[int, typer.Option("--limit", min=1, max=500, help="How many a page (1 to 500).")]
Cursor = Annotated[str | None, typer.Option("--cursor", help="Where the previous page ended: the cursor it printed "
                                            "(give the same filters).", show_default=False)]


class CliError(Exception):
    """A problem with the command line itself (not a use case refusing): printed as one line."""


@dataclass(frozen=True, slots=True)
class Invocation:
    """The options every command shares, and the acting principal: what a command needs besides its own input."""

    data_dir: Path | None = None
    database_url: str | None = None
    json: bool = False
    actor: Actor = field(default_factory=Actor.local_user)
    #: `--server` and the administrator's key: the use cases then run on that server, through its admin API.
    remote: Remote | None = None

    def settings(self, **more: Any) -> Settings:
        try:
            return load_settings(data_dir=self.data_dir, database_url=self.database_url, **more)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
            raise CliError(f"invalid settings: {problems}") from None

    def run(
        self, job: Callable[[Services], Awaitable[T]], *, settings: Settings | None = None, initialise: bool = False
    ) -> T:
        """Open the services, run one use case, close them. With `--server`, the services are the admin API's
        (`bankgate.cli._remote`): the same use cases, run and audited on that server."""
        if self.remote is not None:
            remote = self.remote.services()

            async def through_api() -> T:
                try:
                    return await job(cast("Services", remote))
                finally:
                    await remote.close()

            return asyncio.run(through_api())

        from bankgate.services import Services

        chosen = settings if settings is not None else self.settings()

        async def main() -> T:
            services = await Services.open(chosen, initialise=initialise)
            try:
                return await job(services)
            finally:
                await services.close()

        return asyncio.run(main())

    def emit_json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, indent=2) + "\n")


_SHARED = (
    inspect.Parameter("data_dir", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=DataDir),
    inspect.Parameter("database_url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=DatabaseUrl),
)
_JSON = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=AsJson)
#: Typer hands the click context to a parameter of this type: the root's `obj` holds `--server` (see `cli._root`).
_CONTEXT = inspect.Parameter("typer_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)


def command(
    group: typer.Typer, name: str | None = None, *, json_output: bool = True, local: bool = False
) -> Callable[[F], F]:
    """Register `fn(cli: Invocation, ...own options)` on `group`, adding `--data-dir`, `--database-url` and (with
    `json_output`) `--json` to its options: they are accepted after the subcommand, where scripts put them.
    A `local` command works on the installation itself and refuses `--server`."""

    def register(fn: F) -> F:
        hints = get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in list(inspect.signature(fn).parameters.values())[1:]]
        params = own + list(_SHARED) + ([_JSON] if json_output else []) + [_CONTEXT]

        @functools.wraps(fn)
        def invoke(**options: Any) -> Any:
            context: typer.Context = options.pop("typer_context")
            remote = context.find_root().obj
            if remote is not None and local:
                raise CliError(f"`{_path(context)}` needs local access to the database; run it on the server, "
                               "without --server")
            cli = Invocation(options.pop("data_dir"), options.pop("database_url"), options.pop("as_json", False),
                             remote=remote)
            return fn(cli, **options)

        del invoke.__wrapped__
        invoke.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        invoke.__annotations__ = {p.name: p.annotation for p in params}
        group.command(name)(invoke)
        return fn

    return register


def _path(context: typer.Context) -> str:
    """`bankgate users reset-password`, whatever name the program was started under."""
    names: list[str] = []
    current: Any = context
    while current.parent is not None:
        names.insert(0, current.info_name or "")
        current = current.parent
    return " ".join(["bankgate", *names])


def more(cli: Invocation, command_line: str, next_cursor: str | None) -> None:
    """Say how to get the next page, if there is one: below the table, or on stderr when stdout is JSON."""
    if next_cursor is None:
        return
    if cli.json:
        errors.print(f"next cursor: {next_cursor}", highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(f"more: {command_line} --cursor {next_cursor}", highlight=False, markup=False, soft_wrap=True)


def repeat_options(**options: object) -> str:
    """Options given to a listing, as they would be typed again for its next page (the default limit left out)."""
    parts = []
    for name, value in options.items():
        if value is True:
            parts.append(f" --{name}")
        elif value not in (None, False) and not (name == "limit" and value == DEFAULT_LIMIT):
            parts.append(f" --{name} {shlex.quote(str(value))}")
    return "".join(parts)


def parse_duration(text: str) -> float:
    """`0`, `90`, `90s`, `30m`, `24h`, `7d` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 0, 90s, 30m, 24h or 7d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def parse_time(text: str) -> float:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration back from now (`30m`, `7d`) -> UNIX seconds."""
    try:
        return datetime.now(UTC).timestamp() - parse_duration(text)
    except typer.BadParameter:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a time like 2026-12-01T09:00Z nor a duration like "
                                 "30m or 7d (that long ago)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def ts(value: float | None) -> str:
    """A UTC time for tables, short and with a space so a narrow column wraps it instead of cutting it."""
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def propagation(settings: Settings) -> str:
    """How soon running servers apply a change made here: one poll of the change feed, plus the query."""
    return f"{settings.revocation_sync_interval + 0.5:g} s"
