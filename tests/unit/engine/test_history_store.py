"""The history store (screener.history): append-only segments folded with the engine's own semantics, compaction,
offsets, damaged stores, schema drift, and the same behaviour on a real S3-compatible server (moto, loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from screener.events import dump_event
from screener.history import HistoryStore, StoreError, open_store
from screener.ingest import decode_batch
from screener.state import FACTS_SCHEMA, LiveState


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, str]]:
    from screener.testing import s3_server

    with s3_server(bucket="history-unit") as options:
        yield options


def frames(events: list[Any]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    decoded = decode_batch([dump_event(e) for e in events])
    assert not decoded.rejects
    return decoded.frames


def batches(make_event: Any) -> list[list[Any]]:
    """Three batches: facts and demographics; a correction, an entered-in-error and a do-not-contact; a merge."""
    first = [
        make_event(kind="person", patient_id="A", person={"birth_date": "1970-01-01"}, code=None),
        make_event(event_id="a1", patient_id="A", code={"system": "ICD10", "value": "E11.9"}),
        make_event(event_id="a2", patient_id="A", code={"system": "ICD10", "value": "I10"}),
        make_event(event_id="b1", patient_id="B", code={"system": "ICD10", "value": "J45"}),
        make_event(event_id="c1", patient_id="C", code={"system": "ICD10", "value": "N18.3"}),
    ]
    second = [
        make_event(event_id="a1-fix", patient_id="A", corrects="a1", code={"system": "ICD10", "value": "E10.9"}),
        make_event(event_id="b1", patient_id="B", status="entered-in-error", code={"system": "ICD10", "value": "J45"}),
        make_event(kind="consent", patient_id="B", code={"system": "local", "value": "do-not-contact"}),
    ]
    third = [make_event(kind="person", patient_id="A", person={"birth_date": "1970-01-01", "merged_from": "C"})]
    return [first, second, third]


def expected_state(make_batches: list[list[Any]]) -> Any:
    live = LiveState()
    for b in make_batches:
        live.apply(*frames(b))
    return live.to_state()


def append_all(store: HistoryStore, partition: int, make_batches: list[list[Any]]) -> None:
    offset = 0
    for b in make_batches:
        upd, facts, control = frames(b)
        offset += len(b)
        assert store.append(partition, facts, upd, control, offset)


def sorted_frame(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns[:2])


def check_roundtrip(store: HistoryStore, make_event: Any) -> None:
    made = batches(make_event)
    append_all(store, 3, made)
    want = expected_state(made)
    assert store.offset(3) == 9 and store.segments(3) == 3 and store.partitions() == [3]
    persons, facts = store.scan()
    got_p, got_f = persons.collect(), facts.collect()
    assert_frame_equal(sorted_frame(got_f), sorted_frame(want.facts))
    assert_frame_equal(sorted_frame(got_p), sorted_frame(want.persons))
    # The correction replaced a1, b1 was entered in error, C was merged into A: the folded view says so.
    assert sorted(got_f["event_id"].to_list()) == ["a1-fix", "a2", "c1"]
    assert set(got_f["patient_id"]) == {"A"} and sorted(got_p["patient_id"]) == ["A", "B"]
    assert got_p.filter(pl.col("patient_id") == "B")["do_not_contact"].to_list() == [True]
    before = store.size_bytes(3)
    assert store.compact(3) and store.segments(3) == 0 and store.offset(3) == 9
    persons, facts = store.scan([3])
    assert_frame_equal(sorted_frame(facts.collect()), sorted_frame(want.facts))
    assert_frame_equal(sorted_frame(persons.collect()), sorted_frame(want.persons))
    assert store.size_bytes(3) < before, "the folded segments' files are gone"
    # A later append folds over the new base; a repeated one (offset not past the store's) is ignored.
    upd, f, c = frames([make_event(event_id="a3", patient_id="A", code={"system": "ICD10", "value": "K21"})])
    assert store.append(3, f, upd, c, 10)
    assert not store.append(3, f, upd, c, 10)
    assert store.segments(3) == 1
    facts = store.scan()[1].filter(pl.col("code") == "K21").collect()
    assert facts["event_id"].to_list() == ["a3"]
    loaded = store.load(3, keep=pl.col("code").str.starts_with("E1"))
    assert loaded is not None
    state, offset = loaded
    assert offset == 10 and state.facts["event_id"].to_list() == ["a1-fix"] and state.persons.height == 2


def test_local_store_folds_corrections_retractions_merges_and_compacts(tmp_path: Path, make_event: Any) -> None:
    check_roundtrip(open_store(tmp_path / "history"), make_event)


def test_s3_store_behaves_the_same(s3_options: dict[str, str], make_event: Any, request: Any) -> None:
    check_roundtrip(open_store(f"s3://history-unit/{request.node.name}", s3_options), make_event)


def test_an_empty_partition_has_no_offset_and_scans_empty(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.offset(0) is None and store.load(0) is None and store.partitions() == []
    persons, facts = store.scan()
    assert persons.collect().height == 0 and facts.collect_schema() == pl.Schema(FACTS_SCHEMA)


def test_a_damaged_manifest_or_a_missing_segment_is_a_store_error_naming_the_partition(
    tmp_path: Path, make_event: Any
) -> None:
    store = open_store(tmp_path)
    append_all(store, 1, batches(make_event)[:1])
    manifest = tmp_path / "p-00001" / "manifest.json"
    doc = json.loads(manifest.read_text())
    seg = tmp_path / "p-00001" / doc["segments"][0] / "facts.parquet"
    seg.unlink()
    with pytest.raises(StoreError, match="partition 1: history unreadable"):
        store.load(1)
    manifest.write_text("{not json")
    with pytest.raises(StoreError, match="partition 1: manifest damaged"):
        store.offset(1)


def test_frames_with_other_columns_are_read_against_the_current_schema(tmp_path: Path, make_event: Any) -> None:
    """A segment written before a column existed reads it as null; a column this version does not know is dropped
    (the store is generic over the frames' schemas)."""
    store = open_store(tmp_path)
    upd, facts, control = frames(batches(make_event)[0])
    old = facts.drop("setting").with_columns(pl.lit("x").alias("from_the_future"))
    assert store.append(0, old, upd, control, 5)
    got = store.scan()[1].collect()
    assert got.columns == list(FACTS_SCHEMA) and got["setting"].null_count() == got.height
