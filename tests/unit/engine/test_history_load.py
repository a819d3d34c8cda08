"""A restore's load of a partition with a base and unmerged segments (HistoryStore.load with the rules' key
filter) reads the base once and gives what folding the segments over the whole base and filtering gives."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from screener.events import dump_event
from screener.history import _fold, open_store
from screener.ingest import decode_batch
from screener.state import FactFilter, LiveState, PatientState


def _frames(events: list[Any]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    decoded = decode_batch([dump_event(e) for e in events])
    assert not decoded.rejects
    return decoded.frames


def _batches(make_event: Any) -> list[list[Any]]:
    """A base's worth, then segments: a correction, an entered-in-error, a merge, a fact re-sent under another
    patient, a retraction of a fact the filter drops, a new patient, old and new facts."""
    person = {"birth_date": "1970-01-01"}
    first = [make_event(kind="person", patient_id=p, person=person, code=None) for p in "ABCDE"]
    first += [
        make_event(event_id="a1", patient_id="A", code={"system": "ICD10", "value": "E11.9"}),
        make_event(event_id="a2", patient_id="A", code={"system": "ICD10", "value": "I10"}),
        make_event(event_id="b1", patient_id="B", code={"system": "ICD10", "value": "E11.2"}),
        make_event(event_id="c1", patient_id="C", code={"system": "ICD10", "value": "E11.3"}),
        make_event(event_id="d1", patient_id="D", code={"system": "ICD10", "value": "J45"}),
        make_event(event_id="e1", patient_id="E", code={"system": "ICD10", "value": "E11.4"}),
        make_event(event_id="e0", patient_id="E", code={"system": "ICD10", "value": "E11.5"}, occurred_at="2001-01-01"),
    ]
    second = [
        make_event(event_id="a1-fix", patient_id="A", corrects="a1", code={"system": "ICD10", "value": "E10.9"}),
        make_event(
            event_id="b1", patient_id="B", status="entered-in-error", code={"system": "ICD10", "value": "E11.2"}
        ),
        make_event(event_id="d1", patient_id="D", status="entered-in-error", code={"system": "ICD10", "value": "J45"}),
        make_event(kind="person", patient_id="F", person=person, code=None),
        make_event(event_id="f1", patient_id="F", code={"system": "ICD10", "value": "E11.9"}),
    ]
    third = [
        make_event(kind="person", patient_id="A", person={"birth_date": "1970-01-01", "merged_from": "C"}),
        make_event(event_id="e1", patient_id="B", code={"system": "ICD10", "value": "E11.4"}),
    ]
    return [first, second, third]


@pytest.mark.parametrize("since", [None, datetime(2010, 1, 1, tzinfo=UTC)])
def test_the_load_of_a_base_with_segments_is_the_fold_of_the_whole_history_filtered(
    tmp_path: Path, make_event: Any, monkeypatch: pytest.MonkeyPatch, since: datetime | None
) -> None:
    store = open_store(tmp_path / "h")
    first, *rest = _batches(make_event)
    base = LiveState()
    base.apply(*_frames(first))
    state = base.to_state()
    store.write_base(0, state.persons, state.facts, state.retracted, len(first))
    offset = len(first)
    for batch in rest:
        upd, facts, control = _frames(batch)
        offset += len(batch)
        assert store.append(0, facts, upd, control, offset)
    keep = FactFilter(pl.col("code").str.starts_with("E1") & (pl.col("system") == "ICD10"), since)
    assert keep.keys == ["system", "code"]

    whole = LiveState()
    for batch in _batches(make_event):
        whole.apply(*_frames(batch))
    want = whole.to_state()
    want = PatientState(persons=want.persons, facts=keep(want.facts), retracted=want.retracted)

    reads: list[str] = []
    real = pl.LazyFrame.collect

    def counting(self: pl.LazyFrame, *a: Any, **k: Any) -> Any:
        reads.append("collect")
        return real(self, *a, **k)

    monkeypatch.setattr(pl.LazyFrame, "collect", counting)
    got = store.load(0, keep=keep)
    monkeypatch.undo()
    assert got is not None and got[1] == offset
    loaded = got[0]
    key = ["patient_id", "event_id"]
    assert_frame_equal(loaded.facts.sort(key), want.facts.sort(key))
    assert_frame_equal(loaded.persons.sort("patient_id"), want.persons.sort("patient_id"))
    assert sorted(loaded.facts["event_id"]) == sorted(["a1-fix", "c1", "e1", "f1"] + ([] if since else ["e0"]))
    assert set(loaded.facts.filter(pl.col("event_id") == "e1")["patient_id"]) == {"B"}, "e1 moved to B"
    assert reads == [], "the base is read by two collect_all calls, never one query at a time"

    # The same as the general path (the view folded lazily, then filtered), which reads the base's rows twice.
    monkeypatch.setattr(_fold, "load_folded", lambda store, p, k: None)
    general = store.load(0, keep=keep)
    assert general is not None
    assert_frame_equal(loaded.facts.sort(key), general[0].facts.sort(key))
    assert_frame_equal(loaded.persons.sort("patient_id"), general[0].persons.sort("patient_id"))
