"""Snapshots (Parquet + offset, atomic) and pruning of the patient state."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from polars.testing import assert_frame_equal

from screener.state import PatientState, apply_events, load_snapshot, prune_facts, save_snapshot


def _state(make_event: Any) -> PatientState:
    events = [
        make_event(kind="person", patient_id="P1", person={"birth_date": "1970-01-01"}, code=None),
        make_event(patient_id="P1", code={"system": "ICD10", "value": "E11.9"}),
        make_event(patient_id="P1", code={"system": "ICD10", "value": "I10"}, occurred_at="2020-01-01T00:00:00Z"),
    ]
    state, _ = apply_events(PatientState(), events)
    return state


def test_snapshot_round_trips_state_offset_and_meta(tmp_path: Path, make_event: Any) -> None:
    state = _state(make_event)
    save_snapshot(state, tmp_path / "p0", 42, {"rules": "abc"})
    loaded = load_snapshot(tmp_path / "p0")
    assert loaded is not None
    restored, offset, meta = loaded
    assert offset == 42 and meta == {"rules": "abc"}
    assert_frame_equal(restored.persons, state.persons)
    assert_frame_equal(restored.facts, state.facts)


def test_a_newer_snapshot_replaces_the_older_and_a_half_written_one_is_ignored(tmp_path: Path, make_event: Any) -> None:
    state = _state(make_event)
    save_snapshot(PatientState(), tmp_path, 1)
    save_snapshot(state, tmp_path, 7)
    # A crash while writing the next one: a temporary folder without a pointer change.
    (tmp_path / ".gen-9-1-x.tmp").mkdir()
    loaded = load_snapshot(tmp_path)
    assert loaded is not None and loaded[1] == 7 and loaded[0].persons.height == 1
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("gen-")]) == 1


def test_no_or_corrupt_snapshot_means_replay(tmp_path: Path, make_event: Any) -> None:
    assert load_snapshot(tmp_path / "missing") is None
    save_snapshot(_state(make_event), tmp_path, 3)
    gen = next(p for p in tmp_path.iterdir() if p.name.startswith("gen-"))
    (gen / "facts.parquet").write_bytes(b"not parquet")
    assert load_snapshot(tmp_path) is None


def test_prune_keeps_only_usable_facts_within_the_horizon(make_event: Any) -> None:
    state = _state(make_event)
    keep = (pl.col("system") == "ICD10") & pl.col("code").str.starts_with("E11")
    assert prune_facts(state, keep).facts["code"].to_list() == ["E11.9"]
    since = datetime(2025, 1, 1, tzinfo=UTC)
    assert prune_facts(state, None, since).facts["code"].to_list() == ["E11.9"]
    assert prune_facts(state, None).facts.height == 2
    assert prune_facts(state, keep).persons.height == 1


def test_apply_with_keep_drops_unusable_facts_but_still_reports_the_patient(make_event: Any) -> None:
    keep = pl.col("code").str.starts_with("E11")
    state, touched = apply_events(
        PatientState(), [make_event(patient_id="P9", code={"system": "ICD10", "value": "J45"})], keep=keep
    )
    assert state.facts.height == 0 and touched.to_list() == ["P9"] and state.persons.height == 1


def test_changed_only_leaves_out_patients_whose_usable_record_did_not_change(make_event: Any) -> None:
    keep = pl.col("code").str.starts_with("E11")
    first = [
        make_event(kind="person", patient_id="A", person={"birth_date": "1970-01-01"}, code=None),
        make_event(kind="person", patient_id="B", person={"birth_date": "1980-01-01"}, code=None),
    ]
    state, _ = apply_events(PatientState(), first, keep=keep)
    batch = [
        make_event(patient_id="A", code={"system": "ICD10", "value": "J45"}),  # dropped by keep: no change
        make_event(patient_id="B", code={"system": "ICD10", "value": "E11.9"}),  # kept: changed
        make_event(patient_id="C", code={"system": "ICD10", "value": "J45"}),  # new person row: changed
        make_event(
            kind="consent", patient_id="A", code={"system": "local", "value": "do-not-contact"}, status="resolved"
        ),  # flag already off: no change
    ]
    _, touched = apply_events(state, batch, keep=keep)
    assert touched.to_list() == ["A", "B", "C"]
    _, changed = apply_events(state, batch, keep=keep, changed_only=True)
    assert changed.to_list() == ["B", "C"]
    _, moved = apply_events(
        state, [make_event(kind="visit", patient_id="A", code=None, setting="community")], keep=keep, changed_only=True
    )
    assert moved.to_list() == ["A"]  # the setting changed


def test_fact_filter_equals_a_plain_filter_and_judges_each_code_once(make_event: Any) -> None:
    from screener.state import FactFilter

    expr = (pl.col("system") == "ICD10") & pl.col("code").str.starts_with("E11")
    ff = FactFilter(expr)
    assert ff.keys == ["system", "code"]
    events = [
        make_event(patient_id=f"P{i}", code={"system": s, "value": c})
        for i, (s, c) in enumerate([("ICD10", "E11.9"), ("ICD10", "I10"), ("SNOMED", "E11"), ("ICD10", "E119")])
    ]
    state, _ = apply_events(PatientState(), events)
    assert_frame_equal(ff(state.facts), state.facts.filter(expr))
    assert ff._known is not None and ff._known.height == 4
    ff(state.facts)
    assert ff._known.height == 4  # cached, not judged again
    windowed = FactFilter(expr, since=datetime(2027, 1, 1, tzinfo=UTC))
    assert windowed(state.facts).height == 0
