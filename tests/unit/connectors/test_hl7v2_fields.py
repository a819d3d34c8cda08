"""HL7 v2 -> canonical event v2: every field the source has arrives (issue 13), and the fidelity fixes (issue 17).

Each ``fidelity`` test failed on the parser before these changes (noted per test).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from prometheus_client import CollectorRegistry

from connectors.hl7v2 import HL7Reject, parse_message, process_block, split_batch
from connectors.hl7v2.parse import load_code_map
from screener.metrics import Metrics
from screener.sources.base import MemorySink

MSH = "MSH|^~\\&|LAB|RR8^LTHT|SCREENER|RR8|{time}||{type}|{ctrl}|P|2.5|||AL|NE|GBR|UNICODE UTF-8"
PID = "PID|1||H1234567^^^RR8^MR||Smith^Jane||19610302|F|||1 Park Lane^^Leeds^^LS6 2AB^GBR|||||||||||{eth}"
PV1 = "PV1|1|I|WARD4^2^BED7^RR8||||||||||||||||V998877|||||||||||||||||||||||||202605010800|{discharge}"


def msg(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def adt(trigger: str, *extra: str, eth: str = "J", discharge: str = "", ctrl: str = "C1") -> str:
    return msg(
        MSH.format(time="20260501093000", type=f"ADT^{trigger}^ADT_A01", ctrl=ctrl),
        f"EVN|{trigger}|20260501093000",
        PID.format(eth=eth),
        PV1.format(discharge=discharge),
        *extra,
    )


def oru(*obx: str, pv1: bool = True) -> str:
    return msg(
        MSH.format(time="20260501100000", type="ORU^R01^ORU_R01", ctrl="L1"),
        PID.format(eth="J"),
        *([PV1.format(discharge="")] if pv1 else []),
        "OBR|1|PL1|FIL1|U&E^Renal panel^L|||20260501083000",
        *obx,
    )


def pharmacy(kind: str, *segments: str) -> str:
    return msg(MSH.format(time="20260501100000", type=kind, ctrl="RX1"), PID.format(eth="J"), *segments)


# --- OBX ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ref", "low", "high"),
    [("3.5-5.0", 3.5, 5.0), ("70_105", 70.0, 105.0), ("0.5 - 1.2", 0.5, 1.2), ("<5", None, 5.0), (">60", 60.0, None)],
)
def test_obx7_reference_range(ref: str, low: float | None, high: float | None) -> None:
    m = parse_message(oru(f"OBX|1|NM|2823-3^Potassium^LN||4.1|mmol/L|{ref}|N|||F")).events[0]
    assert (m.kind, m.ref_low, m.ref_high) == ("measurement", low, high)


def test_obx7_text_range_is_left_out_with_a_warning() -> None:
    parsed = parse_message(oru("OBX|1|NM|2823-3^Potassium^LN||4.1|mmol/L|see report|N|||F"))
    assert (parsed.events[0].ref_low, parsed.events[0].ref_high) == (None, None)
    assert any("OBX^1^7" in w for w in parsed.warnings)


def test_obx5_coded_value_becomes_value_code_and_text() -> None:
    line = "OBX|1|CWE|72166-2^Tobacco smoking status^LN||8517006^Ex-smoker^SCT||||||F"
    o = parse_message(oru(line)).events[0]
    assert o.kind == "observation" and o.value == "Ex-smoker"
    assert o.value_code is not None and (o.value_code.system, o.value_code.value) == ("SNOMED", "8517006")
    detected = parse_message(oru("OBX|1|CE|94500-6^SARS-CoV-2 RNA^LN||LA11882-0^Detected^LN||||||F")).events[0]
    assert detected.value_code is not None and detected.value_code.key() == "LOINC|LA11882-0"


def test_obx17_method_becomes_qualifiers() -> None:
    line = "OBX|1|NM|20150-9^FEV1^LN||2.1|L|||||F||||||LOCAL-POSTBD^Post-bronchodilator^L~252472004^Spirometry^SCT"
    m = parse_message(oru(line)).events[0]
    assert m.qualifiers is not None
    assert [q.key() for q in m.qualifiers] == ["local|LOCAL-POSTBD", "SNOMED|252472004"]


def test_pv1_19_visit_number_and_pv1_3_location_on_every_fact() -> None:
    parsed = parse_message(oru("OBX|1|NM|2823-3^Potassium^LN||6.1|mmol/L|3.5-5.0|H|||F"))
    assert len(parsed.events) == 2  # the result and its abnormal flag
    assert {(e.encounter_id, e.location) for e in parsed.events} == {("V998877", "WARD4/2/BED7")}
    no_visit = parse_message(oru("OBX|1|NM|2823-3^Potassium^LN||4.1|mmol/L||N|||F", pv1=False)).events[0]
    assert (no_visit.encounter_id, no_visit.location) == (None, None)


def test_adt_facts_carry_the_encounter_and_the_discharge_closes_the_admission() -> None:
    admit = parse_message(adt("A01", "DG1|1||E11.9^Type 2 diabetes mellitus^I10||20260501090000|A"))
    visit = next(e for e in admit.events if e.kind == "visit")
    condition = next(e for e in admit.events if e.kind == "condition")
    assert (visit.encounter_id, visit.location, visit.status, visit.ended_at) == (
        "V998877",
        "WARD4/2/BED7",
        "active",
        None,
    )
    assert visit.code is not None and visit.code.value == "encounter-class:IMP"
    assert condition.encounter_id == "V998877"
    discharge = next(
        e for e in parse_message(adt("A03", discharge="202605041530", ctrl="C2")).events if e.kind == "visit"
    )
    assert discharge.event_id == visit.event_id  # replaces the admission: the patient is no longer "in"
    assert discharge.status == "completed"
    assert discharge.occurred_at == datetime(2026, 5, 1, 7, 0, tzinfo=UTC)  # PV1-44, BST
    assert discharge.ended_at == datetime(2026, 5, 4, 14, 30, tzinfo=UTC)  # PV1-45


def test_al1_allergies() -> None:
    parsed = parse_message(
        adt("A08", "AL1|1|DA|764146007^Penicillin^SCT|SV|Anaphylaxis|20190312", "AL1|2|FA|^Peanuts|MI|Hives")
    )
    first, second = (e for e in parsed.events if e.kind == "allergy")
    assert first.code is not None and first.code.key() == "SNOMED|764146007"
    assert first.value == "Anaphylaxis" and first.date_only and first.occurred_at.date() == date(2019, 3, 12)
    assert [q.key() for q in first.qualifiers or ()] == ["local|allergen-type:DA", "SNOMED|24484000"]
    assert second.code is not None and second.code.key() == "local|Peanuts"
    assert [q.key() for q in second.qualifiers or ()] == ["local|allergen-type:FA", "SNOMED|255604002"]


def test_pd1_registered_practice_becomes_a_registration() -> None:
    parsed = parse_message(adt("A28", "PD1|||Leeds Road Surgery^^B83001|G1234567^Jones^Ann"))
    reg = next(e for e in parsed.events if e.kind == "registration")
    assert (reg.site, reg.setting, reg.ended_at) == ("B83001", "primary-care", None)
    assert reg.occurred_at == datetime(2026, 5, 1, 8, 30, tzinfo=UTC)  # the message time: PD1 has no date


# --- pharmacy and vaccination ------------------------------------------------------------------------------
def test_rde_pharmacy_order_dose_route_and_period() -> None:
    parsed = parse_message(
        pharmacy(
            "RDE^O11^RDE_O11",
            "ORC|NW|ORD1|||IP",
            "TQ1|||||||20260501|20260529",
            "RXE|^^^20260501|39695211000001102^Metformin 500mg tablets^DMD|500||mg^milligram",
            "RXR|PO^Oral^HL70162",
        )
    )
    (drug,) = parsed.events
    assert drug.kind == "drug" and drug.code is not None and drug.code.key() == "DMD|39695211000001102"
    assert drug.status == "active" and drug.route == "oral"
    assert drug.dose is not None and (drug.dose.value, drug.dose.unit) == (500.0, "mg")
    assert (drug.occurred_at.date(), drug.ended_at.date() if drug.ended_at else None) == (
        date(2026, 5, 1),
        date(2026, 5, 29),
    )
    assert drug.date_only and drug.ended_date_only


@pytest.mark.parametrize(
    ("orc", "status"),
    [
        ("ORC|NW|ORD1|||SC", "ordered"),
        ("ORC|DC|ORD1|||||||202605101200", "stopped"),
        ("ORC|SC|ORD1|||CM", "completed"),
    ],
)
def test_orc_status_and_a_later_status_replaces_the_order(orc: str, status: str) -> None:
    order = pharmacy("RDE^O11^RDE_O11", orc, "RXE|^^^20260501|860975^metformin^RXNORM|500||mg")
    first = pharmacy("RDE^O11^RDE_O11", "ORC|NW|ORD1", "RXE|^^^20260501|860975^metformin^RXNORM|500||mg")
    drug = parse_message(order).events[0]
    assert drug.status == status and drug.code is not None and drug.code.system == "RXNORM"
    assert drug.event_id == parse_message(first).events[0].event_id
    if status == "stopped":
        assert drug.ended_at == datetime(2026, 5, 10, 11, 0, tzinfo=UTC)  # ORC-9, BST


def test_omp_order_is_ordered_with_the_requested_dose() -> None:
    parsed = parse_message(
        pharmacy("OMP^O09^OMP_O09", "ORC|NW|ORD2", "RXO|372687004^Amoxicillin^SCT|250||mg", "RXR|IV")
    )
    drug = parsed.events[0]
    assert (drug.status, drug.route) == ("ordered", "intravenous")
    assert drug.dose is not None and drug.dose.value == 250.0


def test_vxu_vaccination_is_an_immunization_and_refused_is_skipped() -> None:
    parsed = parse_message(
        pharmacy(
            "VXU^V04^VXU_V04",
            "ORC|RE||IZ-1",
            "RXA|0|1|20251014||208^COVID-19 mRNA^CVX|0.3|mL^mL^UCUM||||||||||||CP|A",
            "RXR|IM^Intramuscular^HL70162",
            "ORC|RE||IZ-2",
            "RXA|0|1|20251014||141^Influenza^CVX|999||||||||||||||RE",
        )
    )
    (imm,) = parsed.events
    assert imm.kind == "immunization" and imm.status == "completed" and imm.route == "intramuscular"
    assert imm.code is not None and imm.code.key() == "local|CVX:208"
    assert imm.dose is not None and (imm.dose.value, imm.dose.unit) == (0.3, "mL")
    assert any("RXA^2^20" in w for w in parsed.warnings)


# --- fidelity findings (issue 17): each failed on the old parser -------------------------------------------
def test_fidelity_pid22_his_is_unknown_not_indian() -> None:
    # old: "HIS" was read by its first letter as NHS category H (Indian) -> asian
    parsed = parse_message(adt("A28", eth="HIS"))
    person = parsed.events[0].person
    assert person is not None and (person.ethnic_group, person.ethnic_category) == (None, None)
    assert any("PID^1^22" in w for w in parsed.warnings)
    exact = parse_message(adt("A28", eth="H")).events[0].person
    assert exact is not None and (exact.ethnic_group, exact.ethnic_category) == ("asian", "H")


def test_fidelity_pid7_future_birth_date_is_rejected() -> None:
    # old: any valid calendar date was accepted (10131113 -> 1013, or a date next year)
    text = adt("A28").replace("19610302", "20990101")
    with pytest.raises(HL7Reject) as err:
        parse_message(text)
    assert err.value.location == "PID^1^7" and "future" in err.value.reason


def test_fidelity_dg1_icd9_keeps_its_code_system() -> None:
    # old: DG1-3.3 "I9" fell through to local
    parsed = parse_message(
        adt("A08", "DG1|1||250.00^Diabetes mellitus^I9||20260501|F", "DG1|2||C10E.^DM^READ||20260501|F")
    )
    codes = [e.code.key() for e in parsed.events if e.kind == "condition" and e.code]
    assert codes == ["ICD9|250.00", "READ2|C10E."]


def test_fidelity_nested_bhs_inside_a_message_is_rejected_and_dead_lettered() -> None:
    # old: split_batch dropped the BHS wherever it was, and the message was acknowledged AA
    text = adt("A28", ctrl="N1").replace("EVN|", "BHS|^~\\&|LAB\rEVN|", 1)
    messages, _kind = split_batch(text)
    assert len(messages) == 1 and "BHS|" in messages[0]
    sink = MemorySink()
    _response, codes = process_block(text.encode(), sink, code_map=load_code_map(), position="peer")
    assert codes == ["AE"] and not sink.events
    assert len(sink.rejections) == 1 and "BHS" in sink.rejections[0].reason


def test_a_proper_batch_envelope_is_still_accepted() -> None:
    block = f"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r{adt('A28', ctrl='B1')}{adt('A28', ctrl='B2')}BTS|2\rFTS|1\r"
    sink = MemorySink()
    _response, codes = process_block(block.encode(), sink, code_map=load_code_map(), position="peer")
    assert codes == ["AA", "AA"]


def test_unread_segments_are_counted_per_type() -> None:
    parsed = parse_message(adt("A01", "NK1|1|Smith^John|SPO", "IN1|1|PLAN", "NTE|1||note", "NTE|2||more"))
    assert parsed.unmapped == {"NK1": 1, "IN1": 1, "NTE": 2}


def test_unmapped_metric_is_counted_by_the_listener() -> None:
    class MeteredSink(MemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.metrics = Metrics(CollectorRegistry())

    sink = MeteredSink()
    text = adt("A01", "NK1|1|Smith^John|SPO", "ZXX|custom")
    process_block(text.encode(), sink, code_map=load_code_map(), position="peer")
    sample = sink.metrics.registry.get_sample_value
    assert sample("screener_connector_unmapped_total", {"source": "hl7v2", "type": "NK1"}) == 1.0
    assert sample("screener_connector_unmapped_total", {"source": "hl7v2", "type": "ZXX"}) == 1.0


def test_an_invalid_field_rejects_naming_the_segment() -> None:
    with pytest.raises(HL7Reject) as err:
        parse_message(oru(f"OBX|1|NM|2823-3^Potassium^LN||4.1|{'m' * 40}||N|||F"))
    assert err.value.location == "OBX^1" and "unit" in err.value.reason


def test_an_over_long_visit_number_is_rejected_not_truncated() -> None:
    with pytest.raises(HL7Reject) as err:
        parse_message(adt("A01").replace("V998877", "V" * 65))
    assert err.value.location == "PV1^1^19"
