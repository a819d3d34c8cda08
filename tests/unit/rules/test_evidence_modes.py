"""screen(evidence=...): the modes agree on every outcome and criterion result; evidence only where asked.

Also: compiled expressions are cached per study but never bake in the screening instant, and the default mode
keeps patients in ``state.persons`` order within each study. The checks are in tests/_support/evidence.py; the
evidence built study by study on the whole population is checked in tests/integration/rules/
test_evidence_population.py (here on three patients).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from connectors.synthetic.population import generate_frames
from screener.rules import loads_study, screen, screen_with_counts
from screener.rules.features import feature_frame, feature_stats
from screener.state import PatientState
from tests._support.evidence import MATCH, SCREEN_MODULE, Screens, check_modes, check_rows_matches
from tests._support.marks import first_fast
from tests._support.samples import sample_studies


@pytest.fixture(scope="module")
def population():
    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # inside the sample studies' recruitment periods
    persons, facts = generate_frames(400, seed=3, now=now)
    return PatientState(persons, facts), now


@pytest.fixture(scope="module")
def studies():
    return list(sample_studies())


def _by_key(frame: pl.DataFrame) -> dict[tuple[str, str], dict]:
    return {(r["study_id"], r["patient_id"]): r for r in frame.to_dicts()}


@pytest.fixture(scope="module")
def screens() -> Screens:
    """The population's screens, each run once for the checks of this module that ask for it again."""
    return Screens()


@pytest.fixture(params=first_fast("per-study", "one-query"))
def call_size(request, monkeypatch):
    """Both ways of building the rows: study by study (large calls) and one query for all studies (small). The
    loop runs the first (the one-query path of small calls runs there in tests/unit/engine/test_known_screen.py
    and test_shared_stages.py), CI both (tests/_support/marks.py)."""
    monkeypatch.setattr(SCREEN_MODULE, "_SMALL_CALL", 0 if request.param == "per-study" else 10**9)
    return request.param


def test_modes_agree_on_the_sample_studies(population, studies, screens, call_size):
    state, now = population
    full = check_modes(screens, state, studies, now)
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


def test_engine_screens_only_the_matches_with_their_evidence(population, studies, screens):
    from screener.engine import _default_screen

    state, now = population
    result = _default_screen(state, studies, now)
    full = screens.screen(state, studies, now)
    assert result.schema == full.schema
    assert _by_key(result) == _by_key(full.filter(pl.col("outcome").is_in(MATCH)))
    assert result.height and result["criteria"].explode().struct.field("evidence").null_count() == 0


def test_rows_matches_are_the_matched_rows_of_all(population, studies, screens, call_size):
    state, now = population
    check_rows_matches(screens, state, studies, now)


@pytest.mark.parametrize("knobs", [(256, 2000), (0, 0)], ids=["defaults", "study-by-study"])
def test_evidence_built_study_by_study_agrees(kit, monkeypatch, knobs):
    """Matches in different studies for different patients: evidence="matches" builds them study by study when
    the calls and unions are not small (forced here with three patients; on the sample studies and a whole
    population in tests/integration/rules/test_evidence_population.py)."""
    small_call, small_union = knobs
    monkeypatch.setattr(SCREEN_MODULE, "_SMALL_CALL", small_call)
    monkeypatch.setattr(SCREEN_MODULE, "_SMALL_UNION", small_union)
    studies = [
        loads_study(kit.study_text({name: expr}).replace("id: T-1", f"id: T-{name.upper()}"), f"{name}.yaml")
        for name, expr in (("dx", "dx|ever"), ("drug", "drug|ever"), ("stroke", "stroke|ever"))
    ]
    ago = kit.NOW - timedelta(days=3)
    state = kit.make_state(
        [{"patient_id": f"P{i}"} for i in range(4)],
        [
            kit.fact("P0", "ICD10", "E11.9", ago),
            kit.fact("P1", "ATC", "A10BA02", ago),
            kit.fact("P2", "ICD10", "I63.9", ago),
        ],
    )
    run = Screens()
    full = check_modes(run, state, studies, kit.NOW)
    check_rows_matches(run, state, studies, kit.NOW)
    matched = full.filter(pl.col("outcome").is_in(MATCH)).sort("patient_id")
    assert matched.select("patient_id", "study_id").rows() == [("P0", "T-DX"), ("P1", "T-DRUG"), ("P2", "T-STROKE")]


def test_one_patient_and_no_patient(population, studies, call_size):
    state, now = population
    one, run = state.select_patients(state.persons["patient_id"][:1]), Screens()
    check_modes(run, one, studies, now)
    check_rows_matches(run, one, studies, now)
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
    run = Screens()
    full = check_modes(run, state, [study], kit.NOW)
    check_rows_matches(run, state, [study], kit.NOW)
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
