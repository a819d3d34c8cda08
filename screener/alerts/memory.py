"""An in-memory :class:`~screener.alerts.base.MatchStore` for unit tests and benchmarks.

It keeps the same contract as the SQL store: one row per (study_id, patient_id) ever; a second sighting with a
changed outcome or rule hash updates the row in place and is not returned as new. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import datetime

import polars as pl

from screener.alerts.base import MATCH_COLUMNS
from screener.vocab import INELIGIBLE

__all__ = ["MemoryStore"]


class MemoryStore:
    """Matches in a Polars frame; the do-not-contact register is a settable set of patient ids."""

    def __init__(self, do_not_contact: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._matches: pl.DataFrame | None = None
        self._dnc: set[str] = set(do_not_contact)
        #: (study_id, patient_id) acknowledged on screening.matches
        self._published: set[tuple[str, str]] = set()
        self.studies: list[object] = []
        self.calls = 0
        #: Set to an exception instance to make the next record_matches call raise it (then it resets).
        self.fail_next: BaseException | None = None

    # --- MatchStore -------------------------------------------------------------------------------------
    def record_matches(self, matches: pl.DataFrame) -> pl.DataFrame:
        with self._lock:
            self.calls += 1
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            incoming = matches.select(list(MATCH_COLUMNS)).unique(
                subset=["study_id", "patient_id"], keep="first", maintain_order=True
            )
            if self._matches is None:
                self._matches = incoming.clear()
            keys = self._matches.select("study_id", "patient_id")
            # An ineligible row only ever updates an existing match (the contract: it never creates one).
            new = incoming.join(keys, on=["study_id", "patient_id"], how="anti").filter(pl.col("outcome") != INELIGIBLE)
            old = incoming.join(keys, on=["study_id", "patient_id"], how="semi")
            current = self._matches
            if old.height:
                upd = old.select("study_id", "patient_id", "outcome", "rule_hash", "criteria")
                current = current.update(upd, on=["study_id", "patient_id"])
            self._matches = pl.concat([current, new], how="vertical_relaxed")
            return new

    def unpublished_matches(self, settled_before: datetime | None = None, limit: int = 10_000) -> pl.DataFrame:
        cols = ["study_id", "patient_id", "outcome", "rule_hash", "criteria", "matched_at", "setting"]
        with self._lock:
            if self._matches is None:
                return pl.DataFrame(schema={c: pl.String for c in cols})
            rows = [
                r
                for r in self._matches.select(cols).iter_rows(named=True)
                if (r["study_id"], r["patient_id"]) not in self._published and r["patient_id"] not in self._dnc
            ]
            return pl.DataFrame(rows[:limit], schema=self._matches.select(cols).schema, orient="row")

    def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            self._published.update(keys)

    def do_not_contact(self) -> pl.Series:
        with self._lock:
            return pl.Series("patient_id", sorted(self._dnc), dtype=pl.String)

    def sync_studies(self, studies: Sequence[object]) -> None:
        with self._lock:
            self.studies = list(studies)

    # --- test helpers -----------------------------------------------------------------------------------
    def add_do_not_contact(self, patient_id: str) -> None:
        with self._lock:
            self._dnc.add(patient_id)

    def matches(self) -> pl.DataFrame:
        """Every stored match (a copy)."""
        with self._lock:
            if self._matches is None:
                return pl.DataFrame(schema={c: pl.String for c in MATCH_COLUMNS})
            return self._matches.clone()
