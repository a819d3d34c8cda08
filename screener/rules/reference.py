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

from screener.rules._ref_facts import Facts, calendar_months, finite, value_of, whole_years
from screener.rules.model import ConceptSet, Criterion, Study
from screener.rules.windows import parse_window
from screener.state import PatientState
from screener.vocab import NOT_DONE_STATUSES

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


def _arith(op: str, a: Value, b: Value) -> Value:
    if op in ("/", "//", "%") and b == 0:
        return None
    ops: dict[str, Callable[[], Value]] = {
        "+": lambda: a + b,
        "-": lambda: a - b,
        "*": lambda: a * b,
        "/": lambda: a / b,
        "//": lambda: float(math.floor(a / b)),
        "%": lambda: a - math.floor(a / b) * b,
        "^": lambda: a**b,
    }
    try:
        out = ops[op]()
    except (OverflowError, ZeroDivisionError, ValueError):
        return None  # arithmetic overflow is unknown, never a crash
    return finite(float(out) if isinstance(out, int) and not isinstance(out, bool) else out)


def _reads_status(node: Any) -> bool:
    if node is None or isinstance(node, jp.Literal):
        return False
    if isinstance(node, jp.Identifier):
        return bool(node.relative and node.value == "status")
    return any(_reads_status(getattr(node, k, None)) for k in ("left", "right", "test", "consequent", "alternate"))


class _Patient:
    def __init__(self, study: Study, person: dict[str, Any], facts: list[dict[str, Any]], now: datetime) -> None:
        self.study = study
        self.person = person
        self.all_facts = facts
        self.now = now
        #: the fact a filter is being evaluated on, and its concept set
        self.fact: dict[str, Any] | None = None
        self.fact_concept: ConceptSet | None = None

    # -- attributes
    def attribute(self, name: str) -> Value:
        p = self.person
        today = self.now.date()
        birth: date | None = p.get("birth_date")
        if name == "age":
            return None if birth is None else whole_years(birth, today)
        if name == "age_days":
            return None if birth is None else float((today - birth).days)
        if name == "age_months":
            return None if birth is None else calendar_months(birth, today)
        if name == "imd_decile":
            d = p.get("imd_decile")
            return None if d is None else float(d)
        if name == "imd_quintile":
            d = p.get("imd_decile")
            return None if d is None else float(math.floor((d + 1) / 2))
        if name == "registered_days":
            starts = [
                f["occurred_at"]
                for f in self.all_facts
                if f.get("kind") == "registration"
                and f["occurred_at"] <= self.now
                and (f.get("ended_at") is None or f["ended_at"] >= self.now)
                and f.get("status") not in NOT_DONE_STATUSES
            ]
            return float((self.now - min(starts)) // timedelta(days=1)) if starts else None
        return p.get(name)

    # -- facts
    def field(self, name: str) -> Value:
        f, concept = self.fact, self.fact_concept
        assert f is not None and concept is not None
        if name in ("value", "ref_low", "ref_high"):
            return value_of(f, concept, name)
        if name == "dose":
            return f.get("dose_value")
        if name == "encounter":
            return f.get("encounter_id")
        if name == "duration_days":
            end = f.get("ended_at")
            return None if end is None else (end - f["occurred_at"]) / timedelta(days=1)
        return f.get(name)

    def current_encounters(self) -> set[str]:
        return {
            f.get("encounter_id") or f["event_id"]
            for f in self.all_facts
            if f.get("kind") == "visit"
            and f["occurred_at"] <= self.now
            and (f.get("ended_at") is None or f["ended_at"] >= self.now)
        }

    def source(self, node: Any, upcoming: bool = False) -> Facts:
        """The facts of ``name`` or ``name[PRED]`` (a fact whose PRED is not true is left out)."""
        pred = None
        if isinstance(node, jp.FilterExpression):
            node, pred = node.subject, node.expression
        concept = self.study.concepts[node.value]
        skip_not_done = not upcoming and (pred is None or not _reads_status(pred))
        hits = []
        for f in self.all_facts:
            if not concept.matches(f["system"], f["code"]):
                continue
            if skip_not_done and f.get("status") in NOT_DONE_STATUSES:
                continue
            if pred is not None:
                self.fact, self.fact_concept = f, concept
                try:
                    keep = self.eval(pred)
                finally:
                    self.fact = self.fact_concept = None
                if keep is not True:
                    continue
            hits.append(f)
        return Facts(hits, self.now, self.person)

    def transform(self, node: jp.Transform) -> Value:
        subject = node.subject
        name = node.name
        cname = subject.subject.value if isinstance(subject, jp.FilterExpression) else subject.value
        concept = self.study.concepts[cname]
        args = list(node.args or [])
        window = gap = None
        other = None
        if name in ("after", "before"):
            other, window = self.source(args[0]), parse_window(args[1].value)
        elif name == "episodes":
            gap = parse_window(args[0].value)
            window = parse_window(args[1].value) if len(args) > 1 else None
        elif name == "continuous":
            window, gap = parse_window(args[0].value), parse_window(args[1].value)
        elif args:
            window = parse_window(args[0].value)
        return self.source(subject, upcoming=name == "upcoming").transform(concept, name, window, gap, other)

    # -- expressions
    def eval(self, node: Any) -> Value:
        if isinstance(node, jp.Literal):
            v = node.value
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        if isinstance(node, jp.Identifier):
            return self.field(node.value) if node.relative else self.attribute(node.value)
        if isinstance(node, jp.Transform):
            return self.transform(node)
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
            right = node.right
            if op == "in" and isinstance(right, jp.Identifier) and right.relative:  # SET in .qualifiers
                quals = self.field("qualifiers")
                if quals is None:
                    return None
                concept = self.study.concepts[node.left.value]
                return any(concept.matches(*[*q.split("|", 1), None][:2]) for q in quals)
            for a_node, b_node in ((node.left, right), (right, node.left)):
                if (
                    op in ("==", "!=")
                    and isinstance(a_node, jp.Identifier)
                    and a_node.relative
                    and a_node.value == "encounter"
                    and isinstance(b_node, jp.Literal)
                    and b_node.value == "current"
                ):
                    enc = self.field("encounter")
                    here = None if enc is None else enc in self.current_encounters()
                    return here if here is None or op == "==" else not here
            a, b = self.eval(node.left), self.eval(right)
            if op == "&&":
                return _and(a, b)
            if op == "||":
                return _or(a, b)
            if a is None or b is None:
                return None
            if op == "in":
                return a in b
            compare: dict[str, Callable[[], Value]] = {
                "==": lambda: a == b,
                "!=": lambda: a != b,
                "<": lambda: a < b,
                "<=": lambda: a <= b,
                ">": lambda: a > b,
                ">=": lambda: a >= b,
            }
            if op in compare:
                return compare[op]()
            return _arith(op, a, b)
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
