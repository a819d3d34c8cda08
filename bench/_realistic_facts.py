"""Fact blocks of the realistic population, vectorised: every function draws all rows of one record type for
a chunk of patients with numpy and adds them as one block (no Python loop over patients or facts).

A block is a dict of columns: numpy arrays (patient index, times as microseconds before ``now``, values) and
string columns given as ``(labels, indices)`` so that Polars builds them by one gather. :meth:`Blocks.frame`
concatenates the blocks into :data:`screener.state.FACTS_SCHEMA`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from bench._realistic_codes import QUALIFIERS, Lab

__all__ = ["DAY_US", "Blocks", "Chunk"]

DAY_US = 86_400_000_000
YEAR_DAYS = 365.25


class Chunk:
    """The patients of one chunk: ``n`` of them, their ages (years, float), activity and theme membership."""

    def __init__(self, rng: np.random.Generator, n: int, age: np.ndarray, activity: np.ndarray) -> None:
        self.rng, self.n, self.age, self.activity = rng, n, age, activity
        self.members: dict[str, np.ndarray] = {}  # theme -> bool per patient
        self.hospital = np.zeros(n, dtype=bool)  # the person's current setting is hospital

    def offsets(self, idx: np.ndarray, recent_days: float, span_years: float, recent_share: float) -> np.ndarray:
        """Days before now for facts of patients ``idx``: a mixture of recent care (exponential with mean
        ``recent_days``) and history (uniform over ``span_years``), never before birth."""
        rng = self.rng
        k = len(idx)
        recent = rng.exponential(recent_days, k)
        history = rng.uniform(0, span_years * YEAR_DAYS, k)
        days = np.where(rng.random(k) < recent_share, recent, history)
        out: np.ndarray = np.minimum(days, np.maximum(self.age[idx] * YEAR_DAYS - 1, 0.0))
        return out

    def counts(self, who: np.ndarray, mean: float) -> tuple[np.ndarray, np.ndarray]:
        """``(patient index per fact, position of the fact among the patient's)`` for a Poisson number of facts
        with mean ``mean x activity`` for each patient index in ``who``."""
        lam = mean * self.activity[who]
        n = self.rng.poisson(lam)
        idx = np.repeat(who, n)
        starts = np.repeat(np.cumsum(n) - n, n)
        return idx, np.arange(len(idx)) - starts


class Blocks:
    """The fact rows of one chunk, block by block."""

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.blocks: list[dict[str, np.ndarray]] = []
        self.labels: dict[str, dict[str, int]] = {}  # string column -> label -> id (-1 = null)

    def _ids(self, column: str, labels: Sequence[str | None], idx: np.ndarray | int, k: int) -> np.ndarray:
        table = self.labels.setdefault(column, {})
        lut = np.array([-1 if lab is None else table.setdefault(lab, len(table)) for lab in labels], dtype=np.int32)
        out: np.ndarray = lut[np.full(k, idx, dtype=np.int32) if isinstance(idx, int) else idx]
        return out

    def add(
        self,
        idx: np.ndarray,
        days: np.ndarray,
        kind: str,
        system: Sequence[str] | str,
        code: Sequence[str],
        code_idx: np.ndarray | int = 0,
        **cols: Any,
    ) -> None:
        """Add ``len(idx)`` facts of ``kind`` at ``days`` before now. ``code_idx`` picks from ``code``, which
        pairs with ``system`` (one system, or one per code when ``system`` is a sequence indexed like ``code``).
        Other columns: float arrays (NaN = null), a string scalar, or ``(labels, indices)`` for strings;
        ``_end`` is the period's length in days (NaN = open), ``_adm`` marks facts of the current admission."""
        k = len(idx)
        if k == 0:
            return
        systems = [system] * len(code) if isinstance(system, str) else list(system)
        block: dict[str, np.ndarray] = {
            "_p": idx.astype(np.int64),
            "_ago": np.round(days * DAY_US).astype(np.int64),
            "kind": self._ids("kind", [kind], 0, k),
            "system": self._ids("system", systems, code_idx, k),
            "code": self._ids("code", list(code), code_idx, k),
        }
        for name, v in cols.items():
            if isinstance(v, tuple):
                block[name] = self._ids(name, v[0], v[1], k)
            elif isinstance(v, str):
                block[name] = self._ids(name, [v], 0, k)
            elif isinstance(v, np.ndarray):
                block[name] = v
            else:
                block[name] = np.full(k, v, dtype=np.float64)
        self.blocks.append(block)

    def frame(self, now_us: int, patient_ids: pl.Series, seed: int, first_row: int) -> pl.DataFrame:
        """Every block as one facts frame (FACTS_SCHEMA), sorted by patient (then by record type); event ids
        ``rw<seed>-<row>`` numbered from ``first_row``. Strings are built at the end, one gather per column."""
        from screener.state import FACTS_SCHEMA

        names = list(dict.fromkeys(c for b in self.blocks for c in b))
        order = np.argsort(np.concatenate([b["_p"] for b in self.blocks]), kind="stable")  # by patient (radix)
        data: dict[str, np.ndarray | pl.Series] = {}
        for name in names:  # contiguous numpy columns, permuted once (a gather on a chunked frame is slow)
            parts = [b[name] if name in b else _missing(name, len(b["_p"])) for b in self.blocks]
            column = np.concatenate(parts)[order]
            table = self.labels.get(name)
            if table is None:
                data[name] = column
            else:  # ids -> labels by one gather (the null id -1 points at a trailing null)
                labels = pl.Series(name, [*table, None], dtype=pl.String)
                data[name] = labels.gather(np.where(column < 0, len(table), column))
        for name in ("_end", "_adm"):
            data.setdefault(name, np.full(len(order), np.nan))
        facts = pl.DataFrame(data)
        ts = pl.Datetime("us", "UTC")
        start = pl.lit(now_us) - pl.col("_ago")
        patient = patient_ids.gather(facts["_p"])
        cols: list[pl.Expr | pl.Series] = [
            patient.alias("patient_id"),
            pl.format("rw{}-{}", pl.lit(seed), pl.int_range(first_row, first_row + facts.height)).alias("event_id"),
            start.cast(ts).alias("occurred_at"),
            (start + (pl.col("_end").fill_nan(None) * DAY_US).cast(pl.Int64)).cast(ts).alias("ended_at"),
            pl.when(pl.col("_adm").fill_nan(0) == 1).then(pl.lit("adm-") + patient).alias("encounter_id"),
        ]
        numeric = [c for c in ("value", "ref_low", "ref_high", "dose_value") if c in facts.columns]
        cols += [pl.col(c).fill_nan(None) for c in numeric]
        facts = facts.with_columns(cols)
        if "qualifiers" in facts.columns:
            q = pl.col("qualifiers")
            facts = facts.with_columns(pl.when(q.is_not_null()).then(pl.concat_list(q)).alias("qualifiers"))
        missing = [pl.lit(None, dtype=t).alias(c) for c, t in FACTS_SCHEMA.items() if c not in facts.columns]
        facts = facts.with_columns(missing)
        return facts.select([pl.col(c).cast(t) for c, t in FACTS_SCHEMA.items()])

    # ------------------------------------------------------------------ record types shared by many themes

    def labs(self, lab: Lab, who: np.ndarray, per_year: float, years: float, healthy: bool, setting: Any) -> None:
        """Results of ``lab`` for patients ``who``: a patient baseline (theme values, or the reference range's
        middle when ``healthy``), a slow trend, within-patient noise; reference ranges on 90 %."""
        c = self.chunk
        rng = c.rng
        idx, _pos = c.counts(who, per_year * years)
        if len(idx) == 0:
            return
        days = c.offsets(idx, 240, years, 0.55)
        mean = _healthy_mean(lab) if healthy else lab.mean
        base = mean + lab.sd_between * rng.standard_normal(c.n)
        slope = (lab.sd_between * 0.15) * rng.standard_normal(c.n)  # per year, into the past
        v = base[idx] + slope[idx] * (days / YEAR_DAYS) + lab.sd_within * rng.standard_normal(len(idx))
        v = np.exp(v) if lab.log else np.maximum(v, 0.0)
        lo, hi = lab.ref
        has_ref = rng.random(len(idx)) < 0.9
        ref_low = np.where(has_ref, np.nan if lo is None else lo, np.nan)
        ref_high = np.where(has_ref, np.nan if hi is None else hi, np.nan)
        code_i = rng.integers(0, len(lab.loinc), len(idx))
        codes = list(lab.loinc)
        units = [lab.unit] * len(codes)
        if lab.alt is not None:
            alt_code, alt_unit, a, b, share = lab.alt
            alt = rng.random(len(idx)) < share
            codes.append(alt_code)
            units.append(alt_unit)
            code_i = np.where(alt, len(codes) - 1, code_i)
            v = np.where(alt, a * v + b, v)
            ref_low, ref_high = np.where(alt, a * ref_low + b, ref_low), np.where(alt, a * ref_high + b, ref_high)
        decimals = lab.decimals + (1 if lab.alt is not None else 0)
        self.add(
            idx,
            days,
            "measurement",
            lab.system,
            codes,
            code_i,
            value=np.round(v, decimals),
            unit=(units, code_i),
            ref_low=ref_low,
            ref_high=ref_high,
            status="active",
            setting=setting(idx),
        )

    def qualifiers(self, k: int, share: float) -> tuple[list[str | None], np.ndarray]:
        """A severity qualifier (``SNOMED|...``) on ``share`` of ``k`` facts, else none (the qualifiers column)."""
        rng = self.chunk.rng
        pick = np.where(rng.random(k) < share, rng.integers(0, 3, k), 3)
        return [*(f"SNOMED|{code}" for code in QUALIFIERS.values()), None], pick


def _missing(name: str, k: int) -> np.ndarray:
    """The fill of a column a block does not have: null string id, NaN number, or not in an admission."""
    if name in _FLOAT_COLUMNS:
        return np.full(k, np.nan)
    return np.full(k, -1, dtype=np.int32)


_FLOAT_COLUMNS = frozenset(["value", "ref_low", "ref_high", "dose_value", "_end", "_adm"])


def _healthy_mean(lab: Lab) -> float:
    """A baseline for patients outside the lab's theme: inside the reference range."""
    lo, hi = lab.ref
    if lab.log:
        return float(np.log(hi / 3)) if hi else lab.mean - lab.sd_between
    if lo is not None and hi is not None:
        return (lo + hi) / 2
    if lo is not None:
        return lo * 1.02
    if hi is not None:
        return hi * 0.85
    return lab.mean - lab.sd_between
