"""The reference evaluator: a small, obviously-correct, per-patient interpreter of the rule language.

It walks pyjexl's AST directly with plain Python values (``None`` = unknown) and shares nothing with the
Polars compiler except the loaded :class:`~screener.rules.model.Study` (concept sets and the parsed AST),
the window arithmetic and the unit table. The property tests and ``screener rules test`` compare it with
:func:`screener.rules.screen` patient by patient. It is slow on purpose: never use it on a hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pyjexl import parser as jp

from screener.rules.model import ConceptSet, Criterion, Study
from screener.rules.units import conversion
from screener.rules.windows import parse_window
from screener.state import PatientState

__all__ = ["evaluate_patient", "outcome_of", "reference_screen"]

Value = Any  # bool | float | str | None


def _and(a: Value, b: Value) -> Value:
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def _or(a: Value, b: Value) -> Value:
    if a is True or b is True:
        return True
    if a is None or b is None:
        return None
    return False


class _Patient:
    def __init__(self, study: Study, person: dict[str, Any], facts: list[dict[str, Any]], now: datetime) -> None:
        self.study = study
        self.person = person
        self.facts = [f for f in facts if f["occurred_at"] <= now]
        self.now = now

    # -- attributes
    def attribute(self, name: str) -> Value:
        p = self.person
        today = self.now.date()
        birth: date | None = p.get("birth_date")
        if name == "age":
            if birth is None:
                return None
            return float(today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day)))
        if name == "age_days":
            return None if birth is None else float((today - birth).days)
        if name == "imd_decile":
            d = p.get("imd_decile")
            return None if d is None else float(d)
        if name == "imd_quintile":
            d = p.get("imd_decile")
            return None if d is None else float(math.floor((d + 1) / 2))
        return p.get(name)

    # -- concept sets
    def transform(self, concept: ConceptSet, name: str, args: list[Any]) -> Value:
        window = parse_window(args[0].value) if args else None
        start = window.start(self.now) if window else None
        hits = [
            f
            for f in self.facts
            if concept.matches(f["system"], f["code"]) and (start is None or f["occurred_at"] >= start)
        ]
        hits.sort(key=lambda f: (f["occurred_at"], f["event_id"]))
        if name in ("ever", "within"):
            return len(hits) > 0
        if name == "count":
            return float(len(hits))
        if name == "days_since":
            if not hits:
                return None
            return float((self.now - hits[-1]["occurred_at"]) // timedelta(days=1))
        values = []
        for f in hits:
            if f["value"] is None:
                continue
            conv = conversion(f["unit"], concept.unit, concept.analyte)
            if conv is None:
                continue  # unknown unit: left out
            values.append(f["value"] * conv[0] + conv[1])
        if not values:
            return None
        if name == "latest":
            return values[-1]
        if name == "earliest":
            return values[0]
        if name == "min":
            return min(values)
        if name == "max":
            return max(values)
        if name == "mean":
            return sum(values) / len(values)
        raise ValueError(f"unknown transform {name}")

    # -- expressions
    def eval(self, node: Any) -> Value:
        if isinstance(node, jp.Literal):
            v = node.value
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        if isinstance(node, jp.Identifier):
            return self.attribute(node.value)
        if isinstance(node, jp.Transform):
            return self.transform(self.study.concepts[node.subject.value], node.name, list(node.args or []))
        if isinstance(node, jp.ArrayLiteral):
            return [self.eval(v) for v in node.value]
        if isinstance(node, jp.UnaryExpression):
            v = self.eval(node.right)
            return None if v is None else (not v)
        if isinstance(node, jp.ConditionalExpression):
            t = self.eval(node.test)
            if t is None:
                return None
            return self.eval(node.consequent) if t else self.eval(node.alternate)
        if isinstance(node, jp.BinaryExpression):
            op = node.operator.symbol
            a, b = self.eval(node.left), self.eval(node.right)
            if op == "&&":
                return _and(a, b)
            if op == "||":
                return _or(a, b)
            if a is None or b is None:
                return None
            if op == "in":
                return a in b
            if op in ("/", "//", "%") and b == 0:
                return None
            ops: dict[str, Callable[[], Value]] = {
                "==": lambda: a == b,
                "!=": lambda: a != b,
                "<": lambda: a < b,
                "<=": lambda: a <= b,
                ">": lambda: a > b,
                ">=": lambda: a >= b,
                "+": lambda: a + b,
                "-": lambda: a - b,
                "*": lambda: a * b,
                "/": lambda: a / b,
                "//": lambda: float(math.floor(a / b)),
                "%": lambda: a - math.floor(a / b) * b,
                "^": lambda: a**b,
            }
            return ops[op]()
        raise TypeError(f"reference evaluator: unsupported node {type(node).__name__}")

    def criterion(self, c: Criterion, out: dict[str, Value]) -> Value:
        if c.kind == "expr":
            value = self.eval(c.ast)
        elif c.kind == "setting":
            s = self.person.get("setting")
            value = None if s is None else s in self.study.settings
        else:
            values = [self.criterion(child, out) for child in c.children]
            if c.kind == "any":
                value = False
                for v in values:
                    value = _or(value, v)
            elif c.kind == "all":
                value = True
                for v in values:
                    value = _and(value, v)
            else:
                t = sum(1 for v in values if v is True)
                u = sum(1 for v in values if v is None)
                value = True if t >= c.at_least else (False if t + u < c.at_least else None)
        out[c.name] = value
        return value


def outcome_of(study: Study, results: dict[str, Value]) -> str:
    """The three-valued outcome from top-level criterion results (see README)."""
    inc = [results[c.name] for c in study.include]
    exc = [results[c.name] for c in study.exclude]
    if any(v is False for v in inc) or any(v is True for v in exc):
        return "ineligible"
    if all(v is True for v in inc) and all(v is False for v in exc):
        return "eligible"
    return "possible"


def evaluate_patient(
    study: Study, person: dict[str, Any], facts: Sequence[dict[str, Any]], now: datetime
) -> tuple[str, dict[str, Value]]:
    """Outcome and every criterion's value (nested included, by name) for one patient."""
    p = _Patient(study, person, list(facts), now.astimezone(UTC))
    results: dict[str, Value] = {}
    for c in study.criteria:
        p.criterion(c, results)
    return outcome_of(study, results), results


def reference_screen(state: PatientState, studies: Sequence[Study], now: datetime) -> list[dict[str, Any]]:
    """Rows ``{study_id, patient_id, outcome, results}`` for every (study, patient), the slow obvious way."""
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for f in state.facts.iter_rows(named=True):
        by_patient.setdefault(f["patient_id"], []).append(f)
    rows = []
    for study in studies:
        for person in state.persons.iter_rows(named=True):
            outcome, results = evaluate_patient(study, person, by_patient.get(person["patient_id"], []), now)
            rows.append(
                {"study_id": study.id, "patient_id": person["patient_id"], "outcome": outcome, "results": results}
            )
    return rows
