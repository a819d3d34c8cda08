"""One partition's patient state as the engine holds it (:class:`LiveState`): main frames sorted by patient, plus a
tail of the patients changed since the last compaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import polars as pl

from screener.state._apply import Changes, PatientState, StateParts, prune_facts
from screener.state._apply import _apply as _apply_state
from screener.state._filter import FactFilter
from screener.state._frames import FACTS_SCHEMA, PERSONS_SCHEMA, _empty


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
        return self._apply(upd, new_facts, control, keep, changed_only=changed_only, report=False).touched

    def apply_changes(
        self,
        upd: pl.DataFrame,
        new_facts: pl.DataFrame,
        control: pl.DataFrame,
        keep: pl.Expr | FactFilter | None = None,
        *,
        report: bool = True,
    ) -> Changes:
        """:func:`apply_changes` on this state, in place: what the batch changed (``changed_only`` semantics).
        Without ``report`` only ``touched`` is filled in (the fact rows and person columns that changed are left
        empty: working them out is a quarter of a small batch's update, and only the affected-only plan reads
        them)."""
        return self._apply(upd, new_facts, control, keep, changed_only=True, report=report)

    def _apply(
        self,
        upd: pl.DataFrame,
        new_facts: pl.DataFrame,
        control: pl.DataFrame,
        keep: pl.Expr | FactFilter | None,
        *,
        changed_only: bool,
        report: bool,
    ) -> Changes:
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
        new, changes = _apply_state(sub, upd, new_facts, control, keep, changed_only=changed_only, report=report)
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
        return changes

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
    lo, hi = col.search_sorted(ids, side="left"), col.search_sorted(ids, side="right")
    start, span = int(lo[0]), int(hi[-1]) - int(lo[0])
    if ids.len() > 1 and (lo.slice(1) == hi.slice(0, ids.len() - 1)).all():
        # One run of rows (a re-screen's chunk of consecutive patients): a zero-copy slice, not a gather
        # (0.5 s per 20k patients at 1M).
        return frame.slice(start, span)
    if 2 * int((hi - lo).sum()) >= span:
        # Most of one run (consecutive patients but those of the tail): filtering the run is a forward copy,
        # 4-5x cheaper than a gather of the same rows.
        return frame.slice(start, span).filter(pl.col("patient_id").is_in(ids.implode()))
    return frame[_ranges(lo, hi)]
