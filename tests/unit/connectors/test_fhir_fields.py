"""FHIR R4 -> canonical event v2 (issue 13) and the FHIR fidelity findings (issue 17).

``synthea_format_v2_collection_bundle.json`` is hand-written in Synthea's R4 output shapes (Encounter with
locations, Immunizations with CVX codes, an AllergyIntolerance, Medication* with dosage) with UK codes mixed in.
Each ``fidelity`` test failed on the parser before these changes (noted per test).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.fhir import FHIRReject, parse_payload
from connectors.fhir.files import load_files
from screener.events import Event
from screener.metrics import Metrics
from screener.sources.base import MemorySink

DATA = Path(__file__).parents[2] / "data" / "fhir"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ENCOUNTER = "0c9d8e7f-1a2b-4c3d-8e9f-a1b2c3d4e5f6"


def bundle() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / "synthea_format_v2_collection_bundle.json").read_text())
    return loaded


def by_code(events: list[Event]) -> dict[str, Event]:
    return {e.code.value: e for e in events if e.code is not None}


@pytest.fixture(scope="module")
def parsed() -> Any:
    return parse_payload(bundle(), now=NOW)


def test_encounter_class_period_location_and_id(parsed: Any) -> None:
    (visit,) = [e for e in parsed.events if e.kind == "visit"]
    assert visit.code is not None and visit.code.key() == "local|encounter-class:IMP"
    assert (visit.occurred_at, visit.ended_at) == (
        datetime(2026, 3, 2, 10, 15, tzinfo=UTC),
        datetime(2026, 3, 6, 16, 40, tzinfo=UTC),
    )
    assert (visit.encounter_id, visit.location, visit.status) == (ENCOUNTER, "Ward 9 (respiratory)", "completed")
    assert [q.key() for q in visit.qualifiers or ()] == ["SNOMED|183452005"]
    linked = {e.kind for e in parsed.events if e.encounter_id == ENCOUNTER and e.kind != "visit"}
    assert linked == {"condition", "measurement", "observation", "drug", "immunization"}


def test_condition_resolved_with_abatement(parsed: Any) -> None:
    pneumonia = by_code(parsed.events)["233604007"]
    assert pneumonia.status == "resolved" and pneumonia.ended_at == datetime(2026, 3, 20, tzinfo=UTC)


def test_observation_range_coded_value_and_method(parsed: Any) -> None:
    codes = by_code(parsed.events)
    alt = codes["1742-6"]
    assert (alt.value, alt.unit, alt.ref_low, alt.ref_high) == (141.0, "U/L", 7.0, 56.0)
    smoking = codes["72166-2"]
    assert smoking.value_code is not None and smoking.value_code.key() == "SNOMED|8517006"
    assert smoking.value == "Ex-smoker (finding)"
    fev1 = codes["20150-9"]
    assert [q.key() for q in fev1.qualifiers or ()] == ["SNOMED|251880004"]


def test_medications_dose_route_period_and_status(parsed: Any) -> None:
    codes = by_code(parsed.events)
    amox = codes["308182"]
    assert amox.code is not None and amox.code.system == "RXNORM"
    assert (amox.status, amox.route) == ("stopped", "oral")
    assert amox.dose is not None and (amox.dose.value, amox.dose.unit) == (500.0, "mg")
    assert amox.ended_at == datetime(2026, 3, 9, 11, 0, tzinfo=UTC)  # dispenseRequest.validityPeriod.end
    ceftriaxone = codes["1807513"]
    assert (ceftriaxone.status, ceftriaxone.route, ceftriaxone.encounter_id) == ("completed", "intravenous", ENCOUNTER)
    assert ceftriaxone.ended_at == datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
    salbutamol = codes["39113611000001102"]
    assert (salbutamol.code.system if salbutamol.code else None, salbutamol.route) == ("DMD", "inhaled")
    assert salbutamol.date_only and salbutamol.occurred_at == datetime(2025, 11, 1, tzinfo=UTC)
    assert salbutamol.dose is not None and salbutamol.dose.unit == "puff"


def test_allergy_immunizations_planned_procedure_and_service_request(parsed: Any) -> None:
    codes = by_code(parsed.events)
    allergy = codes["764146007"]
    assert allergy.kind == "allergy" and allergy.value == "Anaphylaxis" and allergy.date_only
    assert [q.key() for q in allergy.qualifiers or ()] == [
        "local|allergen-type:medication",
        "local|allergy-type:allergy",
        "local|criticality:high",
        "SNOMED|24484000",
    ]
    immunizations = [e for e in parsed.events if e.kind == "immunization"]
    assert sorted(e.code.value for e in immunizations if e.code) == ["cvx:140", "cvx:208", "cvx:33"]
    assert codes["10847001"].status == "planned"  # Procedure.status preparation
    ct = codes["169069000"]
    assert (ct.kind, ct.status, ct.date_only) == ("procedure", "ordered", True)
    assert ct.occurred_at == datetime(2026, 5, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("intent", "status", "expected"),
    [
        ("order", "active", "active"),
        ("plan", "active", "planned"),
        ("order", "draft", "ordered"),
        ("order", "completed", "completed"),
    ],
)
def test_medication_request_intent_and_status(intent: str, status: str, expected: str) -> None:
    req = {
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": intent,
        "subject": {"reference": "Patient/1"},
        "medicationCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "325072002"}]},
        "authoredOn": "2026-01-01",
        "dispenseRequest": {"expectedSupplyDuration": {"value": 28, "unit": "days", "code": "d"}},
    }
    drug = parse_payload(req).events[0]
    assert drug.status == expected and drug.ended_at == datetime(2026, 1, 29, tzinfo=UTC)


# --- fidelity findings (issue 17) --------------------------------------------------------------------------
def test_fidelity_unresolvable_medication_reference_rejects_only_its_entry(parsed: Any) -> None:
    # old: the whole payload was rejected (a 223-entry Synthea bundle lost for one reference)
    assert [(i, type(e).__name__) for i, e in parsed.rejected] == [(8, "UnresolvedReference")]
    assert parsed.rejected[0][1].path == "Bundle.entry[8].resource.medicationReference"
    assert len(parsed.events) == 15  # every other entry: 1 person, 1 visit, 13 facts
    transaction = parse_payload({**bundle(), "type": "transaction"}, now=NOW)  # the same, even in a transaction
    assert len(transaction.rejected) == 1 and len(transaction.events) == len(parsed.events)


def test_fidelity_unmapped_resource_types_are_counted(parsed: Any) -> None:
    # old: Immunization and AllergyIntolerance were dropped; now only truly unmapped types are counted
    assert parsed.skipped == {"Organization": 1, "CarePlan": 1, "Claim": 2}


def test_fidelity_fhir_date_stays_the_calendar_date() -> None:
    # old: "2026-07-01" became Europe/London midnight = 2026-06-30T23:00Z, the day before
    cond = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
        "onsetDateTime": "2026-07-01",
    }
    ev = parse_payload(cond).events[0]
    assert ev.occurred_at == datetime(2026, 7, 1, tzinfo=UTC) and ev.date_only
    assert json.loads(ev.model_dump_json(by_alias=True))["occurred_at"] == "2026-07-01"


def test_fidelity_over_long_patient_id_is_rejected_not_truncated() -> None:
    # old: both ids were cut to the same 64 characters, merging two patients
    long_id = "p" * 64
    for suffix in ("-a", "-b"):
        with pytest.raises(FHIRReject) as err:
            parse_payload({"resourceType": "Patient", "id": long_id + suffix})
        assert err.value.path == "$.id" and "64" in err.value.reason
    with pytest.raises(FHIRReject) as ref_err:
        parse_payload(
            {
                "resourceType": "Condition",
                "subject": {"reference": f"Patient/{long_id}x"},
                "code": {"text": "x"},
            }
        )
    assert ref_err.value.path == "$.subject.reference"


def test_fidelity_strict_uk_core_ethnic_category() -> None:
    ext = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"

    def person(code: str) -> Any:
        res = {
            "resourceType": "Patient",
            "id": "1",
            "extension": [{"url": ext, "valueCodeableConcept": {"coding": [{"code": code}]}}],
        }
        return parse_payload(res).events[0].person

    assert (person("HIS").ethnic_group, person("H").ethnic_group) == (None, "asian")


def test_fidelity_patient_birth_date_more_than_120_years_ago_is_rejected() -> None:
    with pytest.raises(FHIRReject) as err:
        parse_payload({"resourceType": "Patient", "id": "1", "birthDate": "1013-11-13"})
    assert err.value.path == "$.birthDate"


def test_fidelity_from_file_counts_rejects_and_unmapped(tmp_path: Path) -> None:
    # old: the whole file was dead-lettered and load_path reported success with nothing to show for it
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(bundle()))

    class MeteredSink(MemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.metrics = Metrics(CollectorRegistry())

    sink = MeteredSink()
    result = load_files(path, sink)
    assert result.rejected == 1 and len(sink.rejections) == 1
    assert sink.rejections[0].position.endswith("Bundle.entry[8].resource.medicationReference")
    assert result.unmapped == {"Organization": 1, "CarePlan": 1, "Claim": 2}
    assert result.events == len(sink.events) == 15
    sample = sink.metrics.registry.get_sample_value
    assert sample("screener_connector_unmapped_total", {"source": "fhir", "type": "Claim"}) == 2.0


def test_from_file_command_exits_non_zero_when_anything_was_rejected(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from connectors.fhir import connector

    path = tmp_path / "patient.json"
    path.write_text(json.dumps(bundle()))
    result = CliRunner().invoke(connector.command(), ["--from-file", str(path), "--dry-run"])
    assert result.exit_code == 1
    assert "1 rejected" in result.stderr and "unmapped: CarePlan x1, Claim x2, Organization x1" in result.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"resourceType": "Patient", "id": "1", "birthDate": "1961-03-02"}))
    ok = CliRunner().invoke(connector.command(), ["--from-file", str(good), "--dry-run"])
    assert ok.exit_code == 0, ok.stderr
