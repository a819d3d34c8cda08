"""Studies' common expressions evaluated once (screener.rules._shared): the same rows as every study's own.

The bench's replicated studies (:func:`bench._workload.replicate_studies`: the samples again with other
thresholds) share most leaves and many whole criteria; the sample studies share a few (age, setting). For
random patient sets from the sample test cases, the engine's screen (``evidence="outcomes"``, ``rows="matches"``,
with known pairs) gives the same frame with sharing on and off, equal to the rows of a full ``evidence="all"``
screen (which never shares).
"""

from __future__ import annotations

import random
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bench._workload import replicate_studies
from screener.rules import load_studies, screen
from screener.rules._shared import shared_stages
from screener.rules.criteria import compiled
from tests._support.marks import first_fast
from tests._support.samples import sample_studies
from tests.unit.engine.test_known_screen import _sorted, _state

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
_SCREEN = sys.modules["screener.rules.screen"]
_STATES: dict[int, Any] = {}


@pytest.fixture(scope="module")
def samples() -> list[Any]:
    return [s for s in sample_studies() if s.is_open(NOW)]  # loaded once per process (tests/_support/samples.py)


@pytest.fixture(scope="module")
def replicas() -> list[Any]:
    out = Path(tempfile.mkdtemp()) / "rules"
    replicate_studies(ROOT / "rules", 45, out)
    loaded = load_studies([out])
    assert not loaded.errors
    return [s for s in loaded.studies if s.is_open(NOW)]


def test_replicas_share_expressions(replicas: list[Any]) -> None:
    comps = [compiled(s) for s in replicas]
    lists = [[*c.values, [c.outcome]] for c in comps]
    keep = [c.outcome_col for c in comps]
    on, off = shared_stages(comps, lists, keep), shared_stages(comps, lists, keep, share=False)
    made = sum(len(st) for st in off.stages)
    computed = sum(1 for st in on.stages for e in st if e.meta.output_name() not in on.sources)
    assert off.sources == {} and len(on.sources) > made // 4  # a quarter of the columns are another's
    assert computed + len(on.sources) == made


@pytest.mark.parametrize("seed", first_fast(1, 5, 23))  # seeds 5 and 23 in CI (tests/_support/marks.py)
# each path and each set of studies in the loop, the other two pairs of them in CI (tests/_support/marks.py)
@pytest.mark.parametrize(
    ("which", "path"),
    [
        ("samples", "small"),
        ("replicas", "per-study"),
        pytest.param("samples", "per-study", marks=pytest.mark.slow),
        pytest.param("replicas", "small", marks=pytest.mark.slow),
    ],
)
def test_sharing_gives_the_same_rows(
    seed: int,
    which: str,
    path: str,
    samples: list[Any],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    studies = request.getfixturevalue(which)
    if path == "per-study":
        monkeypatch.setattr(_SCREEN, "_SMALL_CALL", 0)
        monkeypatch.setattr(_SCREEN, "_SMALL_UNION", 0)
    if seed not in _STATES:  # the stream's state, built once per seed (the same for every case of it)
        _STATES[seed] = _state(seed, samples).to_state()
    state = _STATES[seed]
    full = screen(state, studies, NOW, evidence="all", rows="all")
    rng = random.Random(seed)
    pairs = list(full.select("study_id", "patient_id").iter_rows())
    known = pl.DataFrame(rng.sample(pairs, min(len(pairs), 60)), schema=["study_id", "patient_id"], orient="row")
    got = screen(state, studies, NOW, evidence="outcomes", rows="matches", known=known)
    monkeypatch.setattr(_SCREEN, "_SHARE", False)
    want = screen(state, studies, NOW, evidence="outcomes", rows="matches", known=known)
    assert _sorted(got).equals(_sorted(want))
    matched = full.filter(pl.col("outcome") != "ineligible")
    extra = full.join(known, on=["study_id", "patient_id"], how="semi").filter(pl.col("outcome") == "ineligible")
    assert matched.height > 0  # matches to compare: not vacuous
    assert _sorted(got).equals(_sorted(pl.concat([matched, extra])))
