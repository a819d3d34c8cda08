"""Facts -> one row of per-(concept, window) statistics per patient, in one vectorised pass.

How (no Python loop over patients):

1. Every concept-set feature (concept meaning x window) any study uses is collected once and shared.
2. Concept membership: facts are joined to an expanded code table. ICD10/ATC/OPCS4 codes are prefixes
   (compared without dots, upper-cased): one join per distinct prefix length; other systems match exactly.
   Explicit exclusions are anti-joined.
3. Numeric facts are converted to the concept's unit by a join with a conversion table; values in unknown or
   unconvertible units are left out of the numbers and counted (``n_unk``).
4. Facts are joined to each feature's window ``[now - w, now]`` (inclusive) and aggregated per
   (patient, feature) in one ``group_by``, then pivoted to one row per patient.
5. Each study's criteria are Polars expressions over that row (see :mod:`screener.rules.compiler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl

from screener.rules.concepts import PREFIX_SYSTEMS, ConceptSet, normalise_code, normalise_code_expr
from screener.rules.ir import Feat
from screener.rules.lower import NOW_COL, TRANSFORM_STATS, stat_col
from screener.rules.model import Study
from screener.rules.units import conversions_to, normalise_unit_expr
from screener.state import PatientState

__all__ = ["ENGINE", "TS", "attributes", "feature_frame"]

TS = pl.Datetime("us", "UTC")

_STAT_DTYPES: dict[str, pl.DataType] = {
    "n": pl.UInt32(),
    "last_t": TS,
    "last_code": pl.String(),
    "latest_v": pl.Float64(),
    "latest_t": TS,
    "earliest_v": pl.Float64(),
    "earliest_t": TS,
    "min_v": pl.Float64(),
    "min_t": TS,
    "max_v": pl.Float64(),
    "max_t": TS,
    "mean_v": pl.Float64(),
    "n_num": pl.UInt32(),
    "n_unk": pl.UInt32(),
}


def _features(studies: Sequence[Study]) -> dict[str, list[Feat]]:
    """feature key -> the Feat nodes sharing it (same concept meaning and window)."""
    out: dict[str, list[Feat]] = {}
    for s in studies:
        for f in s.features():
            out.setdefault(f.key, []).append(f)
    return out


def _member_table(concepts: dict[str, ConceptSet]) -> pl.DataFrame | None:
    """The code table of :func:`_membership` (``None`` when no concept has a code)."""
    rows: list[dict[str, Any]] = []
    for key, c in concepts.items():
        for excl, pairs in ((False, c.codes), (True, c.exclude)):
            for system, code in pairs:
                rows.append(
                    {
                        "_ckey": key,
                        "system": system,
                        "_code": normalise_code(code),
                        "_prefix": system in PREFIX_SYSTEMS,
                        "_excl": excl,
                    }
                )
    if not rows:
        return None
    return pl.DataFrame(rows).with_columns(pl.col("_code").str.len_chars().alias("_len"))


def _membership(
    facts: pl.LazyFrame, concepts: dict[str, ConceptSet], table: pl.DataFrame | None = None
) -> pl.LazyFrame:
    """``(_fid, _ckey)`` pairs: fact ``_fid`` belongs to concept ``_ckey`` (exclusions applied)."""
    if table is None:
        table = _member_table(concepts)
    if table is None:
        return pl.LazyFrame(schema={"_fid": pl.UInt32, "_ckey": pl.String})
    coded = facts.select("_fid", "system", normalise_code_expr(pl.col("code")).alias("_code")).filter(
        pl.col("_code").is_not_null()
    )
    parts: list[pl.LazyFrame] = []
    exact = table.filter(~pl.col("_prefix")).select("_ckey", "system", "_code", "_excl")
    if exact.height:
        parts.append(coded.join(exact.lazy(), on=["system", "_code"], how="inner").select("_fid", "_ckey", "_excl"))
    prefix = table.filter(pl.col("_prefix"))
    # One join per distinct prefix length: the fact code cut to that length must equal the prefix.
    for n in sorted(set(prefix["_len"].to_list())):
        t = prefix.filter(pl.col("_len") == n).select("_ckey", "system", pl.col("_code").alias("_p"), "_excl")
        parts.append(
            coded.filter(pl.col("system").is_in(list(PREFIX_SYSTEMS)) & (pl.col("_code").str.len_chars() >= n))
            .with_columns(pl.col("_code").str.slice(0, n).alias("_p"))
            .join(t.lazy(), on=["system", "_p"], how="inner")
            .select("_fid", "_ckey", "_excl")
        )
    hits = pl.concat(parts, how="vertical")
    included = hits.filter(~pl.col("_excl")).select("_fid", "_ckey").unique()
    if not any(c.exclude for c in concepts.values()):
        return included
    excluded = hits.filter(pl.col("_excl")).select("_fid", "_ckey").unique()
    return included.join(excluded, on=["_fid", "_ckey"], how="anti")


def _conversions(concepts: dict[str, ConceptSet]) -> pl.LazyFrame:
    rows = []
    for key, c in concepts.items():
        for spelling, (a, b) in conversions_to(c.unit, c.analyte).items():
            rows.append({"_ckey": key, "_unit": spelling, "_a": a, "_b": b})
    return pl.LazyFrame(rows, schema={"_ckey": pl.String, "_unit": pl.String, "_a": pl.Float64, "_b": pl.Float64})


@dataclass
class _FeaturePlan:
    """Everything :func:`feature_frame` needs that depends only on the studies (built once per study set)."""

    feats: dict[str, list[Feat]]
    stats_needed: dict[str, set[str]]
    concepts: dict[str, ConceptSet]
    columns: list[str]
    empty: pl.DataFrame
    member_table: pl.DataFrame | None
    conversions: pl.DataFrame


#: study set (a tuple of studies, compared by identity) -> its feature plan; a few recent sets are kept
_FEATURE_PLANS: dict[tuple[Study, ...], _FeaturePlan] = {}
_FEATURE_PLANS_MAX = 16

#: Polars engine for every query here: the in-memory engine runs these wide, many-expression queries ~3x
#: faster than the streaming engine Polars 2 picks by default.
ENGINE: Literal["in-memory"] = "in-memory"


def _feature_plan(studies: Sequence[Study]) -> _FeaturePlan:
    key = tuple(studies)
    plan = _FEATURE_PLANS.get(key)
    if plan is not None:
        return plan
    feats = _features(studies)
    stats_needed: dict[str, set[str]] = {}
    concepts: dict[str, ConceptSet] = {}
    for fkey, group in feats.items():
        concepts[group[0].concept.key] = group[0].concept
        stats_needed.setdefault(fkey, set()).update(s for f in group for s in TRANSFORM_STATS[f.transform])
    columns = [stat_col(feats[k][0], s) for k in feats for s in sorted(stats_needed[k])]
    empty = pl.DataFrame(schema={"patient_id": pl.String, **{c: _STAT_DTYPES[c.rsplit(":", 1)[1]] for c in columns}})
    plan = _FeaturePlan(
        feats, stats_needed, concepts, columns, empty, _member_table(concepts), _conversions(concepts).collect()
    )
    if len(_FEATURE_PLANS) >= _FEATURE_PLANS_MAX:
        _FEATURE_PLANS.pop(next(iter(_FEATURE_PLANS)))
    _FEATURE_PLANS[key] = plan
    return plan


#: up to this many (patient, feature) rows, :func:`feature_frame` widens them with a single pivot
_ONE_PIVOT = 20_000


def feature_frame(state: PatientState, studies: Sequence[Study], now: datetime) -> pl.DataFrame:
    """One row per patient with facts in some feature; columns ``patient_id`` and ``<feature>:<stat>``."""
    fp = _feature_plan(studies)
    feats, stats_needed, concepts, columns, empty = fp.feats, fp.stats_needed, fp.concepts, fp.columns, fp.empty
    if not feats or state.facts.height == 0:
        return empty
    windows = []
    for key, group in feats.items():
        f0 = group[0]
        windows.append({"_fkey": key, "_ckey": f0.concept.key, "_start": f0.window.start(now) if f0.window else None})
    # Concept membership is decided once per distinct (system, code), not per fact: far fewer string operations.
    codes = state.facts.select("system", "code").unique().with_row_index("_fid")
    pairs = _membership(codes.lazy(), concepts, fp.member_table)
    code_concepts = codes.lazy().join(pairs, on="_fid", how="inner").select("system", "code", "_ckey")
    units = (
        state.facts.lazy()
        .select(pl.col("unit").unique())
        .with_columns(normalise_unit_expr(pl.col("unit")).alias("_unit"))
    )
    wins = pl.LazyFrame(windows, schema={"_fkey": pl.String, "_ckey": pl.String, "_start": TS})
    rows = (
        state.facts.lazy()
        .filter(pl.col("occurred_at") <= now)
        .select("patient_id", "event_id", "system", "code", "value", "unit", "occurred_at")
        .join(code_concepts, on=["system", "code"], how="inner")
        # Units normalised once per distinct spelling, like codes.
        .join(units, on="unit", how="left", nulls_equal=True)
        .join(fp.conversions.lazy(), on=["_ckey", "_unit"], how="left")
        .with_columns(
            (pl.col("value") * pl.col("_a") + pl.col("_b")).alias("_v"),
            (pl.col("value").is_not_null() & pl.col("_a").is_null()).alias("_unk"),
        )
        .join(wins, on="_ckey", how="inner")
        .filter(pl.col("_start").is_null() | (pl.col("occurred_at") >= pl.col("_start")))
        # Rows keep their order inside each group, so one sort by time makes first/last mean earliest/latest.
        .sort(["occurred_at", "event_id"])
    )
    v = pl.col("_v")
    t = pl.col("occurred_at")
    has_v = v.is_not_null()
    aggs = {
        "n": pl.len().cast(pl.UInt32),
        "last_t": t.max(),
        "last_code": pl.col("code").last(),
        "latest_v": v.drop_nulls().last(),
        "latest_t": t.filter(has_v).last(),
        "earliest_v": v.drop_nulls().first(),
        "earliest_t": t.filter(has_v).first(),
        "min_v": v.min(),
        "min_t": t.filter(v == v.min()).last(),
        "max_v": v.max(),
        "max_t": t.filter(v == v.max()).last(),
        "mean_v": v.mean(),
        "n_num": v.count().cast(pl.UInt32),
        "n_unk": pl.col("_unk").sum().cast(pl.UInt32),
    }
    # Only the statistics some transform of these studies reads.
    wanted = set().union(*stats_needed.values())
    agg_q = rows.group_by(["patient_id", "_fkey"]).agg(e.alias(k) for k, e in aggs.items() if k in wanted)
    agg = agg_q.collect(engine=ENGINE)
    if agg.height == 0:
        return empty
    if agg.height <= _ONE_PIVOT:
        # Few rows (the engine's micro-batches): one pivot of every statistic costs less than a pivot per
        # statistic, whose fixed costs dominate; the statistics no transform reads are dropped below.
        sep = "\x1f"
        names = sorted(wanted)
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
            part = agg.filter(pl.col("_fkey").is_in(keys)).pivot(on="_fkey", index="patient_id", values=stat)
            part = part.rename({c: f"{c}:{stat}" for c in part.columns if c != "patient_id"})
            wide = wide.join(part, on="patient_id", how="left")
    schema, present = empty.schema, set(wide.columns)
    missing = [pl.lit(None, dtype=schema[c]).alias(c) for c in columns if c not in present]
    return wide.with_columns(missing).select(["patient_id", *columns])


def attributes(persons: pl.DataFrame, now: datetime) -> pl.LazyFrame:
    b = pl.col("birth_date")
    today = now.astimezone(UTC).date()
    before_birthday = (b.dt.month() > today.month) | ((b.dt.month() == today.month) & (b.dt.day() > today.day))
    age = (pl.lit(today.year) - b.dt.year().cast(pl.Int32) - before_birthday.cast(pl.Int32)).cast(pl.Float64)
    decile = pl.col("imd_decile").cast(pl.Float64)
    return persons.lazy().select(
        "patient_id",
        pl.lit(now, dtype=TS).alias(NOW_COL),
        age.alias("_attr_age"),
        (pl.lit(today) - b).dt.total_days().cast(pl.Float64).alias("_attr_age_days"),
        pl.col("sex").alias("_attr_sex"),
        pl.col("ethnic_group").alias("_attr_ethnic_group"),
        decile.alias("_attr_imd_decile"),
        ((decile + 1) / 2).floor().alias("_attr_imd_quintile"),
        pl.col("setting").alias("_attr_setting"),
        pl.col("site").alias("_attr_site"),
    )
