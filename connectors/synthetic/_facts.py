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


@dataclass
class _Facts:
    registry: dict[Code, int] = field(default_factory=dict)
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(
        self,
        pos: np.ndarray,
        t: np.ndarray,
        kind: str,
        codes: Sequence[Code] | Code,
        which: np.ndarray | None = None,
        value: np.ndarray | None = None,
        setting: str | None = None,
        keep: np.ndarray | None = None,
    ) -> None:
        """Add facts for block positions ``pos`` at times ``t`` (us). ``which`` picks among ``codes``."""
        options: list[Code] = [codes] if isinstance(codes[0], str) else list(codes)  # type: ignore[list-item, arg-type]
        ids = np.array([self.registry.setdefault(c, len(self.registry)) for c in options], dtype=np.int32)
        n = len(pos)
        code_id = ids[which] if which is not None else np.full(n, ids[0], dtype=np.int32)
        vals = np.asarray(value, dtype=np.float64) if value is not None else np.full(n, np.nan)
        part = {
            "pos": np.asarray(pos, dtype=np.int64),
            "t": np.asarray(t, dtype=np.int64),
            "code_id": code_id,
            "value": vals,
            "kind": np.full(n, _KINDS.index(kind), dtype=np.int8),
            "setting": np.full(n, -1 if setting is None else _SETTINGS.index(setting), dtype=np.int8),
        }
        if keep is not None:
            part = {k: v[keep] for k, v in part.items()}
        self.parts.append(part)

    def frame(self) -> pl.DataFrame:
        cols = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        df = pl.DataFrame(cols)
        reg = pl.DataFrame(
            {
                "code_id": np.arange(len(self.registry), dtype=np.int32),
                "system": [c[0] for c in self.registry],
                "code": [c[1] for c in self.registry],
                "unit": [c[2] for c in self.registry],
            },
            schema={"code_id": pl.Int32, "system": pl.String, "code": pl.String, "unit": pl.String},
        )
        return df.join(reg, on="code_id", how="left").with_columns(
            pl.col("value").fill_nan(None),
            pl.col("kind").replace_strict(list(range(len(_KINDS))), list(_KINDS), return_dtype=pl.String),
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
    f.add(pos[rows], _ago(now_us, days), "drug", codes, which[rows])


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
