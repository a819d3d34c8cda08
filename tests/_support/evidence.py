"""The agreement checks of ``screen(evidence=..., rows=...)`` (tests/unit/rules/test_evidence_modes.py and, on a
whole population with the per-study paths forced, tests/integration/rules/test_evidence_population.py), and
:class:`Screens`, which runs each distinct screen once for the checks that ask for it again."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl

from screener.rules import screen, screen_with_counts
from screener.state import PatientState

__all__ = ["KEY", "MATCH", "SCREEN_MODULE", "Screens", "check_modes", "check_rows_matches"]

SCREEN_MODULE = sys.modules[screen.__module__]
MATCH = ("eligible", "possible")
KEY = ["study_id", "patient_id"]


class Screens:
    """:func:`screen` and :func:`screen_with_counts`, each distinct call run once: the same function, state and
    study objects, instant and keywords, and the same size thresholds of the screen module (``_SMALL_CALL``,
    ``_SMALL_UNION``, which tests patch to force a path). The state and studies are held, so their ids stay
    theirs. Results are shared: callers must not change them (Polars frames are not changed in place here)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[Any, ...], tuple[PatientState, Sequence[Any], Any]] = {}

    def _run(self, fn: Any, state: PatientState, studies: Sequence[Any], now: datetime, **kw: Any) -> Any:
        knobs = (SCREEN_MODULE._SMALL_CALL, SCREEN_MODULE._SMALL_UNION)
        key = (fn.__name__, id(state), tuple(map(id, studies)), now, tuple(sorted(kw.items())), knobs)
        if key not in self._memo:
            self._memo[key] = (state, list(studies), fn(state, studies, now, **kw))
        return self._memo[key][2]

    def screen(self, state: PatientState, studies: Sequence[Any], now: datetime, **kw: Any) -> pl.DataFrame:
        return self._run(screen, state, studies, now, **kw)

    def with_counts(
        self, state: PatientState, studies: Sequence[Any], now: datetime, **kw: Any
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        return self._run(screen_with_counts, state, studies, now, **kw)


def _differing(got: pl.DataFrame, want: pl.DataFrame, column: str) -> list[tuple[str, str]]:
    """The keys (at most five) of the rows whose ``column`` differs (nulls equal) between two frames of the same
    keys in the same order: empty when the column is the same."""
    differs = ~got[column].eq_missing(want[column])
    return list(want.filter(differs).head(5).select(KEY).iter_rows())


def _skeleton(frame: pl.DataFrame) -> pl.DataFrame:
    """Each row's criteria without their evidence: a list of (name, group, result)."""
    fields = [pl.element().struct.field(f) for f in ("name", "group", "result")]
    return frame.select(*KEY, pl.col("criteria").list.eval(pl.struct(fields)))


def _evidence_is(frame: pl.DataFrame, present: bool) -> pl.Series:
    """Per row: whether every criterion's evidence is there (``present``) or missing (an empty list: true)."""
    evidence = pl.element().struct.field("evidence")
    test = evidence.is_not_null() if present else evidence.is_null()
    return frame.select(pl.col("criteria").list.eval(test).list.all()).to_series()


def check_modes(run: Screens, state: PatientState, studies: Sequence[Any], now: datetime) -> pl.DataFrame:
    """The four evidence modes give the same outcomes, rule hashes and criterion results for every (study,
    patient); evidence texts are in every row of evidence="all", in the matched rows only of "matches", nowhere in
    "none", and "outcomes" keeps the criteria of the matched rows only. Compared as frames sorted by study and
    patient (one row each), not row by row in Python: that cost most of this check's time. Returns the rows of
    evidence="all"."""
    full = run.screen(state, studies, now)
    matches = run.screen(state, studies, now, evidence="matches")
    none = run.screen(state, studies, now, evidence="none")
    outcomes = run.screen(state, studies, now, evidence="outcomes")
    for frame in (matches, none, outcomes):
        assert frame.schema == full.schema
        assert frame.height == full.height == state.persons.height * len(studies)
    a, m, n, o = (frame.sort(KEY) for frame in (full, matches, none, outcomes))
    assert a.select(KEY).is_unique().all()
    assert all(frame["criteria"].null_count() == 0 for frame in (a, m, n))  # a list, maybe empty, in every row
    for other in (m, n, o):
        assert other.select(KEY).equals(a.select(KEY))
    matched = a["outcome"].is_in(MATCH)
    for column in ("outcome", "rule_hash"):
        for other in (m, n, o):
            assert not _differing(other, a, column), (column, _differing(other, a, column))
    only_matched = a.with_columns(pl.when(matched).then(pl.col("criteria")).alias("criteria"))
    assert not _differing(o, only_matched, "criteria"), _differing(o, only_matched, "criteria")
    for other in (m, n):
        assert not _differing(_skeleton(other), _skeleton(a), "criteria"), _differing(
            _skeleton(other), _skeleton(a), "criteria"
        )
    assert _evidence_is(a, present=True).all()
    assert _evidence_is(n, present=False).all()
    assert not _differing(m.filter(matched), a.filter(matched), "criteria")
    assert _evidence_is(m.filter(~matched), present=False).all()
    return full


def _same_rows(got: pl.DataFrame, want: pl.DataFrame) -> bool:
    """The same rows (the same columns and values, nulls equal) whatever their order; a row is identified by its
    study and patient. Compared as frames: turning thousands of rows with nested criteria into Python dicts cost
    most of this check's time."""
    return got.sort(KEY).equals(want.sort(KEY))


def check_rows_matches(run: Screens, state: PatientState, studies: Sequence[Any], now: datetime) -> None:
    """rows="matches" returns exactly the eligible/possible rows of rows="all", in every evidence mode, from
    :func:`screen` and from :func:`screen_with_counts`, whose counts are those of every row."""
    expected = run.screen(state, studies, now).filter(pl.col("outcome").is_in(MATCH))
    for mode in ("all", "matches", "none", "outcomes"):
        full = run.screen(state, studies, now, evidence=mode)
        got = run.screen(state, studies, now, evidence=mode, rows="matches")
        assert got.schema == full.schema, mode
        assert got.height == expected.height, mode
        want = expected if mode == "all" else full.filter(pl.col("outcome").is_in(MATCH))
        assert _same_rows(got, want), mode
        frame, counts = run.with_counts(state, studies, now, evidence=mode, rows="matches")
        assert _same_rows(frame, want), mode
        every = full.group_by("study_id", "outcome").len()
        tally = {(sid, o): n for sid, o, n in every.iter_rows()}
        assert counts["study_id"].to_list() == [s.id for s in studies]
        for row in counts.to_dicts():
            for o in ("eligible", "possible", "ineligible"):
                assert row[o] == tally.get((row["study_id"], o), 0), (mode, row)
            assert row["eligible"] + row["possible"] + row["ineligible"] == state.persons.height
        frame_all, counts_all = run.with_counts(state, studies, now, evidence=mode, rows="all")
        assert _same_rows(frame_all, full) and counts_all.equals(counts), mode
