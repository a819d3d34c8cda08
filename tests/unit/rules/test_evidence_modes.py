"""screen(evidence=...): the modes agree on every outcome and criterion result; evidence only where asked.

Also: compiled expressions are cached per study but never bake in the screening instant, and the default mode
keeps patients in ``state.persons`` order within each study.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from connectors.synthetic.population import generate_frames
from screener.rules import load_studies, screen, screen_with_counts
from screener.rules.features import feature_frame, feature_stats
from screener.state import PatientState

RULES = Path(__file__).resolve().parents[3] / "rules"
SCREEN_MODULE = sys.modules[screen.__module__]
MATCH = ("eligible", "possible")


@pytest.fixture(scope="module")
def population():
    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # inside the sample studies' recruitment periods
    persons, facts = generate_frames(400, seed=3, now=now)
    return PatientState(persons, facts), now


@pytest.fixture(scope="module")
def studies():
    loaded = load_studies([RULES])
    assert not loaded.errors
    return loaded.studies


def _by_key(frame: pl.DataFrame) -> dict[tuple[str, str], dict]:
    return {(r["study_id"], r["patient_id"]): r for r in frame.to_dicts()}


KEY = ["study_id", "patient_id"]


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


def _check_modes(state: PatientState, studies, now) -> pl.DataFrame:
    """The four evidence modes give the same outcomes, rule hashes and criterion results for every (study,
    patient); evidence texts are in every row of evidence="all", in the matched rows only of "matches", nowhere in
    "none", and "outcomes" keeps the criteria of the matched rows only. Compared as frames sorted by study and
    patient (one row each), not row by row in Python: that cost most of this file's time."""
    full = screen(state, studies, now)
    matches = screen(state, studies, now, evidence="matches")
    none = screen(state, studies, now, evidence="none")
    outcomes = screen(state, studies, now, evidence="outcomes")
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


@pytest.fixture(params=["per-study", "one-query"])
def call_size(request, monkeypatch):
    """Both ways of building the rows: study by study (large calls) and one query for all studies (small)."""
    monkeypatch.setattr(SCREEN_MODULE, "_SMALL_CALL", 0 if request.param == "per-study" else 10**9)
    return request.param


def test_modes_agree_on_the_sample_studies(population, studies, call_size):
    state, now = population
    full = _check_modes(state, studies, now)
    counts = dict(full.group_by("outcome").len().iter_rows())
    assert counts.get("eligible", 0) + counts.get("possible", 0) > 0  # the comparison covered evidence rows
    assert counts.get("ineligible", 0) > 0


def test_unknown_mode_is_an_error(population, studies):
    state, now = population
    with pytest.raises(ValueError, match="evidence must be one of"):
        screen(state, studies, now, evidence="some")  # type: ignore[arg-type]


def test_default_keeps_person_order_within_each_study(population, studies, call_size):
    state, now = population
    persons = state.persons.sample(fraction=1.0, shuffle=True, seed=1)
    result = screen(PatientState(persons, state.facts), studies, now)
    assert result["study_id"].unique(maintain_order=True).to_list() == [s.id for s in studies]
    for _sid, part in result.group_by("study_id", maintain_order=True):
        assert part["patient_id"].to_list() == persons["patient_id"].to_list()


def test_cached_compilation_does_not_bake_in_now(kit):
    study = kit.make_study({"recent": "stroke|days_since <= 10", "adult": "age >= 66"})
    state = kit.make_state(
        [{"patient_id": "P1", "birth_date": kit.NOW.date().replace(year=1960)}],
        [kit.fact("P1", "ICD10", "I63.9", kit.NOW - timedelta(days=5))],
    )
    for mode in ("all", "matches", "none", "outcomes"):
        early = screen(state, [study], kit.NOW, evidence=mode)
        late = screen(state, [study], kit.NOW + timedelta(days=365 * 2), evidence=mode)
        assert early["outcome"].to_list() == ["eligible"] and late["outcome"].to_list() == ["ineligible"]
        assert [c["result"] for c in early["criteria"][0]] == [True, True]
        if mode != "outcomes":
            assert [c["result"] for c in late["criteria"][0]] == [False, True]  # 735 days since; age 67
    late = screen(state, [study], kit.NOW + timedelta(days=365 * 2))["criteria"][0]
    assert late[0]["evidence"] == "last stroke 735 days ago (I63.9 on 2026-05-27)"


def test_engine_screens_only_the_matches_with_their_evidence(population, studies):
    from screener.engine import _default_screen

    state, now = population
    result = _default_screen(state, studies, now)
    full = screen(state, studies, now)
    assert result.schema == full.schema
    assert _by_key(result) == _by_key(full.filter(pl.col("outcome").is_in(MATCH)))
    assert result.height and result["criteria"].explode().struct.field("evidence").null_count() == 0


def _same_rows(got: pl.DataFrame, want: pl.DataFrame) -> bool:
    """The same rows (the same columns and values, nulls equal) whatever their order; a row is identified by its
    study and patient. Compared as frames: turning thousands of rows with nested criteria into Python dicts cost
    most of this file's time."""
    key = ["study_id", "patient_id"]
    return got.sort(key).equals(want.sort(key))


def _check_rows_matches(state: PatientState, studies, now) -> None:
    """rows="matches" returns exactly the eligible/possible rows of rows="all", in every evidence mode."""
    expected = screen(state, studies, now).filter(pl.col("outcome").is_in(MATCH))
    for mode in ("all", "matches", "none", "outcomes"):
        full = screen(state, studies, now, evidence=mode)
        got = screen(state, studies, now, evidence=mode, rows="matches")
        assert got.schema == full.schema, mode
        assert got.height == expected.height, mode
        want = expected if mode == "all" else full.filter(pl.col("outcome").is_in(MATCH))
        assert _same_rows(got, want), mode
        frame, counts = screen_with_counts(state, studies, now, evidence=mode, rows="matches")
        assert _same_rows(frame, want), mode
        every = full.group_by("study_id", "outcome").len()
        tally = {(sid, o): n for sid, o, n in every.iter_rows()}
        assert counts["study_id"].to_list() == [s.id for s in studies]
        for row in counts.to_dicts():
            for o in ("eligible", "possible", "ineligible"):
                assert row[o] == tally.get((row["study_id"], o), 0), (mode, row)
            assert row["eligible"] + row["possible"] + row["ineligible"] == state.persons.height
        frame_all, counts_all = screen_with_counts(state, studies, now, evidence=mode, rows="all")
        assert _same_rows(frame_all, full) and counts_all.equals(counts), mode


def test_rows_matches_are_the_matched_rows_of_all(population, studies, call_size):
    state, now = population
    _check_rows_matches(state, studies, now)


@pytest.mark.parametrize("check", [_check_modes, _check_rows_matches], ids=["modes", "rows_matches"])
def test_evidence_built_study_by_study_agrees(population, studies, monkeypatch, check):
    # Many matched rows take the per-study path of evidence="matches"; force it on this small population too.
    monkeypatch.setattr(SCREEN_MODULE, "_SMALL_UNION", 0)
    monkeypatch.setattr(SCREEN_MODULE, "_SMALL_CALL", 0)
    state, now = population
    check(state, studies, now)


def test_one_patient_and_no_patient(population, studies, call_size):
    state, now = population
    one = state.select_patients(state.persons["patient_id"][:1])
    _check_modes(one, studies, now)
    _check_rows_matches(one, studies, now)
    empty = state.select_patients([])
    for mode in ("all", "matches", "none", "outcomes"):
        assert screen(empty, studies, now, evidence=mode).height == 0
        got = screen(empty, studies, now, evidence=mode, rows="matches")
        assert got.height == 0 and got.schema == screen(empty, studies, now).schema
    # Counts come from every patient, not from the returned rows.
    frame, counts = screen_with_counts(state, studies[:1], now)
    eligible, possible = (frame.filter(pl.col("outcome") == o).height for o in ("eligible", "possible"))
    assert counts.rows() == [(studies[0].id, eligible, possible, state.persons.height - frame.height)]


def test_unknown_rows_mode_is_an_error(population, studies):
    state, now = population
    with pytest.raises(ValueError, match="rows must be one of"):
        screen(state, studies, now, rows="some")  # type: ignore[arg-type]


def test_constant_criteria_and_facts_for_one_patient_of_three(kit, call_size):
    # Constant criteria fold to literals; a join leaves broadcast columns: both must size to every patient.
    study = kit.make_study({"c0": "dx|ever", "k": "true && !false"}, {"x0": "(0 < glucose|latest)", "z": "false"})
    state = kit.make_state(
        [{"patient_id": f"P{i}", "setting": "hospital"} for i in range(3)],
        [kit.fact("P2", "ICD10", "E11", kit.NOW - timedelta(minutes=30), None, "mmol/L")],
    )
    full = _check_modes(state, [study], kit.NOW)
    _check_rows_matches(state, [study], kit.NOW)
    assert dict(full.select("patient_id", "outcome").iter_rows()) == {
        "P0": "ineligible",
        "P1": "ineligible",
        "P2": "possible",
    }


def test_feature_frame_has_one_row_per_person_in_order(population, studies):
    """feature_frame scatters each (patient, feature) statistic to the patient's row: one row per person, in
    ``state.persons`` order, and a patient's statistics do not depend on where the patient sits."""
    state, now = population
    wide = feature_frame(state, studies, now)
    assert wide["patient_id"].equals(state.persons["patient_id"])
    assert wide.width > 20 and wide.select(pl.any_horizontal(pl.exclude("patient_id").is_not_null())).sum().item() > 100
    flipped = PatientState(state.persons.reverse(), state.facts.reverse())
    assert feature_frame(flipped, studies, now).reverse().equals(wide)
    half = state.persons.height // 2
    tail = state.select_patients(state.persons["patient_id"][half:])
    assert feature_frame(tail, studies, now).equals(wide.slice(half))


def test_feature_stats_widen_some_columns_for_some_rows(population, studies):
    """FeatureStats.wide(columns, rows) is exactly those columns of those rows of the full wide frame (the
    evidence of matched rows is widened this way), in the order the rows are given."""
    state, now = population
    stats = feature_stats(state, studies, now)
    wide = stats.wide()
    assert wide.equals(feature_frame(state, studies, now))
    some = set(stats.columns[1::3])
    rows = pl.Series([5, 0, 3, 3, state.persons.height - 1], dtype=pl.UInt32)
    part = stats.wide(some, rows)
    assert part.columns == ["patient_id", *(c for c in stats.columns if c in some)]
    assert part.equals(wide.select(part.columns)[rows])
    assert stats.wide(set(), pl.Series([], dtype=pl.UInt32)).columns == ["patient_id"]
