"""Run a study's own test cases through the compiled path AND the reference evaluator.

A case passes when the compiled outcome equals ``expect``, every per-criterion expectation holds, and the
reference evaluator agrees with the compiled path on the outcome and on every criterion's value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from screener.rules.model import Study, TestCase
from screener.rules.reference import evaluate_patient
from screener.rules.screen import screen_detail
from screener.state import PatientState, apply_events

__all__ = ["CaseResult", "run_case", "run_study_tests", "state_from_case"]


def _word(v: bool | None) -> str:
    return "unknown" if v is None else ("true" if v else "false")


@dataclass
class CaseResult:
    """The result of one test case; ``failures`` explains every mismatch in plain words."""

    study_id: str
    case: TestCase
    outcome: str
    values: dict[str, bool | None]
    evidence: dict[str, str]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def state_from_case(events: Any) -> PatientState:
    """The patient state a list of canonical events builds (via :func:`screener.state.apply_events`)."""
    state, _ = apply_events(PatientState(), list(events))
    return state


def run_case(study: Study, case: TestCase) -> CaseResult:
    """Evaluate one case both ways and compare with the expectations."""
    state = state_from_case(case.events)
    detail = screen_detail(state, study, case.now).row(0, named=True)
    names = [c.name for c in study.all_criteria()]
    values = {n: detail[n] for n in names}
    evidence = {n: detail[f"{n}:evidence"] for n in names}
    result = CaseResult(study.id, case, detail["outcome"], values, evidence)
    if detail["outcome"] != case.expect:
        why = "; ".join(
            f"{c.name}={_word(values[c.name])} ({evidence[c.name]})"
            for c in study.criteria
            if (c.group == "include" and values[c.name] is not True)
            or (c.group == "exclude" and values[c.name] is not False)
        )
        result.failures.append(f"expected {case.expect}, got {detail['outcome']}" + (f": {why}" if why else ""))
    for name, want in case.criteria.items():
        if values[name] != want:
            result.failures.append(
                f"criterion '{name}': expected {_word(want)}, got {_word(values[name])} ({evidence[name]})"
            )
    person = state.persons.row(0, named=True) if state.persons.height else {}
    facts = list(state.facts.iter_rows(named=True))
    ref_outcome, ref_values = evaluate_patient(study, person, facts, case.now)
    if ref_outcome != detail["outcome"]:
        result.failures.append(
            f"compiled and reference evaluators disagree on the outcome: compiled "
            f"{detail['outcome']}, reference {ref_outcome}"
        )
    for name in names:
        if ref_values.get(name) != values[name]:
            result.failures.append(
                f"compiled and reference evaluators disagree on '{name}': compiled "
                f"{_word(values[name])}, reference {_word(ref_values.get(name))}"
            )
    return result


def run_study_tests(study: Study) -> list[CaseResult]:
    """Every test case of ``study``, in file order."""
    return [run_case(study, case) for case in study.tests]
