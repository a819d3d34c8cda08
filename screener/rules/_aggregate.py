"""Per (patient, feature) statistics over the selected fact rows of :mod:`screener.rules.features`.

The rows arrive sorted by time. Plain features (look-backs, ``upcoming``) share one ``group_by``; periods
(``exposure_days``, ``on_now``), ``continuous`` and the relations (``after``/``before``, one ``join_asof`` on
patient and time per direction) each have their own, only when some study uses them.

Periods: a fact covers ``[occurred_at, end]`` where ``end`` is ``ended_at``, else ``occurred_at`` when the status
is stopped/completed (one day), else now (``_pend``), clipped to now.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl

__all__ = ["STAT_DTYPES", "aggregate"]

TS = pl.Datetime("us", "UTC")

STAT_DTYPES: dict[str, pl.DataType] = {
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
    "first_t": TS,
    "first_code": pl.String(),
    "n_days": pl.UInt32(),
    "n_ep": pl.UInt32(),
    "latest_c": pl.String(),
    "latest_ct": TS,
    "on_now": pl.Boolean(),
    "on_t": TS,
    "on_code": pl.String(),
    "n_exp": pl.Int64(),
    "cont": pl.Boolean(),
    "cont_t": TS,
    "rel": pl.Boolean(),
    "rel_t": TS,
    "rel_code": pl.String(),
    "rel_u": TS,
    "rel_ocode": pl.String(),
    "n_funk": pl.UInt32(),
}

_GROUP = ["patient_id", "_fkey"]


def _plain_aggs() -> dict[str, pl.Expr]:
    v = pl.col("_v")
    t = pl.col("occurred_at")
    has_v = v.is_not_null()
    return {
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
        "first_t": t.min(),
        "first_code": pl.col("code").first(),
        "n_days": t.dt.date().n_unique().cast(pl.UInt32),
        # a new episode starts when the time since the previous fact is >= gap (prev <= t - gap)
        "n_ep": ((t.shift(1) <= t.dt.offset_by(pl.col("_gneg"))).sum() + 1).cast(pl.UInt32),
        "latest_c": pl.coalesce("value_code", "code").last(),
        "latest_ct": t.last(),
    }


def _period_aggs(now: datetime) -> dict[str, pl.Expr]:
    t = pl.col("occurred_at")
    nowl = pl.lit(now, dtype=TS)
    ended = pl.col("ended_at")
    ongoing = (ended >= nowl) | (ended.is_null() & (pl.col("status").fill_null("active") == "active"))
    start_day = pl.max_horizontal(t, pl.col("_start")).dt.date().cast(pl.Int32)
    end_day = pl.min_horizontal(pl.col("_pend"), nowl).dt.date().cast(pl.Int32)
    # union of day ranges, rows sorted by start: each adds the days after the furthest end seen so far
    fresh = end_day - pl.max_horizontal(start_day, end_day.cum_max().shift(1) + 1) + 1
    return {
        "on_now": ongoing.any(),
        "on_t": t.filter(ongoing).last(),
        "on_code": pl.col("code").filter(ongoing).last(),
        "n_exp": fresh.clip(lower_bound=0).sum().cast(pl.Int64),
    }


def _continuous(rows: pl.LazyFrame, now: datetime) -> pl.LazyFrame:
    """``cont``: after merging periods whose gap is <= the feature's gap, one covers all of [now - w, now]."""
    t = pl.col("occurred_at")
    nowl = pl.lit(now, dtype=TS)
    end = pl.min_horizontal(pl.col("_pend"), nowl)
    prev = end.cum_max().shift(1).over(_GROUP)
    new = prev.is_null() | (t.dt.offset_by(pl.col("_gneg")) > prev)
    blocks = (
        rows.with_columns(new.cast(pl.UInt32).cum_sum().over(_GROUP).alias("_blk"), end.alias("_pe"))
        .group_by([*_GROUP, "_blk"])
        .agg(t.min().alias("_bs"), pl.col("_pe").max().alias("_be"), pl.col("_cov").first())
    )
    covered = (pl.col("_bs") <= pl.col("_cov")) & (pl.col("_be") >= nowl)
    return blocks.group_by(_GROUP).agg(covered.any().alias("cont"), pl.col("_bs").filter(covered).min().alias("cont_t"))


def _relations(rows: pl.LazyFrame, mode: str) -> pl.LazyFrame:
    """``rel``: some fact of this side at t with a fact of the other at u, 0 <= t - u <= w (after) or
    0 <= u - t <= w (before): the nearest other fact on the right side of t, by ``join_asof``."""
    this = rows.filter(pl.col("_mode") == mode).select(*_GROUP, "occurred_at", "code", "_wneg", "_wpos")
    other = (
        rows.filter((pl.col("_mode") == "other") & pl.col("_fkey").str.ends_with("~other"))
        .select(
            "patient_id",
            pl.col("_fkey").str.strip_suffix("~other"),
            pl.col("occurred_at").alias("_u"),
            pl.col("code").alias("_ocode"),
        )
        .sort("_u")
    )
    joined = this.sort("occurred_at").join_asof(
        other,
        left_on="occurred_at",
        right_on="_u",
        by=_GROUP,
        strategy="backward" if mode == "after" else "forward",
        check_sortedness=False,
    )
    t, u = pl.col("occurred_at"), pl.col("_u")
    near = u >= t.dt.offset_by(pl.col("_wneg")) if mode == "after" else u <= t.dt.offset_by(pl.col("_wpos"))
    match = u.is_not_null() & near
    return joined.group_by(_GROUP).agg(
        match.any().alias("rel"),
        t.filter(match).last().alias("rel_t"),
        pl.col("code").filter(match).last().alias("rel_code"),
        u.filter(match).last().alias("rel_u"),
        pl.col("_ocode").filter(match).last().alias("rel_ocode"),
    )


def aggregate(
    rows: pl.LazyFrame, selections: Sequence[Any], wanted: set[str], now: datetime, engine: Any
) -> pl.DataFrame:
    """``patient_id, _fkey`` and the ``wanted`` statistics, one row per (patient, feature) with a fact."""
    modes = {s.mode for s in selections}
    kept = rows.filter(pl.col("_keep").fill_null(False))
    parts: list[pl.LazyFrame] = []
    plain = [k for k, e in _plain_aggs().items() if k in wanted]
    if modes & {"plain", "upcoming"} and plain:
        exprs = _plain_aggs()
        parts.append(
            kept.filter(pl.col("_mode").is_in(["plain", "upcoming"]))
            .group_by(_GROUP)
            .agg(exprs[k].alias(k) for k in plain)
        )
    if "period" in modes:
        exprs = _period_aggs(now)
        parts.append(
            kept.filter(pl.col("_mode") == "period").group_by(_GROUP).agg(e.alias(k) for k, e in exprs.items())
        )
    if "continuous" in modes:
        parts.append(_continuous(kept.filter(pl.col("_mode") == "continuous"), now))
    for mode in ("after", "before"):
        if mode in modes:
            parts.append(_relations(kept, mode))
    frames = pl.collect_all(parts, engine=engine) if parts else []
    out = (
        pl.concat(frames, how="diagonal_relaxed")
        if frames
        else pl.DataFrame(schema={"patient_id": pl.String, "_fkey": pl.String})
    )
    if "n_funk" in wanted:
        funk = (
            rows.filter(pl.col("_keep").is_null())
            .with_columns(pl.col("_fkey").str.strip_suffix("~other"))
            .group_by(_GROUP)
            .agg(pl.len().cast(pl.UInt32).alias("n_funk"))
            .collect(engine=engine)
        )
        if funk.height:
            out = out.join(funk, on=_GROUP, how="full", coalesce=True)
    # every wanted statistic is a column, even when no row produced it (e.g. no fact with an unknown filter)
    missing = [pl.lit(None, dtype=STAT_DTYPES[k]).alias(k) for k in sorted(wanted) if k not in out.columns]
    return out.with_columns(missing) if missing else out
