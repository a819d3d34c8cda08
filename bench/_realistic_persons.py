"""The persons of the realistic population (:mod:`bench._realistic_population`), vectorised: ages from a
hospital caseload pyramid (0-99, older-weighted), sex, ONS ethnic group and NHS category (1 % not stated), IMD
decile (skewed deprived), LSOA, postcode district, setting (hospital 45 %, community 25 %, primary care 27 %,
home 3 %; 2 % unknown) and its site, ~1 % do-not-contact, ~0.5 % deceased, 0.3 % without a birth date."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import polars as pl

from bench._realistic_facts import YEAR_DAYS

__all__ = ["SETTINGS", "persons"]

SETTINGS = ("hospital", "community", "primary-care", "home")
_ETHNIC = (("white", "A"), ("asian", "J"), ("asian", "H"), ("black", "N"), ("mixed", "E"), ("other", "S"))
_ETHNIC_P = (0.78, 0.08, 0.05, 0.04, 0.03, 0.02)


def persons(rng: np.random.Generator, n: int, first: int, now: datetime) -> tuple[pl.DataFrame, np.ndarray]:
    """``n`` persons numbered from ``first`` (``RW`` + 9 digits) in PERSONS_SCHEMA, and their ages in years."""
    ages = np.arange(100)
    w = np.interp(ages, [0, 18, 30, 50, 70, 85, 99], [0.8, 0.8, 0.9, 1.3, 1.6, 1.1, 0.05])
    age = rng.choice(ages, n, p=w / w.sum()) + rng.random(n)
    birth = (np.datetime64(now.date()) - np.round(age * YEAR_DAYS).astype("timedelta64[D]")).astype("datetime64[D]")
    eth = rng.choice(len(_ETHNIC), n, p=_ETHNIC_P)
    setting = rng.choice(4, n, p=(0.45, 0.25, 0.27, 0.03))
    imd = rng.choice(10, n, p=np.linspace(1.8, 0.4, 10) / np.linspace(1.8, 0.4, 10).sum()) + 1
    frame = pl.DataFrame(
        {
            "_i": np.arange(first, first + n),
            "birth_date": birth,
            "_sex": rng.choice(3, n, p=(0.509, 0.489, 0.002)),
            "_eth": eth,
            "_lsoa": rng.integers(0, 10_000, n),
            "imd_decile": imd,
            "_pc": rng.integers(0, 6, n),
            "_setting": setting,
            "do_not_contact": rng.random(n) < 0.01,
            "deceased": rng.random(n) < 0.005,
            "_no_eth": rng.random(n) < 0.01,
            "_no_setting": rng.random(n) < 0.02,
            "_no_birth": rng.random(n) < 0.003,
        }
    )
    persons = frame.with_columns(
        pl.format("RW{}", pl.col("_i").cast(pl.String).str.zfill(9)).alias("patient_id"),
        pl.when(pl.col("_no_birth")).then(None).otherwise(pl.col("birth_date")).cast(pl.Date).alias("birth_date"),
        _pick(("F", "M", "U"), "_sex").alias("sex"),
        pl.when(pl.col("_no_eth")).then(None).otherwise(_pick([g for g, _ in _ETHNIC], "_eth")).alias("ethnic_group"),
        pl.when(pl.col("_no_eth"))
        .then(pl.lit("Z"))
        .otherwise(_pick([c for _, c in _ETHNIC], "_eth"))
        .alias("ethnic_category"),
        pl.format("E0101{}", pl.col("_lsoa").cast(pl.String).str.zfill(4)).alias("lsoa"),
        _pick(("LS1", "LS6", "BD8", "HD1", "WF13", "BD21"), "_pc").alias("postcode_district"),
        pl.when(pl.col("_no_setting")).then(None).otherwise(_pick(SETTINGS, "_setting")).alias("setting"),
        _pick(("RXX01", "COMM-RXX-01", "GP-B87003", "HOME-RXX-VW"), "_setting").alias("site"),
        pl.lit(None, dtype=pl.String).alias("location"),
        pl.lit(now).alias("updated_at"),
    )
    from screener.state import PERSONS_SCHEMA

    return persons.select([pl.col(c).cast(t) for c, t in PERSONS_SCHEMA.items()]), age


def _pick(labels: Sequence[str], col: str) -> pl.Expr:
    """The label at each row's index in column ``col``."""
    return pl.col(col).replace_strict(dict(enumerate(labels)), return_dtype=pl.String)
