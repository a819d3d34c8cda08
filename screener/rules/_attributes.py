"""Person attributes as columns ``_attr_<name>`` of the per-patient frame (plus ``_now`` and ``_birth``).

``age`` whole years, ``age_days`` whole days, ``age_months`` whole calendar months since birth (a month is
complete on the day of the month of birth: born 31 Jan, one month old on 31 Mar, not on 28 Feb); unknown without
a birth date. ``registered_days``: whole days since the start of the registration fact that covers now
(occurred_at <= now and (ended_at null or ended_at >= now); the earliest such start when several do), unknown
when none covers now.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from screener.rules._leaves import NOW_COL
from screener.rules.ir import NOT_DONE

__all__ = ["NOW_COL", "attributes", "registrations"]

TS = pl.Datetime("us", "UTC")


def registrations(facts: pl.DataFrame, now: datetime) -> pl.LazyFrame:
    """``(patient_id, _attr_registered_days)`` for patients with a registration fact covering ``now``."""
    if "ended_at" not in facts.columns:
        return pl.LazyFrame(schema={"patient_id": pl.String, "_attr_registered_days": pl.Float64})
    covering = facts.lazy().filter(
        (pl.col("kind") == "registration")
        & (pl.col("occurred_at") <= now)
        & (pl.col("ended_at").is_null() | (pl.col("ended_at") >= now))
        & ~pl.col("status").is_in(NOT_DONE).fill_null(False)
    )
    days = (pl.lit(now, dtype=TS) - pl.col("occurred_at").min()).dt.total_days().cast(pl.Float64)
    return covering.group_by("patient_id").agg(days.alias("_attr_registered_days"))


def attributes(persons: pl.DataFrame, now: datetime, facts: pl.DataFrame | None = None) -> pl.LazyFrame:
    """One row per person: ``patient_id``, ``_now``, ``_birth`` and ``_attr_*``; ``registered_days`` is read
    from ``facts`` when given (else unknown)."""
    b = pl.col("birth_date")
    today = now.astimezone(UTC).date()
    before_birthday = (b.dt.month() > today.month) | ((b.dt.month() == today.month) & (b.dt.day() > today.day))
    age = (pl.lit(today.year) - b.dt.year().cast(pl.Int32) - before_birthday.cast(pl.Int32)).cast(pl.Float64)
    months = (
        pl.lit(today.year * 12 + today.month - 1)
        - (b.dt.year().cast(pl.Int32) * 12 + b.dt.month().cast(pl.Int32) - 1)
        - (b.dt.day() > today.day).cast(pl.Int32)
    ).cast(pl.Float64)
    decile = pl.col("imd_decile").cast(pl.Float64)
    frame = persons.lazy().select(
        "patient_id",
        pl.lit(now, dtype=TS).alias(NOW_COL),
        b.alias("_birth"),
        age.alias("_attr_age"),
        (pl.lit(today) - b).dt.total_days().cast(pl.Float64).alias("_attr_age_days"),
        months.alias("_attr_age_months"),
        pl.col("sex").alias("_attr_sex"),
        pl.col("ethnic_group").alias("_attr_ethnic_group"),
        decile.alias("_attr_imd_decile"),
        ((decile + 1) / 2).floor().alias("_attr_imd_quintile"),
        pl.col("setting").alias("_attr_setting"),
        pl.col("site").alias("_attr_site"),
    )
    if facts is None:
        return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("_attr_registered_days"))
    return frame.join(registrations(facts, now), on="patient_id", how="left", maintain_order="left")
