"""screen(evidence="matches") building the evidence study by study, on the sample studies and a synthetic
population (moved from tests/unit/rules/test_evidence_modes.py, which keeps the same checks on three patients
with the path forced, and the default paths on this population): the modes agree on every outcome and criterion
result, and rows="matches" returns exactly the matched rows of rows="all"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.synthetic.population import generate_frames
from screener.rules import load_studies
from screener.state import PatientState
from tests._support.evidence import SCREEN_MODULE, Screens, check_modes, check_rows_matches

RULES = Path(__file__).resolve().parents[3] / "rules"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # inside the sample studies' recruitment periods


@pytest.fixture(scope="module")
def population() -> PatientState:
    persons, facts = generate_frames(400, seed=3, now=NOW)
    return PatientState(persons, facts)


@pytest.fixture(scope="module")
def studies() -> list:
    loaded = load_studies([RULES])
    assert not loaded.errors
    return loaded.studies


def test_evidence_built_study_by_study_agrees(population, studies, monkeypatch):
    # Many matched rows take the per-study path of evidence="matches"; force it on this small population too.
    monkeypatch.setattr(SCREEN_MODULE, "_SMALL_UNION", 0)
    monkeypatch.setattr(SCREEN_MODULE, "_SMALL_CALL", 0)
    run = Screens()
    check_modes(run, population, studies, NOW)
    check_rows_matches(run, population, studies, NOW)
