"""Every kind of load-time error: FILE:LINE:COL, the message and the did-you-mean suggestion."""

from __future__ import annotations

import pytest

from screener.errors import RuleError
from screener.rules import RuleErrors, load_studies, load_study, loads_study

HEAD = """\
study:
  id: T-1
  title: Test
  sponsor: commercial
  target: 10
  opens: 2026-01-01
  closes: 2026-12-31
  team: t
concepts:
  t2dm: {icd10: [E11]}
  egfr: {loinc: ["62238-1"], unit: mL/min/1.73m2}
include:
"""  # criteria start on line 13, values of `  a: ` in column 6


def error_of(text: str) -> str:
    with pytest.raises(RuleError) as info:
        loads_study(text, "s.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("criterion", "expected"),
    [
        ("a: t2dn|ever", "s.yaml:13:6: error: in 'a': unknown concept set 't2dn' (did you mean 't2dm'?)"),
        ("a: age > 18 && agee < 3", "s.yaml:13:18: error: in 'a': unknown name 'agee' (did you mean 'age'?)"),
        ("a: t2dm|evr", "s.yaml:13:11: error: in 'a': unknown transform 'evr' (did you mean 'ever'?)"),
        (
            "a: t2dm|ever > 3",
            "s.yaml:13:6: error: in 'a': cannot compare true/false with a number using '>' (t2dm|ever)",
        ),
        ("a: age && 1", "s.yaml:13:6: error: in 'a': '&&' needs true/false on both sides, got a number (age)"),
        ("a: sex == 3", "s.yaml:13:6: error: in 'a': cannot compare text with a number using '==' (sex)"),
        ("a: site > 3", "s.yaml:13:6: error: in 'a': cannot compare text with a number using '>' (site)"),
        (
            "a: \"sex == 'f'\"",
            "s.yaml:13:15: error: in 'a': 'f' is not a value of sex (one of F, M, O, U) (did you mean 'F'?)",
        ),
        (
            "a: ethnic_group in ['Asian']",
            "s.yaml:13:24: error: in 'a': 'Asian' is not a value of ethnic_group (one of asian, black, mixed, white, "
            "other) (did you mean 'asian'?)",
        ),
        (
            "a: egfr|latest('1y') + 'x' > 3",
            "s.yaml:13:6: error: in 'a': '+' needs numbers on both sides, got a number and text",
        ),
        (
            "a: t2dm|within('90x')",
            "s.yaml:13:19: error: in 'a': bad window '90x': expected a whole number and a unit (m minutes, h hours, "
            "d days, w weeks, mo months, y years), e.g. '90d'",
        ),
        ("a: t2dm|within", "s.yaml:13:11: error: in 'a': transform 'within' needs a window, e.g. t2dm|within('90d')"),
        (
            "a: t2dm|within(90)",
            "s.yaml:13:11: error: in 'a': the window of 'within' must be a quoted string such as '90d'",
        ),
        ("a: t2dm|ever('1y')", "s.yaml:13:11: error: in 'a': transform 'ever' takes no arguments"),
        (
            "a: t2dm",
            "s.yaml:13:6: error: in 'a': concept set 't2dm' needs a transform, e.g. t2dm|ever or t2dm|within('90d')",
        ),
        (
            "a: age|ever",
            "s.yaml:13:6: error: in 'a': 'age' is a person attribute; transforms like '|ever' apply to concept sets",
        ),
        (
            "a: age >",
            "s.yaml:13:6: error: in 'a': cannot parse expression 'age >' (check quotes, brackets and operators)",
        ),
        (
            "a: egfr|latest('1y')",
            "s.yaml:13:6: error: in 'a': a criterion must be true/false, but this expression gives a number",
        ),
        ("a: sex in 'F'", "s.yaml:13:6: error: in 'a': 'in' needs a list literal on the right, e.g. sex in ['F', 'O']"),
        ("a: age.years > 3", "s.yaml:13:10: error: in 'a': '.years': attribute access is not supported"),
    ],
)
def test_expression_errors(criterion, expected):
    assert error_of(HEAD + "  " + criterion + "\n") == expected


def test_parse_error_in_block_scalar_points_at_the_value():
    text = HEAD + "  a: >\n    age > 18 &&\n    agee < 3\n"
    assert error_of(text) == "s.yaml:13:6: error: in 'a': unknown name 'agee' (did you mean 'age'?)"


def test_duplicate_names():
    assert error_of(HEAD + "  a: age > 1\n  a: age > 2\n") == (
        "s.yaml:14:3: error: duplicate key 'a' (first defined on line 13)"
    )
    text = HEAD + "  a: age > 1\n  b:\n    any:\n      a: age > 3\n"
    assert error_of(text) == "s.yaml:16:7: error: duplicate criterion name 'a' (first defined on line 13)"
    text = HEAD + "  a: age > 1\nexclude:\n  a: age > 2\n"
    assert error_of(text) == "s.yaml:15:3: error: duplicate criterion name 'a' (first defined on line 13)"


def test_group_errors():
    text = HEAD + "  b:\n    anyy:\n      c: age > 3\n"
    assert (
        error_of(text) == "s.yaml:13:3: error: group 'b' needs exactly one of any / all / at_least "
        "(did you mean 'any'?)"
    )
    text = HEAD + "  b:\n    at_least: 3\n    of:\n      c: age > 3\n      d: age < 9\n"
    assert error_of(text) == "s.yaml:14:15: error: group 'b' needs at least 3 of only 2 criteria"
    text = HEAD + "  in_setting: age > 3\n"
    assert error_of(text) == "s.yaml:13:3: error: 'in_setting' is reserved (it is added from study.settings)"


@pytest.mark.parametrize(
    ("concept", "expected"),
    [
        (
            "x: {icd11: [250]}",
            "s.yaml:12:7: error: unknown code system or key 'icd11' in concept 'x' (did you mean 'icd10'?)",
        ),
        (
            "x: {icd10: [E11], exclude: {snowmed: ['1234567']}}",
            "s.yaml:12:31: error: unknown code system 'snowmed' in concept 'x' (did you mean 'snomed'?)",
        ),
        (
            "x: {loinc: ['2345-7'], unit: mmol/LL}",
            "s.yaml:12:32: error: unknown unit 'mmol/LL' in concept 'x' (did you mean 'mmol/l'?)",
        ),
        ("x: {icd10: [E11], unit: furlongs}", "s.yaml:12:27: error: unknown unit 'furlongs' in concept 'x'"),
        ("x: {loinc: ['2345'], unit: mmol/L}", "s.yaml:12:15: error: '2345' is not a valid LOINC code (concept 'x')"),
        ("x: {ref: diabetis}", None),
        ("x: {icd10: [E11, E1l]}", "s.yaml:12:20: error: 'E1l' is not a valid ICD10 code (concept 'x')"),
        ("x: {icd10: []}", "s.yaml:12:3: error: concept 'x' lists no codes"),
        (
            "age: {icd10: [E11]}",
            "s.yaml:12:3: error: concept name 'age' clashes with the person attribute of that name",
        ),
    ],
)
def test_concept_errors(concept, expected, tmp_path):
    text = HEAD.replace("include:\n", f"  {concept}\ninclude:\n  a: age > 3\n")
    if expected is None:  # shared concept reference: looked up in concepts/ beside the file
        (tmp_path / "concepts").mkdir()
        (tmp_path / "concepts" / "shared.yaml").write_text("concepts:\n  diabetes: {icd10: [E10, E11]}\n")
        f = tmp_path / "s.yaml"
        f.write_text(text)
        with pytest.raises(RuleError) as info:
            load_study(f)
        assert str(info.value) == (
            f"{f}:12:12: error: unknown shared concept set 'diabetis' (looked in {tmp_path / 'concepts'}) "
            "(did you mean 'diabetes'?)"
        )
        return
    assert error_of(text) == expected


def test_shared_concept_ref_loads(tmp_path):
    (tmp_path / "concepts").mkdir()
    (tmp_path / "concepts" / "shared.yaml").write_text("concepts:\n  diabetes: {icd10: [E10, E11]}\n")
    f = tmp_path / "s.yaml"
    f.write_text(HEAD.replace("include:\n", "  dm: {ref: diabetes}\ninclude:\n  a: dm|ever\n"))
    study = load_study(f)
    assert study.concepts["dm"].codes == (("ICD10", "E10"), ("ICD10", "E11"))
    assert study.rule_hash != study.content_hash  # the shared file is part of the rule hash


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  sponsor: commercial\n",
            "  sponsor: comercial\n",
            "s.yaml:4:12: error: unknown sponsor 'comercial' (one of commercial, non-commercial) "
            "(did you mean 'commercial'?)",
        ),
        (
            "  opens: 2026-01-01\n",
            "  opens: 2026-13-01\n",
            "s.yaml:6:10: error: study 'opens' must be a date like 2026-01-05, got '2026-13-01'",
        ),
        (
            "  closes: 2026-12-31\n",
            "  closes: 2025-12-31\n",
            "s.yaml:7:11: error: study closes (2025-12-31) before it opens (2026-01-01)",
        ),
        (
            "  id: T-1\n",
            "  id: t 1\n",
            "s.yaml:2:7: error: study id 't 1' must be capitals, digits and '-' (e.g. CKD-SGLT2-COMM)",
        ),
        ("  team: t\n", "", "s.yaml:2:3: error: study 'team' is required"),
        (
            "  target: 10\n",
            "  target: many\n",
            "s.yaml:5:11: error: study 'target' must be a whole number of participants, got 'many'",
        ),
        (
            "  team: t\n",
            "  team: t\n  setings: [hospital]\n",
            "s.yaml:9:3: error: unknown study key 'setings' (did you mean 'settings'?)",
        ),
        (
            "  team: t\n",
            "  team: t\n  settings: [hospitl]\n",
            "s.yaml:9:14: error: unknown setting 'hospitl' (one of hospital, community, primary-care, home) "
            "(did you mean 'hospital'?)",
        ),
        ("include:\n", "includes:\n", "s.yaml:12:1: error: unknown top-level key 'includes' (did you mean 'include'?)"),
    ],
)
def test_metadata_errors(old, new, expected):
    text = (HEAD + "  a: age > 3\n").replace(old, new, 1)
    msg = error_of(text)
    assert msg.splitlines()[0] == expected


def test_yaml_syntax_error():
    assert error_of(HEAD + "  a: [age > 3\n") == (
        "s.yaml:14:1: error: YAML syntax: expected ',' or ']', but got '<stream end>'"
    )
    assert error_of("study: {id: X\n").startswith("s.yaml:2:1: error: YAML syntax:")


def test_several_errors_are_all_reported():
    text = HEAD + "  a: t2dn|ever\n  b: age > 'x'\n"
    with pytest.raises(RuleErrors) as info:
        loads_study(text, "s.yaml")
    assert [e.line for e in info.value.errors] == [13, 14]
    assert len(str(info.value).splitlines()) == 2


def test_test_case_errors():
    text = HEAD + (
        "  a: age > 3\n"
        "tests:\n"
        "  - name: one\n"
        "    person: {sex: X}\n"
        "    events:\n"
        "      - {kind: condition, code: {system: ICD10, value: E11}, occurred_at: 2026-01-01}\n"
        "      - {kind: condition, occurred_at: 2026-01-01}\n"
        "    expect: eligble\n"
        "    criteria: {aa: true}\n"
    )
    with pytest.raises(RuleErrors) as info:
        loads_study(text, "s.yaml")
    lines = str(info.value).splitlines()
    assert (
        lines[0] == "s.yaml:20:13: error: test 'one': 'expect' must be one of eligible, possible, "
        "ineligible (did you mean 'eligible'?)"
    )
    assert lines[1].startswith("s.yaml:16:13: error: test 'one': person: field 'person.sex'")
    assert (
        lines[2] == "s.yaml:19:9: error: test 'one': event 2: field 'code': a condition event needs a code; "
        "expected {system, value}"
    )
    assert lines[3] == "s.yaml:21:16: error: test 'one': unknown criterion 'aa' (did you mean 'a'?)"


def test_load_studies_never_stops_at_a_bad_file(tmp_path):
    good = HEAD + "  a: age > 3\n"
    (tmp_path / "a.yaml").write_text(good.replace("T-1", "T-A"))
    (tmp_path / "b.yaml").write_text(HEAD + "  a: t2dn|ever\n")
    (tmp_path / "c.yaml").write_text("study: [\n")
    (tmp_path / "d.yaml").write_text(good.replace("T-1", "T-D"))
    (tmp_path / "e.yaml").write_text(good.replace("T-1", "T-A"))
    (tmp_path / "concepts").mkdir()
    (tmp_path / "concepts" / "x.yaml").write_text("not: [a study\n")  # never loaded as a study
    result = load_studies([tmp_path])
    assert [s.id for s in result.studies] == ["T-A", "T-D"]
    assert [e.file.rsplit("/", 1)[1] for e in result.errors] == ["b.yaml", "c.yaml", "e.yaml"]
    assert "also used by" in result.errors[2].message


def test_load_study_missing_file(tmp_path):
    with pytest.raises(RuleError, match="cannot read rule file"):
        load_study(tmp_path / "nope.yaml")
