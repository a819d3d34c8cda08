"""HL7 v2 parser: the hl7 package's real sample messages and hand-written edge cases."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.hl7v2 import HL7Reject, parse_message, process_block, split_batch
from connectors.hl7v2.ack import build_ack
from connectors.hl7v2.parse import load_code_map, parse_hl7_datetime
from screener.sources.base import MemorySink

DATA = Path(__file__).parents[2] / "data" / "hl7"


def _samples(name: str = "hl7_package_samples") -> object:
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def msg(*segments: str) -> str:
    return "\r".join(segments) + "\r"


MSH = "MSH|^~\\&|LAB|RR8^LTHT|SCREENER|RR8|{time}||{type}|{ctrl}|P|2.5|||AL|NE|GBR|UNICODE UTF-8"
PID = (
    "PID|1||H1234567^^^RR8^MR~9434765919^^^NHS^NH||Smith^Jane^^^Mrs||19610302|F|||1 Park Lane^^Leeds^^"
    "LS6 2AB^GBR|||||||||||J"
)


def adt(trigger: str, *extra: str, pid: str = PID, time: str = "20260501093000", ctrl: str = "C1") -> str:
    return msg(
        MSH.format(time=time, type=f"ADT^{trigger}^ADT_A01", ctrl=ctrl),
        f"EVN|{trigger}|{time}",
        pid,
        "PV1|1|I|WARD4^BED2^^RR8||||||||||||||||V998877|||||||||||||||||||||||||202605010800",
        *extra,
    )


def oru(*obx: str, ctrl: str = "L1", pid: str = PID) -> str:
    return msg(
        MSH.format(time="20260501100000", type="ORU^R01^ORU_R01", ctrl=ctrl),
        pid,
        "OBR|1|PL1|FIL1|U&E^Renal panel^L|||20260501083000",
        *obx,
    )


# --- real samples ---------------------------------------------------------------------------------------
def test_hl7_package_oru_sample_yields_glucose_measurements() -> None:
    sample = _samples().sample_hl7  # type: ignore[attr-defined]
    parsed = parse_message(sample)
    measurements = [e for e in parsed.events if e.kind == "measurement"]
    assert parsed.message_type == "ORU^R01" and parsed.control_id == "CNTRL-3456"
    assert [(e.code.system, e.code.value, e.value, e.unit) for e in measurements if e.code] == [
        ("LOINC", "1554-5", 182.0, "mg/dl"),
        ("LOINC", "1553-5", 182.0, "mg/dl"),
    ]
    # OBR-7 200202150730 is winter: London time == UTC
    assert measurements[0].occurred_at == datetime(2002, 2, 15, 7, 30, tzinfo=UTC)
    flags = [e for e in parsed.events if e.kind == "observation"]
    assert {e.value for e in flags} == {"H"}


@pytest.mark.parametrize(
    "name", ["sample_batch", "sample_batch1", "sample_batch2", "sample_file", "sample_file1", "sample_file4"]
)
def test_hl7_package_batches_split_and_their_year_1013_birth_date_is_rejected(name: str) -> None:
    # Fidelity (issue 17): the VINAH samples' PID-7 is 10131113, a birth date in the year 1013. The old parser
    # accepted it; it is now AE naming PID-7 (more than 120 years before the message), never a person event.
    text = getattr(_samples(), name)
    messages, kind = split_batch(text)
    assert messages and all(m.startswith("MSH") for m in messages)
    assert kind in ("BHS", "FHS", None)
    for m in messages:
        with pytest.raises(HL7Reject) as err:
            parse_message(m)
        assert err.value.location == "PID^1^7" and err.value.ack_code == "AE"
        assert "120 years" in err.value.reason and "1013" not in err.value.reason
    fixed = messages[0].replace("|10131113|", "|19131113|")
    parsed = parse_message(fixed)
    assert parsed.message_type == "ADT^A04"
    person = parsed.events[0]
    assert person.kind == "person" and person.patient_id == "0000112234"
    assert person.setting == "hospital"  # PV1-2 "O" (outpatient)
    assert parsed.unmapped == {"NK1": 1}  # NK1 (next of kin) is not read, and counted


@pytest.mark.parametrize("name", ["sample_bad_batch", "sample_bad_file", "sample_bad_file3"])
def test_hl7_package_bad_batches_are_rejected_with_a_reason(name: str) -> None:
    sink = MemorySink()
    _response, codes = process_block(
        getattr(_samples(), name).encode(), sink, code_map=load_code_map(), position="test"
    )
    assert "AE" in codes
    assert sink.rejections and all(r.reason for r in sink.rejections)


def test_hl7apy_adt_a01_sample() -> None:
    parsed = parse_message(_samples("hl7apy_samples").adt_a01)  # type: ignore[attr-defined]
    person, visit = parsed.events
    assert person.patient_id == "123-456-789" and person.person is not None and person.person.sex == "M"
    assert person.person.postcode_district is None  # a US address
    # PV1-44 "2013" (year precision) is the admission time; London midnight, 1 January (GMT)
    assert visit.kind == "visit" and visit.setting == "hospital"
    assert visit.occurred_at == datetime(2013, 1, 1, tzinfo=UTC)


def test_hl7apy_custom_z_message_is_ar() -> None:
    with pytest.raises(HL7Reject) as err:
        parse_message(_samples("hl7apy_samples").zdt_z01)  # type: ignore[attr-defined]
    assert err.value.ack_code == "AR"


# --- ADT --------------------------------------------------------------------------------------------------
def test_adt_a01_person_visit_and_diagnoses() -> None:
    text = adt(
        "A01",
        "DG1|1||E11.9^Type 2 diabetes mellitus^I10||20260501090000|A",
        "DG1|2||44054006^Diabetes type 2^SCT||20260501090000|A",
    )
    parsed = parse_message(text)
    kinds = [e.kind for e in parsed.events]
    assert kinds == ["person", "visit", "condition", "condition"]
    person = parsed.events[0]
    assert person.patient_id == "H1234567"  # the hospital number, not the NHS number
    assert person.person is not None
    assert person.person.nhs_number == "9434765919"
    assert person.person.birth_date.isoformat() == "1961-03-02"  # type: ignore[union-attr]
    assert (person.person.sex, person.person.ethnic_group, person.person.ethnic_category) == ("F", "asian", "J")
    assert person.person.postcode_district == "LS6"
    visit = parsed.events[1]
    assert visit.setting == "hospital" and visit.site == "RR8"
    # PV1-44 08:00 on 1 May is BST: 07:00 UTC
    assert visit.occurred_at == datetime(2026, 5, 1, 7, 0, tzinfo=UTC)
    codes = [(e.code.system, e.code.value) for e in parsed.events[2:] if e.code]
    assert codes == [("ICD10", "E11.9"), ("SNOMED", "44054006")]


def test_nhs_number_failing_modulus_11_is_dropped_not_fatal() -> None:
    pid = PID.replace("9434765919", "9434765918")
    parsed = parse_message(adt("A28", pid=pid))
    assert parsed.events[0].person is not None and parsed.events[0].person.nhs_number is None
    assert any("NHS number" in w for w in parsed.warnings)


@pytest.mark.parametrize("trigger", ["A03", "A04", "A08", "A28", "A31"])
def test_other_adt_triggers_are_accepted(trigger: str) -> None:
    parsed = parse_message(adt(trigger))
    assert parsed.message_type == f"ADT^{trigger}"
    assert parsed.events[0].kind == "person"
    if trigger == "A03":
        assert parsed.events[1].kind == "visit" and parsed.events[1].status == "completed"


def test_a40_merge_is_a_person_event_with_merged_from() -> None:
    text = adt("A40", "MRG|H7654321^^^RR8^MR")
    parsed = parse_message(text)
    assert len(parsed.events) == 1
    merge = parsed.events[0]
    assert merge.kind == "person" and merge.patient_id == "H1234567"
    assert merge.person is not None and merge.person.merged_from == "H7654321"


def test_a40_without_mrg_is_rejected() -> None:
    with pytest.raises(HL7Reject) as err:
        parse_message(adt("A40"))
    assert err.value.ack_code == "AE" and "MRG" in err.value.reason


def test_missing_pid_segment_is_rejected_naming_it() -> None:
    text = msg(MSH.format(time="20260501093000", type="ADT^A01", ctrl="C9"), "EVN|A01|20260501093000")
    with pytest.raises(HL7Reject) as err:
        parse_message(text)
    assert err.value.location == "PID^1" and err.value.control_id == "C9"


def test_missing_pv1_still_gives_a_person_event() -> None:
    text = msg(MSH.format(time="20260501093000", type="ADT^A28", ctrl="C2"), "EVN|A28|20260501093000", PID)
    parsed = parse_message(text)
    assert [e.kind for e in parsed.events] == ["person"]


def test_bad_birth_date_is_rejected_with_field() -> None:
    with pytest.raises(HL7Reject) as err:
        parse_message(adt("A01", pid=PID.replace("19610302", "19611302")))
    assert err.value.location == "PID^1^7" and err.value.hl7_code == "102"


def test_bad_message_time_is_rejected() -> None:
    with pytest.raises(HL7Reject) as err:
        parse_message(adt("A01", time="2026-05-01"))
    assert "MSH" in err.value.location


def test_unsupported_type_is_ar() -> None:
    text = msg(MSH.format(time="20260501093000", type="SIU^S12", ctrl="S1"), PID)
    with pytest.raises(HL7Reject) as err:
        parse_message(text)
    assert err.value.ack_code == "AR" and err.value.hl7_code == "200"


@pytest.mark.parametrize("encoding", ["utf-8", "iso-8859-1"])
def test_non_ascii_names_in_utf8_and_latin1(encoding: str) -> None:
    text = adt("A28", pid=PID.replace("Smith^Jane", "Ünal^Zoë"))
    sink = MemorySink()
    response, codes = process_block(text.encode(encoding), sink, code_map=load_code_map(), position="t")
    assert codes == ["AA"] and "MSA|AA|C1" in response
    assert sink.events[0].patient_id == "H1234567"


# --- ORU ----------------------------------------------------------------------------------------------
def test_oru_local_code_mapped_to_loinc_with_default_unit() -> None:
    parsed = parse_message(oru("OBX|1|NM|EGFR^eGFR^L||41||>60|L|||F|||20260501090000"))
    m = parsed.events[0]
    assert m.code is not None and (m.code.system, m.code.value) == ("LOINC", "62238-1")
    assert (m.value, m.unit) == (41.0, "mL/min/1.73m2")
    assert m.occurred_at == datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    flag = parsed.events[1]
    assert flag.kind == "observation" and flag.value == "L"


def test_unknown_unit_passes_through_verbatim() -> None:
    parsed = parse_message(oru("OBX|1|NM|62238-1^eGFR^LN||41|furlongs/fortnight|||||F"))
    assert parsed.events[0].unit == "furlongs/fortnight"


def test_unmapped_local_code_stays_local() -> None:
    parsed = parse_message(oru("OBX|1|NM|XYZ^Mystery^L||3.2|mmol/L|||||F"))
    assert parsed.events[0].code is not None
    assert (parsed.events[0].code.system, parsed.events[0].code.value) == ("local", "XYZ")


def test_structured_numeric_with_comparator() -> None:
    parsed = parse_message(oru("OBX|1|SN|14958-3^ACR^LN||<^3.0|mg/mmol|||||F"))
    assert parsed.events[0].value == 3.0


def test_text_result_is_an_observation() -> None:
    parsed = parse_message(oru("OBX|1|ST|8867-4^Comment^LN||Haemolysed sample||||||F"))
    assert parsed.events[0].kind == "observation" and parsed.events[0].value == "Haemolysed sample"


def test_non_numeric_nm_value_is_rejected() -> None:
    with pytest.raises(HL7Reject) as err:
        parse_message(oru("OBX|1|NM|EGFR^eGFR^L||forty-one|mL/min/1.73m2|||||F"))
    assert err.value.location == "OBX^1^5"


def _results(*obx_lines: tuple[str, str]) -> list[float]:
    """Apply the ORU messages in order to an empty state; the eGFR values left."""
    from screener.state import PatientState, apply_events

    state = PatientState()
    for line, ctrl in obx_lines:
        state, _ = apply_events(state, parse_message(oru(line, ctrl=ctrl)).events)
    return sorted(state.facts.filter(state.facts["kind"] == "measurement")["value"].to_list())


EGFR = "OBX|1|NM|EGFR^eGFR^L||{v}|mL/min/1.73m2|||||{s}"


def test_correction_and_entered_in_error_point_at_the_original() -> None:
    original = parse_message(oru(EGFR.format(v=41, s="F"), ctrl="L1")).events[0]
    corrected = parse_message(oru(EGFR.format(v=44, s="C"), ctrl="L2")).events[0]
    wrong = parse_message(oru(EGFR.format(v=44, s="W"), ctrl="L3")).events[0]
    assert corrected.event_id == original.event_id  # the same result, a later version
    assert corrected.value == 44.0 and corrected.status == "active"
    assert wrong.corrects == original.event_id and wrong.status == "entered-in-error"


def test_correction_chains_leave_exactly_the_latest_version() -> None:
    final, c1, c2 = EGFR.format(v=41, s="F"), EGFR.format(v=44, s="C"), EGFR.format(v=47, s="C")
    assert _results((final, "L1"), (c1, "L2"), (c2, "L3")) == [47.0]
    # a correction of a result that only ever arrived as preliminary replaces the preliminary
    assert _results((EGFR.format(v=39, s="P"), "L1"), (c1, "L2")) == [44.0]
    # preliminary, then final: one fact
    assert _results((EGFR.format(v=39, s="P"), "L1"), (final, "L2")) == [41.0]
    # posted as wrong after a preliminary and a final: nothing left, and a re-sent final stays retracted
    wrong = EGFR.format(v=41, s="W")
    assert _results((EGFR.format(v=39, s="P"), "L1"), (final, "L2"), (wrong, "L3")) == []
    assert _results((final, "L1"), (wrong, "L2"), (final, "L1")) == []


def test_resent_message_has_the_same_event_ids() -> None:
    a = parse_message(oru("OBX|1|NM|EGFR^eGFR^L||41|mL/min/1.73m2|||||F", ctrl="L1"))
    b = parse_message(oru("OBX|1|NM|EGFR^eGFR^L||41|mL/min/1.73m2|||||F", ctrl="L1"))
    assert [e.event_id for e in a.events] == [e.event_id for e in b.events]


def test_segment_without_a_name_is_rejected_not_a_crash() -> None:
    # found by the fuzz test: the hl7 library raises IndexError looking up segments when one has no name
    with pytest.raises(HL7Reject) as err:
        parse_message(oru(EGFR.format(v=41, s="F")) + "\r|stray|fields")
    assert "segment" in str(err.value)


def test_oru_without_obx_is_rejected() -> None:
    with pytest.raises(HL7Reject):
        parse_message(oru())


def test_cancelled_result_is_skipped() -> None:
    parsed = parse_message(
        oru("OBX|1|NM|EGFR^eGFR^L||41|mL/min/1.73m2|||||X", "OBX|2|NM|K^Potassium^L||4.1|mmol/L|||||F")
    )
    assert [e.code.value for e in parsed.events if e.code] == ["2823-3"]


# --- timestamps -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20260115120000", datetime(2026, 1, 15, 12, 0, tzinfo=UTC)),  # GMT
        ("20260715120000", datetime(2026, 7, 15, 11, 0, tzinfo=UTC)),  # BST
        ("20260715120000+0200", datetime(2026, 7, 15, 10, 0, tzinfo=UTC)),  # explicit offset wins
        ("202607", datetime(2026, 6, 30, 23, 0, tzinfo=UTC)),  # month precision, BST midnight
        ("20260715120000.5", datetime(2026, 7, 15, 11, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_hl7_datetimes(text: str, expected: datetime) -> None:
    assert parse_hl7_datetime(text) == expected


@pytest.mark.parametrize("bad", ["2026-07-15", "20261315", "20260230", "2026071512000x", "20260715+9999"])
def test_bad_hl7_datetimes(bad: str) -> None:
    with pytest.raises(HL7Reject):
        parse_hl7_datetime(bad, location="X^1^1")


# --- ACKs and batches ----------------------------------------------------------------------------------
def test_ack_ae_has_err_segment_and_echoes_control_id() -> None:
    ack = build_ack(
        adt("A01"), "AE", control_id="C1", reason="PID-7: not an HL7 date", hl7_code="102", location="PID^1^7"
    )
    segs = ack.split("\r")
    assert segs[0].startswith("MSH|^~\\&|SCREENER|RR8|LAB|RR8^LTHT|")
    assert segs[1].startswith("MSA|AE|C1|")
    assert segs[2].startswith("ERR||PID^1^7|102^Data type error^HL70357|E|")


def test_batch_block_gets_one_ack_per_message_and_dead_letters_the_bad_one() -> None:
    good, bad = adt("A28", ctrl="B1"), adt("A01", ctrl="B2", pid=PID.replace("19610302", "1961xx02"))
    block = f"BHS|^~\\&|LAB\r{good}{bad}BTS|2\r".encode()
    sink = MemorySink()
    response, codes = process_block(block, sink, code_map=load_code_map(), position="peer")
    assert codes == ["AA", "AE"]
    assert response.startswith("BHS|") and "MSA|AA|B1" in response and "MSA|AE|B2" in response
    assert len(sink.rejections) == 1 and "control_id=B2" in sink.rejections[0].position
    assert {e.kind for e in sink.events} == {"person"}


def test_csv_code_map(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text("local_code,loinc,unit\nMYEGFR,62238-1,mL/min/1.73m2\n")
    parsed = parse_message(oru("OBX|1|NM|MYEGFR^eGFR^L||41||||||F"), code_map=load_code_map(path))
    assert parsed.events[0].code is not None and parsed.events[0].code.value == "62238-1"
    assert parsed.events[0].unit == "mL/min/1.73m2"


def test_no_identifier_or_demographic_in_logs_or_acks() -> None:
    from structlog.testing import capture_logs

    bad_dob = adt("A01", ctrl="Z1", pid=PID.replace("19610302", "1961030X"))
    sink = MemorySink()
    with capture_logs() as logs:
        response, codes = process_block(bad_dob.encode(), sink, code_map=load_code_map(), position="peer")
        process_block(adt("A01", ctrl="Z2").encode(), sink, code_map=load_code_map(), position="peer")
    assert codes == ["AE"]
    text = repr(logs) + response
    for secret in ("9434765919", "H1234567", "Smith", "1961030", "LS6"):
        assert secret not in text


def test_broker_failure_turns_aa_into_ae_207() -> None:
    from screener.errors import DeliveryError

    class DownSink(MemorySink):
        def publish(self, events: object) -> None:
            raise DeliveryError("broker unreachable", channel="kafka")

    sink = DownSink()
    response, codes = process_block(adt("A28", ctrl="D1").encode(), sink, code_map=load_code_map(), position="p")
    assert codes == ["AE"]
    assert "MSA|AE|D1" in response and "207^Application internal error" in response
    assert sink.rejections and "broker unavailable" in sink.rejections[0].reason
