"""A YAML loader that remembers where every key and value came from.

Mappings load as :class:`Map` (a dict) whose ``marks`` give the 1-based ``(line, column)`` of each key and
``value_marks`` of each value; sequences load as :class:`Seq` (a list) with ``marks`` per item. Scalars stay
plain Python values. Duplicate keys are an error (YAML would silently keep the last one).

Documents are composed by libyaml (PyYAML's C parser) when it is there, about ten times faster than PyYAML's
pure-Python scanner and parser, and constructed by the same Python code either way. Whatever libyaml does not
compose, or composes deeper than :data:`_C_MAX_DEPTH`, and any document whose construction fails, is loaded
again by the pure-Python parser, so every error (its text, line and column) is the one that parser gives.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import yaml
import yaml.constructor

from screener.errors import RuleError
from screener.rules._limits import MAX_FILE_BYTES, excerpt, yaml_problem

__all__ = ["Map", "Mark", "Seq", "load_yaml"]

Mark = tuple[int, int]


class Map(dict[Any, Any]):
    """A mapping with source positions: ``marks[key]`` (the key) and ``value_marks[key]`` (the value)."""

    def __init__(self) -> None:
        super().__init__()
        self.mark: Mark = (1, 1)
        self.marks: dict[Any, Mark] = {}
        self.value_marks: dict[Any, Mark] = {}
        #: For scalar values: the YAML style (None plain, '"' or "'" quoted, '|' or '>' block) and the raw
        #: source column offset of the text, used to point inside an expression.
        self.value_styles: dict[Any, str | None] = {}


class Seq(list[Any]):
    """A sequence with source positions: ``marks[i]`` for item ``i`` and ``mark`` for the sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.mark: Mark = (1, 1)
        self.marks: list[Mark] = []


def _pos(node: yaml.Node) -> Mark:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Constructor(yaml.constructor.SafeConstructor):  # type: ignore[misc]  # PyYAML ships no type information
    """SafeConstructor that builds :class:`Map`/:class:`Seq` and records node marks (of either parser)."""

    file: str = "<rules>"

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Map:
        if not isinstance(node, yaml.MappingNode):
            raise RuleError("expected a mapping", file=self.file, line=_pos(node)[0], column=_pos(node)[1])
        self.flatten_mapping(node)
        result = Map()
        result.mark = _pos(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                line, col = _pos(key_node)
                raise RuleError("a key must be a plain name", file=self.file, line=line, column=col)
            if key in result:
                line, col = _pos(key_node)
                first = result.marks[key][0]
                raise RuleError(
                    f"duplicate key '{key}' (first defined on line {first})", file=self.file, line=line, column=col
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.marks[key] = _pos(key_node)
            result.value_marks[key] = _pos(value_node)
            # libyaml says '' for a plain scalar, PyYAML None
            result.value_styles[key] = (value_node.style or None) if isinstance(value_node, yaml.ScalarNode) else None
        return result

    def construct_yaml_map(self, node: yaml.Node) -> Any:
        yield self.construct_mapping(node, deep=True)

    def construct_yaml_seq(self, node: yaml.Node) -> Any:
        result = Seq()
        result.mark = _pos(node)
        yield result
        for child in node.value:
            result.append(self.construct_object(child, deep=True))
            result.marks.append(_pos(child))


class _Loader(_Constructor, yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type information
    """PyYAML's pure-Python SafeLoader with :class:`_Constructor`: the reference, and every error's wording."""


def _timestamp(loader: _Constructor, node: yaml.Node) -> Any:
    # An impossible date (2026-13-01) stays text so the validator can say which field is wrong and where.
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)
_Constructor.add_constructor("tag:yaml.org,2002:map", _Constructor.construct_yaml_map)
_Constructor.add_constructor("tag:yaml.org,2002:seq", _Constructor.construct_yaml_seq)

_C_LOADER: type[_Constructor] | None = None
if yaml.__with_libyaml__:  # else (a PyYAML built without libyaml) the pure-Python parser does everything

    class _CLoader(_Constructor, yaml.CSafeLoader):  # type: ignore[misc]  # as above
        """libyaml's parser and composer (CSafeLoader) with the same :class:`_Constructor` and PyYAML's resolver."""

    _C_LOADER = _CLoader


#: The deepest document the C path constructs: a deeper one goes to the pure-Python parser, whose recursion
#: (about two Python frames a level) decides, as it always did, whether a deep file loads or is "nested too
#: deeply". A rule file nests a few levels; libyaml itself refuses more than 1,000.
_C_MAX_DEPTH = 100

#: Where libyaml and PyYAML part (found by fuzzing both, tests/unit/rules/test_yaml_parsers.py), so a text with
#: one of these goes to the pure-Python parser: a tab (PyYAML refuses one where libyaml takes it), a byte-order mark
#: (libyaml drops several, and counts columns after one differently), any ``?`` (a complex key's missing value is
#: placed on the next line by libyaml; in a flow collection PyYAML refuses it inside a plain scalar), a directive
#: (``%`` starting a line), a block scalar header followed by a comment without a space (PyYAML refuses both), and
#: the non-specific tag ``!`` alone (libyaml makes it empty text, PyYAML null). Over-matching only costs speed:
#: none of the sample rule files has one.
_PYTHON_ONLY = re.compile(r"[\t\ufeff?]|^%|[|>][-+0-9]*#|!(?=[\s\]},]|$)", re.MULTILINE)


def load_yaml(text: str, file: str) -> Any:
    """Parse one YAML document keeping positions.

    A document parsed before (the same text, whatever its file name) is not parsed again: the caller gets a
    fresh copy of it (:func:`_copied`), so what it does with its maps and lists never reaches the next caller.
    The rule files a process loads again (a reload, the checks of ``screener rules ...``, the tests) cost a copy.

    :raises RuleError: ``FILE:LINE:COL`` for a syntax error or a duplicate key (raised each time, naming ``file``).
    """
    if len(text) > MAX_FILE_BYTES:
        raise RuleError(f"rule file is {len(text)} characters long; the limit is {MAX_FILE_BYTES}", file=file)
    if len(text) > _CACHED_CHARS:
        return _parse(text, file)
    try:
        parsed = _parsed(text)
    except Exception:  # not kept by the cache: parsed again, so the error names this file
        return _parse(text, file)
    return _copied(parsed, {})


#: texts up to this long are kept (a sample rule file is about 10k characters): at most about 32 MB of them
_CACHED_CHARS = 250_000


@functools.lru_cache(maxsize=128)
def _parsed(text: str) -> Any:
    return _parse(text, "<rules>")  # the file name is only ever part of an error, and an error is not kept


def _copied(value: Any, memo: dict[int, Any]) -> Any:
    """A copy of a loaded document: new :class:`Map`/:class:`Seq` (and any other list, dict or set), the same
    immutable scalars; a value the document holds twice (a YAML alias) is one copy held twice, as loaded."""
    if isinstance(value, str | int | float | None):
        return value
    done = memo.get(id(value))
    if done is not None:
        return done
    if isinstance(value, Map):
        m = Map()
        memo[id(value)] = m
        m.mark, m.marks, m.value_marks = value.mark, dict(value.marks), dict(value.value_marks)
        m.value_styles = dict(value.value_styles)
        for k, v in value.items():
            m[k] = _copied(v, memo)
        return m
    if isinstance(value, Seq):
        q = Seq()
        memo[id(value)] = q
        q.mark, q.marks = value.mark, list(value.marks)
        for v in value:  # a loop, not a generator: one frame per level of nesting, as few as the loader's
            q.append(_copied(v, memo))
        return q
    if isinstance(value, list):
        items: list[Any] = []
        memo[id(value)] = items
        for v in value:
            items.append(_copied(v, memo))
        return items
    if isinstance(value, dict):
        d: dict[Any, Any] = {}
        memo[id(value)] = d
        for k, v in value.items():
            d[k] = _copied(v, memo)
        return d
    if isinstance(value, set):
        members = set(value)  # hashable, so immutable scalars or tuples of them
        memo[id(value)] = members
        return members
    if isinstance(value, tuple):
        pairs = tuple(_copied(v, memo) for v in value)
        memo[id(value)] = pairs
        return pairs
    return value  # bytes, dates and timestamps: immutable


class _NotForC(Exception):
    """The C path leaves this document to the pure-Python parser."""


def _parse(text: str, file: str) -> Any:
    if _C_LOADER is not None and _PYTHON_ONLY.search(text) is None:
        try:
            return _parse_c(text)
        except Exception:  # parsed again below: the error (or the deep document) is the pure-Python parser's
            pass
    return _parse_python(text, file)


def _parse_c(text: str) -> Any:
    """The document as libyaml composes it, constructed as :func:`_parse_python` does; raises (anything) for
    every document it leaves to that function: one libyaml refuses, a deep one, one over a limit, one whose
    construction fails."""
    assert _C_LOADER is not None
    loader = _C_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _deeper_than(node, _C_MAX_DEPTH) or yaml_problem(node) is not None:
            raise _NotForC
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _deeper_than(root: yaml.Node, limit: int) -> bool:
    """Whether a node lies more than ``limit`` levels down (an alias counted where it is used), without
    recursion; a node met again is walked again only from deeper than before, so a cycle ends at the limit."""
    deepest: dict[int, int] = {}
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if deepest.get(id(node), 0) >= depth:
            continue
        deepest[id(node)] = depth
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((part, depth + 1) for pair in node.value for part in pair)
    return False


def _parse_python(text: str, file: str) -> Any:
    loader = _Loader(text)
    loader.file = file
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        too_big = yaml_problem(node)
        if too_big is not None:
            message, where = too_big
            at = _pos(where)
            raise RuleError(message, file=file, line=at[0], column=at[1])
        return loader.construct_document(node)
    except RuleError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        problem = excerpt(exc.problem or exc.context or "invalid YAML", 200)
        if "constructor for the tag '!" in problem or "scanning a tag" in str(exc.context or ""):
            problem += " (quote an expression that starts with '!', e.g. \"!x|ever\")"
        elif "mapping values are not allowed here" in problem:
            problem += " (quote an expression that contains ': ', such as a ternary a ? b : c)"
        raise RuleError(f"YAML syntax: {problem}", file=file, line=line, column=col) from exc
    except yaml.YAMLError as exc:
        raise RuleError(f"YAML syntax: {excerpt(str(exc), 200)}", file=file) from exc
    finally:
        loader.dispose()
