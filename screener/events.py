"""The canonical event: one clinical fact, OMOP-aligned, JSON on Kafka, keyed by ``patient_id``.

Every connector produces these; the engine consumes nothing else. The schema is versioned by the ``schema``
field (``screener.event/v1``). Validation is strict: an unknown field, a wrong type or a naive timestamp is an
:class:`~screener.errors.EventError` that names the field path, what was expected and what arrived.

Corrections and deletions are events too:

- an event whose ``corrects`` names an earlier ``event_id`` *replaces* that event;
- an event with ``status: entered-in-error`` and ``corrects`` *deletes* the earlier event;
- a ``person`` event replaces the person's demographics (fields left out keep their previous value);
- a ``person`` event with ``merged_from`` moves the facts of that (retired) patient id to this one (HL7 A40);
- a ``consent`` event with code ``local/do-not-contact`` puts the patient on the do-not-contact register while
  its status is ``active``; ``resolved`` takes them off it;
- a ``death`` event marks the patient deceased (they are never matched again).

``event_id`` is the idempotency key: the same ``event_id`` seen twice is applied once.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from screener.errors import EventError

__all__ = [
    "CODE_SYSTEMS",
    "ETHNIC_GROUPS",
    "KINDS",
    "SCHEMA",
    "SETTINGS",
    "STATUSES",
    "Code",
    "Event",
    "Person",
    "dump_event",
    "parse_event",
]

SCHEMA = "screener.event/v1"

Kind = Literal["person", "condition", "measurement", "drug", "procedure", "visit", "observation", "consent", "death"]
CodeSystem = Literal["ICD10", "SNOMED", "LOINC", "DMD", "ATC", "OPCS4", "local"]
Status = Literal["active", "resolved", "entered-in-error"]
Setting = Literal["hospital", "community", "primary-care", "home"]
Sex = Literal["F", "M", "O", "U"]
#: ONS 2021 high-level ethnic groups (England and Wales census, 5 categories).
EthnicGroup = Literal["asian", "black", "mixed", "white", "other"]

KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
CODE_SYSTEMS: tuple[str, ...] = CodeSystem.__args__  # type: ignore[attr-defined]
STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]
SETTINGS: tuple[str, ...] = Setting.__args__  # type: ignore[attr-defined]
ETHNIC_GROUPS: tuple[str, ...] = EthnicGroup.__args__  # type: ignore[attr-defined]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError("timestamp must carry a timezone offset (e.g. 2026-05-01T09:30:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 9999-12-31T23:30:00-01:00 has no UTC instant
        raise ValueError("timestamp is out of range once converted to UTC") from exc


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]

_STRICT = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Code(BaseModel):
    """A coded concept. ``value`` is the code as the system writes it (``E11.9``, ``4548-4``)."""

    model_config = _STRICT
    system: CodeSystem
    value: str = Field(min_length=1, max_length=64)


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


class Event(BaseModel):
    """One canonical event. See the module docstring for correction semantics."""

    model_config = _STRICT
    schema_: Literal["screener.event/v1"] = Field(default="screener.event/v1", alias="schema")
    event_id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=64)
    kind: Kind
    patient_id: str = Field(min_length=1, max_length=64)
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime | None = None
    code: Code | None = None
    value: float | str | None = None
    unit: str | None = Field(default=None, max_length=32)
    status: Status = "active"
    setting: Setting | None = None
    site: str | None = Field(default=None, max_length=64)
    person: Person | None = None
    corrects: str | None = Field(default=None, min_length=1, max_length=128)

    def model_post_init(self, __context: Any) -> None:
        if self.kind == "person" and self.person is None:
            raise EventError("a person event needs a 'person' object", field="person", expected="object")
        if self.kind not in ("person", "death", "visit") and self.code is None:
            raise EventError(f"a {self.kind} event needs a code", field="code", expected="{system, value}")
        if self.kind != "person" and self.person is not None:
            raise EventError("only person events carry 'person'", field="person", received=self.kind)


def _error_from_validation(exc: ValidationError, source: str | None) -> EventError:
    first = exc.errors(include_url=False)[0]
    path = ".".join(str(p) for p in first.get("loc", ()) if p != "function-after[_aware(), datetime]")
    path = path.replace("schema_", "schema")
    expected = first.get("msg", "a valid value")
    if first.get("type") == "extra_forbidden":
        return EventError("unknown field", field=path, source=source)
    if first.get("type") == "missing":
        return EventError("required field is missing", field=path, source=source)
    return EventError("invalid value", field=path, expected=expected, received=first.get("input"), source=source)


def parse_event(raw: bytes | str | dict[str, Any], *, source: str | None = None) -> Event:
    """Validate one event from JSON bytes, a JSON string or a decoded dict.

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
        raise EventError(f"cannot decode event: {exc}", source=source) from exc


def _first_event_error(exc: ValidationError) -> EventError | None:
    for err in exc.errors(include_url=False):
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, EventError):
            return inner
    return None


def dump_event(event: Event) -> bytes:
    """Serialise an event to compact JSON bytes (the Kafka message value). Round-trips with parse_event."""
    return event.model_dump_json(by_alias=True, exclude_none=True).encode()


def event_dict(event: Event) -> dict[str, Any]:
    """A JSON-compatible dict of the event (aliases applied, ``None`` left out)."""
    loaded: dict[str, Any] = json.loads(dump_event(event))
    return loaded
