"""The rule loader's two YAML parsers: libyaml (the fast path) and PyYAML's pure-Python parser (the reference,
and every error's wording) give the same document, positions and styles included, for every text libyaml takes;
whatever libyaml leaves, the pure-Python parser decides, as it did alone. (libyaml: the binding in PyPI's PyYAML
wheels.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from screener.errors import RuleError
from screener.rules import _yaml
from screener.rules._yaml import Map, Seq, load_yaml
from tests.hypothesis_profiles import examples

ROOT = Path(__file__).resolve().parents[3]


def test_pyyaml_has_its_libyaml_binding() -> None:
    """PyPI's PyYAML wheels carry it; without it every file takes the pure-Python parser (correct, slower)."""
    assert yaml.__with_libyaml__ and _yaml._C_LOADER is not None


def _tree(value: Any) -> Any:
    """Everything the loader hands on: values, types, and the positions and styles of maps and lists."""
    if isinstance(value, Map):
        rows = [(k, _tree(v), value.marks[k], value.value_marks[k], value.value_styles[k]) for k, v in value.items()]
        return ("map", value.mark, rows)
    if isinstance(value, Seq):
        return ("seq", value.mark, [(_tree(v), m) for v, m in zip(value, value.marks, strict=True)])
    if isinstance(value, dict):
        return ("dict", [(k, _tree(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_tree(v) for v in value])
    return (type(value).__name__, repr(value))


def _outcome(text: str) -> tuple[str, Any]:
    """What :func:`load_yaml` gives: the document's tree, or the error (its type and text; the rule loader makes
    any exception a :class:`RuleError`, one with a position when it is one)."""
    try:
        return ("document", _tree(load_yaml(text, "f.yaml")))
    except RuleError as exc:
        return ("error", exc.format())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def _reference(text: str) -> tuple[str, Any]:
    """What the pure-Python parser alone gives (the loader before libyaml)."""
    try:
        return ("document", _tree(_yaml._parse_python(text, "f.yaml")))
    except RuleError as exc:
        return ("error", exc.format())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def _rule_files() -> list[Path]:
    folders = [ROOT / "rules", ROOT / "rules" / "concepts", ROOT / "tests" / "unit" / "rules" / "data"]
    return sorted(p for folder in folders for p in folder.glob("*.y*ml"))


def test_every_rule_file_of_the_project_is_the_same_document_from_either_parser() -> None:
    files = _rule_files()
    assert len(files) >= 18
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert _tree(_yaml._parse_c(text)) == _reference(text)[1], path


def test_a_document_libyaml_takes_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is used: a valid rule file never reaches the pure-Python parser (a test that would pass with
    libyaml never used is no test of it)."""

    def refuse(text: str, file: str) -> Any:
        raise AssertionError("parsed by the pure-Python parser")

    monkeypatch.setattr(_yaml, "_parse_python", refuse)
    text = (ROOT / "rules" / "dapa-hf.yaml").read_text(encoding="utf-8")
    assert isinstance(_yaml._parse(text, "dapa-hf.yaml"), Map)


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\n  b: 2\n",  # libyaml refuses: the error is PyYAML's, with its hint
        "x: !x|ever\n",  # an unknown tag: constructed by neither
        "a: 1\nb: 2\na: 3\n",  # a duplicate key: libyaml composes it, the constructor refuses
        "a: [" + "[" * 150 + "1" + "]" * 150 + "]\n",  # deeper than the C path constructs
        "a: " + "[" * 1100 + "]" * 1100 + "\n",  # deeper than libyaml composes
        "k: [1, 2\n",  # an unclosed flow sequence
        "a: \t1\nb:\t- x\n",  # tabs
        "a: *nothing\n",  # an undefined alias
        "a: 1\n---\nb: 2\n",  # two documents
        "a: '\ud800'\n",  # a lone surrogate, which libyaml cannot be handed
        # where the two part (found by fuzzing; screener.rules._yaml._PYTHON_ONLY sends these to PyYAML):
        "x\nx\t\n",  # a tab after a plain scalar: PyYAML refuses it, libyaml takes it
        "\ufeff\ufeff11",  # two byte-order marks: libyaml drops both (11), PyYAML one ('\ufeff11')
        "a\ufeffb: c",  # a byte-order mark inside: libyaml counts the columns after it one further
        "- >#x\n",  # a block scalar header then a comment without a space: PyYAML refuses it
        "- ? k",  # a complex key without a value: libyaml places the null on the next line
        "{2026-01-02 10:00:00?}",  # '?' inside a plain scalar in a flow collection: PyYAML refuses it
        "%YAML 1.1#\n---\n",  # a directive then a comment without a space: PyYAML refuses it
        "- !\n",  # the non-specific tag alone: libyaml an empty text, PyYAML null
    ],
)
def test_what_libyaml_leaves_is_decided_by_the_pure_python_parser(text: str) -> None:
    assert _outcome(text) == _reference(text)


def test_the_c_path_leaves_deep_documents_to_the_pure_python_parser() -> None:
    shallow = "a: " + "[" * (_yaml._C_MAX_DEPTH - 2) + "1" + "]" * (_yaml._C_MAX_DEPTH - 2) + "\n"
    deep = "a: " + "[" * _yaml._C_MAX_DEPTH + "1" + "]" * _yaml._C_MAX_DEPTH + "\n"
    assert _tree(_yaml._parse_c(shallow)) == _reference(shallow)[1]
    with pytest.raises(Exception):  # noqa: B017  (any exception: the caller parses it again in Python)
        _yaml._parse_c(deep)
    assert _outcome(deep) == _reference(deep)


def test_an_alias_cycle_ends_the_depth_walk() -> None:
    node = yaml.compose("a: &x [1, *x]\n", Loader=yaml.SafeLoader)
    assert _yaml._deeper_than(node, 50)
    assert not _yaml._deeper_than(yaml.compose("a: &x [1]\nb: *x\n", Loader=yaml.SafeLoader), 50)


# Lines of YAML-ish text from the pieces where the two parsers could part: indicators, quotes and escapes, flow
# collections, block scalars, anchors and aliases, tags, comments, tabs, other line breaks, non-ASCII text.
_scalar = st.sampled_from(
    [
        "x",
        "age >= 18",
        "t2dm|ever",
        "'q: r'",
        '"a\\tb\\u00e9"',
        "'it''s'",
        "µmol/L",
        "é",
        "🙂",
        "2026-01-02",
        "2026-13-01",
        "12:30",
        "1_000",
        "0x1f",
        "1e3",
        ".inf",
        "~",
        "null",
        "yes",
        "No",
        "[1, 'a', {k: v}]",
        "{a: 1, b: [x]}",
        "[]",
        "{}",
        "&a v",
        "*a",
        "!!str 5",
        "!!set {p: null}",
        "a # c",
        "-1",
        "- x",
        "? k",
        "|",
        ">-",
        "'unclosed",
        "a:b",
        "a\tb",
        "%",
        "@x",
        "`x",
        "",
    ]
)
_key = st.sampled_from(["a", "b", "include", "study", "k1", "'q k'", '"d"', "? x", "1", "null", "é", "<<"])
_line = st.builds(
    lambda indent, dash, key, value, comment: " " * indent + dash + (f"{key}: " if key else "") + value + comment,
    st.integers(0, 6),
    st.sampled_from(["", "- ", "- - "]),
    st.one_of(st.none(), _key),
    _scalar,
    st.sampled_from(["", "", " # note", "\t", " "]),
)
_documents = st.builds(
    lambda start, lines, breaks: start + "".join(line + brk for line, brk in zip(lines, breaks, strict=False)),
    st.sampled_from(["", "", "---\n", "\ufeff", "%YAML 1.1\n---\n", "# c\n"]),
    st.lists(st.one_of(_line, st.sampled_from(["  more text", "...", "---", "", "  - y"])), min_size=1, max_size=8),
    st.lists(st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\x85", "\u2028"]), min_size=8, max_size=8),
)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_documents)
def test_any_text_loads_as_the_pure_python_parser_loads_it(text: str) -> None:
    assert _outcome(text) == _reference(text)
