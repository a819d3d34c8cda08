"""A YAML loader that remembers where every key and value came from.

Mappings load as :class:`Map` (a dict) whose ``marks`` give the 1-based ``(line, column)`` of each key and
``value_marks`` of each value; sequences load as :class:`Seq` (a list) with ``marks`` per item. Scalars stay
plain Python values. Duplicate keys are an error (YAML would silently keep the last one).
"""

from __future__ import annotations

from typing import Any

import yaml

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
        #: For scalar values: the YAML style ('' plain, '"' or "'" quoted, '|' or '>' block) and the raw
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


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type information
    """SafeLoader that builds :class:`Map`/:class:`Seq` and records node marks."""

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
            result.value_styles[key] = value_node.style if isinstance(value_node, yaml.ScalarNode) else None
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


def _timestamp(loader: _Loader, node: yaml.Node) -> Any:
    # An impossible date (2026-13-01) stays text so the validator can say which field is wrong and where.
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)
_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_yaml_seq)


def load_yaml(text: str, file: str) -> Any:
    """Parse one YAML document keeping positions.

    :raises RuleError: ``FILE:LINE:COL`` for a syntax error or a duplicate key.
    """
    if len(text) > MAX_FILE_BYTES:
        raise RuleError(f"rule file is {len(text)} characters long; the limit is {MAX_FILE_BYTES}", file=file)
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
