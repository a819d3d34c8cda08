from __future__ import annotations

import pytest

from screener.errors import EventError
from screener.events import dump_event, parse_event

VALID = {
    "event_id": "e1",
    "source": "test",
    "kind": "measurement",
    "patient_id": "P1",
    "occurred_at": "2026-01-01T09:30:00+01:00",
    "code": {"system": "LOINC", "value": "62238-1"},
    "value": 42.0,
    "unit": "mL/min/1.73m2",
}


def test_round_trip_is_lossless_and_normalises_time_to_utc() -> None:
    event = parse_event(VALID)
    assert event.occurred_at.isoformat() == "2026-01-01T08:30:00+00:00"
    assert parse_event(dump_event(event)) == event


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"occurred_at": "2026-01-01T09:30:00"}, "occurred_at", "timezone"),
        ({"code": {"system": "ICD11", "value": "250"}}, "code.system", "ICD11"),
        ({"kind": "vitals"}, "kind", "vitals"),
        ({"surprise": 1}, "surprise", "unknown field"),
        ({"code": None}, "code", "needs a code"),
        ({"patient_id": ""}, "patient_id", "invalid value"),
    ],
)
def test_invalid_events_name_the_field_and_what_arrived(change: dict[str, object], field: str, text: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event({**VALID, **change})
    assert info.value.field == field
    assert text in str(info.value)


@pytest.mark.parametrize("stamp", ["9999-12-31T23:30:00-01:00", "0001-01-01T00:30:00+01:00"])
def test_timestamps_outside_the_utc_range_are_event_errors(stamp: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event({**VALID, "occurred_at": stamp})
    assert info.value.field == "occurred_at"


def test_missing_field_and_bad_json_are_event_errors() -> None:
    without = {k: v for k, v in VALID.items() if k != "patient_id"}
    with pytest.raises(EventError, match=r"patient_id.*required"):
        parse_event(without)
    with pytest.raises(EventError, match="not valid JSON"):
        parse_event(b"{not json")


def test_person_event_requires_person_block() -> None:
    with pytest.raises(EventError) as info:
        parse_event({**VALID, "kind": "person", "code": None})
    assert info.value.field == "person"
