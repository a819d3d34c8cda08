"""OBR/OBX -> ``measurement`` and ``observation`` events (ORU^R01, and OBX inside ADT messages).

OBX fields read: 2 value type, 3 code, 4 sub-id, 5 value, 6 units, 7 reference range, 8 abnormal flag,
11 result status, 14 observation time, 17 observation method. See :mod:`connectors.hl7v2.parse` for the
result-status semantics (corrections, entered in error, preliminary).

- OBX-7 ``low-high`` (``3.5-5.0``, ``70_105``, ``0.5 - 1.2``) -> ``ref_low`` / ``ref_high``; ``<5`` / ``<=5``
  -> ``ref_high`` only; ``>60`` -> ``ref_low`` only. Anything else (``negative``) is kept out with a warning.
- OBX-5 of type CE/CWE/CNE -> ``value_code`` (identifier in its coding system; ``LN`` answers such as
  ``LA11883-8`` are LOINC) and the text (component 2) as ``value``.
- OBX-17 (repeating CE) -> ``qualifiers`` (e.g. a post-bronchodilator method).
- Every fact carries the message's PV1-19 ``encounter_id`` and PV1-3 ``location`` when there is a PV1.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ._base import Ctx, HL7Reject, code_for, coded, get, parse_hl7_datetime, reps, when

__all__ = ["observations", "reference_range"]

_NUMERIC_TYPES = frozenset({"NM", "SN"})
_TEXT_TYPES = frozenset({"ST", "TX", "FT", "CE", "CWE", "CNE", "IS", "ID"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE"})
_LOINC = re.compile(r"^\d{1,7}-\d$")
_NUM = re.compile(r"^[<>]?=?\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_N = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"^\s*({_N})\s*(?:-|_|–|to)\s*({_N})\s*$")
_UPPER = re.compile(rf"^\s*<=?\s*({_N})\s*$")
_LOWER = re.compile(rf"^\s*>=?\s*({_N})\s*$")
_MAX_QUALIFIERS = 16


def reference_range(text: str) -> tuple[float | None, float | None] | None:
    """OBX-7 text -> (low, high); None when it is not a numeric range (a textual normal such as ``NEG``)."""
    if m := _RANGE.match(text):
        low, high = float(m.group(1)), float(m.group(2))
        return (low, high) if low <= high else None
    if m := _UPPER.match(text):
        return None, float(m.group(1))
    if m := _LOWER.match(text):
        return float(m.group(1)), None
    return None


def _looks_numeric(text: str) -> bool:
    return bool(_NUM.match(text.strip()))


def _numeric(obx: Any, vtype: str, loc: str) -> float:
    if vtype == "SN":
        comparator, number = get(obx, 5, 1), get(obx, 5, 2)
        raw = number or comparator
    else:
        raw = get(obx, 5)
    cleaned = raw.strip().lstrip("<>=").strip()
    try:
        value = float(cleaned)
    except ValueError as exc:
        raise HL7Reject(f"OBX-5 is not a number: {raw[:30]!r}", hl7_code="102", location=f"{loc}^5") from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise HL7Reject(f"OBX-5 is not a finite number: {raw[:30]!r}", hl7_code="102", location=f"{loc}^5")
    return value


def observations(
    msg: Any, ctx: Ctx, patient_id: str, setting: str | None, site: str | None, *, order_fallback: str
) -> list[Any]:
    """Events for every OBX of the message, each under the OBR that precedes it."""
    out: list[Any] = []
    order, obr_time = order_fallback, None
    obx_seq = 0
    for seg in msg:
        name = str(seg[0])
        if name == "OBR":
            order = get(seg, 3, 1) or get(seg, 2, 1) or order_fallback
            obr_time = parse_hl7_datetime(get(seg, 7), location="OBR^1^7")
        elif name == "OBX":
            obx_seq += 1
            out.extend(_obx(seg, obx_seq, ctx, patient_id, setting, site, order, obr_time))
    return out


def _code(obx: Any, ctx: Ctx) -> tuple[dict[str, str], str | None]:
    code_raw, code_sys = get(obx, 3, 1), get(obx, 3, 3)
    unit = get(obx, 6, 1) or None
    if code_sys.upper() in ("LN", "LOINC"):
        return {"system": "LOINC", "value": code_raw}, unit
    if (mapped := ctx.code_map.observations.get(code_raw.upper())) is not None:
        return {"system": "LOINC", "value": mapped[0]}, unit or mapped[1]
    generic = code_for(code_sys, code_raw)
    if _LOINC.match(code_raw) and generic["system"] == "local":
        # no (or a free-text) coding system, but the code has LOINC's shape: many labs send it like this
        return {"system": "LOINC", "value": code_raw}, unit
    return generic, unit


def _obx(
    obx: Any,
    seq: int,
    ctx: Ctx,
    patient_id: str,
    setting: str | None,
    site: str | None,
    order: str,
    obr_time: datetime | None,
) -> list[Any]:
    from screener.sources.common import stable_id

    loc = f"OBX^{seq}"
    status = get(obx, 11).upper()
    if status == "X":
        return []
    if not get(obx, 3, 1):
        raise HL7Reject("OBX-3 observation identifier is empty", hl7_code="101", location=f"{loc}^3")
    code, unit = _code(obx, ctx)
    vtype = get(obx, 2).upper()
    at = when(get(obx, 14), location=f"{loc}^14") or (obr_time or ctx.msg_time).isoformat()
    value: float | str | None
    value_code: dict[str, str] | None = None
    kind = "measurement"
    if vtype in _NUMERIC_TYPES or (not vtype and _looks_numeric(get(obx, 5))):
        value = _numeric(obx, vtype, loc)
    elif vtype in _TEXT_TYPES or not vtype:
        if vtype in _CODED_TYPES:
            value_code = coded(obx, 5)
            # the code travels in value_code; the value is the answer's text (the identifier only when uncoded)
            text = get(obx, 5, 2) if value_code is not None else get(obx, 5)
        else:
            text = get(obx, 5)
        value, kind = text[:1000] or None, "observation"
    elif _looks_numeric(get(obx, 5, 2) or get(obx, 5)):
        # a non-standard value type (e.g. "FN") carrying a number, as some labs send: read it like SN
        ctx.warnings.append(f"{loc}^2: non-standard value type read as numeric")
        value = _numeric(obx, "SN", loc)
    else:
        raise HL7Reject(f"unsupported OBX value type {vtype[:5]!r}", hl7_code="102", location=f"{loc}^2")
    low = high = None
    if kind == "measurement" and (ref_text := get(obx, 7)):
        rng = reference_range(ref_text)
        if rng is None:
            ctx.warnings.append(f"{loc}^7: reference range is not numeric; left out")
        else:
            low, high = rng
    qualifiers = [q for r in range(1, reps(obx, 17) + 1) if (q := coded(obx, 17, r)) is not None]
    base = stable_id(ctx.source, ctx.facility, patient_id, order, code["value"], get(obx, 4))
    ev: dict[str, Any] = {
        "kind": kind,
        "patient_id": patient_id,
        "occurred_at": at,
        "code": code,
        "value": value,
        "unit": unit if kind == "measurement" else None,
        "setting": setting,
        "site": site,
        "ref_low": low,
        "ref_high": high,
        "value_code": value_code,
        "qualifiers": qualifiers[:_MAX_QUALIFIERS] or None,
        "encounter_id": ctx.encounter_id,
        "location": ctx.location,
    }
    # Versions of one result share an identity (`base`): the final and every correction carry event id `base`,
    # so each later version replaces the one before (the state keeps the last copy of an event id) however many
    # corrections follow; both retract the preliminary (`base-p`). W/D retracts the result, its preliminary and
    # its abnormal-flag fact. A result posted as wrong stays retracted: a later version of it is ignored.
    if status in ("W", "D"):
        ev.update(event_id=f"{base}-w-{stable_id('m', ctx.control_id)[-12:]}", corrects=base, status="entered-in-error")
    elif status == "P":
        ev.update(event_id=f"{base}-p")
    else:
        ev.update(event_id=base, corrects=f"{base}-p")
    ev = {k: v for k, v in ev.items() if v is not None}
    out = [ctx.event(loc, **ev)]
    if status in ("W", "D"):
        for suffix in ("p", "flag", "p-flag"):
            out.append(
                ctx.event(loc, **{**ev, "event_id": f"{ev['event_id']}-{suffix}", "corrects": f"{base}-{suffix}"})
            )
    flag = get(obx, 8).upper()
    if flag and flag != "N" and kind == "measurement" and status not in ("W", "D"):
        out.append(
            ctx.event(
                f"{loc}^8",
                event_id=f"{ev['event_id']}-flag",
                kind="observation",
                patient_id=patient_id,
                occurred_at=at,
                code={"system": "local", "value": f"abnormal-flag:{code['value']}"},
                value=flag[:8],
                setting=setting,
                site=site,
                encounter_id=ctx.encounter_id,
                location=ctx.location,
                corrects=f"{ev['corrects']}-flag" if "corrects" in ev else None,
            )
        )
    return out
