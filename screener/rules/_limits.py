"""Explicit limits that keep one hostile or broken rule file from hurting the others.

Checked before parsing, so no input reaches a recursion or an unbounded expansion: expression length, nesting
depth (brackets), number of terms (operators + 1), number and string literal size; the YAML file size and its
size with every alias expanded. Messages quote at most a short excerpt of what they reject.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION",
    "MAX_FILE_BYTES",
    "MAX_NUMBER_DIGITS",
    "MAX_STRING",
    "MAX_TERMS",
    "MAX_YAML_VALUES",
    "excerpt",
    "expression_problem",
    "yaml_problem",
]

MAX_EXPRESSION = 4_000  # characters of one criterion
MAX_DEPTH = 20  # nested ( [ {
MAX_TERMS = 256  # operators + 1
MAX_NUMBER_DIGITS = 30
MAX_STRING = 500
MAX_FILE_BYTES = 2_000_000
MAX_YAML_VALUES = 200_000  # scalars, lists and mappings with every alias expanded

_OPERATOR = re.compile(r"&&|\|\||==|!=|<=|>=|//|[<>+\-*/%^]|\bin\b")
_NUMBER = re.compile(r"[0-9][0-9_.eE]*")


def excerpt(value: Any, limit: int = 60) -> str:
    """``value`` as text of at most ``limit`` characters (``...`` marks a cut)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expression_problem(text: str) -> str | None:
    """Why ``text`` is over a limit, or ``None``."""
    if len(text) > MAX_EXPRESSION:
        return f"expression is {len(text)} characters long; the limit is {MAX_EXPRESSION} (split it into criteria)"
    depth = deepest = terms = 0
    code: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            end = text.find(ch, i + 1)
            end = n if end < 0 else end
            if end - i - 1 > MAX_STRING:
                return f"a text literal is {end - i - 1} characters long; the limit is {MAX_STRING}"
            code.append(" ")
            i = end + 1
            continue
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
        code.append(ch)
        i += 1
    if deepest > MAX_DEPTH:
        return f"expression is nested {deepest} brackets deep; the limit is {MAX_DEPTH}"
    bare = "".join(code)
    terms = len(_OPERATOR.findall(bare)) + 1
    if terms > MAX_TERMS:
        return f"expression has {terms} terms; the limit is {MAX_TERMS} (use a group: any / all / at_least)"
    for m in _NUMBER.finditer(bare):
        if len(m.group()) > MAX_NUMBER_DIGITS:
            return f"a number literal is {len(m.group())} characters long; the limit is {MAX_NUMBER_DIGITS}"
    return None


def _sizes(root: yaml.Node) -> dict[int, int]:
    """Expanded size of every node (aliases counted every time they are used), without recursion."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [x for pair in node.value for x in pair]
        if done or not kids:
            size[id(node)] = min(1 + sum(size.get(id(k), 0) for k in kids), 10 * MAX_YAML_VALUES)
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)
    return size


def yaml_problem(root: yaml.Node) -> tuple[str, yaml.Node] | None:
    """Why the composed document is over a limit, and the node to point at (the smallest one over it)."""
    size = _sizes(root)
    if size[id(root)] <= MAX_YAML_VALUES:
        return None
    node = root
    while True:
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [v for _k, v in node.value]
        big = [k for k in kids if size.get(id(k), 0) > MAX_YAML_VALUES]
        if not big:
            break
        node = big[0]
    return (
        f"the file expands to more than {MAX_YAML_VALUES} values (YAML aliases repeat their anchor's content); "
        "list the values once",
        node,
    )
