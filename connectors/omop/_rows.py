"""OMOP CDM rows -> canonical event *rows* (:data:`screener.history.rows.ROW_SCHEMA`): the same events as
:func:`connectors.omop._tables.table_events`, as columns instead of JSON, for the history backfill's fast path
(``screener backfill omop PATH --into-store URL``). Both share the one mapping (``table_struct`` /
``person_struct``), so codes, units, dates (calendar dates kept as dates) and the v2 fields are the same."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from screener.connector.rows import rows_from_structs

from ._tables import person_struct, table_struct

__all__ = ["table_rows"]


def table_rows(df: pl.DataFrame, table: str, concepts: pl.DataFrame | None, now: datetime) -> pl.DataFrame:
    """One :data:`~screener.history.rows.ROW_SCHEMA` row per row of ``df``: the event ``table_events`` gives for
    it; a row without a person id or a usable start date (which ``table_events`` drops) is kept, so the backfill
    rejects and counts it with the event model's reason (``patient_id`` / ``occurred_at`` missing)."""
    if table == "person":
        return rows_from_structs(person_struct(df, now))
    return rows_from_structs(table_struct(df, table, concepts, now), number="_vnum", text="_vtext")
