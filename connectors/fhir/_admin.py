"""Patient and Encounter -> ``person`` (+ ``death``) and ``visit`` events.

Patient: birthDate (more than 120 years before the resource's time, or after it: rejected), gender, NHS number
from ``https://fhir.nhs.uk/Id/nhs-number`` when its modulus 11 check passes, the UK Core ethnic category
extension (an exact NHS code only: anything else is unknown), postcode district; ``deceased[x]`` -> ``death``.
The Patient's id (or its fullUrl's) is ``patient_id``: longer than 64 characters is rejected.

Encounter: ``id`` -> ``encounter_id`` (facts point at it through their ``encounter`` reference), ``class`` ->
code ``local/encounter-class:<code>`` and setting (IMP/EMER/ACUTE/OBSENC/SS/AMB -> hospital, HH/VR -> home),
``type`` -> qualifiers, ``period`` -> occurred_at / ended_at, the current (else the last) ``location`` ->
``location`` (its display, else the reference's id). Status planned -> planned, finished -> completed,
cancelled -> stopped, others active; a finished or cancelled encounter with no period end ends at its start,
so it is never "current".
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from connectors._common import birth_date_problem, strict_ethnic_category
from screener.events import Event
from screener.sources.common import is_valid_nhs_number, normalise_nhs_number, postcode_district

from ._base import FHIRReject, checked_id, emit, first_time, ids, make, period_end, qualifiers, subject, tags

__all__ = ["HANDLERS", "NHS_SYSTEM"]

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_ETHNIC_EXT = ("Extension-UKCore-EthnicCategory", "Extension-CareConnect-EthnicCategory")
_GENDER = {"female": "F", "male": "M", "other": "O", "unknown": "U"}
_ENCOUNTER_SETTING = {
    "IMP": "hospital",
    "EMER": "hospital",
    "ACUTE": "hospital",
    "NONAC": "hospital",
    "OBSENC": "hospital",
    "SS": "hospital",
    "PRENC": "hospital",
    "AMB": "hospital",
    "HH": "home",
    "VR": "home",
    "FLD": "community",
}
_ENCOUNTER_STATUS = {"planned": "planned", "finished": "completed", "cancelled": "stopped"}


def _birth_date(res: dict[str, Any], path: str, rtype: str, when: datetime) -> str | None:
    bd = res.get("birthDate")
    if bd is None:
        return None
    if not isinstance(bd, str) or not re.match(r"^\d{4}-\d{2}-\d{2}$", bd):
        raise FHIRReject("birthDate must be YYYY-MM-DD", path=f"{path}.birthDate", resource_type=rtype)
    try:
        born = date.fromisoformat(bd)
    except ValueError as exc:
        raise FHIRReject(f"invalid birthDate: {exc}", path=f"{path}.birthDate", resource_type=rtype) from exc
    if (problem := birth_date_problem(born, when)) is not None:
        raise FHIRReject(problem, path=f"{path}.birthDate", resource_type=rtype)
    return born.isoformat()


def _patient(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    pid = res.get("id") or (full_url or "").removeprefix("urn:uuid:").rsplit("/", 1)[-1]
    if not pid or not isinstance(pid, str):
        raise FHIRReject("a Patient needs an id (or a fullUrl in a Bundle)", path=f"{path}.id", resource_type=rtype)
    pid = checked_id(pid, f"{path}.id", rtype)
    last = (res.get("meta") or {}).get("lastUpdated")
    when = first_time(res.get("meta") or {}, f"{path}.meta", rtype, "lastUpdated") if last else None
    when_dt = datetime.fromisoformat(when) if when and "T" in when else now
    person: dict[str, Any] = {"birth_date": _birth_date(res, path, rtype, when_dt)}
    gender = res.get("gender")
    if gender is not None:
        if gender not in _GENDER:
            raise FHIRReject(f"gender must be one of {sorted(_GENDER)}", path=f"{path}.gender", resource_type=rtype)
        person["sex"] = _GENDER[gender]
    for ident in res.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == NHS_SYSTEM and isinstance(ident.get("value"), str):
            if is_valid_nhs_number(ident["value"]):
                person["nhs_number"] = normalise_nhs_number(ident["value"])
            break
    for ext in res.get("extension") or []:
        if isinstance(ext, dict) and any(str(ext.get("url", "")).endswith(n) for n in _ETHNIC_EXT):
            codings = (ext.get("valueCodeableConcept") or {}).get("coding") or []
            value = codings[0].get("code") if codings and isinstance(codings[0], dict) else None
            group, letter = strict_ethnic_category(value if isinstance(value, str) else None)
            if group:
                person["ethnic_group"], person["ethnic_category"] = group, letter
    for addr in res.get("address") or []:
        if isinstance(addr, dict) and (district := postcode_district(addr.get("postalCode"))):
            person["postcode_district"] = district
            break
    event_id, _corrects = ids(res, rtype, full_url)  # person events replace demographics anyway
    occurred = when_dt.isoformat()
    person = {k: v for k, v in person.items() if v is not None}
    out = [make(path, rtype, event_id=event_id, kind="person", patient_id=pid, occurred_at=occurred, person=person)]
    if res.get("deceasedDateTime") is not None or res.get("deceasedBoolean") is True:
        died = first_time(res, path, rtype, "deceasedDateTime") or occurred
        out.append(make(path, rtype, event_id=f"{event_id}-death", kind="death", patient_id=pid, occurred_at=died))
    return out


def _location(res: dict[str, Any]) -> str | None:
    entries = [e for e in res.get("location") or [] if isinstance(e, dict) and isinstance(e.get("location"), dict)]
    if not entries:
        return None
    current = [e for e in entries if e.get("status") == "active"]
    ref = (current or entries)[-1]["location"]
    text = ref.get("display") if isinstance(ref.get("display"), str) else None
    if not text and isinstance(ref.get("reference"), str):
        text = ref["reference"].rstrip("/").split("/")[-1].removeprefix("urn:uuid:")
    return text.strip()[:64] or None if text else None


def _encounter(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    patient = subject(res, path, rtype)
    cls = res.get("class")
    cls_code = str(cls.get("code") or "") if isinstance(cls, dict) else ""
    start = first_time(res, path, rtype, "period")
    end = period_end(res, "period", path, rtype)
    status = res.get("status")
    mapped = _ENCOUNTER_STATUS.get(str(status), "active")
    occurred = start or now.isoformat()
    if mapped in ("completed", "stopped") and end is None:
        end = occurred
    rid = res.get("id") or (full_url or "").removeprefix("urn:uuid:").rsplit("/", 1)[-1] or None
    event_id, corrects = ids(res, rtype, full_url)
    raw_types = res.get("type")
    types: list[Any] = raw_types if isinstance(raw_types, list) else []
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "visit",
        "patient_id": patient,
        "occurred_at": occurred,
        "ended_at": end,
        "code": {"system": "local", "value": f"encounter-class:{cls_code[:40]}"} if cls_code else None,
        "qualifiers": qualifiers(types, f"{path}.type", rtype),
        "setting": tags(res)[0] or _ENCOUNTER_SETTING.get(cls_code.upper()),
        "status": mapped,
        "encounter_id": checked_id(str(rid), f"{path}.id", rtype) if rid else None,
        "location": _location(res),
    }
    return emit(base, status, path, rtype)


HANDLERS: dict[str, Any] = {"Patient": _patient, "Encounter": _encounter}
