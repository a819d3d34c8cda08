"""FHIR R4 JSON -> canonical events. Pure: no HTTP, no Kafka.

Accepted payloads: a single resource; a Bundle of type batch, transaction, collection, searchset, history or
message (entries' ``resource`` are read, ``request``-only entries such as DELETE are ignored); an R4 backport
Subscription notification (a ``history`` Bundle whose first entry is the ``SubscriptionStatus`` Parameters:
that entry is skipped, the rest are read). Resource types turned into events:

===================  ==========================================================================================
Patient              ``person`` (birthDate, gender, NHS number from ``https://fhir.nhs.uk/Id/nhs-number`` when
                     its modulus 11 check passes, UK Core ethnic category extension, postcode district) and a
                     ``death`` event when ``deceasedDateTime`` is set
Condition            ``condition`` (ICD-10 preferred over SNOMED; onset, else recordedDate; clinicalStatus
                     inactive/remission/resolved -> resolved; verificationStatus entered-in-error/refuted ->
                     entered-in-error)
Observation          ``measurement`` per valueQuantity (and per component), ``observation`` for text/coded
                     values; LOINC preferred; status entered-in-error retracts; cancelled is skipped
MedicationRequest,   ``drug`` (dm+d, ATC, SNOMED; other systems such as RxNorm travel as ``local`` ``SYS:code``);
MedicationStatement  a ``medicationReference`` is resolved against contained resources and the Bundle
Encounter            ``visit`` (class IMP/EMER/ACUTE/OBSENC/SS/AMB -> hospital, HH/VR -> home)
Procedure            ``procedure`` (SNOMED, OPCS-4); not-done is skipped
===================  ==========================================================================================

Every resource may carry its care setting and site as ``meta.tag`` codings (a tag whose code is one of
hospital, community, primary-care, home; a tag whose system ends in ``/site``); these win over inference.
Other resource types inside a Bundle (Organization, Claim, ...) are skipped and counted; a lone resource of
another type is rejected. The patient id is the last path segment of the subject reference (``Patient/123``
and Synthea's ``urn:uuid:...`` both work), i.e. the Patient's logical id on the sending server.

Timestamps without an offset (and bare dates) are read as Europe/London time. Any invalid entry rejects the
whole payload with a :class:`FHIRReject` naming the resource and the FHIRPath-like location
(``Bundle.entry[3].resource.subject``).

Versions: a resource with ``meta.versionId`` N > 1 gets event id ``<base>-vN`` and ``corrects`` the id of
version N-1, so updates replace; an ``entered-in-error`` status emits a retraction of the base id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from screener.errors import EventError
from screener.events import SETTINGS, Event, parse_event
from screener.sources.common import (
    ethnic_group_for_category,
    is_valid_nhs_number,
    local_to_utc,
    normalise_nhs_number,
    postcode_district,
    stable_id,
)

__all__ = ["SUPPORTED", "FHIRReject", "ParsedPayload", "parse_payload", "parse_resource"]

SOURCE = "fhir"
SUPPORTED = frozenset(
    {"Patient", "Condition", "Observation", "MedicationRequest", "MedicationStatement", "Encounter", "Procedure"}
)
BUNDLE_TYPES = frozenset({"batch", "transaction", "collection", "searchset", "history", "message"})
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_ETHNIC_EXT = ("Extension-UKCore-EthnicCategory", "Extension-CareConnect-EthnicCategory")
_SYSTEMS: tuple[tuple[str, str], ...] = (
    ("http://hl7.org/fhir/sid/icd-10", "ICD10"),
    ("icd-10", "ICD10"),
    ("icd10", "ICD10"),
    ("http://snomed.info/sct", "SNOMED"),
    ("http://loinc.org", "LOINC"),
    ("dmd", "DMD"),
    ("http://www.whocc.no/atc", "ATC"),
    ("opcs-4", "OPCS4"),
    ("opcs4", "OPCS4"),
)
_PREFERENCE = {"ICD10": 0, "LOINC": 0, "DMD": 0, "ATC": 1, "OPCS4": 1, "SNOMED": 2, "local": 9}
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
_FHIR_DT = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


class FHIRReject(EventError):
    """A payload screener will not accept. ``status`` is the HTTP status (400 or 422); ``path`` the location."""

    def __init__(self, message: str, *, path: str, resource_type: str | None = None, status: int = 422) -> None:
        self.status = status
        self.path = path
        self.resource_type = resource_type
        what = f"{resource_type} at {path}" if resource_type else path
        self.reason = f"{what}: {message}"
        super().__init__(self.reason, field=path, source=SOURCE)


@dataclass
class ParsedPayload:
    """What one payload yielded: events, how many resources were read, and skipped resource types."""

    events: list[Event] = field(default_factory=list)
    resources: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bundle_type: str | None = None
    entries: int = 0


# --- helpers -----------------------------------------------------------------------------------------
def _dt(value: Any, path: str, rtype: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _FHIR_DT.match(value):
        raise FHIRReject(
            "not a FHIR date/dateTime (YYYY[-MM[-DD[Thh:mm:ss[.sss][Z|+hh:mm]]]])", path=path, resource_type=rtype
        )
    try:
        if len(value) == 4:
            return local_to_utc(date(int(value), 1, 1))
        if len(value) == 7:
            return local_to_utc(date(int(value[:4]), int(value[5:7]), 1))
        if len(value) == 10:
            return local_to_utc(date.fromisoformat(value))
        return local_to_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError as exc:
        raise FHIRReject(f"invalid date: {exc}", path=path, resource_type=rtype) from exc


def _first_time(res: dict[str, Any], path: str, rtype: str, *keys: str) -> datetime | None:
    for key in keys:
        if key.endswith("Period"):
            period = res.get(key)
            if isinstance(period, dict) and period.get("start"):
                return _dt(period["start"], f"{path}.{key}.start", rtype)
        elif res.get(key) is not None:
            return _dt(res[key], f"{path}.{key}", rtype)
    return None


def _system(uri: str) -> str:
    low = uri.lower()
    for needle, name in _SYSTEMS:
        if needle in low:
            return name
    return "local"


def _code(concept: Any, path: str, rtype: str) -> dict[str, str]:
    """The best coding of a CodeableConcept as a canonical code."""
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
        if system == "local":
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


def _ref_id(ref: Any, path: str, rtype: str) -> str:
    if not isinstance(ref, dict):
        raise FHIRReject("a reference to the patient is required", path=path, resource_type=rtype)
    target = ref.get("reference")
    if isinstance(target, str) and target.strip():
        tail = target.strip().rstrip("/").split("/")[-1]
        if "/_history" in target:
            tail = target.split("/_history")[0].rstrip("/").split("/")[-1]
        tail = tail.removeprefix("urn:uuid:")
        if tail:
            return tail[:64]
    ident = ref.get("identifier")
    if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"].strip():
        return str(ident["value"]).strip()[:64]
    raise FHIRReject("reference has no usable target", path=f"{path}.reference", resource_type=rtype)


def _ids(res: dict[str, Any], rtype: str, full_url: str | None) -> tuple[str, str | None]:
    """(event id, corrects) from the resource id / fullUrl and meta.versionId."""
    rid = res.get("id") or full_url or json.dumps(res, sort_keys=True)
    base = stable_id(SOURCE, rtype, rid)
    version = str((res.get("meta") or {}).get("versionId") or "")
    if version.isdigit() and int(version) > 1:
        prev = int(version) - 1
        return f"{base}-v{version}", (base if prev == 1 else f"{base}-v{prev}")
    return base, None


def _make(path: str, rtype: str, **fields: Any) -> Event:
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.setdefault("source", SOURCE)
    try:
        return parse_event(fields, source=SOURCE)
    except EventError as exc:
        raise FHIRReject(f"cannot build a {fields.get('kind')} event: {exc}", path=path, resource_type=rtype) from exc


def _retraction(base: dict[str, Any], path: str, rtype: str) -> Event:
    return _make(
        path,
        rtype,
        **{**base, "event_id": f"{base['event_id']}-eie", "corrects": base["event_id"], "status": "entered-in-error"},
    )


# --- per resource ------------------------------------------------------------------------------------
def parse_resource(
    res: Any,
    path: str = "$",
    *,
    full_url: str | None = None,
    bundle: dict[str, dict[str, Any]] | None = None,
    now: datetime | None = None,
) -> list[Event] | None:
    """Events for one resource, or ``None`` for a resource type screener does not read.

    :raises FHIRReject: naming the resource type and location when the resource is invalid.
    """
    if not isinstance(res, dict):
        raise FHIRReject("a resource must be a JSON object", path=path, status=400)
    rtype = res.get("resourceType")
    if not isinstance(rtype, str):
        raise FHIRReject("resourceType is missing", path=f"{path}.resourceType", status=400)
    if rtype == "Bundle" and path != "$":
        return None
    if rtype not in SUPPORTED:
        return None
    handler = _HANDLERS[rtype]
    try:
        events: list[Event] = handler(res, path, rtype, full_url, bundle or {}, now or datetime.now(UTC))
        setting, site = _tags(res)
        if setting or site:
            events = [
                e.model_copy(update={"setting": e.setting or setting, "site": e.site or site})
                if e.kind != "person"
                else e
                for e in events
            ]
        return events
    except FHIRReject:
        raise
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
        # an element of the wrong JSON type (a number where a list belongs, ...) somewhere we did not check
        raise FHIRReject(
            f"malformed element ({type(exc).__name__}: {str(exc)[:80]})", path=path, resource_type=rtype
        ) from exc


def _patient(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    pid = res.get("id") or (full_url or "").removeprefix("urn:uuid:").rsplit("/", 1)[-1]
    if not pid:
        raise FHIRReject("a Patient needs an id (or a fullUrl in a Bundle)", path=f"{path}.id", resource_type=rtype)
    person: dict[str, Any] = {}
    if res.get("birthDate") is not None:
        bd = res["birthDate"]
        if not isinstance(bd, str) or not re.match(r"^\d{4}-\d{2}-\d{2}$", bd):
            raise FHIRReject("birthDate must be YYYY-MM-DD", path=f"{path}.birthDate", resource_type=rtype)
        try:
            person["birth_date"] = date.fromisoformat(bd).isoformat()
        except ValueError as exc:
            raise FHIRReject(f"invalid birthDate: {exc}", path=f"{path}.birthDate", resource_type=rtype) from exc
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
            code = codings[0].get("code") if codings and isinstance(codings[0], dict) else None
            group, letter = ethnic_group_for_category(code if isinstance(code, str) else None)
            if group:
                person["ethnic_group"], person["ethnic_category"] = group, letter
    for addr in res.get("address") or []:
        if isinstance(addr, dict) and (district := postcode_district(addr.get("postalCode"))):
            person["postcode_district"] = district
            break
    event_id, corrects = _ids(res, rtype, full_url)
    last = (res.get("meta") or {}).get("lastUpdated")
    when = (_dt(last, f"{path}.meta.lastUpdated", rtype) if last else None) or now
    out = [
        _make(
            path,
            rtype,
            event_id=event_id,
            kind="person",
            patient_id=str(pid)[:64],
            occurred_at=when.isoformat(),
            person=person,
        )
    ]
    if res.get("deceasedDateTime") is not None or res.get("deceasedBoolean") is True:
        died = _dt(res.get("deceasedDateTime"), f"{path}.deceasedDateTime", rtype) or when
        out.append(
            _make(
                path,
                rtype,
                event_id=f"{event_id}-death",
                kind="death",
                patient_id=str(pid)[:64],
                occurred_at=died.isoformat(),
            )
        )
    del corrects  # person events replace demographics anyway
    return out


def _tags(res: dict[str, Any]) -> tuple[str | None, str | None]:
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


def _subject(res: dict[str, Any], path: str, rtype: str) -> str:
    key = "patient" if "patient" in res and "subject" not in res else "subject"
    return _ref_id(res.get(key), f"{path}.{key}", rtype)


def _condition(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    patient = _subject(res, path, rtype)
    code = _code(res.get("code"), f"{path}.code", rtype)
    when = _first_time(res, path, rtype, "onsetDateTime", "onsetPeriod", "recordedDate") or now
    clinical = _status_code(res.get("clinicalStatus"))
    verification = _status_code(res.get("verificationStatus"))
    event_id, corrects = _ids(res, rtype, full_url)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "condition",
        "patient_id": patient,
        "occurred_at": when.isoformat(),
        "code": code,
        "status": "resolved" if clinical in ("inactive", "remission", "resolved") else "active",
    }
    if verification in ("entered-in-error", "refuted"):
        return [_retraction(base, path, rtype)]
    return [_make(path, rtype, **base)]


def _status_code(concept: Any) -> str | None:
    if isinstance(concept, dict):
        for c in concept.get("coding") or []:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                return str(c["code"])
    return None


def _quantity(q: Any, path: str, rtype: str) -> tuple[float, str | None]:
    if not isinstance(q, dict) or not isinstance(q.get("value"), int | float) or isinstance(q.get("value"), bool):
        raise FHIRReject("valueQuantity.value must be a number", path=f"{path}.value", resource_type=rtype)
    # the human unit first: rule files declare units as labs print them (mL/min/1.73m2, not mL/min/{1.73_m2})
    unit = q.get("unit") or q.get("code")
    return float(q["value"]), (str(unit)[:32] if unit else None)


def _observation(
    res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime
) -> list[Event]:
    status = res.get("status")
    if status == "cancelled":
        return []
    patient = _subject(res, path, rtype)
    code = _code(res.get("code"), f"{path}.code", rtype)
    when = _first_time(res, path, rtype, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued") or now
    event_id, corrects = _ids(res, rtype, full_url)
    common = {"patient_id": patient, "occurred_at": when.isoformat()}
    rows: list[dict[str, Any]] = []
    if "valueQuantity" in res:
        value, unit = _quantity(res["valueQuantity"], f"{path}.valueQuantity", rtype)
        rows.append({"kind": "measurement", "code": code, "value": value, "unit": unit})
    elif "valueCodeableConcept" in res:
        vc = res["valueCodeableConcept"]
        text = vc.get("text") if isinstance(vc, dict) else None
        if not text:
            text = _code(vc, f"{path}.valueCodeableConcept", rtype)["value"]
        rows.append({"kind": "observation", "code": code, "value": str(text)[:1000]})
    elif any(k in res for k in ("valueString", "valueBoolean", "valueInteger")):
        raw = res.get("valueString", res.get("valueBoolean", res.get("valueInteger")))
        kind = "measurement" if isinstance(raw, int) and not isinstance(raw, bool) else "observation"
        rows.append({"kind": kind, "code": code, "value": raw if kind == "measurement" else str(raw)[:1000]})
    for i, comp in enumerate(res.get("component") or []):
        cpath = f"{path}.component[{i}]"
        if not isinstance(comp, dict):
            raise FHIRReject("component must be an object", path=cpath, resource_type=rtype)
        if "valueQuantity" not in comp:
            continue
        ccode = _code(comp.get("code"), f"{cpath}.code", rtype)
        value, unit = _quantity(comp["valueQuantity"], f"{cpath}.valueQuantity", rtype)
        rows.append({"kind": "measurement", "code": ccode, "value": value, "unit": unit, "suffix": f"-c{i}"})
    if not rows:
        rows.append({"kind": "observation", "code": code})
    out = []
    for row in rows:
        suffix = row.pop("suffix", "")
        base = {
            **common,
            **row,
            "event_id": f"{event_id}{suffix}",
            "corrects": f"{corrects}{suffix}" if corrects else None,
        }
        out.append(_retraction(base, path, rtype) if status == "entered-in-error" else _make(path, rtype, **base))
    return out


def _medication(
    res: dict[str, Any], path: str, rtype: str, full_url: str | None, bundle: dict[str, dict[str, Any]], now: datetime
) -> list[Event]:
    patient = _subject(res, path, rtype)
    if "medicationCodeableConcept" in res:
        code = _code(res["medicationCodeableConcept"], f"{path}.medicationCodeableConcept", rtype)
    elif "medicationReference" in res:
        ref = (
            (res["medicationReference"] or {}).get("reference", "")
            if isinstance(res["medicationReference"], dict)
            else ""
        )
        med = None
        if isinstance(ref, str) and ref.startswith("#"):
            med = next((c for c in res.get("contained") or [] if isinstance(c, dict) and c.get("id") == ref[1:]), None)
        elif isinstance(ref, str):
            med = bundle.get(ref) or bundle.get(ref.removeprefix("urn:uuid:"))
        if not isinstance(med, dict):
            raise FHIRReject(
                "medicationReference cannot be resolved (send the Medication in the Bundle)",
                path=f"{path}.medicationReference",
                resource_type=rtype,
            )
        code = _code(med.get("code"), f"{path}.medicationReference(Medication).code", rtype)
    else:
        raise FHIRReject("medication[x] is required", path=f"{path}.medication[x]", resource_type=rtype)
    keys = ("authoredOn",) if rtype == "MedicationRequest" else ("effectiveDateTime", "effectivePeriod", "dateAsserted")
    when = _first_time(res, path, rtype, *keys) or now
    status = res.get("status")
    event_id, corrects = _ids(res, rtype, full_url)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "drug",
        "patient_id": patient,
        "occurred_at": when.isoformat(),
        "code": code,
        "status": "resolved" if status in ("completed", "stopped", "cancelled", "not-taken") else "active",
    }
    return [_retraction(base, path, rtype) if status == "entered-in-error" else _make(path, rtype, **base)]


def _encounter(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    patient = _subject(res, path, rtype)
    cls = res.get("class")
    cls_code = cls.get("code") if isinstance(cls, dict) else None
    when = now
    if "period" in res and isinstance(res["period"], dict) and res["period"].get("start"):
        when = _dt(res["period"]["start"], f"{path}.period.start", rtype) or now
    status = res.get("status")
    event_id, corrects = _ids(res, rtype, full_url)
    code = None
    if res.get("type"):
        types = res["type"] if isinstance(res["type"], list) else []
        if types:
            code = _code(types[0], f"{path}.type[0]", rtype)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "visit",
        "patient_id": patient,
        "occurred_at": when.isoformat(),
        "code": code,
        "setting": _tags(res)[0] or _ENCOUNTER_SETTING.get(str(cls_code or "").upper()),
        "status": "resolved" if status in ("finished", "cancelled") else "active",
    }
    return [_retraction(base, path, rtype) if status == "entered-in-error" else _make(path, rtype, **base)]


def _procedure(res: dict[str, Any], path: str, rtype: str, full_url: str | None, _b: Any, now: datetime) -> list[Event]:
    status = res.get("status")
    if status == "not-done":
        return []
    patient = _subject(res, path, rtype)
    code = _code(res.get("code"), f"{path}.code", rtype)
    when = _first_time(res, path, rtype, "performedDateTime", "performedPeriod") or now
    event_id, corrects = _ids(res, rtype, full_url)
    base = {
        "event_id": event_id,
        "corrects": corrects,
        "kind": "procedure",
        "patient_id": patient,
        "occurred_at": when.isoformat(),
        "code": code,
        "status": "active",
    }
    return [_retraction(base, path, rtype) if status == "entered-in-error" else _make(path, rtype, **base)]


_HANDLERS: dict[str, Any] = {
    "Patient": _patient,
    "Condition": _condition,
    "Observation": _observation,
    "MedicationRequest": _medication,
    "MedicationStatement": _medication,
    "Encounter": _encounter,
    "Procedure": _procedure,
}


# --- payloads ----------------------------------------------------------------------------------------
def _is_subscription_status(res: Any) -> bool:
    if not isinstance(res, dict):
        return False
    if res.get("resourceType") == "SubscriptionStatus":
        return True
    profiles = (res.get("meta") or {}).get("profile") or []
    return res.get("resourceType") == "Parameters" and any("subscription-status" in str(p) for p in profiles)


def iter_entries(payload: dict[str, Any]) -> Iterator[tuple[str, Any, str | None]]:
    """(path, resource, fullUrl) for each resource in a payload (the payload itself when not a Bundle)."""
    if payload.get("resourceType") != "Bundle":
        yield "$", payload, None
        return
    btype = payload.get("type")
    if not isinstance(btype, str) or btype not in BUNDLE_TYPES:
        raise FHIRReject(
            f"unsupported Bundle type {str(btype)[:30]!r}; expected one of {sorted(BUNDLE_TYPES)}",
            path="Bundle.type",
            resource_type="Bundle",
            status=400,
        )
    entries = payload.get("entry") or []
    if not isinstance(entries, list):
        raise FHIRReject("entry must be a list", path="Bundle.entry", resource_type="Bundle", status=400)
    for i, entry in enumerate(entries):
        epath = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict):
            raise FHIRReject("an entry must be an object", path=epath, resource_type="Bundle", status=400)
        res = entry.get("resource")
        if res is None:
            continue  # e.g. a DELETE request entry, or a notification entry without a resource
        if i == 0 and btype == "history" and _is_subscription_status(res):
            continue
        if isinstance(res, dict) and res.get("resourceType") == "Bundle":
            for sub_path, sub, url in iter_entries(res):
                yield f"{epath}.resource.{sub_path.removeprefix('Bundle.')}", sub, url
            continue
        url = entry.get("fullUrl")
        yield f"{epath}.resource", res, url if isinstance(url, str) else None


def parse_payload(payload: Any, *, now: datetime | None = None) -> ParsedPayload:
    """Events for a decoded JSON payload (resource or Bundle).

    :raises FHIRReject: 400 for a payload that is not FHIR JSON, 422 for an invalid supported resource.
    """
    if not isinstance(payload, dict):
        raise FHIRReject("the body must be a JSON object (a FHIR resource)", path="$", status=400)
    if "resourceType" not in payload:
        raise FHIRReject("resourceType is missing", path="$.resourceType", status=400)
    out = ParsedPayload(bundle_type=payload.get("type") if payload.get("resourceType") == "Bundle" else None)
    entries = list(iter_entries(payload))
    index: dict[str, dict[str, Any]] = {}
    for _path, res, url in entries:
        if isinstance(res, dict) and res.get("resourceType") == "Medication":
            if isinstance(url, str) and url:
                index[url] = res
                index[url.removeprefix("urn:uuid:")] = res
            if isinstance(res.get("id"), str):
                index[f"Medication/{res['id']}"] = res
    out.entries = len(entries)
    for path, res, url in entries:
        events = parse_resource(res, path, full_url=url, bundle=index, now=now)
        if events is None:
            rtype = str(res.get("resourceType")) if isinstance(res, dict) else "?"
            if payload.get("resourceType") != "Bundle":
                raise FHIRReject(
                    f"resource type {rtype[:40]} is not supported; send one of {sorted(SUPPORTED)}",
                    path="$.resourceType",
                    resource_type=rtype,
                )
            out.skipped[rtype] = out.skipped.get(rtype, 0) + 1
            continue
        out.resources += 1
        out.events.extend(events)
    return out
