"""``screener screen RULES...``: screen a whole population once (batch), on Polars, DuckDB or Spark.

The population is Parquet (``--data DIR`` with ``facts.parquet`` and ``persons.parquet``, as
:func:`screener.sql_duckdb.write_parquet` writes them; for Spark any URL its file systems read), the history store
(``--store URL``) or an events file (``--events FILE``). ``--engine polars`` runs :func:`screener.rules.screen`;
``duckdb`` and ``spark`` run screener's own generated SQL (:mod:`screener.rules.sql`) and give identical rows.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import click
import polars as pl

from screener.commands.feasibility import _parse_time, load_history
from screener.errors import RuleError, ScreenerError
from screener.rules.model import Study
from screener.state import PatientState
from screener.vocab import MATCH_OUTCOMES, OUTCOMES

__all__ = ["COMMANDS", "ENGINES", "engine_outcomes", "screen_rows"]

ENGINES = ("polars", "duckdb", "spark")
_CRIT = pl.Struct({"name": pl.String, "result": pl.Boolean})


def _top_level(rows: pl.DataFrame, studies: Sequence[Study]) -> pl.DataFrame:
    """SQL rows (every criterion's value, :func:`criterion_names` order) -> top-level ``criteria`` structs."""
    from screener.rules.sql import criterion_names

    parts = []
    for s in studies:
        names = criterion_names(s)
        structs = [
            pl.struct(pl.lit(c.name).alias("name"), pl.col("criteria").list.get(names.index(c.name)).alias("result"))
            for c in s.criteria
        ]
        crit = pl.concat_list(structs) if structs else pl.lit([], dtype=pl.List(_CRIT))
        parts.append(rows.filter(pl.col("study_id") == s.id).with_columns(crit.alias("criteria")))
    return pl.concat(parts) if parts else rows


def screen_rows(
    studies: Sequence[Study],
    now: datetime,
    engine: str,
    *,
    data: str | None = None,
    state: PatientState | None = None,
    spark_master: str = "local[2]",
) -> pl.DataFrame:
    """``study_id, patient_id, outcome, criteria`` (top-level ``{name, result}``), sorted by study (in
    ``studies`` order) and patient, from the Parquet folder/URL ``data`` or an in-memory ``state``."""
    if (data is None) == (state is None):
        raise ValueError("give exactly one of data and state")
    if engine == "polars":
        from screener.rules import screen
        from screener.rules.features import screen_columns

        if state is None:
            assert data is not None
            base = Path(data)
            # only the fact columns these studies read (the others would be read for nothing: same rows)
            wanted = set(screen_columns(studies))
            scan = pl.scan_parquet(base / "facts.parquet")
            scan = scan.select([c for c in scan.collect_schema() if c in wanted])
            state = PatientState(persons=pl.read_parquet(base / "persons.parquet"), facts=scan.collect())
        out = screen(state, studies, now, evidence="none").select(
            "study_id",
            "patient_id",
            "outcome",
            pl.col("criteria").list.eval(
                pl.struct(pl.element().struct.field("name"), pl.element().struct.field("result"))
            ),
        )
    else:
        with tempfile.TemporaryDirectory(prefix="screener-screen-") as tmp:
            if state is not None:
                from screener.sql_duckdb import write_parquet

                write_parquet(state, tmp)
                data = tmp
            assert data is not None
            facts, persons = f"{data.rstrip('/')}/facts.parquet", f"{data.rstrip('/')}/persons.parquet"
            if engine == "duckdb":
                from screener.sql_duckdb import run_parquet

                rows = run_parquet(studies, now, Path(facts), Path(persons))
            elif engine == "spark":
                from screener.sql_spark import spark_screen, spark_session

                rows = spark_screen(spark_session(spark_master), studies, now, facts, persons)
            else:
                raise ValueError(f"unknown engine {engine!r} (expected one of {', '.join(ENGINES)})")
        out = _top_level(rows, studies)
    order = pl.DataFrame({"study_id": [s.id for s in studies], "_o": list(range(len(studies)))})
    return out.join(order, on="study_id").sort("_o", "patient_id").drop("_o")


def engine_outcomes(
    engine: str, spark_master: str = "local[2]"
) -> Callable[[PatientState, Study, datetime], pl.DataFrame]:
    """``(state, study, at) -> patient_id, outcome`` of the eligible and possible patients, on ``engine``
    (the hook :func:`screener.feasibility.feasibility` screens each instant with)."""

    def outcomes(state: PatientState, study: Study, at: datetime) -> pl.DataFrame:
        rows = screen_rows([study], at, engine, state=state, spark_master=spark_master)
        return rows.filter(pl.col("outcome").is_in(MATCH_OUTCOMES)).select("patient_id", "outcome")

    return outcomes


@click.command("screen")
@click.argument("rules", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--at", "at", default=None, help="Instant to screen at (default: now), e.g. 2026-06-01T09:00:00Z.")
@click.option("--data", default=None, help="Folder or URL with facts.parquet and persons.parquet.")
@click.option("--store", envvar="SCREENER_STATE_URL", default=None, help="History store URL (instead of --data).")
@click.option(
    "--events", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="NDJSON events file."
)
@click.option("--engine", type=click.Choice(ENGINES), default="polars", show_default=True)
@click.option("--spark-master", default="local[2]", show_default=True, help="Spark master URL (--engine spark).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the rows as Parquet.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def screen_command(
    rules: tuple[Path, ...],
    at: str | None,
    data: str | None,
    store: str | None,
    events: Path | None,
    engine: str,
    spark_master: str,
    out: Path | None,
    fmt: str,
) -> None:
    """Screen every patient against the studies in RULES (files or folders of *.yaml) at one instant.

    Prints the patients per study and outcome; --out writes one row per (study, patient): study_id,
    patient_id, outcome and the top-level criteria's results. Every engine gives the same rows.
    """
    from screener.rules import load_studies

    files = sorted(f for r in rules for f in (sorted(r.glob("*.yaml")) if r.is_dir() else [r]))
    try:
        studies = load_studies(files).studies
        if not studies:
            raise click.UsageError("no study in RULES")
        now = _parse_time(at)
        if data is not None:
            rows = screen_rows(studies, now, engine, data=data, spark_master=spark_master)
        else:
            persons, facts = load_history(store, events)
            state = PatientState(persons=persons, facts=facts)
            rows = screen_rows(studies, now, engine, state=state, spark_master=spark_master)
    except RuleError as exc:
        raise click.ClickException(exc.format()) from exc
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    if out is not None:
        rows.write_parquet(out)
    counts = {s.id: dict.fromkeys(OUTCOMES, 0) for s in studies}
    for study_id, outcome, n in rows.group_by("study_id", "outcome").len().iter_rows():
        counts[study_id][outcome] = int(n)
    if fmt == "json":
        click.echo(json.dumps({"at": now.isoformat(), "engine": engine, "studies": counts}, indent=2))
    else:
        for study_id, by in counts.items():
            click.echo(f"{study_id}: " + ", ".join(f"{k} {v}" for k, v in by.items()))


COMMANDS: list[click.Command] = [screen_command]
