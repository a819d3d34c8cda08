"""``screener report``: the recruitment and equity report, as one HTML file read from the worklist store."""

from __future__ import annotations

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
        today: date | None = on.date() if on else None
        result = write_report(settings.database_url, out, today=today)
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out} ({result.studies.height} studies)")


COMMANDS: list[click.Command] = [report]
