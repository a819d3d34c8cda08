"""One patient's rows -> validated canonical events (the slow, exact path of :func:`population.generate`)."""

from __future__ import annotations

from typing import Any

from screener.events import Event, Person

from ._base import SOURCE

__all__ = ["_fact_event", "_person_event"]


def _person_event(row: dict[str, Any], seed: int) -> Event:
    demographics = Person(
        birth_date=row["birth_date"],
        sex=row["sex"],
        ethnic_group=row["ethnic_group"],
        ethnic_category=row["ethnic_category"],
        lsoa=row["lsoa"],
        imd_decile=row["imd_decile"],
        postcode_district=row["postcode_district"],
        nhs_number=row["nhs_number"],
    )
    return Event(
        event_id=f"syn{seed}-{row['patient_id']}-p",
        source=SOURCE,
        kind="person",
        patient_id=row["patient_id"],
        occurred_at=row["updated_at"],
        person=demographics,
        setting=row["home_setting"],
        site=row["home_site"],
    )


def _fact_event(row: dict[str, Any]) -> Event:
    code = {"system": row["system"], "value": row["code"]} if row["code"] is not None else None
    fields = {
        "event_id": row["event_id"],
        "source": SOURCE,
        "kind": row["kind"],
        "patient_id": row["patient_id"],
        "occurred_at": row["occurred_at"],
        "code": code,
        "value": row["value"],
        "unit": row["unit"],
        "status": row["status"],
        "setting": row["setting"],
        "site": row["site"],
        "corrects": row["corrects"],
        "ended_at": row["ended_at"],
        "ref_low": row["ref_low"],
        "ref_high": row["ref_high"],
        "route": row["route"],
        "encounter_id": row["encounter_id"],
        "location": row["location"],
    }
    if row["dose_value"] is not None:
        fields["dose"] = {"value": row["dose_value"], "unit": row["dose_unit"]}
    if row.get("qualifiers"):
        fields["qualifiers"] = [dict(zip(("system", "value"), q.split("|", 1), strict=True)) for q in row["qualifiers"]]
    if row["value_code"] is not None:
        fields["value_code"] = {"system": row["value_system"], "value": row["value_code"]}
    return Event.model_validate({k: v for k, v in fields.items() if v is not None})
