"""The canonical event: one clinical fact, OMOP-aligned, JSON on Kafka, keyed by ``patient_id``.

Every connector produces these; the engine consumes nothing else. The schema is versioned by the ``schema``
field: ``screener.event/v2`` is written from now on; ``screener.event/v1`` is still accepted and upgraded on read
(a v1 event is a v2 event without the v2 fields, so a v1 event carrying one is rejected). The parsed
:class:`Event` is always v2. Validation is strict: an unknown field, a wrong type, a naive timestamp or a
non-finite number is an :class:`~screener.errors.EventError` that names the field path, what was expected and
what arrived (an excerpt of at most 80 characters: an over-long value is never echoed whole).
``docs/events.md`` is the field-by-field reference.

Corrections and deletions are events too:

- an event whose ``corrects`` names an earlier ``event_id`` *replaces* that event;
- an event with ``status: entered-in-error`` and ``corrects`` *deletes* the earlier event;
- a ``person`` event replaces the person's demographics (fields left out keep their previous value);
- a ``person`` event with ``merged_from`` moves the facts of that (retired) patient id to this one (HL7 A40);
- a ``consent`` event with code ``local/do-not-contact`` puts the patient on the do-not-contact register while
  its status is ``active``; ``resolved`` takes them off it;
- a ``death`` event marks the patient deceased (they are never matched again).

``event_id`` is the idempotency key: the same ``event_id`` seen twice is applied once.

Times: ``occurred_at`` and ``ended_at`` take an aware ISO-8601 instant or a plain calendar date ``YYYY-MM-DD``.
A date is kept as midnight UTC of that same date and flagged (:attr:`Event.date_only`, the facts' ``date_only``
column); it is written back as the date. A birth date is checked against today's UTC date (the wall clock, not
the event's time: connectors stamp person events with message or first-contact times, which can precede a birth):
more than 120 years ago, or after tomorrow (one day of grace for time zones east of UTC), is rejected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    PrivateAttr,
    ValidationError,
    field_serializer,
    model_validator,
)

from screener.errors import EventError
from screener.vocab import (
    CODE_SYSTEMS,
    ETHNIC_GROUPS,
    FACT_KINDS,
    KINDS,
    ROUTES,
    SCHEMA_V1,
    SCHEMA_V2,
    SETTINGS,
    SEXES,
    STATUSES,
    CodeSystem,
    EthnicGroup,
    Kind,
    Route,
    SchemaName,
    Setting,
    Sex,
    Status,
)

__all__ = [
    "CODELESS_KINDS",
    "CODE_SYSTEMS",
    "ETHNIC_GROUPS",
    "FACT_KINDS",
    "KINDS",
    "MAX_BIRTH_AGE_YEARS",
    "ROUTES",
    "SCHEMA",
    "SETTINGS",
    "SEXES",
    "STATUSES",
    "V2_FIELDS",
    "Code",
    "CodeSystem",
    "Dose",
    "EthnicGroup",
    "Event",
    "Kind",
    "Person",
    "Route",
    "Setting",
    "Sex",
    "Status",
    "dump_event",
    "event_dict",
    "excerpt",
    "parse_event",
]

#: The schema every connector writes.
SCHEMA = SCHEMA_V2
#: Fields a ``screener.event/v1`` event cannot carry.
V2_FIELDS = (
    "qualifiers",
    "ended_at",
    "dose",
    "route",
    "ref_low",
    "ref_high",
    "value_code",
    "encounter_id",
    "location",
)
#: A birth date more than this many years before today is rejected (as is one in the future).
MAX_BIRTH_AGE_YEARS = 120
#: Kinds that need no ``code``.
CODELESS_KINDS = ("person", "death", "visit", "registration")
_EXCERPT = 80
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def excerpt(value: object, limit: int = _EXCERPT) -> object:
    """``value`` as an error may carry it: a str or bytes longer than ``limit`` is cut (with ``...``), a list
    or dict becomes a cut ``repr``; anything else is returned as is."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    if isinstance(value, bytes) and len(value) > limit:
        return value[:limit] + b"..."
    if isinstance(value, list | dict | tuple):
        shown = repr(value)
        return shown if len(shown) <= limit else shown[:limit] + "..."
    return value


def _is_calendar_date(value: object) -> bool:
    """True for a value the event times read as a plain calendar date (no time of day)."""
    if isinstance(value, str):
        return _DATE_ONLY.fullmatch(value) is not None
    return isinstance(value, date) and not isinstance(value, datetime)


def _calendar(value: object) -> object:
    """A calendar date becomes midnight UTC of that same date; anything else goes on to the datetime parser."""
    if isinstance(value, str) and _DATE_ONLY.fullmatch(value):
        try:
            value = date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not a calendar date: {exc}") from exc
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError("timestamp must carry a timezone offset (e.g. 2026-05-01T09:30:00Z) or be a date")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 9999-12-31T23:30:00-01:00 has no UTC instant
        raise ValueError("timestamp is out of range once converted to UTC") from exc


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
#: An aware instant or a calendar date (then midnight UTC of it).
EventTime = Annotated[datetime, BeforeValidator(_calendar), AfterValidator(_aware)]
Finite = Annotated[float, Field(allow_inf_nan=False)]

_STRICT = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Code(BaseModel):
    """A coded concept. ``value`` is the code as the system writes it (``E11.9``, ``4548-4``)."""

    model_config = _STRICT
    system: CodeSystem
    value: str = Field(min_length=1, max_length=64)

    def key(self) -> str:
        """``SYSTEM|value``, the form the facts frame's ``qualifiers`` list holds."""
        return f"{self.system}|{self.value}"


class Dose(BaseModel):
    """An amount per administration or per day, as the source gives it (``unit`` may be absent: OMOP quantity)."""

    model_config = _STRICT
    value: Finite = Field(ge=0)
    unit: str | None = Field(default=None, min_length=1, max_length=32)


class Person(BaseModel):
    """Demographics carried by ``person`` events. Every field is optional: absent means unchanged."""

    model_config = _STRICT
    birth_date: date | None = None
    sex: Sex | None = None
    ethnic_group: EthnicGroup | None = None
    #: NHS Data Dictionary ethnic category letter (A-Z), when the source gives it.
    ethnic_category: str | None = Field(default=None, pattern=r"^[A-Z]$")
    lsoa: str | None = Field(default=None, max_length=16)
    imd_decile: int | None = Field(default=None, ge=1, le=10)
    postcode_district: str | None = Field(default=None, max_length=8)
    #: Travels in the person event only; never logged, never a key.
    nhs_number: str | None = Field(default=None, pattern=r"^\d{10}$")
    merged_from: str | None = Field(default=None, min_length=1, max_length=64)


def _to_v2(_: str) -> str:
    return SCHEMA_V2


class Event(BaseModel):
    """One canonical event. See the module docstring for correction semantics and times."""

    model_config = _STRICT
    schema_: Annotated[SchemaName, AfterValidator(_to_v2)] = Field(default=SCHEMA_V2, alias="schema")
    event_id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=64)
    kind: Kind
    patient_id: str = Field(min_length=1, max_length=64)
    occurred_at: EventTime
    recorded_at: AwareDatetime | None = None
    code: Code | None = None
    value: Finite | str | None = None
    unit: str | None = Field(default=None, max_length=32)
    status: Status = "active"
    setting: Setting | None = None
    site: str | None = Field(default=None, max_length=64)
    person: Person | None = None
    corrects: str | None = Field(default=None, min_length=1, max_length=128)
    # --- v2 -----------------------------------------------------------------------------------------------
    qualifiers: tuple[Code, ...] | None = Field(default=None, max_length=16)
    ended_at: EventTime | None = None
    dose: Dose | None = None
    route: Route | None = None
    ref_low: Finite | None = None
    ref_high: Finite | None = None
    value_code: Code | None = None
    encounter_id: str | None = Field(default=None, min_length=1, max_length=64)
    location: str | None = Field(default=None, min_length=1, max_length=64)

    _date_only: bool = PrivateAttr(default=False)
    _ended_date_only: bool = PrivateAttr(default=False)

    @property
    def date_only(self) -> bool:
        """``occurred_at`` was a calendar date (stored as midnight UTC of it)."""
        return self._date_only

    @property
    def ended_date_only(self) -> bool:
        """``ended_at`` was a calendar date."""
        return self._ended_date_only

    @model_validator(mode="wrap")
    @classmethod
    def _whole(cls, data: Any, handler: Callable[[Any], Event]) -> Event:
        event = handler(data)
        if isinstance(data, dict):  # an Event instance passed in again is already checked
            if data.get("schema") == SCHEMA_V1:
                for name in V2_FIELDS:
                    if data.get(name) is not None:
                        raise EventError(
                            f"a {SCHEMA_V1} event cannot carry '{name}'",
                            field=name,
                            expected=f'"schema": "{SCHEMA_V2}"',
                            received=SCHEMA_V1,
                        )
            event._date_only = _is_calendar_date(data.get("occurred_at"))
            event._ended_date_only = _is_calendar_date(data.get("ended_at"))
            event._check()
        return event

    def _check(self) -> None:
        """The rules between fields (the types and ranges of single fields are pydantic's)."""
        if self.kind == "person" and self.person is None:
            raise EventError("a person event needs a 'person' object", field="person", expected="object")
        if self.kind not in CODELESS_KINDS and self.code is None:
            raise EventError(f"a {self.kind} event needs a code", field="code", expected="{system, value}")
        if self.kind != "person" and self.person is not None:
            raise EventError("only person events carry 'person'", field="person", received=self.kind)
        if self.ended_at is not None:
            # A date-only end is the whole of that day: it may be the day of a timed start.
            start: date | datetime = self.occurred_at.date() if self._ended_date_only else self.occurred_at
            end: date | datetime = self.ended_at.date() if self._ended_date_only else self.ended_at
            if end < start:
                raise EventError(
                    "ends before it starts",
                    field="ended_at",
                    expected=f"a time at or after occurred_at ({self.occurred_at.isoformat()})",
                    received=self.ended_at.isoformat(),
                )
        if self.ref_low is not None and self.ref_high is not None and self.ref_low > self.ref_high:
            raise EventError(
                "reference range is reversed",
                field="ref_low",
                expected=f"ref_low <= ref_high ({self.ref_high})",
                received=self.ref_low,
            )
        if self.person is not None and self.person.birth_date is not None:
            self._check_birth(self.person.birth_date)

    def _check_birth(self, born: date) -> None:
        today = datetime.now(UTC).date()
        earliest = _years_before(today, MAX_BIRTH_AGE_YEARS)
        # One day of grace after today's UTC date: a birth "today" east of UTC is tomorrow's date there.
        latest = today + timedelta(days=1)
        if born < earliest or born > latest:
            why = f"more than {MAX_BIRTH_AGE_YEARS} years ago" if born < earliest else "in the future"
            raise EventError(
                f"implausible birth date ({why})",
                field="person.birth_date",
                expected=f"a date from {earliest.isoformat()} to {latest.isoformat()}",
                received=born.isoformat(),
            )

    @field_serializer("occurred_at", "ended_at", mode="wrap")
    def _write_time(self, value: datetime | None, handler: Callable[[Any], Any], info: FieldSerializationInfo) -> Any:
        flagged = self._date_only if info.field_name == "occurred_at" else self._ended_date_only
        if value is not None and flagged:
            return value.date().isoformat() if info.mode_is_json() else value.date()
        return handler(value)


def _years_before(day: date, years: int) -> date:
    """The same calendar day ``years`` earlier (29 February becomes the 28th in a common year)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


# Parts of a pydantic error location that name a union member or a validator, not a field.
_TAG = re.compile(r"^(float|str|int|bool|date|datetime|function-\w+\[.*\]|json-or-python\[.*\])$")


def _error_from_validation(exc: ValidationError, source: str | None) -> EventError:
    first = exc.errors(include_url=False)[0]
    path = ".".join(str(p) for p in first.get("loc", ()) if not _TAG.match(str(p)))
    path = path.replace("schema_", "schema")
    kind = first.get("type")
    ctx = first.get("ctx") or {}
    received = first.get("input")
    if kind == "extra_forbidden":
        return EventError("unknown field", field=path, source=source)
    if kind == "missing":
        return EventError("required field is missing", field=path, source=source)
    if kind == "finite_number":
        return EventError(
            "not a finite number (NaN and Infinity are rejected)",
            field=path,
            expected="a finite number",
            received=received,
            source=source,
        )
    if kind == "string_too_long" and isinstance(received, str):
        return EventError(
            f"too long: {len(received)} characters",
            field=path,
            expected=f"at most {ctx.get('max_length')} characters",
            received=excerpt(received),
            source=source,
        )
    if kind == "too_long":
        return EventError(
            f"too many items: {ctx.get('actual_length')}",
            field=path,
            expected=f"at most {ctx.get('max_length')} items",
            received=excerpt(received),
            source=source,
        )
    expected = first.get("msg", "a valid value")
    return EventError("invalid value", field=path, expected=expected, received=excerpt(received), source=source)


def parse_event(raw: bytes | str | dict[str, Any], *, source: str | None = None) -> Event:
    """Validate one event from JSON bytes, a JSON string or a decoded dict (v1 or v2; the result is v2).

    :raises EventError: naming the field path, what was expected and what arrived.
    """
    try:
        if isinstance(raw, dict):
            return Event.model_validate(raw)
        return Event.model_validate_json(raw)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            if err.get("type") == "json_invalid":
                raise EventError("not valid JSON", expected="a JSON object", source=source) from exc
        ctx_error = _first_event_error(exc)
        if ctx_error is not None:
            raise ctx_error from exc
        raise _error_from_validation(exc, source) from exc
    except EventError:
        raise
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise EventError(f"cannot decode event: {str(exc)[:_EXCERPT]}", source=source) from exc


def _first_event_error(exc: ValidationError) -> EventError | None:
    for err in exc.errors(include_url=False):
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, EventError):
            return inner
    return None


def dump_event(event: Event) -> bytes:
    """Serialise an event to compact JSON bytes (the Kafka message value). Round-trips with parse_event,
    the date-only flags included (a date-only time is written as the date)."""
    return event.model_dump_json(by_alias=True, exclude_none=True).encode()


def event_dict(event: Event) -> dict[str, Any]:
    """A JSON-compatible dict of the event (aliases applied, ``None`` left out)."""
    loaded: dict[str, Any] = json.loads(dump_event(event))
    return loaded
