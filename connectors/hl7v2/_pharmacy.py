"""Pharmacy and vaccination segments (ORC with RXO / RXE / RXA, RXR, TQ1) -> ``drug`` / ``immunization`` events.

Messages: OMP^O09 (order, RXO), RDE^O11 / RDE^O25 (pharmacy-encoded order, RXE), RAS^O17 (administration,
RXA), VXU^V04 (vaccination, RXA -> ``immunization``). An ORC starts an order group; RX* and RXR/TQ1 after it
belong to it.

============  ====================================  ====================================================
segment       code, dose                            time
============  ====================================  ====================================================
RXO           1 requested give code; 2 amount,      TQ1-7 start / TQ1-8 end, else ORC-15, else message
              4 units
RXE           2 give code; 3 amount, 5 units        TQ1-7 / TQ1-8, else RXE-1.4 / RXE-1.5, else ORC-15
RXA           5 administered code; 6 amount         3 start, 4 end (999 amount = unknown, left out)
              (999 = unknown), 7 units
RXR           1 route (HL7 table 0162; SCT codes) -> ``route``
============  ====================================  ====================================================

Status: RXO -> ``ordered``; RXE -> ``active`` (a verified prescription); RXA -> ``completed``. ORC overrides:
ORC-1 DC/OD/DR or ORC-5 DC -> ``stopped`` (ended at TQ1-8, else ORC-9, else the message time); ORC-1
CA/OC/CR or ORC-5 CA -> ``stopped`` ended at its start; ORC-5 CM -> ``completed``; ORC-5 SC -> ``ordered``.
RXA-20 RE/NA (refused, not administered) is not an administration: skipped with a warning. RXA-21 D (delete)
retracts the administration. An order's event id is per placer/filler order number and code, so a later
status message for the same order replaces the earlier one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connectors._common import route_from_hl7, route_from_snomed
from screener.events import Event
from screener.sources.common import stable_id

from ._base import Ctx, HL7Reject, coded, get, parse_hl7_datetime, when

__all__ = ["PHARMACY_SEGMENTS", "pharmacy"]

PHARMACY_SEGMENTS = frozenset({"ORC", "RXO", "RXE", "RXA", "RXR", "TQ1"})
_STOP = frozenset({"DC", "OD", "DR"})
_CANCEL = frozenset({"CA", "OC", "CR"})
_LOCAL_DRUG_SYSTEMS = frozenset({"CVX", "NDC", "MVX", "HL70292"})


def _drug_code(seg: Any, fld: int, loc: str) -> dict[str, str]:
    code = coded(seg, fld)
    if code is None:
        text = get(seg, fld, 2)
        if not text:
            raise HL7Reject(f"{loc[:3]}-{fld} drug code is empty", hl7_code="101", location=f"{loc}^{fld}")
        return {"system": "local", "value": text[:64]}
    raw_system = get(seg, fld, 3).upper()
    if code["system"] == "local" and raw_system in _LOCAL_DRUG_SYSTEMS:
        code = {"system": "local", "value": f"{raw_system}:{code['value']}"[:64]}
    return code


def _dose(seg: Any, amount: int, unit: int, ctx: Ctx, loc: str) -> dict[str, Any] | None:
    raw = get(seg, amount)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        ctx.warnings.append(f"{loc}^{amount}: dose amount is not a number; left out")
        return None
    if not value >= 0 or value == float("inf") or (loc.startswith("RXA") and value == 999):
        return None  # 999: "amount unknown" in CDC immunization messages
    unit_code = get(seg, unit, 1) or get(seg, unit, 2)
    return {"value": value, "unit": unit_code[:32] or "1"}


def _route(rxr: Any | None) -> str | None:
    if rxr is None:
        return None
    code = get(rxr, 1, 1)
    if get(rxr, 1, 3).upper() in ("SCT", "SNOMED", "SNOMEDCT"):
        return route_from_snomed(code) or "other"
    return route_from_hl7(code)


def _instant(value: str | None) -> datetime | None:
    return (
        datetime.fromisoformat(value)
        if value and "T" in value
        else (datetime.fromisoformat(value + "T00:00:00+00:00") if value else None)
    )


class _Group:
    """One order group: the ORC and the segments after it."""

    def __init__(self, orc: Any | None, seq: int) -> None:
        self.orc, self.seq = orc, seq
        self.items: list[tuple[str, Any, int]] = []  # (segment name, segment, seq of that name)
        self.rxr: dict[int, Any] = {}  # index in items -> its RXR
        self.tq1: Any | None = None


def _groups(msg: Any) -> list[_Group]:
    groups: list[_Group] = []
    counts: dict[str, int] = {}
    current: _Group | None = None
    for seg in msg:
        name = str(seg[0])
        if name not in PHARMACY_SEGMENTS:
            continue
        counts[name] = counts.get(name, 0) + 1
        if name == "ORC" or current is None:
            current = _Group(seg if name == "ORC" else None, counts.get("ORC", 0))
            groups.append(current)
            if name == "ORC":
                continue
        if name in ("RXO", "RXE", "RXA"):
            current.items.append((name, seg, counts[name]))
        elif name == "RXR" and current.items:
            current.rxr.setdefault(len(current.items) - 1, seg)
        elif name == "TQ1":
            current.tq1 = current.tq1 or seg
    return groups


def pharmacy(
    msg: Any, ctx: Ctx, patient_id: str, setting: str | None, site: str | None, *, vaccination: bool
) -> list[Event]:
    """Events for every RXO/RXE/RXA of the message."""
    out: list[Event] = []
    for group in _groups(msg):
        for index, (name, seg, seq) in enumerate(group.items):
            event = _item(group, name, seg, seq, ctx, patient_id, setting, site, group.rxr.get(index), vaccination)
            if event is not None:
                out.append(event)
    return out


def _item(
    group: _Group,
    name: str,
    seg: Any,
    seq: int,
    ctx: Ctx,
    patient_id: str,
    setting: str | None,
    site: str | None,
    rxr: Any | None,
    vaccination: bool,
) -> Event | None:
    loc = f"{name}^{seq}"
    orc, tq1 = group.orc, group.tq1
    orc_loc = f"ORC^{group.seq}"
    order_no = (get(orc, 2, 1) or get(orc, 3, 1)) if orc is not None else ""
    if name == "RXA":
        completion = get(seg, 20).upper()
        if completion in ("RE", "NA"):
            ctx.warnings.append(f"{loc}^20: not administered ({completion}); skipped")
            return None
        code = _drug_code(seg, 5, loc)
        start = when(get(seg, 3), location=f"{loc}^3")
        end = when(get(seg, 4), location=f"{loc}^4")
        dose, status = _dose(seg, 6, 7, ctx, loc), "completed"
    else:
        code = _drug_code(seg, 1 if name == "RXO" else 2, loc)
        tq_start = when(get(tq1, 7), location="TQ1^1^7") if tq1 is not None else None
        tq_end = when(get(tq1, 8), location="TQ1^1^8") if tq1 is not None else None
        if name == "RXE":
            tq_start = tq_start or when(get(seg, 1, 4), location=f"{loc}^1")
            tq_end = tq_end or when(get(seg, 1, 5), location=f"{loc}^1")
        start = tq_start or (when(get(orc, 15), location=f"{orc_loc}^15") if orc is not None else None)
        end = tq_end
        dose = _dose(seg, 2, 4, ctx, loc) if name == "RXO" else _dose(seg, 3, 5, ctx, loc)
        status = "ordered" if name == "RXO" else "active"
    start = start or ctx.msg_time.isoformat()
    if orc is not None:
        control, order_status = get(orc, 1).upper(), get(orc, 5).upper()
        if control in _CANCEL or order_status == "CA":
            status, end = "stopped", start
        elif control in _STOP or order_status == "DC":
            status = "stopped"
            if end is None:
                stamp = parse_hl7_datetime(get(orc, 9), location=f"{orc_loc}^9") or ctx.msg_time
                end = stamp.isoformat()
        elif order_status == "CM":
            status = "completed"
        elif order_status == "SC":
            status = "ordered"
    started, ended = _instant(start), _instant(end)
    if started is not None and ended is not None and ended < started:
        ctx.warnings.append(f"{loc}: end before start; end left out")
        end = None
    identity = order_no or f"{ctx.control_id}-{loc}"
    if name == "RXA":
        identity = f"{order_no}|{start}"
    base = stable_id(ctx.source, ctx.facility, patient_id, "rx", identity, code["value"])
    fields: dict[str, Any] = {
        "event_id": base,
        "kind": "immunization" if vaccination else "drug",
        "patient_id": patient_id,
        "occurred_at": start,
        "ended_at": end if end != start or status == "stopped" else None,
        "code": code,
        "status": status,
        "dose": dose,
        "route": _route(rxr),
        "setting": setting,
        "site": site,
        "encounter_id": ctx.encounter_id,
    }
    if name == "RXA" and get(seg, 21).upper() == "D":
        fields.update(event_id=f"{base}-eie", corrects=base, status="entered-in-error")
    return ctx.event(loc, **fields)
