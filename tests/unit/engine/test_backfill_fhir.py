"""``screener backfill fhir PATH --into-store URL``: FHIR Bundles and bulk NDJSON (real files in tests/data/fhir,
two of them Synthea bundles) land in the history store as ``connect fhir --from-file`` would have published them,
partitioned as the producer sends them, with the offsets the engine starts from."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from screener.alerts.memory import MemoryStore
from screener.cli import main
from screener.clock import FixedClock
from screener.connector import MemorySink
from screener.connector.registry import load_connector, load_history_source
from screener.engine import Engine
from screener.history import open_store
from screener.history.backfill import backfill_frames, kafka_partitions
from screener.metrics import Metrics
from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer

FHIR = Path(__file__).parents[2] / "data" / "fhir"


def published(path: Path) -> MemorySink:
    """What ``screener connect fhir --from-file PATH`` publishes (and dead-letters) for the same files."""
    from connectors.fhir import load_files  # the test may import connectors; screener may not

    sink = MemorySink()
    load_files(path, sink)
    return sink


def invoke(path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("SCREENER_BOOTSTRAP_SERVERS", raising=False)
    args = ["backfill", "fhir", str(path), "--into-store", str(store), "--partitions", "3", "--chunk-rows", "100"]
    return CliRunner().invoke(main, args)


def test_a_folder_of_bundles_and_ndjson_lands_as_connect_would_publish_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke(FHIR, tmp_path / "store", monkeypatch)
    # two Bundle entries cannot be read (unresolvable medicationReference): named, counted, exit 1 as --from-file
    assert result.exit_code == 1, result.output
    assert "2 inputs unreadable" in result.output
    assert result.output.count("  rejected: ") == 2 and "Bundle.entry[58].resource.medicationReference" in result.output
    assert "Claim x56" in result.output and "ExplanationOfBenefit x46" in result.output
    assert "offsets {0: 0, 1: 0, 2: 0}" in result.output
    sink = published(FHIR)
    store = open_store(tmp_path / "store")
    persons, facts = (x.collect() for x in store.scan())
    facts_want = sorted(e.event_id for e in sink.events if e.kind != "person")
    assert len(facts_want) > 350 and sorted(facts["event_id"]) == facts_want
    assert sorted(persons["patient_id"]) == sorted({e.patient_id for e in sink.events})
    births = dict(zip(persons["patient_id"], persons["birth_date"], strict=True))
    assert births["RR8-H1"] == date(1961, 3, 2) and births["ea877536-55b1-4ec8-a12b-e95594214c01"] is not None
    where = dict(zip(persons["patient_id"], kafka_partitions(persons["patient_id"], 3), strict=True))
    for p in range(3):
        assert set(store.scan([p])[0].collect()["patient_id"]) == {k for k, v in where.items() if v == p}
        assert store.offset(p) == 0 and store.segments(p) == 0


def test_bulk_ndjson_alone_is_complete_and_exits_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(FHIR / "bulk_export.ndjson", tmp_path / "store", monkeypatch)
    assert result.exit_code == 0, result.output
    assert "fhir -> " in result.output and ": 3 events (0 rejected)" in result.output
    persons, facts = (x.collect() for x in open_store(tmp_path / "store").scan())
    assert persons.select("patient_id", "ethnic_category").rows() == [("RR8-H1", "J")]
    assert sorted(zip(facts["kind"], facts["code"], strict=True)) == [
        ("drug", "39113611000001102"),
        ("measurement", "62238-1"),
    ]
    assert facts.filter(pl.col("kind") == "measurement")["value"].to_list() == [41.0]


def test_the_engine_starts_at_the_backfills_offsets_and_screens_the_patients(
    settings: Any, mini: Any, tmp_path: Path
) -> None:
    assert getattr(load_connector("fhir"), "history_source", None) is not None  # found through the registry
    store = open_store(tmp_path / "h")
    frames = load_history_source("fhir")(FHIR, chunk_rows=64, now=datetime.now(UTC))
    result = backfill_frames(store, frames, partitions=2, start_offsets={0: 4, 1: 9})
    assert result.rejected == 0 and result.accepted > 350 and getattr(frames, "rejected", None) == 2
    assert [store.offset(p) for p in (0, 1)] == [4, 9]
    (Path(settings.rules_dir) / "adult.yaml").write_text("id=ADULT min_age=18")
    log, matches = InMemoryLog(2), MemoryStore()
    engine = Engine(
        settings,
        matches,
        metrics=Metrics(CollectorRegistry()),
        clock=FixedClock(datetime(2026, 6, 1, tzinfo=UTC)),
        consumer=InMemoryConsumer(log),
        producer=InMemoryProducer(log),
        loader=mini["loader"],
        screen=mini["screen"],
        history=store,
    ).start()
    for _ in range(4):
        engine.clock.advance(0.01)  # type: ignore[attr-defined]
        engine.step()
    persons = store.scan()[0].collect()
    adults = persons.filter(pl.col("birth_date") <= date(2008, 6, 1))["patient_id"]
    unknown = persons.filter(pl.col("birth_date").is_null())["patient_id"]  # referenced, no Patient resource
    got = dict(matches.matches().select("patient_id", "outcome").iter_rows())
    assert adults.len() == 3 and unknown.len() == 1
    assert got == {**dict.fromkeys(adults, "eligible"), **dict.fromkeys(unknown, "possible")}
    consumer = engine._consumer
    assert isinstance(consumer, InMemoryConsumer)
    assert (consumer.position[("ev", 0)], consumer.position[("ev", 1)]) == (4, 9)
