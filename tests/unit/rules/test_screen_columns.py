"""``screen_columns``: a screen of facts holding only the columns the studies read gives the very same rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from bench._workload import BENCH_NOW, generate_population, write_workload_studies
from screener.rules import load_studies, screen_with_counts
from screener.rules._facts import FACT_COLUMNS
from screener.rules.features import screen_columns
from screener.state import PatientState
from tests._support.marks import first_fast
from tests._support.samples import sample_studies

ROOT = Path(__file__).resolve().parents[3]


def _population(workload: str, n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    if workload == "realistic":
        from bench._realistic_population import generate

        return generate(n, 7, BENCH_NOW)
    return generate_population(n, 7, BENCH_NOW)


# the realistic mix in the loop, the replicas of the sample studies (which the test below screens) in CI
@pytest.mark.parametrize("workload", first_fast("realistic", "replica"))
def test_the_columns_the_studies_read_give_the_same_screen(workload: str, tmp_path: Path) -> None:
    write_workload_studies(workload, 40, tmp_path, ROOT / "rules")
    loaded = load_studies([tmp_path])
    assert not loaded.errors
    studies = loaded.studies
    persons, facts = _population(workload, 600)
    wanted = screen_columns(studies)
    assert set(wanted) <= set(FACT_COLUMNS) and "code" in wanted
    assert len(wanted) < len(FACT_COLUMNS)  # something is left out, or the test shows nothing
    narrow = facts.select([c for c in facts.columns if c in wanted])
    for evidence, rows in (("all", "all"), ("outcomes", "matches")):
        full, counts = screen_with_counts(
            PatientState(persons, facts), studies, BENCH_NOW, evidence=evidence, rows=rows
        )
        less, counts2 = screen_with_counts(
            PatientState(persons, narrow), studies, BENCH_NOW, evidence=evidence, rows=rows
        )
        key = ["study_id", "patient_id"]
        assert_frame_equal(full.sort(key), less.sort(key))
        assert_frame_equal(counts, counts2)
        assert full.height > 0


def test_screen_from_a_parquet_folder_reads_the_studies_columns_with_the_same_rows(tmp_path: Path) -> None:
    """``screener screen --data DIR --engine polars`` (``screen_rows``) reads only the fact columns the studies
    read, and its rows are those of the whole population in memory."""
    from screener.commands.screen import screen_rows

    studies = sample_studies()  # the studies of rules/, loaded once per test process
    persons, facts = generate_population(300, 7, BENCH_NOW)
    persons.write_parquet(tmp_path / "persons.parquet")
    facts.write_parquet(tmp_path / "facts.parquet")
    assert set(screen_columns(studies)) < set(facts.columns)  # the file holds columns the read leaves out
    from_file = screen_rows(studies, BENCH_NOW, "polars", data=str(tmp_path))
    in_memory = screen_rows(studies, BENCH_NOW, "polars", state=PatientState(persons, facts))
    assert_frame_equal(from_file, in_memory)
    assert from_file.filter(pl.col("outcome") != "ineligible").height > 0
