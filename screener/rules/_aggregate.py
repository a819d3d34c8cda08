"""Per (patient, feature) statistics over the selected fact rows of :mod:`screener.rules.features`.

The rows arrive sorted by ``_slot`` (:attr:`AggPlan.slots`: which ``group_by`` reads them), then by time, keyed by
``_g`` (patient and feature packed in one integer). Each ``group_by`` reads its slot as one slice. Plain features
(look-backs, ``upcoming``) needing the same statistics share a ``group_by``; periods
(``exposure_days``, ``on_now``), ``continuous`` and the relations (``after``/``before``, one ``join_asof`` on
patient and time per direction) each have their own, only when some study uses them.

Periods: a fact covers ``[occurred_at, end]`` where ``end`` is ``ended_at``, else ``occurred_at`` when the status
is stopped/completed (one day), else now (``_pend``), clipped to now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

__all__ = ["PLAIN_STATS", "STAT_DTYPES", "AggPlan", "aggregate"]

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

#: the row column ``first_code``/``last_code`` take: the integer key of the fact's (system, code) pair, looked up
#: in the code table after the ``group_by`` (a string ``first``/``last`` per group costs about twice as much)
_CODE_KEY = "_sc"
#: the statistics computed as :data:`_CODE_KEY`
_KEYED_CODES = ("first_code", "last_code")

#: the (patient, feature) group key, packed: ``_pid << AggPlan.fid_bits | _fid`` (rows arrive sorted by it)
_GROUP = ["_g"]


def _plain_aggs(gneg: str | None) -> dict[str, pl.Expr]:
    v = pl.col("_v")
    t = pl.col("occurred_at")
    has_v = v.is_not_null()
    aggs = {
        "n": pl.len().cast(pl.UInt32),
        "last_t": t.max(),
        "last_code": pl.col(_CODE_KEY).last(),
        "latest_v": v.drop_nulls().last(),
        "latest_t": pl.when(has_v).then(t).last(ignore_nulls=True),
        "earliest_v": v.drop_nulls().first(),
        "earliest_t": pl.when(has_v).then(t).first(ignore_nulls=True),
        "min_v": v.min(),
        "min_t": pl.col("_tmin").last(ignore_nulls=True),
        "max_v": v.max(),
        "max_t": pl.col("_tmax").last(ignore_nulls=True),
        "mean_v": v.mean(),
        "n_num": v.count().cast(pl.UInt32),
        "n_unk": pl.col("_unk").sum().cast(pl.UInt32),
        "first_t": t.min(),
        "first_code": pl.col(_CODE_KEY).first(),
        "n_days": t.dt.date().n_unique().cast(pl.UInt32),
        "latest_c": pl.coalesce("_vc", "code").last(),  # (``_vc``: value_code, on the rows of these slots)
        "latest_ct": t.last(),
    }
    if gneg is not None:
        # a new episode starts when the time since the previous fact is >= gap (prev <= t - gap)
        aggs["n_ep"] = ((t.shift(1) <= t.dt.offset_by(gneg)).sum() + 1).cast(pl.UInt32)
    return aggs


#: the statistics of the plain (look-back, ``upcoming``) group_by
PLAIN_STATS = frozenset([*_plain_aggs("-1d"), "n_ep"])


def _at_extremes(stats: tuple[str, ...]) -> list[pl.Expr]:
    """Row columns for ``min_t``/``max_t``: the time where the value equals its group's min (max), else null; the
    statistic is the last non-null one (occurred_at is never null here). A filter by a per-group scalar inside
    the ``group_by`` runs group by group; this runs as two plain aggregations."""
    v, t = pl.col("_v"), pl.col("occurred_at")
    cols = []
    if "min_t" in stats:
        cols.append(pl.when(v == v.min().over(_GROUP)).then(t).alias("_tmin"))
    if "max_t" in stats:
        cols.append(pl.when(v == v.max().over(_GROUP)).then(t).alias("_tmax"))
    return cols


def _period_aggs(now: datetime) -> dict[str, pl.Expr]:
    t = pl.col("occurred_at")
    nowl = pl.lit(now, dtype=TS)
    ended = pl.col("ended_at")
    ongoing = (ended >= nowl) | (ended.is_null() & pl.col("_active"))
    return {
        "on_now": ongoing.any(),
        "on_t": pl.when(ongoing).then(t).last(ignore_nulls=True),
        "on_code": pl.when(ongoing).then(pl.col("code")).last(ignore_nulls=True),
        "n_exp": pl.col("_fresh").clip(lower_bound=0).sum().cast(pl.Int64),
    }


def _fresh_days(now: datetime) -> pl.Expr:
    """``_fresh``, over period rows sorted by group then start: the days of a row's ``[start, end]`` after the
    furthest end of its group's earlier rows (their sum is the union's length). The running maximum per group is
    one running maximum over the frame of ``group ordinal * 2^32 + end day`` (a group's keys exceed every earlier
    group's), not a cumulative expression per group."""
    t = pl.col("occurred_at")
    start_day = pl.max_horizontal(t, pl.col("_start")).dt.date().cast(pl.Int64)
    end_day = pl.min_horizontal(pl.col("_pend"), pl.lit(now, dtype=TS)).dt.date().cast(pl.Int64)
    g = pl.col("_g")
    base = (g != g.shift(1)).fill_null(True).cum_sum().cast(pl.Int64) * (1 << 32) + (1 << 31)
    prev = (base + end_day).cum_max().shift(1)
    prev_end = pl.when(prev >= base).then(prev - base)  # null for a group's first row
    return (end_day - pl.max_horizontal(start_day, prev_end + 1) + 1).alias("_fresh")


def _continuous(rows: pl.LazyFrame, now: datetime, gneg: str) -> pl.LazyFrame:
    """``cont``: after merging periods whose gap is <= the feature's gap, one covers all of [now - w, now]."""
    t = pl.col("occurred_at")
    nowl = pl.lit(now, dtype=TS)
    end = pl.min_horizontal(pl.col("_pend"), nowl)
    prev = end.cum_max().shift(1).over(_GROUP)
    new = prev.is_null() | (t.dt.offset_by(gneg) > prev)
    blocks = (
        rows.with_columns(new.cast(pl.UInt32).cum_sum().over(_GROUP).alias("_blk"), end.alias("_pe"))
        .group_by([*_GROUP, "_blk"])
        .agg(t.min().alias("_bs"), pl.col("_pe").max().alias("_be"), pl.col("_cov").first())
    )
    covered = (pl.col("_bs") <= pl.col("_cov")) & (pl.col("_be") >= nowl)
    return blocks.group_by(_GROUP).agg(covered.any().alias("cont"), pl.col("_bs").filter(covered).min().alias("cont_t"))


def _relations(rows: pl.LazyFrame, mode: str, offsets: pl.LazyFrame) -> pl.LazyFrame:
    """``rel``: some fact of this side at t with a fact of the other at u, 0 <= t - u <= w (after) or
    0 <= u - t <= w (before): the nearest other fact on the right side of t, by ``join_asof``."""
    this = (
        rows.filter(pl.col("_mode") == mode)
        .select(*_GROUP, "_fid", "occurred_at", "code")
        .join(offsets, on="_fid", how="left")  # the window offsets: per feature, not carried on every row
        .drop("_fid")
    )
    other = (
        rows.filter(pl.col("_mode") == "other")
        .select(
            (pl.col("_g") - pl.col("_fid") + pl.col("_own")).alias("_g"),  # the group of the feature it counts for
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


@dataclass(frozen=True)
class AggPlan:
    """Which group_bys :func:`aggregate` runs (built once per study set).

    ``plain``: ``(fids, stats, gap offset)`` groups of plain/upcoming features that need the same statistics
    (each row belongs to one feature, so each is aggregated once, for only the statistics it needs);
    ``continuous``: ``(fids, gap offset)``; ``period``/``relations``: whether those modes occur; ``funk``: whether
    some feature counts facts whose filter is unknown.
    """

    plain: tuple[tuple[tuple[int, ...], tuple[str, ...], str | None], ...]
    continuous: tuple[tuple[tuple[int, ...], str], ...]
    period: bool
    relations: tuple[str, ...]
    funk: bool
    wanted: frozenset[str]
    fid_bits: int  # the bits of ``_fid`` in the packed key ``_g`` (:func:`screener.rules._select.fid_bits`)
    #: per selection, the slot its rows are grouped in (:func:`screener.rules._select.fact_rows` sorts the rows by
    #: it): ``i`` for ``plain[i]``, ``len(plain) + j`` for ``continuous[j]``, then periods, then relations (both
    #: sides), then none
    slots: tuple[int, ...]
    #: ``(fid, window offset back, window offset ahead)`` of each relation (``after``/``before``)
    offsets: tuple[tuple[int, str | None, str | None], ...] = ()


def aggregate(rows: pl.DataFrame, plan: AggPlan, now: datetime, engine: Any, codes: pl.Series) -> list[pl.DataFrame]:
    """Frames of ``_pid, _fid`` and statistics (each frame its own statistics: a (patient, feature) has a row in
    each frame that computes a statistic it has), only for (patient, feature)s with a fact. A statistic absent
    from every frame for a (patient, feature) is null. ``codes``: the code of each ``_sc`` of the rows
    (:func:`screener.rules._select.keyed_fact_rows`)."""
    lazy = rows.lazy()
    # the rows come sorted by slot: each slot's rows are one zero-copy slice (no filter over every row per group)
    n_plain, n_cont = len(plan.plain), len(plan.continuous)
    bounds = rows["_slot"].search_sorted(pl.Series(range(n_plain + n_cont + 3), dtype=pl.UInt32)).to_list()

    def kept(slot: int) -> pl.LazyFrame:
        lo, hi = bounds[slot], bounds[slot + 1]
        return rows.slice(lo, hi - lo).lazy().filter(pl.col("_keep").fill_null(False))

    parts: list[pl.LazyFrame] = []
    for i, (_fids, stats, gneg) in enumerate(plan.plain):
        exprs = _plain_aggs(gneg)
        extremes = _at_extremes(stats)
        part = kept(i).with_columns(extremes) if extremes else kept(i)
        parts.append(part.group_by(_GROUP).agg(exprs[k].alias(k) for k in stats))
    if plan.period:
        exprs = _period_aggs(now)
        # sorted by group (stable: time order kept within each) for the running maximum of :func:`_fresh_days`
        period = kept(n_plain + n_cont).sort(_GROUP, maintain_order=True).with_columns(_fresh_days(now))
        parts.append(period.group_by(_GROUP).agg(e.alias(k) for k, e in exprs.items()))
    for j, (_fids, gneg) in enumerate(plan.continuous):
        parts.append(_continuous(kept(n_plain + j), now, gneg))
    offsets = pl.LazyFrame(
        list(plan.offsets), schema={"_fid": pl.UInt32, "_wneg": pl.String, "_wpos": pl.String}, orient="row"
    )
    for mode in plan.relations:
        parts.append(_relations(kept(n_plain + n_cont + 1), mode, offsets))
    if plan.funk:
        parts.append(
            lazy.filter(pl.col("_keep").is_null())
            .group_by((pl.col("_g") - pl.col("_fid") + pl.col("_own")).alias("_g"))
            .agg(pl.len().cast(pl.UInt32).alias("n_funk"))
        )
    g = pl.col("_g")
    unpack = [
        (g // (1 << plan.fid_bits)).cast(pl.UInt32).alias("_pid"),
        (g % (1 << plan.fid_bits)).cast(pl.UInt32).alias("_fid"),
        pl.exclude("_g"),
    ]
    frames = pl.collect_all([p.select(unpack) for p in parts], engine=engine) if parts else []
    return [_codes(f, codes) for f in frames if f.height]


def _codes(frame: pl.DataFrame, codes: pl.Series) -> pl.DataFrame:
    """``frame`` with its :data:`_KEYED_CODES` statistics (``_sc`` keys) replaced by their codes."""
    keyed = [c for c in _KEYED_CODES if c in frame.columns]
    if not keyed:
        return frame
    return frame.with_columns(codes.gather(frame.get_column(c)).alias(c) for c in keyed)
