"""Lower the IR (:mod:`screener.rules.ir`) to Polars expressions over the per-patient feature frame.

Each node lowers to a pair ``(value, evidence)``: the value follows three-valued logic (null = unknown;
``&&``/``||``/``!`` are Kleene, as Polars' boolean operators are), and the evidence is the text of the value(s)
that decided the result. Compound nodes are bound to temporary columns by a :class:`Plan` so evidence never
duplicates sub-expressions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

import polars as pl

from screener.rules._facts import arith
from screener.rules._leaves import NOW_COL, TRANSFORM_STATS, attr_leaf, feature_leaf, fmt_num, stat_col
from screener.rules.ir import BOOL, IR, NUM, STR, Arr, Attr, Bin, Cond, Feat, Lit, Not

__all__ = ["NOW_COL", "TRANSFORM_STATS", "Plan", "combine", "fmt_num", "lower", "stat_col"]

# ---------------------------------------------------------------- lowering to Polars

_NONE = pl.lit(None, dtype=pl.String)


def combine(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """Join two evidence texts with '; ', dropping nulls and an exact repeat. With the null literal on one side
    (a comparison with a constant) that is the other side as it is: the expression says so (a fifth of a
    micro-batch's evidence query went to evaluating those no-op joins)."""
    if b is _NONE:
        return a
    if a is _NONE:
        return b
    return (
        pl.when(a.is_null()).then(b).when(b.is_null() | (a == b)).then(a).otherwise(pl.concat_str([a, pl.lit("; "), b]))
    )


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
        value, evidence = attr_leaf(ir.name)
        return value, plan.leaf(evidence), 1
    if isinstance(ir, Feat):
        value, evidence = feature_leaf(ir)
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
        }
        if op in ops:
            return plan.bind(ops[op](lv, rv), evidence, level)
        # Overflow and division by zero are unknown, never infinity.
        return plan.bind(arith(op, lv, rv), evidence, level)
    raise TypeError(f"cannot lower {ir!r}")
