"""``screener rules check|test|explain|render``: work with study rule files.

screener rules check PATH...                      load and type-check; exit 1 on any error
screener rules test PATH...                       run each file's test cases (compiled + reference)
screener rules explain FILE --patient H.json      per-criterion table for one patient
screener rules render FILE [--public]             plain-English Markdown (--public: for patients)
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from screener.errors import EventError, RuleError

__all__ = ["COMMANDS", "rules"]


def _parse_time(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"'{text}' is not a timestamp like 2026-06-01T09:00:00Z") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@click.group("rules")
def rules() -> None:
    """Check, test, explain and render study rule files."""


@rules.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def check(paths: tuple[Path, ...]) -> None:
    """Load and type-check rule files (files or directories of *.yaml); exit 1 on any error."""
    from screener.rules import load_studies

    result = load_studies(paths)
    for err in result.errors:
        click.echo(err.format(), err=True)
    for study in result.studies:
        click.echo(f"ok {study.path}: {study.id} ({len(study.all_criteria())} criteria, {len(study.tests)} tests)")
    click.echo(f"{len(result.studies)} studies loaded, {len(result.errors)} error(s)")
    if result.errors:
        raise SystemExit(1)


@rules.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="Show every criterion of passing cases too.")
def test(paths: tuple[Path, ...], verbose: bool) -> None:
    """Run each rule file's test cases through the compiled engine and the reference evaluator.

    A case fails when the outcome or a per-criterion expectation differs, or when the two evaluators
    disagree. Exit 1 on any failure or load error.
    """
    from screener.rules import load_studies
    from screener.rules.testcases import run_study_tests

    result = load_studies(paths)
    for err in result.errors:
        click.echo(err.format(), err=True)
    total = failed = 0
    for study in result.studies:
        if not study.tests:
            click.echo(f"{study.path}: warning: {study.id} has no test cases")
        for r in run_study_tests(study):
            total += 1
            where = f"{study.path}:{r.case.line}"
            if r.passed:
                click.echo(f"PASS {where}: {study.id}: {r.case.name} ({r.outcome})")
                if verbose:
                    for name, value in r.values.items():
                        click.echo(f"       {name} = {value} ({r.evidence[name]})")
                continue
            failed += 1
            click.echo(f"FAIL {where}: {study.id}: {r.case.name}")
            for f in r.failures:
                click.echo(f"       {f}")
    click.echo(f"{total} test case(s), {failed} failed, {len(result.errors)} load error(s)")
    if failed or result.errors:
        raise SystemExit(1)


@rules.command("explain")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--patient",
    "history",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Patient history JSON: {"person": {...}, "events": [...]} (the test-case shape).',
)
@click.option("--at", "at", default=None, help="Screening time, ISO 8601 (default: now, UTC).")
def explain_cmd(file: Path, history: Path, at: str | None) -> None:
    """Per-criterion table (value and the evidence that decided it) for one patient."""
    from screener.rules import load_study
    from screener.rules.explain import explain, format_table, load_history

    try:
        study = load_study(file)
        events = load_history(history)
    except (RuleError, EventError) as exc:
        click.echo(
            f"{history if isinstance(exc, EventError) else ''}{': ' if isinstance(exc, EventError) else ''}{exc}",
            err=True,
        )
        raise SystemExit(1) from exc
    click.echo(format_table(explain(study, events, _parse_time(at))))


@rules.command("render")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public", is_flag=True, help="For patients: lay summary, no study id, no code lists.")
def render(file: Path, public: bool) -> None:
    """Print the study and its criteria as plain-English Markdown."""
    from screener.rules import load_study

    try:
        study = load_study(file)
    except RuleError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(1) from exc
    click.echo(study.render_markdown(public=public), nl=False)


COMMANDS: list[click.Command] = [rules]
