"""Applying a batch to the patient state: the pure core (corrections, retractions, merges, flags, idempotence)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from screener.events import Event
from screener.state._filter import FactFilter
from screener.state._frames import FACTS_SCHEMA, PERSONS_SCHEMA, RETRACTED_SCHEMA, _empty, events_to_frames
from screener.vocab import TS


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


@dataclass(frozen=True)
class Changes:
    """What a batch changed, for the engine to re-screen only what can differ (:func:`apply_changes`).

    ``touched``  the patients whose kept facts or person row changed (``changed_only`` of :func:`apply_frames`).
    ``facts``    one row per fact added or removed (retracted, replaced by a re-sent event id), with its
                 patient and the key columns of :attr:`FactFilter.KEY_COLUMNS`; a study whose result for a
                 patient can change through facts reads one of these rows.
    ``persons``  ``(patient_id, column)``: the person columns that changed, ``column`` null for a new person
                 row (a study reading any column can change).
    ``whole``    the patients for whom any study may change: a merge into them. Every patient of ``persons``
                 and ``whole`` is in ``touched``.
    """

    touched: pl.Series
    facts: pl.DataFrame
    persons: pl.DataFrame
    whole: pl.Series


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
    new, changes = _apply(state, upd, new_facts, control, keep, changed_only=changed_only)
    return new, changes.touched


def apply_changes(
    state: PatientState,
    upd: pl.DataFrame,
    new_facts: pl.DataFrame,
    control: pl.DataFrame,
    keep: pl.Expr | FactFilter | None = None,
) -> tuple[PatientState, Changes]:
    """:func:`apply_frames` with ``changed_only=True``, returning the :class:`Changes` (the same state)."""
    return _apply(state, upd, new_facts, control, keep, changed_only=True, report=True)


_KEYS = list(FactFilter.KEY_COLUMNS)


def _apply(
    state: PatientState,
    upd: pl.DataFrame,
    new_facts: pl.DataFrame,
    control: pl.DataFrame,
    keep: pl.Expr | FactFilter | None,
    *,
    changed_only: bool,
    report: bool = False,
) -> tuple[PatientState, Changes]:
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

    # A fact seen before (a replayed or re-sent event) must not move the patient back to the setting, site or
    # location it carried: its person update is dropped with it (person events have their own rows, other seqs).
    if upd.height and new_facts.height and state.facts.height:
        seen = new_facts.filter(pl.col("event_id").is_in(state.facts["event_id"].implode()))
        if seen.height:
            upd = upd.join(seen.select("seq"), on="seq", how="anti")
    # A person event older than the demographics held (a replay, or an update that arrived out of order) changes
    # nothing; one of the same time (a replay of the event that set them) keeps the setting, site and location
    # that later facts may have moved.
    if upd.height and persons.height and "updated_at" in upd.columns:
        held = persons.select("patient_id", pl.col("updated_at").alias("_held"))
        upd = upd.join(held, on="patient_id", how="left")
        is_person, known = pl.col("updated_at").is_not_null(), pl.col("_held").is_not_null()
        same = is_person & known & (pl.col("updated_at") == pl.col("_held"))
        moved = [c for c in ("setting", "site", "location") if c in upd.columns]
        upd = (
            upd.filter(~(is_person & known & (pl.col("updated_at") < pl.col("_held"))))
            .with_columns([pl.when(same).then(None).otherwise(pl.col(c)).alias(c) for c in moved])
            .drop("_held")
        )
    if upd.height and merges.height:
        # A retired id's person events from before its merge, in this same batch, are gone with it (as if the
        # batch were applied event by event); a later one brings the id back, as it would then.
        retire = merges.group_by(pl.col("arg").alias("patient_id")).agg(pl.col("seq").max().alias("_mseq"))
        upd = (
            upd.join(retire, on="patient_id", how="left")
            .filter(pl.col("_mseq").is_null() | (pl.col("seq") > pl.col("_mseq")))
            .drop("_mseq")
        )
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
    new = PatientState(persons=persons, facts=facts, retracted=tombstones)
    if not changed_only:
        return new, _no_changes(touched, state)
    fact_side = [kept["patient_id"], retracted_patients(state, retracted)]
    if merges.height:
        fact_side.append(merges["patient_id"])
    ids = touched.implode()
    before = state.persons.filter(pl.col("patient_id").is_in(ids))
    after = persons.filter(pl.col("patient_id").is_in(ids))
    person_side = after.join(before, on=list(PERSONS_SCHEMA), how="anti", nulls_equal=True)["patient_id"]
    touched = pl.concat([*fact_side, person_side]).unique().sort()
    if not report:
        return new, _no_changes(touched, state)
    # The facts that came or went: the kept rows, and the rows they replace or that a retraction removed (read
    # from the state before the batch, under their old patient; a merge sends its survivor to ``whole``).
    gone_ids = kept["event_id"]
    if retracted.height:
        gone_ids = pl.concat([gone_ids, retracted["arg"]])
    gone = state.facts.filter(pl.col("event_id").is_in(gone_ids.implode())) if state.facts.height else state.facts
    changed = pl.concat([kept.select("patient_id", *_KEYS), gone.select("patient_id", *_KEYS)], how="vertical")
    whole = merges["patient_id"].unique() if merges.height else _NO_IDS
    return new, Changes(touched, changed, _changed_columns(before, after, person_side), whole)


_NO_IDS = pl.Series("patient_id", [], dtype=pl.String)


def _no_changes(touched: pl.Series, state: PatientState) -> Changes:
    none = pl.DataFrame(schema={"patient_id": pl.String, "column": pl.String})
    return Changes(touched, state.facts.clear().select("patient_id", *_KEYS), none, _NO_IDS)


def _changed_columns(before: pl.DataFrame, after: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    """``(patient_id, column)`` for the person columns of ``ids`` that differ between ``before`` and ``after``
    (null ``column``: no row before)."""
    cols = [c for c in PERSONS_SCHEMA if c != "patient_id"]
    wanted = ids.implode()
    old = before.filter(pl.col("patient_id").is_in(wanted)).rename({c: f"{c}_old" for c in cols})
    both = after.filter(pl.col("patient_id").is_in(wanted)).join(old, on="patient_id", how="left")
    is_new = ~pl.col("patient_id").is_in(old["patient_id"].implode())
    flags = both.select(
        "patient_id",
        is_new.alias("_new"),
        *[pl.col(c).ne_missing(pl.col(f"{c}_old")).alias(c) for c in cols],
    )
    new_rows = flags.filter(pl.col("_new")).select("patient_id", pl.lit(None, dtype=pl.String).alias("column"))
    moved = (
        flags.filter(~pl.col("_new"))
        .drop("_new")
        .unpivot(index="patient_id", variable_name="column", value_name="_changed")
        .filter(pl.col("_changed"))
        .select("patient_id", "column")
    )
    return pl.concat([new_rows, moved], how="vertical")


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
