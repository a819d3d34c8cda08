"""FeatureStats.wide (one pivot per aggregate frame): the same columns as widening each statistic on its own.

For the sample studies and states from random streams of their test cases, every ``<feature>:<stat>`` column,
for every person and for random subsets of rows (in any order), equals the column built by the plain route: the
feature's rows of its frame joined to the persons' positions, null where a person has none.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from screener.rules.features import FeatureStats, feature_stats
from tests._support.marks import first_fast
from tests._support.samples import sample_studies
from tests.unit.engine.test_known_screen import _state

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def studies() -> list[Any]:
    return [s for s in sample_studies() if s.is_open(NOW)]  # loaded once per process (tests/_support/samples.py)


def _reference(stats: FeatureStats, rows: pl.Series | None) -> pl.DataFrame:
    n = stats._ids.len()
    pos = pl.Series("_pid", np.arange(n, dtype=np.uint32)) if rows is None else rows.cast(pl.UInt32).alias("_pid")
    out = [stats._ids if rows is None else stats._ids.gather(rows)]
    source: dict[str, pl.Series] = {}
    for frame in stats._frames:
        for fid in frame["_fid"].unique().to_list():
            for stat, name in stats._plan.widen.get(int(fid), ()):
                if stat in frame.columns:
                    mine = frame.filter(pl.col("_fid") == fid).select("_pid", stat)
                    source[name] = pos.to_frame().join(mine, on="_pid", how="left", maintain_order="left")[stat]
    for name in stats.columns:
        dtype = stats._plan.dtypes[name]
        col = source.get(name)
        out.append(pl.Series(name, [None] * pos.len(), dtype=dtype) if col is None else col.cast(dtype).alias(name))
    return pl.DataFrame(out)


@pytest.mark.parametrize("seed", first_fast(1, 5, 23, 42))  # seed 1 in the loop, all four in CI
def test_wide_equals_each_statistic_widened_alone(seed: int, studies: list[Any]) -> None:
    state = _state(seed, studies).to_state()
    stats = feature_stats(state, studies, NOW)
    assert stats._frames and state.persons.height > 1  # statistics to widen: not vacuous
    got = stats.wide()
    assert got.columns == ["patient_id", *stats.columns]
    assert got.equals(_reference(stats, None))
    assert got.select(pl.exclude("patient_id").is_not_null().any()).row(0).count(True) > 10
    rng = random.Random(seed)
    n = state.persons.height
    rows = pl.Series(rng.choices(range(n), k=rng.randint(1, 2 * n)), dtype=pl.UInt32)  # repeats too
    some = set(rng.sample(stats.columns, len(stats.columns) // 3))
    part = stats.wide(some, rows)
    assert part.columns == ["patient_id", *(c for c in stats.columns if c in some)]
    assert part.equals(_reference(stats, rows).select(part.columns))
