"""Patient state and the v2 event: new fact columns, persons.location, v1 compatibility, old snapshots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from screener.events import V2_FIELDS, dump_event, parse_event
from screener.history.snapshots import load_snapshot, save_snapshot
from screener.ingest import decode_batch
from screener.rules import load_study, screen
from screener.state import (
    FACTS_SCHEMA,
    PERSONS_SCHEMA,
    PatientState,
    apply_events,
    events_to_frames,
    upgrade_facts,
    upgrade_persons,
)

RULES = Path(__file__).resolve().parents[2] / "rules"
V1_COLUMNS = [
    "patient_id",
    "event_id",
    "kind",
    "system",
    "code",
    "value",
    "text",
    "unit",
    "occurred_at",
    "status",
    "setting",
]
V2_COLUMNS = [c for c in FACTS_SCHEMA if c not in V1_COLUMNS]

FULL_V2: dict[str, Any] = {
    "schema": "screener.event/v2",
    "event_id": "d1",
    "source": "fhir",
    "kind": "drug",
    "patient_id": "P1",
    "occurred_at": "2026-01-01",
    "recorded_at": "2026-01-02T10:00:00Z",
    "code": {"system": "RXNORM", "value": "860975"},
    "value": 2.5,
    "unit": "mg",
    "status": "stopped",
    "setting": "hospital",
    "site": "RX1",
    "qualifiers": [{"system": "SNOMED", "value": "24623002"}, {"system": "READ2", "value": "G30.."}],
    "ended_at": "2026-02-01T08:00:00Z",
    "dose": {"value": 500.0, "unit": "mg"},
    "route": "oral",
    "ref_low": 1.0,
    "ref_high": 3.5,
    "value_code": {"system": "SNOMED", "value": "260373001"},
    "encounter_id": "V-77",
    "location": "Pharmacy",
}
EXPECTED_ROW = {
    "patient_id": "P1",
    "event_id": "d1",
    "kind": "drug",
    "system": "RXNORM",
    "code": "860975",
    "value": 2.5,
    "text": None,
    "unit": "mg",
    "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
    "status": "stopped",
    "setting": "hospital",
    "recorded_at": datetime(2026, 1, 2, 10, tzinfo=UTC),
    "ended_at": datetime(2026, 2, 1, 8, tzinfo=UTC),
    "date_only": True,
    "qualifiers": ["SNOMED|24623002", "READ2|G30.."],
    "dose_value": 500.0,
    "dose_unit": "mg",
    "route": "oral",
    "ref_low": 1.0,
    "ref_high": 3.5,
    "value_system": "SNOMED",
    "value_code": "260373001",
    "encounter_id": "V-77",
    "location": "Pharmacy",
}


def test_every_v2_field_survives_json_event_json_state_and_snapshot(tmp_path: Path) -> None:
    event = parse_event(parse_event(json.dumps(FULL_V2)).model_dump_json(by_alias=True, exclude_none=True))
    assert json.loads(dump_event(event)) == FULL_V2
    state, _ = apply_events(PatientState(), [event])
    assert list(state.facts.columns) == list(FACTS_SCHEMA)
    assert state.facts.row(0, named=True) == EXPECTED_ROW
    save_snapshot(state, tmp_path, offset=1)
    restored = load_snapshot(tmp_path)
    assert restored is not None
    assert restored[0].facts.row(0, named=True) == EXPECTED_ROW
    assert_frame_equal(restored[0].persons, state.persons)
    # The fast decode path builds the same row from the same bytes.
    decoded = decode_batch([dump_event(event)])
    assert decoded.slow == 0
    assert decoded.facts.drop("seq").row(0, named=True) == EXPECTED_ROW


def _history(schema: str | None) -> list[dict[str, Any]]:
    """A patient who meets CKD-SGLT2-COMM (its first test case), as plain v1-shaped events."""
    head = {"source": "test", "patient_id": "P9"} | ({"schema": schema} if schema else {})
    lab = {"kind": "measurement", "occurred_at": "2026-10-01T09:00:00Z"}
    return [
        head
        | {
            "event_id": "p",
            "kind": "person",
            "occurred_at": "2026-01-01T00:00:00Z",
            "person": {"birth_date": "1961-03-02", "sex": "F", "ethnic_group": "asian", "imd_decile": 2},
            "setting": "community",
        },
        head
        | {"event_id": "c", "kind": "condition", "occurred_at": "2019-05-01T00:00:00Z"}
        | {"code": {"system": "ICD10", "value": "E11.9"}},
        head
        | {"event_id": "d", "kind": "drug", "occurred_at": "2026-11-02T00:00:00Z"}
        | {"code": {"system": "ATC", "value": "C09AA05"}},
        head | lab | {"event_id": "h", "code": {"system": "LOINC", "value": "4548-4"}, "value": 8.1, "unit": "%"},
        head
        | lab
        | {"event_id": "g", "code": {"system": "LOINC", "value": "62238-1"}, "value": 41, "unit": "mL/min/1.73m2"},
        head
        | lab
        | {"event_id": "a", "code": {"system": "LOINC", "value": "14958-3"}, "value": 12.5, "unit": "mg/mmol"},
    ]


def test_v1_events_validate_and_screen_identically_to_their_v2_upgrade() -> None:
    v1 = [parse_event(e) for e in _history("screener.event/v1")]
    v2 = [parse_event(e) for e in _history("screener.event/v2")]
    s1, t1 = apply_events(PatientState(), v1)
    s2, t2 = apply_events(PatientState(), v2)
    assert_frame_equal(s1.facts, s2.facts)
    assert_frame_equal(s1.persons, s2.persons)
    assert t1.to_list() == t2.to_list() == ["P9"]
    # The v2 columns of a v1 event are all empty (date_only: the times were instants).
    assert s1.facts.select(V2_COLUMNS).drop("date_only", "recorded_at").null_count().row(0) == (s1.facts.height,) * (
        len(V2_COLUMNS) - 2
    )
    assert s1.facts["date_only"].to_list() == [False] * s1.facts.height
    study = load_study(RULES / "ckd-sglt2-comm.yaml")
    now = datetime(2026, 11, 30, 9, tzinfo=UTC)
    r1, r2 = screen(s1, [study], now), screen(s2, [study], now)
    assert r1["outcome"].to_list() == ["eligible"]
    assert_frame_equal(r1, r2)
    # And the batch decode path builds the same frames from the v1 bytes as from the v2 ones.
    f1 = decode_batch([json.dumps(e).encode() for e in _history("screener.event/v1")]).frames
    f2 = decode_batch([json.dumps(e).encode() for e in _history(None)]).frames
    for a, b, ref in zip(f1, f2, events_to_frames(v1), strict=True):
        assert_frame_equal(a, b)
        assert_frame_equal(a, ref)


@pytest.mark.parametrize("path", ["events", "decode"])
def test_person_location_is_the_latest_visit_location(path: str) -> None:
    base = {"source": "hl7", "patient_id": "P1", "schema": "screener.event/v2"}
    docs = [
        base | {"event_id": "v1", "kind": "visit", "occurred_at": "2026-03-01T08:00:00Z", "location": "Ward 1"},
        base | {"event_id": "v2", "kind": "visit", "occurred_at": "2026-03-02T08:00:00Z", "location": "Ward 2"},
        # A visit without a location, and a non-visit fact with one, leave it as it was.
        base | {"event_id": "v3", "kind": "visit", "occurred_at": "2026-03-03T08:00:00Z", "setting": "hospital"},
        base
        | {"event_id": "m", "kind": "measurement", "occurred_at": "2026-03-03T09:00:00Z", "location": "Lab"}
        | {"code": {"system": "LOINC", "value": "4548-4"}},
    ]
    if path == "events":
        state, _ = apply_events(PatientState(), [parse_event(d) for d in docs])
    else:
        from screener.state import apply_frames

        state, _ = apply_frames(PatientState(), *decode_batch([json.dumps(d).encode() for d in docs]).frames)
    row = state.persons.row(0, named=True)
    assert (row["location"], row["setting"]) == ("Ward 2", "hospital")
    later = base | {"event_id": "v4", "kind": "visit", "occurred_at": "2026-03-04T08:00:00Z", "location": "ICU"}
    state, touched = apply_events(state, [parse_event(later)], changed_only=True)
    assert state.persons["location"].to_list() == ["ICU"] and touched.to_list() == ["P1"]


def test_old_frames_and_old_snapshots_are_upgraded_with_null_columns(tmp_path: Path) -> None:
    event = parse_event(FULL_V2)
    state, _ = apply_events(PatientState(), [event])
    old_facts = state.facts.select(V1_COLUMNS)
    old_persons = state.persons.drop("location")
    up = upgrade_facts(old_facts)
    assert up.schema == pl.Schema(FACTS_SCHEMA)
    assert up.select(V2_COLUMNS).null_count().row(0) == (1,) * len(V2_COLUMNS)
    assert_frame_equal(up.select(V1_COLUMNS), old_facts)
    assert upgrade_facts(state.facts) is state.facts  # a current frame is left alone
    assert upgrade_persons(old_persons).schema == pl.Schema(PERSONS_SCHEMA)
    # A snapshot written before the v2 columns existed still restores (instead of a full replay).
    save_snapshot(PatientState(persons=old_persons, facts=old_facts), tmp_path, offset=7)
    restored = load_snapshot(tmp_path)
    assert restored is not None and restored[1] == 7
    assert restored[0].facts.schema == pl.Schema(FACTS_SCHEMA)
    assert restored[0].facts["code"].to_list() == ["860975"]


def test_every_v2_field_has_a_facts_column() -> None:
    # value_code -> value_system/value_code, dose -> dose_value/dose_unit; the others are named as in the event.
    columns = {"dose": "dose_value", "value_code": "value_system"}
    assert {columns.get(f, f) for f in V2_FIELDS} <= set(FACTS_SCHEMA)
