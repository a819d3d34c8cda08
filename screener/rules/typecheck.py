"""Type-check JEXL criteria: a visitor over pyjexl's AST that builds the IR (:mod:`screener.rules.ir`).

:class:`Compiler` has one ``visit_<Node>`` per pyjexl node type; an unknown node is a :class:`RuleError`,
never a silent ``None``. It type-checks as it goes so a wrong type is a load-time error with the file
position of the criterion (and, where the offending name can be found in the text, its column).

Operator precedence: ``&&`` binds tighter than ``||`` (as in most languages; pyjexl's default gives them equal
precedence). Comparisons and ``in`` bind tighter than both; arithmetic tighter still.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pyjexl import parser as jp
from pyjexl.exceptions import ParseError

from screener.errors import RuleError, did_you_mean
from screener.rules._checks import field_not_carried, never_true, transform_usage
from screener.rules._jexl import jexl, parse_expression, suggest
from screener.rules._limits import excerpt, expression_problem
from screener.rules.concepts import ConceptSet
from screener.rules.ir import (
    _ARITH,
    _COMPARE,
    _EQUALITY,
    _LOGIC,
    ATTRIBUTES,
    BOOL,
    FIELD_VALUES,
    FIELDS,
    IR,
    LIST,
    NUM,
    STR,
    TRANSFORMS,
    TYPE_WORDS,
    Arr,
    Attr,
    Bin,
    Cond,
    Feat,
    Field,
    Lit,
    Not,
    QualIn,
    Source,
    collect_features,
)
from screener.rules.windows import Window, parse_window

__all__ = ["Compiler", "jexl", "parse_expression", "suggest"]


# ---------------------------------------------------------------- the visitor


class Compiler:
    """Compile one criterion's expression text. Errors carry the file and the criterion's position.

    :param text: the JEXL source.
    :param concepts: the study's concept sets by name.
    :param file, line, column: where the expression's value starts; ``style`` is its YAML scalar style
        (``None`` plain, ``'"'``/``"'"`` quoted, ``'|'``/``'>'`` block) so a name can be pointed at.
    """

    def __init__(
        self,
        text: str,
        concepts: dict[str, ConceptSet],
        *,
        file: str,
        line: int | None,
        column: int | None,
        style: str | None = None,
        criterion: str | None = None,
        study_id: str | None = None,
    ) -> None:
        self.text = text
        self.concepts = concepts
        self.file = file
        self.line = line
        self.column = column
        self.style = style
        self.criterion = criterion
        self.study_id = study_id
        #: the concept set whose filter is being compiled (fact fields are allowed), else None
        self.filtering: ConceptSet | None = None

    # -- errors
    def error(self, message: str, *, token: str | None = None, suggestion: str | None = None) -> RuleError:
        line, col = self.line, self.column
        if (
            token
            and line is not None
            and col is not None
            and self.style in (None, "", '"', "'")
            and ("\n" not in self.text)
        ):
            m = re.search(r"(?<![A-Za-z0-9_$])" + re.escape(token) + r"(?![A-Za-z0-9_$])", self.text)
            if m:
                col = col + m.start() + (1 if self.style in ('"', "'") else 0)
        where = f"in '{self.criterion}': " if self.criterion else ""
        if len(message) > 400:  # never echo a long value back
            message = message[:397] + "..."
        return RuleError(
            where + message,
            file=self.file,
            line=line,
            column=col,
            study_id=self.study_id,
            criterion=self.criterion,
            suggestion=suggestion,
        )

    def compile(self) -> tuple[IR, Any]:
        """Parse and compile; the result must be true/false. Returns ``(ir, ast)``."""
        problem = expression_problem(self.text)
        if problem is not None:
            raise self.error(problem)
        try:
            ast = parse_expression(self.text)
        except ParseError as exc:
            raise self.error(
                f"cannot parse expression {excerpt(self.text.strip())!r} (check quotes, brackets and operators)"
            ) from exc
        except (RecursionError, ValueError, OverflowError, MemoryError) as exc:
            raise self.error(f"cannot parse expression {excerpt(self.text.strip())!r}: too complex") from exc
        try:
            ir = self.visit(ast)
        except RecursionError as exc:
            raise self.error("expression is nested too deeply") from exc
        if ir.type != BOOL:
            raise self.error(f"a criterion must be true/false, but this expression gives {TYPE_WORDS[ir.type]}")
        return ir, ast

    def visit(self, node: Any) -> IR:
        method: Callable[[Any], IR] | None = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise self.error(f"unsupported expression element {type(node).__name__}")
        return method(node)

    # -- nodes
    def visit_Literal(self, node: jp.Literal) -> IR:
        v = node.value
        if isinstance(v, bool):
            return Lit(v, BOOL)
        if isinstance(v, int | float):
            return Lit(float(v), NUM)
        if isinstance(v, str):
            return Lit(v, STR)
        raise self.error(f"unsupported literal {v!r}")

    def visit_Identifier(self, node: jp.Identifier) -> IR:
        if node.subject is not None:
            raise self.error(f"'.{node.value}': attribute access is not supported", token=node.value)
        name = node.value
        if node.relative:
            if self.filtering is None:
                raise self.error(
                    f"'.{name}' is a fact field: use it inside a filter, e.g. set[.{name} ...]|ever", token=name
                )
            if name not in FIELDS:
                raise self.error(
                    f"unknown fact field '.{name}' (one of {', '.join('.' + f for f in FIELDS)})",
                    token=name,
                    suggestion=did_you_mean(name, FIELDS),
                )
            problem = field_not_carried(name, self.filtering)
            if problem:
                raise self.error(problem, token=name)
            return Field(name, FIELDS[name])
        if name in ATTRIBUTES:
            return Attr(name, ATTRIBUTES[name][0])
        if name in self.concepts:
            raise self.error(
                f"concept set '{name}' needs a transform, e.g. {name}|ever or {name}|within('90d')", token=name
            )
        raise self.error(
            f"unknown name '{name}'", token=name, suggestion=did_you_mean(name, [*ATTRIBUTES, *self.concepts])
        )

    def _concept(self, node: Any, transform: str) -> ConceptSet:
        if not isinstance(node, jp.Identifier) or node.subject is not None or node.relative:
            raise self.error(f"'|{transform}' must follow a concept set name", token=transform)
        cname = node.value
        if cname not in self.concepts:
            if cname in ATTRIBUTES:
                raise self.error(
                    f"'{cname}' is a person attribute; transforms like '|{transform}' apply to concept sets",
                    token=cname,
                )
            raise self.error(
                f"unknown concept set '{cname}'", token=cname, suggestion=did_you_mean(cname, self.concepts)
            )
        return self.concepts[cname]

    def _source(self, node: Any, transform: str) -> Source:
        """A concept set, optionally filtered: ``name`` or ``name[PRED]``."""
        if isinstance(node, jp.FilterExpression):
            concept = self._concept(node.subject, transform)
            saved, self.filtering = self.filtering, concept
            try:
                pred = self.visit(node.expression)
            finally:
                self.filtering = saved
            if pred.type != BOOL:
                raise self.error(
                    f"the filter of '{concept.name}[...]' must be true/false, got {TYPE_WORDS[pred.type]}",
                    token=concept.name,
                )
            if collect_features(pred):
                raise self.error("a filter cannot contain a transform (compare the fact's own fields)")
            return Source(concept, pred)
        return Source(self._concept(node, transform))

    def _window(self, arg: Any, transform: str, what: str = "window") -> Window:
        if not isinstance(arg, jp.Literal) or not isinstance(arg.value, str):
            raise self.error(f"the {what} of '{transform}' must be a quoted string such as '90d'", token=transform)
        try:
            return parse_window(arg.value)
        except ValueError as exc:
            raise self.error(str(exc).replace("window", what, 1), token=arg.value) from exc

    def visit_Transform(self, node: jp.Transform) -> IR:
        name = node.name
        if name not in TRANSFORMS:
            raise self.error(f"unknown transform '{name}'", token=name, suggestion=did_you_mean(name, TRANSFORMS))
        source = self._source(node.subject, name)
        cname = source.concept.name
        rtype, spec, numeric = TRANSFORMS[name]
        args = list(node.args or [])
        required = [a for a in spec if not a.endswith("?")]
        if not spec and args:
            raise self.error(f"transform '{name}' takes no arguments", token=name)
        if spec == ("w",) and not args:
            raise self.error(f"transform '{name}' needs a window, e.g. {cname}|{name}('90d')", token=name)
        if spec == ("w?",) and len(args) > 1:
            raise self.error(f"transform '{name}' takes one window argument", token=name)
        if len(args) < len(required) or len(args) > len(spec):
            raise self.error(f"transform '{name}' takes {transform_usage(cname, name)}", token=name)
        window = gap = None
        other: Source | None = None
        for kind, arg in zip(spec, args, strict=False):
            if kind == "src":
                other = self._source(arg, name)
            elif kind == "gap":
                gap = self._window(arg, name, "gap")
            else:
                window = self._window(arg, name)
        if numeric and not source.concept.unit:
            raise self.error(
                f"'{cname}|{name}' reads values, but concept set '{cname}' has no unit: every value would be "
                f"unknown (give the set a unit, e.g. unit: mmol/L, or unit: '{{score}}' for a score)",
                token=cname,
            )
        return Feat(source.concept, name, window, rtype, source.filter, gap, other)

    def visit_ArrayLiteral(self, node: jp.ArrayLiteral) -> IR:
        items = [self.visit(v) for v in node.value]
        if not items:
            raise self.error("an empty list can never match")
        if not all(isinstance(i, Lit) for i in items):
            raise self.error("list items must be literal numbers, strings or true/false")
        types = {i.type for i in items}
        if len(types) > 1:
            raise self.error("list items must all have the same type")
        return Arr(tuple(i.value for i in items if isinstance(i, Lit)), types.pop())

    def visit_ObjectLiteral(self, node: jp.ObjectLiteral) -> IR:
        raise self.error("object literals {...} are not supported")

    def visit_FilterExpression(self, node: jp.FilterExpression) -> IR:
        if isinstance(node.subject, jp.Transform):
            raise self.error(
                f"a filter goes on the concept set, before the transform: set[...]|{node.subject.name}",
                token=node.subject.name,
            )
        name = node.subject.value if isinstance(node.subject, jp.Identifier) else "set"
        raise self.error(f"a filtered concept set needs a transform, e.g. {name}[...]|ever", token=name)

    def visit_UnaryExpression(self, node: jp.UnaryExpression) -> IR:
        operand = self.visit(node.right)
        if operand.type != BOOL:
            raise self.error(f"'!' needs true/false, got {TYPE_WORDS[operand.type]}{self._show(node.right)}")
        return Not(operand)

    def visit_ConditionalExpression(self, node: jp.ConditionalExpression) -> IR:
        test = self.visit(node.test)
        if test.type != BOOL:
            raise self.error(f"the test of '? :' must be true/false, got {TYPE_WORDS[test.type]}")
        a, b = self.visit(node.consequent), self.visit(node.alternate)
        if a.type != b.type or a.type == LIST:
            raise self.error(
                f"both branches of '? :' must have the same type, got {TYPE_WORDS[a.type]} and {TYPE_WORDS[b.type]}"
            )
        return Cond(test, a, b, a.type)

    def visit_BinaryExpression(self, node: jp.BinaryExpression) -> IR:
        op = node.operator.symbol
        if op == "in" and isinstance(node.right, jp.Identifier) and node.right.relative:
            return self._qualifier_in(node)
        left, right = self.visit(node.left), self.visit(node.right)
        lt, rt = left.type, right.type
        if op in _LOGIC:
            for _side, t, raw in ((left, lt, node.left), (right, rt, node.right)):
                if t != BOOL:
                    raise self.error(
                        f"'{op}' needs true/false on both sides, got {TYPE_WORDS[t]}{self._show(raw)}",
                        token=self._token(raw),
                    )
            return Bin(op, left, right, BOOL)
        if op == "in":
            if not isinstance(right, Arr):
                raise self.error("'in' needs a list literal on the right, e.g. sex in ['F', 'O']")
            if lt != right.elem:
                raise self.error(f"'in' compares {TYPE_WORDS[lt]} with a list of {TYPE_WORDS[right.elem]}")
            for v in right.values:
                self._check_value(left, v)
            return Bin(op, left, right, BOOL)
        if LIST in (lt, rt):
            raise self.error(f"a list can only be used on the right of 'in' (found with '{op}')")
        if op in _COMPARE or op in _EQUALITY:
            problem = never_true(op, left, right)
            if problem:
                raise self.error(problem, token=self._token(node.left) or self._token(node.right))
        if op in _COMPARE:
            if lt != NUM or rt != NUM:
                bad = node.left if lt != NUM else node.right
                raise self.error(
                    f"cannot compare {TYPE_WORDS[lt]} with {TYPE_WORDS[rt]} using '{op}'{self._show(bad)}",
                    token=self._token(bad),
                )
            return Bin(op, left, right, BOOL)
        if op in _EQUALITY:
            if lt != rt:
                bad = node.left if isinstance(right, Lit) else node.right
                raise self.error(
                    f"cannot compare {TYPE_WORDS[lt]} with {TYPE_WORDS[rt]} using '{op}'{self._show(bad)}",
                    token=self._token(bad),
                )
            if isinstance(right, Lit):
                self._check_value(left, right.value)
            if isinstance(left, Lit):
                self._check_value(right, left.value)
            return Bin(op, left, right, BOOL)
        if op in _ARITH:
            if lt != NUM or rt != NUM:
                bad = node.left if lt != NUM else node.right
                raise self.error(
                    f"'{op}' needs numbers on both sides, got {TYPE_WORDS[lt]} and {TYPE_WORDS[rt]}{self._show(bad)}",
                    token=self._token(bad),
                )
            return Bin(op, left, right, NUM)
        raise self.error(f"unsupported operator '{op}'")

    def _qualifier_in(self, node: jp.BinaryExpression) -> IR:
        if node.right.value != "qualifiers" or self.filtering is None:
            self.visit(node.right)  # the error for a misplaced or unknown field
            raise self.error(f"'in .{node.right.value}' is not supported; 'SET in .qualifiers' is")
        left = node.left
        if not isinstance(left, jp.Identifier) or left.relative or left.value not in self.concepts:
            raise self.error(
                "the left of 'in .qualifiers' must be a concept set name, e.g. post_bd in .qualifiers",
                token=self._token(left),
                suggestion=did_you_mean(str(getattr(left, "value", "")), self.concepts),
            )
        return QualIn(self.concepts[left.value])

    # -- helpers
    def _check_value(self, attr: IR, value: Any) -> None:
        if isinstance(attr, Field) and isinstance(value, str) and attr.name in FIELD_VALUES:
            allowed = FIELD_VALUES[attr.name]
            if value not in allowed:
                raise self.error(
                    f"'{value}' is not a value of .{attr.name} (one of {', '.join(allowed)})",
                    token=value,
                    suggestion=suggest(value, allowed),
                )
        if isinstance(attr, Attr) and isinstance(value, str):
            choices = ATTRIBUTES[attr.name][1]
            if choices is not None and value not in choices:
                allowed = choices
                raise self.error(
                    f"'{value}' is not a value of {attr.name} (one of {', '.join(allowed)})",
                    token=value,
                    suggestion=suggest(value, allowed),
                )

    @staticmethod
    def _token(node: Any) -> str | None:
        if isinstance(node, jp.Transform):
            return str(node.subject.value) if isinstance(node.subject, jp.Identifier) else str(node.name)
        if isinstance(node, jp.Identifier):
            return str(node.value)
        return None

    @staticmethod
    def _show(node: Any) -> str:
        if isinstance(node, jp.Transform) and isinstance(node.subject, jp.Identifier):
            return f" ({node.subject.value}|{node.name})"
        if isinstance(node, jp.Identifier):
            return f" ({node.value})"
        return ""
