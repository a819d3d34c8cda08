"""The YAML loader keeps positions; the loaded Study carries its metadata, hashes and test cases."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from screener.errors import RuleError
from screener.rules import load_study
from screener.rules._yaml import Map, Seq, load_yaml

DATA = Path(__file__).parent / "data"


def test_positions_of_keys_values_and_items():
    doc = load_yaml("a: 1\nb:\n  c: [x, y]\n  d: 'q'\ne:\n  - {k: v}\n  - w\n", "f.yaml")
    assert isinstance(doc, Map)
    assert doc.marks == {"a": (1, 1), "b": (2, 1), "e": (5, 1)}
    assert doc.value_marks["a"] == (1, 4)
    assert doc["b"].marks["d"] == (4, 3) and doc["b"].value_marks["d"] == (4, 6)
    assert doc["b"].value_styles["d"] == "'"
    assert isinstance(doc["e"], Seq) and doc["e"].marks == [(6, 5), (7, 5)]
    assert doc["b"]["c"].marks == [(3, 7), (3, 10)]


def test_duplicate_key_and_syntax_errors():
    with pytest.raises(RuleError, match=r"^f.yaml:3:1: error: duplicate key 'a' \(first defined on line 1\)$"):
        load_yaml("a: 1\nb: 2\na: 3\n", "f.yaml")
    with pytest.raises(RuleError, match=r"^f.yaml:2:4: error: YAML syntax: mapping values are not allowed here \("):
        load_yaml("a: 1\n  b: 2\n", "f.yaml")


def test_a_text_loaded_again_is_a_fresh_copy_of_the_same_document():
    """load_yaml keeps each parsed text (screener.rules._yaml._parsed): a second load is equal, positions and
    styles too, but shares no map or list with the first, keeps an alias one object, and an error still names
    the file of each load."""
    text = "a: &x [1, {k: 'v'}]\nb: *x\nc: 2026-01-02\nd: !!set {p: null}\n"
    first, again = load_yaml(text, "f.yaml"), load_yaml(text, "g.yaml")
    assert first == again and first is not again
    assert (again.marks, again.value_marks, again.value_styles) == (first.marks, first.value_marks, first.value_styles)
    assert isinstance(again["a"], Seq) and again["a"].marks == first["a"].marks
    assert again["a"] is not first["a"] and again["a"][1] is not first["a"][1] and again["d"] is not first["d"]
    assert again["a"] is again["b"] and first["a"] is first["b"]  # an alias: one value held twice, as parsed
    first["a"][1]["k"] = "changed"
    first["a"][1].marks["k"] = (9, 9)
    assert load_yaml(text, "f.yaml")["a"][1] == {"k": "v"} and load_yaml(text, "f.yaml")["a"][1].marks["k"] != (9, 9)
    for name in ("f.yaml", "g.yaml", "f.yaml"):
        with pytest.raises(RuleError, match=rf"^{name}:3:1: error: duplicate key 'a'"):
            load_yaml("a: 1\nb: 2\na: 3\n", name)


def test_sample_study_loads_with_positions():
    path = DATA / "ckd.yaml"
    s = load_study(path)
    assert (s.id, s.sponsor, s.portfolio, s.target, s.team) == ("CKD-TEST", "commercial", True, 120, "renal-research")
    assert (s.opens, s.closes, s.settings) == (date(2026, 1, 5), date(2027, 6, 30), ("community", "hospital"))
    assert s.content_hash == hashlib.sha256(path.read_bytes()).hexdigest() == s.rule_hash
    assert [c.name for c in s.include] == ["in_setting", "adult", "diabetic", "egfr_in_range", "risk"]
    assert [(c.name, c.line, c.column) for c in s.include[1:]] == [
        ("adult", 19, 3),
        ("diabetic", 20, 3),
        ("egfr_in_range", 21, 3),
        ("risk", 22, 3),
    ]
    risk = s.include[-1]
    assert risk.kind == "any" and [(c.name, c.line) for c in risk.children] == [("albuminuria", 24), ("on_acei", 25)]
    assert s.concepts["egfr"].line == 14 and s.concepts["egfr"].unit == "mL/min/1.73m2"
    assert s.concepts["insulin"].exclude == (("ATC", "A10AE56"),)
    assert [t.line for t in s.tests] == [29, 38, 48]
    assert s.tests[0].now == datetime(2026, 6, 1, 9, tzinfo=UTC)
    assert s.tests[2].criteria == {"egfr_in_range": None}
    assert s.is_open(datetime(2026, 1, 5, tzinfo=UTC)) and s.is_open(datetime(2027, 6, 30, 23, tzinfo=UTC))
    assert not s.is_open(datetime(2026, 1, 4, 23, tzinfo=UTC))


def test_default_test_time_is_opening_day_noon(kit):
    case = "tests:\n  - {name: x, person: {birth_date: 2000-01-01}, expect: eligible}\n"
    text = kit.study_text({"a": "age > 3"}) + case
    from screener.rules import loads_study

    s = loads_study(text, "t.yaml")
    assert s.tests[0].now == datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_groups_accept_of_key(kit):
    s = kit.make_study({"g": {"any": {"of": {"a": "age > 3", "b": "age < 1"}}}, "h": {"all": {"c": "age > 3"}}})
    assert [c.name for c in s.include[0].children] == ["a", "b"]
    assert s.include[1].kind == "all"


def test_yaml_hints_for_unquoted_expressions(kit):
    from screener.rules import loads_study

    base = (DATA / "ckd.yaml").read_text()
    with pytest.raises(RuleError) as info:
        loads_study(base.replace("  diabetic:      t2dm|ever", "  diabetic:      !t2dm|ever"), "x.yaml")
    assert str(info.value) == (
        "x.yaml:20:23: error: YAML syntax: expected ' ', but found '|' (quote an expression "
        "that starts with '!', e.g. \"!x|ever\")"
    )
    with pytest.raises(RuleError) as info:
        loads_study(base.replace("  diabetic:      t2dm|ever", "  diabetic:      t2dm|ever ? true : false"), "x.yaml")
    assert str(info.value).startswith("x.yaml:20:35: error: YAML syntax: mapping values are not allowed here (quote")
    quoted = loads_study(base.replace("  diabetic:      t2dm|ever", '  diabetic:      "!t2dm|ever ? false : true"'))
    assert quoted.include[2].expression == "!t2dm|ever ? false : true"


def test_studies_hash_by_identity():
    a, b = load_study(DATA / "ckd.yaml"), load_study(DATA / "ckd.yaml")
    assert len({a, b}) == 2 and a.rule_hash == b.rule_hash
