"""Visits of the population: admissions, clinics and contacts, and the encounter links of hospital facts."""

from __future__ import annotations

import numpy as np
import polars as pl

from ._base import HOUR, _Rand
from ._facts import STATUS, _Facts

__all__ = ["_link_encounters", "_visits"]


def _visits(
    f: _Facts,
    r: _Rand,
    idx: np.ndarray,
    rows: np.ndarray,
    k: np.ndarray,
    t: np.ndarray,
    hospital: np.ndarray,
    now_us: int,
    stream: str,
) -> None:
    """Visits at ``t``: hospital ones are admissions (with a ward) or clinics; others short contacts."""
    gi = idx[rows]
    admitted = hospital & (r.u(gi, stream + ".admit", k) < 0.3)
    hours = np.where(
        admitted,
        r.uniform(gi, stream + ".los", 24, 240, k),
        np.where(hospital, r.uniform(gi, stream + ".clinic", 1, 3, k), r.uniform(gi, stream + ".len", 0.25, 0.5, k)),
    )
    end = t + np.round(hours * HOUR).astype(np.int64)
    status = np.where(end < now_us, STATUS.index("completed"), STATUS.index("active"))
    ward = np.where(
        admitted,
        (r.u(gi, stream + ".ward", k) * 4).astype(np.int64),
        4 + (r.u(gi, stream + ".opd", k) * 3).astype(np.int64),
    )
    code = ("local", "encounter", None)
    f.add(
        rows[hospital],
        t[hospital],
        "visit",
        code,
        setting="hospital",
        end=end[hospital],
        status=status[hospital],
        location=ward[hospital],
    )
    f.add(rows[~hospital], t[~hospital], "visit", code, end=end[~hospital], status=status[~hospital])


def _link_encounters(facts: pl.DataFrame, seed: int) -> pl.DataFrame:
    """``encounter_id``: a visit's own event id; a hospital fact during a hospital visit gets that visit's id.

    ``facts`` is sorted by patient and time and has ``ordinal`` (the event id's number): one as-of join.
    """
    is_visit = pl.col("kind") == "visit"
    visits = facts.filter(is_visit & (pl.col("setting") == "hospital")).select(
        "pos", pl.col("t").alias("_v_t"), pl.col("end").alias("_v_end"), pl.col("ordinal").alias("_v_ord")
    )
    linked = facts.join_asof(
        visits, left_on="t", right_on="_v_t", by="pos", strategy="backward", check_sortedness=False
    )
    during = (
        ~is_visit
        & (pl.col("setting") == "hospital")
        & pl.col("_v_ord").is_not_null()
        & (pl.col("_v_end").is_null() | (pl.col("t") <= pl.col("_v_end")))
    )
    ordinal = pl.when(is_visit).then(pl.col("ordinal")).when(during).then(pl.col("_v_ord"))
    encounter = pl.format("syn{}-{}-f{}", pl.lit(seed), pl.col("patient_id"), ordinal)
    return linked.with_columns(encounter.alias("encounter_id")).drop("_v_t", "_v_end", "_v_ord")
