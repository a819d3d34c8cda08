"""Event rows for a backfill straight into the history store (the connector SDK's face of
:mod:`screener.history.rows`): a connector that builds its events as columns (``ROW_SCHEMA``) hands them to
``screener backfill NAME PATH --into-store URL`` through its ``history_source``, without JSON. Rows may also be
typed (``TYPED_ROW_SCHEMA``: instants and dates as datetimes, not texts to parse again)."""

from __future__ import annotations

from screener.history.rows import ROW_SCHEMA, TYPED_ROW_SCHEMA, rows_from_structs

__all__ = ["ROW_SCHEMA", "TYPED_ROW_SCHEMA", "rows_from_structs"]
