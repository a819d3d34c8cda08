"""HL7 v2 message -> canonical events. Pure: no sockets, no Kafka.

Supported: ADT A01 (admit), A03 (discharge), A04 (register), A08 (update), A28 (add person), A31 (update
person), A40 (merge: a ``person`` event for the surviving id with ``person.merged_from`` = MRG-1), and ORU^R01.

Segments read:

- MSH: 4 sending facility (site), 7 message time, 9 type, 10 control id, 12 version.
- PID: 3 identifiers (CX repetitions). The hospital identifier (type MR/PI/PT/PN, else the first that is not
  an NHS number) becomes ``patient_id``; an NHS number (type NH, authority NHS or the NHS OID) travels in the
  person event only, and only when its modulus 11 check digit is right (a wrong one is dropped, not fatal).
  7 birth date, 8 sex (F M O U; A -> O, N -> U), 11 address (5 = postcode -> postcode district),
  22 NHS ethnic category (-> ONS 2021 high-level group), 29/30 death time/indicator (-> ``death`` event).
- PV1: 2 patient class, 3 assigned location (facility prefix / point of care), 19 visit number, 44/45
  admit/discharge times. Location prefix, then patient class, decide ``setting`` via the mapping file.
- DG1: 3 diagnosis code (coding system I10/ICD10 -> ICD10, SCT/SNOMED -> SNOMED), 5 diagnosis time.
- MRG: 1 prior patient identifier (A40).
- OBR: 2/3 placer/filler order number, 7 observation time.
- OBX: 2 value type (NM and SN numeric; ST/TX/CE/CWE text), 3 code (LN -> LOINC; local codes through the
  mapping file), 4 sub-id, 5 value, 6 units, 8 abnormal flag, 11 result status, 14 observation time.
  Status ``C`` is a correction (the same event id as the final, so it replaces it and any earlier
  correction), ``W`` / ``D`` entered in error (``status: entered-in-error`` + ``corrects``, also retracting the
  preliminary and the abnormal-flag fact), ``P`` preliminary (a later final or correction retracts it), ``X``
  (no result) is skipped. An abnormal flag other than N becomes an ``observation`` event
  (code ``local/abnormal-flag:<code>``, value = the flag) beside the measurement.

Timestamps without an offset are interpreted in **Europe/London** (GMT/BST) and converted to UTC. A field
that cannot be read (bad date, non-numeric NM value) rejects the whole message with ``AE`` and a reason
naming the segment and field (never echoing a demographic value); an unsupported message type is rejected
with ``AR``. An unknown PID-8 sex is read as ``U`` with a warning. An OBX-3 code without a recognised coding
system but with LOINC's shape (``1554-5``) is taken as LOINC, as many labs send it.

Event ids are stable hashes of what identifies the fact (sending facility, order number, code, sub-id), so a
re-sent message yields the same ids and the engine applies it once.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hl7
import yaml

from screener.errors import EventError
from screener.events import Event, parse_event
from screener.sources.common import (
    ethnic_group_for_category,
    is_valid_nhs_number,
    local_to_utc,
    normalise_nhs_number,
    postcode_district,
    stable_id,
)

__all__ = [
    "ADT_EVENTS",
    "CodeMap",
    "HL7Reject",
    "ParsedMessage",
    "load_code_map",
    "parse_hl7_datetime",
    "parse_message",
    "split_batch",
]

SOURCE = "hl7v2"
ADT_EVENTS = frozenset({"A01", "A03", "A04", "A08", "A28", "A31", "A40"})
#: A08 (update) and A28/A31 (person only) change demographics or diagnoses, not the visit itself.
_VISIT_EVENTS = {"A01": "admit", "A03": "discharge", "A04": "register"}
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
_NUMERIC_TYPES = frozenset({"NM", "SN"})
_TEXT_TYPES = frozenset({"ST", "TX", "FT", "CE", "CWE", "CNE", "IS", "ID"})
DEFAULT_CODE_MAP = Path(__file__).with_name("codes.yaml")


class HL7Reject(EventError):
    """A message screener will not accept. ``ack_code`` is ``AE`` (error) or ``AR`` (reject).

    ``hl7_code`` is the HL7 table 0357 error code; ``location`` is ``SEG^seq^field`` for ERR-2.
    """

    def __init__(
        self,
        message: str,
        *,
        ack_code: str = "AE",
        hl7_code: str = "207",
        location: str = "",
        control_id: str = "",
    ) -> None:
        self.ack_code = ack_code
        self.hl7_code = hl7_code
        self.location = location
        self.control_id = control_id
        where = f"{location.replace('^', '-')}: " if location else ""
        super().__init__(f"{where}{message}", field=location or None, source=SOURCE)
        self.reason = f"{where}{message}"


@dataclass(frozen=True)
class CodeMap:
    """The mapping file, loaded. Keys are upper-cased local codes / classes / prefixes."""

    observations: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    patient_class: dict[str, str] = field(default_factory=dict)
    location_prefix: dict[str, str] = field(default_factory=dict)


def load_code_map(path: Path | None = None) -> CodeMap:
    """Load a YAML mapping file (see ``codes.yaml``) or a CSV with columns ``local_code,loinc[,unit]``.

    :raises ConnectorError: when the file cannot be read or has the wrong shape.
    """
    from screener.errors import ConnectorError

    path = path or DEFAULT_CODE_MAP
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConnectorError(f"cannot read mapping file {path}: {exc}", connector=SOURCE) from exc
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and not {"local_code", "loinc"} <= set(rows[0]):
            raise ConnectorError(f"{path}: CSV needs columns local_code,loinc[,unit]", connector=SOURCE)
        base = load_code_map(DEFAULT_CODE_MAP) if path != DEFAULT_CODE_MAP else CodeMap()
        obs = {
            r["local_code"].strip().upper(): (r["loinc"].strip(), (r.get("unit") or "").strip() or None)
            for r in rows
            if r.get("local_code")
        }
        return CodeMap(obs, base.patient_class, base.location_prefix)
    try:
        data = yaml.safe_load(text) or {}
        obs = {}
        for code, spec in (data.get("observations") or {}).items():
            if isinstance(spec, str):
                obs[str(code).upper()] = (spec, None)
            else:
                obs[str(code).upper()] = (str(spec["loinc"]), spec.get("unit"))
        return CodeMap(
            obs,
            {str(k).upper(): str(v) for k, v in (data.get("patient_class") or {}).items()},
            {str(k).upper(): str(v) for k, v in (data.get("location_prefix") or {}).items()},
        )
    except (yaml.YAMLError, AttributeError, KeyError, TypeError) as exc:
        raise ConnectorError(f"{path}: not a valid mapping file: {exc}", connector=SOURCE) from exc


@dataclass
class ParsedMessage:
    """One accepted message: its control id, type (``ADT^A01``), events, and non-fatal warnings."""

    control_id: str
    message_type: str
    events: list[Event]
    warnings: list[str] = field(default_factory=list)
    msh: Any = None


# --- low-level field access ------------------------------------------------------------------------------
def _get(seg: Any, fld: int, comp: int = 1, rep: int = 1, sub: int = 1) -> str:
    """Field ``fld`` component ``comp`` of repetition ``rep``; '' when absent (never raises)."""
    try:
        value = seg.extract_field(1, fld, rep, comp, sub)
    except (IndexError, KeyError, TypeError, AttributeError):
        return ""
    text = str(value).strip() if value is not None else ""
    return "" if text == '""' else text  # "" is HL7's explicit null


def _reps(seg: Any, fld: int) -> int:
    """How many repetitions field ``fld`` has (0 when empty)."""
    try:
        f = seg(fld)
    except (IndexError, TypeError):
        return 0
    if isinstance(f, hl7.Field) and f and isinstance(f[0], hl7.Repetition):
        return len(f)
    return 1 if str(f) else 0


_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


def parse_hl7_datetime(text: str, *, location: str = "") -> datetime | None:
    """HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``) -> aware UTC datetime; '' -> None.

    No offset: Europe/London wall time. Missing month/day default to 1.

    :raises HL7Reject: AE/102 naming ``location`` when the text is not a valid date-time.
    """
    text = text.strip()
    if not text:
        return None
    m = _DTM.match(text)
    if not m:
        raise HL7Reject("not an HL7 date-time (YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ])", hl7_code="102", location=location)
    y, mo, d, h, mi, s, frac, off = m.groups()
    try:
        micro = int((frac or "0").ljust(6, "0"))
        value = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0), micro)
    except ValueError as exc:
        raise HL7Reject(f"not a valid date-time: {exc}", hl7_code="102", location=location) from exc
    if off:
        sign = 1 if off[0] == "+" else -1
        delta = timedelta(hours=int(off[1:3]), minutes=int(off[3:5]))
        if delta >= timedelta(hours=24):
            raise HL7Reject("bad UTC offset", hl7_code="102", location=location)
        return value.replace(tzinfo=timezone(sign * delta)).astimezone(UTC)
    return local_to_utc(value)


def _parse_date(text: str, location: str) -> date | None:
    dt = text.strip()
    if not dt:
        return None
    m = re.match(r"^(\d{4})(\d{2})(\d{2})", dt)
    if not m or not re.match(r"^\d{8}(\d{2,6}(\.\d+)?)?([+-]\d{4})?$", dt):
        raise HL7Reject("not an HL7 date (YYYYMMDD)", hl7_code="102", location=location)
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError as exc:
        raise HL7Reject(f"not a valid date: {exc}", hl7_code="102", location=location) from exc


# --- batches ---------------------------------------------------------------------------------------------
def split_batch(text: str) -> tuple[list[str], str | None]:
    """Split a block into messages. Returns ``(messages, batch_kind)``; batch_kind is FHS, BHS or None.

    FHS/BHS/BTS/FTS envelopes are dropped; every ``MSH`` starts a new message.
    """
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 \t")
    lines = [ln for ln in text.split("\r") if ln.strip()]
    kind = None
    messages: list[list[str]] = []
    for ln in lines:
        tag = ln[:3]
        if tag in ("FHS", "BHS"):
            kind = kind or tag
            continue
        if tag in ("FTS", "BTS"):
            continue
        if tag == "MSH" or not messages:
            messages.append([])
        messages[-1].append(ln)
    return ["\r".join(m) + "\r" for m in messages], kind


# --- the parser ------------------------------------------------------------------------------------------
@dataclass
class _Ctx:
    control_id: str
    facility: str
    msg_time: datetime
    code_map: CodeMap
    source: str
    warnings: list[str]


def parse_message(text: str, *, code_map: CodeMap | None = None, source: str = SOURCE) -> ParsedMessage:
    """Parse one HL7 v2 message (segments separated by CR) into canonical events.

    :raises HL7Reject: ``AE`` for unparseable input or invalid fields, ``AR`` for unsupported message types.
    """
    code_map = code_map or _default_map()
    if not text.startswith("MSH") or len(text) < 8:
        raise HL7Reject("message does not start with an MSH segment", hl7_code="100", location="MSH^1")
    try:
        msg = hl7.parse(text)
    except Exception as exc:  # the hl7 parser raises bare exceptions on garbage
        raise HL7Reject(f"cannot parse message ({type(exc).__name__})", hl7_code="100") from exc
    for i, seg in enumerate(msg, 1):
        # A segment without a valid name (e.g. a stray separator line) would crash the hl7 library's lookups.
        name = str(seg[0]) if len(seg) else ""
        if not _SEGMENT_NAME.match(name):
            raise HL7Reject(f"segment {i} has no valid segment name", hl7_code="100", location=f"segment {i}")
    try:
        msh = msg.segment("MSH")
    except KeyError as exc:
        raise HL7Reject("no MSH segment", hl7_code="100", location="MSH^1") from exc
    control_id = _get(msh, 10)
    mtype, trigger = _get(msh, 9, 1).upper(), _get(msh, 9, 2).upper()
    if not mtype:
        raise HL7Reject("MSH-9 message type is empty", hl7_code="101", location="MSH^1^9", control_id=control_id)
    msg_time = parse_hl7_datetime(_get(msh, 7), location="MSH^1^7") or datetime.now(UTC)
    ctx = _Ctx(control_id, _get(msh, 4) or _get(msh, 3) or "unknown", msg_time, code_map, source, [])
    kind = f"{mtype}^{trigger}"
    try:
        if mtype == "ADT" and trigger in ADT_EVENTS:
            events = _adt(msg, trigger, ctx)
        elif mtype == "ORU" and trigger == "R01":
            events = _oru(msg, ctx)
        else:
            raise HL7Reject(f"unsupported message type {kind}", ack_code="AR", hl7_code="200", location="MSH^1^9")
    except HL7Reject as exc:
        exc.control_id = control_id
        raise
    return ParsedMessage(control_id, kind, events, ctx.warnings, msh)


_DEFAULT_MAP: CodeMap | None = None


def _default_map() -> CodeMap:
    global _DEFAULT_MAP
    if _DEFAULT_MAP is None:
        _DEFAULT_MAP = load_code_map(DEFAULT_CODE_MAP)
    return _DEFAULT_MAP


def _segments(msg: Any, name: str) -> list[Any]:
    try:
        return list(msg.segments(name))
    except KeyError:
        return []


def _event(ctx: _Ctx, location: str, **fields: Any) -> Event:
    fields.setdefault("source", ctx.source)
    fields.setdefault("recorded_at", ctx.msg_time.isoformat())
    try:
        return parse_event(fields, source=ctx.source)
    except EventError as exc:
        raise HL7Reject(f"invalid {fields.get('kind')} event: {exc}", hl7_code="102", location=location) from exc


def _patient(pid: Any, seq: int) -> tuple[str, str | None]:
    """(hospital id, valid NHS number or None) from PID-3 (and PID-2 as a fallback)."""
    hospital: str | None = None
    first_other: str | None = None
    nhs: str | None = None
    for r in range(1, max(_reps(pid, 3), 1) + 1):
        ident, authority, id_type = _get(pid, 3, 1, r), _get(pid, 3, 4, r).upper(), _get(pid, 3, 5, r).upper()
        if not ident:
            continue
        if id_type == "NH" or authority in ("NHS", _NHS_OID) or authority.startswith("NHS"):
            nhs = nhs or ident
        elif id_type in _HOSPITAL_ID_TYPES and hospital is None:
            hospital = ident
        elif first_other is None:
            first_other = ident
    hospital = hospital or first_other or _get(pid, 2) or None
    if hospital is None:
        raise HL7Reject("no hospital patient identifier in PID-3", hl7_code="101", location=f"PID^{seq}^3")
    valid = normalise_nhs_number(nhs) if nhs and is_valid_nhs_number(nhs) else None
    return hospital, valid


def _setting(pv1: Any | None, code_map: CodeMap) -> tuple[str | None, str | None]:
    """(setting, site) from PV1-3 (location) and PV1-2 (patient class)."""
    if pv1 is None:
        return None, None
    facility, point = _get(pv1, 3, 4).upper(), _get(pv1, 3, 1).upper()
    for prefix, setting in sorted(code_map.location_prefix.items(), key=lambda kv: -len(kv[0])):
        if facility.startswith(prefix) or point.startswith(prefix):
            return setting, (facility or None)
    return code_map.patient_class.get(_get(pv1, 2).upper()), (facility or None)


def _person_event(
    pid: Any, seq: int, ctx: _Ctx, patient_id: str, nhs: str | None, *, merged_from: str | None, setting: str | None
) -> Event:
    loc = f"PID^{seq}"
    sex_raw = _get(pid, 8).upper()
    if sex_raw not in _SEX:
        ctx.warnings.append(f"{loc}^8: unknown administrative sex read as U")
        sex_raw = "U"
    person: dict[str, Any] = {
        "birth_date": (bd.isoformat() if (bd := _parse_date(_get(pid, 7), f"{loc}^7")) else None),
        "sex": _SEX[sex_raw],
        "nhs_number": nhs,
        "merged_from": merged_from,
    }
    group, letter = ethnic_group_for_category(_get(pid, 22))
    person["ethnic_group"], person["ethnic_category"] = group, letter
    person["postcode_district"] = postcode_district(_get(pid, 11, 5))
    person = {k: v for k, v in person.items() if v is not None}
    return _event(
        ctx,
        loc,
        event_id=stable_id(SOURCE, ctx.facility, ctx.control_id, "person", patient_id),
        kind="person",
        patient_id=patient_id,
        occurred_at=ctx.msg_time.isoformat(),
        person=person,
        setting=setting,
    )


def _death_event(pid: Any, seq: int, ctx: _Ctx, patient_id: str) -> Event | None:
    when = parse_hl7_datetime(_get(pid, 29), location=f"PID^{seq}^29")
    if when is None and _get(pid, 30).upper() != "Y":
        return None
    return _event(
        ctx,
        f"PID^{seq}^29",
        event_id=stable_id(SOURCE, ctx.facility, "death", patient_id),
        kind="death",
        patient_id=patient_id,
        occurred_at=(when or ctx.msg_time).isoformat(),
    )


def _code(system_raw: str, value: str) -> dict[str, str]:
    s = system_raw.upper()
    if s in ("I10", "ICD10", "ICD-10", "I10C", "ICD10UK"):
        return {"system": "ICD10", "value": value}
    if s in ("SCT", "SNOMED", "SNM", "SNOMEDCT", "SNOMED-CT"):
        return {"system": "SNOMED", "value": value}
    if s in ("LN", "LOINC"):
        return {"system": "LOINC", "value": value}
    if s in ("OPCS4", "OPCS", "OPCS-4"):
        return {"system": "OPCS4", "value": value}
    if s in ("DMD", "ATC"):
        return {"system": s, "value": value}
    return {"system": "ICD10" if not s and re.match(r"^[A-Z]\d\d", value) else "local", "value": value}


def _diagnoses(msg: Any, ctx: _Ctx, patient_id: str, setting: str | None, site: str | None, visit: str) -> list[Event]:
    out = []
    for i, dg1 in enumerate(_segments(msg, "DG1"), start=1):
        code = _get(dg1, 3, 1)
        if not code:
            raise HL7Reject("DG1-3 diagnosis code is empty", hl7_code="101", location=f"DG1^{i}^3")
        when = parse_hl7_datetime(_get(dg1, 5), location=f"DG1^{i}^5") or ctx.msg_time
        coded = _code(_get(dg1, 3, 3), code)
        out.append(
            _event(
                ctx,
                f"DG1^{i}",
                event_id=stable_id(SOURCE, ctx.facility, patient_id, visit, "dg1", coded["value"]),
                kind="condition",
                patient_id=patient_id,
                occurred_at=when.isoformat(),
                code=coded,
                setting=setting,
                site=site,
            )
        )
    return out


def _adt(msg: Any, trigger: str, ctx: _Ctx) -> list[Event]:
    pids = _segments(msg, "PID")
    if not pids:
        raise HL7Reject("ADT message without a PID segment", hl7_code="100", location="PID^1")
    pv1s = _segments(msg, "PV1")
    pv1 = pv1s[0] if pv1s else None
    setting, site = _setting(pv1, ctx.code_map)
    site = site or (ctx.facility if ctx.facility != "unknown" else None)
    events: list[Event] = []
    if trigger == "A40":
        mrgs = _segments(msg, "MRG")
        if not mrgs:
            raise HL7Reject("A40 merge without an MRG segment", hl7_code="100", location="MRG^1")
        for i, (pid, mrg) in enumerate(zip(pids, mrgs, strict=False), start=1):
            patient_id, nhs = _patient(pid, i)
            prior = _get(mrg, 1, 1)
            if not prior:
                raise HL7Reject("MRG-1 prior patient identifier is empty", hl7_code="101", location=f"MRG^{i}^1")
            if prior == patient_id:
                raise HL7Reject("MRG-1 names the surviving patient itself", hl7_code="102", location=f"MRG^{i}^1")
            events.append(_person_event(pid, i, ctx, patient_id, nhs, merged_from=prior, setting=setting))
        return events
    pid = pids[0]
    patient_id, nhs = _patient(pid, 1)
    if nhs is None and any(_get(pid, 3, 5, r).upper() == "NH" for r in range(1, _reps(pid, 3) + 1)):
        ctx.warnings.append("invalid NHS number dropped (modulus 11)")
    events.append(_person_event(pid, 1, ctx, patient_id, nhs, merged_from=None, setting=setting))
    if (death := _death_event(pid, 1, ctx, patient_id)) is not None:
        events.append(death)
    visit = (_get(pv1, 19) if pv1 is not None else "") or ctx.control_id
    if trigger in _VISIT_EVENTS and pv1 is not None:
        admit = parse_hl7_datetime(_get(pv1, 44), location="PV1^1^44")
        discharge = parse_hl7_datetime(_get(pv1, 45), location="PV1^1^45")
        evn = _segments(msg, "EVN")
        evn_time = parse_hl7_datetime(_get(evn[0], 2), location="EVN^1^2") if evn else None
        when = (discharge if trigger == "A03" else admit) or evn_time or ctx.msg_time
        events.append(
            _event(
                ctx,
                "PV1^1",
                event_id=stable_id(SOURCE, ctx.facility, patient_id, visit, "visit", trigger),
                kind="visit",
                patient_id=patient_id,
                occurred_at=when.isoformat(),
                code={"system": "local", "value": f"hl7v2-{_VISIT_EVENTS[trigger]}"},
                status="resolved" if trigger == "A03" else "active",
                setting=setting,
                site=site,
            )
        )
    events.extend(_diagnoses(msg, ctx, patient_id, setting, site, visit))
    events.extend(_observations(msg, ctx, patient_id, setting, site, order_fallback=visit))
    return events


def _oru(msg: Any, ctx: _Ctx) -> list[Event]:
    pids = _segments(msg, "PID")
    if not pids:
        raise HL7Reject("ORU message without a PID segment", hl7_code="100", location="PID^1")
    patient_id, _nhs = _patient(pids[0], 1)
    pv1s = _segments(msg, "PV1")
    setting, site = _setting(pv1s[0] if pv1s else None, ctx.code_map)
    site = site or (ctx.facility if ctx.facility != "unknown" else None)
    if not _segments(msg, "OBX"):
        raise HL7Reject("ORU^R01 without any OBX segment", hl7_code="100", location="OBX^1")
    return _observations(msg, ctx, patient_id, setting, site, order_fallback=ctx.control_id)


def _observations(
    msg: Any, ctx: _Ctx, patient_id: str, setting: str | None, site: str | None, *, order_fallback: str
) -> list[Event]:
    out: list[Event] = []
    order, obr_time = order_fallback, None
    obx_seq = 0
    for seg in msg:
        name = str(seg[0])
        if name == "OBR":
            order = _get(seg, 3, 1) or _get(seg, 2, 1) or order_fallback
            obr_time = parse_hl7_datetime(_get(seg, 7), location="OBR^1^7")
        elif name == "OBX":
            obx_seq += 1
            out.extend(_obx(seg, obx_seq, ctx, patient_id, setting, site, order, obr_time))
    return out


def _obx(
    obx: Any,
    seq: int,
    ctx: _Ctx,
    patient_id: str,
    setting: str | None,
    site: str | None,
    order: str,
    obr_time: datetime | None,
) -> list[Event]:
    loc = f"OBX^{seq}"
    status = _get(obx, 11).upper()
    if status == "X":
        return []
    code_raw, code_sys = _get(obx, 3, 1), _get(obx, 3, 3)
    if not code_raw:
        raise HL7Reject("OBX-3 observation identifier is empty", hl7_code="101", location=f"{loc}^3")
    unit = _get(obx, 6, 1) or None
    if code_sys.upper() in ("LN", "LOINC"):
        code = {"system": "LOINC", "value": code_raw}
    elif (mapped := ctx.code_map.observations.get(code_raw.upper())) is not None:
        code = {"system": "LOINC", "value": mapped[0]}
        unit = unit or mapped[1]
    elif _LOINC.match(code_raw) and _code(code_sys, code_raw)["system"] == "local":
        # no (or a free-text) coding system, but the code has LOINC's shape: many labs send it like this
        code = {"system": "LOINC", "value": code_raw}
    else:
        code = _code(code_sys, code_raw)
    vtype = _get(obx, 2).upper()
    when = parse_hl7_datetime(_get(obx, 14), location=f"{loc}^14") or obr_time or ctx.msg_time
    value: float | str | None
    kind = "measurement"
    if vtype in _NUMERIC_TYPES or (not vtype and _looks_numeric(_get(obx, 5))):
        value = _numeric(obx, vtype, loc)
    elif vtype in _TEXT_TYPES or not vtype:
        text = _get(obx, 5, 2) if vtype in ("CE", "CWE", "CNE") and _get(obx, 5, 2) else _get(obx, 5)
        value, kind = text[:1000] or None, "observation"
    elif _looks_numeric(_get(obx, 5, 2) or _get(obx, 5)):
        # a non-standard value type (e.g. "FN") carrying a number, as some labs send: read it like SN
        ctx.warnings.append(f"{loc}^2: non-standard value type read as numeric")
        value = _numeric(obx, "SN", loc)
    else:
        raise HL7Reject(f"unsupported OBX value type {vtype[:5]!r}", hl7_code="102", location=f"{loc}^2")
    base = stable_id(SOURCE, ctx.facility, patient_id, order, code["value"], _get(obx, 4))
    ev: dict[str, Any] = {
        "kind": kind,
        "patient_id": patient_id,
        "occurred_at": when.isoformat(),
        "code": code,
        "value": value,
        "unit": unit if kind == "measurement" else None,
        "setting": setting,
        "site": site,
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
    out = [_event(ctx, loc, **ev)]
    if status in ("W", "D"):
        for suffix in ("p", "flag", "p-flag"):
            out.append(
                _event(ctx, loc, **{**ev, "event_id": f"{ev['event_id']}-{suffix}", "corrects": f"{base}-{suffix}"})
            )
    flag = _get(obx, 8).upper()
    if flag and flag != "N" and kind == "measurement" and status not in ("W", "D"):
        out.append(
            _event(
                ctx,
                f"{loc}^8",
                event_id=f"{ev['event_id']}-flag",
                kind="observation",
                patient_id=patient_id,
                occurred_at=when.isoformat(),
                code={"system": "local", "value": f"abnormal-flag:{code['value']}"},
                value=flag[:8],
                setting=setting,
                site=site,
                **({"corrects": f"{ev['corrects']}-flag"} if "corrects" in ev else {}),
            )
        )
    return out


_LOINC = re.compile(r"^\d{1,7}-\d$")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_NUM = re.compile(r"^[<>]?=?\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def _looks_numeric(text: str) -> bool:
    return bool(_NUM.match(text.strip()))


def _numeric(obx: Any, vtype: str, loc: str) -> float:
    if vtype == "SN":
        comparator, number = _get(obx, 5, 1), _get(obx, 5, 2)
        raw = number or comparator
    else:
        raw = _get(obx, 5)
    cleaned = raw.strip().lstrip("<>=").strip()
    try:
        value = float(cleaned)
    except ValueError as exc:
        raise HL7Reject(f"OBX-5 is not a number: {raw[:30]!r}", hl7_code="102", location=f"{loc}^5") from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise HL7Reject(f"OBX-5 is not a finite number: {raw[:30]!r}", hl7_code="102", location=f"{loc}^5")
    return value
