"""A re-screen against a few studies narrowed to the patients their gates let through and to the facts they read
(screener.engine._narrow) gives the match rows a screen of everyone with every fact gives."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from screener.engine._narrow import gated_patients, narrowing
from screener.rules import load_studies, screen
from screener.state import PatientState

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def studies() -> dict[str, Any]:
    loaded = load_studies([ROOT / "rules"])
    assert not loaded.errors
    return {s.id: s for s in loaded.studies}


@pytest.fixture(scope="module")
def population() -> PatientState:
    from connectors.synthetic.population import generate_frames

    persons, facts = generate_frames(3000, seed=5, now=NOW)
    return PatientState(persons=persons, facts=facts)


def _matches(state: PatientState, studies: list[Any]) -> pl.DataFrame:
    rows = screen(state, studies, NOW, evidence="outcomes", rows="matches")
    return rows.sort("study_id", "patient_id")


@pytest.mark.parametrize(
    "ids",
    [
        ["CKD-SGLT2-COMM"],  # one gate (type 2 diabetes ever)
        ["NAVIGATOR-R"],  # four gates: a patient needs facts for each
        ["SOUL-T2DM-R", "DAPA-HF-R"],  # two studies: the patients either lets through
    ],
)
def test_the_narrowed_screen_gives_the_same_matches_from_far_fewer_patients(
    studies: dict[str, Any], population: PatientState, ids: list[str]
) -> None:
    chosen = [studies[i] for i in ids]
    narrow = narrowing(chosen, NOW)
    assert narrow is not None and all(g is not None for g in narrow.gates)
    narrowed = narrow.apply(population)
    want = _matches(population, chosen)
    assert want.height > 0, "the population has matches for these studies"
    assert_frame_equal(_matches(narrowed, chosen), want)
    assert narrowed.persons.height < population.persons.height / 3
    assert narrowed.facts.height < population.facts.height / 10, "only the facts the studies read"
    # The rebuild worker's answer from the stored facts is the same set of patients.
    gates = narrow.gate_exprs()
    assert gates is not None
    found = gated_patients(population.facts.lazy(), gates)
    assert found.to_list() == narrowed.persons["patient_id"].sort().to_list()


def test_a_known_match_is_screened_and_a_study_without_gates_screens_everyone(
    studies: dict[str, Any], population: PatientState
) -> None:
    ckd = narrowing([studies["CKD-SGLT2-COMM"]], NOW)
    assert ckd is not None
    outside = population.persons.join(ckd.apply(population).persons, on="patient_id", how="anti")["patient_id"][0]
    kept = ckd.apply(population, keep=pl.Series([outside]))
    assert outside in kept.persons["patient_id"].to_list(), "a patient holding a match is screened (to close it)"
    # OPTIMISE-BP-R's inclusion criteria all read an attribute or are unknown without facts: no gate.
    for chosen in (["OPTIMISE-BP-R"], ["OPTIMISE-BP-R", "CKD-SGLT2-COMM"]):
        narrow = narrowing([studies[i] for i in chosen], NOW)
        assert narrow is not None and narrow.gate_exprs() is None
        whole = narrow.apply(population)
        assert whole.persons.height == population.persons.height
        assert_frame_equal(
            _matches(whole, [studies[i] for i in chosen]), _matches(population, [studies[i] for i in chosen])
        )


def test_studies_that_are_not_compiled_are_not_narrowed() -> None:
    from tests.unit.engine.conftest import MiniStudy

    assert narrowing([MiniStudy("X", icd10="E11")], NOW) is None
    assert narrowing([], NOW) is None
