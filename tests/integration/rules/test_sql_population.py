"""The SQL lowering on DuckDB over a synthetic population (moved from tests/unit/rules/test_sql.py: 3,000
patients, every sample study): the same outcomes and criterion values as screen() at two instants, and
``screener feasibility --engine duckdb`` reports what the Polars engine reports."""

from __future__ import annotations

import polars as pl
import pytest

pytest.importorskip("duckdb", reason="duckdb is not installed")
pytest.importorskip("sqlglot", reason="sqlglot is not installed")

from connectors.synthetic.population import generate_frames
from screener.rules import screen
from screener.rules.screen import screen_detail
from screener.rules.sql import criterion_names
from screener.sql_duckdb import run_parquet, write_parquet
from screener.state import PatientState
from tests.unit.rules.test_sql import INSTANTS, ROOT, _supported

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    persons, facts = generate_frames(3000, seed=7, now=INSTANTS[0])
    state = PatientState(persons=persons, facts=facts)
    folder = tmp_path_factory.mktemp("sqlpop")
    return state, write_parquet(state, folder)


def _differences(want: pl.DataFrame, got: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """The rows of ``want`` that have no row of the same ``key`` in ``got``, or whose other columns differ from it
    (null equals only null): empty when every row of ``want`` is in ``got``."""
    values = [c for c in want.columns if c not in key]
    found = got.select(*key, *values).with_columns(pl.lit(True).alias(":found"))
    both = want.join(found, on=key, how="left", suffix=":sql", nulls_equal=True)
    differ = pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}:sql")) for c in values)
    return both.filter(pl.col(":found").is_null() | differ)


@pytest.mark.parametrize("now", INSTANTS, ids=["2026-06-01", "2025-11-30"])
def test_sample_studies_agree_with_screen_on_every_outcome_and_criterion(population, now):
    state, (facts, persons) = population
    studies = _supported()
    got = run_parquet(studies, now, facts, persons, threads=2)
    want = screen(state, studies, now, evidence="none")
    assert got.height == got.select("study_id", "patient_id").n_unique() == want.height
    assert want.height == state.persons.height * len(studies)
    names = pl.DataFrame(
        {"study_id": [s.id for s in studies], "name": [criterion_names(s) for s in studies]},
        schema={"study_id": pl.String, "name": pl.List(pl.String)},
    )
    got = got.join(names, on="study_id", how="left")
    assert got.filter(pl.col("criteria").list.len() != pl.col("name").list.len()).height == 0  # one value a name
    outcomes = set()
    for s in studies:  # every criterion, nested ones too, against the Polars path's detail frame
        cols = criterion_names(s)
        detail = screen_detail(state, s, now).select("patient_id", "outcome", *cols)
        mine = got.filter(pl.col("study_id") == s.id).select(
            "patient_id", "outcome", pl.col("criteria").list.to_struct(fields=cols).struct.unnest()
        )
        wrong = _differences(detail, mine, ["patient_id"])
        assert wrong.height == 0 and mine.height == detail.height, (s.id, wrong.head(5).to_dicts())
        outcomes |= set(detail["outcome"])
    # the engine's path: outcomes and top-level criteria
    wrong = _differences(want.select("study_id", "patient_id", "outcome"), got, ["study_id", "patient_id"])
    assert wrong.height == 0, wrong.head(5).to_dicts()
    top = want.select("study_id", "patient_id", "criteria").explode("criteria").unnest("criteria")
    mine = got.explode("criteria", "name").rename({"criteria": "result"})
    wrong = _differences(
        top.select("study_id", "patient_id", "name", "result"), mine, ["study_id", "patient_id", "name"]
    )
    assert top.height >= want.height and wrong.height == 0, wrong.head(5).to_dicts()
    # the population exercises every outcome, so agreement is not vacuous
    assert outcomes == {"eligible", "possible", "ineligible"}


def test_feasibility_on_duckdb_reports_what_polars_reports(population, monkeypatch):
    """``screener feasibility --engine duckdb`` screens every instant with the generated SQL: the same report."""
    import json

    from click.testing import CliRunner

    import screener.commands.feasibility as command
    from screener.cli import main

    state, _ = population
    monkeypatch.setattr(command, "load_history", lambda store, events: (state.persons, state.facts))
    rule = ROOT / "rules" / "ckd-sglt2-comm.yaml"
    reports = {}
    for engine in ("polars", "duckdb"):
        args = ["feasibility", str(rule), "--store", "unused", "--at", "2026-06-01T12:00:00Z", "--months", "3"]
        result = CliRunner().invoke(main, [*args, "--engine", engine, "--format", "json"])
        assert result.exit_code == 0, result.output
        reports[engine] = json.loads(result.output)
    assert reports["duckdb"] == reports["polars"]
    assert reports["polars"]["eligible"]  # not a vacuous agreement
