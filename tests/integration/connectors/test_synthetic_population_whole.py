"""The synthetic population as a whole (moved from tests/unit/connectors/test_synthetic_population.py: 20,000
patients as frames, 2,000 streamed as event objects, 5,000 screened): census-like shares, realistic histories and
units, opt-outs, deaths and retractions at their rates and through the connectors, and useful against the sample
studies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from connectors.fhir.parse import parse_payload as parse_fhir
from connectors.hl7v2.parse import parse_message as parse
from connectors.synthetic.population import (
    CENSUS_ETHNIC_MIX,
    generate,
    generate_frames,
    is_valid_nhs_number,
    nhs_check_digit,
    to_fhir,
    to_hl7v2,
)
from screener.events import Event
from screener.rules import load_studies, screen
from screener.state import FACTS_SCHEMA, PERSONS_SCHEMA, PatientState, apply_events

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
RULES = Path(__file__).resolve().parents[3] / "rules"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def population() -> tuple[pl.DataFrame, pl.DataFrame]:
    return generate_frames(20_000, seed=7, now=NOW)


def test_frames_have_the_state_schemas(population: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    persons, facts = population
    assert persons.schema == pl.Schema(PERSONS_SCHEMA)
    assert facts.schema == pl.Schema(FACTS_SCHEMA)
    assert persons["patient_id"].is_unique().all()
    assert facts["event_id"].is_unique().all()
    assert persons["patient_id"].str.contains(r"^RXX\d{9}$").all()
    # everything has happened, except the planned procedures, which are what is still to come
    planned = facts["status"] == "planned"
    assert (facts.filter(~planned)["occurred_at"] < NOW).all()
    assert (facts.filter(planned)["occurred_at"] > NOW).all()
    per_patient = facts.height / persons.height
    # issue 3: realistic counts, with routine history; v2 added a registration, immunizations, smoking status
    assert 20 <= per_patient <= 25
    born = facts.join(persons.select("patient_id", "birth_date"), on="patient_id")
    assert (born["occurred_at"].dt.date() >= born["birth_date"]).all()  # nothing before birth


def test_routine_history_goes_back_years_but_not_into_study_windows(
    population: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    persons, facts = population
    years = (pl.lit(NOW) - pl.col("occurred_at")).dt.total_days() / 365.25
    old = facts.filter(years > 2)
    assert old.height / persons.height > 4  # years of routine visits and blood panels
    adults_with_old_panels = old.filter(pl.col("code") == "718-7")["patient_id"].n_unique()
    assert adults_with_old_panels > 0.4 * persons.height
    # The routine history changes no sample study's outcome: screening without it gives the same answers.
    studies = [s for s in load_studies([RULES]).studies if s.is_open(NOW)]
    routine = pl.col("kind").eq("visit") | pl.col("code").is_in(
        ["718-7", "2951-2", "2823-3", "62238-1", "14682-9", "2160-0", "1742-6"]
    )
    few = persons.head(5_000)
    mine = facts.filter(pl.col("patient_id").is_in(few["patient_id"].implode()))
    without = mine.filter(~(routine & (years > 2)))
    assert without.height < mine.height - 4 * few.height
    full = screen(PatientState(persons=few, facts=mine), studies, NOW).sort("study_id", "patient_id")
    lean = screen(PatientState(persons=few, facts=without), studies, NOW).sort("study_id", "patient_id")
    assert_frame_equal(
        full.select("study_id", "patient_id", "outcome"), lean.select("study_id", "patient_id", "outcome")
    )


def test_ethnic_mix_matches_the_census(population: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    persons, _ = population
    stated = persons.filter(pl.col("ethnic_group").is_not_null())
    assert 0.005 < 1 - stated.height / persons.height < 0.02
    shares = dict(stated.group_by("ethnic_group").len().with_columns(pl.col("len") / stated.height).iter_rows())
    for group, expected in CENSUS_ETHNIC_MIX.items():
        assert shares[group] == pytest.approx(expected, abs=max(0.01, expected * 0.2)), group


def test_about_a_quarter_in_the_most_deprived_decile(population: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    persons, _ = population
    share = (persons["imd_decile"] == 1).mean()
    assert 0.22 <= share <= 0.28
    assert set(persons["imd_decile"].unique().to_list()) == set(range(1, 11))
    minority = persons.filter(pl.col("ethnic_group").is_in(["asian", "black", "mixed"]))
    assert (minority["imd_decile"] == 1).mean() > share  # deprivation is not spread evenly


def test_ages_settings_and_sexes(population: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    persons, _ = population
    age = (NOW.date() - persons["birth_date"]).dt.total_days() / 365.25
    assert age.min() >= 0 and age.max() < 96
    assert 0.15 < (age < 18).mean() < 0.30
    settings = set(persons["setting"].unique().to_list())
    assert {"hospital", "community", "primary-care"} <= settings
    assert (persons["sex"] == "F").mean() == pytest.approx(0.507, abs=0.015)


def test_nhs_numbers_pass_modulus_11(streamed: list[list[Event]]) -> None:
    numbers = [p[0].person.nhs_number for p in streamed]  # type: ignore[union-attr]
    assert all(is_valid_nhs_number(n) for n in numbers)  # type: ignore[arg-type]
    assert all(n.startswith("999") for n in numbers)  # type: ignore[union-attr]
    assert len(set(numbers)) > 0.99 * len(numbers)
    # the check itself: 401 023 2137 is valid; a body whose check would be 10 can never be used
    assert nhs_check_digit("401023213") == 7 and is_valid_nhs_number("4010232137")
    assert not is_valid_nhs_number("4010232138")
    assert nhs_check_digit("100000001") is None


def test_units_vary_as_real_feeds_do(population: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, facts = population
    units = facts.group_by("code", "unit").len()

    def has(code: str, unit: str) -> bool:
        return units.filter((pl.col("code") == code) & (pl.col("unit") == unit)).height == 1

    assert has("4548-4", "%") and has("59261-8", "mmol/mol")
    assert has("2160-0", "mg/dL") and has("14682-9", "umol/L")
    assert has("2345-7", "mg/dL") and has("14749-6", "mmol/L")
    assert has("62238-1", "mL/min")  # unconvertible: the rules leave it out and count it


#: Studies whose every criterion is known from the record (an admission, a test, a diagnosis and allergies:
#: each either there or not), so a patient is "possible" only when the care setting is unknown, which a
#: synthetic patient always has.
ONLY_POSSIBLE_WITHOUT_A_SETTING = {"RECOVERY-FLU-R"}


def test_every_open_sample_study_finds_eligible_possible_and_ineligible_patients() -> None:
    loaded = load_studies([RULES])
    assert not loaded.errors
    open_studies = [s for s in loaded.studies if s.is_open(NOW)]
    assert len(open_studies) >= 5
    persons, facts = generate_frames(5_000, seed=0, now=NOW)
    result = screen(PatientState(persons=persons, facts=facts), open_studies, NOW)
    counts = result.group_by("study_id", "outcome").len()
    for study in open_studies:
        got = dict(counts.filter(pl.col("study_id") == study.id).select("outcome", "len").iter_rows())
        assert got.get("eligible", 0) > 0, study.id
        assert got.get("possible", 0) > 0 or study.id in ONLY_POSSIBLE_WITHOUT_A_SETTING, study.id
        assert got.get("ineligible", 0) > 0, study.id
        # worklist noise: no study marks more than 5 % of the population "possible"
        assert got.get("possible", 0) <= 0.05 * persons.height, study.id


#: Patients streamed as events: enough for about 30 retractions, 20 opt-outs and 13 deaths (the rate checks
#: below), each one built as event objects (the costliest fixture of this file).
STREAMED = 2_000


@pytest.fixture(scope="module")
def streamed() -> list[list[Event]]:
    return list(generate(STREAMED, seed=13, now=NOW))


@pytest.fixture(scope="module")
def streamed_frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    """The frames of the same patients, built by the fast path."""
    return generate_frames(STREAMED, seed=13, now=NOW)


@pytest.fixture(scope="module")
def streamed_state(streamed: list[list[Event]]) -> PatientState:
    """The state built from every streamed event, in one batch."""
    state, _ = apply_events(PatientState(), [e for p in streamed for e in p])
    return state


def test_opt_outs_deaths_and_corrections_at_low_rates(
    population: tuple[pl.DataFrame, pl.DataFrame], streamed: list[list[Event]]
) -> None:
    persons, _ = population
    assert 0.006 < persons["do_not_contact"].mean() < 0.015  # type: ignore[operator]
    assert 0.004 < persons["deceased"].mean() < 0.02  # type: ignore[operator]
    age = (NOW.date() - persons["birth_date"]).dt.total_days() / 365.25
    assert age.filter(persons["deceased"]).mean() > age.mean() + 20  # type: ignore[operator]
    retractions = [e for p in streamed for e in p if e.status == "entered-in-error"]
    assert 0.008 < len(retractions) / len(streamed) < 0.025


def test_control_events_follow_the_event_semantics(streamed: list[list[Event]]) -> None:
    kinds = {"consent": 0, "death": 0, "retraction": 0}
    for patient in streamed:
        by_id = {e.event_id: (i, e) for i, e in enumerate(patient)}
        last_fact = max(
            (
                e.occurred_at
                for e in patient[1:]
                if e.kind not in ("consent", "death") and e.status != "entered-in-error"
            ),
            default=None,
        )
        for i, ev in enumerate(patient):
            if ev.kind == "consent":
                kinds["consent"] += 1
                assert ev.code is not None and (ev.code.system, ev.code.value) == ("local", "do-not-contact")
                assert ev.status == "active" and ev.setting is not None
            elif ev.kind == "death":
                kinds["death"] += 1
                assert ev.code is None and ev.status == "active"
                assert last_fact is not None and ev.occurred_at > last_fact  # nothing recorded after death
            elif ev.status == "entered-in-error":
                kinds["retraction"] += 1
                assert ev.corrects in by_id
                j, original = by_id[ev.corrects]
                assert j < i and original.status == "active" and original.kind == ev.kind == "measurement"
                assert (original.code, original.value, original.unit) == (ev.code, ev.value, ev.unit)
                assert original.occurred_at <= ev.occurred_at < NOW
    assert all(n > 5 for n in kinds.values()), kinds


def test_frames_apply_opt_outs_deaths_and_retractions(
    streamed: list[list[Event]], streamed_frames: tuple[pl.DataFrame, pl.DataFrame], streamed_state: PatientState
) -> None:
    persons, facts = streamed_frames
    flagged = {e.patient_id for p in streamed for e in p if e.kind == "consent"}
    dead = {e.patient_id for p in streamed for e in p if e.kind == "death"}
    assert set(persons.filter("do_not_contact")["patient_id"].to_list()) == flagged
    assert set(persons.filter("deceased")["patient_id"].to_list()) == dead
    retracted = {e.corrects for p in streamed for e in p if e.corrects}
    assert retracted and not retracted & set(facts["event_id"].to_list())
    sent = {e.event_id for p in streamed for e in p if e.kind not in ("person", "consent", "death")}
    assert set(facts["event_id"].to_list()) == sent - retracted - {
        e.event_id for p in streamed for e in p if e.status == "entered-in-error"
    }
    everything = [e for p in streamed for e in p]
    assert_frame_equal(streamed_state.persons.sort("patient_id"), persons.sort("patient_id"))
    assert_frame_equal(streamed_state.facts.sort("event_id"), facts.sort("event_id"))
    # the same in small batches (a retraction often arrives in a later batch than its original)
    chunked = PatientState()
    for lo in range(0, len(everything), 997):
        chunked, _ = apply_events(chunked, everything[lo : lo + 997])
    assert_frame_equal(chunked.persons.sort("patient_id"), persons.sort("patient_id"))
    assert_frame_equal(chunked.facts.sort("event_id"), facts.sort("event_id"))


def test_replaying_events_already_applied_changes_nothing(
    streamed: list[list[Event]], streamed_frames: tuple[pl.DataFrame, pl.DataFrame], streamed_state: PatientState
) -> None:
    """Failing before: a replayed fact's setting/location was applied again (arrival order won), so replaying the
    first half moved a patient back to an older clinic."""
    persons, facts = streamed_frames
    everything = [e for p in streamed for e in p]
    state, _ = apply_events(streamed_state, everything[: len(everything) // 2])
    assert_frame_equal(state.facts.sort("event_id"), facts.sort("event_id"))
    assert_frame_equal(state.persons.sort("patient_id"), persons.sort("patient_id"))


def _with_retraction(streamed: list[list[Event]]) -> tuple[list[Event], Event]:
    patient = next(p for p in streamed if any(e.status == "entered-in-error" for e in p))
    return patient, next(e for e in patient if e.status == "entered-in-error")


def test_a_retraction_survives_hl7v2_as_result_status_w(streamed: list[list[Event]]) -> None:
    patient, retraction = _with_retraction(streamed)
    original = next(e for e in patient if e.event_id == retraction.corrects)
    parsed = [ev for m in to_hl7v2(patient) for ev in parse(m).events]
    state, _ = apply_events(PatientState(), parsed)
    rows = state.facts.filter(
        (pl.col("code") == original.code.value)  # type: ignore[union-attr]
        & (pl.col("occurred_at") == original.occurred_at)
    )
    assert rows.height == 0  # the original result was retracted by the W result
    sent = [e for e in patient if e.kind == "measurement" and e.status == "active" and e.event_id != original.event_id]
    assert state.facts.filter(pl.col("kind") == "measurement").height == len(sent)


def test_a_retraction_survives_fhir_as_entered_in_error(streamed: list[list[Event]]) -> None:
    patient, retraction = _with_retraction(streamed)
    original = next(e for e in patient if e.event_id == retraction.corrects)
    bundle = to_fhir(patient)
    same = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == original.event_id]
    assert [r["status"] for r in same] == ["final", "entered-in-error"]
    state, _ = apply_events(PatientState(), parse_fhir(bundle, now=NOW).events)
    rows = state.facts.filter(
        (pl.col("code") == original.code.value)  # type: ignore[union-attr]
        & (pl.col("occurred_at") == original.occurred_at)
    )
    assert rows.height == 0
