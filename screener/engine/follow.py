"""Matches follow the patient (engine side; CONTRACT "Matches follow the patient").

The engine keeps, per partition, the (study, patient) pairs it knows have a match: every eligible/possible row it
has sent to the store. When a re-screen of such a patient (a new result, a correction, a rule change, the clock)
no longer finds the pair eligible or possible, the engine sends an ``ineligible`` row for it, with the criteria
and evidence that ruled it out, and forgets the pair; the store closes the match as "no longer eligible" (or ignores
a row for a pair it has no match for). Pairs of patients suppressed for do-not-contact or death are not closed
here (they are not ruled out). ``ineligible`` rows are never published to the matches topic (no alert).

The pairs are written with each history append (``matched.parquet`` beside the partition's manifest) and read back
when a partition is restored, so an engine that takes a partition over still closes matches made before.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl

from screener.engine._base import EngineBase, KnownScreenFn, ScreenFn, log
from screener.state import PatientState
from screener.vocab import INELIGIBLE, MATCH_OUTCOMES

if TYPE_CHECKING:
    from screener.rules import Study

PAIRS_SCHEMA = pl.Schema({"study_id": pl.String(), "patient_id": pl.String(), "partition": pl.Int32()})


def _default_screen_all(state: PatientState, studies: Sequence[Study], now: datetime) -> pl.DataFrame:
    from screener.rules import screen

    return screen(state, studies, now, evidence="all", rows="all")


def _default_screen_known(
    state: PatientState, studies: Sequence[Study], now: datetime, known: pl.DataFrame
) -> pl.DataFrame:
    from screener.rules import screen

    return screen(state, studies, now, evidence="outcomes", rows="matches", known=known)


class FollowRole(EngineBase):
    """The known matched pairs, and the ``ineligible`` rows for those a re-screen rules out."""

    _matched: pl.DataFrame
    _screen_all: ScreenFn
    #: The one screen that gives the matches and the rows of the known pairs (:func:`_default_screen_known`);
    #: ``None`` (a screen function was given) screens the ruled-out pairs again with :attr:`_screen_all`.
    _screen_known: KnownScreenFn | None = None

    def _known_pairs(self, state: PatientState, studies: Sequence[Study]) -> pl.DataFrame:
        """The known matched pairs (``study_id, patient_id, partition``) of ``state``'s patients in ``studies``."""
        if self._matched.height == 0 or state.persons.height == 0:
            return self._matched.clear()
        return self._matched.filter(pl.col("study_id").is_in([s.id for s in studies])).join(
            state.persons.select("patient_id"), on="patient_id", how="semi"
        )

    def _ruled_out(
        self,
        state: PatientState,
        result: pl.DataFrame,
        studies: Sequence[Study],
        now: datetime,
        known: pl.DataFrame | None = None,
        holds_known: bool = False,
    ) -> pl.DataFrame:
        """Rows (``study_id, patient_id, outcome='ineligible', rule_hash, criteria``, criteria still a list) for
        the known pairs among ``state``'s patients that ``result`` no longer has as eligible or possible.
        ``known``: those pairs (:meth:`_known_pairs`) when already looked up; ``holds_known``: ``result`` holds
        their rows whatever the outcome (:attr:`_screen_known`), so none is screened again."""
        empty = pl.DataFrame(
            schema={"study_id": pl.String, "patient_id": pl.String, "outcome": pl.String, "rule_hash": pl.String}
        )
        if known is None:
            known = self._known_pairs(state, studies)
        if known.height == 0:
            return empty
        still = result.filter(pl.col("outcome").is_in(MATCH_OUTCOMES)).select("study_id", "patient_id")
        gone = known.select("study_id", "patient_id").join(still, on=["study_id", "patient_id"], how="anti")
        flags = state.persons.filter(pl.col("do_not_contact").fill_null(False) | pl.col("deceased").fill_null(False))
        gone = gone.join(flags.select("patient_id"), on="patient_id", how="anti")
        if gone.height == 0:
            return empty
        if holds_known:
            full = result
        else:
            which = set(gone["study_id"].unique().to_list())
            sub = state.select_patients(gone["patient_id"].unique())
            full = self._screen_all(sub, [s for s in studies if s.id in which], now)
        return full.join(gone, on=["study_id", "patient_id"], how="semi").filter(pl.col("outcome") == INELIGIBLE)

    def _note_pairs(self, matched: pl.DataFrame, closed: pl.DataFrame, owners: pl.DataFrame | None) -> None:
        """Remember the pairs just sent as eligible/possible and forget the ones just closed."""
        if closed.height:
            self._matched = self._matched.join(
                closed.select("study_id", "patient_id"), on=["study_id", "patient_id"], how="anti"
            )
        if matched.height and owners is not None and owners.height:
            pairs = (
                matched.select("study_id", "patient_id")
                .join(owners, on="patient_id", how="inner")
                .select(list(PAIRS_SCHEMA))
                .cast(PAIRS_SCHEMA)
            )
            self._matched = pl.concat([self._matched, pairs]).unique(["study_id", "patient_id"], keep="last")

    def _pairs_of(self, partition: int) -> pl.DataFrame:
        return self._matched.filter(pl.col("partition") == partition)

    def _forget_pairs(self, partition: int) -> None:
        self._matched = self._matched.filter(pl.col("partition") != partition)

    def _save_pairs(self, partition: int) -> None:
        """Write the partition's pairs to the history store (on the snapshot thread, after its append)."""
        buf = io.BytesIO()
        self._pairs_of(partition).write_parquet(buf)
        self.history().put_object(partition, "matched.parquet", buf.getvalue())

    def _load_pairs(self, partition: int) -> None:
        """Read the partition's pairs back from the history store (none when it has none)."""
        try:
            data = self.history().get_object(partition, "matched.parquet")
        except Exception as exc:
            log.warning("matched_pairs_unreadable", partition=partition, error_type=type(exc).__name__)
            return
        if data is None:
            return
        pairs = pl.read_parquet(io.BytesIO(data)).cast(PAIRS_SCHEMA)
        self._forget_pairs(partition)
        mine = pairs.with_columns(pl.lit(partition, dtype=pl.Int32).alias("partition"))
        self._matched = pl.concat([self._matched, mine])
