"""Every spec case of tests/spec/*.yaml through the compiled Polars path AND the reference evaluator, and
docs/rules.md equal to the page generated from them (scripts/gen_rules_docs.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from screener.errors import RuleError
from screener.rules import loads_study
from screener.rules.testcases import run_study_tests

ROOT = Path(__file__).resolve().parents[3]


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location("gen_rules_docs", ROOT / "scripts" / "gen_rules_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_rules_docs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


GEN = _gen()
SPECS = GEN.load_specs()
CASES = [(s, c) for s in SPECS for c in s.cases]


def _id(item: Any) -> str:
    spec, case = item
    return f"{spec.path.stem}: {case.title}"


@pytest.mark.parametrize("item", CASES, ids=[_id(i) for i in CASES])
def test_spec_case(item):
    spec, case = item
    if case.error is not None:
        with pytest.raises(RuleError) as info:
            loads_study(GEN.rule_text(case), f"{spec.path.stem}.yaml")
        message = str(info.value).lower()
        missing = [w for w in case.error if w.lower() not in message]
        assert not missing, f"the error does not mention {missing}: {info.value}"
        return
    failures = []
    for patient in case.patients:
        study = loads_study(GEN.rule_text(case, patient), f"{spec.path.stem}.yaml")
        for result in run_study_tests(study):
            failures += [f"{patient.id} (expected {GEN._word(patient.expect)}): {f}" for f in result.failures]
    assert not failures, "\n".join(failures)


def test_every_section_has_cases_and_every_case_patients_with_distinct_ids():
    assert len(SPECS) >= 10
    for spec in SPECS:
        assert spec.cases, spec.path
        for case in spec.cases:
            ids = [p.id for p in case.patients]
            assert len(ids) == len(set(ids)), (spec.path, case.title)


def test_criterion_for_each_value_type():
    case = GEN.Case("t", "x|count", "number", "2026-06-01T12:00:00Z", {})
    assert GEN.criterion(case, 2) == "(x|count) == 2"
    assert GEN.criterion(case, None) == "(x|count) == 0"
    assert GEN.criterion(case, 2.5) == "(x|count) >= 2.499999 && (x|count) <= 2.500001"
    text = GEN.Case("t", "s|latest_code", "string", "2026-06-01T12:00:00Z", {})
    assert GEN.criterion(text, "E11") == "(s|latest_code) == 'E11'"
    assert GEN.criterion(text, None) == "(s|latest_code) == ''"


def test_a_malformed_spec_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "section: x\nsemantics: y\ncases:\n"
        "  - {title: t, expr: 'a|ever', patients: [{id: P1, expect: true}, {id: P2, expect: 3}]}\n"
    )
    with pytest.raises(ValueError, match="case 1 \\(t\\): patient P2: expected value 3 is not a bool"):
        GEN.load_spec(bad)


def test_docs_are_up_to_date():
    committed = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert committed == GEN.render(SPECS), "docs/rules.md is stale: run python scripts/gen_rules_docs.py"
