"""The fact accumulator of a block (numpy parts -> one Polars frame) and the helpers that add facts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ._base import (
    _AGE_BANDS,
    _CATEGORIES,
    _COMMUNITY_SITES,
    _DISTRICTS,
    _GP_SITES,
    _GROUPS,
    _HOSPITAL_SITES,
    _IMD_MINORITY,
    _IMD_WHITE,
    _KINDS,
    _NOT_STATED,
    _SETTINGS,
    CENSUS_ETHNIC_MIX,
    DAY,
    Code,
    _Rand,
)

#: Status of a fact (index into this tuple in the parts).
STATUS = ("active", "resolved", "planned", "ordered", "completed", "stopped")
NO_END = np.iinfo(np.int64).min
#: Wards and clinics of the hospital visits (``location``).
WARDS = ("AMU", "WARD-4", "WARD-9", "WARD-12", "CARDIO-OPD", "DIAB-OPD", "RESP-OPD", "ED", "STROKE-UNIT")
#: Setting code for a fact that carries none (a planned procedure: it does not move the patient).
NO_SETTING = -2
#: The laboratory's own reference range per (system, code, unit), as most lab feeds send it.
REF_RANGES: dict[tuple[str, str, str | None], tuple[float | None, float | None]] = {
    ("LOINC", "59261-8", "mmol/mol"): (20.0, 41.0),
    ("LOINC", "4548-4", "%"): (4.0, 5.9),
    ("LOINC", "62238-1", "mL/min/1.73m2"): (90.0, None),
    ("LOINC", "33914-3", "mL/min/1.73m2"): (90.0, None),
    ("LOINC", "98979-8", "mL/min/1.73m2"): (90.0, None),
    ("LOINC", "14682-9", "umol/L"): (45.0, 110.0),
    ("LOINC", "2160-0", "mg/dL"): (0.5, 1.2),
    ("LOINC", "14958-3", "mg/mmol"): (None, 3.0),
    ("LOINC", "718-7", "g/L"): (115.0, 165.0),
    ("LOINC", "2951-2", "mmol/L"): (133.0, 146.0),
    ("LOINC", "2823-3", "mmol/L"): (3.5, 5.3),
    ("LOINC", "1742-6", "U/L"): (7.0, 56.0),
    ("LOINC", "33762-6", "pg/mL"): (None, 125.0),
    ("LOINC", "26449-9", "10*9/L"): (0.0, 0.5),
    ("LOINC", "711-2", "10*9/L"): (0.0, 0.5),
    ("LOINC", "1988-5", "mg/L"): (None, 5.0),
    ("LOINC", "14749-6", "mmol/L"): (3.5, 7.8),
    ("LOINC", "2345-7", "mg/dL"): (70.0, 140.0),
    ("LOINC", "59408-5", "%"): (94.0, 100.0),
    ("LOINC", "2708-6", "%"): (94.0, 100.0),
    ("LOINC", "15067-2", "IU/L"): (1.5, 12.4),
    ("LOINC", "20152-5", "%"): (80.0, None),
}
#: Dose per administration and route of the drugs the population is prescribed, by (system, code).
DRUG_DOSES: dict[tuple[str, str], tuple[float, str, str]] = {
    ("ATC", "A10BA02"): (500.0, "mg", "oral"),
    ("ATC", "C09AA05"): (5.0, "mg", "oral"),
    ("ATC", "C09CA01"): (50.0, "mg", "oral"),
    ("ATC", "C09AA02"): (10.0, "mg", "oral"),
    ("ATC", "C09CA06"): (8.0, "mg", "oral"),
    ("ATC", "A10AE04"): (20.0, "[iU]", "subcutaneous"),
    ("ATC", "A10AB05"): (8.0, "[iU]", "subcutaneous"),
    ("ATC", "A10BK01"): (10.0, "mg", "oral"),
    ("ATC", "A10BK03"): (10.0, "mg", "oral"),
    ("ATC", "A10BD15"): (1.0, "tablet", "oral"),
    ("ATC", "R03AC02"): (200.0, "ug", "inhaled"),
    ("ATC", "R03BA02"): (400.0, "ug", "inhaled"),
    ("ATC", "R03AK06"): (1.0, "puff", "inhaled"),
    ("ATC", "R03DX05"): (150.0, "mg", "subcutaneous"),
    ("ATC", "C07AB07"): (2.5, "mg", "oral"),
    ("ATC", "C03CA01"): (40.0, "mg", "oral"),
    ("ATC", "B01AA03"): (3.0, "mg", "oral"),
    ("ATC", "B01AC06"): (75.0, "mg", "oral"),
    ("ATC", "B01AF01"): (20.0, "mg", "oral"),
    ("ATC", "B01AF02"): (5.0, "mg", "oral"),
    ("ATC", "C03CA02"): (1.0, "mg", "oral"),
    ("ATC", "C08CA01"): (5.0, "mg", "oral"),
    ("ATC", "G03CA03"): (1.0, "mg", "oral"),
    ("ATC", "G03FA01"): (1.0, "mg", "oral"),
    ("ATC", "H02AB02"): (4.0, "mg", "oral"),
    ("ATC", "H02AB06"): (30.0, "mg", "oral"),
    ("ATC", "L02AE03"): (3.6, "mg", "subcutaneous"),
    ("ATC", "R03AC03"): (500.0, "ug", "inhaled"),
    ("ATC", "R03BA05"): (250.0, "ug", "inhaled"),
    ("ATC", "R03BA01"): (1000.0, "ug", "inhaled"),
    ("ATC", "R03DC03"): (10.0, "mg", "oral"),
    ("ATC", "C03BA11"): (2.5, "mg", "oral"),
    ("ATC", "L02BG04"): (2.5, "mg", "oral"),
    ("ATC", "L02BA01"): (20.0, "mg", "oral"),
}


@dataclass
class _Facts:
    """Facts of one block as numpy parts. A code option is ``(system, code, unit)`` or, for a coded value,
    ``(system, code, unit, (value system, value code))``; a fifth element is a qualifier key (``SYSTEM|value``)."""

    registry: dict[tuple[Any, ...], int] = field(default_factory=dict)
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(
        self,
        pos: np.ndarray,
        t: np.ndarray,
        kind: str,
        codes: Sequence[Any] | Code,
        which: np.ndarray | None = None,
        value: np.ndarray | None = None,
        setting: str | None = None,
        keep: np.ndarray | None = None,
        *,
        end: np.ndarray | None = None,
        status: str | np.ndarray = "active",
        no_setting: bool = False,
        location: np.ndarray | None = None,
    ) -> None:
        """Add facts for block positions ``pos`` at times ``t`` (us). ``which`` picks among ``codes``.

        ``end`` (us, or ``NO_END``) is the period's end; ``status`` a name or indices into ``STATUS``;
        ``no_setting`` leaves the care setting and site empty (a planned procedure does not move the patient);
        ``location`` indexes ``WARDS`` (-1: none).
        """
        # one code (a tuple whose first item is its system) or a sequence of them: the isinstance test on the
        # first item is what tells them apart, which mypy cannot narrow the union by
        options: list[tuple[Any, ...]] = [codes] if isinstance(codes[0], str) else list(codes)  # type: ignore[list-item, arg-type]
        ids = np.array([self.registry.setdefault(tuple(c), len(self.registry)) for c in options], dtype=np.int32)
        n = len(pos)
        code_id = ids[which] if which is not None else np.full(n, ids[0], dtype=np.int32)
        vals = np.asarray(value, dtype=np.float64) if value is not None else np.full(n, np.nan)
        where = NO_SETTING if no_setting else (-1 if setting is None else _SETTINGS.index(setting))
        part = {
            "pos": np.asarray(pos, dtype=np.int64),
            "t": np.asarray(t, dtype=np.int64),
            "code_id": code_id,
            "value": vals,
            "kind": np.full(n, _KINDS.index(kind), dtype=np.int8),
            "setting": np.full(n, where, dtype=np.int8),
            "end": np.asarray(end, dtype=np.int64) if end is not None else np.full(n, NO_END, dtype=np.int64),
            "status": (
                np.full(n, STATUS.index(status), dtype=np.int8)
                if isinstance(status, str)
                else np.asarray(status, dtype=np.int8)
            ),
            "location": (
                np.asarray(location, dtype=np.int8) if location is not None else np.full(n, -1, dtype=np.int8)
            ),
        }
        if keep is not None:
            part = {k: v[keep] for k, v in part.items()}
        self.parts.append(part)

    def frame(self) -> pl.DataFrame:
        """One row per fact: the parts, the code (system, code, unit), its reference range for labs, the dose
        and route for drugs, the coded value when the option has one."""
        cols = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        df = pl.DataFrame(cols)
        keys = list(self.registry)
        ranges = [REF_RANGES.get((c[0], c[1], c[2]), (None, None)) for c in keys]
        doses = [DRUG_DOSES.get((c[0], c[1])) for c in keys]
        reg = pl.DataFrame(
            {
                "code_id": np.arange(len(keys), dtype=np.int32),
                "system": [c[0] for c in keys],
                "code": [c[1] for c in keys],
                "unit": [c[2] for c in keys],
                "ref_low": [r[0] for r in ranges],
                "ref_high": [r[1] for r in ranges],
                "dose_value": [d[0] if d else None for d in doses],
                "dose_unit": [d[1] if d else None for d in doses],
                "route": [d[2] if d else None for d in doses],
                "value_system": [c[3][0] if len(c) > 3 and c[3] else None for c in keys],
                "value_code": [c[3][1] if len(c) > 3 and c[3] else None for c in keys],
                "qualifier": [c[4] if len(c) > 4 else None for c in keys],
            },
            schema={
                "code_id": pl.Int32,
                "system": pl.String,
                "code": pl.String,
                "unit": pl.String,
                "ref_low": pl.Float64,
                "ref_high": pl.Float64,
                "dose_value": pl.Float64,
                "dose_unit": pl.String,
                "route": pl.String,
                "value_system": pl.String,
                "value_code": pl.String,
                "qualifier": pl.String,
            },
        )
        kind = pl.col("kind").replace_strict(list(range(len(_KINDS))), list(_KINDS), return_dtype=pl.String)
        return (
            df.join(reg, on="code_id", how="left")
            .with_columns(
                pl.col("value").fill_nan(None),
                kind,
                pl.when(pl.col("end") != NO_END).then(pl.col("end")).alias("end"),
                pl.col("status").replace_strict(list(range(len(STATUS))), list(STATUS), return_dtype=pl.String),
                _labels(cols["location"], WARDS).alias("location"),
            )
            .with_columns(
                *(pl.when(pl.col("kind") == "measurement").then(pl.col(c)).alias(c) for c in ("ref_low", "ref_high")),
                *(
                    pl.when(pl.col("kind") == "drug").then(pl.col(c)).alias(c)
                    for c in ("dose_value", "dose_unit", "route")
                ),
            )
        )


def _labels(index: np.ndarray, labels: Sequence[str]) -> pl.Series:
    """A String series of ``labels[index]`` (``-1`` gives null), whatever the first element is."""
    table = pl.Series(values=[*labels, None], dtype=pl.String)
    return table.gather(np.where(np.asarray(index) < 0, len(labels), index).astype(np.int64))


def _ago(now_us: int, days: np.ndarray) -> np.ndarray:
    out: np.ndarray = (now_us - np.round(np.asarray(days) * DAY)).astype(np.int64)
    return out


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row index into the counted array, ordinal k within the row) for ``counts[i]`` repeats of each row."""
    rows = np.repeat(np.arange(len(counts)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return rows, np.arange(len(rows)) - starts


# ---------------------------------------------------------------------------------------------------------
# The block generator: patients [start, stop) -> (persons, facts) with extra columns for the person events.


@dataclass
class _People:
    idx: np.ndarray  # global patient index
    age: np.ndarray  # years (float)
    female: np.ndarray
    group: np.ndarray  # index into _GROUPS, -1 = not stated
    imd: np.ndarray
    setting: np.ndarray  # index into _SETTINGS


def _people(r: _Rand, idx: np.ndarray) -> tuple[_People, dict[str, Any]]:
    m = len(idx)
    su = r.u(idx, "sex")
    sex = np.where(su < 0.507, "F", np.where(su < 0.9985, "M", "U"))
    band = r.choice(idx, "age.band", [w for _, _, w in _AGE_BANDS])
    lo = np.array([b[0] for b in _AGE_BANDS])[band]
    width = np.array([b[1] for b in _AGE_BANDS])[band]
    age = lo + width * r.u(idx, "age.within")
    stated = r.u(idx, "eth.stated") >= _NOT_STATED
    group = np.where(stated, r.choice(idx, "eth.group", list(CENSUS_ETHNIC_MIX.values())), -1)
    letter = np.full(m, "Z", dtype=object)
    for g, name in enumerate(_GROUPS):
        letters, weights = _CATEGORIES[name]
        sel = group == g
        letter[sel] = np.array(letters, dtype=object)[r.choice(idx[sel], "eth.category", weights)]
    minority = group >= 1
    imd = np.where(minority, r.choice(idx, "imd.m", _IMD_MINORITY), r.choice(idx, "imd.w", _IMD_WHITE)) + 1
    child = age < 18
    setting = np.where(
        child,
        r.choice(idx, "setting.child", [0.20, 0.45, 0.35, 0.0]),
        r.choice(idx, "setting.adult", [0.45, 0.30, 0.25, 0.0]),
    )
    extra = {
        "sex": sex,
        "letter": letter,
        "lsoa": np.char.add("E0", (1_010_000 + (r.u(idx, "lsoa") * 2_400).astype(np.int64)).astype(str)),
        "district": np.array(_DISTRICTS, dtype=object)[(r.u(idx, "district") * len(_DISTRICTS)).astype(int)],
        "hosp_site": np.array(_HOSPITAL_SITES, dtype=object)[(r.u(idx, "site.h") * 2).astype(int)],
        "comm_site": np.array(_COMMUNITY_SITES, dtype=object)[(r.u(idx, "site.c") * 4).astype(int)],
        "gp_site": np.array(_GP_SITES, dtype=object)[(r.u(idx, "site.g") * len(_GP_SITES)).astype(int)],
    }
    return _People(idx, age, sex == "F", group, imd.astype(np.int64), setting.astype(np.int64)), extra


def _issues(
    f: _Facts,
    r: _Rand,
    p: _People,
    sel: np.ndarray,
    stream: str,
    now_us: int,
    latest_days: np.ndarray,
    codes: Sequence[Code],
    probs: Sequence[float],
    *,
    extra_mean: float = 1.0,
    interval: float = 56.0,
) -> None:
    """Repeat prescriptions: the latest at ``latest_days`` ago, earlier ones every ~``interval`` days."""
    pos = np.flatnonzero(sel)
    idx = p.idx[pos]
    which = r.choice(idx, stream + ".code", probs)
    counts = 1 + r.poisson(idx, stream + ".n", extra_mean)
    rows, k = _expand(counts)
    days = latest_days[pos][rows] + k * interval * (0.8 + 0.4 * r.u(idx[rows], stream + ".gap", k))
    # each issue supplies 28 days: issues ~interval days apart leave gaps between the exposure periods
    start = _ago(now_us, days)
    end = start + 28 * DAY
    status = np.where(end < now_us, STATUS.index("completed"), STATUS.index("active"))
    f.add(pos[rows], start, "drug", codes, which[rows], end=end, status=status)


def _events_at(
    f: _Facts,
    r: _Rand,
    p: _People,
    sel: np.ndarray,
    stream: str,
    now_us: int,
    lam: float | np.ndarray,
    lo_days: float,
    hi_days: float,
    kind: str,
    codes: Sequence[Code],
    probs: Sequence[float] | None = None,
    setting: str | None = None,
) -> np.ndarray:
    """A Poisson number of coded events per selected patient, uniformly in [lo, hi] days ago; the counts."""
    pos = np.flatnonzero(sel)
    idx = p.idx[pos]
    counts = r.poisson(idx, stream + ".n", lam if np.isscalar(lam) else np.asarray(lam)[pos])
    rows, k = _expand(counts)
    days = r.uniform(idx[rows], stream + ".t", lo_days, hi_days, k)
    which = r.choice(idx[rows], stream + ".code", probs, k) if probs is not None else None
    f.add(pos[rows], _ago(now_us, days), kind, codes, which, setting=setting)
    out = np.zeros(len(sel), dtype=np.int64)
    out[pos] = counts
    return out
