"""Condition, Observation, Procedure, ServiceRequest, AllergyIntolerance and Immunization -> canonical events.

Each handler takes ``(resource, path, resource type, fullUrl, bundle index, now)`` and returns its events;
``[]`` means the resource records something that did not happen (not-done, cancelled) and is read, not unmapped.
The field-by-field table is in ``docs/connectors.md``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connectors._common import route_from_hl7, route_from_snomed, route_from_text
from screener.events import Event

from ._base import (
    FHIRReject,
    code,
    concept_text,
    emit,
    encounter,
    first_time,
    ids,
    period_end,
    qualifiers,
    quantity,
    retraction,
    status_code,
    subject,
)

__all__ = ["HANDLERS", "route"]

#: FHIR reaction severity -> SNOMED CT severity qualifier.
_SEVERITY = {"severe": "24484000", "moderate": "6736007", "mild": "255604002"}
_PROCEDURE_STATUS = {
    "preparation": "planned",
    "in-progress": "active",
    "on-hold": "active",
    "stopped": "stopped",
    "completed": "completed",
    "unknown": "completed",
}


def route(concept: Any) -> str | None:
    """A route CodeableConcept -> canonical route: SNOMED, HL7 v2 table 0162, or the text; else ``other``."""
    if not isinstance(concept, dict):
        return None
    for c in concept.get("coding") or []:
        if not isinstance(c, dict) or not isinstance(c.get("code"), str):
            continue
        system = str(c.get("system", ""))
        if "snomed" in system and (found := route_from_snomed(c["code"])):
            return found
        if "0162" in system:
            return route_from_hl7(c["code"])
        if found := route_from_text(str(c.get("display", ""))):
            return found
    text = concept_text(concept)
    if text and (found := route_from_text(text)):
        return found
    return "other" if concept.get("coding") or text else None


def _now(when: str | None, now: datetime) -> str:
    return when or now.isoformat()


def _condition(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    patient = subject(res, path, rtype)
    when = first_time(res, path, rtype, "onsetDateTime", "onsetPeriod", "recordedDate")
    ended = first_time(res, path, rtype, "abatementDateTime") or period_end(res, "abatementPeriod", path, rtype)
    if ended is None and isinstance(res.get("abatementPeriod"), dict):
        ended = first_time(res, path, rtype, "abatementPeriod")
    clinical = status_code(res.get("clinicalStatus"))
    verification = status_code(res.get("verificationStatus"))
    event_id, corrects = ids(res, rtype, full_url)
    resolved = clinical in ("inactive", "remission", "resolved") or (clinical is None and ended is not None)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "condition",
        "patient_id": patient,
        "occurred_at": _now(when, now),
        "ended_at": ended,
        "code": code(res.get("code"), f"{path}.code", rtype),
        "status": "resolved" if resolved else "active",
        "qualifiers": qualifiers([res.get("severity"), *(res.get("bodySite") or [])], f"{path}.severity", rtype),
        "encounter_id": encounter(res, path, rtype),
    }
    if verification in ("entered-in-error", "refuted"):
        return [retraction(base, path, rtype)]
    return [make_one(base, path, rtype)]


def make_one(base: dict[str, Any], path: str, rtype: str) -> Event:
    return emit(base, None, path, rtype)[0]


def _range(res: dict[str, Any], path: str, rtype: str) -> dict[str, float]:
    ranges = res.get("referenceRange") or []
    if not isinstance(ranges, list) or not ranges or not isinstance(ranges[0], dict):
        return {}
    out = {}
    for key, name in (("low", "ref_low"), ("high", "ref_high")):
        q = ranges[0].get(key)
        if isinstance(q, dict) and q.get("value") is not None:
            out[name] = quantity(q, f"{path}.referenceRange[0].{key}", rtype)[0]
    return out


def _observation(
    res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime
) -> list[Event]:
    status = res.get("status")
    if status == "cancelled":
        return []
    patient = subject(res, path, rtype)
    obs_code = code(res.get("code"), f"{path}.code", rtype)
    when = first_time(res, path, rtype, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
    event_id, corrects = ids(res, rtype, full_url)
    method = res.get("method")
    common = {
        "patient_id": patient,
        "occurred_at": _now(when, now),
        "ended_at": period_end(res, "effectivePeriod", path, rtype),
        "encounter_id": encounter(res, path, rtype),
        "qualifiers": qualifiers([method], f"{path}.method", rtype),
    }
    rows: list[dict[str, Any]] = []
    if "valueQuantity" in res:
        value, unit = quantity(res["valueQuantity"], f"{path}.valueQuantity", rtype)
        rows.append({"kind": "measurement", "code": obs_code, "value": value, "unit": unit, **_range(res, path, rtype)})
    elif "valueCodeableConcept" in res:
        vc = res["valueCodeableConcept"]
        value_code = code(vc, f"{path}.valueCodeableConcept", rtype)
        text = concept_text(vc)  # the code travels in value_code; the value is the answer's text, if any
        rows.append(
            {"kind": "observation", "code": obs_code, "value": text[:1000] if text else None, "value_code": value_code}
        )
    elif any(k in res for k in ("valueString", "valueBoolean", "valueInteger")):
        raw = res.get("valueString", res.get("valueBoolean", res.get("valueInteger")))
        kind = "measurement" if isinstance(raw, int) and not isinstance(raw, bool) else "observation"
        rows.append({"kind": kind, "code": obs_code, "value": raw if kind == "measurement" else str(raw)[:1000]})
    for i, comp in enumerate(res.get("component") or []):
        cpath = f"{path}.component[{i}]"
        if not isinstance(comp, dict):
            raise FHIRReject("component must be an object", path=cpath, resource_type=rtype)
        if "valueQuantity" not in comp:
            continue
        ccode = code(comp.get("code"), f"{cpath}.code", rtype)
        value, unit = quantity(comp["valueQuantity"], f"{cpath}.valueQuantity", rtype)
        rows.append(
            {
                "kind": "measurement",
                "code": ccode,
                "value": value,
                "unit": unit,
                "suffix": f"-c{i}",
                **_range(comp, cpath, rtype),
            }
        )
    if not rows:
        rows.append({"kind": "observation", "code": obs_code})
    out: list[Event] = []
    for row in rows:
        suffix = row.pop("suffix", "")
        base = {
            **common,
            **row,
            "event_id": f"{event_id}{suffix}",
            "corrects": f"{corrects}{suffix}" if corrects else None,
        }
        out.extend(emit(base, status, path, rtype))
    return out


def _procedure(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    status = res.get("status")
    if status == "not-done":
        return []
    when = first_time(res, path, rtype, "performedDateTime", "performedPeriod")
    event_id, corrects = ids(res, rtype, full_url)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "procedure",
        "patient_id": subject(res, path, rtype),
        "occurred_at": _now(when, now),
        "ended_at": period_end(res, "performedPeriod", path, rtype),
        "code": code(res.get("code"), f"{path}.code", rtype),
        "status": _PROCEDURE_STATUS.get(str(status), "completed"),
        "qualifiers": qualifiers(res.get("bodySite") or [], f"{path}.bodySite", rtype),
        "encounter_id": encounter(res, path, rtype),
    }
    return emit(base, status, path, rtype)


def _service_request(
    res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime
) -> list[Event]:
    """A ServiceRequest is a procedure not yet done: intent plan/proposal -> planned, order -> ordered."""
    status = res.get("status")
    if status == "revoked":
        mapped = "stopped"
    elif status == "completed":
        mapped = "completed"
    else:
        mapped = "planned" if res.get("intent") in ("plan", "proposal", "directive") else "ordered"
    when = first_time(res, path, rtype, "occurrenceDateTime", "occurrencePeriod", "authoredOn")
    event_id, corrects = ids(res, rtype, full_url)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "procedure",
        "patient_id": subject(res, path, rtype),
        "occurred_at": _now(when, now),
        "ended_at": period_end(res, "occurrencePeriod", path, rtype),
        "code": code(res.get("code"), f"{path}.code", rtype),
        "status": mapped,
        "encounter_id": encounter(res, path, rtype),
    }
    return emit(base, status, path, rtype)


def _allergy(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    clinical = status_code(res.get("clinicalStatus"))
    verification = status_code(res.get("verificationStatus"))
    when = first_time(res, path, rtype, "onsetDateTime", "onsetPeriod", "recordedDate")
    quals: list[dict[str, str]] = []
    for cat in res.get("category") or []:
        if isinstance(cat, str):
            quals.append({"system": "local", "value": f"allergen-type:{cat[:20]}"})
    if isinstance(res.get("type"), str):
        quals.append({"system": "local", "value": f"allergy-type:{res['type'][:20]}"})
    if isinstance(res.get("criticality"), str):
        quals.append({"system": "local", "value": f"criticality:{res['criticality'][:20]}"})
    reactions = [r for r in res.get("reaction") or [] if isinstance(r, dict)]
    severities = [str(r.get("severity")) for r in reactions if r.get("severity") in _SEVERITY]
    for severity in sorted(set(severities), key=list(_SEVERITY).index)[:1]:
        quals.append({"system": "SNOMED", "value": _SEVERITY[severity]})
    manifest = [concept_text(m) for r in reactions for m in r.get("manifestation") or []]
    event_id, corrects = ids(res, rtype, full_url)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "allergy",
        "patient_id": subject(res, path, rtype),
        "occurred_at": _now(when, now),
        "code": code(res.get("code"), f"{path}.code", rtype),
        "status": "resolved" if clinical in ("inactive", "resolved") else "active",
        "value": "; ".join(m for m in manifest if m)[:1000] or None,
        "qualifiers": quals[:16] or None,
        "encounter_id": encounter(res, path, rtype),
    }
    if verification in ("entered-in-error", "refuted"):
        return [retraction(base, path, rtype)]
    return emit(base, None, path, rtype)


def _immunization(
    res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime
) -> list[Event]:
    status = res.get("status")
    if status == "not-done":
        return []
    from ._medication import dose_of

    when = first_time(res, path, rtype, "occurrenceDateTime", "recorded")
    event_id, corrects = ids(res, rtype, full_url)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "immunization",
        "patient_id": subject(res, path, rtype),
        "occurred_at": _now(when, now),
        "code": code(res.get("vaccineCode"), f"{path}.vaccineCode", rtype),
        "status": "completed",
        "dose": dose_of(res.get("doseQuantity"), f"{path}.doseQuantity", rtype),
        "route": route(res.get("route")),
        "qualifiers": qualifiers([res.get("site")], f"{path}.site", rtype),
        "encounter_id": encounter(res, path, rtype),
    }
    return emit(base, status, path, rtype)


HANDLERS: dict[str, Any] = {
    "Condition": _condition,
    "Observation": _observation,
    "Procedure": _procedure,
    "ServiceRequest": _service_request,
    "AllergyIntolerance": _allergy,
    "Immunization": _immunization,
}
