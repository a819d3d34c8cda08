"""The test-case runner: expectations, per-criterion checks and the compiled-vs-reference cross-check."""

from __future__ import annotations

from pathlib import Path

import screener.rules.testcases as tc
from screener.rules import load_study

DATA = Path(__file__).parent / "data"


def test_sample_cases_pass_both_ways():
    results = tc.run_study_tests(load_study(DATA / "ckd.yaml"))
    assert [(r.case.name, r.outcome, r.passed) for r in results] == [
        ("typical eligible patient", "eligible", True),
        ("on insulin", "ineligible", True),
        ("no eGFR yet", "possible", True),
    ]
    assert results[0].values["albuminuria"] is None  # nested criteria are reported too
    assert results[0].evidence["on_acei"] == "acei C09AA05 on 2026-05-20"


def test_disagreement_with_the_reference_is_a_failure(monkeypatch):
    study = load_study(DATA / "ckd.yaml")
    real = tc.evaluate_patient

    def skewed(*args, **kwargs):
        _outcome, values = real(*args, **kwargs)
        return "possible", {**values, "adult": None}

    monkeypatch.setattr(tc, "evaluate_patient", skewed)
    result = tc.run_case(study, study.tests[0])
    assert not result.passed
    assert result.failures == [
        "compiled and reference evaluators disagree on the outcome: compiled eligible, reference possible",
        "compiled and reference evaluators disagree on 'adult': compiled true, reference unknown",
    ]
