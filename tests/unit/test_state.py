"""Patient state built from events: corrections, retractions, merges, flags, idempotence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from screener.history.snapshots import load_snapshot, save_snapshot
from screener.state import PatientState, apply_events

LAB = {"kind": "measurement", "code": {"system": "LOINC", "value": "62238-1"}, "unit": "mL/min/1.73m2"}


def test_correction_replaces_and_entered_in_error_deletes(make_event: Any) -> None:
    original = make_event(event_id="m1", patient_id="A", value=40.0, **LAB)
    corrected = make_event(event_id="m2", patient_id="A", value=45.0, corrects="m1", **LAB)
    state, touched = apply_events(PatientState(), [original, corrected])
    assert state.facts["value"].to_list() == [45.0]
    assert touched.to_list() == ["A"]
    deleted = make_event(event_id="m3", patient_id="A", value=45.0, corrects="m2", status="entered-in-error", **LAB)
    state, touched = apply_events(state, [deleted])
    assert state.facts.height == 0
    assert touched.to_list() == ["A"]


def test_a_retracted_event_replayed_later_stays_retracted(make_event: Any, tmp_path: Path) -> None:
    original = make_event(event_id="m1", patient_id="A", value=40.0, **LAB)
    retraction = make_event(event_id="m1x", patient_id="A", value=40.0, corrects="m1", status="entered-in-error", **LAB)
    state, _ = apply_events(PatientState(), [original])
    state, _ = apply_events(state, [retraction])
    state, _ = apply_events(state, [original])  # a producer retry or a replay re-delivers the original
    assert state.facts.height == 0
    # The tombstone survives a snapshot round trip.
    save_snapshot(state, tmp_path, offset=3)
    restored = load_snapshot(tmp_path)
    assert restored is not None
    state2, offset, _ = restored
    assert offset == 3
    state2, _ = apply_events(state2, [original])
    assert state2.facts.height == 0


def test_replaying_a_batch_is_idempotent(make_event: Any) -> None:
    events = [
        make_event(
            event_id="p",
            kind="person",
            patient_id="A",
            person={"birth_date": "1960-01-01", "sex": "F"},
            setting="community",
        ),
        make_event(event_id="c", patient_id="A"),
        make_event(event_id="m", patient_id="B", value=41.0, setting="hospital", **LAB),
    ]
    once, _ = apply_events(PatientState(), events)
    twice, _ = apply_events(once, events)
    assert once.facts.sort("event_id").equals(twice.facts.sort("event_id"))
    assert once.persons.sort("patient_id").equals(twice.persons.sort("patient_id"))
    assert dict(zip(twice.persons["patient_id"], twice.persons["setting"], strict=True)) == {
        "A": "community",
        "B": "hospital",
    }


def test_person_fields_left_out_keep_their_previous_value(make_event: Any) -> None:
    first = make_event(
        event_id="p1", kind="person", patient_id="A", person={"birth_date": "1960-01-01", "sex": "F", "imd_decile": 2}
    )
    second = make_event(event_id="p2", kind="person", patient_id="A", person={"sex": "M"})
    state, _ = apply_events(PatientState(), [first, second])
    row = state.persons.row(0, named=True)
    assert (str(row["birth_date"]), row["sex"], row["imd_decile"]) == ("1960-01-01", "M", 2)


def test_merge_moves_facts_to_the_surviving_patient(make_event: Any) -> None:
    fact = make_event(event_id="c", patient_id="OLD")
    merge = make_event(event_id="mg", kind="person", patient_id="NEW", person={"merged_from": "OLD"})
    state, _ = apply_events(PatientState(), [fact, merge])
    assert state.facts["patient_id"].to_list() == ["NEW"]
    assert state.persons["patient_id"].to_list() == ["NEW"]


def test_a_person_event_and_the_merge_that_retires_it_in_one_batch(make_event: Any) -> None:
    """The retired patient's own person event, earlier in the same batch as the merge, does not bring it back:
    one batch gives what the events give applied one by one."""
    old = make_event(event_id="p", kind="person", patient_id="OLD", person={"sex": "F"})
    fact = make_event(event_id="c", patient_id="OLD")
    merge = make_event(event_id="mg", kind="person", patient_id="NEW", person={"merged_from": "OLD"})
    together, _ = apply_events(PatientState(), [old, fact, merge])
    one_by_one = PatientState()
    for event in (old, fact, merge):
        one_by_one, _ = apply_events(one_by_one, [event])
    assert together.persons["patient_id"].to_list() == ["NEW"]
    assert together.persons.equals(one_by_one.persons)
    assert together.facts["patient_id"].to_list() == ["NEW"]


def test_do_not_contact_and_death_flags(make_event: Any) -> None:
    opt_out = make_event(
        event_id="d1", kind="consent", patient_id="A", code={"system": "local", "value": "do-not-contact"}
    )
    died = make_event(event_id="x", kind="death", patient_id="B")
    state, _ = apply_events(PatientState(), [opt_out, died])
    flags = {r["patient_id"]: (r["do_not_contact"], r["deceased"]) for r in state.persons.iter_rows(named=True)}
    assert flags == {"A": (True, False), "B": (False, True)}
    opt_in = make_event(
        event_id="d2",
        kind="consent",
        patient_id="A",
        status="resolved",
        code={"system": "local", "value": "do-not-contact"},
    )
    state, _ = apply_events(state, [opt_in])
    assert state.persons.filter(state.persons["patient_id"] == "A")["do_not_contact"].to_list() == [False]


def test_fact_filter_keeps_what_the_expression_keeps_by_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key rows a micro-batch brings are judged through the verdict table, a large frame's by joins; both keep
    exactly the rows ``filter(expr)`` keeps (a null verdict keeps nothing), in their order, whichever judged first."""
    from screener.state import _filter
    from screener.state._filter import FactFilter

    expr = pl.col("code").str.starts_with("E1") | (pl.col("unit") == "mg") | pl.when(pl.col("kind") == "x").then(None)

    def frame(codes: list[str | None], units: list[str | None], kinds: list[str | None]) -> pl.DataFrame:
        return pl.DataFrame(
            {"kind": kinds, "system": ["ICD10"] * len(codes), "code": codes, "unit": units, "status": None,
             "setting": None, "n": list(range(len(codes)))},
            schema_overrides={c: pl.String for c in ("kind", "code", "unit", "status", "setting")},
        )  # fmt: skip

    a = frame(
        ["E11", "I10", None, "E10", "Z99", "I10"], ["mg", None, "mg", None, None, "g"], ["c", "c", "c", "x", "x", "c"]
    )
    b = frame(["I10", "K20", "E12", "K20"], [None, "mg", None, None], ["c", "c", "m", "x"])
    none = frame(["I10", "K20"], [None, None], ["c", "c"])
    every = frame(["E11", "E13"], [None, "mg"], ["c", "c"])

    def expect(f: pl.DataFrame) -> pl.DataFrame:
        return f.filter(expr.fill_null(False))

    for small in (4096, 1, 0):  # the verdict table; the joins for big frames only; the joins always
        monkeypatch.setattr(_filter, "SMALL_DISTINCT", small)
        keep = FactFilter(expr)
        keep.learn(a.select(FactFilter.KEY_COLUMNS))
        for f in (a, b, none, every, a, b.clear()):
            got = keep(f)
            assert got.equals(expect(f)), small
        assert keep(none).height == 0 and keep(every).equals(every)
    # judged by the joins, then looked up in the table (stale, rebuilt from the joins' rows)
    monkeypatch.setattr(_filter, "SMALL_DISTINCT", 1)
    keep = FactFilter(expr)
    assert keep(a).equals(expect(a))
    monkeypatch.setattr(_filter, "SMALL_DISTINCT", 4096)
    assert keep(pl.concat([a, b])).equals(expect(pl.concat([a, b])))
    # a judge (the fast form) decides instead of the expression
    calls: list[int] = []

    def judge(rows: pl.DataFrame) -> pl.Series:
        calls.append(rows.height)
        return rows.select(expr.fill_null(False)).to_series()

    keep = FactFilter(expr, judge=judge)
    assert keep(a).equals(expect(a)) and keep(a).equals(expect(a))
    assert calls == [a.select(FactFilter.KEY_COLUMNS).unique().height]  # each key row judged once
