"""FHIR R4 reading shared by the resource mappers: the reject type, times, codes, references, ids.

Times: a FHIR ``date`` (``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``) stays a calendar date (``YYYY-MM-DD``, the first
day of a year or month); a ``dateTime`` with a time and no offset is Europe/London wall time; with an offset it
is converted to UTC. Identifiers (resource ids, reference targets) longer than 64 characters are rejected,
never truncated (two ids sharing a 64-character prefix would merge two patients).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from screener.errors import EventError
from screener.events import SETTINGS, Event, parse_event
from screener.sources.common import local_to_utc, stable_id

__all__ = [
    "SOURCE",
    "FHIRReject",
    "ParsedPayload",
    "code",
    "first_time",
    "ids",
    "make",
    "period_end",
    "ref_id",
    "retraction",
    "status_code",
    "subject",
    "tags",
    "time",
]

SOURCE = "fhir"
MAX_ID = 64
_SYSTEMS: tuple[tuple[str, str], ...] = (
    ("http://hl7.org/fhir/sid/icd-10", "ICD10"),
    ("icd-10", "ICD10"),
    ("icd10", "ICD10"),
    ("icd-9", "ICD9"),
    ("icd9", "ICD9"),
    ("http://snomed.info/sct", "SNOMED"),
    ("http://loinc.org", "LOINC"),
    ("rxnorm", "RXNORM"),
    ("dmd", "DMD"),
    ("http://www.whocc.no/atc", "ATC"),
    ("opcs-4", "OPCS4"),
    ("opcs4", "OPCS4"),
    ("read.info/readv2", "READ2"),
    ("read.info/ctv3", "CTV3"),
)
_PREFERENCE = {
    "ICD10": 0,
    "LOINC": 0,
    "DMD": 0,
    "ATC": 1,
    "OPCS4": 1,
    "RXNORM": 1,
    "ICD9": 2,
    "SNOMED": 2,
    "READ2": 3,
    "CTV3": 3,
    "local": 9,
}
_FHIR_DT = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


class FHIRReject(EventError):
    """A payload (or entry) screener will not accept. ``status``: HTTP status (400 or 422); ``path``: location."""

    def __init__(self, message: str, *, path: str, resource_type: str | None = None, status: int = 422) -> None:
        self.status = status
        self.path = path
        self.resource_type = resource_type
        what = f"{resource_type} at {path}" if resource_type else path
        self.reason = f"{what}: {message}"
        super().__init__(self.reason, field=path, source=SOURCE)


class UnresolvedReference(FHIRReject):
    """A reference screener cannot follow (a ``medicationReference`` to a Medication not sent with it).

    Not an invalid resource: in every Bundle type only its own entry is rejected (dead-lettered).
    """


@dataclass
class ParsedPayload:
    """What one payload yielded.

    ``events``; ``resources`` read; ``skipped``: resource types not mapped (type -> count); ``rejected``:
    ``(Bundle entry index, FHIRReject)`` for the entries of a batch/collection Bundle (or an unresolvable reference in
    any Bundle) that were refused while the rest was accepted; ``entries``: resources in the payload.
    """

    events: list[Event] = field(default_factory=list)
    resources: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bundle_type: str | None = None
    entries: int = 0
    rejected: list[tuple[int, FHIRReject]] = field(default_factory=list)
    #: The refused resources themselves, in the order of ``rejected`` (what the dead-letter topic receives).
    rejected_resources: list[Any] = field(default_factory=list)

    @property
    def unmapped(self) -> dict[str, int]:
        """The resource types not mapped (the same counts as ``skipped``)."""
        return self.skipped


def time(value: Any, path: str, rtype: str) -> str | None:
    """A FHIR date/dateTime/instant as the canonical event writes it (``YYYY-MM-DD`` or ISO UTC); None -> None.

    :raises FHIRReject: when the text is not a FHIR date/dateTime.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _FHIR_DT.match(value):
        raise FHIRReject(
            "not a FHIR date/dateTime (YYYY[-MM[-DD[Thh:mm:ss[.sss][Z|+hh:mm]]]])", path=path, resource_type=rtype
        )
    try:
        if len(value) == 4:
            return date(int(value), 1, 1).isoformat()
        if len(value) == 7:
            return date(int(value[:4]), int(value[5:7]), 1).isoformat()
        if len(value) == 10:
            return date.fromisoformat(value).isoformat()
        return local_to_utc(datetime.fromisoformat(value.replace("Z", "+00:00"))).isoformat()
    except ValueError as exc:
        raise FHIRReject(f"invalid date: {exc}", path=path, resource_type=rtype) from exc


def first_time(res: dict[str, Any], path: str, rtype: str, *keys: str) -> str | None:
    """The first of ``keys`` present: a ``...Period`` key gives its start."""
    for key in keys:
        if key.lower().endswith("period"):
            period = res.get(key)
            if isinstance(period, dict) and period.get("start"):
                return time(period["start"], f"{path}.{key}.start", rtype)
        elif res.get(key) is not None:
            return time(res[key], f"{path}.{key}", rtype)
    return None


def period_end(res: dict[str, Any], key: str, path: str, rtype: str) -> str | None:
    """``res[key].end`` as an event time, or None."""
    period = res.get(key)
    if isinstance(period, dict) and period.get("end"):
        return time(period["end"], f"{path}.{key}.end", rtype)
    return None


#: The code system URI the screener's own renderers give ``local`` codes (``connectors.synthetic``).
SCREENER_LOCAL_SYSTEM = "https://screener.invalid/fhir/CodeSystem/local"


def _system(uri: str) -> str:
    low = uri.lower()
    for needle, name in _SYSTEMS:
        if needle in low:
            return name
    return "local"


def code(concept: Any, path: str, rtype: str) -> dict[str, str]:
    """The best coding of a CodeableConcept as a canonical code (ICD-10/LOINC/dm+d first, SNOMED, then local).

    A coding in an unknown system travels as ``local`` ``<last path segment of the system>:<code>``
    (``cvx:140``), except the screener's own local system (``SCREENER_LOCAL_SYSTEM``); a concept with text
    only is ``local`` text.
    """
    if not isinstance(concept, dict):
        raise FHIRReject("a CodeableConcept is required", path=path, resource_type=rtype)
    codings = concept.get("coding") or []
    if not isinstance(codings, list):
        raise FHIRReject("coding must be a list", path=f"{path}.coding", resource_type=rtype)
    best: tuple[int, dict[str, str]] | None = None
    for c in codings:
        if not isinstance(c, dict) or not isinstance(c.get("code"), str) or not c["code"].strip():
            continue
        system = _system(str(c.get("system", "")))
        value = c["code"].strip()
        if system == "local" and c.get("system") != SCREENER_LOCAL_SYSTEM:  # our own local codes travel as they are
            tail = str(c.get("system", "")).rstrip("/").rsplit("/", 1)[-1]
            value = f"{tail}:{value}" if tail else value
        candidate = (_PREFERENCE[system], {"system": system, "value": value[:64]})
        if best is None or candidate[0] < best[0]:
            best = candidate
    if best is None:
        text = concept.get("text")
        if isinstance(text, str) and text.strip():
            return {"system": "local", "value": text.strip()[:64]}
        raise FHIRReject("no coding with a code", path=f"{path}.coding", resource_type=rtype)
    return best[1]


def concept_text(concept: Any) -> str | None:
    """The human text of a CodeableConcept: ``text``, else the first coding's ``display``."""
    if not isinstance(concept, dict):
        return None
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        return str(concept["text"]).strip()
    for c in concept.get("coding") or []:
        if isinstance(c, dict) and isinstance(c.get("display"), str) and c["display"].strip():
            return str(c["display"]).strip()
    return None


def checked_id(value: str, path: str, rtype: str) -> str:
    """``value`` if it fits the canonical 64 characters; otherwise a rejection (never a truncation)."""
    if len(value) > MAX_ID:
        raise FHIRReject(
            f"identifier is {len(value)} characters long; at most {MAX_ID} are accepted", path=path, resource_type=rtype
        )
    return value


def ref_id(ref: Any, path: str, rtype: str, *, what: str = "the patient") -> str:
    """The logical id a Reference points at (``Patient/123``, ``urn:uuid:...``, ``.../_history/2``, identifier)."""
    if not isinstance(ref, dict):
        raise FHIRReject(f"a reference to {what} is required", path=path, resource_type=rtype)
    target = ref.get("reference")
    if isinstance(target, str) and target.strip():
        target = target.strip()
        if "/_history" in target:
            target = target.split("/_history")[0]
        tail = target.rstrip("/").split("/")[-1].removeprefix("urn:uuid:")
        if tail:
            return checked_id(tail, f"{path}.reference", rtype)
    ident = ref.get("identifier")
    if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"].strip():
        return checked_id(str(ident["value"]).strip(), f"{path}.identifier.value", rtype)
    raise FHIRReject("reference has no usable target", path=f"{path}.reference", resource_type=rtype)


def subject(res: dict[str, Any], path: str, rtype: str) -> str:
    key = "patient" if "patient" in res and "subject" not in res else "subject"
    return ref_id(res.get(key), f"{path}.{key}", rtype)


def encounter(res: dict[str, Any], path: str, rtype: str) -> str | None:
    """The id of the Encounter the resource belongs to (``encounter``, or ``context`` in older profiles)."""
    for key in ("encounter", "context"):
        ref = res.get(key)
        if isinstance(ref, dict) and (ref.get("reference") or ref.get("identifier")):
            return ref_id(ref, f"{path}.{key}", rtype, what="an encounter")
    return None


def ids(res: dict[str, Any], rtype: str, full_url: str | None) -> tuple[str, str | None]:
    """(event id, corrects) from the resource id / fullUrl and meta.versionId."""
    rid = res.get("id") or full_url or json.dumps(res, sort_keys=True)
    base = stable_id(SOURCE, rtype, rid)
    version = str((res.get("meta") or {}).get("versionId") or "")
    if version.isdigit() and int(version) > 1:
        prev = int(version) - 1
        return f"{base}-v{version}", (base if prev == 1 else f"{base}-v{prev}")
    return base, None


def make(path: str, rtype: str, **fields: Any) -> Event:
    """Validate one canonical event (None fields left out); an invalid one rejects naming ``path``."""
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.setdefault("source", SOURCE)
    try:
        return parse_event(fields, source=SOURCE)
    except EventError as exc:
        raise FHIRReject(f"cannot build a {fields.get('kind')} event: {exc}", path=path, resource_type=rtype) from exc


def retraction(base: dict[str, Any], path: str, rtype: str) -> Event:
    return make(
        path,
        rtype,
        **{**base, "event_id": f"{base['event_id']}-eie", "corrects": base["event_id"], "status": "entered-in-error"},
    )


def emit(base: dict[str, Any], status: Any, path: str, rtype: str) -> list[Event]:
    """The event of ``base``, or its retraction when the resource's status is ``entered-in-error``."""
    return [retraction(base, path, rtype) if status == "entered-in-error" else make(path, rtype, **base)]


def status_code(concept: Any) -> str | None:
    """The first coding's code of a status CodeableConcept (clinicalStatus, verificationStatus)."""
    if isinstance(concept, dict):
        for c in concept.get("coding") or []:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                return str(c["code"])
    return None


def tags(res: dict[str, Any]) -> tuple[str | None, str | None]:
    """(setting, site) from ``meta.tag``: a tag whose code is a canonical setting, and a ``.../site`` tag."""
    setting = site = None
    for tag in (res.get("meta") or {}).get("tag") or []:
        if not isinstance(tag, dict) or not isinstance(tag.get("code"), str):
            continue
        if tag["code"] in SETTINGS and setting is None:
            setting = tag["code"]
        elif str(tag.get("system", "")).rstrip("/").endswith("/site") and site is None:
            site = tag["code"][:64]
    return setting, site


def quantity(q: Any, path: str, rtype: str) -> tuple[float, str | None]:
    """(value, unit) of a Quantity; the human ``unit`` first (rule files write units as labs print them)."""
    if not isinstance(q, dict) or not isinstance(q.get("value"), int | float) or isinstance(q.get("value"), bool):
        raise FHIRReject("valueQuantity.value must be a number", path=f"{path}.value", resource_type=rtype)
    unit = q.get("unit") or q.get("code")
    return float(q["value"]), (str(unit)[:32] if unit else None)


def qualifiers(concepts: list[Any], path: str, rtype: str) -> list[dict[str, str]] | None:
    """Codes of the CodeableConcepts given (None entries ignored), at most 16, or None when there are none."""
    out = [code(c, path, rtype) for c in concepts if isinstance(c, dict) and (c.get("coding") or c.get("text"))]
    return out[:16] or None
