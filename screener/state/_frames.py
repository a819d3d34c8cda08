"""The state frames' shapes, and the batch of events split into update frames.

``PERSONS_SCHEMA`` and ``FACTS_SCHEMA`` are the column contracts of the patient state (CONTRACT.md "Fact frame
columns"); :func:`events_to_frames` turns a batch of parsed events into ``(person updates, fact rows, control
rows)`` in arrival order, the input of :func:`screener.state.apply_frames` (the fast path
:func:`screener.ingest.decode_batch` builds the same frames without parsed events).
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from screener.events import Event
from screener.vocab import TS

DO_NOT_CONTACT_CODE = ("local", "do-not-contact")

PERSONS_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "birth_date": pl.Date(),
    "sex": pl.String(),
    "ethnic_group": pl.String(),
    "ethnic_category": pl.String(),
    "lsoa": pl.String(),
    "imd_decile": pl.Int8(),
    "postcode_district": pl.String(),
    "setting": pl.String(),
    "site": pl.String(),
    "location": pl.String(),
    "do_not_contact": pl.Boolean(),
    "deceased": pl.Boolean(),
    "updated_at": TS,
}

FACTS_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "event_id": pl.String(),
    "kind": pl.String(),
    "system": pl.String(),
    "code": pl.String(),
    "value": pl.Float64(),
    "text": pl.String(),
    "unit": pl.String(),
    "occurred_at": TS,
    "status": pl.String(),
    "setting": pl.String(),
    # v2 (screener.event/v2): null when the event did not carry them.
    "recorded_at": TS,
    "ended_at": TS,
    "date_only": pl.Boolean(),
    "qualifiers": pl.List(pl.String()),
    "dose_value": pl.Float64(),
    "dose_unit": pl.String(),
    "route": pl.String(),
    "ref_low": pl.Float64(),
    "ref_high": pl.Float64(),
    "value_system": pl.String(),
    "value_code": pl.String(),
    "encounter_id": pl.String(),
    "location": pl.String(),
}

RETRACTED_SCHEMA: dict[str, pl.DataType] = {"event_id": pl.String()}

_DEMOGRAPHIC_FIELDS = (
    "birth_date",
    "sex",
    "ethnic_group",
    "ethnic_category",
    "lsoa",
    "imd_decile",
    "postcode_district",
)


def _empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def _conform(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in schema.items() if c not in frame.columns]
    if not missing and list(frame.columns) == list(schema):
        return frame
    return frame.with_columns(missing).select(list(schema))


def upgrade_facts(frame: pl.DataFrame) -> pl.DataFrame:
    """A facts frame written before some :data:`FACTS_SCHEMA` columns existed, with those columns added (null)
    and the columns in schema order. A current frame is returned unchanged. Other columns are left out."""
    return _conform(frame, FACTS_SCHEMA)


def upgrade_persons(frame: pl.DataFrame) -> pl.DataFrame:
    """:func:`upgrade_facts` for a persons frame (:data:`PERSONS_SCHEMA`)."""
    return _conform(frame, PERSONS_SCHEMA)


def events_to_frames(events: Iterable[Event]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Split a batch into (person updates, fact rows, control rows) frames, in arrival order.

    Control rows carry consent, death, corrections and merges: columns ``seq, patient_id, op, arg, status``.
    """
    person_rows: list[dict[str, object]] = []
    fact_rows: list[dict[str, object]] = []
    control_rows: list[dict[str, object]] = []
    for seq, ev in enumerate(events):
        if ev.corrects is not None:
            control_rows.append({"seq": seq, "patient_id": ev.patient_id, "op": "retract", "arg": ev.corrects})
        if ev.kind == "person":
            assert ev.person is not None
            row: dict[str, object] = {"seq": seq, "patient_id": ev.patient_id}
            for name in _DEMOGRAPHIC_FIELDS:
                row[name] = getattr(ev.person, name)
            row["setting"] = ev.setting
            row["site"] = ev.site
            row["updated_at"] = ev.occurred_at
            person_rows.append(row)
            if ev.person.merged_from:
                control_rows.append(
                    {"seq": seq, "patient_id": ev.patient_id, "op": "merge", "arg": ev.person.merged_from}
                )
            continue
        if ev.kind == "consent":
            if ev.code is not None and (ev.code.system, ev.code.value) == DO_NOT_CONTACT_CODE:
                op = "dnc_on" if ev.status == "active" else "dnc_off"
                control_rows.append({"seq": seq, "patient_id": ev.patient_id, "op": op, "arg": None})
            continue
        if ev.kind == "death":
            if ev.status != "entered-in-error":
                control_rows.append({"seq": seq, "patient_id": ev.patient_id, "op": "death", "arg": None})
            continue
        if ev.status == "entered-in-error":
            # An entered-in-error fact without `corrects` retracts any earlier copy of itself.
            control_rows.append({"seq": seq, "patient_id": ev.patient_id, "op": "retract", "arg": ev.event_id})
            continue
        fact_rows.append(_fact_row(seq, ev))
        location = ev.location if ev.kind == "visit" else None
        if ev.setting is not None or location is not None:
            site = ev.site if ev.setting is not None else None
            person_rows.append(
                {"seq": seq, "patient_id": ev.patient_id, "setting": ev.setting, "site": site, "location": location}
            )
    flags = ("do_not_contact", "deceased")
    upd_schema: dict[str, pl.DataType] = {
        "seq": pl.Int64(),
        **{k: v for k, v in PERSONS_SCHEMA.items() if k not in flags},
    }
    persons = (
        pl.DataFrame(person_rows, schema=upd_schema, orient="row") if person_rows else pl.DataFrame(schema=upd_schema)
    )
    facts = (
        pl.DataFrame(fact_rows, schema={"seq": pl.Int64, **FACTS_SCHEMA}, orient="row")
        if fact_rows
        else pl.DataFrame(schema={"seq": pl.Int64, **FACTS_SCHEMA})
    )
    control = pl.DataFrame(
        control_rows or None,
        schema={"seq": pl.Int64, "patient_id": pl.String, "op": pl.String, "arg": pl.String},
    )
    return persons, facts, control


def _fact_row(seq: int, ev: Event) -> dict[str, object]:
    """One facts row (plus ``seq``) of a clinical event: the :data:`FACTS_SCHEMA` columns."""
    numeric = ev.value if isinstance(ev.value, float | int) and not isinstance(ev.value, bool) else None
    return {
        "seq": seq,
        "patient_id": ev.patient_id,
        "event_id": ev.event_id,
        "kind": ev.kind,
        "system": ev.code.system if ev.code else None,
        "code": ev.code.value if ev.code else None,
        "value": float(numeric) if numeric is not None else None,
        "text": ev.value if isinstance(ev.value, str) else None,
        "unit": ev.unit,
        "occurred_at": ev.occurred_at,
        "status": ev.status,
        "setting": ev.setting,
        "recorded_at": ev.recorded_at,
        "ended_at": ev.ended_at,
        "date_only": ev.date_only,
        "qualifiers": [q.key() for q in ev.qualifiers] if ev.qualifiers is not None else None,
        "dose_value": ev.dose.value if ev.dose else None,
        "dose_unit": ev.dose.unit if ev.dose else None,
        "route": ev.route,
        "ref_low": ev.ref_low,
        "ref_high": ev.ref_high,
        "value_system": ev.value_code.system if ev.value_code else None,
        "value_code": ev.value_code.value if ev.value_code else None,
        "encounter_id": ev.encounter_id,
        "location": ev.location,
    }
