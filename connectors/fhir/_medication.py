"""MedicationRequest, MedicationStatement and MedicationAdministration -> ``drug`` events.

- code: ``medicationCodeableConcept``, or ``medicationReference`` resolved against ``contained`` resources and
  the Bundle's Medication entries (an unresolvable one rejects only its own entry, in every Bundle type).
- dose and route: MedicationRequest ``dosageInstruction[0]``, MedicationStatement ``dosage[0]``
  (``doseAndRate[0].doseQuantity``, ``route``); MedicationAdministration ``dosage.dose`` / ``dosage.route``.
- period: MedicationRequest ``authoredOn`` (else ``dispenseRequest.validityPeriod.start``) to
  ``dispenseRequest.validityPeriod.end``, else authoredOn + ``dispenseRequest.expectedSupplyDuration`` (days);
  MedicationStatement / MedicationAdministration ``effectivePeriod`` (or ``effectiveDateTime``).
- status: active, on-hold -> active; completed -> completed; stopped, cancelled -> stopped;
  MedicationStatement intended -> planned; MedicationRequest draft -> ordered, and intent plan / proposal ->
  planned while not completed or stopped. An *active* MedicationRequest with intent ``order`` is a current
  prescription (``active``), not a mere order: that is what "currently taking" criteria need to see.
  ``not-taken`` / ``not-done`` record a medicine that was not taken: no event. entered-in-error retracts.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from screener.events import Event

from ._base import (
    FHIRReject,
    UnresolvedReference,
    code,
    emit,
    encounter,
    first_time,
    ids,
    period_end,
    quantity,
    subject,
)
from ._clinical import route

__all__ = ["HANDLERS", "dose_of"]

_STATUS = {
    "active": "active",
    "on-hold": "active",
    "completed": "completed",
    "stopped": "stopped",
    "cancelled": "stopped",
    "intended": "planned",
    "draft": "ordered",
    "in-progress": "active",
    "unknown": "active",
}


def dose_of(q: Any, path: str, rtype: str) -> dict[str, Any] | None:
    """A dose Quantity -> ``{value, unit}`` (None when absent or negative)."""
    if not isinstance(q, dict) or q.get("value") is None:
        return None
    value, unit = quantity(q, path, rtype)
    if value < 0:
        return None
    return {"value": value, "unit": unit}


def _dosage(res: dict[str, Any], rtype: str, path: str) -> tuple[dict[str, Any] | None, str | None]:
    if rtype == "MedicationAdministration":
        dosage = res.get("dosage")
        if not isinstance(dosage, dict):
            return None, None
        return dose_of(dosage.get("dose"), f"{path}.dosage.dose", rtype), route(dosage.get("route"))
    key = "dosageInstruction" if rtype == "MedicationRequest" else "dosage"
    items = res.get(key) or []
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        return None, None
    first = items[0]
    dose = None
    rates = first.get("doseAndRate") or []
    if isinstance(rates, list) and rates and isinstance(rates[0], dict):
        dose = dose_of(rates[0].get("doseQuantity"), f"{path}.{key}[0].doseAndRate[0].doseQuantity", rtype)
    return dose, route(first.get("route"))


def _medication_code(res: dict[str, Any], path: str, rtype: str, bundle: dict[str, dict[str, Any]]) -> dict[str, str]:
    if "medicationCodeableConcept" in res:
        return code(res["medicationCodeableConcept"], f"{path}.medicationCodeableConcept", rtype)
    if "medicationReference" not in res:
        raise FHIRReject("medication[x] is required", path=f"{path}.medication[x]", resource_type=rtype)
    ref = res["medicationReference"].get("reference", "") if isinstance(res["medicationReference"], dict) else ""
    med = None
    if isinstance(ref, str) and ref.startswith("#"):
        med = next((c for c in res.get("contained") or [] if isinstance(c, dict) and c.get("id") == ref[1:]), None)
    elif isinstance(ref, str):
        med = bundle.get(ref) or bundle.get(ref.removeprefix("urn:uuid:"))
    if not isinstance(med, dict):
        raise UnresolvedReference(
            "medicationReference cannot be resolved (send the Medication in the Bundle or contained)",
            path=f"{path}.medicationReference",
            resource_type=rtype,
        )
    return code(med.get("code"), f"{path}.medicationReference(Medication).code", rtype)


def _plus_days(start: str, days: float) -> str:
    if "T" in start:
        return (datetime.fromisoformat(start) + timedelta(days=days)).isoformat()
    return (date.fromisoformat(start) + timedelta(days=max(0, round(days)))).isoformat()


def _request_period(res: dict[str, Any], path: str, rtype: str) -> tuple[str | None, str | None]:
    raw = res.get("dispenseRequest")
    dispense: dict[str, Any] = raw if isinstance(raw, dict) else {}
    start = first_time(res, path, rtype, "authoredOn") or first_time(
        dispense, f"{path}.dispenseRequest", rtype, "validityPeriod"
    )
    end = period_end(dispense, "validityPeriod", f"{path}.dispenseRequest", rtype)
    supply = dispense.get("expectedSupplyDuration")
    if end is None and start is not None and isinstance(supply, dict) and isinstance(supply.get("value"), int | float):
        factor = {"d": 1, "wk": 7, "mo": 30, "a": 365}.get(str(supply.get("code") or supply.get("unit") or "d"), 1)
        if supply["value"] >= 0:
            end = _plus_days(start, float(supply["value"]) * factor)
    return start, end


def _medication(
    res: dict[str, Any], path: str, rtype: str, full_url: str | None, bundle: dict[str, dict[str, Any]], now: datetime
) -> list[Event]:
    status = res.get("status")
    if status in ("not-taken", "not-done"):
        return []
    patient = subject(res, path, rtype)
    drug = _medication_code(res, path, rtype, bundle)
    if rtype == "MedicationRequest":
        start, end = _request_period(res, path, rtype)
    else:
        start = first_time(res, path, rtype, "effectiveDateTime", "effectivePeriod", "dateAsserted")
        end = period_end(res, "effectivePeriod", path, rtype)
    mapped = _STATUS.get(str(status), "active")
    if rtype == "MedicationRequest" and res.get("intent") in ("plan", "proposal") and mapped == "active":
        mapped = "planned"
    if rtype == "MedicationAdministration" and status in (None, "unknown"):
        mapped = "completed"
    dose, route_ = _dosage(res, rtype, path)
    event_id, corrects = ids(res, rtype, full_url)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "drug",
        "patient_id": patient,
        "occurred_at": start or now.isoformat(),
        "ended_at": end,
        "code": drug,
        "status": mapped,
        "dose": dose,
        "route": route_,
        "encounter_id": encounter(res, path, rtype),
    }
    return emit(base, status, path, rtype)


HANDLERS: dict[str, Any] = {
    "MedicationRequest": _medication,
    "MedicationStatement": _medication,
    "MedicationAdministration": _medication,
}
