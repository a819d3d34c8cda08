"""``screener feasibility RULE_FILE`` and ``screener rules diff OLD NEW``: a study against the history.

Both read the history from the history store (``--store URL``, default ``SCREENER_STATE_URL``) or from a file of
canonical events (``--events FILE``: NDJSON, one event a line, as ``screener connect ... --stdout`` writes them).
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
import polars as pl

from screener.errors import EventError, RuleError, ScreenerError

if TYPE_CHECKING:
    from screener.rules.model import Study

__all__ = ["COMMANDS", "diff", "feasibility", "load_history"]


def _parse_time(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"'{text}' is not a timestamp like 2026-06-01T09:00:00Z") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def load_events_file(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(persons, facts)`` from an NDJSON file of canonical events, applied in file order.

    :raises EventError: naming the file and line of the first invalid event.
    """
    from screener.events import parse_event
    from screener.state import PatientState, apply_events

    events = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                events.append(parse_event(line, source=f"{path}:{n}"))
            except EventError as exc:
                raise EventError(f"{path}:{n}: {exc}") from exc
    state, _ = apply_events(PatientState(), events)
    return state.persons, state.facts


def load_history(store: str | None, events: Path | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The history's ``(persons, facts)`` from an events file, else from the history store at ``store``."""
    if events is not None:
        return load_events_file(events)
    if not store:
        raise click.UsageError("give --events FILE, or --store URL (or set SCREENER_STATE_URL)")
    try:
        from screener.history import open_store
    except ImportError as exc:  # pragma: no cover - the store ships with the package
        raise click.ClickException("this installation has no history store (screener.history)") from exc
    persons, facts = open_store(store).scan()
    return persons.collect(), facts.collect()


def _load_study(path: Path) -> Study:
    from screener.rules import load_study

    return load_study(path)


def _study_from_revision(rev: str, path: Path) -> Study:
    """The rule file ``path`` as it was at git revision ``rev`` (loaded with its real path, for shared concepts)."""
    from screener.rules import loads_study

    repo = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True, text=True, check=False
    )
    if repo.returncode != 0:
        raise click.ClickException(f"{rev!r} is neither a rule file nor a git revision ({path.parent} is no git repo)")
    rel = path.resolve().relative_to(Path(repo.stdout.strip()).resolve())
    shown = subprocess.run(
        ["git", "show", f"{rev}:{rel.as_posix()}"], cwd=repo.stdout.strip(), capture_output=True, text=True, check=False
    )
    if shown.returncode != 0:
        raise click.ClickException(f"cannot read {rel} at revision {rev!r}: {shown.stderr.strip()}")
    return loads_study(shown.stdout, path)


_store_option = click.option(
    "--store",
    envvar="SCREENER_STATE_URL",
    default=None,
    help="History store URL: a folder or s3://bucket/prefix [env: SCREENER_STATE_URL].",
)
_events_option = click.option(
    "--events",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the history from an NDJSON file of canonical events instead of the store.",
)
_format_option = click.option(
    "--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True
)


@click.command("feasibility")
@click.argument("rule_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--at", "at", default=None, help="Instant to screen at (default: now), e.g. 2026-06-01T09:00:00Z.")
@click.option("--months", type=click.IntRange(1, 120), default=12, show_default=True, help="Months of accrual.")
@click.option(
    "--conversion",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Share of newly eligible patients expected to enrol (1.0 gives an upper bound).",
)
@_store_option
@_events_option
@_format_option
@click.option("--engine", type=click.Choice(["polars", "duckdb", "spark"]), default="polars", show_default=True)
@click.option("--spark-master", default="local[2]", show_default=True, help="Spark master URL (--engine spark).")
def feasibility(
    rule_file: Path,
    at: str | None,
    months: int,
    conversion: float,
    store: str | None,
    events: Path | None,
    fmt: str,
    engine: str,
    spark_master: str,
) -> None:
    """How many patients could a study recruit? Screens the history as it stood at past instants.

    Reports eligible and possible patients now, newly eligible patients per month over the last MONTHS months
    (the accrual rate and the months to reach the study's target), and the breakdown by setting, IMD quintile
    and ethnic group. Facts recorded after an instant are never used. Counts of 1-7 are suppressed and the rest
    rounded to 5.
    """
    from screener.feasibility import feasibility as run
    from screener.feasibility import render_feasibility_markdown

    try:
        study = _load_study(rule_file)
        persons, facts = load_history(store, events)
        screen_at = None
        if engine != "polars":
            from screener.commands.screen import engine_outcomes

            screen_at = engine_outcomes(engine, spark_master)
        result = run(persons, facts, study, _parse_time(at), months, screen_at)
    except RuleError as exc:
        raise click.ClickException(exc.format()) from exc
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        click.echo(json.dumps(result.to_json(conversion), indent=2))
    else:
        click.echo(render_feasibility_markdown(result, conversion), nl=False)


@click.command("diff")
@click.argument("old")
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--at", "at", default=None, help="Instant to screen at (default: now).")
@click.option("--show-patients", is_flag=True, help="List the patient ids (for the study team's eyes only).")
@_store_option
@_events_option
@_format_option
def diff(
    old: str,
    new: Path,
    at: str | None,
    show_patients: bool,
    store: str | None,
    events: Path | None,
    fmt: str,
) -> None:
    """Which patients a rule edit would add to and remove from the worklist, before it goes live.

    OLD is the previous rule file, or a git revision (then NEW's path at that revision: `screener rules diff HEAD
    rules/my-study.yaml` compares the committed file with your edit). Exit 0; the counts are the answer.
    """
    from screener.feasibility import render_diff_markdown, rules_diff

    try:
        new_study = _load_study(new)
        old_path = Path(old)
        old_study = _load_study(old_path) if old_path.is_file() else _study_from_revision(old, new)
        persons, facts = load_history(store, events)
        result = rules_diff(persons, facts, old_study, new_study, _parse_time(at))
    except RuleError as exc:
        raise click.ClickException(exc.format()) from exc
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        click.echo(json.dumps(result.to_json(show_patients), indent=2))
    else:
        click.echo(render_diff_markdown(result, show_patients), nl=False)


COMMANDS: list[click.Command] = [feasibility]
