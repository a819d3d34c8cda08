"""Differential property test: compiled Polars screening vs the reference evaluator, patient by patient.

Random rules (expressions over a fixed set of concepts, attributes, transforms and windows, in nested groups)
over random patient histories (codes that match, match by prefix, are excluded or unrelated; values in
convertible, unknown and missing units; times on and just past window edges, and in the future). Outcomes and
every criterion's value (nested ones included) must be identical; so must the outcomes and results of the
cheaper evidence modes of screen().
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from screener.errors import RuleError
from screener.rules import loads_study
from screener.rules.reference import reference_screen
from screener.rules.screen import screen, screen_detail
from screener.rules.windows import parse_window
from tests.hypothesis_profiles import examples

WINDOWS = ["30m", "6h", "1d", "7d", "90d", "2w", "1mo", "6mo", "1y"]
EXIST_CONCEPTS = ["dx", "drug", "stroke", "glucose", "hba1c"]
NUM_CONCEPTS = ["glucose", "hba1c", "score"]

_win = st.sampled_from(WINDOWS).map(lambda w: f"('{w}')")
_opt_win = st.one_of(st.just(""), _win)

bool_atom = st.one_of(
    st.sampled_from(EXIST_CONCEPTS).map(lambda c: f"{c}|ever"),
    st.builds(lambda c, w: f"{c}|within{w}", st.sampled_from(EXIST_CONCEPTS), _win),
    st.sampled_from(
        [
            "(sex == 'F')",
            "(sex != 'M')",
            "(ethnic_group in ['asian', 'white'])",
            "(setting == 'hospital')",
            "(site == 'A')",
            "true",
            "false",
            "(age in [60, 65])",
            "(imd_quintile in [1, 2])",
            "(drug|count('1y') in [1, 2])",
        ]
    ),
)
num_atom = st.one_of(
    st.sampled_from(["age", "age_days", "imd_decile", "imd_quintile"]),
    st.builds(
        lambda c, t, w: f"{c}|{t}{w}",
        st.sampled_from(NUM_CONCEPTS),
        st.sampled_from(["latest", "earliest", "min", "max", "mean"]),
        _opt_win,
    ),
    st.builds(lambda c, w: f"{c}|count{w}", st.sampled_from(EXIST_CONCEPTS), _opt_win),
    st.sampled_from(EXIST_CONCEPTS).map(lambda c: f"{c}|days_since"),
    st.integers(0, 120).map(str),
    st.sampled_from(["7.5", "0.5", "53", "0"]),
)


def _num(depth: int) -> st.SearchStrategy[str]:
    if depth <= 0:
        return num_atom
    sub = _num(depth - 1)
    return st.one_of(
        num_atom,
        st.builds(lambda a, op, b: f"({a} {op} {b})", sub, st.sampled_from(["+", "-", "*", "/", "//", "%"]), sub),
        st.builds(lambda t, a, b: f"({t} ? {a} : {b})", _bool(depth - 1), sub, sub),
    )


def _bool(depth: int) -> st.SearchStrategy[str]:
    compare = st.builds(
        lambda a, op, b: f"({a} {op} {b})",
        _num(max(depth - 1, 0)),
        st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
        _num(max(depth - 1, 0)),
    )
    if depth <= 0:
        return st.one_of(bool_atom, compare)
    sub = _bool(depth - 1)
    return st.one_of(
        bool_atom,
        compare,
        st.builds(lambda a, op, b: f"({a} {op} {b})", sub, st.sampled_from(["&&", "||", "==", "!="]), sub),
        st.builds(lambda a, b, c: f"{a} && {b} || {c}", sub, sub, sub),  # precedence without parentheses
        sub.map(lambda a: f"!({a})"),
        st.builds(lambda t, a, b: f"({t} ? {a} : {b})", sub, sub, sub),
    )


@st.composite
def criteria_maps(draw: Any, depth: int = 2, prefix: str = "c") -> dict[str, Any]:
    n = draw(st.integers(1, 3))
    out: dict[str, Any] = {}
    for i in range(n):
        name = f"{prefix}{i}"
        if depth > 0 and draw(st.integers(0, 3)) == 0:
            kind = draw(st.sampled_from(["any", "all", "at_least"]))
            members = draw(criteria_maps(depth - 1, f"{name}_"))
            if kind == "at_least":
                out[name] = {"at_least": draw(st.integers(1, len(members))), "of": members}
            else:
                out[name] = {kind: members}
        else:
            out[name] = draw(_bool(1))
    return out


CONCEPTS = """\
concepts:
  dx:      {icd10: [E11, "E13.1"], exclude: {icd10: [E11.65]}}
  drug:    {atc: [A10B], dmd: ["12345678"]}
  stroke:  {icd10: [I63], snomed: ["230690007"]}
  glucose: {loinc: ["2345-7"], unit: mmol/L}
  hba1c:   {loinc: ["4548-4"], unit: mmol/mol}
  score:   {loinc: ["72133-2"], unit: "{score}"}
"""


def rule_text(include: dict[str, Any], exclude: dict[str, Any] | None, settings_: list[str] | None) -> str:
    text = (
        "study:\n  id: PROP-1\n  title: t\n  sponsor: commercial\n  target: 1\n  opens: 2026-01-01\n"
        "  closes: 2026-12-31\n  team: t\n"
    )
    if settings_:
        text += f"  settings: {json.dumps(settings_)}\n"
    text += CONCEPTS + f"include: {json.dumps(include)}\n"
    if exclude:
        text += f"exclude: {json.dumps(exclude, sort_keys=True)}\n"
    return text


CODES = [
    ("ICD10", "E11"),
    ("ICD10", "E11.9"),
    ("ICD10", "e119"),
    ("ICD10", "E11.65"),
    ("ICD10", "E1165"),
    ("ICD10", "E13.1"),
    ("ICD10", "E13.2"),
    ("ICD10", "E10"),
    ("ICD10", "I63.9"),
    ("ATC", "A10BA02"),
    ("ATC", "A10AB01"),
    ("DMD", "12345678"),
    ("DMD", "123456789"),
    ("SNOMED", "230690007"),
    ("LOINC", "2345-7"),
    ("LOINC", "4548-4"),
    ("LOINC", "72133-2"),
    ("LOINC", "1234-5"),
    (None, None),
]
UNITS = ["mmol/L", "mg/dL", "mmol/mol", "%", None, "furlongs", "MMOL/L", "µmol/L", "1"]


@st.composite
def populations(draw: Any, now: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from screener.rules.windows import Window

    edges = []
    for w in WINDOWS:
        start = parse_window(w).start(now)
        edges += [start, start - timedelta(microseconds=1), start + timedelta(seconds=1)]
    edges += [now, now + timedelta(minutes=1), Window(3, "y").start(now)]
    persons, facts = [], []
    for i in range(draw(st.integers(1, 6))):
        pid = f"P{i}"
        persons.append(
            {
                "patient_id": pid,
                "birth_date": draw(st.one_of(st.none(), st.dates(date(1930, 1, 1), date(2026, 6, 1)))),
                "sex": draw(st.sampled_from(["F", "M", "O", "U", None])),
                "ethnic_group": draw(st.sampled_from(["asian", "black", "white", None])),
                "imd_decile": draw(st.one_of(st.none(), st.integers(1, 10))),
                "setting": draw(st.sampled_from(["hospital", "community", None])),
                "site": draw(st.sampled_from(["A", "B", None])),
            }
        )
        for j in range(draw(st.integers(0, 8))):
            system, code = draw(st.sampled_from(CODES))
            at = draw(
                st.one_of(
                    st.sampled_from(edges), st.integers(0, 3 * 365 * 24 * 60).map(lambda m: now - timedelta(minutes=m))
                )
            )
            value = draw(st.one_of(st.none(), st.integers(0, 200).map(float), st.sampled_from([7.5, 0.5, 53.0])))
            facts.append(
                {
                    "patient_id": pid,
                    "event_id": f"{pid}-{j}",
                    "system": system,
                    "code": code,
                    "occurred_at": at,
                    "value": value,
                    "unit": draw(st.sampled_from(UNITS)),
                }
            )
    return persons, facts


def _load_or_reject(text: str) -> Any:
    """The study, or a rejected example when a load-time check refuses a generated comparison that can never be
    true (``imd_decile > 53``, ``count < 0``): those are errors by design, not disagreements."""
    try:
        return loads_study(text, "prop.yaml")
    except RuleError as exc:
        assume("can never be true" not in str(exc))
        raise


@settings(
    max_examples=examples(120),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_compiled_equals_reference(data, kit):
    include = data.draw(criteria_maps(), label="include")
    exclude = data.draw(st.one_of(st.none(), criteria_maps(1, "x")), label="exclude")
    settings_ = data.draw(st.one_of(st.none(), st.just(["hospital"])), label="settings")
    study = _load_or_reject(rule_text(include, exclude, settings_))
    now = kit.NOW + timedelta(minutes=data.draw(st.integers(0, 60 * 24 * 400)))
    persons, facts = data.draw(populations(now), label="population")
    state = kit.make_state(persons, facts)

    detail = {r["patient_id"]: r for r in screen_detail(state, study, now).to_dicts()}
    compiled = {r["patient_id"]: r for r in screen(state, [study], now).to_dicts()}
    for ref in reference_screen(state, [study], now):
        pid = ref["patient_id"]
        assert compiled[pid]["outcome"] == ref["outcome"], (pid, ref)
        assert detail[pid]["outcome"] == ref["outcome"], (pid, ref)
        for name, value in ref["results"].items():
            assert detail[pid][name] == value, (pid, name, value, detail[pid][f"{name}:evidence"])
        for c in compiled[pid]["criteria"]:
            assert c["result"] == ref["results"][c["name"]], (pid, c)
    # The cheaper evidence modes give the same outcomes and results (evidence: matched rows only, or none).
    by_mode = {"all": compiled}
    for mode in ("matches", "none", "outcomes"):
        other = by_mode[mode] = {r["patient_id"]: r for r in screen(state, [study], now, evidence=mode).to_dicts()}
        assert other.keys() == compiled.keys()
        for pid, row in compiled.items():
            assert other[pid]["outcome"] == row["outcome"], (mode, pid)
            if mode == "outcomes":
                assert other[pid]["criteria"] == (row["criteria"] if row["outcome"] != "ineligible" else None)
                continue
            assert [c["result"] for c in other[pid]["criteria"]] == [c["result"] for c in row["criteria"]]
            if mode == "matches" and row["outcome"] != "ineligible":
                assert other[pid]["criteria"] == row["criteria"], (mode, pid)
            else:
                assert all(c["evidence"] is None for c in other[pid]["criteria"]), (mode, pid)
    # rows="matches": exactly the eligible/possible rows of rows="all" (evidence "all" = "matches" there).
    for mode, every in by_mode.items():
        got = {r["patient_id"]: r for r in screen(state, [study], now, evidence=mode, rows="matches").to_dicts()}
        assert got == {pid: r for pid, r in every.items() if r["outcome"] != "ineligible"}, mode
