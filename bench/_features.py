"""Criteria plans and pre-aggregated per-patient features: what the peer engines are given.

Screener starts from the raw facts frame. The peers cannot (they evaluate one record at a time), so every
concept-set transform in every criterion (``egfr|latest('180d')``) is computed ONCE here, with Polars, into a
per-patient feature column, outside the peers' timed region. That favours the peers, on purpose.

The criteria come from the loaded :class:`screener.rules.Study` objects: each criterion's pyjexl AST (for the
pyjexl baseline) and the compiler's typed IR (for the translations into the other peers' languages). A feature
column is named ``<transform>_<window>_<concept key>`` (``latest_180d_c3f2a91c0d4e5``); the concept key is the
compiler's identity of the set's meaning, so replicated studies share features. Person attributes (``age``,
``sex``, ...) become columns too.

The aggregation is this module's own Polars code over the raw facts (windows ``[now - w, now]`` inclusive, via
:mod:`screener.rules.windows`; facts after ``now`` never used; numeric values converted with
:mod:`screener.rules.units`, unconvertible ones left out); concept membership uses the compiler's
``ConceptSet.fact_expr``. The benchmark refuses to time anything until every engine's outcomes equal
screener's, so a drift here fails loudly rather than producing a flattering number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl
from pyjexl import JEXL
from pyjexl.parser import (
    ArrayLiteral,
    BinaryExpression,
    ConditionalExpression,
    Identifier,
    Literal,
    Node,
    Transform,
    UnaryExpression,
)

from screener.rules.windows import parse_window

if TYPE_CHECKING:
    from screener.rules.compiler import Feat
    from screener.rules.model import ConceptSet, Criterion, Study
    from screener.rules.windows import Window

__all__ = [
    "BOOLEAN_TRANSFORMS",
    "PERSON_ATTRIBUTES",
    "Feature",
    "Group",
    "Leaf",
    "StudyPlan",
    "compute_features",
    "plan_studies",
]

#: Person attributes and whether they are numeric.
PERSON_ATTRIBUTES: dict[str, bool] = {
    "age": True,
    "age_days": True,
    "sex": False,
    "ethnic_group": False,
    "imd_decile": True,
    "imd_quintile": True,
    "setting": False,
    "site": False,
}
BOOLEAN_TRANSFORMS = frozenset({"ever", "within"})
NEVER_UNKNOWN = frozenset({"ever", "within", "count"})
VALUE_TRANSFORMS = frozenset({"latest", "earliest", "min", "max", "mean"})
ALL_TRANSFORMS = BOOLEAN_TRANSFORMS | {"count", "days_since"} | VALUE_TRANSFORMS


@dataclass(frozen=True)
class Feature:
    """One per-patient aggregate: ``transform`` over a concept set in a window."""

    column: str
    concept_key: str
    transform: str
    window: str | None

    @property
    def boolean(self) -> bool:
        return self.transform in BOOLEAN_TRANSFORMS

    @property
    def nullable(self) -> bool:
        return self.transform not in NEVER_UNKNOWN


@dataclass(frozen=True)
class Leaf:
    """A criterion expression, its transforms already replaced by feature identifiers."""

    name: str
    text: str
    ast: Node  # pyjexl AST, transforms replaced by feature identifiers
    ir: Any  # the compiler's IR, Feat nodes replaced by FeatureRef
    raw_ast: Node  # the criterion's own pyjexl AST (transforms kept), for the raw-facts baseline


@dataclass(frozen=True)
class Group:
    """``any`` / ``all`` / ``at_least: n`` over child criteria."""

    name: str
    kind: str
    n: int
    children: tuple[Leaf | Group, ...]


@dataclass
class StudyPlan:
    study_id: str
    include: list[Leaf | Group]
    exclude: list[Leaf | Group]
    columns: set[str] = field(default_factory=set)  # feature and attribute columns the study reads
    concepts: dict[str, str] = field(default_factory=dict)  # concept name in the study -> concept key


def _column(feat: Feat | _FeatLike) -> str:
    window = feat.window.text if feat.window is not None else None
    return f"{feat.transform}_{window}_{feat.concept.key}" if window else f"{feat.transform}_{feat.concept.key}"


@dataclass
class _Planner:
    features: dict[str, Feature] = field(default_factory=dict)
    concepts: dict[str, ConceptSet] = field(default_factory=dict)  # concept key -> ConceptSet

    def feature(self, feat: Feat | _FeatLike) -> Feature:
        self.concepts[feat.concept.key] = feat.concept
        column = _column(feat)
        window = feat.window.text if feat.window is not None else None
        return self.features.setdefault(column, Feature(column, feat.concept.key, feat.transform, window))

    def ir(self, node: Any, used: set[str]) -> Any:
        """The criterion's IR with every ``Feat`` replaced by an ``Attr``-like :class:`FeatureRef`."""
        from screener.rules.compiler import Arr, Attr, Bin, Cond, Feat, Lit, Not

        if isinstance(node, Feat):
            f = self.feature(node)
            used.add(f.column)
            return FeatureRef(f.column, f.boolean, f.nullable)
        if isinstance(node, Attr):
            used.add(node.name)
            return node
        if isinstance(node, Lit | Arr):
            return node
        if isinstance(node, Bin):
            return Bin(node.op, self.ir(node.left, used), self.ir(node.right, used), node.type)
        if isinstance(node, Not):
            return Not(self.ir(node.operand, used))
        if isinstance(node, Cond):
            return Cond(self.ir(node.test, used), self.ir(node.then, used), self.ir(node.other, used), node.type)
        raise ValueError(f"unsupported IR node {node!r}")

    def ast(self, node: Node, concepts: dict[str, Any]) -> Node:
        """pyjexl AST with ``concept|transform(w)`` replaced by an identifier naming the feature column."""
        if isinstance(node, Transform):
            concept = concepts[node.subject.value]
            window = parse_window(node.args[0].value) if node.args else None
            column = _column(_FeatLike(concept, node.name, window))
            return Identifier(value=column, subject=None, relative=False)
        if isinstance(node, BinaryExpression):
            return BinaryExpression(
                operator=node.operator, left=self.ast(node.left, concepts), right=self.ast(node.right, concepts)
            )
        if isinstance(node, UnaryExpression):
            return UnaryExpression(operator=node.operator, right=self.ast(node.right, concepts))
        if isinstance(node, ConditionalExpression):
            return ConditionalExpression(
                test=self.ast(node.test, concepts),
                consequent=self.ast(node.consequent, concepts),
                alternate=self.ast(node.alternate, concepts),
            )
        if isinstance(node, ArrayLiteral):
            return ArrayLiteral(value=[self.ast(v, concepts) for v in node.value])
        if isinstance(node, Identifier | Literal):
            return node
        raise ValueError(f"unsupported expression node {type(node).__name__}")

    def criterion(self, c: Criterion, study: Study, used: set[str]) -> Leaf | Group:
        if c.kind == "expr":
            assert c.expression is not None, c.name  # the loader gives every "expr" criterion its text
            return Leaf(c.name, c.expression, self.ast(c.ast, study.concepts), self.ir(c.ir, used), c.ast)
        if c.kind in ("any", "all", "at_least"):
            return Group(c.name, c.kind, c.at_least, tuple(self.criterion(k, study, used) for k in c.children))
        if c.kind == "setting":
            # The implicit check that the patient is seen in one of the study's recruitment settings.
            from screener.rules.compiler import Arr, Attr, Bin

            used.add("setting")
            ir = Bin("in", Attr("setting", "str"), Arr(tuple(study.settings), "str"), "bool")
            text = "setting in [" + ", ".join(repr(s) for s in study.settings) + "]"
            ast = JEXL().parse(text)
            return Leaf(c.name, text, ast, ir, ast)
        raise ValueError(f"criterion {c.name!r}: unsupported kind {c.kind!r}")


@dataclass(frozen=True)
class _FeatLike:
    concept: ConceptSet
    transform: str
    window: Window | None


@dataclass(frozen=True)
class FeatureRef:
    """A pre-aggregated feature column inside a criterion's IR (replaces the compiler's ``Feat``)."""

    column: str
    boolean: bool
    nullable: bool

    @property
    def type(self) -> str:
        return "bool" if self.boolean else "num"


def plan_studies(studies: Sequence[Study]) -> tuple[list[StudyPlan], dict[str, Feature], dict[str, ConceptSet]]:
    """Plans for loaded :class:`screener.rules.Study` objects: (plans, features by column, concept sets by key)."""
    planner = _Planner()
    plans: list[StudyPlan] = []
    for study in studies:
        used: set[str] = set()
        plan = StudyPlan(
            study.id,
            [planner.criterion(c, study, used) for c in study.include],
            [planner.criterion(c, study, used) for c in study.exclude],
        )
        plan.columns = used
        plan.concepts = {f.concept.name: f.concept.key for f in study.features()}
        for f in study.features():
            planner.concepts[f.concept.key] = f.concept
        plans.append(plan)
    return plans, planner.features, planner.concepts


# --- features with Polars ---------------------------------------------------------------------------------


def _value_expr(concept: ConceptSet) -> pl.Expr:
    """A fact's numeric value in the concept's unit; null without a value or in an unconvertible unit."""
    from screener.rules.units import conversions_to, normalise_unit_expr

    table = conversions_to(concept.unit, concept.analyte)
    unit = normalise_unit_expr(pl.col("unit"))
    if not table:
        return pl.lit(None, dtype=pl.Float64)
    # value * a + b with (a, b) looked up by the normalised unit; an unknown unit gives null (as the compiler).
    spellings = sorted(table)
    scale = unit.replace_strict(spellings, [float(table[s][0]) for s in spellings], default=None)
    offset = unit.replace_strict(spellings, [float(table[s][1]) for s in spellings], default=None)
    return pl.col("value") * scale + offset


def _member_expr(concept: ConceptSet) -> pl.Expr:
    from screener.rules.model import ConceptSet

    expr = concept.fact_expr()
    if concept.exclude:
        expr = expr & ~ConceptSet(f"{concept.name}-exclude", tuple(concept.exclude)).fact_expr()
    return expr


def _concept_rows(facts: pl.DataFrame, concept: ConceptSet) -> pl.DataFrame:
    """The facts in ``concept`` (exclusions applied), with ``_v`` in its unit, sorted by patient, time, id."""
    return (
        facts.filter(_member_expr(concept))
        .with_columns(_value_expr(concept).alias("_v"))
        .sort("patient_id", "occurred_at", "event_id")  # ties on time broken by event id, as screener does
    )


def fact_lists(
    persons: pl.DataFrame, facts: pl.DataFrame, concepts: dict[str, Any], now: datetime
) -> tuple[pl.DataFrame, dict[str, dict[str, tuple[list[datetime], list[float | None]]]]]:
    """For the raw-facts baseline: (attribute frame, ``{patient_id: {concept key: (times, values)}}``).

    Only concept membership and unit conversion are done here (with Polars); windows and aggregation are
    left to the evaluator, per patient.
    """
    facts = facts.filter(pl.col("occurred_at") <= now)
    out: dict[str, dict[str, tuple[list[datetime], list[float | None]]]] = {}
    for key, concept in concepts.items():
        grouped = (
            _concept_rows(facts, concept)
            .group_by("patient_id", maintain_order=True)
            .agg(pl.col("occurred_at"), pl.col("_v"))
        )
        for pid, times, values in grouped.iter_rows():
            out.setdefault(pid, {})[key] = (times, values)
    return _person_attributes(persons, now), out


def _person_attributes(persons: pl.DataFrame, now: datetime) -> pl.DataFrame:
    today = now.date()
    bd = pl.col("birth_date")
    before_birthday = (bd.dt.month() > today.month) | ((bd.dt.month() == today.month) & (bd.dt.day() > today.day))
    decile = pl.col("imd_decile").cast(pl.Int64)
    return persons.select(
        "patient_id",
        (pl.lit(today.year) - bd.dt.year() - before_birthday.cast(pl.Int32)).cast(pl.Int64).alias("age"),
        (pl.lit(today) - bd).dt.total_days().cast(pl.Int64).alias("age_days"),
        "sex",
        "ethnic_group",
        decile.alias("imd_decile"),
        ((decile + 1) // 2).alias("imd_quintile"),
        "setting",
        "site",
    )


def compute_features(
    persons: pl.DataFrame, facts: pl.DataFrame, features: Iterable[Feature], concepts: dict[str, Any], now: datetime
) -> pl.DataFrame:
    """One row per person (in ``persons`` order): attribute columns and every feature column (null = unknown)."""
    out = _person_attributes(persons, now)
    facts = facts.filter(pl.col("occurred_at") <= now)
    by_concept: dict[str, list[Feature]] = {}
    for f in features:
        by_concept.setdefault(f.concept_key, []).append(f)
    for key, feats in by_concept.items():
        concept = concepts[key]
        rows = _concept_rows(facts, concept)
        aggs: list[pl.Expr] = []
        for f in feats:
            inside = pl.col("occurred_at") >= parse_window(f.window).start(now) if f.window else pl.lit(True)
            numeric = inside & pl.col("_v").is_not_null()
            v, t = pl.col("_v"), pl.col("occurred_at")
            match f.transform:
                case "ever" | "within":
                    agg = inside.any()
                case "count":
                    agg = inside.sum().cast(pl.Float64)
                case "latest":
                    agg = v.filter(numeric).last()
                case "earliest":
                    agg = v.filter(numeric).first()
                case "min":
                    agg = v.filter(numeric).min()
                case "max":
                    agg = v.filter(numeric).max()
                case "mean":
                    agg = v.filter(numeric).mean()
                case "days_since":
                    agg = (pl.lit(now) - t.filter(inside).max()).dt.total_days().cast(pl.Float64)
                case _:
                    raise ValueError(f.transform)
            aggs.append(agg.alias(f.column))
        agg_frame = rows.group_by("patient_id", maintain_order=True).agg(aggs)
        out = out.join(agg_frame, on="patient_id", how="left", maintain_order="left")
        fills = [pl.col(f.column).fill_null(False) for f in feats if f.boolean]
        fills += [pl.col(f.column).fill_null(0.0) for f in feats if f.transform == "count"]
        if fills:
            out = out.with_columns(fills)
    return out
