"""``screener report``: the recruitment and equity report, as one HTML file read from the worklist store."""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path

import click

from screener.errors import ScreenerError
from screener.settings import load_settings

__all__ = ["COMMANDS", "report"]


@click.command("report")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="HTML file to write.",
)
@click.option(
    "--database-url",
    envvar="SCREENER_DATABASE_URL",
    default=None,
    help="Worklist store to read [env: SCREENER_DATABASE_URL].",
)
@click.option(
    "--date",
    "on",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Compute time elapsed as of this date (default: today, UTC).",
)
def report(out: Path, database_url: str | None, on: datetime | None) -> None:
    """Write the recruitment and equity report (HTML, inline charts, counts 1-7 suppressed)."""
    from screener.report import write_report

    try:
        settings = load_settings(database_url=database_url)
        url = _find_database(settings.database_url, explicit=bool(database_url) or _configured())
        today: date | None = on.date() if on else None
        result = write_report(url, out, today=today)
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out} ({result.studies.height} studies)")


#: Where ``screener demo`` keeps its worklist when run with the default ``--workdir``.
DEMO_DATABASE = Path("screener-demo") / "screener.db"


def _configured() -> bool:
    return bool(os.environ.get("SCREENER_DATABASE_URL") or os.environ.get("SCREENER_CONFIG"))


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _find_database(url: str, *, explicit: bool) -> str:
    """The store to read: ``url`` when it was given (a SQLite file must exist); otherwise the default store, or
    the demo's (``screener-demo/screener.db``) when only that one exists.

    :raises ConfigError: naming every path tried."""
    from screener.errors import ConfigError

    path = _sqlite_path(url)
    if explicit:
        if path is not None and not path.exists():
            raise ConfigError(
                f"no worklist database at {path.resolve()} (from the database URL)", setting="database_url"
            )
        return url
    tried = [p for p in (path, DEMO_DATABASE) if p is not None]
    for candidate in tried:
        if candidate.exists():
            return f"sqlite:///{candidate.resolve()}"
    names = " and ".join(str(p.resolve()) for p in tried)
    raise ConfigError(
        f"no worklist database found: tried {names}; run `screener demo` here first, or pass --database-url "
        "(or SCREENER_DATABASE_URL) naming the worklist store",
        setting="database_url",
    )


COMMANDS: list[click.Command] = [report]
