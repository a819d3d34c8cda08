from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from screener.errors import EventError
from screener.events import SCHEMA, Dose, dump_event, parse_event

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


# --- v2 ----------------------------------------------------------------------------------------------------
FULL_V2: dict[str, Any] = {
    "schema": "screener.event/v2",
    "event_id": "d1",
    "source": "fhir",
    "kind": "drug",
    "patient_id": "P1",
    "occurred_at": "2026-01-01T09:30:00Z",
    "recorded_at": "2026-01-02T10:00:00Z",
    "code": {"system": "RXNORM", "value": "860975"},
    "value": 2.5,
    "unit": "mg",
    "status": "stopped",
    "setting": "hospital",
    "site": "RX1",
    "qualifiers": [{"system": "SNOMED", "value": "24623002"}, {"system": "READ2", "value": "G30.."}],
    "ended_at": "2026-02-01",
    "dose": {"value": 500.0, "unit": "mg"},
    "route": "oral",
    "ref_low": 1.0,
    "ref_high": 3.5,
    "value_code": {"system": "SNOMED", "value": "260373001"},
    "encounter_id": "V-77",
    "location": "Ward 7",
}


def test_a_v2_event_round_trips_every_field_through_json() -> None:
    event = parse_event(json.dumps(FULL_V2))
    assert json.loads(dump_event(event)) == FULL_V2
    assert parse_event(dump_event(event)) == event
    assert event.qualifiers is not None and [q.key() for q in event.qualifiers] == ["SNOMED|24623002", "READ2|G30.."]
    assert (event.dose, event.route, event.ref_low, event.ref_high) == (Dose(value=500.0, unit="mg"), "oral", 1.0, 3.5)


def test_a_v1_event_is_upgraded_on_read_and_equals_its_v2_form() -> None:
    v1 = parse_event({**VALID, "schema": "screener.event/v1"})
    assert v1.schema_ == SCHEMA == "screener.event/v2"
    assert v1 == parse_event({**VALID, "schema": "screener.event/v2"}) == parse_event(VALID)
    assert json.loads(dump_event(v1))["schema"] == "screener.event/v2"


@pytest.mark.parametrize("name", ["qualifiers", "ended_at", "dose", "route", "ref_low", "value_code", "location"])
def test_a_v1_event_cannot_carry_a_v2_field(name: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event({**VALID, "schema": "screener.event/v1", name: FULL_V2[name]})
    assert info.value.field == name
    assert "screener.event/v1" in str(info.value) and "screener.event/v2" in str(info.value)


@pytest.mark.parametrize(
    ("field", "doc"),
    [
        ("value", '"value": NaN'),
        ("value", '"value": Infinity'),
        ("value", '"value": -Infinity'),
        ("value", '"value": 1e400'),
        ("ref_low", '"ref_low": NaN'),
        ("ref_high", '"ref_high": Infinity'),
        ("dose.value", '"dose": {"value": NaN, "unit": "mg"}'),
    ],
)
def test_non_finite_numbers_are_rejected_in_json(field: str, doc: str) -> None:
    # pydantic's JSON parser accepts the NaN/Infinity literals: the model must reject them itself.
    text = json.dumps(VALID)[:-1] + ", " + doc + "}"
    with pytest.raises(EventError) as info:
        parse_event(text)
    assert info.value.field == field
    assert "finite" in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["value", "ref_low", "ref_high", "dose"])
def test_non_finite_numbers_are_rejected_in_dicts(bad: float, where: str) -> None:
    change: dict[str, Any] = {"dose": {"value": bad}} if where == "dose" else {where: bad}
    with pytest.raises(EventError) as info:
        parse_event({**VALID, **change})
    assert info.value.field == ("dose.value" if where == "dose" else where)


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"route": "by mouth"}, "route", "by mouth"),
        ({"dose": {"value": -1.0}}, "dose.value", "greater than or equal to 0"),
        ({"dose": {"value": 1.0, "unit": "x" * 33}}, "dose.unit", "at most 32 characters"),
        ({"qualifiers": [{"system": "SNOMED", "value": "1"}] * 17}, "qualifiers", "at most 16 items"),
        ({"qualifiers": [{"system": "MESH", "value": "1"}]}, "qualifiers.0.system", "MESH"),
        ({"value_code": {"system": "SNOMED"}}, "value_code.value", "required"),
        ({"encounter_id": "e" * 65}, "encounter_id", "at most 64 characters"),
        ({"location": ""}, "location", "invalid value"),
        ({"ref_low": 5.0, "ref_high": 1.0}, "ref_low", "reversed"),
        ({"ended_at": "2025-12-31T09:30:00Z"}, "ended_at", "ends before it starts"),
        ({"ended_at": "2025-12-31"}, "ended_at", "ends before it starts"),
        ({"ended_at": "2026-01-01T09:30:00"}, "ended_at", "timezone"),
        ({"occurred_at": "2026-02-30"}, "occurred_at", "not a calendar date"),
        ({"kind": "allergy"} | {"code": None}, "code", "needs a code"),
    ],
)
def test_invalid_v2_fields_name_the_field(change: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event({**VALID, **change})
    assert info.value.field == field
    assert text in str(info.value)


def test_new_kinds_and_code_systems() -> None:
    registration = parse_event(
        {**VALID, "kind": "registration", "code": None, "ended_at": "2027-01-01", "setting": "primary-care"}
    )
    assert registration.code is None and registration.ended_date_only
    for system in ("ICD9", "RXNORM", "READ2", "CTV3"):
        assert parse_event({**VALID, "kind": "allergy", "code": {"system": system, "value": "X1"}}).kind == "allergy"
    assert parse_event({**VALID, "kind": "immunization", "status": "completed"}).status == "completed"


def test_a_calendar_date_stays_that_date_at_midnight_utc() -> None:
    event = parse_event({**VALID, "occurred_at": "2024-07-01"})  # summer: London midnight would be 23:00 UTC
    assert event.occurred_at == datetime(2024, 7, 1, tzinfo=UTC)
    assert event.date_only and not event.ended_date_only
    assert json.loads(dump_event(event))["occurred_at"] == "2024-07-01"
    assert parse_event(dump_event(event)) == event
    timed = parse_event({**VALID, "occurred_at": "2024-07-01T00:00:00Z"})
    assert timed.occurred_at == event.occurred_at and not timed.date_only
    assert timed != event  # the flag is part of the event
    # A Python date (a connector building events in code) is a calendar date too; a datetime is not.
    assert parse_event({**VALID, "occurred_at": date(2024, 7, 1)}).date_only
    # An end on the same calendar day as a timed start is fine: the end is the whole day.
    same_day = parse_event({**VALID, "occurred_at": "2024-07-01T15:00:00+01:00", "ended_at": "2024-07-01"})
    assert same_day.ended_at == datetime(2024, 7, 1, tzinfo=UTC) and same_day.ended_date_only


def _person(birth: date) -> dict[str, Any]:
    return {**VALID, "kind": "person", "code": None, "person": {"birth_date": birth.isoformat()}}


def test_implausible_birth_dates_are_rejected_against_today() -> None:
    today = datetime.now(UTC).date()
    oldest = today.replace(year=today.year - 120, day=28 if (today.month, today.day) == (2, 29) else today.day)
    assert parse_event(_person(oldest)).person is not None
    assert parse_event(_person(today)).person is not None
    for bad, why in ((oldest - timedelta(days=1), "more than 120 years ago"), (today + timedelta(days=2), "future")):
        with pytest.raises(EventError) as info:
            parse_event(_person(bad))
        assert info.value.field == "person.birth_date"
        assert why in str(info.value) and bad.isoformat() in str(info.value)
    with pytest.raises(EventError, match="more than 120 years ago"):
        parse_event(_person(date(1013, 11, 13)))  # HL7 PID-7 10131113


@pytest.mark.parametrize(("name", "limit"), [("patient_id", 64), ("event_id", 128), ("corrects", 128)])
def test_over_long_ids_are_rejected_with_the_limit_and_the_length_not_the_value(name: str, limit: int) -> None:
    value = "A" * 5000
    with pytest.raises(EventError) as info:
        parse_event({**VALID, name: value})
    err = info.value
    assert err.field == name
    assert f"at most {limit} characters" in str(err) and "5000 characters" in str(err)
    assert len(str(err)) < 300 and isinstance(err.received, str) and len(err.received) <= 83
    # Just over the limit is rejected too (never truncated: two ids must not merge).
    with pytest.raises(EventError, match=f"{limit + 1} characters"):
        parse_event({**VALID, name: "B" * (limit + 1)})
    assert getattr(parse_event({**VALID, name: "C" * limit}), name) == "C" * limit


def test_an_error_never_carries_a_huge_input_whole() -> None:
    with pytest.raises(EventError) as info:
        parse_event({**VALID, "value": ["x" * 10_000]})
    assert len(repr(info.value.received)) < 100 and len(str(info.value)) < 300
