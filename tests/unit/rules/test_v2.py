"""Rule language v2 through the compiled path: evidence texts, unknown-filter counts, expires_at, labels,
study metadata, the engine's pruning hooks. (Values of every construct are the spec cases' job: tests/spec.)"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest

from screener.errors import RuleError
from screener.rules import criteria_json, loads_study, screen
from screener.rules.model import humanise
from screener.rules.reference import evaluate_patient

D = timedelta(days=1)

V2_CONCEPTS = """\
concepts:
  hba1c:   {loinc: ["4548-4"], unit: mmol/mol, label: HbA1c}
  alt:     {loinc: ["1742-6"], unit: U/L}
  ics:     {atc: [R03BA], label: inhaled steroid}
  stroke:  {icd10: [I63], label: ischaemic stroke}
  pci:     {opcs4: [K75]}
  mi:      {icd10: [I21], label: heart attack}
  post_bd: {snomed: ["252495004"]}
  fev1:    {loinc: ["20150-9"], unit: L}
  visit:   {snomed: ["32485007"]}
"""


def person(pid: str = "P1", **kw):
    return {"patient_id": pid, "birth_date": date(1960, 6, 1), "sex": "F", "setting": "community", **kw}


def run(kit, expr, facts, persons=None, now=None):
    """(value, evidence) from the compiled path, checked against the reference evaluator."""
    now = now or kit.NOW
    study = kit.make_study({"c": expr}, concepts=V2_CONCEPTS)
    state = kit.make_state(persons or [person()], facts)
    row = kit.evaluate(study, state, now)["P1"]
    ref = evaluate_patient(study, state.persons.row(0, named=True), list(state.facts.iter_rows(named=True)), now)
    assert ref[1]["c"] == row["c"], (expr, ref, row["c"])
    return row["c"], row["c:evidence"]


def f(kit, system, code, at, value=None, unit=None, **extra):
    return {**kit.fact("P1", system, code, at, value, unit), **extra}


def test_filter_on_value_counts_facts_with_unknown_fields(kit):
    now = kit.NOW
    facts = [
        f(kit, "LOINC", "4548-4", now - 30 * D, 50.0, "mmol/mol"),
        f(kit, "LOINC", "4548-4", now - 20 * D, 7.0, "%"),  # 53 mmol/mol after conversion
        f(kit, "LOINC", "4548-4", now - 10 * D, 60.0, "furlongs"),  # unknown unit: .value unknown
    ]
    value, evidence = run(kit, "hba1c[.value >= 48]|count('1y') >= 2", facts)
    assert value is True
    assert evidence == "2 HbA1c record(s) in the last 1 year (1 fact(s) with unknown value left out)"


def test_filter_on_route_and_dose_names_both_fields_when_unknown(kit):
    now = kit.NOW
    facts = [
        f(kit, "ATC", "R03BA02", now - 5 * D, kind="drug", route="inhaled", dose_value=1000.0),
        f(kit, "ATC", "R03BA02", now - 3 * D, kind="drug", route=None, dose_value=400.0),
    ]
    value, evidence = run(kit, "ics[.route == 'inhaled' && .dose >= 800]|within('90d')", facts)
    assert value is True
    assert evidence.startswith("inhaled steroid R03BA02 on ")
    # the second fact's route is unknown but its dose already rules it out (Kleene): it is not counted
    assert "left out" not in evidence
    value, evidence = run(kit, "ics[.route == 'inhaled']|count('90d') == 1", facts)
    assert value is True and evidence.endswith("(1 fact(s) with unknown route left out)")


def test_qualifiers_and_reference_range(kit):
    now = kit.NOW
    facts = [
        f(kit, "LOINC", "20150-9", now - 40 * D, 2.1, "L", qualifiers=["SNOMED|252495004"]),
        f(kit, "LOINC", "20150-9", now - 20 * D, 1.9, "L", qualifiers=[]),
        f(kit, "LOINC", "1742-6", now - 2 * D, 130.0, "U/L", ref_high=40.0),
    ]
    assert run(kit, "fev1[post_bd in .qualifiers]|latest('1y') == 2.1", facts)[0] is True
    value, evidence = run(kit, "alt[.value > 3 * .ref_high]|within('30d')", facts)
    assert value is True and evidence.startswith("alt 1742-6 on ")


def test_current_encounter(kit):
    now = kit.NOW
    facts = [
        f(kit, "SNOMED", "32485007", now - D, kind="visit", encounter_id="ENC1", ended_at=None),
        f(kit, "ICD10", "I63.5", now - 2 * 3600 * timedelta(seconds=1), kind="condition", encounter_id="ENC1"),
        f(kit, "ICD10", "I63.9", now - 400 * D, kind="condition", encounter_id="OLD"),
    ]
    value, evidence = run(kit, "stroke[.encounter == 'current']|count == 1", facts)
    assert value is True and evidence == "1 ischaemic stroke record(s)"
    assert run(kit, "stroke[.encounter != 'current']|ever", facts)[0] is True


def test_after_evidence_names_both_facts(kit):
    now = kit.NOW
    facts = [
        f(kit, "OPCS4", "K75.1", now - 50 * D, kind="procedure", status="completed"),
        f(kit, "ICD10", "I21.4", now - 40 * D, kind="condition"),
    ]
    value, evidence = run(kit, "mi|after(pci, '30d')", facts)
    assert value is True
    assert evidence == f"heart attack I21.4 on {(now - 40 * D):%Y-%m-%d} after pci K75.1 on {(now - 50 * D):%Y-%m-%d}"
    value, evidence = run(kit, "mi|after(pci, '7d')", facts)
    assert (value, evidence) == (False, "no heart attack within 7 days after pci")
    assert run(kit, "pci|before(mi, '10d')", facts)[0] is True
    assert run(kit, "pci|before(mi, '9d')", facts)[0] is False


def test_trend_episode_and_exposure_evidence(kit):
    now = kit.NOW
    facts = [
        f(kit, "LOINC", "4548-4", now - 300 * D, 60.0, "mmol/mol"),
        f(kit, "LOINC", "4548-4", now - 10 * D, 45.0, "mmol/mol"),
        f(kit, "ATC", "R03BA02", now - 20 * D, kind="drug", ended_at=now - 11 * D),
    ]
    value, evidence = run(kit, "hba1c|pct_change('1y') <= -20", facts)
    assert value is True and evidence.startswith("HbA1c changed by -25% (from 60 on ")
    assert run(kit, "hba1c|episodes('14d') == 2", facts)[0] is True
    value, evidence = run(kit, "ics|exposure_days('1y') == 10", facts)
    assert (value, evidence) == (True, "10 day(s) on inhaled steroid in the last 1 year")
    assert run(kit, "ics|on_now", facts) == (False, "no ongoing inhaled steroid")


def test_latest_code_and_upcoming(kit):
    now = kit.NOW
    facts = [
        f(kit, "OPCS4", "K75.1", now + 10 * D, kind="procedure", status="planned"),
        f(kit, "ICD10", "I21.4", now - 40 * D, kind="condition", value_code="SNOMED-X"),
    ]
    value, evidence = run(kit, "pci|upcoming('30d')", facts)
    assert value is True and evidence == f"pci K75.1 planned for {(now + 10 * D):%Y-%m-%d}"
    assert run(kit, "pci|ever", facts)[0] is False  # planned is not done
    assert run(kit, "mi|latest_code == 'SNOMED-X'", facts)[0] is True


def test_expires_at_is_the_deciding_fact_plus_the_window(kit):
    now = kit.NOW
    study = kit.make_study({"recent": "stroke|within('6h')", "old": "age > 18"}, concepts=V2_CONCEPTS)
    t = now - timedelta(hours=2)
    state = kit.make_state([person(), person("P2")], [f(kit, "ICD10", "I63.5", t, kind="condition")])
    for evidence in ("all", "matches"):
        rows = screen(state, [study], now, evidence=evidence).sort("patient_id")
        crit = {c["name"]: c for c in rows["criteria"][0]}
        assert crit["recent"]["expires_at"] == t + timedelta(hours=6)
        assert crit["old"]["expires_at"] is None
        assert crit["recent"]["label"] == "Recent" and crit["old"]["label"] == "Old"
        other = {c["name"]: c for c in rows["criteria"][1]}
        assert other["recent"]["result"] is False and other["recent"]["expires_at"] is None
    stored = criteria_json(rows["criteria"][0])
    assert f'"expires_at":"{(t + timedelta(hours=6)).isoformat()}"' in stored and '"label":"Recent"' in stored


METADATA = """\
study:
  id: M-1
  title: Test
  sponsor: commercial
  target: 10
  opens: 2026-01-01
  closes: 2026-12-31
  team: t
  lay_summary: "  A study for adults.  "
  contacts: [{name: Dr A Jones, role: PI, email: a.jones@example.org, phone: "0113 000"}, {name: Research office}]
  protocol_url: https://example.org/protocol.pdf
  pis_url: https://example.org/pis.pdf
  sites: [Leeds General Infirmary, St James's]
concepts:
  stroke: {icd10: [I63], label: ischaemic stroke}
include:
  egfr_25_to_59: {expr: "age > 18", label: "kidney function moderately reduced"}
  recent_stroke: stroke|within('6h')
  any_of:
    label: either condition
    any: {a: age > 20, b: age > 30}
"""


def test_study_metadata_and_labels():
    s = loads_study(METADATA, "m.yaml")
    assert s.lay_summary == "A study for adults."
    assert [c.name for c in s.contacts] == ["Dr A Jones", "Research office"]
    assert s.contacts[0].email == "a.jones@example.org" and s.contacts[1].role is None
    assert (s.protocol_url, s.pis_url) == ("https://example.org/protocol.pdf", "https://example.org/pis.pdf")
    assert s.sites == ("Leeds General Infirmary", "St James's")
    assert s.alert == "immediate"  # the shortest window is 6 hours
    by_name = {c.name: c for c in s.all_criteria()}
    assert by_name["egfr_25_to_59"].display == "kidney function moderately reduced"
    assert by_name["recent_stroke"].display == "Recent stroke"
    assert by_name["any_of"].display == "either condition"
    assert humanise("egfr_25_to_59") == "eGFR 25 to 59"
    digest = loads_study(METADATA.replace("within('6h')", "within('2d')"), "m.yaml")
    assert digest.alert == "digest"
    explicit = loads_study(METADATA.replace("  sites:", "  alert: digest\n  sites:"), "m.yaml")
    assert explicit.alert == "digest"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("https://example.org/pis.pdf", "http://example.org/pis.pdf", "study 'pis_url' must be an https:// address"),
        ("email: a.jones@example.org", "email: nobody", "contact email 'nobody' is not an email address"),
        ("{name: Research office}", "{role: PI}", "a contact needs a 'name'"),
        ("  sites:", "  alert: soon\n  sites:", "study 'alert' must be one of digest, immediate, got 'soon'"),
        ('label: "kidney function moderately reduced"', "labl: x", "unknown key 'labl' in criterion 'egfr_25_to_59'"),
    ],
)
def test_metadata_errors(old, new, message):
    with pytest.raises(RuleError, match="m.yaml:[0-9]+:[0-9]+: error: " + message.replace("(", r"\(")):
        loads_study(METADATA.replace(old, new), "m.yaml")


def test_fact_filter_keeps_visits_and_registrations_when_read(kit):
    study = kit.make_study(
        {"a": "stroke[.encounter == 'current']|ever", "b": "registered_days > 365"}, concepts=V2_CONCEPTS
    )
    facts = pl.DataFrame(
        {
            "kind": ["visit", "registration", "drug", "condition"],
            "system": ["SNOMED", "SNOMED", "ATC", "ICD10"],
            "code": ["1", "2", "A10", "I63.5"],
        }
    )
    assert facts.filter(study.fact_filter())["kind"].to_list() == ["visit", "registration", "condition"]
    assert study.horizon is None  # 'ever' reads all history
    up = kit.make_study({"a": "pci|upcoming('30d')", "b": "mi|within('10d')"}, concepts=V2_CONCEPTS)
    assert up.horizon == timedelta(days=10)  # upcoming reads no past facts


def test_age_months_and_registered_days(kit):
    now = kit.NOW  # 2026-06-01 12:00 UTC
    reg = [
        f(kit, "SNOMED", "1", now - 400 * D, kind="registration", ended_at=now - 100 * D),
        f(kit, "SNOMED", "1", now - 99 * D, kind="registration", ended_at=None),
    ]
    assert run(kit, "registered_days == 99", reg)[0] is True
    assert run(kit, "age_months == 23", [], persons=[person(birth_date=date(2024, 6, 2))])[0] is True
    assert run(kit, "age_months == 24", [], persons=[person(birth_date=date(2024, 6, 1))])[0] is True
    assert run(kit, "registered_days > 1", [])[0] is None  # no registration covers now


def test_transforms_sharing_a_feature_read_every_column_they_need(kit):
    """latest_code after another transform of the same (set, window) still reads value_code."""
    now = kit.NOW
    facts = [f(kit, "ICD10", "I21.4", now - 40 * D, kind="condition", value_code="X")]
    assert run(kit, "mi|within('1y') && mi|latest_code('1y') == 'X'", facts)[0] is True


def test_a_filtered_feature_with_no_unknown_fact(kit):
    """No row has an unknown filter value, so no ``n_funk`` statistic is produced: the column still exists."""
    now = kit.NOW
    facts = [f(kit, "LOINC", "4548-4", now - 30 * D, 50.0, "mmol/mol")]
    assert run(kit, "hba1c[.value >= 48]|count('1y') == 1", facts) == (True, "1 HbA1c record(s) in the last 1 year")
