"""Messages built by a third-party HL7 library (``hl7apy``, its own v2.5 structures and ER7 encoder) read by the
HL7 v2 connector: every v2 field the message carries arrives, and unread segments are counted."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.hl7v2 import parse_message

hl7apy_core = pytest.importorskip("hl7apy.core")


def _msh(m: object, kind: str, ctrl: str) -> None:
    msh = m.msh  # type: ignore[attr-defined]
    msh.msh_3, msh.msh_4, msh.msh_7, msh.msh_9, msh.msh_10, msh.msh_11 = (
        "LAB",
        "RR8",
        "20260501100000",
        kind,
        ctrl,
        "P",
    )


def test_hl7apy_oru_r01_with_range_coded_value_method_and_visit() -> None:
    m = hl7apy_core.Message("ORU_R01", version="2.5")
    _msh(m, "ORU^R01^ORU_R01", "APY1")
    result = m.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    patient.pid.pid_3 = "H1234567^^^RR8^MR"
    visit = patient.add_group("ORU_R01_VISIT")
    visit.pv1.pv1_2, visit.pv1.pv1_3, visit.pv1.pv1_19 = "I", "WARD4^^BED7", "V42"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_3, order.obr.obr_7 = "FIL9", "20260501083000"
    k = order.add_group("ORU_R01_OBSERVATION").obx
    k.obx_2, k.obx_3, k.obx_5, k.obx_6, k.obx_7, k.obx_8, k.obx_11 = (
        "NM",
        "2823-3^Potassium^LN",
        "6.1",
        "mmol/L",
        "3.5-5.0",
        "H",
        "F",
    )
    k.obx_17 = "LOCAL-ISE^Indirect ISE^L"
    smoking = order.add_group("ORU_R01_OBSERVATION").obx
    smoking.obx_2, smoking.obx_3, smoking.obx_5, smoking.obx_11 = (
        "CWE",
        "72166-2^Tobacco smoking status^LN",
        "8517006^Ex-smoker^SCT",
        "F",
    )
    parsed = parse_message(m.to_er7())
    potassium, flag, status = parsed.events
    assert (potassium.value, potassium.unit, potassium.ref_low, potassium.ref_high) == (6.1, "mmol/L", 3.5, 5.0)
    assert [q.key() for q in potassium.qualifiers or ()] == ["local|LOCAL-ISE"]
    assert potassium.occurred_at == datetime(2026, 5, 1, 7, 30, tzinfo=UTC)  # OBR-7, BST
    assert flag.value == "H"
    assert status.value_code is not None and status.value_code.key() == "SNOMED|8517006"
    assert {(e.encounter_id, e.location) for e in parsed.events} == {("V42", "WARD4/BED7")}
    assert parsed.unmapped == {}


def test_hl7apy_adt_a01_with_allergy_icd9_diagnosis_registration_and_unread_segments() -> None:
    m = hl7apy_core.Message("ADT_A01", version="2.5")
    _msh(m, "ADT^A01^ADT_A01", "APY2")
    m.evn.evn_2 = "20260501093000"
    m.pid.pid_3, m.pid.pid_7, m.pid.pid_8 = "H7654321^^^RR8^MR", "19700101", "M"
    m.pd1.pd1_3 = "Leeds Road Surgery^^B83001"
    m.pv1.pv1_2, m.pv1.pv1_3, m.pv1.pv1_19, m.pv1.pv1_44 = "I", "WARD9^^BED1", "V77", "202605010800"
    m.add_segment("NK1").nk1_2 = "Smith^John"
    m.al1.al1_2, m.al1.al1_3, m.al1.al1_4 = "DA", "764146007^Penicillin^SCT", "SV"
    m.dg1.dg1_3, m.dg1.dg1_5 = "250.00^Diabetes mellitus^I9", "20260501"
    parsed = parse_message(m.to_er7())
    by_kind = {e.kind: e for e in parsed.events}
    assert set(by_kind) == {"person", "registration", "visit", "condition", "allergy"}
    assert by_kind["registration"].site == "B83001"
    assert (by_kind["visit"].encounter_id, by_kind["visit"].location) == ("V77", "WARD9/BED1")
    condition = by_kind["condition"]
    assert condition.code is not None and condition.code.key() == "ICD9|250.00"
    assert condition.date_only and condition.encounter_id == "V77"  # DG1-5 20260501 stays that calendar day
    assert condition.occurred_at == datetime(2026, 5, 1, tzinfo=UTC)
    allergy = by_kind["allergy"]
    assert allergy.code is not None and allergy.code.key() == "SNOMED|764146007"
    assert [q.key() for q in allergy.qualifiers or ()] == ["local|allergen-type:DA", "SNOMED|24484000"]
    assert parsed.unmapped == {"NK1": 1}
