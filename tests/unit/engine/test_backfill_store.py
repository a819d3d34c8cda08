"""``screener backfill omop PATH --into-store URL``: the extract lands in the history store partitioned as the
producer would have sent it, with the offsets the engine starts from, and the engine screens it from there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from kafka.partitioner.default import DefaultPartitioner
from prometheus_client import CollectorRegistry

from screener.alerts.memory import MemoryStore
from screener.cli import main
from screener.clock import FixedClock
from screener.engine import Engine
from screener.events import dump_event
from screener.history import open_store
from screener.history.backfill import backfill_frames, kafka_partitions
from screener.metrics import Metrics
from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer

DATA = Path(__file__).parents[2] / "data" / "omop"


def test_partitions_are_kafka_pythons_default_partitioner() -> None:
    keys = [f"patient-{i}".encode() for i in range(200)]
    want = [DefaultPartitioner()(k, list(range(7)), list(range(7))) for k in keys]
    assert kafka_partitions(pl.Series(keys, dtype=pl.Binary), 7).to_list() == want
    assert kafka_partitions(pl.Series([k.decode() for k in keys]), 7).to_list() == want
    odd = [b"\xff\xfe\x00\x80", "ñandú-患者".encode(), b"", b"patient-3"]  # not UTF-8, multi-byte, empty, repeated
    want = [DefaultPartitioner()(k, list(range(7)), list(range(7))) for k in odd]
    assert kafka_partitions(pl.Series(odd, dtype=pl.Binary), 7).to_list() == want


def test_backfilled_history_restores_into_an_engine_that_screens_everyone(
    settings: Any, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    people = [f"B{i}" for i in range(20)]
    events = [
        make_event(kind="person", patient_id=p, person={"birth_date": "1970-01-01"}, code=None) for p in people
    ] + [make_event(patient_id=p, code={"system": "ICD10", "value": "E11.9"}) for p in people[:5]]
    frame = pl.DataFrame(
        {"key": [e.patient_id.encode() for e in events], "value": [dump_event(e) for e in events]},
        schema={"key": pl.Binary, "value": pl.Binary},
    )
    store = open_store(tmp_path / "h")
    result = backfill_frames(store, [frame.head(11), frame.tail(14)], partitions=2, start_offsets={0: 7, 1: 3})
    assert (result.accepted, result.rejected) == (25, 0)
    assert store.offset(0) == 7 and store.offset(1) == 3 and store.segments(0) == 0  # compacted
    where = dict(zip(people, kafka_partitions(pl.Series(people), 2).to_list(), strict=True))
    for p in (0, 1):
        persons, _ = store.scan([p])
        assert sorted(persons.collect()["patient_id"]) == sorted(k for k, v in where.items() if v == p)
    (Path(settings.rules_dir) / "dm.yaml").write_text("id=DM min_age=18 icd10=E11")
    log, matches = InMemoryLog(2), MemoryStore()
    engine = Engine(
        settings,
        matches,
        metrics=Metrics(CollectorRegistry()),
        clock=FixedClock(datetime_now()),
        consumer=InMemoryConsumer(log),
        producer=InMemoryProducer(log),
        loader=mini["loader"],
        screen=mini["screen"],
        history=store,
    ).start()
    for _ in range(4):
        engine.clock.advance(0.01)  # type: ignore[attr-defined]
        engine.step()
    assert engine.state().persons.height == 20
    assert sorted(matches.matches()["patient_id"]) == sorted(people[:5]), "the backfilled patients were screened"
    consumer = engine._consumer
    assert isinstance(consumer, InMemoryConsumer) and consumer.position[("ev", 0)] == 7


def datetime_now() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 6, 1, tzinfo=UTC)


def test_cli_backfill_omop_into_a_store_without_a_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCREENER_BOOTSTRAP_SERVERS", raising=False)
    url = tmp_path / "store"
    result = CliRunner().invoke(
        main,
        [
            "backfill",
            "omop",
            str(DATA),
            "--into-store",
            str(url),
            "--partitions",
            "3",
            "--tables",
            "person,measurement",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.output and "offsets {0: 0, 1: 0, 2: 0}" in result.output
    dry = CliRunner().invoke(main, ["backfill", "omop", str(DATA), "--dry-run", "--tables", "person,measurement"])
    published = [json.loads(line) for line in dry.stdout.splitlines() if line.startswith("{")]
    store = open_store(url)
    persons, facts = store.scan()
    assert sorted(persons.collect()["patient_id"]) == sorted({e["patient_id"] for e in published})
    assert sorted(facts.collect()["event_id"]) == sorted(e["event_id"] for e in published if e["kind"] != "person")
    assert [store.offset(p) for p in range(3)] == [0, 0, 0]
