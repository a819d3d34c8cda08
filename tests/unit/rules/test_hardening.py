"""Issue 17 item 1: one hostile rule file never stops the others (each of these failed on the old code: a
RecursionError, a traceback, an OverflowError or an 80 MB message), plus the load-time checks of issue 14 and
the module structure (no import cycle, no module over ~400 lines)."""

from __future__ import annotations

import ast
from datetime import date
from pathlib import Path

import pytest

from screener.errors import RuleError
from screener.rules import load_studies, loads_study
from screener.rules.reference import evaluate_patient

RULES_PKG = Path(__file__).resolve().parents[3] / "screener" / "rules"

GOOD = """\
study: {id: GOOD-1, title: Good, sponsor: commercial, target: 1, opens: 2026-01-01, closes: 2026-12-31, team: t}
include:
  adult: age >= 18
"""


def hostile_file(criterion: str, prefix: str = "", concepts: str = "") -> str:
    return (
        prefix
        + "study: {id: BAD-1, title: Bad, sponsor: commercial, target: 1, opens: 2026-01-01, closes: 2026-12-31, "
        "team: t}\n" + concepts + f"include:\n  c: {criterion}\n"
    )


BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'E11'] * 10)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f"], ["a", "b", "c", "d", "e", "f", "g"], strict=True)
)

HOSTILE = {
    "60 nested parentheses": (hostile_file("'" + "(" * 60 + "age > 1" + ")" * 60 + "'"), "nested 60 brackets deep"),
    "200 nested groups": (hostile_file("'" + "[" * 200 + "1" + "]" * 200 + "'"), "nested 200 brackets deep"),
    "a 1000-term && chain": (hostile_file("'" + " && ".join(["age > 1"] * 1000) + "'"), "characters long"),
    "a 300-term chain under the length limit": (hostile_file("'" + "&&".join(["age>1"] * 150) + "'"), "300 terms"),
    "a 1M-digit literal": (hostile_file("'age > " + "9" * 1_000_000 + "'"), "the limit is 4000"),
    "a 40-digit literal": (hostile_file("'age > " + "9" * 40 + "'"), "a number literal is 40 characters long"),
    "a YAML alias bomb": (
        hostile_file("x|ever", prefix=BOMB, concepts="concepts:\n  x: {icd10: *g}\n"),
        "expands to more than 200000 values",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_file_is_one_short_error_and_the_others_load(tmp_path, name):
    text, words = HOSTILE[name]
    (tmp_path / "a-bad.yaml").write_text(text)
    (tmp_path / "b-good.yaml").write_text(GOOD)
    result = load_studies([tmp_path])
    assert [s.id for s in result.studies] == ["GOOD-1"]
    assert len(result.errors) == 1
    message = result.errors[0].format()
    assert words in message
    assert message.startswith(f"{tmp_path / 'a-bad.yaml'}:")  # FILE:LINE...
    assert ":" in message.split(": error:")[0].rsplit("a-bad.yaml", 1)[1]  # ...:LINE:COL
    assert len(message) < 600  # never echoes the hostile value


def test_any_unexpected_failure_is_that_files_rule_error(tmp_path, monkeypatch):
    import screener.rules.loader as loader

    def broken(self):
        raise KeyError("x" * 10_000)

    (tmp_path / "a.yaml").write_text(GOOD)
    monkeypatch.setattr(loader._Builder, "build", broken)
    result = load_studies([tmp_path])
    assert result.studies == [] and len(result.errors) == 1
    assert "cannot load the file (KeyError: " in str(result.errors[0]) and len(str(result.errors[0])) < 300
    with pytest.raises(RuleError, match="cannot load the file"):
        loads_study(GOOD, "a.yaml")


@pytest.mark.parametrize("expr", ["age ^ 99999999 ^ 99999999 > 3", "(0 - age) ^ 0.5 > 1", "age / 0 > 1"])
def test_arithmetic_overflow_is_unknown_in_both_evaluators(kit, expr):
    study = kit.make_study({"c": expr})
    state = kit.make_state([{"patient_id": "P1", "birth_date": date(1980, 1, 1)}])
    assert kit.evaluate(study, state)["P1"]["c"] is None
    assert evaluate_patient(study, state.persons.row(0, named=True), [], kit.NOW) == ("possible", {"c": None})


CHECK_CONCEPTS = """\
concepts:
  copd_exac: {snomed: ["195951007"]}
  t2dm: {icd10: [E11]}
  egfr: {loinc: ["62238-1"], unit: mL/min/1.73m2}
"""


@pytest.mark.parametrize(
    ("expr", "concepts", "message"),
    [
        (
            "copd_exac|earliest('12mo') > 0",
            CHECK_CONCEPTS,
            "'copd_exac|earliest' reads values, but concept set 'copd_exac' has no unit: every value would be "
            "unknown (give the set a unit, e.g. unit: mmol/L, or unit: '{score}' for a score)",
        ),
        (
            "t2dm[.route == 'oral']|ever",
            CHECK_CONCEPTS,
            "'.route' is never recorded on ICD10 codes (condition facts) of concept set 't2dm'; their fields: "
            ".status, .setting, .location, .kind, .code, .duration_days, .encounter, .qualifiers",
        ),
        ("age > 150", CHECK_CONCEPTS, "'age > 150' can never be true (age is 0 to 150)"),
        ("imd_decile > 10", CHECK_CONCEPTS, "'imd_decile > 10' can never be true (imd_decile is 1 to 10)"),
        ("t2dm|count < 0", CHECK_CONCEPTS, "'t2dm|count < 0' can never be true (t2dm|count is at least 0)"),
        ("t2dm|ever > 3", CHECK_CONCEPTS, "cannot compare true/false with a number using '>'"),
        (
            "egfr[.rout == 'oral']|ever",
            CHECK_CONCEPTS,
            "unknown fact field '.rout' (one of .value, .ref_low, .ref_high, .dose, .dose_unit, .route, .status, "
            ".setting, .location, .kind, .code, .value_code, .duration_days, .encounter, .qualifiers) (did you "
            "mean 'route'?)",
        ),
        ("t2dm[.status == 'done']|ever", CHECK_CONCEPTS, "'done' is not a value of .status (one of active, "),
        ("t2dm|ever[.status == 'active']", CHECK_CONCEPTS, "a filter goes on the concept set, before the transform"),
        ("t2dm|episodes > 1", CHECK_CONCEPTS, "transform 'episodes' takes 'GAP', an optional 'WINDOW', e.g. "),
    ],
)
def test_load_time_checks(kit, expr, concepts, message):
    with pytest.raises(RuleError) as info:
        kit.make_study({"c": expr}, concepts=concepts)
    text = info.value.format()
    assert text.startswith("t.yaml:") and ": error: in 'c': " in text
    assert message in text


def test_a_unit_impossible_for_the_loinc_code(kit):
    with pytest.raises(RuleError) as info:
        kit.make_study({"c": "egfr|latest < 30"}, concepts='concepts:\n  egfr: {loinc: ["62238-1"], unit: mmol/L}\n')
    text = info.value.format()
    assert text.startswith("t.yaml:10:")
    assert "unit 'mmol/L' of concept 'egfr' is impossible for LOINC 62238-1" in text
    assert "its values are in mL/min/1.73m2" in text


def _imports(path: Path) -> set[str]:
    """The screener.rules modules a module imports at import time (top level, not inside functions)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("screener.rules."):
            out.add(node.module.removeprefix("screener.rules."))
    return out


def test_rules_modules_form_no_import_cycle_and_stay_small():
    graph = {p.stem: _imports(p) for p in RULES_PKG.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"import cycle: {' -> '.join([*path, name])}"
        state[name] = 1
        for dep in graph.get(name, ()):
            visit(dep, [*path, name])
        state[name] = 2

    for name in graph:
        visit(name, [])
    sizes = {p.name: len(p.read_text().splitlines()) for p in RULES_PKG.glob("*.py")}
    assert max(sizes.values()) <= 420, sizes
