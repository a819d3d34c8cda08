"""FHIR R4 parser: Synthea-format and UK Core inputs, Bundles of every accepted type, and errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.fhir import FHIRReject, load_path, parse_payload
from screener.sources.base import MemorySink

DATA = Path(__file__).parents[2] / "data" / "fhir"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def test_synthea_format_transaction_bundle_loads() -> None:
    parsed = parse_payload(load("synthea_format_transaction_bundle.json"), now=NOW)
    assert parsed.bundle_type == "transaction"
    assert parsed.skipped == {"Organization": 1, "Claim": 1, "ExplanationOfBenefit": 1}
    by_kind: dict[str, list[Any]] = {}
    for e in parsed.events:
        by_kind.setdefault(e.kind, []).append(e)
    pid = "5cbc121b-cd71-4428-b8b7-31e53eba8184"
    assert {e.patient_id for e in parsed.events} == {pid}  # urn:uuid references resolve to the Patient id
    person = by_kind["person"][0].person
    assert person is not None and (person.sex, person.birth_date.isoformat()) == ("M", "1958-07-21")  # type: ignore[union-attr]
    assert person.postcode_district is None  # a US zip code is not a UK postcode
    assert [(e.code.system, e.code.value) for e in by_kind["condition"]] == [("SNOMED", "44054006")]
    measurements = {e.code.value: (e.value, e.unit) for e in by_kind["measurement"]}
    assert measurements == {"4548-4": (7.2, "%"), "8462-4": (82.0, "mm[Hg]"), "8480-6": (131.0, "mm[Hg]")}
    assert by_kind["observation"][0].value == "Never smoker"
    drug = by_kind["drug"][0]
    # fidelity (issue 13): RxNorm is a code system now; the old parser sent ("local", "rxnorm:860975")
    assert drug.code is not None and (drug.code.system, drug.code.value) == ("RXNORM", "860975")
    assert by_kind["visit"][0].setting == "hospital" and by_kind["visit"][0].status == "completed"
    encounter = by_kind["visit"][0].encounter_id
    assert encounter is not None and drug.encounter_id == encounter  # facts point at their Encounter
    assert by_kind["procedure"][0].occurred_at == datetime(2019, 3, 4, 15, 8, 24, tzinfo=UTC)


def test_uk_core_bulk_ndjson(tmp_path: Path) -> None:
    sink = MemorySink()
    resources, events = load_path(DATA / "bulk_export.ndjson", sink)
    assert (resources, events) == (3, 3)
    person = sink.events[0].person
    assert person is not None
    assert (person.nhs_number, person.ethnic_group, person.ethnic_category, person.postcode_district) == (
        "9434765919",
        "asian",
        "J",
        "BD7",
    )
    egfr = sink.events[1]
    # no offset: Europe/London (BST on 1 April 2026) -> 08:00 UTC
    assert egfr.occurred_at == datetime(2026, 4, 1, 8, 0, tzinfo=UTC) and egfr.unit == "mL/min/1.73m2"
    drug = sink.events[2]
    assert drug.code is not None and drug.code.system == "DMD"


def test_bulk_ndjson_bad_line_is_dead_lettered_and_loading_continues(tmp_path: Path) -> None:
    path = tmp_path / "Observation.ndjson"
    good = (DATA / "bulk_export.ndjson").read_text().splitlines()[1]
    path.write_text(f"{good}\n{{not json\n" + json.dumps({"resourceType": "Observation", "status": "final"}) + "\n")
    sink = MemorySink()
    resources, events = load_path(path, sink)
    assert (resources, events) == (1, 1)
    assert [r.position.rsplit(":", 1)[1] for r in sink.rejections] == ["2", "3"]
    assert "Observation at Observation.ndjson:3.subject" in sink.rejections[1].reason


def test_backport_subscription_notification() -> None:
    parsed = parse_payload(load("backport_subscription_notification.json"), now=NOW)
    assert len(parsed.events) == 1
    visit = parsed.events[0]
    assert visit.kind == "visit" and visit.patient_id == "RR8-H1234567" and visit.setting == "hospital"
    assert visit.occurred_at == datetime(2026, 5, 1, 8, 29, 58, tzinfo=UTC)


@pytest.mark.parametrize("btype", ["batch", "transaction", "collection", "searchset"])
def test_bundle_types(btype: str) -> None:
    obs = json.loads((DATA / "bulk_export.ndjson").read_text().splitlines()[1])
    parsed = parse_payload({"resourceType": "Bundle", "type": btype, "entry": [{"resource": obs}]})
    assert len(parsed.events) == 1


def test_unsupported_bundle_type_is_400() -> None:
    with pytest.raises(FHIRReject) as err:
        parse_payload({"resourceType": "Bundle", "type": "document", "entry": []})
    assert err.value.status == 400 and err.value.path == "Bundle.type"


def test_invalid_entry_names_resource_and_path() -> None:
    bad = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "62238-1"}]},
        "subject": {"reference": "Patient/1"},
        "valueQuantity": {"value": "forty"},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "Patient", "id": "1"}}, {"resource": bad}],
    }
    with pytest.raises(FHIRReject) as err:  # a transaction is atomic
        parse_payload(bundle)
    assert err.value.status == 422 and err.value.resource_type == "Observation"
    assert err.value.path == "Bundle.entry[1].resource.valueQuantity.value"
    parsed = parse_payload({**bundle, "type": "batch"})  # a batch refuses only the bad entry
    assert [e.kind for e in parsed.events] == ["person"]
    assert [(i, e.path) for i, e in parsed.rejected] == [(1, "Bundle.entry[1].resource.valueQuantity.value")]


@pytest.mark.parametrize(
    ("resource", "path"),
    [
        ({"resourceType": "Condition", "code": {"coding": [{"code": "E11"}]}}, "$.subject"),
        ({"resourceType": "Condition", "subject": {"reference": "Patient/1"}}, "$.code"),
        (
            {
                "resourceType": "Condition",
                "subject": {"reference": "Patient/1"},
                "code": {"text": "x"},
                "onsetDateTime": "01/02/2020",
            },
            "$.onsetDateTime",
        ),
        ({"resourceType": "Patient", "id": "1", "birthDate": "1961-02-30"}, "$.birthDate"),
        ({"resourceType": "Patient", "id": "1", "gender": "F"}, "$.gender"),
        (
            {
                "resourceType": "MedicationRequest",
                "subject": {"reference": "Patient/1"},
                "medicationReference": {"reference": "Medication/absent"},
            },
            "$.medicationReference",
        ),
    ],
)
def test_bad_resources(resource: dict[str, Any], path: str) -> None:
    with pytest.raises(FHIRReject) as err:
        parse_payload(resource)
    assert err.value.path == path and err.value.resource_type == resource["resourceType"]


def test_lone_unsupported_resource_is_rejected() -> None:
    with pytest.raises(FHIRReject) as err:
        parse_payload({"resourceType": "Claim", "id": "1"})
    assert "not supported" in err.value.reason


def test_versions_and_entered_in_error_retract() -> None:
    base = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "62238-1"}]},
        "effectiveDateTime": "2026-04-01",
        "valueQuantity": {"value": 41, "code": "mL/min/1.73m2"},
    }
    v1 = parse_payload(base).events[0]
    v2 = parse_payload(
        {**base, "meta": {"versionId": "2"}, "status": "amended", "valueQuantity": {"value": 44}}
    ).events[0]
    v3 = parse_payload({**base, "meta": {"versionId": "3"}, "status": "entered-in-error"}).events[0]
    assert v2.corrects == v1.event_id and v2.value == 44.0
    assert v3.status == "entered-in-error" and v3.corrects == f"{v1.event_id}-v3"


def test_medication_reference_resolved_in_bundle() -> None:
    med = {
        "resourceType": "Medication",
        "id": "med1",
        "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "A10AE04"}]},
    }
    req = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "subject": {"reference": "Patient/1"},
        "medicationReference": {"reference": "urn:uuid:med-1"},
        "authoredOn": "2026-01-01",
    }
    parsed = parse_payload(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"fullUrl": "urn:uuid:med-1", "resource": med}, {"resource": req}],
        }
    )
    assert parsed.events[0].code is not None and parsed.events[0].code.value == "A10AE04"


def test_refuted_condition_is_a_retraction() -> None:
    cond = {
        "resourceType": "Condition",
        "id": "c",
        "subject": {"reference": "Patient/1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
        "verificationStatus": {"coding": [{"code": "refuted"}]},
    }
    ev = parse_payload(cond).events[0]
    assert ev.status == "entered-in-error" and ev.corrects is not None and ev.code is not None
    assert ev.code.system == "ICD10"


def test_non_ascii_text_survives() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/Zoë"},
        "code": {"text": "Ürin commentaire"},
        "valueString": "Hämolysiert ±",
    }
    ev = parse_payload(obs).events[0]
    assert ev.patient_id == "Zoë" and ev.value == "Hämolysiert ±"
