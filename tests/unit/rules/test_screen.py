"""Transforms, windows (edges inclusive), units, three-valued logic, groups, setting and the screen() frame."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest

from screener.errors import RuleError
from screener.rules import CRITERIA_DTYPE, criteria_json, screen

D = timedelta(days=1)


def person(pid: str = "P1", **kw):
    return {"patient_id": pid, "birth_date": date(1960, 6, 1), "sex": "F", "setting": "community", **kw}


# ---------------------------------------------------------------- transforms


def test_ever_and_within(kit):
    now = kit.NOW
    st = kit.make_state([person()], [kit.fact("P1", "ICD10", "E11.9", now - 400 * D)])
    assert kit.one("dx|ever", st) == (True, "dx E11.9 on 2025-04-27")
    assert kit.one("dx|within('1y')", st)[0] is False
    assert kit.one("dx|within('2y')", st)[0] is True
    empty = kit.make_state([person()])
    value, evidence = kit.one("dx|ever", empty)
    assert value is False and evidence == "no record of dx"  # existence is never unknown
    assert kit.one("dx|within('90d')", empty) == (False, "no record of dx in the last 90 days")


def test_count(kit):
    now = kit.NOW
    st = kit.make_state([person()], [kit.fact("P1", "ATC", "A10BA02", now - k * D) for k in (1, 10, 100)])
    assert kit.one("drug|count('30d') == 2", st) == (True, "2 drug record(s) in the last 30 days")
    assert kit.one("drug|count == 3", st)[0] is True
    assert kit.one("drug|count('1d') == 1", kit.make_state([person()]))[0] is False  # 0 records, not unknown


@pytest.mark.parametrize(
    ("transform", "expected", "evidence"),
    [
        ("latest", 7.0, "latest glucose 7 mmol/L on 2026-05-31"),
        ("earliest", 5.0, "earliest glucose 5 mmol/L on 2026-05-22"),
        ("min", 4.5, "min glucose 4.5 mmol/L on 2026-05-27"),
        ("max", 9.0, "max glucose 9 mmol/L on 2026-05-29"),
        ("mean", 6.375, "mean glucose 6.38 mmol/L of 4 value(s) in the last 30 days"),
    ],
)
def test_numeric_transforms(kit, transform, expected, evidence):
    now = kit.NOW
    facts = [
        kit.fact("P1", "LOINC", "2345-7", now - k * D, v, "mmol/L")
        for k, v in ((10, 5.0), (5, 4.5), (3, 9.0), (1, 7.0))
    ]
    facts.append(kit.fact("P1", "LOINC", "2345-7", now - 60 * D, 100.0, "mmol/L"))  # outside the window
    st = kit.make_state([person()], facts)
    value, ev = kit.one(f"glucose|{transform}('30d') == {expected}", st)
    assert value is True
    assert ev == evidence


def test_numeric_transform_without_values_is_unknown(kit):
    st = kit.make_state([person()])
    assert kit.one("glucose|latest('30d') > 5", st) == (None, "no glucose value in the last 30 days")
    assert kit.one("glucose|mean > 5", st)[0] is None


def test_days_since(kit):
    now = kit.NOW
    st = kit.make_state([person()], [kit.fact("P1", "ICD10", "I63.9", now - 10 * D - timedelta(hours=5))])
    assert kit.one("stroke|days_since == 10", st) == (True, "last stroke 10 days ago (I63.9 on 2026-05-22)")
    assert kit.one("stroke|days_since < 5", kit.make_state([person()]))[0] is None


def test_latest_tie_break_is_latest_event_id(kit):
    now = kit.NOW
    t = now - D
    st = kit.make_state(
        [person()],
        [
            {**kit.fact("P1", "LOINC", "2345-7", t, 5.0, "mmol/L"), "event_id": "a"},
            {**kit.fact("P1", "LOINC", "2345-7", t, 8.0, "mmol/L"), "event_id": "b"},
        ],
    )
    assert kit.one("glucose|latest == 8", st)[0] is True
    assert kit.one("glucose|earliest == 5", st)[0] is True


def test_future_facts_are_ignored(kit):
    now = kit.NOW
    st = kit.make_state([person()], [kit.fact("P1", "ICD10", "E11", now + timedelta(seconds=1))])
    assert kit.one("dx|ever", st)[0] is False


# ---------------------------------------------------------------- concept membership


@pytest.mark.parametrize(
    ("system", "code", "member"),
    [
        ("ICD10", "E11", True),
        ("ICD10", "E11.9", True),
        ("ICD10", "e119", True),
        ("ICD10", "E11.65", False),
        ("ICD10", "E1165", False),
        ("ICD10", "E10.9", False),
        ("ICD10", "E1", False),
        ("SNOMED", "E11", False),
    ],
)
def test_prefix_match_and_exclusion(kit, system, code, member):
    st = kit.make_state([person()], [kit.fact("P1", system, code, kit.NOW - D)])
    assert kit.one("dx|ever", st)[0] is member


def test_exact_systems_do_not_prefix_match(kit):
    st = kit.make_state([person()], [kit.fact("P1", "SNOMED", "2306900071", kit.NOW - D)])
    assert kit.one("stroke|ever", st)[0] is False
    st = kit.make_state([person()], [kit.fact("P1", "SNOMED", "230690007", kit.NOW - D)])
    assert kit.one("stroke|ever", st)[0] is True


def test_fact_filter_and_horizon(kit):
    study = kit.make_study({"a": "dx|within('90d')", "b": "glucose|latest('6mo') > 5"})
    facts = kit.make_state(
        [person()],
        [
            kit.fact("P1", "ICD10", "E11.65", kit.NOW),
            kit.fact("P1", "LOINC", "2345-7", kit.NOW),
            kit.fact("P1", "LOINC", "4548-4", kit.NOW),
            kit.fact("P1", "ATC", "A10BA02", kit.NOW),
        ],
    ).facts
    kept = facts.filter(study.fact_filter())["code"].to_list()
    assert kept == ["E11.65", "2345-7"]  # a superset: exclusions are applied at screening time
    assert study.horizon == timedelta(days=186)  # 6 months counted as 31 days each (an upper bound)
    assert kit.make_study({"a": "dx|ever"}).horizon is None
    assert kit.make_study({"a": "age > 3"}).horizon == timedelta(0)


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("window", "delta"),
    [
        ("30m", timedelta(minutes=30)),
        ("6h", timedelta(hours=6)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_window_edges_are_inclusive(kit, window, delta):
    """A fact exactly `w` before now is inside; one microsecond earlier is outside."""
    now = kit.NOW
    us = timedelta(microseconds=1)
    at_edge = kit.make_state([person()], [kit.fact("P1", "ICD10", "I63.9", now - delta)])
    outside = kit.make_state([person()], [kit.fact("P1", "ICD10", "I63.9", now - delta - us)])
    at_now = kit.make_state([person()], [kit.fact("P1", "ICD10", "I63.9", now)])
    assert kit.one(f"stroke|within('{window}')", at_edge)[0] is True
    assert kit.one(f"stroke|within('{window}')", outside)[0] is False
    assert kit.one(f"stroke|within('{window}')", at_now)[0] is True


def test_minute_windows_show_times(kit):
    now = kit.NOW
    st = kit.make_state([person()], [kit.fact("P1", "ICD10", "I63.9", now - timedelta(minutes=20))])
    assert kit.one("stroke|within('30m')", st) == (True, "stroke I63.9 on 2026-06-01 11:40")
    assert kit.one("stroke|within('15m')", st)[0] is False
    assert kit.one("stroke|within('1h')", st)[0] is True


def test_month_and_year_windows_are_calendar(kit):
    from datetime import UTC, datetime

    now = datetime(2026, 3, 31, 12, tzinfo=UTC)
    edge = datetime(2026, 2, 28, 12, tzinfo=UTC)  # one calendar month back, day clamped
    st = kit.make_state([person()], [kit.fact("P1", "ICD10", "I63", edge)])
    assert kit.one("stroke|within('1mo')", st, now)[0] is True
    st = kit.make_state([person()], [kit.fact("P1", "ICD10", "I63", edge - timedelta(microseconds=1))])
    assert kit.one("stroke|within('1mo')", st, now)[0] is False
    st = kit.make_state([person()], [kit.fact("P1", "ICD10", "I63", datetime(2024, 3, 31, 12, tzinfo=UTC))])
    assert kit.one("stroke|within('2y')", st, now)[0] is True
    assert kit.one("stroke|within('1y')", st, now)[0] is False


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("concept", "code", "value", "unit", "expected"),
    [
        ("glucose", "2345-7", 180.0, "mg/dL", 9.99),  # glucose mg/dL -> mmol/L (/18.016)
        ("glucose", "2345-7", 7.0, "mmol/l", 7.0),  # spelling is case-insensitive
        ("creat", "2160-0", 1.0, "mg/dL", 88.4),  # creatinine mg/dL -> umol/L (x88.4)
        ("creat", "2160-0", 88.0, "µmol/L", 88.0),
        ("creat", "2160-0", 0.1, "mmol/L", 100.0),  # molar scale
        ("hba1c", "4548-4", 7.0, "%", 53.0),  # HbA1c % -> mmol/mol (10.929 * (% - 2.15))
        ("hba1c", "4548-4", 53.0, "mmol/mol", 53.0),
    ],
)
def test_unit_conversion(kit, concept, code, value, unit, expected):
    st = kit.make_state([person()], [kit.fact("P1", "LOINC", code, kit.NOW - D, value, unit)])
    v, _ = kit.one(f"{concept}|latest > {expected - 0.05} && {concept}|latest < {expected + 0.05}", st)
    assert v is True


def test_reverse_conversions():
    from screener.rules.units import conversion

    a, b = conversion("mmol/mol", "%")
    assert abs(53 * a + b - 7.0) < 0.01
    a, b = conversion("umol/L", "mg/dL")
    assert abs(88.4 * a + b - 1.0) < 0.001
    a, b = conversion("mmol/L", "mg/dL")
    assert abs(10 * a + b - 180.16) < 0.01
    assert conversion("mg/dL", "mmol/L", "cholesterol") == pytest.approx((10 / 386.65, 0.0))
    assert conversion("mmHg", "mmol/L") is None


def test_unknown_units_are_left_out_and_counted(kit):
    now = kit.NOW
    st = kit.make_state(
        [person()],
        [
            kit.fact("P1", "LOINC", "2345-7", now - 2 * D, 6.0, "mmol/L"),
            kit.fact("P1", "LOINC", "2345-7", now - D, 999.0, "furlongs"),
            kit.fact("P1", "LOINC", "2345-7", now - D, 500.0, None),  # a number without a unit is not comparable
        ],
    )
    value, evidence = kit.one("glucose|latest < 7", st)
    assert value is True
    assert evidence == "latest glucose 6 mmol/L on 2026-05-30 (2 value(s) in unknown units left out)"
    only_bad = kit.make_state([person()], [kit.fact("P1", "LOINC", "2345-7", now - D, 999.0, "furlongs")])
    value, evidence = kit.one("glucose|max > 1", only_bad)
    assert value is None
    assert evidence == "no glucose value (1 value(s) in unknown units left out)"
    # Existence transforms still see the fact.
    assert kit.one("glucose|ever", only_bad)[0] is True


def test_score_concept_takes_unitless_values_and_a_unitless_set_is_rejected(kit):
    now = kit.NOW
    unitless = kit.CONCEPTS + '  bare:    {loinc: ["72133-2"]}\n'
    with pytest.raises(
        RuleError, match=r"'bare\|latest' reads values, but concept set 'bare' has no unit.*'\{score\}'"
    ):
        kit.make_study({"c": "bare|latest == 4"}, concepts=unitless)
    st = kit.make_state(
        [person()],
        [
            kit.fact("P1", "LOINC", "72133-2", now - 2 * D, 4.0, None),
            kit.fact("P1", "LOINC", "72133-2", now - D, 9.0, "mmHg"),
        ],
    )
    assert kit.one("score|latest == 4", st)[0] is True


# ---------------------------------------------------------------- attributes, unknowns and Kleene logic


def test_attributes(kit):
    st = kit.make_state([person(birth_date=date(2000, 6, 2), imd_decile=3, ethnic_group="black", site="RXX")])
    assert kit.one("age == 25", st) == (True, "age 25")  # birthday is tomorrow
    assert kit.one("age_days == 9495", st)[0] is True
    assert kit.one("imd_quintile == 2 && imd_decile == 3", st)[0] is True
    assert kit.one("ethnic_group in ['black', 'mixed']", st)[0] is True
    assert kit.one("sex == 'F' && setting == 'community' && site == 'RXX'", st)[0] is True
    born_today = kit.make_state([person(birth_date=date(2000, 6, 1))])
    assert kit.one("age == 26", born_today)[0] is True


def test_missing_attribute_is_unknown(kit):
    st = kit.make_state([{"patient_id": "P1"}])
    assert kit.one("age >= 18", st) == (None, "age unknown")
    assert kit.one("sex in ['F']", st)[0] is None
    assert kit.one("!(sex == 'F')", st)[0] is None


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("age > 18 && dx|ever", False),  # unknown && false = false
        ("age > 18 && !dx|ever", None),  # unknown && true = unknown
        ("age > 18 || !dx|ever", True),  # unknown || true = true
        ("age > 18 || dx|ever", None),  # unknown || false = unknown
        ("!(age > 18)", None),
        ("age > 18 ? true : false", None),
        ("dx|ever ? age > 18 : true", True),
        ("(age + 1) > 3", None),
        ("glucose|count / 0 > 1", None),  # division by zero is unknown
        ("dx|ever || drug|ever && false", False),  # && binds tighter than ||
        ("true || dx|ever && false", True),
    ],
)
def test_kleene_logic(kit, expr, expected):
    st = kit.make_state([{"patient_id": "P1"}])
    assert kit.one(expr, st)[0] is expected


def test_evidence_names_the_deciding_operand(kit):
    now = kit.NOW
    st = kit.make_state([person()], [kit.fact("P1", "ICD10", "E11.9", now - D)])
    assert kit.one("dx|ever && drug|within('90d')", st) == (False, "no record of drug in the last 90 days")
    assert kit.one("dx|ever || drug|within('90d')", st) == (True, "dx E11.9 on 2026-05-31")
    assert kit.one("dx|ever && age > 60", st) == (True, "dx E11.9 on 2026-05-31; age 66")


# ---------------------------------------------------------------- groups and outcome


def test_nested_groups(kit):
    now = kit.NOW
    include = {
        "g": {
            "at_least": 2,
            "of": {
                "a": "dx|ever",
                "b": {"any": {"b1": "drug|ever", "b2": "glucose|latest > 7"}},
                "c": {"all": {"c1": "age > 18", "c2": "sex == 'F'"}},
            },
        },
    }
    study = kit.make_study(include)
    st = kit.make_state(
        [person("P1"), person("P2", birth_date=None), person("P3", birth_date=None, sex="M"), person("P4")],
        [kit.fact(p, "ICD10", "E11", now - D) for p in ("P1", "P2", "P3")],
    )
    rows = kit.evaluate(study, st)
    # P1: a true, b unknown (no glucose, no drug), c true -> 2 true -> true
    assert (rows["P1"]["a"], rows["P1"]["b"], rows["P1"]["c"], rows["P1"]["g"]) == (True, None, True, True)
    # P2: a true, b unknown, c unknown -> 1 true + 2 unknown -> unknown
    assert (rows["P2"]["c"], rows["P2"]["g"], rows["P2"]["outcome"]) == (None, None, "possible")
    # P3: a true, b unknown, c false (sex M) -> 1 true + 1 unknown -> unknown
    assert (rows["P3"]["c"], rows["P3"]["g"]) == (False, None)
    # P4: a false, b unknown, c true -> unknown
    assert rows["P4"]["g"] is None
    assert rows["P1"]["g:evidence"].startswith("at least 2 of: A: yes (dx E11 on 2026-05-31); B: unknown")
    st5 = kit.make_state([person("P5", sex="M")])
    assert kit.evaluate(study, st5)["P5"]["g"] is False  # a false, c false: at most 1 can be true


def test_outcomes_and_screen_frame(kit):
    now = kit.NOW
    study = kit.make_study({"adult": "age >= 18"}, {"on_drug": "drug|within('90d')"}, settings=["community"])
    st = kit.make_state(
        [
            person("E"),
            person("I1", birth_date=date(2015, 1, 1)),
            person("I2"),
            person("P", birth_date=None),
            person("H", setting="hospital"),
            person("S", setting=None),
        ],
        [kit.fact("I2", "ATC", "A10BA02", now - D)],
    )
    out = screen(st, [study], now)
    assert out.schema["criteria"] == CRITERIA_DTYPE
    assert out.columns == ["study_id", "patient_id", "outcome", "rule_hash", "criteria"]
    got = dict(zip(out["patient_id"], out["outcome"], strict=True))
    assert got == {
        "E": "eligible",
        "I1": "ineligible",
        "I2": "ineligible",
        "P": "possible",
        "H": "ineligible",
        "S": "possible",
    }
    assert set(out["rule_hash"]) == {study.content_hash}
    first = out.filter(pl.col("patient_id") == "H")["criteria"][0]
    assert [c["name"] for c in first] == ["in_setting", "adult", "on_drug"]
    assert first[0] == {
        "name": "in_setting",
        "group": "include",
        "result": False,
        "evidence": "setting hospital",
        "expires_at": None,
        "label": "seen in a community setting",
    }
    assert '"name":"in_setting"' in criteria_json(first)


def test_screen_many_studies_and_empty_inputs(kit):
    from screener.state import PatientState

    a = kit.make_study({"x": "dx|ever"})
    b = kit.make_study({"y": "glucose|latest > 1"})
    st = kit.make_state([person("P1"), person("P2")], [kit.fact("P1", "ICD10", "E11", kit.NOW - D)])
    out = screen(st, [a, b], kit.NOW)
    assert out.height == 4
    assert screen(PatientState(), [a], kit.NOW).height == 0
    assert screen(kit.make_state([person()]), [a, b], kit.NOW)["outcome"].to_list() == ["ineligible", "possible"]
    with pytest.raises(ValueError, match="timezone"):
        screen(st, [a], kit.NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    ("src", "dst", "value", "expected"),
    [
        ("lb", "kg", 220.0, 99.79),
        ("g", "kg", 1500.0, 1.5),
        ("in", "cm", 70.0, 177.8),
        ("mm", "m", 1750.0, 1.75),
        ("degF", "Cel", 98.6, 37.0),
        ("g/dL", "g/L", 13.5, 135.0),
        ("mg/L", "mg/dL", 50.0, 5.0),
        ("nmol/L", "umol/L", 500.0, 0.5),
        ("mg/dL", "mmol/L", 200.0, 11.1),
    ],
)
def test_scale_conversions(src, dst, value, expected):
    from screener.rules.units import conversion

    a, b = conversion(src, dst)
    assert value * a + b == pytest.approx(expected, abs=0.01)


def test_arithmetic(kit):
    st = kit.make_state([person()])
    expr = "(7 % 3 == 1) && (7 // 2 == 3) && (2 ^ 3 == 8) && (-7 % 3 == 2) && (1 / 4 == 0.25) && (2 + 3 * 4 == 14)"
    assert kit.one(expr, st)[0] is True
