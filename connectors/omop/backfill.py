"""OMOP CDM v5.4 -> canonical events, built column-wise with Polars and published in bulk.

Input: a directory of ``<table>.csv`` / ``<table>.parquet`` files (names case-insensitive, ``.csv.gz`` too),
or a DuckDB (``.duckdb``) or SQLite (``.sqlite``, ``.db``) database file (:mod:`connectors.omop.source`).
Tables read, one event per row (:mod:`connectors.omop._tables`; the full table is in ``docs/connectors.md``):

======================  ============  ===================================================================
person                  person        birth date (year/month/day), sex (gender concept 8532/8507 or
                                      source value), ethnic group (NHS category letter in
                                      race_source_value, else race concept 8527/8516/8515)
observation_period      registration  start -> occurred_at, end -> ended_at (code
                                      ``local/omop-observation-period``)
visit_occurrence        visit         code from visit_concept_id; visit_occurrence_id -> encounter_id;
                                      end -> ended_at; setting (9201/9203/9202/262 -> hospital, 581476 ->
                                      home, 581477/38004207 -> primary-care); completed once ended
condition_occurrence    condition     end -> ended_at; resolved once the end date has passed
drug_exposure           drug          end -> ended_at, else start + days_supply - 1; quantity (> 0) ->
                                      dose (unit: dose_unit_source_value); route_concept_id (SNOMED route)
                                      or route_source_value -> route; completed once ended
procedure_occurrence    procedure     procedure_end_date -> ended_at
measurement             measurement   value_as_number, unit (unit_source_value, else the unit concept),
                                      range_low/high -> ref_low/ref_high, value_as_concept_id -> value_code
observation             observation   value_as_number, else value_as_string; value_as_concept_id ->
                                      value_code
death                   death         death_date
======================  ============  ===================================================================

Every fact row with a ``visit_occurrence_id`` carries it as ``encounter_id``. Codes: when a ``concept`` table
is present, concept ids become ``(vocabulary, concept_code)``: SNOMED, LOINC, ICD10/ICD10CM/ICD10GM -> ICD10,
ICD9CM -> ICD9, RxNorm -> RXNORM, ATC, OPCS4, dm+d -> DMD, Read -> READ2; other vocabularies (CVX, RxNorm
Extension, ...) travel as ``local`` ``VOCAB:code``. Without a concept (or for concept 0) the source value is used
(``local``), else ``local`` ``omop:<concept_id>``.

Dates: a DATE (or a DATETIME at midnight) stays the calendar date; a time of day is Europe/London wall time.
``patient_id`` is ``person_id``; ``event_id`` is ``omop-<table>-<row id>-<concept id>-<yyyymmdd>``
(``omop-person-<id>`` for persons), stable across re-runs so a re-run is idempotent downstream.

Nothing silently dropped: rows without a person id or a start date, and the rows of clinical tables that are
not read (device_exposure, specimen, note, ...), are counted per table in :attr:`BackfillResult.unmapped`,
printed by the command and counted in ``screener_connector_unmapped_total``. Everything up to the JSON bytes is
vectorised; only the hand-off to the Kafka client is a loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from connectors._common import record_unmapped
from screener.connector import RecordSink
from screener.errors import ConnectorError

from ._tables import table_events
from .source import SOURCE, OmopSource

__all__ = ["TABLES", "UNREAD_TABLES", "BackfillResult", "OmopSource", "backfill", "table_events"]

TABLES = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "death",
)
#: Clinical CDM tables screener does not map: their rows are counted as unmapped, never silently ignored.
#: (Vocabulary, metadata and derived era tables are not clinical records and are not counted.)
UNREAD_TABLES = (
    "device_exposure",
    "specimen",
    "note",
    "note_nlp",
    "visit_detail",
    "episode",
    "payer_plan_period",
    "cost",
)


@dataclass
class BackfillResult:
    """Rows read and events written per table; ``unmapped``: rows not turned into events, by table."""

    rows_in: dict[str, int]
    events_out: dict[str, int]
    seconds: float
    unmapped: dict[str, int] = field(default_factory=dict)

    @property
    def total_events(self) -> int:
        return sum(self.events_out.values())


def backfill(
    path: Path,
    sink: RecordSink,
    *,
    tables: tuple[str, ...] = TABLES,
    chunk_rows: int = 200_000,
    progress: bool = True,
    now: datetime | None = None,
) -> BackfillResult:
    """Read every table and publish its events through ``sink.publish_raw`` (waits for broker acks per chunk).

    :raises ConnectorError: when the path cannot be read. :raises DeliveryError: when the broker fails.
    """
    import time

    from tqdm import tqdm

    started = time.perf_counter()
    now = now or datetime.now(UTC)
    src = OmopSource(path, chunk_rows=chunk_rows)
    concepts = src.concepts()
    counts = {t: src.count(t) for t in tables}
    if not any(counts.values()):
        raise ConnectorError(f"{path}: none of the OMOP tables {', '.join(tables)} was found", connector=SOURCE)
    rows_in: dict[str, int] = {}
    events_out: dict[str, int] = {}
    unmapped: dict[str, int] = {}
    with tqdm(total=sum(counts.values()), unit=" rows", desc="omop", disable=not progress) as bar:
        for table in tables:
            rows_in[table] = events_out[table] = 0
            for chunk in src.chunks(table):
                ev: pl.DataFrame = table_events(chunk, table, concepts, now)
                events_out[table] += sink.publish_raw(zip(ev["key"].to_list(), ev["value"].to_list(), strict=True))
                rows_in[table] += chunk.height
                bar.update(chunk.height)
            if rows_in[table] > events_out[table]:
                unmapped[table] = rows_in[table] - events_out[table]
    # Eunomia ships empty tables as one row holding the column names (column0 ...): no person_id, not a record
    for table, (n, has_person) in src.census(UNREAD_TABLES).items():
        if n and has_person:
            unmapped[table] = n
    src.close()
    record_unmapped(sink, SOURCE, unmapped)
    return BackfillResult(rows_in, events_out, time.perf_counter() - started, unmapped)
