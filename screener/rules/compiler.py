"""Compatibility names: the compiler is now :mod:`~screener.rules.ir` (nodes), :mod:`~screener.rules.typecheck`
(the visitor that builds them) and :mod:`~screener.rules.lower` (IR to Polars). Import from those."""

from screener.rules.ir import ATTRIBUTES, IR, TRANSFORMS, Arr, Attr, Bin, Cond, Feat, Lit, Not, collect_features
from screener.rules.lower import NOW_COL, TRANSFORM_STATS, Plan, lower, stat_col
from screener.rules.typecheck import Compiler, jexl, parse_expression

__all__ = [
    "ATTRIBUTES",
    "IR",
    "NOW_COL",
    "TRANSFORMS",
    "TRANSFORM_STATS",
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
    "stat_col",
]
