"""OMOP CDM rows -> canonical event *rows*: the same events as :func:`connectors.omop._tables.table_events`, as
columns instead of JSON, for the history backfill's fast path (``screener backfill omop PATH --into-store URL``).

Clinical tables give typed rows (:data:`screener.history.rows.TYPED_ROW_SCHEMA`): the dates and instants stay
instants (a calendar date as its midnight UTC, flagged ``date_only``), never written as text to be parsed again.
The person table gives text-form rows (:data:`~screener.history.rows.ROW_SCHEMA`; a birth date is a text in
both forms). Both share the one mapping (:func:`~connectors.omop._mapping.mapped` / ``person_struct``) with the
JSON events, so codes, units, dates and the v2 fields are the same."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from screener.connector.rows import TYPED_ROW_SCHEMA, rows_from_structs
from screener.vocab import TS

from ._mapping import mapped
from ._tables import person_struct
from .source import SOURCE

__all__ = ["table_rows"]


def _instant(frame: pl.DataFrame, col: str) -> tuple[pl.Expr, pl.Expr]:
    """A naive datetime column as the event's instant and its date-only flag: midnight is the calendar date
    (midnight UTC), any other time Europe/London wall time in UTC, to the second (what the event's text keeps).
    The time-zone conversion runs only when some value has a time of day."""
    naive = pl.col(col)
    midnight = naive.dt.time() == pl.time(0, 0, 0)
    as_date = naive.dt.replace_time_zone("UTC")
    if frame.select((~midnight).any()).item():
        wall = (
            naive.dt.replace_time_zone("Europe/London", ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC")
            .dt.truncate("1s")
        )
        return pl.when(midnight).then(as_date).otherwise(wall).cast(TS), midnight
    return as_date.cast(TS), midnight


def table_rows(df: pl.DataFrame, table: str, concepts: pl.DataFrame | None, now: datetime) -> pl.DataFrame:
    """One event row per row of ``df``: the event ``table_events`` gives for it; a row without a person id or a
    usable start date (which ``table_events`` drops) is kept, so the backfill rejects and counts it with the
    event model's reason (``patient_id`` / ``occurred_at`` missing)."""
    if table == "person":
        return rows_from_structs(person_struct(df, now))
    m = mapped(df, table, concepts, now)
    frame = m.frame.with_columns(
        m.start.alias("_start"), (m.end if m.end is not None else pl.lit(None, pl.Datetime("us"))).alias("_end")
    )
    occurred, date_only = _instant(frame, "_start")
    ended, ended_date = _instant(frame, "_end")
    finite = pl.when(m.number.is_finite()).then(m.number)
    cols: dict[str, pl.Expr] = {c: e for _, part in m.fields for c, e in part.items()}
    cols |= {
        "schema": pl.lit("screener.event/v2"),
        "event_id": m.event_id,
        "source": pl.lit(SOURCE),
        "kind": pl.lit(m.kind),
        "patient_id": m.patient_id,
        "occurred_at": occurred,
        "date_only": date_only.fill_null(False),
        "recorded_at": pl.lit(now.astimezone(UTC).replace(microsecond=0)).cast(TS),
        "ended_at": ended,
        "ended_date_only": ended_date,
        "has_code": pl.lit("code" in cols),
        "value": finite,
        "text": pl.when(finite.is_null()).then(m.text),
        "status": cols.get("status", pl.lit(None, pl.String)).fill_null("active"),
    }
    absent = {c: pl.lit(False) if c.startswith("has_") else pl.lit(None, t) for c, t in TYPED_ROW_SCHEMA.items()}
    return frame.select([cols.get(c, absent[c]).cast(t).alias(c) for c, t in TYPED_ROW_SCHEMA.items()])
