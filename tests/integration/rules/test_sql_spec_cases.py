"""Every spec case through the SQL lowering on DuckDB (moved from tests/unit/rules/test_sql.py: about 200
generated queries, the costliest unit file): each case's outcome and criterion values agree with the case and
with the reference evaluator, and most cases lower at all."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("duckdb", reason="duckdb is not installed")
pytest.importorskip("sqlglot", reason="sqlglot is not installed")

from screener.errors import RuleError
from screener.rules import loads_study
from screener.rules.reference import evaluate_patient
from screener.rules.sql import criterion_names, to_sql
from screener.rules.testcases import state_from_case
from screener.sql_duckdb import duckdb_screen

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location("gen_rules_docs", ROOT / "scripts" / "gen_rules_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_rules_docs"] = module
    spec.loader.exec_module(module)
    return module


GEN = _gen()
SPEC_CASES = [(s, c) for s in GEN.load_specs() for c in s.cases if c.error is None]


@pytest.mark.parametrize("item", SPEC_CASES, ids=[f"{s.path.stem}: {c.title}" for s, c in SPEC_CASES])
def test_spec_case_on_duckdb(item):
    spec, case = item
    failures = []
    for patient in case.patients:
        study = loads_study(GEN.rule_text(case, patient), f"{spec.path.stem}.yaml")
        # at each instant the cases run at: the query is then cached for duckdb_screen (screener.rules.sql)
        instants = dict.fromkeys(tc.now for tc in study.tests) or [NOW]
        try:
            for at in instants:
                to_sql([study], at)
        except RuleError as exc:  # every construct lowers: one that does not is a defect, never a skip
            pytest.fail(f"not lowered to SQL: {str(exc).splitlines()[0]}")
        for tc in study.tests:
            state = state_from_case(tc.events)
            if state.persons.height == 0:
                continue
            row = duckdb_screen(state, [study], tc.now).row(0, named=True)
            values = dict(zip(criterion_names(study), row["criteria"], strict=True))
            person = state.persons.row(0, named=True)
            ref_outcome, ref_values = evaluate_patient(study, person, list(state.facts.iter_rows(named=True)), tc.now)
            if row["outcome"] != tc.expect or row["outcome"] != ref_outcome:
                failures.append(f"{patient.id}: SQL {row['outcome']}, expected {tc.expect}, reference {ref_outcome}")
            for name, want in tc.criteria.items():
                if values[name] != want:
                    failures.append(f"{patient.id}: '{name}' SQL {values[name]}, expected {want}")
            failures += [
                f"{patient.id}: '{n}' SQL {values[n]}, reference {ref_values.get(n)}"
                for n in values
                if values[n] != ref_values.get(n)
            ]
    assert not failures, "\n".join(failures)


def test_a_good_share_of_spec_sections_runs_on_duckdb():
    """Guards against the spec cases above skipping everything: most cases must lower to SQL."""
    lowered = 0
    for _spec, case in SPEC_CASES:
        try:
            to_sql([loads_study(GEN.rule_text(case, case.patients[0]), "x.yaml")], NOW)
            lowered += 1
        except RuleError:
            pass
    assert lowered >= 20, lowered
