"""Patient state as Polars frames, built and updated from canonical events.

Two frames, both keyed by ``patient_id``:

``persons``  one row per patient: demographics, the setting they were last seen in, the do-not-contact flag
             and whether they have died.
``facts``    one row per clinical fact (the kinds in :data:`FACT_KINDS`), long format: patient, event id,
             kind, code system, code, numeric value, text value, unit, time, status, setting, then the v2
             columns (recorded and end times, the date-only flag, qualifiers as ``SYSTEM|value`` strings, dose,
             route, reference range, coded value, encounter, location). Absent in the event = null.

``persons.location`` is the location of the patient's latest visit (in arrival order, like ``setting``) that
carried one. A frame written before a column existed (an old snapshot) is brought to the current schema by
:func:`upgrade_facts` / :func:`upgrade_persons` (the new columns null).

:func:`apply_events` is pure: it takes a state and a batch of events and returns the new state plus the ids of
the patients whose records changed (the ones the engine must re-screen). It applies the correction semantics
documented in :mod:`screener.events`. Time is UTC, microseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from screener.events import Event
from screener.vocab import FACT_KINDS, TS

__all__ = [
    "DO_NOT_CONTACT_CODE",
    "FACTS_SCHEMA",
    "FACT_KINDS",
    "PERSONS_SCHEMA",
    "TS",
    "FactFilter",
    "LiveState",
    "PatientState",
    "StateParts",
    "apply_events",
    "apply_frames",
    "events_to_frames",
    "load_snapshot",
    "load_snapshot_parts",
    "prune_facts",
    "save_snapshot",
    "upgrade_facts",
    "upgrade_persons",
]

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


@dataclass(frozen=True)
class PatientState:
    """Immutable pair of frames. Build an empty one with ``PatientState()``."""

    persons: pl.DataFrame = field(default_factory=lambda: _empty(PERSONS_SCHEMA))
    facts: pl.DataFrame = field(default_factory=lambda: _empty(FACTS_SCHEMA))
    #: Tombstones: event ids that a correction or an entered-in-error event retracted. A re-sent or replayed
    #: copy of a retracted event arriving later is ignored instead of coming back to life.
    retracted: pl.DataFrame = field(default_factory=lambda: _empty(RETRACTED_SCHEMA))

    @property
    def patient_count(self) -> int:
        return self.persons.height

    def select_patients(self, patient_ids: pl.Series | Sequence[str]) -> PatientState:
        """The state restricted to the given patients (used to re-screen only the touched ones)."""
        ids = pl.Series("patient_id", list(patient_ids), dtype=pl.String)
        return PatientState(
            persons=self.persons.filter(pl.col("patient_id").is_in(ids.implode())),
            facts=self.facts.filter(pl.col("patient_id").is_in(ids.implode())),
            retracted=self.retracted,
        )


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


def apply_events(
    state: PatientState,
    events: Sequence[Event],
    keep: pl.Expr | FactFilter | None = None,
    *,
    changed_only: bool = False,
) -> tuple[PatientState, pl.Series]:
    """Apply a batch of events; return the new state and the touched patient ids (unique, sorted).

    Idempotent per ``event_id``: replaying a batch yields the same state. Patients who appear only in facts
    get a person row with unknown demographics, so every fact has a person. ``keep`` (an expression over the
    facts frame) drops new facts no study can use; their patients still count as touched, unless
    ``changed_only``: then the returned ids are only the patients whose kept facts or person row (demographics,
    setting, flags) actually changed, the ones whose screening result can differ.
    """
    if not events:
        return state, pl.Series("patient_id", [], dtype=pl.String)
    upd, new_facts, control = events_to_frames(events)
    return apply_frames(state, upd, new_facts, control, keep, changed_only=changed_only)


def apply_frames(
    state: PatientState,
    upd: pl.DataFrame,
    new_facts: pl.DataFrame,
    control: pl.DataFrame,
    keep: pl.Expr | FactFilter | None = None,
    *,
    changed_only: bool = False,
) -> tuple[PatientState, pl.Series]:
    """:func:`apply_events` on a batch already split into frames: ``(upd, new_facts, control)`` as
    :func:`events_to_frames` (or :func:`screener.ingest.decode_batch`) builds them. Same contract."""
    facts = state.facts
    # Retractions (corrections and entered-in-error) remove earlier facts by event id.
    retracted = control.filter(pl.col("op") == "retract")
    if retracted.height:
        facts = facts.filter(~pl.col("event_id").is_in(retracted["arg"].implode()))
        # A later fact in the same batch may itself be retracted by a still-later correction.
        later = new_facts.join(
            retracted.select(pl.col("arg").alias("event_id"), pl.col("seq").alias("rseq")), on="event_id", how="left"
        )
        new_facts = later.filter(pl.col("rseq").is_null() | (pl.col("rseq") < pl.col("seq"))).drop("rseq")
    tombstones = state.retracted
    if tombstones.height:
        new_facts = new_facts.filter(~pl.col("event_id").is_in(tombstones["event_id"].implode()))
    if retracted.height:
        tombstones = pl.concat([tombstones, retracted.select(pl.col("arg").alias("event_id"))], how="vertical").unique(
            maintain_order=True
        )
    kept = new_facts.drop("seq")
    if isinstance(keep, FactFilter):
        kept = keep(kept)
    elif keep is not None:
        kept = kept.filter(keep.fill_null(False))
    if kept.height:
        # Only new event ids can collide (a replayed or re-sent event): drop the older copies of those alone,
        # instead of de-duplicating the whole frame on every batch.
        kept = kept.unique(subset=["event_id"], keep="last", maintain_order=True)
        facts = pl.concat([facts.filter(~pl.col("event_id").is_in(kept["event_id"].implode())), kept], how="vertical")

    persons = state.persons
    merges = control.filter(pl.col("op") == "merge")
    if merges.height:
        mapping = dict(zip(merges["arg"].to_list(), merges["patient_id"].to_list(), strict=True))
        facts = facts.with_columns(pl.col("patient_id").replace(mapping))
        persons = persons.filter(~pl.col("patient_id").is_in(merges["arg"].implode()))

    touched = (
        pl.concat(
            [upd["patient_id"], new_facts["patient_id"], control["patient_id"], retracted_patients(state, retracted)]
        )
        .unique()
        .sort()
    )
    if merges.height:
        # A retired id is gone, even when its own facts arrived in this same batch: they now belong to the
        # surviving patient, who is touched instead.
        touched = touched.filter(~touched.is_in(merges["arg"].implode()))

    # Person updates: the last non-null value per field wins.
    if upd.height:
        latest = (
            upd.sort("seq")
            .group_by("patient_id", maintain_order=True)
            .agg([pl.col(c).drop_nulls().last() for c in upd.columns if c not in ("seq", "patient_id")])
        )
        persons = _upsert_persons(persons, latest)
    missing = touched.to_frame().join(persons.select("patient_id"), on="patient_id", how="anti")
    if missing.height:
        persons = pl.concat(
            [
                persons,
                missing.with_columns(
                    [pl.lit(None, dtype=t).alias(c) for c, t in PERSONS_SCHEMA.items() if c != "patient_id"]
                )
                .with_columns(pl.lit(False).alias("do_not_contact"), pl.lit(False).alias("deceased"))
                .select(list(PERSONS_SCHEMA)),
            ],
            how="vertical",
        )

    flags = control.filter(pl.col("op").is_in(["dnc_on", "dnc_off", "death"]))
    if flags.height:
        dnc = (
            flags.filter(pl.col("op") != "death")
            .sort("seq")
            .group_by("patient_id")
            .agg((pl.col("op").last() == "dnc_on").alias("_dnc"))
        )
        dead = (
            flags.filter(pl.col("op") == "death")
            .select("patient_id")
            .unique()
            .with_columns(pl.lit(True).alias("_dead"))
        )
        persons = (
            persons.join(dnc, on="patient_id", how="left")
            .join(dead, on="patient_id", how="left")
            .with_columns(
                pl.coalesce("_dnc", "do_not_contact").alias("do_not_contact"),
                pl.coalesce("_dead", "deceased").alias("deceased"),
            )
            .drop("_dnc", "_dead")
        )
    if changed_only:
        fact_side = [kept["patient_id"], retracted_patients(state, retracted)]
        if merges.height:
            fact_side.append(merges["patient_id"])
        ids = touched.implode()
        before = state.persons.filter(pl.col("patient_id").is_in(ids))
        after = persons.filter(pl.col("patient_id").is_in(ids))
        person_side = after.join(before, on=list(PERSONS_SCHEMA), how="anti", nulls_equal=True)["patient_id"]
        touched = pl.concat([*fact_side, person_side]).unique().sort()
    return PatientState(persons=persons, facts=facts, retracted=tombstones), touched


@dataclass(frozen=True)
class StateParts:
    """A :class:`LiveState` taken apart (see :meth:`LiveState.parts`): the main frames (sorted by patient,
    named by ``main_id``), the tail (every row of the patients in ``tail_ids``, which replace theirs in the main
    frames) and the tombstones."""

    persons: pl.DataFrame
    facts: pl.DataFrame
    tail_persons: pl.DataFrame
    tail_facts: pl.DataFrame
    tail_ids: pl.Series
    retracted: pl.DataFrame
    main_id: str

    def state(self) -> PatientState:
        """The whole state these parts hold."""
        if not self.tail_ids.len():
            return PatientState(persons=self.persons, facts=self.facts, retracted=self.retracted)
        gone = self.tail_ids.implode()
        return PatientState(
            persons=pl.concat([self.persons.filter(~pl.col("patient_id").is_in(gone)), self.tail_persons]),
            facts=pl.concat([self.facts.filter(~pl.col("patient_id").is_in(gone)), self.tail_facts]),
            retracted=self.retracted,
        )


class LiveState:
    """One partition's patient state as the engine holds it: applying a micro-batch and selecting the patients it
    touched cost about O(batch x log state) instead of O(state). Mutable; drive it from one thread.

    It holds the same logical state as a :class:`PatientState`, in two parts:

    * the *main* frames, sorted by ``patient_id`` (persons and facts), with a sorted index of the hashes of the
      facts' event ids (so the owner of an event id is a binary search away);
    * the *tail*: the complete current rows of every patient changed since the main frames were last compacted
      (``_tail_ids``). A patient's rows are read from the tail when it is there, else from the main frames.

    :meth:`apply` selects, exactly, every patient a batch can affect (its own patients, the ids it merges away and
    the owners of the event ids it retracts or sends again), runs :func:`apply_frames` on that small sub-state
    and puts the result in the tail. Its result is therefore :func:`apply_frames`'s by construction; the tail is
    folded back into the main frames (:meth:`compact`) when it passes ``TAIL_MIN`` rows or 1/32 of the main
    frames, and before a prune, a full listing or :meth:`to_state`.
    """

    #: Tail size (fact or person rows) that triggers a compaction: at least this, or 1/32 of the main frames.
    TAIL_MIN = 50_000

    def __init__(self, state: PatientState | None = None) -> None:
        state = state if state is not None else PatientState()
        self._retracted = state.retracted
        self._tail_persons = _empty(PERSONS_SCHEMA)
        self._tail_facts = _empty(FACTS_SCHEMA)
        self._tail_ids = pl.Series("patient_id", [], dtype=pl.String)
        #: Main rows hidden by the tail (their patients' current rows are in the tail), for the counts.
        self._hidden_persons = 0
        self._hidden_facts = 0
        self._set_main(state.persons, state.facts)

    @classmethod
    def from_parts(cls, parts: StateParts) -> LiveState:
        """The live state :meth:`parts` described (a snapshot's main frames, tail and tombstones)."""
        live = cls(PatientState(persons=parts.persons, facts=parts.facts, retracted=parts.retracted))
        if parts.main_id:
            live.main_id = parts.main_id  # the same frames as that snapshot's files
        if parts.tail_ids.len():
            ids = parts.tail_ids.implode()
            live._tail_persons, live._tail_facts = parts.tail_persons, parts.tail_facts
            live._tail_ids = parts.tail_ids
            live._hidden_persons = int(live._persons["patient_id"].is_in(ids).sum())
            live._hidden_facts = int(live._facts["patient_id"].is_in(ids).sum())
        return live

    def _set_main(self, persons: pl.DataFrame, facts: pl.DataFrame) -> None:
        #: Names this version of the main frames: a snapshot whose main frames have the same id reuses them.
        self.main_id = uuid.uuid4().hex
        self._persons = _sorted_by_patient(persons)
        self._facts = _sorted_by_patient(facts)
        hashes = self._facts["event_id"].hash()
        order = hashes.arg_sort()
        self._eid_hash = hashes.gather(order)
        self._eid_row = order

    # --- reading ----------------------------------------------------------------------------------------------
    @property
    def patient_count(self) -> int:
        return self._persons.height - self._hidden_persons + self._tail_persons.height

    @property
    def fact_count(self) -> int:
        return self._facts.height - self._hidden_facts + self._tail_facts.height

    @property
    def retracted(self) -> pl.DataFrame:
        return self._retracted

    def select(self, patient_ids: pl.Series | Sequence[str]) -> PatientState:
        """The state restricted to the given patients: :meth:`PatientState.select_patients`, without a scan."""
        ids = pl.Series("patient_id", patient_ids, dtype=pl.String).drop_nulls().unique().sort()
        state, _, _ = self._select(ids)
        return state

    def _select(self, ids: pl.Series) -> tuple[PatientState, int, int]:
        """``ids`` sorted and unique. Returns the sub-state and how many main person and fact rows it read."""
        in_tail = ids.is_in(self._tail_ids.implode()) if self._tail_ids.len() else None
        main_ids = ids.filter(~in_tail) if in_tail is not None else ids
        persons = _gather_sorted(self._persons, main_ids)
        facts = _gather_sorted(self._facts, main_ids)
        n_persons, n_facts = persons.height, facts.height
        if in_tail is not None and in_tail.any():
            tail_ids = ids.filter(in_tail).implode()
            persons = pl.concat([persons, self._tail_persons.filter(pl.col("patient_id").is_in(tail_ids))])
            facts = pl.concat([facts, self._tail_facts.filter(pl.col("patient_id").is_in(tail_ids))])
        return PatientState(persons=persons, facts=facts, retracted=self._retracted), n_persons, n_facts

    def owners(self, event_ids: pl.Series) -> pl.Series:
        """The patients holding a fact with one of these event ids (a superset: hash matches, and main rows the
        tail hides, are included; an extra patient only costs time)."""
        if event_ids.len() == 0:
            return pl.Series("patient_id", [], dtype=pl.String)
        wanted = event_ids.unique().hash().sort()
        lo = self._eid_hash.search_sorted(wanted, side="left")
        hi = self._eid_hash.search_sorted(wanted, side="right")
        rows = self._eid_row.gather(_ranges(lo, hi))
        found = [self._facts["patient_id"].gather(rows)]
        if self._tail_facts.height:
            found.append(self._tail_facts.filter(pl.col("event_id").is_in(event_ids.implode()))["patient_id"])
        return pl.concat(found).rename("patient_id")

    def patient_ids(self) -> pl.Series:
        """Every patient's id (compacts first)."""
        self.compact()
        return self._persons["patient_id"]

    def parts(self) -> StateParts:
        """The current state as its parts, without compacting. The frames are immutable, so batches applied
        afterwards do not change them: a snapshot thread can write them while the engine goes on."""
        return StateParts(
            self._persons,
            self._facts,
            self._tail_persons,
            self._tail_facts,
            self._tail_ids,
            self._retracted,
            self.main_id,
        )

    def to_state(self) -> PatientState:
        """The whole state as an immutable :class:`PatientState` (compacts first; shares the frames)."""
        self.compact()
        return PatientState(persons=self._persons, facts=self._facts, retracted=self._retracted)

    # --- writing ----------------------------------------------------------------------------------------------
    def apply(
        self,
        upd: pl.DataFrame,
        new_facts: pl.DataFrame,
        control: pl.DataFrame,
        keep: pl.Expr | FactFilter | None = None,
        *,
        changed_only: bool = False,
    ) -> pl.Series:
        """:func:`apply_frames` on this state, in place. Returns the touched patient ids (same contract)."""
        merged_away = control.filter(pl.col("op") == "merge")["arg"]
        referenced = pl.concat([control.filter(pl.col("op") == "retract")["arg"], new_facts["event_id"]])
        affected = (
            pl.concat(
                [
                    upd["patient_id"],
                    new_facts["patient_id"],
                    control["patient_id"],
                    merged_away,
                    self.owners(referenced),
                ]
            )
            .drop_nulls()
            .unique()
            .sort()
        )
        sub, n_persons, n_facts = self._select(affected)
        new, touched = apply_frames(sub, upd, new_facts, control, keep, changed_only=changed_only)
        self._retracted = new.retracted
        if self._tail_ids.len():
            overlap = affected.is_in(self._tail_ids.implode())
            if overlap.any():
                gone = affected.filter(overlap).implode()
                self._tail_persons = self._tail_persons.filter(~pl.col("patient_id").is_in(gone))
                self._tail_facts = self._tail_facts.filter(~pl.col("patient_id").is_in(gone))
            fresh = affected.filter(~overlap)
        else:
            fresh = affected
        self._hidden_persons += n_persons
        self._hidden_facts += n_facts
        self._tail_persons = _append(self._tail_persons, new.persons)
        self._tail_facts = _append(self._tail_facts, new.facts)
        self._tail_ids = _append(self._tail_ids.to_frame(), fresh.to_frame()).to_series()
        too_many_facts = self._tail_facts.height > max(self.TAIL_MIN, self._facts.height // 32)
        if too_many_facts or self._tail_persons.height > max(self.TAIL_MIN, self._persons.height // 32):
            self.compact()
        return touched

    def compact(self) -> None:
        """Fold the tail into the main frames (one sort and one index build, O(state))."""
        if not self._tail_ids.len():
            return
        gone = self._tail_ids.implode()
        persons = pl.concat([self._persons.filter(~pl.col("patient_id").is_in(gone)), self._tail_persons])
        facts = pl.concat([self._facts.filter(~pl.col("patient_id").is_in(gone)), self._tail_facts])
        self._tail_persons = _empty(PERSONS_SCHEMA)
        self._tail_facts = _empty(FACTS_SCHEMA)
        self._tail_ids = pl.Series("patient_id", [], dtype=pl.String)
        self._hidden_persons = self._hidden_facts = 0
        self._set_main(persons, facts)

    def prune(self, keep: pl.Expr | FactFilter | None, since: datetime | None = None) -> None:
        """:func:`prune_facts` in place."""
        state = prune_facts(self.to_state(), keep, since)
        if state.facts.height != self._facts.height:
            self._set_main(state.persons, state.facts)


def _sorted_by_patient(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` stably sorted by ``patient_id``; one already in that order (a compacted snapshot) is only
    checked, not copied, which keeps a restore's memory peak down."""
    if frame["patient_id"].is_sorted():
        return frame.with_columns(pl.col("patient_id").set_sorted())
    return frame.sort("patient_id", maintain_order=True)


def _append(frame: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``rows`` appended, in few chunks (a frame of many small chunks filters slowly)."""
    out = pl.concat([frame, rows], how="vertical")
    return out.rechunk() if out.n_chunks() > 8 else out


def _ranges(lo: pl.Series, hi: pl.Series) -> pl.Series:
    """The row numbers ``lo[i] .. hi[i]-1`` for every i, concatenated."""
    return pl.int_ranges(lo, hi, dtype=pl.get_index_type(), eager=True).explode().drop_nulls()


def _gather_sorted(frame: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    """The rows of ``frame`` (sorted by ``patient_id``) whose patient is in ``ids`` (sorted): binary searches."""
    if ids.len() == 0 or frame.height == 0:
        return frame.clear()
    col = frame["patient_id"]
    return frame[_ranges(col.search_sorted(ids, side="left"), col.search_sorted(ids, side="right"))]


def retracted_patients(state: PatientState, retracted: pl.DataFrame) -> pl.Series:
    """Patients who owned a retracted fact (a correction may arrive under the same patient id)."""
    if not retracted.height:
        return pl.Series("patient_id", [], dtype=pl.String)
    return state.facts.filter(pl.col("event_id").is_in(retracted["arg"].implode()))["patient_id"]


def _upsert_persons(persons: pl.DataFrame, latest: pl.DataFrame) -> pl.DataFrame:
    cols = [c for c in latest.columns if c != "patient_id"]
    joined = persons.join(latest, on="patient_id", how="full", coalesce=True, suffix="_new")
    return joined.with_columns(
        [pl.coalesce(f"{c}_new", c).alias(c) for c in cols]
        + [pl.col("do_not_contact").fill_null(False), pl.col("deceased").fill_null(False)]
    ).select(list(PERSONS_SCHEMA))


def now_utc() -> datetime:
    return datetime.now(UTC)


class FactFilter:
    """Keeps the facts for which ``expr`` is true (null counts as false) and, when ``since`` is set, that
    occurred at or after ``since``. Equivalent to ``facts.filter(expr)`` but fast for the engine's case.

    The rule compiler's filters are large expressions over code columns only; evaluating them on every fact is
    slow. When ``expr`` reads only the low-cardinality key columns (``KEY_COLUMNS``), it is evaluated once per
    distinct key combination, the answers are cached, and facts are kept by a semi-join on the allowed keys.
    Any other expression is applied directly. Not thread-safe (one per engine).
    """

    KEY_COLUMNS = ("kind", "system", "code", "unit", "status", "setting")

    def __init__(self, expr: pl.Expr | None, since: datetime | None = None) -> None:
        self.expr = expr
        self.since = since
        roots = set(expr.meta.root_names()) if expr is not None else set()
        self.keys: list[str] | None = (
            [c for c in self.KEY_COLUMNS if c in roots] if roots and roots <= set(self.KEY_COLUMNS) else None
        )
        self._known: pl.DataFrame | None = None

    def __call__(self, facts: pl.DataFrame) -> pl.DataFrame:
        if self.since is not None:
            facts = facts.filter(pl.col("occurred_at") >= pl.lit(self.since).cast(TS))
        if self.expr is None or facts.height == 0:
            return facts
        if self.keys is None:
            return facts.filter(self.expr.fill_null(False))
        self.learn(facts)
        assert self._known is not None
        allowed = self._known.filter(pl.col("_keep")).select(self.keys)
        return facts.join(allowed, on=self.keys, how="semi", nulls_equal=True, maintain_order="left")

    def learn(self, facts: pl.DataFrame) -> None:
        """Judge the key combinations in ``facts`` not seen before (one evaluation of ``expr`` for all of them).
        ``facts`` needs only the key columns. The engine calls this once per batch, before the partitions."""
        if self.expr is None or self.keys is None or facts.height == 0:
            return
        distinct = facts.select(self.keys).unique()
        unknown = (
            distinct
            if self._known is None
            else distinct.join(self._known.select(self.keys), on=self.keys, how="anti", nulls_equal=True)
        )
        if unknown.height:
            judged = unknown.with_columns(self.expr.fill_null(False).alias("_keep"))
            self._known = judged if self._known is None else pl.concat([self._known, judged], how="vertical")


def prune_facts(state: PatientState, keep: pl.Expr | FactFilter | None, since: datetime | None = None) -> PatientState:
    """Keep only the facts some open study can use: those ``keep`` keeps and (when ``since`` is given) that
    occurred at or after ``since``. ``keep=None`` keeps every fact. Persons are never pruned."""
    facts = state.facts
    if since is not None:
        facts = facts.filter(pl.col("occurred_at") >= pl.lit(since).cast(TS))
    if isinstance(keep, FactFilter):
        facts = keep(facts)
    elif keep is not None:
        facts = facts.filter(keep.fill_null(False))
    return PatientState(persons=state.persons, facts=facts, retracted=state.retracted)


_CURRENT = "CURRENT"


def save_snapshot(
    state: PatientState | StateParts, directory: Path, offset: int, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``state`` and the next offset to read into ``directory``, atomically.

    The frames go to a fresh generation folder (``gen-<offset>-<pid>-<time>``); then a ``CURRENT`` pointer
    (JSON: offset, folder, meta) is written to a temporary file and moved into place with ``os.replace``. A crash
    at any point leaves the previous snapshot intact. Older generations are removed afterwards.

    Given :class:`StateParts` whose main frames the current snapshot already holds (same ``main_id``), the new
    generation hard-links those files and writes only the tail and the tombstones: at a million patients that
    is a few milliseconds instead of seconds of CPU. One writer per folder at a time.
    """
    directory.mkdir(parents=True, exist_ok=True)
    gen = f"gen-{offset}-{os.getpid()}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S%f')}"
    tmp_gen = directory / f".{gen}.tmp"
    tmp_gen.mkdir()
    main_id = state.main_id if isinstance(state, StateParts) else None
    previous = _current(directory)
    reuse = (
        previous is not None
        and main_id is not None
        and previous.get("main_id") == main_id
        and all((directory / str(previous["generation"]) / f).exists() for f in _MAIN_FILES)
    )
    if reuse:
        assert previous is not None
        for f in _MAIN_FILES:
            os.link(directory / str(previous["generation"]) / f, tmp_gen / f)
    else:
        _write(state.persons, tmp_gen / "persons.parquet")
        _write(state.facts, tmp_gen / "facts.parquet")
    if isinstance(state, StateParts) and state.tail_ids.len():
        _write(state.tail_persons, tmp_gen / "tail-persons.parquet")
        _write(state.tail_facts, tmp_gen / "tail-facts.parquet")
        _write(state.tail_ids.to_frame(), tmp_gen / "tail-ids.parquet")
    _write(state.retracted, tmp_gen / "retracted.parquet")
    os.replace(tmp_gen, directory / gen)
    pointer = directory / f".{_CURRENT}.{os.getpid()}.tmp"
    with open(pointer, "w") as fh:
        json.dump({"offset": offset, "generation": gen, "meta": meta or {}, "main_id": main_id}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(pointer, directory / _CURRENT)
    for old in directory.iterdir():
        if old.name.startswith("gen-") and old.name != gen:
            shutil.rmtree(old, ignore_errors=True)
    return directory / gen


_MAIN_FILES = ("persons.parquet", "facts.parquet")


def _write(frame: pl.DataFrame, path: Path) -> None:
    frame.write_parquet(path, compression="zstd", statistics=False)


def _current(directory: Path) -> dict[str, Any] | None:
    try:
        pointer = json.loads((directory / _CURRENT).read_text())
    except (OSError, ValueError):
        return None
    return pointer if isinstance(pointer, dict) else None


def load_snapshot(directory: Path) -> tuple[PatientState, int, dict[str, Any]] | None:
    """The last complete snapshot in ``directory`` as (state, next offset, meta), or ``None`` when there is
    none or it cannot be read (the caller then rebuilds by replaying)."""
    loaded = load_snapshot_parts(directory)
    if loaded is None:
        return None
    parts, offset, meta = loaded
    return parts.state(), offset, meta


def load_snapshot_parts(directory: Path) -> tuple[StateParts, int, dict[str, Any]] | None:
    """:func:`load_snapshot` as :class:`StateParts` (for :meth:`LiveState.from_parts`: no re-sorting, and the
    next snapshot can reuse the main frames' files)."""
    try:
        pointer = _current(directory)
        if pointer is None:
            return None
        gen = directory / str(pointer["generation"])
        persons = pl.read_parquet(gen / "persons.parquet")
        facts = pl.read_parquet(gen / "facts.parquet")
        tombs = gen / "retracted.parquet"
        retracted = pl.read_parquet(tombs) if tombs.exists() else _empty(RETRACTED_SCHEMA)
        if (gen / "tail-ids.parquet").exists():
            tail_persons = pl.read_parquet(gen / "tail-persons.parquet")
            tail_facts = pl.read_parquet(gen / "tail-facts.parquet")
            tail_ids = pl.read_parquet(gen / "tail-ids.parquet")["patient_id"]
        else:
            tail_persons, tail_facts = _empty(PERSONS_SCHEMA), _empty(FACTS_SCHEMA)
            tail_ids = pl.Series("patient_id", [], dtype=pl.String)
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError):
        return None
    # A snapshot written before a column existed is upgraded (new columns null), not thrown away.
    persons, tail_persons = upgrade_persons(persons), upgrade_persons(tail_persons)
    facts, tail_facts = upgrade_facts(facts), upgrade_facts(tail_facts)
    for frame, schema in (
        (persons, PERSONS_SCHEMA),
        (tail_persons, PERSONS_SCHEMA),
        (facts, FACTS_SCHEMA),
        (tail_facts, FACTS_SCHEMA),
    ):
        if dict(frame.schema) != schema:
            return None
    parts = StateParts(persons, facts, tail_persons, tail_facts, tail_ids, retracted, str(pointer.get("main_id") or ""))
    return parts, int(pointer["offset"]), dict(pointer.get("meta") or {})
