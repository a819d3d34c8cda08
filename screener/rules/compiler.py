"""Compile JEXL criteria (pyjexl's AST) to a typed intermediate form, then to Polars expressions.

:class:`Compiler` is a visitor with one ``visit_<Node>`` per pyjexl node type; an unknown node is a
:class:`RuleError`, never a silent ``None``. It type-checks as it goes (types: ``bool``, ``num``, ``str``,
``list``) so a wrong type is a load-time error with the file position of the criterion (and, where the
offending name can be found in the text, its column).

The intermediate form (:data:`IR`) lowers to a pair of Polars expressions per node, ``(value, evidence)``:
the value follows three-valued logic (null = unknown; ``&&``/``||``/``!`` are Kleene, as Polars' boolean
operators are), and the evidence is the text of the value(s) that decided the result.

Operator precedence: ``&&`` binds tighter than ``||`` (as in most languages; pyjexl's default gives them equal
precedence). Comparisons and ``in`` bind tighter than both; arithmetic tighter still.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import polars as pl
import pyjexl
from pyjexl import parser as jp
from pyjexl.exceptions import ParseError

from screener.errors import RuleError, did_you_mean
from screener.events import ETHNIC_GROUPS, SETTINGS
from screener.rules.model import ConceptSet
from screener.rules.windows import Window, parse_window

__all__ = [
    "ATTRIBUTES",
    "IR",
    "TRANSFORMS",
    "Arr",
    "Attr",
    "Bin",
    "Compiler",
    "Cond",
    "Feat",
    "Lit",
    "Not",
    "Plan",
    "collect_features",
    "jexl",
    "lower",
    "parse_expression",
]

BOOL, NUM, STR, LIST = "bool", "num", "str", "list"
_TYPE_WORDS = {BOOL: "true/false", NUM: "a number", STR: "text", LIST: "a list"}

#: attribute -> (type, allowed values or None)
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "age": (NUM, None),
    "age_days": (NUM, None),
    "sex": (STR, ("F", "M", "O", "U")),
    "ethnic_group": (STR, ETHNIC_GROUPS),
    "imd_decile": (NUM, None),
    "imd_quintile": (NUM, None),
    "setting": (STR, SETTINGS),
    "site": (STR, None),
}

#: transform -> (result type, window: 'none' | 'required' | 'optional', numeric over values)
TRANSFORMS: dict[str, tuple[str, str, bool]] = {
    "ever": (BOOL, "none", False),
    "within": (BOOL, "required", False),
    "count": (NUM, "optional", False),
    "latest": (NUM, "optional", True),
    "earliest": (NUM, "optional", True),
    "min": (NUM, "optional", True),
    "max": (NUM, "optional", True),
    "mean": (NUM, "optional", True),
    "days_since": (NUM, "none", False),
}

_COMPARE = ("<", "<=", ">", ">=")
_EQUALITY = ("==", "!=")
_LOGIC = ("&&", "||")
_ARITH = ("+", "-", "*", "/", "//", "%", "^")


def jexl() -> pyjexl.JEXL:
    """The JEXL configuration screener uses (``&&`` binds tighter than ``||``)."""
    j = pyjexl.JEXL()
    j.add_binary_operator("&&", 15, lambda a, b: a and b)
    return j


_JEXL = jexl()


def suggest(name: str, candidates: Any) -> str | None:
    """A case-insensitive exact match first ('f' -> 'F'), else the closest name."""
    options = list(candidates)
    for c in options:
        if str(c).lower() == name.lower():
            return str(c)
    return did_you_mean(name, options)


def parse_expression(text: str) -> Any:
    """Parse JEXL text to pyjexl's AST. :raises ParseError: on a syntax error."""
    return _JEXL.parse(text)


# ---------------------------------------------------------------- intermediate representation


@dataclass(frozen=True)
class Lit:
    value: Any
    type: str


@dataclass(frozen=True)
class Attr:
    name: str
    type: str


@dataclass(frozen=True)
class Feat:
    """A concept-set transform: ``concept|transform(window)``."""

    concept: ConceptSet
    transform: str
    window: Window | None
    type: str

    @cached_property
    def key(self) -> str:
        """Identity of the data this feature aggregates (concept meaning + window), shared across studies."""
        return f"{self.concept.key}@{self.window.text if self.window else 'all'}"


@dataclass(frozen=True)
class Arr:
    values: tuple[Any, ...]
    elem: str
    type: str = LIST


@dataclass(frozen=True)
class Bin:
    op: str
    left: IR
    right: IR
    type: str


@dataclass(frozen=True)
class Not:
    operand: IR
    type: str = BOOL


@dataclass(frozen=True)
class Cond:
    test: IR
    then: IR
    other: IR
    type: str


IR = Lit | Attr | Feat | Arr | Bin | Not | Cond


def collect_features(ir: IR) -> list[Feat]:
    """Every :class:`Feat` in ``ir``, in source order."""
    if isinstance(ir, Feat):
        return [ir]
    if isinstance(ir, Bin):
        return collect_features(ir.left) + collect_features(ir.right)
    if isinstance(ir, Not):
        return collect_features(ir.operand)
    if isinstance(ir, Cond):
        return collect_features(ir.test) + collect_features(ir.then) + collect_features(ir.other)
    return []


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
        try:
            ast = parse_expression(self.text)
        except ParseError as exc:
            raise self.error(
                f"cannot parse expression {self.text.strip()!r} (check quotes, brackets and operators)"
            ) from exc
        ir = self.visit(ast)
        if ir.type != BOOL:
            raise self.error(f"a criterion must be true/false, but this expression gives {_TYPE_WORDS[ir.type]}")
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
        if node.relative:
            raise self.error(f"relative identifier '.{node.value}' is not supported", token=node.value)
        name = node.value
        if name in ATTRIBUTES:
            return Attr(name, ATTRIBUTES[name][0])
        if name in self.concepts:
            raise self.error(
                f"concept set '{name}' needs a transform, e.g. {name}|ever or {name}|within('90d')", token=name
            )
        raise self.error(
            f"unknown name '{name}'", token=name, suggestion=did_you_mean(name, [*ATTRIBUTES, *self.concepts])
        )

    def visit_Transform(self, node: jp.Transform) -> IR:
        subject = node.subject
        if not isinstance(subject, jp.Identifier) or subject.subject is not None or subject.relative:
            raise self.error(f"'|{node.name}' must follow a concept set name", token=node.name)
        cname = subject.value
        if cname not in self.concepts:
            if cname in ATTRIBUTES:
                raise self.error(
                    f"'{cname}' is a person attribute; transforms like '|{node.name}' apply to concept sets",
                    token=cname,
                )
            raise self.error(
                f"unknown concept set '{cname}'", token=cname, suggestion=did_you_mean(cname, self.concepts)
            )
        if node.name not in TRANSFORMS:
            raise self.error(
                f"unknown transform '{node.name}'", token=node.name, suggestion=did_you_mean(node.name, TRANSFORMS)
            )
        rtype, window_rule, _numeric = TRANSFORMS[node.name]
        args = list(node.args or [])
        window: Window | None = None
        if window_rule == "none" and args:
            raise self.error(f"transform '{node.name}' takes no arguments", token=node.name)
        if window_rule == "required" and not args:
            raise self.error(
                f"transform '{node.name}' needs a window, e.g. {cname}|{node.name}('90d')", token=node.name
            )
        if len(args) > 1:
            raise self.error(f"transform '{node.name}' takes one window argument", token=node.name)
        if args:
            arg = args[0]
            if not isinstance(arg, jp.Literal) or not isinstance(arg.value, str):
                raise self.error(f"the window of '{node.name}' must be a quoted string such as '90d'", token=node.name)
            try:
                window = parse_window(arg.value)
            except ValueError as exc:
                raise self.error(str(exc), token=arg.value) from exc
        return Feat(self.concepts[cname], node.name, window, rtype)

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
        raise self.error("filter expressions [...] are not supported")

    def visit_UnaryExpression(self, node: jp.UnaryExpression) -> IR:
        operand = self.visit(node.right)
        if operand.type != BOOL:
            raise self.error(f"'!' needs true/false, got {_TYPE_WORDS[operand.type]}{self._show(node.right)}")
        return Not(operand)

    def visit_ConditionalExpression(self, node: jp.ConditionalExpression) -> IR:
        test = self.visit(node.test)
        if test.type != BOOL:
            raise self.error(f"the test of '? :' must be true/false, got {_TYPE_WORDS[test.type]}")
        a, b = self.visit(node.consequent), self.visit(node.alternate)
        if a.type != b.type or a.type == LIST:
            raise self.error(
                f"both branches of '? :' must have the same type, got {_TYPE_WORDS[a.type]} and {_TYPE_WORDS[b.type]}"
            )
        return Cond(test, a, b, a.type)

    def visit_BinaryExpression(self, node: jp.BinaryExpression) -> IR:
        op = node.operator.symbol
        left, right = self.visit(node.left), self.visit(node.right)
        lt, rt = left.type, right.type
        if op in _LOGIC:
            for _side, t, raw in ((left, lt, node.left), (right, rt, node.right)):
                if t != BOOL:
                    raise self.error(
                        f"'{op}' needs true/false on both sides, got {_TYPE_WORDS[t]}{self._show(raw)}",
                        token=self._token(raw),
                    )
            return Bin(op, left, right, BOOL)
        if op == "in":
            if not isinstance(right, Arr):
                raise self.error("'in' needs a list literal on the right, e.g. sex in ['F', 'O']")
            if lt != right.elem:
                raise self.error(f"'in' compares {_TYPE_WORDS[lt]} with a list of {_TYPE_WORDS[right.elem]}")
            for v in right.values:
                self._check_value(left, v)
            return Bin(op, left, right, BOOL)
        if LIST in (lt, rt):
            raise self.error(f"a list can only be used on the right of 'in' (found with '{op}')")
        if op in _COMPARE:
            if lt != NUM or rt != NUM:
                bad = node.left if lt != NUM else node.right
                raise self.error(
                    f"cannot compare {_TYPE_WORDS[lt]} with {_TYPE_WORDS[rt]} using '{op}'{self._show(bad)}",
                    token=self._token(bad),
                )
            return Bin(op, left, right, BOOL)
        if op in _EQUALITY:
            if lt != rt:
                bad = node.left if isinstance(right, Lit) else node.right
                raise self.error(
                    f"cannot compare {_TYPE_WORDS[lt]} with {_TYPE_WORDS[rt]} using '{op}'{self._show(bad)}",
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
                    f"'{op}' needs numbers on both sides, got {_TYPE_WORDS[lt]} and {_TYPE_WORDS[rt]}{self._show(bad)}",
                    token=self._token(bad),
                )
            return Bin(op, left, right, NUM)
        raise self.error(f"unsupported operator '{op}'")

    # -- helpers
    def _check_value(self, attr: IR, value: Any) -> None:
        if isinstance(attr, Attr) and isinstance(value, str):
            allowed = ATTRIBUTES[attr.name][1]
            if allowed is not None and value not in allowed:
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


# ---------------------------------------------------------------- lowering to Polars

_NONE = pl.lit(None, dtype=pl.String)

#: column of the per-patient frame holding the screening instant (Datetime us UTC)
NOW_COL = "_now"


def stat_col(feat: Feat, stat: str) -> str:
    """Name of the per-patient column holding ``stat`` of ``feat``'s (concept, window) group."""
    return f"{feat.key}:{stat}"


#: the statistics a transform needs from the aggregated facts
TRANSFORM_STATS: dict[str, tuple[str, ...]] = {
    "ever": ("n", "last_t", "last_code"),
    "within": ("n", "last_t", "last_code"),
    "count": ("n",),
    "latest": ("latest_v", "latest_t", "n_unk"),
    "earliest": ("earliest_v", "earliest_t", "n_unk"),
    "min": ("min_v", "min_t", "n_unk"),
    "max": ("max_v", "max_t", "n_unk"),
    "mean": ("mean_v", "n_num", "n_unk"),
    "days_since": ("n", "last_t", "last_code"),
}


def fmt_num(e: pl.Expr) -> pl.Expr:
    """A number as short text: whole numbers without '.0', others to at most 2 decimals."""
    return (
        pl.when(e.round(0) == e)
        .then(e.cast(pl.Int64, strict=False).cast(pl.String))
        .otherwise(e.round(2).cast(pl.String))
    )


def combine(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """Join two evidence texts with '; ', dropping nulls and an exact repeat."""
    return (
        pl.when(a.is_null()).then(b).when(b.is_null() | (a == b)).then(a).otherwise(pl.concat_str([a, pl.lit("; "), b]))
    )


def _when(feat: Feat) -> str:
    return f" in the last {feat.window.describe()}" if feat.window else ""


def _feature(feat: Feat, now: datetime) -> tuple[pl.Expr, pl.Expr]:
    c = feat.concept
    label = c.display
    fmt = "%Y-%m-%d %H:%M" if feat.window is not None and feat.window.fine else "%Y-%m-%d"

    def col(stat: str) -> pl.Expr:
        return pl.col(stat_col(feat, stat))

    t = feat.transform
    unit = f" {c.unit}" if c.unit else ""
    if t in ("ever", "within", "days_since"):
        n = col("n").fill_null(0)
        seen = pl.concat_str(
            [pl.lit(f"{label} "), col("last_code").fill_null("?"), pl.lit(" on "), col("last_t").dt.strftime(fmt)]
        )
        if t == "days_since":
            # "now" is the ``_now`` column of the per-patient frame, so compiled expressions can be cached.
            value = (pl.col(NOW_COL) - col("last_t")).dt.total_days().cast(pl.Float64)
            seen = pl.concat_str(
                [
                    pl.lit(f"last {label} "),
                    value.cast(pl.Int64).cast(pl.String),
                    pl.lit(" days ago ("),
                    col("last_code").fill_null("?"),
                    pl.lit(" on "),
                    col("last_t").dt.strftime(fmt),
                    pl.lit(")"),
                ]
            )
        else:
            value = n > 0
        evidence = pl.when(n > 0).then(seen).otherwise(pl.lit(f"no record of {label}{_when(feat)}"))
        return value, evidence
    if t == "count":
        n = col("n").fill_null(0)
        value = n.cast(pl.Float64)
        evidence = pl.concat_str([n.cast(pl.String), pl.lit(f" {label} record(s){_when(feat)}")])
        return value, evidence
    unk = col("n_unk").fill_null(0)
    suffix = (
        pl.when(unk > 0)
        .then(pl.concat_str([pl.lit(" ("), unk.cast(pl.String), pl.lit(" value(s) in unknown units left out)")]))
        .otherwise(pl.lit(""))
    )
    if t == "mean":
        value = col("mean_v")
        seen = pl.concat_str(
            [
                pl.lit(f"mean {label} "),
                fmt_num(value),
                pl.lit(f"{unit} of "),
                col("n_num").cast(pl.String),
                pl.lit(f" value(s){_when(feat)}"),
            ]
        )
    else:
        value = col(f"{t}_v")
        seen = pl.concat_str(
            [pl.lit(f"{t} {label} "), fmt_num(value), pl.lit(f"{unit} on "), col(f"{t}_t").dt.strftime(fmt)]
        )
    evidence = pl.concat_str(
        [
            pl.when(value.is_not_null()).then(seen).otherwise(pl.lit(f"no {label} value{_when(feat)}")),
            suffix,
        ]
    )
    return value, evidence


def _attr(name: str) -> tuple[pl.Expr, pl.Expr]:
    value = pl.col(f"_attr_{name}")
    shown = fmt_num(value) if ATTRIBUTES[name][0] == NUM else value
    evidence = (
        pl.when(value.is_null()).then(pl.lit(f"{name} unknown")).otherwise(pl.concat_str([pl.lit(f"{name} "), shown]))
    )
    return value, evidence


def _fold(expr: pl.Expr) -> pl.Expr:
    """A constant expression (no column input) evaluated now, as a literal.

    Polars' in-memory engine does not always broadcast a computed length-1 result (e.g. ``true && false``)
    to the frame's height in ``with_columns``; a literal it does.
    """
    if expr.meta.root_names():
        return expr
    out = pl.select(expr.alias("c")).to_series()
    return pl.lit(out[0], dtype=out.dtype) if out.len() == 1 else expr


class Plan:
    """Staged column assignments so evidence never duplicates sub-expressions.

    A compound node's value and evidence refer to its children several times (Kleene evidence picks the
    deciding side), so inlining them would grow exponentially with depth. Each compound node is instead bound
    to two temporary columns in stage ``level``; :meth:`apply` adds the stages in order.

    Values and evidence are kept apart (``values[level]``, ``evidence[level]``): a value never refers to an
    evidence column, so all values can be computed first and the evidence only for the rows that need it.
    """

    def __init__(self, prefix: str = "_x") -> None:
        self.prefix = prefix
        self.values: list[list[pl.Expr]] = []
        self.evidence: list[list[pl.Expr]] = []
        self.count = 0
        self._leaves: set[str] = set()

    def leaf(self, evidence: pl.Expr) -> pl.Expr:
        """Bind a leaf's (attribute's or feature's) evidence to a stage-0 column; returns the column.

        The column is named after the expression itself, so the same leaf used twice, or by two studies,
        is one column (a compound node's evidence refers to its operands' evidence several times).
        """
        name = "_ev" + hashlib.sha1(evidence.meta.serialize()).hexdigest()[:16]
        if name not in self._leaves:
            self._leaves.add(name)
            if not self.values:
                self.values.append([])
                self.evidence.append([])
            self.evidence[0].append(evidence.alias(name))
        return pl.col(name)

    def bind(self, value: pl.Expr, evidence: pl.Expr, level: int) -> tuple[pl.Expr, pl.Expr, int]:
        value, evidence = _fold(value), _fold(evidence)
        name = f"{self.prefix}{self.count}"
        self.count += 1
        while len(self.values) <= level:
            self.values.append([])
            self.evidence.append([])
        self.values[level].append(value.alias(f"{name}v"))
        self.evidence[level].append(evidence.alias(f"{name}e"))
        return pl.col(f"{name}v"), pl.col(f"{name}e"), level + 1

    @property
    def stages(self) -> list[list[pl.Expr]]:
        return [v + e for v, e in zip(self.values, self.evidence, strict=True)]

    def apply(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        for stage in self.stages:
            frame = frame.with_columns(stage)
        return frame


def lower(ir: IR, now: datetime, plan: Plan) -> tuple[pl.Expr, pl.Expr, int]:
    """``(value, evidence, level)`` of ``ir`` over the per-patient feature frame.

    ``level`` is the number of ``plan`` stages that must be applied before the expressions can be evaluated.
    """
    if isinstance(ir, Lit):
        dtype = {BOOL: pl.Boolean, NUM: pl.Float64, STR: pl.String}[ir.type]
        return pl.lit(ir.value, dtype=dtype), _NONE, 0
    if isinstance(ir, Attr):
        value, evidence = _attr(ir.name)
        return value, plan.leaf(evidence), 1
    if isinstance(ir, Feat):
        value, evidence = _feature(ir, now)
        return value, plan.leaf(evidence), 1
    if isinstance(ir, Not):
        v, e, lvl = lower(ir.operand, now, plan)
        return ~v, e, lvl
    if isinstance(ir, Cond):
        tv, te, l1 = lower(ir.test, now, plan)
        av, ae, l2 = lower(ir.then, now, plan)
        bv, be, l3 = lower(ir.other, now, plan)
        value = pl.when(tv.is_null()).then(None).when(tv).then(av).otherwise(bv)
        chosen = pl.when(tv.is_null()).then(_NONE).when(tv).then(ae).otherwise(be)
        return plan.bind(value, combine(te, chosen), max(l1, l2, l3))
    if isinstance(ir, Bin):
        if ir.op == "in":
            assert isinstance(ir.right, Arr)
            lv, le, lvl = lower(ir.left, now, plan)
            dtype = {BOOL: pl.Boolean, NUM: pl.Float64, STR: pl.String}[ir.right.elem]
            values = pl.Series(list(ir.right.values), dtype=dtype)
            return pl.when(lv.is_null()).then(None).otherwise(lv.is_in(values.implode())), le, lvl
        lv, le, l1 = lower(ir.left, now, plan)
        rv, re_, l2 = lower(ir.right, now, plan)
        level = max(l1, l2)
        op = ir.op
        if op == "&&":
            value = lv & rv
            evidence = (
                pl.when(value.not_())
                .then(pl.when(lv.not_()).then(le).otherwise(re_))
                .when(value)
                .then(combine(le, re_))
                .otherwise(
                    pl.when(lv.is_null() & rv.is_not_null())
                    .then(le)
                    .when(rv.is_null() & lv.is_not_null())
                    .then(re_)
                    .otherwise(combine(le, re_))
                )
            )
            return plan.bind(value, evidence, level)
        if op == "||":
            value = lv | rv
            evidence = (
                pl.when(value)
                .then(pl.when(lv).then(le).otherwise(re_))
                .when(value.not_())
                .then(combine(le, re_))
                .otherwise(
                    pl.when(lv.is_null() & rv.is_not_null())
                    .then(le)
                    .when(rv.is_null() & lv.is_not_null())
                    .then(re_)
                    .otherwise(combine(le, re_))
                )
            )
            return plan.bind(value, evidence, level)
        evidence = combine(le, re_)
        ops: dict[str, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "+": lambda a, b: a + b,
            "-": lambda a, b: a - b,
            "*": lambda a, b: a * b,
        }
        if op in ops:
            return plan.bind(ops[op](lv, rv), evidence, level)
        if op in ("/", "//", "%"):
            # Division by zero is unknown, never infinity.
            raw = {
                "/": lambda a, b: a / b,
                "//": lambda a, b: (a / b).floor(),
                "%": lambda a, b: a - (a / b).floor() * b,
            }[op](lv, rv)
            return plan.bind(pl.when(rv == 0).then(None).otherwise(raw).cast(pl.Float64), evidence, level)
        if op == "^":
            return plan.bind(lv.pow(rv), evidence, level)
    raise TypeError(f"cannot lower {ir!r}")
