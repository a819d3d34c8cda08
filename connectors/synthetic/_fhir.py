"""FHIR R4 Bundles for canonical events (the FHIR half of :mod:`connectors.synthetic._formats`; see its docstring)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from screener.events import Event

from ._formats import (
    _ENCOUNTER_CLASS,
    _ETHNIC_TEXT,
    _SEX_FHIR,
    _TEXT,
    _UCUM,
    _VITAL_SIGNS,
    CODE_SYSTEM_URIS,
    ETHNIC_CATEGORY_CODESYSTEM,
    ETHNIC_CATEGORY_EXTENSION,
    HOSPITAL_NUMBER_SYSTEM,
    IMD_DECILE_EXTENSION,
    LSOA_EXTENSION,
    NHS_NUMBER_SYSTEM,
    SETTING_TAG_SYSTEM,
    SITE_TAG_SYSTEM,
    UCUM,
    _iso,
    _name,
    _setting,
)

__all__ = ["to_fhir"]


# -- FHIR R4 ---------------------------------------------------------------------------------------------


def _coding(system: str, value: str) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": CODE_SYSTEM_URIS[system], "code": value}
    if value in _TEXT:
        coding["display"] = _TEXT[value]
    return coding


def _meta(event: Event) -> dict[str, Any]:
    if event.setting is None and event.kind != "person":  # e.g. a planned procedure: no care setting yet
        return {}
    setting, site = _setting(event)
    return {"tag": [{"system": SETTING_TAG_SYSTEM, "code": setting}, {"system": SITE_TAG_SYSTEM, "code": site}]}


def _patient(event: Event) -> dict[str, Any]:
    person = event.person
    assert person is not None
    family, given = _name(event.patient_id, person.sex, person.ethnic_group)
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "id": event.patient_id,
        "meta": _meta(event),
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "MR",
                            "display": "Medical record number",
                        }
                    ]
                },
                "system": HOSPITAL_NUMBER_SYSTEM,
                "value": event.patient_id,
            }
        ],
        "name": [{"use": "official", "family": family, "given": [given]}],
    }
    if person.nhs_number:
        res["identifier"].append({"use": "official", "system": NHS_NUMBER_SYSTEM, "value": person.nhs_number})
    if person.sex:
        res["gender"] = _SEX_FHIR[person.sex]
    if person.birth_date:
        res["birthDate"] = person.birth_date.isoformat()
    if person.postcode_district:
        res["address"] = [{"use": "home", "postalCode": person.postcode_district, "country": "GB"}]
    ext: list[dict[str, Any]] = []
    if person.ethnic_category:
        ext.append(
            {
                "url": ETHNIC_CATEGORY_EXTENSION,
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": ETHNIC_CATEGORY_CODESYSTEM,
                            "code": person.ethnic_category,
                            "display": _ETHNIC_TEXT.get(person.ethnic_category, person.ethnic_category),
                        }
                    ]
                },
            }
        )
    if person.imd_decile is not None:
        ext.append({"url": IMD_DECILE_EXTENSION, "valueInteger": person.imd_decile})
    if person.lsoa:
        ext.append({"url": LSOA_EXTENSION, "valueString": person.lsoa})
    if ext:
        res["extension"] = ext
    return res


def _resource(event: Event) -> dict[str, Any] | None:
    subject = {"reference": f"Patient/{event.patient_id}"}
    retracts = event.status == "entered-in-error" and event.corrects is not None
    # A retraction is the original resource (same id) with status entered-in-error.
    base = {"id": event.corrects if retracts else event.event_id, "meta": _meta(event)}
    when = _iso(event.occurred_at)
    code = {"coding": [_coding(event.code.system, event.code.value)]} if event.code is not None else None
    if event.kind == "person":
        return _patient(event)
    if event.kind == "condition" and code is not None:
        clinical = "resolved" if event.status == "resolved" else "active"
        return {
            "resourceType": "Condition",
            **base,
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "entered-in-error" if retracts else "confirmed",
                    }
                ]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "encounter-diagnosis",
                        }
                    ]
                }
            ],
            "code": code,
            "subject": subject,
            "onsetDateTime": when,
            "recordedDate": when,
            **({"abatementDateTime": _iso(event.ended_at)} if event.ended_at is not None else {}),
            **_encounter_ref(event),
        }
    if event.kind in ("measurement", "observation") and code is not None:
        category = (
            "vital-signs"
            if event.code is not None and event.code.value in _VITAL_SIGNS
            else "survey"
            if event.unit == "{score}"
            else "laboratory"
        )
        res: dict[str, Any] = {
            "resourceType": "Observation",
            **base,
            "status": "entered-in-error" if retracts else "final",
            "category": [
                {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}
            ],
            "code": code,
            "subject": subject,
            "effectiveDateTime": when,
        }
        if isinstance(event.value, float | int):
            quantity: dict[str, Any] = {"value": event.value}
            if event.unit:
                quantity["unit"] = event.unit
                if (ucum := _UCUM.get(event.unit)) is not None:
                    quantity.update(system=UCUM, code=ucum)
            res["valueQuantity"] = quantity
        elif event.value_code is not None:
            res["valueCodeableConcept"] = {"coding": [_coding(event.value_code.system, event.value_code.value)]}
        elif isinstance(event.value, str):
            res["valueString"] = event.value
        if event.ref_low is not None or event.ref_high is not None:
            bounds = {"low": event.ref_low, "high": event.ref_high}
            res["referenceRange"] = [{k: {"value": v, "unit": event.unit} for k, v in bounds.items() if v is not None}]
        res.update(_encounter_ref(event))
        return res
    if event.kind == "drug" and code is not None:
        statement: dict[str, Any] = {
            "resourceType": "MedicationStatement",
            **base,
            "status": "entered-in-error" if retracts else ("completed" if event.status == "completed" else "active"),
            "medicationCodeableConcept": code,
            "subject": subject,
            "effectivePeriod": {"start": when, **({"end": _iso(event.ended_at)} if event.ended_at else {})},
            "dateAsserted": when,
        }
        dosage: dict[str, Any] = {}
        if event.route is not None:
            dosage["route"] = {"text": event.route}
        if event.dose is not None:
            dosage["doseAndRate"] = [{"doseQuantity": {"value": event.dose.value, "unit": event.dose.unit}}]
        if dosage:
            statement["dosage"] = [dosage]
        return statement
    if event.kind == "procedure" and code is not None:
        return {
            "resourceType": "Procedure",
            **base,
            "status": "preparation" if event.status == "planned" else "completed",
            "code": code,
            "subject": subject,
            "performedDateTime": when,
            **_encounter_ref(event),
        }
    if event.kind == "allergy" and code is not None:
        severity = {"255604002": "mild", "6736007": "moderate", "24484000": "severe"}
        sev = next((severity[q.value] for q in event.qualifiers or () if q.value in severity), None)
        allergy: dict[str, Any] = {
            "resourceType": "AllergyIntolerance",
            **base,
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}
                ]
            },
            "code": code,
            "patient": subject,
            "recordedDate": when,
        }
        if sev:
            allergy["reaction"] = [{"manifestation": [{"text": "reaction"}], "severity": sev}]
        return allergy
    if event.kind == "immunization" and code is not None:
        return {
            "resourceType": "Immunization",
            **base,
            "status": "completed",
            "vaccineCode": code,
            "patient": subject,
            "occurrenceDateTime": when,
            **_encounter_ref(event),
        }
    if event.kind == "visit":
        setting, site = _setting(event)
        klass, display = _ENCOUNTER_CLASS[setting]
        end = _iso(event.ended_at) if event.ended_at is not None else None
        return {
            "resourceType": "Encounter",
            **base,
            "status": "finished" if end else "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass, "display": display},
            "subject": subject,
            "period": {"start": when, **({"end": end} if end else {})},
            "location": [{"location": {"display": event.location or site}}],
        }
    return None  # consent, death and registration events are not rendered as FHIR resources here


def _encounter_ref(event: Event) -> dict[str, Any]:
    """``encounter`` pointing at the visit's Encounter (whose id is the visit's event id), when there is one."""
    if event.encounter_id is None or event.kind == "visit":
        return {}
    return {"encounter": {"reference": f"Encounter/{event.encounter_id}"}}


def to_fhir(events: Sequence[Event] | Iterable[Event], *, bundle_type: str = "transaction") -> dict[str, Any]:
    """A FHIR R4 Bundle (``transaction`` of PUTs, or ``collection``) for the events; see the module docstring."""
    if bundle_type not in ("transaction", "collection"):
        raise ValueError("bundle_type must be 'transaction' or 'collection'")
    entries: list[dict[str, Any]] = []
    for ev in events:
        res = _resource(ev)
        if res is None:
            continue
        rtype, rid = res["resourceType"], res["id"]
        entry: dict[str, Any] = {"fullUrl": f"urn:uuid:{_uuid(f'{rtype}/{rid}')}", "resource": res}
        if bundle_type == "transaction":
            entry["request"] = {"method": "PUT", "url": f"{rtype}/{rid}"}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": bundle_type, "entry": entries}


def _uuid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:screener:synthetic:" + name))
