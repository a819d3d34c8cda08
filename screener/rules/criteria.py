"""A study's criteria as staged Polars columns: values, evidence and the three-valued outcome.

:func:`compiled` lowers a study once (cached per study object, independent of ``now`` and of the patients);
the loader calls it so a lowering error is a load-time error, never a mid-batch one.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import polars as pl

from screener.rules.ir import collect_features
from screener.rules.lower import Plan, lower, stat_col
from screener.rules.model import Criterion, Study
from screener.vocab import OUTCOMES

__all__ = [
    "Compiled",
    "CriterionColumns",
    "compile_criterion",
    "compiled",
    "expires_expr",
    "outcome_expr",
    "staged",
    "study_frame",
]


def compile_criterion(c: Criterion, study: Study, now: datetime, plan: Plan) -> tuple[pl.Expr, pl.Expr, int]:
    """``(result, evidence, level)`` of one criterion (groups recurse; three-valued); see :class:`Plan`."""
    if c.kind == "expr":
        assert c.ir is not None
        return lower(c.ir, now, plan)
    if c.kind == "setting":
        s = pl.col("_attr_setting")
        value = pl.when(s.is_null()).then(None).otherwise(s.is_in(list(study.settings)))
        evidence = (
            pl.when(s.is_null()).then(pl.lit("setting unknown")).otherwise(pl.concat_str([pl.lit("setting "), s]))
        )
        return value.cast(pl.Boolean), evidence, 0
    parts = [compile_criterion(child, study, now, plan) for child in c.children]
    values = [p[0] for p in parts]
    level = max(p[2] for p in parts)
    if c.kind == "any":
        value = values[0]
        for v in values[1:]:
            value = value | v
    elif c.kind == "all":
        value = values[0]
        for v in values[1:]:
            value = value & v
    else:
        true_n = pl.sum_horizontal([v.fill_null(False).cast(pl.Int32) for v in values])
        unk_n = pl.sum_horizontal([v.is_null().cast(pl.Int32) for v in values])
        value = (
            pl.when(true_n >= c.at_least)
            .then(pl.lit(True))
            .when(true_n + unk_n < c.at_least)
            .then(pl.lit(False))
            .otherwise(pl.lit(None, dtype=pl.Boolean))
        )
    shown = [
        pl.concat_str(
            [
                pl.lit(f"{child.display}: "),
                pl.when(v.is_null()).then(pl.lit("unknown")).when(v).then(pl.lit("yes")).otherwise(pl.lit("no")),
                pl.lit(" ("),
                e.fill_null(""),
                pl.lit(")"),
            ]
        )
        for child, (v, e, _lvl) in zip(c.children, parts, strict=True)
    ]
    head = {"any": "any of", "all": "all of", "at_least": f"at least {c.at_least} of"}[c.kind]
    evidence = pl.concat_str([pl.lit(f"{head}: "), pl.concat_str(shown, separator="; ")])
    return plan.bind(value.cast(pl.Boolean), evidence, level)


def study_frame(base: pl.LazyFrame, study: Study, now: datetime, *, nested: bool = False) -> pl.LazyFrame:
    """The study over the per-patient frame: ``patient_id, outcome`` and per criterion ``<name>`` (Boolean,
    null = unknown) and ``<name>:evidence``. Top-level criteria only, unless ``nested`` (then depth first).
    """
    plan = Plan()
    named: list[tuple[Criterion, pl.Expr, pl.Expr]] = []
    top = {id(c) for c in study.criteria}
    for c in study.all_criteria() if nested else list(study.criteria):
        value, evidence, level = compile_criterion(c, study, now, plan)
        v, e, _ = plan.bind(value.cast(pl.Boolean), evidence.fill_null(""), level)
        named.append((c, v, e))
    outcome = outcome_expr([(c, v) for c, v, _e in named if id(c) in top])
    cols = [pl.col("patient_id"), outcome.cast(pl.String).alias("outcome")]
    for c, v, e in named:
        cols += [v.alias(c.name), e.alias(f"{c.name}:evidence")]
    return plan.apply(base).select(cols)


class CriterionColumns(NamedTuple):
    """Where one top-level criterion's result lives in the staged frame, and what people call it."""

    name: str
    group: str
    value: str
    evidence: str
    #: the ``expires_at`` column (an evidence stage), or ``None`` when no closing window decides it
    expires: str | None
    label: str


#: the statistic holding the time of the fact that decides a windowed transform
_DECIDING_TIME = {
    "within": "last_t",
    "latest": "latest_t",
    "earliest": "earliest_t",
    "min": "min_t",
    "max": "max_t",
    "latest_code": "latest_ct",
}


def expires_expr(c: Criterion, value: pl.Expr) -> pl.Expr | None:
    """When a true criterion stops being true as its window closes: the earliest (deciding fact time + window)
    over its windowed transforms (``within``, ``latest``, ...), null when it is not true. ``None`` when the
    criterion has no such transform."""
    times = []
    for node in c.walk():
        if node.ir is None:
            continue
        for f in collect_features(node.ir):
            stat = _DECIDING_TIME.get(f.transform)
            if stat is not None and f.window is not None:
                times.append(pl.col(stat_col(f, stat)).dt.offset_by(f.window.offset(1)))
    if not times:
        return None
    return pl.when(value.fill_null(False)).then(pl.min_horizontal(times)).otherwise(None)


@dataclass
class Compiled:
    """One study's criteria compiled once, independent of ``now`` and of the patients (cached per study).

    Column names carry a prefix unique to the study object, so every study's stages can share one frame.
    ``values[level]``/``evidence[level]`` are :class:`Plan` stages; ``outcome`` is aliased ``<prefix>outcome``;
    ``criteria`` names the columns of each top-level criterion (:class:`CriterionColumns`).
    """

    values: list[list[pl.Expr]]
    evidence: list[list[pl.Expr]]
    outcome: pl.Expr
    outcome_col: str
    criteria: list[CriterionColumns]
    #: columns of the values frame the evidence stages and the result rows read
    evidence_inputs: list[str]
    #: columns of the input frame (attributes, feature statistics) the value stages and the outcome read
    value_inputs: frozenset[str] = frozenset()
    #: :func:`_result` expressions by (with evidence, with criteria list)
    results: dict[tuple[bool, bool], pl.Expr] = field(default_factory=dict)


_COMPILED: weakref.WeakKeyDictionary[Study, Compiled] = weakref.WeakKeyDictionary()
_PREFIXES = itertools.count()


def compiled(study: Study) -> Compiled:
    hit = _COMPILED.get(study)
    if hit is not None:
        return hit
    prefix = f"_s{next(_PREFIXES)}_"
    plan = Plan(prefix=f"{prefix}x")
    named: list[tuple[Criterion, pl.Expr]] = []
    unused_now = datetime(2000, 1, 1, tzinfo=UTC)  # lowering reads the screening instant from NOW_COL
    for c in study.criteria:
        value, evidence, level = compile_criterion(c, study, unused_now, plan)
        v, _e, _ = plan.bind(value.cast(pl.Boolean), evidence.fill_null(""), level)
        named.append((c, v))
    outcome_col = f"{prefix}outcome"
    expiries: list[pl.Expr] = []
    criteria: list[CriterionColumns] = []
    for c, v in named:
        vcol = v.meta.output_name()
        expiry = expires_expr(c, v)
        if expiry is not None:
            expiries.append(expiry.alias(vcol[:-1] + "t"))
        tcol = vcol[:-1] + "t" if expiry is not None else None
        criteria.append(CriterionColumns(c.name, c.group, vcol, vcol[:-1] + "e", tcol, c.display))
    if expiries:  # a stage of their own: they read the criteria's value columns
        plan.values.append([])
        plan.evidence.append(expiries)
    made = {e.meta.output_name() for stage in plan.evidence for e in stage}
    reads = {r for stage in plan.evidence for e in stage for r in e.meta.root_names()} - made
    inputs = ["patient_id", outcome_col, *sorted(reads | {c.value for c in criteria})]
    outcome = outcome_expr(named).alias(outcome_col)
    value_made = {e.meta.output_name() for stage in plan.values for e in stage}
    value_reads = {r for e in (outcome, *(e for stage in plan.values for e in stage)) for r in e.meta.root_names()}
    compiled = Compiled(
        values=plan.values,
        evidence=plan.evidence,
        outcome=outcome,
        outcome_col=outcome_col,
        criteria=criteria,
        evidence_inputs=list(dict.fromkeys(inputs)),
        value_inputs=frozenset(value_reads - value_made),
    )
    _COMPILED[study] = compiled
    return compiled


#: the outcome column's type inside a screen (one byte a row, not a string); result rows carry it as a string
OUTCOME = pl.Enum(list(OUTCOMES))


def outcome_expr(named: Sequence[tuple[Criterion, pl.Expr]]) -> pl.Expr:
    """``eligible``/``possible``/``ineligible`` (:data:`OUTCOME`) from the top-level criteria's values
    (three-valued).

    Each criterion passes (an inclusion true, an exclusion false), fails or is unknown (null); the Kleene
    conjunction of the passes (``all_horizontal``: false when any is false, else null when any is null, else
    true) is the outcome: false ineligible, true eligible, null possible. (Written as an ``any`` of the
    failures and an ``all`` of the passes, with a ``fill_null`` on each, it cost a micro-batch 2.5x as much.)
    """
    passes = [v if c.group == "include" else ~v for c, v in named]
    ok = pl.all_horizontal(passes) if passes else pl.lit(True)
    out = pl.when(~ok).then(pl.lit("ineligible", dtype=OUTCOME))
    return out.when(ok).then(pl.lit("eligible", dtype=OUTCOME)).otherwise(pl.lit("possible", dtype=OUTCOME))


def staged(frame: pl.LazyFrame, stage_lists: Sequence[list[list[pl.Expr]]]) -> pl.LazyFrame:
    """Apply several studies' plan stages level by level (one ``with_columns`` per level for all of them)."""
    depth = max((len(st) for st in stage_lists), default=0)
    for level in range(depth):
        # Shared leaf-evidence columns (same name, same expression) are computed once.
        exprs = {e.meta.output_name(): e for st in stage_lists if level < len(st) for e in st[level]}
        if exprs:
            frame = frame.with_columns(exprs.values())
    return frame
