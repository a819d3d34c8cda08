"""Facts -> one row of per-feature statistics per patient, in one vectorised pass (no Python loop over patients).

1. Every feature (concept set x filter x window x transform family, :attr:`Feat.key`) any study uses is
   collected once and shared between studies.
2. Fact rows: concept membership, unit conversion and per-fact filters (:mod:`screener.rules._facts`).
3. Each fact row is joined to the features of its concept and kept when the feature selects it: a look-back
   ``[now - w, now]`` (inclusive) on ``occurred_at``; for periods (``exposure_days``, ``on_now``) on the
   period's end; ``upcoming`` reads planned/ordered facts in ``[now, now + w]``. Every other transform skips
   planned/ordered facts unless its filter reads ``.status``.
4. Statistics per (patient, feature) in a few ``group_by``s (:mod:`screener.rules._aggregate`), pivoted to one
   row per patient with columns ``<feature key>:<stat>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import polars as pl

from screener.rules._aggregate import STAT_DTYPES, aggregate
from screener.rules._attributes import NOW_COL, attributes
from screener.rules._facts import (
    FACT_COLUMNS,
    conversions,
    current_encounters,
    ensure_columns,
    filter_expr,
    member_table,
    membership,
    uses,
)
from screener.rules.concepts import ConceptSet
from screener.rules.ir import NOT_DONE, Feat, Field, Source, collect_attributes, filter_fields
from screener.rules.lower import TRANSFORM_STATS, stat_col
from screener.rules.model import Study
from screener.rules.units import normalise_unit_expr
from screener.state import PatientState

__all__ = ["ENGINE", "NOW_COL", "TS", "attributes", "feature_frame"]

TS = pl.Datetime("us", "UTC")

#: Polars engine for every query here: the in-memory engine runs these wide, many-expression queries ~3x
#: faster than the streaming engine Polars 2 picks by default.
ENGINE: Literal["in-memory"] = "in-memory"


@dataclass(frozen=True)
class _Selection:
    """How one feature (or the other side of a relation) selects fact rows."""

    key: str
    source: Source
    mode: str  # plain | period | continuous | upcoming | after | before | other
    feat: Feat


def _selections(studies: Sequence[Study]) -> tuple[dict[str, list[Feat]], list[_Selection]]:
    feats: dict[str, list[Feat]] = {}
    for s in studies:
        for f in s.features():
            feats.setdefault(f.key, []).append(f)
    sel: list[_Selection] = []
    for key, group in feats.items():
        f = group[0]
        sel.append(_Selection(key, f.source, f.mode, f))
        if f.other is not None:
            sel.append(_Selection(f.other_key, f.other, "other", f))
    return feats, sel


@dataclass
class _FeaturePlan:
    """Everything :func:`feature_frame` needs that depends only on the studies (built once per study set)."""

    feats: dict[str, list[Feat]]
    selections: list[_Selection]
    stats_needed: dict[str, set[str]]
    concepts: dict[str, ConceptSet]
    columns: list[str]
    empty: pl.DataFrame
    member_table: pl.DataFrame | None
    conversions: pl.DataFrame
    filters: dict[str, pl.Expr]
    filter_attrs: list[str]
    fact_columns: list[str]
    needs_encounters: bool
    look_ahead: timedelta


#: study set (a tuple of studies, compared by identity) -> its feature plan; a few recent sets are kept
_FEATURE_PLANS: dict[tuple[Study, ...], _FeaturePlan] = {}
_FEATURE_PLANS_MAX = 16


def _feature_plan(studies: Sequence[Study]) -> _FeaturePlan:
    key = tuple(studies)
    plan = _FEATURE_PLANS.get(key)
    if plan is not None:
        return plan
    feats, selections = _selections(studies)
    stats_needed: dict[str, set[str]] = {}
    concepts: dict[str, ConceptSet] = {}
    for sel in selections:
        concepts[sel.source.concept.key] = sel.source.concept
    for fkey, group in feats.items():
        needed = stats_needed.setdefault(fkey, set())
        needed.update(s for f in group for s in TRANSFORM_STATS[f.transform])
        if group[0].filter is not None or (group[0].other is not None and group[0].other.filter is not None):
            needed.add("n_funk")
    columns = [stat_col(feats[k][0], s) for k in feats for s in sorted(stats_needed[k])]
    empty = pl.DataFrame(schema={"patient_id": pl.String, **{c: STAT_DTYPES[c.rsplit(":", 1)[1]] for c in columns}})
    filters = {s.key: filter_expr(s.source.filter) for s in selections if s.source.filter is not None}
    attrs = sorted({a for s in selections for a in _filter_attrs(s.source)})
    encounters = any(
        uses(s.source.filter, lambda n: isinstance(n, Field) and n.name == "encounter") for s in selections
    )
    ahead = max(
        (
            f.window.end(datetime(2000, 1, 1)) - datetime(2000, 1, 1)
            for f in (s.feat for s in selections)
            if f.mode == "upcoming" and f.window is not None
        ),
        default=timedelta(0),
    )
    plan = _FeaturePlan(
        feats,
        selections,
        stats_needed,
        concepts,
        columns,
        empty,
        member_table(concepts),
        conversions(concepts).collect(),
        filters,
        attrs,
        _fact_columns(selections, feats),
        encounters,
        ahead,
    )
    if len(_FEATURE_PLANS) >= _FEATURE_PLANS_MAX:
        _FEATURE_PLANS.pop(next(iter(_FEATURE_PLANS)))
    _FEATURE_PLANS[key] = plan
    return plan


#: the fact columns a filter field reads
_FIELD_COLUMNS = {
    "value": ("value",),
    "dose": ("dose_value",),
    "duration_days": ("ended_at",),
    "encounter": ("encounter_id", "kind"),
}
_BASE_COLUMNS = ("patient_id", "event_id", "system", "code", "value", "unit", "occurred_at", "status")


def _fact_columns(selections: Sequence[_Selection], feats: dict[str, list[Feat]]) -> list[str]:
    """Only the fact columns these features read (fewer columns through the joins)."""
    need = set(_BASE_COLUMNS)
    if any(f.transform == "latest_code" for group in feats.values() for f in group):
        need.add("value_code")
    for s in selections:
        if s.mode in ("period", "continuous"):
            need.add("ended_at")
        if s.source.filter is not None:
            for name in filter_fields(s.source.filter):
                need.update(_FIELD_COLUMNS.get(name, (name,)))
    if any(s.mode == "period" for s in selections):
        need.add("ended_at")
    return [c for c in FACT_COLUMNS if c in need]


def _filter_attrs(source: Source) -> set[str]:
    return collect_attributes(source.filter) if source.filter is not None else set()


def _windows(fp: _FeaturePlan, now: datetime) -> pl.LazyFrame:
    rows: list[dict[str, Any]] = []
    for s in fp.selections:
        f, mode = s.feat, s.mode
        w = f.window
        row: dict[str, Any] = {
            "_fkey": s.key,
            "_ckey": s.source.concept.key,
            "_mode": mode,
            "_start": None,
            "_end": now,
            "_future": mode == "upcoming",
            "_byend": mode == "period",
            "_skip": not s.source.reads_status,
            "_gneg": f.gap.offset(-1) if f.gap else None,
            "_wneg": w.offset(-1) if w else None,
            "_wpos": w.offset(1) if w else None,
            "_cov": w.start(now) if w and mode == "continuous" else None,
        }
        if mode == "upcoming" and w is not None:
            row["_start"], row["_end"] = now, w.end(now)
        elif mode in ("plain", "period") and w is not None:
            row["_start"] = w.start(now)
        rows.append(row)
    schema: dict[str, Any] = {
        "_fkey": pl.String, "_ckey": pl.String, "_mode": pl.String, "_start": TS, "_end": TS, "_future": pl.Boolean,
        "_byend": pl.Boolean, "_skip": pl.Boolean, "_gneg": pl.String, "_wneg": pl.String, "_wpos": pl.String,
        "_cov": TS,
    }  # fmt: skip
    return pl.LazyFrame(rows, schema=schema)


def _fact_rows(state: PatientState, fp: _FeaturePlan, now: datetime) -> pl.LazyFrame:
    """Fact rows joined to the features that select them, filtered (``_keep``: the filter's value, null =
    unknown), sorted by time."""
    facts = ensure_columns(state.facts)
    # Concept membership is decided once per distinct (system, code), not per fact: far fewer string operations.
    codes = facts.select("system", "code").unique().with_row_index("_fid")
    pairs = membership(codes.lazy(), fp.concepts, fp.member_table)
    code_concepts = codes.lazy().join(pairs, on="_fid", how="inner").select("system", "code", "_ckey")
    units = (
        facts.lazy().select(pl.col("unit").unique()).with_columns(normalise_unit_expr(pl.col("unit")).alias("_unit"))
    )
    modes = {sel.mode for sel in fp.selections}
    periods = bool(modes & {"period", "continuous"})
    status_nd = pl.col("status").is_in(NOT_DONE).fill_null(False)
    t = pl.col("occurred_at")
    start = pl.col("_start")
    done = (~pl.col("_skip") | ~status_nd) & (
        start.is_null() | (pl.when(pl.col("_byend")).then(pl.col("_pend") >= start).otherwise(t >= start))
        if "period" in modes
        else start.is_null() | (t >= start)
    )
    selected = (t <= pl.col("_end")) & (
        pl.when(pl.col("_future")).then(status_nd & (t >= start)).otherwise(done) if "upcoming" in modes else done
    )
    derived = [
        (pl.col("value") * pl.col("_a") + pl.col("_b")).alias("_v"),
        (pl.col("value").is_not_null() & pl.col("_a").is_null()).alias("_unk"),
    ]
    if periods:
        ended = pl.col("ended_at")
        pend = (
            pl.when(ended.is_not_null())
            .then(ended)
            .when(pl.col("status").is_in(("stopped", "completed")).fill_null(False))
            .then(pl.col("occurred_at"))
            .otherwise(pl.lit(now, dtype=TS))
        )
        derived.append(pend.alias("_pend"))
    rows = (
        facts.lazy()
        .filter(pl.col("occurred_at") <= now + fp.look_ahead)
        .select(fp.fact_columns)
        .join(code_concepts, on=["system", "code"], how="inner")
        # Units normalised once per distinct spelling, like codes.
        .join(units, on="unit", how="left", nulls_equal=True)
        .join(fp.conversions.lazy(), on=["_ckey", "_unit"], how="left")
        .with_columns(derived)
        .join(_windows(fp, now), on="_ckey", how="inner")
        .filter(selected)
    )
    if not fp.filters:
        return rows.with_columns(pl.lit(True).alias("_keep")).sort(["occurred_at", "event_id"])
    # Each filter runs on its own feature's rows only (a when/then chain would run every filter on every row).
    joined = rows.collect(engine=ENGINE)
    keys = list(fp.filters)
    plain = joined.filter(~pl.col("_fkey").is_in(keys)).with_columns(pl.lit(True).alias("_keep"))
    sub = joined.filter(pl.col("_fkey").is_in(keys)).lazy()
    if fp.filter_attrs:
        attrs = attributes(state.persons, now).select("patient_id", *(f"_attr_{a}" for a in fp.filter_attrs))
        sub = sub.join(attrs, on="patient_id", how="left")
    if fp.needs_encounters:
        sub = sub.join(current_encounters(facts.lazy(), now), on=["patient_id", "encounter_id"], how="left")
    parts = sub.collect(engine=ENGINE).partition_by("_fkey", as_dict=True)
    kept = pl.collect_all(
        [part.lazy().with_columns(fp.filters[key[0]].cast(pl.Boolean).alias("_keep")) for key, part in parts.items()],
        engine=ENGINE,
    )
    rows = pl.concat([plain, *kept], how="diagonal_relaxed").lazy()
    # Rows keep their order inside each group, so one sort by time makes first/last mean earliest/latest.
    return rows.sort(["occurred_at", "event_id"])


#: up to this many (patient, feature) rows, :func:`feature_frame` widens them with a single pivot
_ONE_PIVOT = 20_000


def feature_frame(state: PatientState, studies: Sequence[Study], now: datetime) -> pl.DataFrame:
    """One row per patient with facts in some feature; columns ``patient_id`` and ``<feature>:<stat>``."""
    fp = _feature_plan(studies)
    feats, stats_needed, columns, empty = fp.feats, fp.stats_needed, fp.columns, fp.empty
    if not feats or state.facts.height == 0:
        return empty
    rows = _fact_rows(state, fp, now)
    wanted = set().union(*stats_needed.values())
    agg = aggregate(rows, fp.selections, wanted, now, ENGINE)
    if agg.height == 0:
        return empty
    names = sorted(c for c in agg.columns if c not in ("patient_id", "_fkey"))
    if agg.height <= _ONE_PIVOT:
        # Few rows (the engine's micro-batches): one pivot of every statistic costs less than a pivot per
        # statistic, whose fixed costs dominate; the statistics no transform reads are dropped below.
        sep = "\x1f"
        wide = agg.pivot(on="_fkey", index="patient_id", values=names, separator=sep)
        if len(names) == 1:  # a single statistic's columns are named by the feature alone
            wide = wide.rename({c: f"{c}:{names[0]}" for c in wide.columns if c != "patient_id"})
        else:
            wide = wide.rename({c: "{1}:{0}".format(*c.split(sep, 1)) for c in wide.columns if sep in c})
    else:
        # One pivot per statistic over only the features that need it (a pivot of every statistic for every
        # feature costs several times more on large frames).
        by_stat: dict[str, list[str]] = {}
        for key, stats in stats_needed.items():
            for stat in stats:
                by_stat.setdefault(stat, []).append(key)
        wide = agg.select("patient_id").unique()
        for stat, keys in sorted(by_stat.items()):
            part = agg.filter(pl.col("_fkey").is_in(keys) & pl.col(stat).is_not_null())
            part = part.pivot(on="_fkey", index="patient_id", values=stat)
            part = part.rename({c: f"{c}:{stat}" for c in part.columns if c != "patient_id"})
            wide = wide.join(part, on="patient_id", how="left")
    schema, present = empty.schema, set(wide.columns)
    missing = [pl.lit(None, dtype=schema[c]).alias(c) for c in columns if c not in present]
    cast = [pl.col(c).cast(schema[c]) for c in columns if c in present]
    return wide.with_columns(missing + cast).select(["patient_id", *columns])
