"""The interfaces between the engine and the alerts side. Small on purpose.

The engine writes matches through :class:`MatchStore` and reads the do-not-contact register through it; it
publishes to Kafka separately. Implementations: :mod:`screener.alerts.store` (SQLAlchemy, SQLite/PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import polars as pl

__all__ = ["MATCH_COLUMNS", "MatchStore"]

#: Columns of the frame passed to :meth:`MatchStore.record_matches`.
#: ``criteria`` is a JSON string: a list of {name, group, result, evidence}; ``event_time`` is the broker
#: timestamp of the newest event that led to the match (for latency), or null for scheduled re-screens.
MATCH_COLUMNS = (
    "study_id",
    "patient_id",
    "outcome",
    "rule_hash",
    "criteria",
    "matched_at",
    "setting",
    "imd_decile",
    "ethnic_group",
    "event_time",
)


@runtime_checkable
class MatchStore(Protocol):
    def record_matches(self, matches: pl.DataFrame) -> pl.DataFrame:
        """Insert matches idempotently: one row per (study_id, patient_id), ever.

        Returns the rows that were new (the ones to alert on). A row already present is not inserted again; if
        its outcome or rule hash changed, it is updated in place and is *not* returned (no second alert).
        Rows with outcome ``ineligible`` never create a match: for an existing one they close it as "no longer
        eligible" (contract "Matches follow the patient"). An optional ``location`` column is stored too.
        Must be atomic per call: if it raises, nothing was written and the caller must not commit offsets.
        """
        ...

    def unpublished_matches(self, settled_before: datetime | None = None, limit: int = 10_000) -> pl.DataFrame:
        """Stored matches not yet acknowledged on ``screening.matches``, oldest first (at most ``limit``), with
        the columns the publisher sends; only rows last written before ``settled_before`` when given; never a
        patient on the do-not-contact register."""
        ...

    def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        """Record that these (study_id, patient_id) matches were acknowledged on ``screening.matches``."""
        ...

    def do_not_contact(self) -> pl.Series:
        """Patient ids currently on the do-not-contact register (String series)."""
        ...

    def sync_studies(self, studies: Sequence[object]) -> None:
        """Upsert study metadata (id, title, team, sponsor, target, dates, content hash) from loaded rule files."""
        ...
