"""Control events of a block: do-not-contact consents, deaths and entered-in-error retractions."""

from __future__ import annotations

import numpy as np
import polars as pl

from ._base import DAY, HOUR, MINUTE, YEAR, _Rand
from ._facts import _ago, _People


def _merge(facts: pl.DataFrame, control: pl.DataFrame) -> pl.DataFrame:
    """All of a block's non-person events in stream order (control events sorted in by their ``order`` key)."""
    return (
        pl.concat([facts.with_columns(pl.int_range(pl.len()).cast(pl.Float64).alias("order")), control])
        .sort(["pos", "t", "order"])
        .drop("order")
    )


_EVENT_COLUMNS = (
    "pos",
    "patient_id",
    "event_id",
    "t",
    "kind",
    "system",
    "code",
    "value",
    "unit",
    "status",
    "setting",
    "site",
    "corrects",
    # v2 fields
    "end",
    "ref_low",
    "ref_high",
    "dose_value",
    "dose_unit",
    "route",
    "value_system",
    "value_code",
    "encounter_id",
    "location",
    "qualifier",
)
#: The v2 columns a consent or death event leaves empty.
_V2_NULLS = (
    pl.lit(None, pl.Int64).alias("end"),
    *(pl.lit(None, pl.Float64).alias(c) for c in ("ref_low", "ref_high", "dose_value")),
    *(
        pl.lit(None, pl.String).alias(c)
        for c in ("dose_unit", "route", "value_system", "value_code", "encounter_id", "location", "qualifier")
    ),
)
#: Share of patients on the national data opt-out / local do-not-contact register (a ``consent`` event).
DO_NOT_CONTACT_SHARE = 0.01
#: Share of patients drawn for one lab result later marked entered-in-error (those with no result have none).
CORRECTION_SHARE = 0.015


def _control_events(
    r: _Rand, p: _People, persons: pl.DataFrame, facts: pl.DataFrame, seed: int, now_us: int
) -> pl.DataFrame:
    """Consent (do-not-contact), death and entered-in-error events for a block, with a sort key ``order``.

    - ~1 % opt out: ``consent`` with code ``local/do-not-contact``, status ``active``, within the last 5 years;
    - deaths, by age (0.1 % under 60, 1.5 % at 60-79, 6 % from 80; ~0.6 % overall): a ``death`` event 1-90 days
      after the patient's last record, where they were last seen;
    - 1.5 % are drawn, and those with a result (~1.2 % of all) have one lab result retracted 1 hour to 5 days
      after it was recorded: an ``entered-in-error`` copy of the result whose ``corrects`` names it (event id
      ``<original>-eie``), placed right after it.
    """
    idx, age = p.idx, p.age
    base = persons.select("pos", "patient_id", "setting", "site", "last_t")
    order_ctl = float(2**52)
    # consent
    dnc = np.flatnonzero(r.u(idx, "dnc") < DO_NOT_CONTACT_SHARE)
    dnc_days = r.u(idx[dnc], "dnc.t") * np.minimum(5 * YEAR, np.maximum(age[dnc], 0.1) * YEAR)
    consent = base.join(
        pl.DataFrame({"pos": dnc, "t": _ago(now_us, dnc_days) // 1_000_000 * 1_000_000}), on="pos", how="inner"
    ).with_columns(
        pl.min_horizontal("t", "last_t").alias("t"),  # no opt-out recorded after the last record
        pl.format("syn{}-{}-c1", pl.lit(seed), pl.col("patient_id")).alias("event_id"),
        pl.lit("consent").alias("kind"),
        pl.lit("local").alias("system"),
        pl.lit("do-not-contact").alias("code"),
        pl.lit(None, dtype=pl.Float64).alias("value"),
        pl.lit(None, dtype=pl.String).alias("unit"),
        pl.lit("active").alias("status"),
        pl.lit(None, dtype=pl.String).alias("corrects"),
        pl.lit(order_ctl).alias("order"),
        *_V2_NULLS,
    )
    # death
    p_death = np.select([age < 60, age < 80], [0.001, 0.015], 0.06)
    dead = np.flatnonzero(r.u(idx, "death") < p_death)
    death = base.join(
        pl.DataFrame({"pos": dead, "after": np.round(r.uniform(idx[dead], "death.t", 1, 90) * DAY).astype(np.int64)}),
        on="pos",
        how="inner",
    ).with_columns(
        ((pl.col("last_t") + pl.col("after")).clip(upper_bound=now_us - MINUTE) // 1_000_000 * 1_000_000).alias("t"),
        pl.format("syn{}-{}-d1", pl.lit(seed), pl.col("patient_id")).alias("event_id"),
        pl.lit("death").alias("kind"),
        pl.lit(None, dtype=pl.String).alias("system"),
        pl.lit(None, dtype=pl.String).alias("code"),
        pl.lit(None, dtype=pl.Float64).alias("value"),
        pl.lit(None, dtype=pl.String).alias("unit"),
        pl.lit("active").alias("status"),
        pl.lit(None, dtype=pl.String).alias("corrects"),
        pl.lit(order_ctl + 1).alias("order"),
        *_V2_NULLS,
    )
    # entered-in-error: pick one measurement of the chosen patients
    chosen = np.flatnonzero(r.u(idx, "eie") < CORRECTION_SHARE)
    pick = pl.DataFrame(
        {
            "pos": chosen,
            "pick": r.u(idx[chosen], "eie.which"),
            "delay": np.round(r.uniform(idx[chosen], "eie.delay", 1, 120) * HOUR).astype(np.int64),
        }
    )
    eie = (
        facts.with_columns(pl.int_range(pl.len()).cast(pl.Float64).alias("order"))
        .filter(pl.col("kind") == "measurement")
        .join(pick, on="pos", how="inner")
        .with_columns(pl.int_range(pl.len()).over("pos").alias("_k"), pl.len().over("pos").alias("_n"))
        .filter(pl.col("_k") == (pl.col("pick") * pl.col("_n")).floor().cast(pl.Int64))
        .with_columns(
            ((pl.col("t") + pl.col("delay")).clip(upper_bound=now_us - MINUTE) // 1_000_000 * 1_000_000)
            .clip(lower_bound=pl.col("t"))
            .alias("t"),
            pl.col("event_id").alias("corrects"),
            (pl.col("event_id") + "-eie").alias("event_id"),
            pl.lit("entered-in-error").alias("status"),
            pl.col("order") + 0.5,
        )
    )
    cols = [*_EVENT_COLUMNS, "order"]
    return pl.concat([consent.select(cols), death.select(cols), eie.select(cols)], how="vertical_relaxed")
