"""LiveState (the engine's indexed partition state) against apply_frames on a plain PatientState.

The property: for any sequence of batches (re-sent event ids, corrections, entered-in-error, merges, consent,
deaths, a fact filter or none) and any compaction threshold, LiveState.apply returns the same touched patients as
apply_frames, and the state it holds (whole, or selected for any patients) is the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal

from screener.events import Event, parse_event
from screener.state import FactFilter, LiveState, PatientState, apply_frames, events_to_frames
from tests.hypothesis_profiles import examples

PATIENTS = ["P1", "P2", "P3", "P4", "P5"]
EVENT_IDS = [f"e{i}" for i in range(10)]


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from(["person", "condition", "measurement", "drug", "consent", "death"]))
    ev: dict[str, Any] = {
        "event_id": draw(st.sampled_from(EVENT_IDS)),
        "source": "test",
        "kind": kind,
        "patient_id": draw(st.sampled_from(PATIENTS)),
        "occurred_at": f"2026-0{draw(st.integers(1, 9))}-1{draw(st.integers(0, 9))}T09:00:00Z",
    }
    if kind == "person":
        ev["person"] = {
            "birth_date": draw(st.sampled_from([None, "1950-01-01", "2008-06-30"])),
            "sex": draw(st.sampled_from([None, "F", "M"])),
        }
        if draw(st.integers(0, 3)) == 0:
            ev["person"]["merged_from"] = draw(st.sampled_from(PATIENTS))
    elif kind == "consent":
        ev["code"] = {"system": "local", "value": "do-not-contact"}
        ev["status"] = draw(st.sampled_from(["active", "resolved"]))
    elif kind != "death":
        ev["code"] = {"system": "ICD10", "value": draw(st.sampled_from(["E11.9", "I10", "C50"]))}
        if kind == "measurement":
            ev["value"] = draw(st.floats(0, 100, allow_nan=False))
        ev["status"] = draw(st.sampled_from(["active", "active", "entered-in-error"]))
    if draw(st.booleans()):
        ev["setting"] = draw(st.sampled_from(["community", "hospital"]))
    if draw(st.integers(0, 4)) == 0:
        ev["corrects"] = draw(st.sampled_from(EVENT_IDS))
    return parse_event(ev)


def _same(a: PatientState, b: PatientState) -> None:
    for x, y in ((a.persons, b.persons), (a.facts, b.facts)):
        assert_frame_equal(x, y, check_row_order=False)
    assert sorted(a.retracted["event_id"].to_list()) == sorted(b.retracted["event_id"].to_list())


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(events(), max_size=8), max_size=8),
    tail_min=st.integers(0, 6),
    filtered=st.booleans(),
    changed_only=st.booleans(),
    probe=st.lists(st.sampled_from(PATIENTS), max_size=3),
)
def test_live_state_is_apply_frames(
    batches: list[list[Event]], tail_min: int, filtered: bool, changed_only: bool, probe: list[str]
) -> None:
    keep = FactFilter(pl.col("code") != "C50") if filtered else None
    ref = PatientState()
    live = LiveState()
    live.TAIL_MIN = tail_min  # 0: compact after every batch; larger: the tail carries patients across batches
    for batch in batches:
        frames = events_to_frames(batch)
        ref, want = apply_frames(ref, *frames, keep=keep, changed_only=changed_only)
        got = live.apply(*frames, keep=keep, changed_only=changed_only)
        assert_series_equal(got, want)
        assert (live.patient_count, live.fact_count) == (ref.persons.height, ref.facts.height)
        _same(live.select(probe), ref.select_patients(probe))
    _same(live.to_state(), ref)


def test_a_restored_state_is_indexed_and_answers_like_the_original(make_event: Any) -> None:
    batch = [
        make_event(patient_id="P2", event_id="a", code={"system": "ICD10", "value": "I10"}),
        make_event(patient_id="P1", event_id="b", code={"system": "ICD10", "value": "E11.9"}),
        make_event(patient_id="P3", event_id="c", code={"system": "ICD10", "value": "E11.9"}),
    ]
    state, _ = apply_frames(PatientState(), *events_to_frames(batch))
    live = LiveState(state)
    assert sorted(live.owners(pl.Series(["b", "zz"]))) == ["P1"]
    # A correction sent under another patient's id still finds the fact it retracts, wherever it is.
    correction = make_event(patient_id="P9", event_id="d", corrects="b", code={"system": "ICD10", "value": "E10"})
    touched = live.apply(*events_to_frames([correction]))
    assert touched.to_list() == ["P1", "P9"]
    assert live.select(["P1"]).facts.height == 0
    assert live.select(["P9"]).facts["code"].to_list() == ["E10"]
    assert live.to_state().facts["event_id"].sort().to_list() == ["a", "c", "d"]


def test_snapshots_of_parts_reuse_unchanged_main_files_and_restore_the_same_live_state(
    make_event: Any, tmp_path: Path
) -> None:
    import os

    from screener.state import load_snapshot, load_snapshot_parts, save_snapshot

    first = [
        make_event(patient_id=f"P{i}", event_id=f"a{i}", code={"system": "ICD10", "value": "I10"}) for i in range(6)
    ]
    live = LiveState()
    live.apply(*events_to_frames(first))
    live.compact()  # main frames: P0..P5
    save_snapshot(live.parts(), tmp_path, 10)
    gen1 = tmp_path / json.loads((tmp_path / "CURRENT").read_text())["generation"]
    inode = os.stat(gen1 / "facts.parquet").st_ino
    # Later batches only reach the tail: the next snapshot links the main files and writes the tail.
    live.apply(
        *events_to_frames(
            [
                make_event(patient_id="P2", event_id="b1", code={"system": "ICD10", "value": "E11.9"}),
                make_event(patient_id="P9", event_id="b2", corrects="a4", code={"system": "ICD10", "value": "E10"}),
            ]
        )
    )
    save_snapshot(live.parts(), tmp_path, 12, {"rules": "x"})
    gen2 = tmp_path / json.loads((tmp_path / "CURRENT").read_text())["generation"]
    assert gen2 != gen1 and not gen1.exists()
    assert os.stat(gen2 / "facts.parquet").st_ino == inode
    assert (gen2 / "tail-facts.parquet").exists()
    loaded = load_snapshot_parts(tmp_path)
    assert loaded is not None
    parts, offset, meta = loaded
    assert (offset, meta) == (12, {"rules": "x"})
    restored = LiveState.from_parts(parts)
    _same(restored.to_state(), live.to_state())
    assert (restored.patient_count, restored.fact_count) == (7, 7)
    plain = load_snapshot(tmp_path)
    assert plain is not None
    _same(plain[0], live.to_state())
    # After a compaction the main frames change, so the next snapshot writes them again.
    live.compact()
    save_snapshot(live.parts(), tmp_path, 13)
    gen3 = tmp_path / json.loads((tmp_path / "CURRENT").read_text())["generation"]
    assert os.stat(gen3 / "facts.parquet").st_ino != inode and not (gen3 / "tail-facts.parquet").exists()


def test_a_run_of_consecutive_patients_is_selected_as_the_same_rows_as_scattered_ones() -> None:
    # P2 has no facts: the run P1..P3 is still one run of fact rows (the re-screen's chunks are such runs).
    persons = pl.DataFrame({"patient_id": ["P1", "P2", "P3", "P4"]})
    facts = pl.DataFrame(
        {"patient_id": ["P1", "P1", "P3", "P4", "P4"], "event_id": ["a", "b", "c", "d", "e"], "code": list("ABCDE")}
    )
    live = LiveState(PatientState(persons=persons, facts=facts))
    plain = PatientState(persons=persons, facts=facts)
    runs = (
        ["P1", "P2", "P3"],
        ["P2", "P3", "P4"],
        ["P1", "P3"],
        ["P1", "P4"],
        ["P2"],
        ["P4", "P1"],
        ["P0", "P1", "P2"],
    )
    for ids in runs:
        _same(live.select(ids), plain.select_patients(ids))
    assert live.select(["P1", "P2", "P3"]).facts["event_id"].to_list() == ["a", "b", "c"]
