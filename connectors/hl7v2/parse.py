"""HL7 v2 message -> canonical events. Pure: no sockets, no Kafka.

Supported: ADT A01 (admit), A03 (discharge), A04 (register), A08 (update), A28 (add person), A31 (update
person), A40 (merge: a ``person`` event for the surviving id with ``person.merged_from`` = MRG-1), ORU^R01
(results), OMP^O09, RDE^O11/O25 and RAS^O17 (medication orders and administrations) and VXU^V04 (vaccinations).

Segments read (the full mapping table is in ``docs/connectors.md``):

- MSH: 4 sending facility (site), 7 message time, 9 type, 10 control id, 12 version.
- PID: 3 identifiers (CX repetitions). The hospital identifier (type MR/PI/PT/PN, else the first that is not
  an NHS number) becomes ``patient_id``; an NHS number (type NH, authority NHS or the NHS OID) travels in the
  person event only, and only when its modulus 11 check digit is right (a wrong one is dropped, not fatal).
  7 birth date (more than 120 years ago or in the future: rejected), 8 sex (F M O U; A -> O, N -> U),
  11 address (5 = postcode -> postcode district), 22 NHS ethnic category: only an exact NHS code (a letter,
  or a letter and one more character for the extended codes) counts; anything else (``HIS``) is unknown with a
  warning, never read by its first letter. 29/30 death time/indicator (-> ``death`` event).
- PV1: 2 patient class, 3 assigned location (point of care/room/bed -> ``location``; facility -> ``site``),
  19 visit number (-> ``encounter_id`` on every fact of the message, and the visit event's identity),
  44/45 admit/discharge times (the visit's ``occurred_at`` / ``ended_at``). Location prefix, then patient
  class, decide ``setting`` via the mapping file. A01/A04 open the visit, A03 closes it (``completed``, same
  event id as the admission when PV1-19 is given, so the admission is replaced, not left open).
- PD1, DG1, AL1: see :mod:`connectors.hl7v2._clinical`. ORC/RX*: see :mod:`connectors.hl7v2._pharmacy`.
- OBR/OBX: see :mod:`connectors.hl7v2._obx`. Status ``C`` is a correction (the same event id as the final, so
  it replaces it and any earlier correction), ``W`` / ``D`` entered in error (``status: entered-in-error`` +
  ``corrects``, also retracting the preliminary and the abnormal-flag fact), ``P`` preliminary (a later final or
  correction retracts it), ``X`` (no result) is skipped. An abnormal flag other than N becomes an
  ``observation`` event (code ``local/abnormal-flag:<code>``, value = the flag) beside the measurement.
- MRG: 1 prior patient identifier (A40).

Every other segment type in an accepted message is counted in ``ParsedMessage.unmapped`` (and, by the
listener, in ``screener_connector_unmapped_total``), never dropped silently. A batch header (FHS/BHS) or
trailer (BTS/FTS) inside a message rejects that message (AE): a batch is FHS/BHS, messages, BTS/FTS.

Timestamps without an offset are interpreted in **Europe/London** (GMT/BST) and converted to UTC; a value
with date precision only stays a calendar date. A field that cannot be read (bad date, non-numeric NM value)
rejects the whole message with ``AE`` and a reason naming the segment and field (never echoing a demographic
value); an unsupported message type is rejected with ``AR``. An unknown PID-8 sex is read as ``U`` with a
warning. An OBX-3 code without a recognised coding system but with LOINC's shape (``1554-5``) is LOINC.

Event ids are stable hashes of what identifies the fact (sending facility, order number, code, sub-id), so a
re-sent message yields the same ids and the engine applies it once.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import hl7

from connectors._common import birth_date_problem, strict_ethnic_category
from screener.events import Event
from screener.sources.common import (
    is_valid_nhs_number,
    normalise_nhs_number,
    postcode_district,
    stable_id,
)

from ._base import SOURCE, Ctx, HL7Reject, ParsedMessage, get, parse_date, parse_hl7_datetime, reps, when
from ._clinical import allergies, diagnoses, registration
from ._obx import observations
from ._pharmacy import PHARMACY_SEGMENTS, pharmacy
from .codemap import DEFAULT_CODE_MAP, CodeMap, default_code_map, load_code_map

__all__ = [
    "ADT_EVENTS",
    "DEFAULT_CODE_MAP",
    "SOURCE",
    "CodeMap",
    "HL7Reject",
    "ParsedMessage",
    "load_code_map",
    "parse_hl7_datetime",
    "parse_message",
    "split_batch",
]

ADT_EVENTS = frozenset({"A01", "A03", "A04", "A08", "A28", "A31", "A40"})
#: A08 (update) and A28/A31 (person only) change demographics or diagnoses, not the visit itself.
_VISIT_EVENTS = {"A01": "admit", "A03": "discharge", "A04": "register"}
#: PV1-2 patient class (HL7 table 0004) -> the HL7 v3 ActEncounterCode that FHIR's Encounter.class uses, so
#: visits from both feeds carry the same code (``local/encounter-class:IMP``).
_CLASS = {"I": "IMP", "E": "EMER", "O": "AMB", "P": "PRENC", "B": "IMP", "R": "AMB", "C": "AMB", "N": "AMB"}
_PHARMACY_MESSAGES = {("OMP", "O09"), ("RDE", "O11"), ("RDE", "O25"), ("RAS", "O17"), ("VXU", "V04")}
_NHS_OID = "2.16.840.1.113883.2.1.4.1"
_HOSPITAL_ID_TYPES = ("MR", "PI", "PT", "PN", "MRN")
#: HL7 table 0001, plus the NHS Data Dictionary digits some English (and Australian) feeds send.
_SEX = {
    "F": "F",
    "M": "M",
    "O": "O",
    "U": "U",
    "A": "O",
    "N": "U",
    "X": "U",
    "1": "M",
    "2": "F",
    "9": "O",
    "0": "U",
    "3": "O",
    "": None,
}
_READ_SEGMENTS = frozenset({"MSH", "EVN", "PID", "PV1", "PD1", "DG1", "AL1", "MRG", "OBR", "OBX"} | PHARMACY_SEGMENTS)
_BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


# --- batches ---------------------------------------------------------------------------------------------
def split_batch(text: str) -> tuple[list[str], str | None]:
    """Split a block into messages. Returns ``(messages, batch_kind)``; batch_kind is FHS, BHS or None.

    FHS/BHS headers before the first message (or after a BTS/FTS closed the previous batch) and BTS/FTS
    trailers are the envelope and dropped; every ``MSH`` starts a new message. A header or trailer found
    inside a message (after its MSH, no trailer between) stays in that message, which the parser rejects.
    """
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 \t")
    lines = [ln for ln in text.split("\r") if ln.strip()]
    kind = None
    messages: list[list[str]] = []
    open_message = False
    for ln in lines:
        tag = ln[:3]
        if tag in ("FHS", "BHS") and not open_message:
            kind = kind or tag
            continue
        if tag in ("FTS", "BTS"):
            if open_message and any(seg[:3] in ("FHS", "BHS") for seg in messages[-1]):
                messages[-1].append(ln)  # closing a header nested inside the message: part of the bad message
                continue
            open_message = False
            continue
        if tag == "MSH" or not messages:
            messages.append([])
            open_message = True
        messages[-1].append(ln)
    return ["\r".join(m) + "\r" for m in messages], kind


# --- the parser ------------------------------------------------------------------------------------------
def parse_message(text: str, *, code_map: CodeMap | None = None, source: str = SOURCE) -> ParsedMessage:
    """Parse one HL7 v2 message (segments separated by CR) into canonical events.

    :raises HL7Reject: ``AE`` for unparseable input or invalid fields, ``AR`` for unsupported message types.
    """
    code_map = code_map or default_code_map()
    if not text.startswith("MSH") or len(text) < 8:
        raise HL7Reject("message does not start with an MSH segment", hl7_code="100", location="MSH^1")
    try:
        msg = hl7.parse(text)
    except Exception as exc:  # the hl7 parser raises bare exceptions on garbage
        raise HL7Reject(f"cannot parse message ({type(exc).__name__})", hl7_code="100") from exc
    names: list[str] = []
    for i, seg in enumerate(msg, 1):
        # A segment without a valid name (e.g. a stray separator line) would crash the hl7 library's lookups.
        name = str(seg[0]) if len(seg) else ""
        if not _SEGMENT_NAME.match(name):
            raise HL7Reject(f"segment {i} has no valid segment name", hl7_code="100", location=f"segment {i}")
        names.append(name)
    try:
        msh = msg.segment("MSH")
    except KeyError as exc:
        raise HL7Reject("no MSH segment", hl7_code="100", location="MSH^1") from exc
    control_id = get(msh, 10)
    for i, name in enumerate(names, 1):
        if name in _BATCH_SEGMENTS or (name == "MSH" and i > 1):
            raise HL7Reject(
                f"{name} inside a message: a batch envelope must enclose whole messages",
                hl7_code="100",
                location=f"{name}^1",
                control_id=control_id,
            )
    mtype, trigger = get(msh, 9, 1).upper(), get(msh, 9, 2).upper()
    if not mtype:
        raise HL7Reject("MSH-9 message type is empty", hl7_code="101", location="MSH^1^9", control_id=control_id)
    msg_time = parse_hl7_datetime(get(msh, 7), location="MSH^1^7") or datetime.now(UTC)
    ctx = Ctx(control_id, get(msh, 4) or get(msh, 3) or "unknown", msg_time, code_map, source, [])
    kind = f"{mtype}^{trigger}"
    try:
        if mtype == "ADT" and trigger in ADT_EVENTS:
            events = _adt(msg, trigger, ctx)
        elif mtype == "ORU" and trigger == "R01":
            events = _oru(msg, ctx)
        elif (mtype, trigger) in _PHARMACY_MESSAGES:
            events = _pharmacy_message(msg, ctx, vaccination=mtype == "VXU")
        else:
            raise HL7Reject(f"unsupported message type {kind}", ack_code="AR", hl7_code="200", location="MSH^1^9")
    except HL7Reject as exc:
        exc.control_id = control_id
        raise
    unmapped: dict[str, int] = {}
    for name in names:
        if name not in _READ_SEGMENTS:
            unmapped[name] = unmapped.get(name, 0) + 1
    return ParsedMessage(control_id, kind, events, ctx.warnings, msh, unmapped)


def _segments(msg: Any, name: str) -> list[Any]:
    try:
        return list(msg.segments(name))
    except KeyError:
        return []


def _patient(pid: Any, seq: int) -> tuple[str, str | None]:
    """(hospital id, valid NHS number or None) from PID-3 (and PID-2 as a fallback)."""
    hospital: str | None = None
    first_other: str | None = None
    nhs: str | None = None
    for r in range(1, max(reps(pid, 3), 1) + 1):
        ident, authority, id_type = get(pid, 3, 1, r), get(pid, 3, 4, r).upper(), get(pid, 3, 5, r).upper()
        if not ident:
            continue
        if id_type == "NH" or authority in ("NHS", _NHS_OID) or authority.startswith("NHS"):
            nhs = nhs or ident
        elif id_type in _HOSPITAL_ID_TYPES and hospital is None:
            hospital = ident
        elif first_other is None:
            first_other = ident
    hospital = hospital or first_other or get(pid, 2) or None
    if hospital is None:
        raise HL7Reject("no hospital patient identifier in PID-3", hl7_code="101", location=f"PID^{seq}^3")
    if len(hospital) > 64:
        raise HL7Reject("patient identifier longer than 64 characters", hl7_code="102", location=f"PID^{seq}^3")
    valid = normalise_nhs_number(nhs) if nhs and is_valid_nhs_number(nhs) else None
    return hospital, valid


def _visit_context(pv1: Any | None, ctx: Ctx) -> tuple[str | None, str | None]:
    """(setting, site) from PV1-3 (location) and PV1-2 (patient class); sets the context's visit fields."""
    if pv1 is None:
        return None, None
    ctx.encounter_id = get(pv1, 19, 1) or None
    if ctx.encounter_id is not None and len(ctx.encounter_id) > 64:  # never truncated: two visits could merge
        raise HL7Reject("visit number longer than 64 characters", hl7_code="102", location="PV1^1^19")
    place = [get(pv1, 3, c) for c in (1, 2, 3)]
    ctx.location = "/".join(p for p in place if p)[:64] or None
    facility, point = get(pv1, 3, 4).upper(), get(pv1, 3, 1).upper()
    for prefix, setting in sorted(ctx.code_map.location_prefix.items(), key=lambda kv: -len(kv[0])):
        if facility.startswith(prefix) or point.startswith(prefix):
            return setting, (facility or None)
    return ctx.code_map.patient_class.get(get(pv1, 2).upper()), (facility or None)


def _ethnic(pid: Any, loc: str, ctx: Ctx) -> tuple[str | None, str | None]:
    raw = get(pid, 22, 1).upper()
    if not raw:
        return None, None
    group, letter = strict_ethnic_category(raw)
    if group is None and not raw.startswith("Z"):
        ctx.warnings.append(f"{loc}^22: not an NHS ethnic category code; read as unknown")
    return group, letter


def _person_event(
    pid: Any, seq: int, ctx: Ctx, patient_id: str, nhs: str | None, *, merged_from: str | None, setting: str | None
) -> Event:
    loc = f"PID^{seq}"
    sex_raw = get(pid, 8).upper()
    if sex_raw not in _SEX:
        ctx.warnings.append(f"{loc}^8: unknown administrative sex read as U")
        sex_raw = "U"
    birth = parse_date(get(pid, 7), f"{loc}^7")
    if birth is not None and (problem := birth_date_problem(birth, ctx.msg_time)) is not None:
        raise HL7Reject(problem, hl7_code="102", location=f"{loc}^7")
    person: dict[str, Any] = {
        "birth_date": birth.isoformat() if birth else None,
        "sex": _SEX[sex_raw],
        "nhs_number": nhs,
        "merged_from": merged_from,
    }
    person["ethnic_group"], person["ethnic_category"] = _ethnic(pid, loc, ctx)
    person["postcode_district"] = postcode_district(get(pid, 11, 5))
    person = {k: v for k, v in person.items() if v is not None}
    return ctx.event(
        loc,
        event_id=stable_id(SOURCE, ctx.facility, ctx.control_id, "person", patient_id),
        kind="person",
        patient_id=patient_id,
        occurred_at=ctx.msg_time.isoformat(),
        person=person,
        setting=setting,
    )


def _death_event(pid: Any, seq: int, ctx: Ctx, patient_id: str) -> Event | None:
    at = when(get(pid, 29), location=f"PID^{seq}^29")
    if at is None and get(pid, 30).upper() != "Y":
        return None
    return ctx.event(
        f"PID^{seq}^29",
        event_id=stable_id(SOURCE, ctx.facility, "death", patient_id),
        kind="death",
        patient_id=patient_id,
        occurred_at=at or ctx.msg_time.isoformat(),
    )


def _visit_event(
    msg: Any, pv1: Any, trigger: str, ctx: Ctx, patient_id: str, setting: str | None, site: str | None
) -> Event:
    admit = when(get(pv1, 44), location="PV1^1^44")
    discharge = when(get(pv1, 45), location="PV1^1^45")
    evn = _segments(msg, "EVN")
    evn_time = when(get(evn[0], 2), location="EVN^1^2") if evn else None
    fallback = evn_time or ctx.msg_time.isoformat()
    if trigger == "A03":
        start, end, status = admit or discharge or fallback, discharge or fallback, "completed"
    else:
        start, end, status = admit or fallback, None, "active"
    cls = get(pv1, 2).upper()
    # one event per encounter: the discharge replaces the admission (same id) when PV1-19 names the visit
    identity = ctx.encounter_id or f"{ctx.control_id}-{trigger}"
    return ctx.event(
        "PV1^1",
        event_id=stable_id(SOURCE, ctx.facility, patient_id, identity, "visit"),
        kind="visit",
        patient_id=patient_id,
        occurred_at=start,
        ended_at=end,
        code={"system": "local", "value": f"encounter-class:{_CLASS.get(cls, cls or 'unknown')[:40]}"},
        status=status,
        setting=setting,
        site=site,
        encounter_id=ctx.encounter_id,
        location=ctx.location,
    )


def _adt(msg: Any, trigger: str, ctx: Ctx) -> list[Event]:
    pids = _segments(msg, "PID")
    if not pids:
        raise HL7Reject("ADT message without a PID segment", hl7_code="100", location="PID^1")
    pv1s = _segments(msg, "PV1")
    pv1 = pv1s[0] if pv1s else None
    setting, site = _visit_context(pv1, ctx)
    site = site or (ctx.facility if ctx.facility != "unknown" else None)
    events: list[Event] = []
    if trigger == "A40":
        mrgs = _segments(msg, "MRG")
        if not mrgs:
            raise HL7Reject("A40 merge without an MRG segment", hl7_code="100", location="MRG^1")
        for i, (pid, mrg) in enumerate(zip(pids, mrgs, strict=False), start=1):
            patient_id, nhs = _patient(pid, i)
            prior = get(mrg, 1, 1)
            if not prior:
                raise HL7Reject("MRG-1 prior patient identifier is empty", hl7_code="101", location=f"MRG^{i}^1")
            if prior == patient_id:
                raise HL7Reject("MRG-1 names the surviving patient itself", hl7_code="102", location=f"MRG^{i}^1")
            events.append(_person_event(pid, i, ctx, patient_id, nhs, merged_from=prior, setting=setting))
        return events
    pid = pids[0]
    patient_id, nhs = _patient(pid, 1)
    if nhs is None and any(get(pid, 3, 5, r).upper() == "NH" for r in range(1, reps(pid, 3) + 1)):
        ctx.warnings.append("invalid NHS number dropped (modulus 11)")
    events.append(_person_event(pid, 1, ctx, patient_id, nhs, merged_from=None, setting=setting))
    if (death := _death_event(pid, 1, ctx, patient_id)) is not None:
        events.append(death)
    events.extend(registration(msg, ctx, patient_id))
    visit = ctx.encounter_id or ctx.control_id
    if trigger in _VISIT_EVENTS and pv1 is not None:
        events.append(_visit_event(msg, pv1, trigger, ctx, patient_id, setting, site))
    events.extend(diagnoses(msg, ctx, patient_id, setting, site, visit))
    events.extend(allergies(msg, ctx, patient_id))
    events.extend(observations(msg, ctx, patient_id, setting, site, order_fallback=visit))
    return events


def _oru(msg: Any, ctx: Ctx) -> list[Event]:
    pids = _segments(msg, "PID")
    if not pids:
        raise HL7Reject("ORU message without a PID segment", hl7_code="100", location="PID^1")
    patient_id, _nhs = _patient(pids[0], 1)
    pv1s = _segments(msg, "PV1")
    setting, site = _visit_context(pv1s[0] if pv1s else None, ctx)
    site = site or (ctx.facility if ctx.facility != "unknown" else None)
    if not _segments(msg, "OBX"):
        raise HL7Reject("ORU^R01 without any OBX segment", hl7_code="100", location="OBX^1")
    return observations(msg, ctx, patient_id, setting, site, order_fallback=ctx.control_id)


def _pharmacy_message(msg: Any, ctx: Ctx, *, vaccination: bool) -> list[Event]:
    pids = _segments(msg, "PID")
    if not pids:
        raise HL7Reject("message without a PID segment", hl7_code="100", location="PID^1")
    patient_id, _nhs = _patient(pids[0], 1)
    pv1s = _segments(msg, "PV1")
    setting, site = _visit_context(pv1s[0] if pv1s else None, ctx)
    site = site or (ctx.facility if ctx.facility != "unknown" else None)
    events = pharmacy(msg, ctx, patient_id, setting, site, vaccination=vaccination)
    if not events and not ctx.warnings:
        raise HL7Reject("no RXO, RXE or RXA segment", hl7_code="100", location="RXE^1")
    events.extend(allergies(msg, ctx, patient_id))
    events.extend(observations(msg, ctx, patient_id, setting, site, order_fallback=ctx.control_id))
    return events
