"""Low-level HL7 v2 reading shared by the segment mappers: field access, dates, coded values, the reject type.

Nothing here knows a message type. Timestamps without an offset are Europe/London wall time; a value with date
precision only (``YYYYMMDD``, ``YYYYMM``, ``YYYY``) stays a calendar date (``YYYY-MM-DD``) in the events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import hl7

from screener.errors import EventError
from screener.events import Event, parse_event
from screener.sources.common import local_to_utc

from .codemap import CodeMap

__all__ = ["SOURCE", "Ctx", "HL7Reject", "ParsedMessage", "coded", "get", "parse_hl7_datetime", "reps", "when"]

SOURCE = "hl7v2"


class HL7Reject(EventError):
    """A message screener will not accept. ``ack_code`` is ``AE`` (error) or ``AR`` (reject).

    ``hl7_code`` is the HL7 table 0357 error code; ``location`` is ``SEG^seq^field`` for ERR-2.
    """

    def __init__(
        self,
        message: str,
        *,
        ack_code: str = "AE",
        hl7_code: str = "207",
        location: str = "",
        control_id: str = "",
    ) -> None:
        self.ack_code = ack_code
        self.hl7_code = hl7_code
        self.location = location
        self.control_id = control_id
        where = f"{location.replace('^', '-')}: " if location else ""
        super().__init__(f"{where}{message}", field=location or None, source=SOURCE)
        self.reason = f"{where}{message}"


@dataclass
class ParsedMessage:
    """One accepted message: control id, type (``ADT^A01``), events, non-fatal warnings, and the segment types
    it carried that screener does not read (``unmapped``: segment name -> count)."""

    control_id: str
    message_type: str
    events: list[Event]
    warnings: list[str] = field(default_factory=list)
    msh: Any = None
    unmapped: dict[str, int] = field(default_factory=dict)


@dataclass
class Ctx:
    """What every segment mapper of one message needs: its identity, clock, mapping file and visit context."""

    control_id: str
    facility: str
    msg_time: datetime
    code_map: CodeMap
    source: str
    warnings: list[str]
    #: PV1-19 visit number: the encounter every fact of the message belongs to (None without PV1-19).
    encounter_id: str | None = None
    #: PV1-3 point of care / room / bed.
    location: str | None = None

    def event(self, where: str, /, **fields: Any) -> Event:
        """Validate one canonical event; an invalid one rejects the message naming ``where`` (``SEG^seq``)."""
        fields.setdefault("source", self.source)
        fields.setdefault("recorded_at", self.msg_time.isoformat())
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            return parse_event(fields, source=self.source)
        except EventError as exc:
            raise HL7Reject(f"invalid {fields.get('kind')} event: {exc}", hl7_code="102", location=where) from exc


def get(seg: Any, fld: int, comp: int = 1, rep: int = 1, sub: int = 1) -> str:
    """Field ``fld`` component ``comp`` of repetition ``rep``; '' when absent (never raises)."""
    try:
        value = seg.extract_field(1, fld, rep, comp, sub)
    except (IndexError, KeyError, TypeError, AttributeError):
        return ""
    text = str(value).strip() if value is not None else ""
    return "" if text == '""' else text  # "" is HL7's explicit null


def reps(seg: Any, fld: int) -> int:
    """How many repetitions field ``fld`` has (0 when empty)."""
    try:
        f = seg(fld)
    except (IndexError, TypeError):
        return 0
    if isinstance(f, hl7.Field) and f and isinstance(f[0], hl7.Repetition):
        return len(f)
    return 1 if str(f) else 0


_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


def parse_hl7_datetime(text: str, *, location: str = "") -> datetime | None:
    """HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``) -> aware UTC datetime; '' -> None.

    No offset: Europe/London wall time. Missing month/day default to 1.

    :raises HL7Reject: AE/102 naming ``location`` when the text is not a valid date-time.
    """
    text = text.strip()
    if not text:
        return None
    m = _DTM.match(text)
    if not m:
        raise HL7Reject("not an HL7 date-time (YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ])", hl7_code="102", location=location)
    y, mo, d, h, mi, s, frac, off = m.groups()
    try:
        micro = int((frac or "0").ljust(6, "0"))
        value = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0), micro)
    except ValueError as exc:
        raise HL7Reject(f"not a valid date-time: {exc}", hl7_code="102", location=location) from exc
    if off:
        sign = 1 if off[0] == "+" else -1
        delta = timedelta(hours=int(off[1:3]), minutes=int(off[3:5]))
        if delta >= timedelta(hours=24):
            raise HL7Reject("bad UTC offset", hl7_code="102", location=location)
        return value.replace(tzinfo=timezone(sign * delta)).astimezone(UTC)
    return local_to_utc(value)


def when(text: str, *, location: str) -> str | None:
    """An HL7 DTM as the canonical event writes it: ``YYYY-MM-DD`` for date precision, else ISO UTC.

    :raises HL7Reject: as :func:`parse_hl7_datetime`.
    """
    text = text.strip()
    instant = parse_hl7_datetime(text, location=location)
    if instant is None:
        return None
    m = _DTM.match(text)
    if m and m.group(4) is None:  # no hour: a calendar date, never shifted to the day before
        return date(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1)).isoformat()
    return instant.isoformat()


def parse_date(text: str, location: str) -> date | None:
    """An HL7 DT (``YYYYMMDD``, a DTM with a time is accepted and truncated) -> date; '' -> None."""
    dt = text.strip()
    if not dt:
        return None
    m = re.match(r"^(\d{4})(\d{2})(\d{2})", dt)
    if not m or not re.match(r"^\d{8}(\d{2,6}(\.\d+)?)?([+-]\d{4})?$", dt):
        raise HL7Reject("not an HL7 date (YYYYMMDD)", hl7_code="102", location=location)
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError as exc:
        raise HL7Reject(f"not a valid date: {exc}", hl7_code="102", location=location) from exc


#: HL7 coding-system names (table 0396 and what UK feeds send) -> canonical code system.
_SYSTEMS = {
    **dict.fromkeys(("I10", "ICD10", "ICD-10", "I10C", "ICD10UK", "ICD10CM", "I10P"), "ICD10"),
    **dict.fromkeys(("I9", "I9C", "ICD9", "ICD-9", "ICD9CM", "I9CDX"), "ICD9"),
    **dict.fromkeys(("SCT", "SNOMED", "SNM", "SNM3", "SNOMEDCT", "SNOMED-CT", "SCT2"), "SNOMED"),
    **dict.fromkeys(("LN", "LOINC"), "LOINC"),
    **dict.fromkeys(("OPCS4", "OPCS", "OPCS-4"), "OPCS4"),
    **dict.fromkeys(("RXNORM", "RXN", "RXNCUI"), "RXNORM"),
    **dict.fromkeys(("READ", "READ2", "RD2", "R2"), "READ2"),
    **dict.fromkeys(("CTV3", "READ3", "RD3", "R3"), "CTV3"),
    **dict.fromkeys(("DMD", "DM+D"), "DMD"),
    "ATC": "ATC",
}


def code_for(system_raw: str, value: str) -> dict[str, str]:
    """(coding system name, code) -> canonical ``{system, value}``; an unknown system is ``local``.

    A code with no coding system at all but ICD-10's shape (``E11.9``) is taken as ICD-10.
    """
    system = _SYSTEMS.get(system_raw.strip().upper())
    if system is None:
        system = "ICD10" if not system_raw.strip() and re.match(r"^[A-Z]\d\d", value) else "local"
    return {"system": system, "value": value[:64]}


def coded(seg: Any, fld: int, rep: int = 1) -> dict[str, str] | None:
    """A CE/CWE field as a canonical code: the identifier (1) in its system (3), else the alternate (4 in 6).

    A coded identifier wins over a local one; None when the field has no identifier.
    """
    first = get(seg, fld, 1, rep), get(seg, fld, 3, rep)
    alt = get(seg, fld, 4, rep), get(seg, fld, 6, rep)
    candidates = [code_for(s, v) for v, s in (first, alt) if v]
    if not candidates:
        return None
    return next((c for c in candidates if c["system"] != "local"), candidates[0])
