"""Differential property test of rule language v2: compiled Polars screening vs the reference evaluator.

The extension of test_property.py to the v2 constructs: per-fact filters (on value, reference range, dose,
route, status, setting, location, kind, coded value, duration, current encounter, qualifiers, person attributes),
event-to-event relations (after/before, filters on both sides), episodes and distinct days, exposures (exposure
days, on now, continuous), trends (change, pct_change), first occurrence, latest_code, upcoming, age_months and
registered_days. Random histories carry every v2 fact field, with times on and next to window, gap and period
edges, planned/ordered facts in the past and the future, visits that are and are not ongoing, and registrations.
Outcomes and every criterion's value must be identical.
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

WINDOWS = ["6h", "1d", "7d", "14d", "30d", "90d", "6mo", "1y"]
GAPS = ["1d", "7d", "14d", "30d"]
NUM_SETS = ["glucose", "alt", "score"]
DRUG_SETS = ["drug", "statin"]
DX_SETS = ["dx", "stroke"]
ALL_SETS = NUM_SETS + DRUG_SETS + DX_SETS

CONCEPTS = """\
concepts:
  dx:      {icd10: [E11, "E13.1"], exclude: {icd10: [E11.65]}}
  stroke:  {icd10: [I63], snomed: ["230690007"]}
  drug:    {atc: [A10B]}
  statin:  {atc: [C10AA], dmd: ["12345678"]}
  glucose: {loinc: ["2345-7"], unit: mmol/L}
  alt:     {loinc: ["1742-6"], unit: U/L}
  score:   {loinc: ["72133-2"], unit: "{score}"}
  post_bd: {snomed: ["24623002"]}
"""

_COMMON = [
    ".status == 'active'",
    ".status != 'resolved'",
    ".status == 'planned'",
    ".setting == 'hospital'",
    ".location == 'W1'",
    ".encounter == 'current'",
    "post_bd in .qualifiers",
    ".duration_days >= 7",
    ".code == 'E11.9'",
    "sex == 'F'",
    "age >= 60",
]
_BY_KIND = {
    "num": [".value > 7", ".value <= 53", ".value > 2 * .ref_high", ".ref_low < .value", ".value_code == 'DET'"],
    "drug": [".route == 'oral'", ".route == 'inhaled'", ".dose >= 500", ".dose_unit == 'mg'", ".kind == 'drug'"],
    "dx": [".kind == 'condition'", ".status == 'resolved'"],
}


def _kind(concept: str) -> str:
    return "num" if concept in NUM_SETS else "drug" if concept in DRUG_SETS else "dx"


@st.composite
def filtered(draw: Any, concept: str) -> str:
    """``concept`` with no filter, or with a filter over fields its facts carry."""
    if draw(st.integers(0, 2)) == 0:
        return concept
    preds = st.sampled_from(_COMMON + _BY_KIND[_kind(concept)])
    shape = draw(st.integers(0, 3))
    a, b = draw(preds), draw(preds)
    pred = [a, f"{a} && {b}", f"{a} || {b}", f"!({a})"][shape]
    return f"{concept}[{pred}]"


class Ctx:
    """What one example's rules and histories share, so that pairs of facts land exactly on the windows and gaps
    the rules use (and one second either side): the steps (windows/gaps) and the concept sets in focus."""

    def __init__(self, steps: list[str], focus: list[str]) -> None:
        self.steps, self.focus = steps, focus

    def concept(self) -> st.SearchStrategy[str]:
        return st.one_of(st.sampled_from(self.focus), st.sampled_from(ALL_SETS))

    def win(self) -> st.SearchStrategy[str]:
        return st.one_of(st.sampled_from(self.steps), st.sampled_from(WINDOWS)).map(lambda w: f"'{w}'")

    def gap(self) -> st.SearchStrategy[str]:
        return st.one_of(st.sampled_from(self.steps), st.sampled_from(GAPS))


def _opt(w: str) -> str:
    return f"({w})" if w else ""


@st.composite
def bool_atom(draw: Any, ctx: Ctx) -> str:
    c = draw(ctx.concept())
    f = draw(filtered(c))
    w, g = draw(ctx.win()), draw(ctx.gap())
    other = draw(filtered(draw(ctx.concept())))
    return draw(
        st.sampled_from(
            [
                f"{f}|ever",
                f"{f}|within({w})",
                f"{f}|on_now",
                f"{f}|continuous({w}, '{g}')",
                f"{f}|upcoming({w})",
                f"{f}|after({other}, {w})",
                f"{f}|before({other}, {w})",
                f"({f}|latest_code in ['E11.9', 'A10BA02', 'DET', '2345-7'])",
                f"({f}|latest_code == 'NEG')",
            ]
        )
    )


@st.composite
def num_atom(draw: Any, ctx: Ctx) -> str:
    c = draw(ctx.concept())
    f = draw(filtered(c))
    w = draw(st.one_of(st.just(""), ctx.win()))
    g = draw(ctx.gap())
    choices = [
        f"{f}|count{_opt(w)}",
        f"{f}|days_since",
        f"{f}|days_since_first",
        f"{f}|age_at_first",
        f"{f}|count_days{_opt(w)}",
        f"{f}|episodes('{g}'{', ' + w if w else ''})",
        f"{f}|exposure_days{_opt(w)}",
        "age_months",
        "registered_days",
        "age",
    ]
    if c in NUM_SETS:
        t = draw(st.sampled_from(["latest", "earliest", "min", "max", "mean", "change", "pct_change"]))
        choices.append(f"{f}|{t}{_opt(w)}")
    return draw(st.sampled_from(choices))


@st.composite
def criterion(draw: Any, ctx: Ctx) -> str:
    if draw(st.booleans()):
        return draw(bool_atom(ctx))
    left = draw(num_atom(ctx))
    op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
    right = draw(st.one_of(st.sampled_from(["0", "1", "2", "7", "10", "30", "53", "-20", "365"]), num_atom(ctx)))
    expr = f"({left} {op} {right})"
    if draw(st.integers(0, 3)) == 0:
        expr = f"{expr} {draw(st.sampled_from(['&&', '||']))} {draw(bool_atom(ctx))}"
    return expr


@st.composite
def criteria_maps(draw: Any, ctx: Ctx, prefix: str = "c") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        name = f"{prefix}{i}"
        if draw(st.integers(0, 4)) == 0:
            members = {f"{name}_{j}": draw(criterion(ctx)) for j in range(draw(st.integers(1, 3)))}
            out[name] = {draw(st.sampled_from(["any", "all"])): members}
        else:
            out[name] = draw(criterion(ctx))
    return out


def rule_text(include: dict[str, Any], exclude: dict[str, Any] | None) -> str:
    text = (
        "study:\n  id: PROP-2\n  title: t\n  sponsor: commercial\n  target: 1\n  opens: 2026-01-01\n"
        "  closes: 2026-12-31\n  team: t\n" + CONCEPTS + f"include: {json.dumps(include)}\n"
    )
    if exclude:
        text += f"exclude: {json.dumps(exclude)}\n"
    return text


# ---------------------------------------------------------------- histories

CODES = [
    ("ICD10", "E11.9", "condition"),
    ("ICD10", "E11.65", "condition"),
    ("ICD10", "I63.9", "condition"),
    ("SNOMED", "230690007", "condition"),
    ("ATC", "A10BA02", "drug"),
    ("ATC", "C10AA05", "drug"),
    ("DMD", "12345678", "drug"),
    ("LOINC", "2345-7", "measurement"),
    ("LOINC", "1742-6", "measurement"),
    ("LOINC", "72133-2", "observation"),
]
#: the codes of CODES that each concept set matches
SET_CODES = {
    "dx": [CODES[0]],
    "stroke": [CODES[2], CODES[3]],
    "drug": [CODES[4]],
    "statin": [CODES[5], CODES[6]],
    "glucose": [CODES[7]],
    "alt": [CODES[8]],
    "score": [CODES[9]],
}
UNITS = {"2345-7": ["mmol/L", "mg/dL", None, "furlongs"], "1742-6": ["U/L", "IU/L", None], "72133-2": [None, "{score}"]}
STATUSES = ["active", "active", "resolved", "completed", "stopped", "planned", "ordered"]


@st.composite
def populations(draw: Any, now: Any, ctx: Ctx) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    edges = [now, now + timedelta(days=30), now + timedelta(seconds=1)]
    for w in WINDOWS + GAPS:
        start = parse_window(w).start(now)
        edges += [start, start - timedelta(microseconds=1), start + timedelta(hours=1)]
    durations = st.one_of(st.none(), st.sampled_from([0, 1, 6, 7, 13, 14, 30, 120]).map(lambda d: timedelta(days=d)))
    at_strategy = st.one_of(
        st.sampled_from(edges), st.integers(-40 * 24, 2 * 365 * 24).map(lambda h: now - timedelta(hours=h))
    )
    persons, facts = [], []
    for i in range(draw(st.integers(1, 5))):
        pid = f"P{i}"
        persons.append(
            {
                "patient_id": pid,
                "birth_date": draw(st.one_of(st.none(), st.dates(date(1930, 1, 1), date(2026, 6, 1)))),
                "sex": draw(st.sampled_from(["F", "M", None])),
                "setting": draw(st.sampled_from(["hospital", "community", None])),
            }
        )
        n = 0

        def add(row: dict[str, Any], _pid: str = pid) -> None:
            nonlocal n
            base = {"patient_id": _pid, "event_id": f"{_pid}-{n:02d}", "status": "active", "qualifiers": []}
            facts.append({**base, **row})
            n += 1

        for _ in range(draw(st.integers(0, 2))):  # visits: ongoing, ended, or ending later
            at = draw(st.sampled_from([now - timedelta(days=2), now - timedelta(hours=3), now]))
            end = draw(st.sampled_from([None, now, now - timedelta(hours=1), now + timedelta(days=1)]))
            add(
                {
                    "kind": "visit",
                    "system": "local",
                    "code": "inpatient",
                    "occurred_at": at,
                    "ended_at": end if end is None or end >= at else None,
                    "encounter_id": draw(st.sampled_from(["V1", "V2"])),
                }
            )
        if draw(st.booleans()):  # a registration period
            start = now - timedelta(days=draw(st.sampled_from([0, 10, 400])))
            end = draw(st.sampled_from([None, now, now - timedelta(days=1), now + timedelta(days=5)]))
            add({"kind": "registration", "system": "local", "code": "gms", "occurred_at": start,
                 "ended_at": end if end is None or end >= start else None})  # fmt: skip
        times: list[Any] = []
        # most facts of a patient have codes of the sets in focus, so pairs of them form
        themed = [c for c in CODES if any(c in SET_CODES[f] for f in ctx.focus)] or CODES
        for _ in range(draw(st.integers(0, 8))):
            system, code, kind = draw(st.one_of(st.sampled_from(themed), st.sampled_from(CODES)))
            if times and draw(st.booleans()):  # exactly a window/gap before or after an earlier fact, or 1 s off
                base = draw(st.one_of(st.just(times[-1]), st.sampled_from(times)))  # chains of exact steps
                step = parse_window(draw(st.one_of(st.sampled_from(ctx.steps), st.sampled_from(WINDOWS + GAPS))))
                at = step.start(base) if draw(st.integers(0, 3)) else step.end(base)
                at += draw(st.sampled_from([timedelta(0), timedelta(0), timedelta(seconds=1), -timedelta(seconds=1)]))
            else:
                at = draw(at_strategy)
            times.append(at)
            duration = draw(durations)
            row: dict[str, Any] = {
                "kind": kind,
                "system": system,
                "code": code,
                "occurred_at": at,
                "ended_at": at + duration if duration is not None else None,
                "status": draw(st.sampled_from(STATUSES)),
                "setting": draw(st.sampled_from(["hospital", "community", None])),
                "location": draw(st.sampled_from(["W1", "W2", None])),
                "encounter_id": draw(st.sampled_from(["V1", "V2", None])),
                "qualifiers": draw(st.sampled_from([[], ["SNOMED|24623002"], ["SNOMED|11111111"], None])),
            }
            if kind in ("measurement", "observation"):
                row["value"] = draw(st.one_of(st.none(), st.sampled_from([0.0, 5.0, 7.0, 7.5, 53.0, 90.0, 150.0])))
                row["unit"] = draw(st.sampled_from(UNITS[code]))
                row["ref_low"] = draw(st.sampled_from([None, 3.0]))
                row["ref_high"] = draw(st.sampled_from([None, 40.0, 7.8]))
                vc = draw(st.sampled_from([None, "DET", "NEG"]))
                row["value_code"], row["value_system"] = vc, ("local" if vc else None)
            if kind == "drug":
                row["dose_value"] = draw(st.sampled_from([None, 250.0, 500.0, 1000.0]))
                row["dose_unit"] = draw(st.sampled_from([None, "mg"]))
                row["route"] = draw(st.sampled_from([None, "oral", "inhaled"]))
            add(row)
            if row["ended_at"] is not None:
                times.append(row["ended_at"])
    return persons, facts


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_v2_compiled_equals_reference(data, kit):
    steps = data.draw(st.lists(st.sampled_from(WINDOWS + GAPS), min_size=1, max_size=2, unique=True), label="steps")
    ctx = Ctx(steps, data.draw(st.lists(st.sampled_from(ALL_SETS), min_size=1, max_size=2, unique=True)))
    include = data.draw(criteria_maps(ctx), label="include")
    exclude = data.draw(st.one_of(st.none(), criteria_maps(ctx, "x")), label="exclude")
    try:
        study = loads_study(rule_text(include, exclude), "prop2.yaml")
    except RuleError as exc:  # a generated comparison that can never be true is an error by design
        assume("can never be true" not in str(exc))
        raise
    now = kit.NOW + timedelta(minutes=data.draw(st.integers(0, 60 * 24 * 30)))
    persons, facts = data.draw(populations(now, ctx), label="population")
    state = kit.make_state(persons, facts)

    detail = {r["patient_id"]: r for r in screen_detail(state, study, now).to_dicts()}
    compiled = {r["patient_id"]: r for r in screen(state, [study], now).to_dicts()}
    for ref in reference_screen(state, [study], now):
        pid = ref["patient_id"]
        assert compiled[pid]["outcome"] == ref["outcome"], (pid, ref)
        for name, value in ref["results"].items():
            assert detail[pid][name] == value, (pid, name, value, detail[pid][f"{name}:evidence"])
        for c in compiled[pid]["criteria"]:
            assert c["result"] == ref["results"][c["name"]], (pid, c)
