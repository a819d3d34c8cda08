"""Helpers for the rule-language tests: a study from a few criteria, a state from plain rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest

from screener.rules import Study, loads_study, screen
from screener.rules.screen import screen_detail
from screener.state import FACTS_SCHEMA, PERSONS_SCHEMA, PatientState

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

CONCEPTS = """\
concepts:
  dx:      {icd10: [E11], exclude: {icd10: [E11.65]}}
  drug:    {atc: [A10B]}
  glucose: {loinc: ["2345-7"], unit: mmol/L}
  hba1c:   {loinc: ["4548-4"], unit: mmol/mol}
  creat:   {loinc: ["2160-0"], unit: umol/L}
  score:   {loinc: ["72133-2"], unit: "{score}"}
  stroke:  {icd10: [I63], snomed: ["230690007"]}
"""


def study_text(
    include: Any = None, exclude: Any = None, settings: list[str] | None = None, concepts: str = CONCEPTS
) -> str:
    head = (
        "study:\n  id: T-1\n  title: Test study\n  sponsor: commercial\n  target: 10\n"
        "  opens: 2026-01-01\n  closes: 2026-12-31\n  team: test-team\n"
    )
    if settings is not None:
        head += f"  settings: {json.dumps(settings)}\n"
    text = head + concepts
    if include:
        text += f"include: {json.dumps(include)}\n"
    if exclude:
        text += f"exclude: {json.dumps(exclude)}\n"
    return text


def make_study(
    include: Any = None, exclude: Any = None, settings: list[str] | None = None, concepts: str = CONCEPTS
) -> Study:
    return loads_study(study_text(include, exclude, settings, concepts), "t.yaml")


def make_state(persons: list[dict[str, Any]], facts: list[dict[str, Any]] = ()) -> PatientState:  # type: ignore[assignment]
    prow = []
    for p in persons:
        row = {k: None for k in PERSONS_SCHEMA}
        row.update({"do_not_contact": False, "deceased": False})
        row.update(p)
        prow.append(row)
    frow = []
    for i, f in enumerate(facts):
        row = {k: None for k in FACTS_SCHEMA}
        row.update({"event_id": f"e{i:05d}", "kind": "measurement", "status": "active"})
        row.update(f)
        frow.append(row)
    return PatientState(
        persons=pl.DataFrame(prow, schema=PERSONS_SCHEMA, orient="row"),
        facts=pl.DataFrame(frow, schema=FACTS_SCHEMA, orient="row") if frow else pl.DataFrame(schema=FACTS_SCHEMA),
    )


def fact(
    patient: str, system: str, code: str, at: datetime, value: float | None = None, unit: str | None = None
) -> dict[str, Any]:
    return {"patient_id": patient, "system": system, "code": code, "occurred_at": at, "value": value, "unit": unit}


def evaluate(study: Study, state: PatientState, now: datetime = NOW) -> dict[str, dict[str, Any]]:
    """patient -> {criterion: value, '<name>:evidence': text, 'outcome': ...} via the compiled path."""
    rows = screen_detail(state, study, now).to_dicts()
    return {r["patient_id"]: r for r in rows}


def one(expr: str, state: PatientState, now: datetime = NOW, patient: str = "P1") -> tuple[Any, str]:
    """Value and evidence of one criterion ``c: expr`` for one patient."""
    study = make_study({"c": expr})
    row = evaluate(study, state, now)[patient]
    # The screen() contract and the detail frame must agree.
    s = screen(state, [study], now).filter(pl.col("patient_id") == patient)
    crit = {c["name"]: c for c in s["criteria"][0]}
    assert crit["c"]["result"] == row["c"]
    assert crit["c"]["evidence"] == row["c:evidence"]
    return row["c"], row["c:evidence"]


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def kit() -> Any:
    """The helpers above as one fixture (test modules cannot import conftest under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        NOW=NOW,
        CONCEPTS=CONCEPTS,
        study_text=study_text,
        make_study=make_study,
        make_state=make_state,
        fact=fact,
        evaluate=evaluate,
        one=one,
    )
