"""A base's facts file leaves out the columns that are null on every row (the bulk load and compaction write it
so); the store's readers insert them, so such a base reads exactly as one written with every column (the format
of stores written before), through every read path: scan, view, load (filtered and keyed), compaction over it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import polars as pl
from polars.testing import assert_frame_equal

from screener.events import dump_event
from screener.history import HistoryStore, open_store
from screener.history.backfill import backfill_frames
from screener.ingest import decode_batch
from screener.state import FACTS_SCHEMA, RETRACTED_SCHEMA, FactFilter


def _events(make_event: Any) -> list[Any]:
    out = [make_event(kind="person", patient_id=p, person={"birth_date": "1970-01-01"}, code=None) for p in "ABC"]
    out += [
        make_event(event_id=f"e{i}", patient_id="ABC"[i % 3], code={"system": "ICD10", "value": f"E1{i % 4}"})
        for i in range(12)
    ]
    return out


def _full_base(store: HistoryStore, partition: int, persons: pl.DataFrame, facts: pl.DataFrame) -> None:
    """A base as stores were written before: every ``FACTS_SCHEMA`` column in the file, nulls and all."""
    d, base = store._dir(partition), f"base-{uuid.uuid4().hex[:12]}"
    store._put_frame(f"{d}/{base}/persons.parquet", persons.sort("patient_id"))
    full = facts.select(list(FACTS_SCHEMA)).sort("patient_id", maintain_order=True)
    store._put_frame(f"{d}/{base}/facts.parquet", full)
    store._put_frame(f"{d}/{base}/retracted.parquet", pl.DataFrame(schema=RETRACTED_SCHEMA))
    store._put_manifest(partition, {"version": 1, "offset": 15, "base": base, "segments": [], "next": 0})


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("p-*/base-*/facts.parquet"))


def test_a_sparse_base_reads_as_a_full_one_on_every_path(tmp_path: Path, make_event: Any) -> None:
    events = _events(make_event)
    rows = pl.DataFrame({"key": [e.patient_id.encode() for e in events], "value": [dump_event(e) for e in events]})
    new = open_store(tmp_path / "new")
    backfill_frames(new, [rows], partitions=1, start_offsets={0: 15})
    written = pl.read_parquet_schema(_files(tmp_path / "new")[0])
    assert "text" not in written and "qualifiers" not in written and {"patient_id", "event_id", "code"} <= {*written}
    state = new.load(0)
    assert state is not None
    old = open_store(tmp_path / "old")
    _full_base(old, 0, state[0].persons, state[0].facts)
    assert set(pl.read_parquet_schema(_files(tmp_path / "old")[0])) == set(FACTS_SCHEMA)

    def reads(store: HistoryStore) -> list[pl.DataFrame]:
        p, f = store.scan()
        view = store.view(0)
        assert view is not None
        loaded = store.load(0, keep=pl.col("code") == "E11")
        keyed = store.load(0, keep=FactFilter(pl.col("code").is_in(["E10", "E12"])))
        assert loaded is not None and keyed is not None
        return [p.collect(), f.collect(), view[1].collect(), loaded[0].facts, keyed[0].facts, keyed[0].persons]

    for got, want in zip(reads(new), reads(old), strict=True):
        assert_frame_equal(got, want)
    assert reads(new)[1].schema == pl.Schema(FACTS_SCHEMA) and reads(new)[1].height == 12
    # a live event over each, then compaction: the same history again (compaction writes the sparse form)
    extra = [make_event(event_id="late", patient_id="B", code={"system": "ICD10", "value": "E13"}, value="note")]
    upd, f, c = decode_batch([dump_event(e) for e in extra]).frames
    for store in (new, old):
        assert store.append(0, f, upd, c, 16) and store.compact(0)
    assert_frame_equal(new.scan()[1].collect(), old.scan()[1].collect())
    assert "text" in pl.read_parquet_schema(_files(tmp_path / "new")[0]), "a column with a value is written"
    assert "qualifiers" not in pl.read_parquet_schema(_files(tmp_path / "old")[0])
