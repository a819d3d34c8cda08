"""`screener rules check|test|explain|render` through click's runner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from screener.cli import main

DATA = Path(__file__).parent / "data"


def run(*args: str):
    return CliRunner().invoke(main, ["rules", *args])


def test_check_ok_and_errors(tmp_path):
    ok = run("check", str(DATA))
    assert ok.exit_code == 0, ok.output
    assert "ok " in ok.output and "1 studies loaded, 0 error(s)" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text((DATA / "ckd.yaml").read_text().replace("t2dm|ever", "t2dn|ever"))
    out = run("check", str(DATA), str(bad))
    assert out.exit_code == 1
    assert f"{bad}:20:18: error: in 'diabetic': unknown concept set 't2dn' (did you mean 't2dm'?)" in out.output
    assert "1 studies loaded, 1 error(s)" in out.output


def test_test_passes_and_fails_clearly(tmp_path):
    ok = run("test", str(DATA / "ckd.yaml"))
    assert ok.exit_code == 0, ok.output
    assert "3 test case(s), 0 failed" in ok.output
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        (DATA / "ckd.yaml").read_text().replace("criteria: {on_insulin: true}", "criteria: {on_insulin: false}")
    )
    out = run("test", str(wrong))
    assert out.exit_code == 1
    assert f"FAIL {wrong}:38: CKD-TEST: on insulin" in out.output
    assert "criterion 'on_insulin': expected false, got true (insulin A10AB01 on 2026-05-20)" in out.output
    assert "3 test case(s), 1 failed" in out.output
    wrong.write_text((DATA / "ckd.yaml").read_text().replace("expect: possible", "expect: eligible"))
    out = run("test", str(wrong))
    assert "expected eligible, got possible: egfr_in_range=unknown (no eGFR value in the last 180 days)" in out.output


def test_explain(tmp_path):
    history = tmp_path / "h.json"
    history.write_text(
        json.dumps(
            {
                "person": {"birth_date": "1961-03-02", "sex": "F", "setting": "community"},
                "events": [
                    {"kind": "condition", "code": {"system": "ICD10", "value": "E11.9"}, "occurred_at": "2024-05-01"},
                    {
                        "kind": "measurement",
                        "code": {"system": "LOINC", "value": "62238-1"},
                        "value": 41,
                        "unit": "mL/min/1.73m2",
                        "occurred_at": "2026-04-01T00:00:00Z",
                    },
                    {
                        "kind": "measurement",
                        "code": {"system": "LOINC", "value": "62238-1"},
                        "value": 4,
                        "unit": "furlongs",
                        "occurred_at": "2026-04-02T00:00:00Z",
                    },
                ],
            }
        )
    )
    out = run("explain", str(DATA / "ckd.yaml"), "--patient", str(history), "--at", "2026-06-01T09:00:00Z")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "CKD-TEST at 2026-06-01T09:00:00+00:00"
    assert any(
        line.startswith("egfr_in_range  include  true")
        and line.endswith("latest eGFR 41 mL/min/1.73m2 on 2026-04-01 (1 value(s) in unknown units left out)")
        for line in lines
    )
    assert any(line.startswith("  albuminuria  include  unknown") for line in lines)
    assert lines[-1] == "outcome: possible"
    history.write_text(json.dumps({"person": {}, "events": [{"kind": "condition", "occurred_at": "2024-05-01"}]}))
    bad = run("explain", str(DATA / "ckd.yaml"), "--patient", str(history))
    assert bad.exit_code == 1 and "event 1: field 'code'" in bad.output


def test_render():
    out = run("render", str(DATA / "ckd.yaml"))
    assert out.exit_code == 0
    assert out.output.startswith("# SGLT2 inhibitor in diabetic CKD, community clinics\n")
    assert "- **Adult**: age (years) is at least 18 and at most 80" in out.output
    assert "  - **On acei**: has a record of acei in the last 90 days" in out.output
    assert "on_acei" not in out.output  # names are humanised, never shown raw
    assert "| insulin | ATC A10A | ATC A10AE56 | - |" in out.output


def test_render_uses_labels_metadata_and_v2_phrases(kit):
    from screener.rules.render import describe

    concepts = kit.CONCEPTS + "  pci:     {opcs4: [K75], label: coronary stent}\n"
    s = kit.make_study(
        {
            "a": {"expr": "stroke[.encounter == 'current']|within('6h')", "label": "stroke in this admission"},
            "b": "stroke|after(pci[.status == 'completed'], '30d')",
            "c": "drug|continuous('90d', '7d')",
        },
        concepts=concepts,
    )
    text = s.render_markdown()
    assert "- **Stroke in this admission** (has a record of stroke (its visit is current) in the last 6 hours)" in text
    assert [describe(c.ir) for c in s.include[1:]] == [
        "has a record of stroke within 30 days after coronary stent (its status is completed)",
        "has been on drug without a break of more than 7 days for the last 90 days",
    ]


def test_render_phrases(kit):
    from screener.rules.render import describe

    s = kit.make_study(
        {
            "a": "glucose|latest('30d') >= 4 && glucose|latest('30d') < 7",
            "b": "!(sex in ['F', 'O']) || dx|count('1y') > 2",
            "c": "stroke|days_since <= 3",
        }
    )
    text = [describe(c.ir) for c in s.include]
    assert text == [
        "the most recent glucose (mmol/L) in the last 30 days is at least 4 and less than 7",
        "not (sex is one of: F, O) or the number of dx records in the last 1 year is more than 2",
        "days since the last record of stroke is at most 3",
    ]


def test_public_render_has_no_codes_ids_or_internal_names(kit):
    s = kit.make_study({"recent_stroke": "stroke|within('6h')"})
    public = s.render_markdown(public=True)
    assert "- **Recent stroke**: has a record of stroke in the last 6 hours" in public
    assert "T-1" not in public and "I63" not in public and "Code lists" not in public
    assert "I63" in s.render_markdown()  # the full rendering keeps the code lists


def test_render_public_flag():
    out = run("render", "--public", str(DATA / "ckd.yaml"))
    assert out.exit_code == 0
    assert "CKD-TEST" not in out.output and "## Code lists" not in out.output
