"""The synthetic population exercises the canonical event v2 at realistic rates (issue 13, item 2)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from connectors.fhir.parse import parse_payload
from connectors.synthetic.population import generate, generate_frames, to_fhir

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    return generate_frames(4_000, seed=0, now=NOW)


def share(frame: pl.DataFrame, expr: pl.Expr) -> float:
    return float(frame.select(expr.mean()).item())


def test_repeat_prescriptions_are_periods_with_gaps(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _persons, facts = frames
    issues = facts.filter(pl.col("kind") == "drug", pl.col("ended_at").is_not_null()).sort(
        "patient_id", "code", "occurred_at"
    )
    assert issues.height > 1_000
    days = (issues["ended_at"] - issues["occurred_at"]).dt.total_days()
    assert (days == 28).all()  # a 28-day supply per issue
    gaps = issues.with_columns(
        (pl.col("occurred_at") - pl.col("ended_at").shift().over("patient_id", "code")).dt.total_days().alias("gap")
    )["gap"].drop_nulls()
    assert share(gaps.to_frame(), pl.col("gap") > 0) > 0.9  # the next issue comes after the supply ran out
    assert set(issues["status"].unique()) == {"active", "completed"}
    assert share(issues, pl.col("dose_value").is_not_null() & pl.col("route").is_not_null()) > 0.95


def test_labs_carry_reference_ranges_and_resolved_episodes_end(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _persons, facts = frames
    labs = facts.filter(pl.col("kind") == "measurement")
    assert share(labs, pl.col("ref_low").is_not_null() | pl.col("ref_high").is_not_null()) > 0.75
    resolved = facts.filter(pl.col("kind") == "condition", pl.col("status") == "resolved")
    assert 0.05 < resolved.height / facts["patient_id"].n_unique() < 0.25
    assert (resolved["ended_at"] > resolved["occurred_at"]).all()


def test_encounters_link_inpatient_facts(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    persons, facts = frames
    visits = facts.filter(pl.col("kind") == "visit")
    assert (visits["encounter_id"] == visits["event_id"]).all()
    linked = facts.filter(pl.col("kind") != "visit", pl.col("encounter_id").is_not_null())
    assert linked.height > 100 and (linked["setting"] == "hospital").all()
    stroke = facts.filter(
        pl.col("code").str.starts_with("I63"), pl.col("occurred_at") > pl.lit(NOW) - pl.duration(days=1)
    )
    admissions = visits.filter(pl.col("event_id").is_in(stroke["encounter_id"].implode()))
    assert stroke.height > 10 and stroke["encounter_id"].is_not_null().all()
    assert admissions["ended_at"].is_null().all() and (admissions["location"] == "STROKE-UNIT").all()  # current
    assert share(persons, pl.col("location").is_not_null()) > 0.5


def test_allergies_immunizations_registrations_planned_and_coded_values(
    frames: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    persons, facts = frames
    n = persons.height
    counts = dict(facts.group_by("kind").len().iter_rows())
    assert counts["registration"] == n  # everyone is registered with a practice
    assert 0.06 < counts["allergy"] / n < 0.16
    assert 0.5 < counts["immunization"] / n < 2.0
    planned = facts.filter(pl.col("status") == "planned")
    assert 0.005 < planned.height / n < 0.03 and (planned["occurred_at"] > NOW).all()
    assert planned["setting"].is_null().all()  # a plan does not move the patient
    smoking = facts.filter(pl.col("code") == "72166-2")
    assert set(smoking["value_code"].unique()) == {"266919005", "8517006", "77176002"}


def test_fhir_rendering_keeps_the_v2_fields() -> None:
    patient = max(
        generate(300, seed=0, now=NOW), key=lambda p: sum(e.encounter_id is not None and e.kind != "visit" for e in p)
    )
    parsed = {e.event_id: e for e in parse_payload(to_fhir(patient, bundle_type="collection"), now=NOW).events}
    linked = [e for e in patient if e.encounter_id is not None and e.kind != "visit"]
    assert linked
    by_code = {(e.kind, e.code, e.occurred_at): e for e in parsed.values()}
    for sent in linked:
        got = by_code[(sent.kind, sent.code, sent.occurred_at)]
        assert got.encounter_id is not None  # points at the rendered Encounter
        assert (got.ref_low, got.ref_high, got.ended_at) == (sent.ref_low, sent.ref_high, sent.ended_at)
