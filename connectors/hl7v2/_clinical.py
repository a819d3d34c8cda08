"""DG1 (diagnoses), AL1 (allergies) and PD1 (GP registration) -> canonical events.

- DG1: 3 code (coding system 3.3: I10 -> ICD10, I9/I9C -> ICD9, SCT -> SNOMED, READ/CTV3 ...), 5 time.
- AL1: 2 allergen type (DA drug, FA food, EA environmental, MA/MC miscellaneous, LA pollen, AA animal, PA plant)
  -> qualifier ``local/allergen-type:<code>``; 3 allergen (CE; text alone becomes a ``local`` code);
  4 severity (SV/MO/MI) -> SNOMED qualifier (24484000 severe, 6736007 moderate, 255604002 mild);
  5 reaction text -> ``value``; 6 identification date -> ``occurred_at`` (a calendar date).
- PD1: 3 primary facility (the registered GP practice: ODS code in XON-10, else XON-3, else the name) ->
  a ``registration`` event (``local/gp-registration``, ``site`` = the practice). PD1 carries no registration
  date, so ``occurred_at`` is the message time: the patient was registered at least from then (a lower bound
  for ``registered_days``; the event id is per patient and practice, so a later message moves it forward).
"""

from __future__ import annotations

from typing import Any

from screener.events import Event
from screener.sources.common import stable_id

from ._base import Ctx, HL7Reject, code_for, coded, get, when

__all__ = ["allergies", "diagnoses", "registration"]

_SEVERITY = {
    "SV": ("24484000", "severe"),
    "MO": ("6736007", "moderate"),
    "MI": ("255604002", "mild"),
}


def _segments(msg: Any, name: str) -> list[Any]:
    try:
        return list(msg.segments(name))
    except KeyError:
        return []


def diagnoses(msg: Any, ctx: Ctx, patient_id: str, setting: str | None, site: str | None, visit: str) -> list[Event]:
    out = []
    for i, dg1 in enumerate(_segments(msg, "DG1"), start=1):
        code = get(dg1, 3, 1)
        if not code:
            raise HL7Reject("DG1-3 diagnosis code is empty", hl7_code="101", location=f"DG1^{i}^3")
        at = when(get(dg1, 5), location=f"DG1^{i}^5") or ctx.msg_time.isoformat()
        coded_ = code_for(get(dg1, 3, 3), code)
        out.append(
            ctx.event(
                f"DG1^{i}",
                event_id=stable_id(ctx.source, ctx.facility, patient_id, visit, "dg1", coded_["value"]),
                kind="condition",
                patient_id=patient_id,
                occurred_at=at,
                code=coded_,
                setting=setting,
                site=site,
                encounter_id=ctx.encounter_id,
            )
        )
    return out


def allergies(msg: Any, ctx: Ctx, patient_id: str) -> list[Event]:
    out = []
    for i, al1 in enumerate(_segments(msg, "AL1"), start=1):
        loc = f"AL1^{i}"
        code = coded(al1, 3)
        if code is None:
            text = get(al1, 3, 2)
            if not text:
                raise HL7Reject("AL1-3 allergen is empty", hl7_code="101", location=f"{loc}^3")
            code = {"system": "local", "value": text[:64]}
        qualifiers = []
        if kind := get(al1, 2, 1).upper():
            qualifiers.append({"system": "local", "value": f"allergen-type:{kind[:16]}"})
        if (severity := _SEVERITY.get(get(al1, 4, 1).upper())) is not None:
            qualifiers.append({"system": "SNOMED", "value": severity[0]})
        reaction = get(al1, 5, 1)
        out.append(
            ctx.event(
                loc,
                event_id=stable_id(ctx.source, ctx.facility, patient_id, "al1", code["system"], code["value"]),
                kind="allergy",
                patient_id=patient_id,
                occurred_at=when(get(al1, 6), location=f"{loc}^6") or ctx.msg_time.isoformat(),
                code=code,
                value=reaction[:1000] or None,
                qualifiers=qualifiers or None,
                encounter_id=ctx.encounter_id,
            )
        )
    return out


def registration(msg: Any, ctx: Ctx, patient_id: str) -> list[Event]:
    pd1s = _segments(msg, "PD1")
    if not pd1s:
        return []
    pd1 = pd1s[0]
    practice = get(pd1, 3, 10) or get(pd1, 3, 3) or get(pd1, 3, 1)
    if not practice:
        return []
    return [
        ctx.event(
            "PD1^1^3",
            event_id=stable_id(ctx.source, patient_id, "registration", practice),
            kind="registration",
            patient_id=patient_id,
            occurred_at=ctx.msg_time.isoformat(),
            code={"system": "local", "value": "gp-registration"},
            setting="primary-care",
            site=practice[:64],
        )
    ]
