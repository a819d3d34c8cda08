"""Fact selection's row order: the aggregation reads each slot as one slice and takes first/last in row order."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from screener.rules._select import fact_rows
from screener.rules.features import _feature_plan

D = timedelta(days=1)


def _state_and_plan(kit):
    now = kit.NOW
    study = kit.make_study(
        {
            "a": "glucose|latest('30d') > 5",
            "b": "glucose|count('1y') >= 2",
            "c": "glucose|min('1y') < 4",
            "d": "drug|exposure_days('1y') > 10",
            "e": "dx|ever",
        }
    )
    same = now - 3 * D  # three facts at one instant: the event id breaks the tie
    facts = [
        {**kit.fact("P2", "LOINC", "2345-7", same, 7.0, "mmol/L"), "event_id": "z9"},
        {**kit.fact("P2", "LOINC", "2345-7", same, 3.0, "mmol/L"), "event_id": "a1"},
        {**kit.fact("P2", "LOINC", "2345-7", same, 6.0, "mmol/L"), "event_id": "m5"},
        kit.fact("P1", "LOINC", "2345-7", now - 40 * D, 4.5, "mmol/L"),
        kit.fact("P1", "LOINC", "2345-7", now - D, 6.5, "mmol/L"),
        kit.fact("P1", "ATC", "A10BA02", now - 30 * D),
        kit.fact("P2", "ICD10", "E11.9", now - 400 * D),
        kit.fact("P1", "LOINC", "2345-7", now - 200 * D, 3.5, "mmol/L"),
    ]
    persons = [{"patient_id": p, "sex": "F"} for p in ("P2", "P1")]
    return kit.make_state(persons, facts), _feature_plan([study]), now


def test_rows_come_by_slot_then_time_then_event_id(kit):
    state, plan, now = _state_and_plan(kit)
    rows = fact_rows(state, plan.rows, now)
    assert rows.height > 0
    assert rows["_slot"].is_sorted()  # aggregate() slices by slot: an unsorted slot would lose rows
    # every slot holds only its own selections' rows
    slot_of = pl.Series(plan.agg.slots, dtype=pl.UInt32)
    assert rows["_slot"].equals(slot_of.gather(rows["_fid"]).alias("_slot"))
    events = state.facts["event_id"].gather(rows["_r0"])
    keyed = rows.select("_g", "occurred_at").with_columns(events.alias("event_id"), pl.int_range(pl.len()).alias("i"))
    tied = 0
    for _, group in keyed.group_by("_g"):
        in_rows = group.sort("i")
        assert in_rows.equals(in_rows.sort("occurred_at", "event_id"))
        tied += in_rows["occurred_at"].is_duplicated().sum()
    assert tied >= 3  # the three facts at one instant are in some feature's rows


def test_ties_in_time_resolve_by_event_id_in_the_statistics(kit):
    from screener.rules import screen

    state, _plan, now = _state_and_plan(kit)
    study = kit.make_study({"a": "glucose|latest('30d') > 5"})
    row = screen(state, [study], now).filter(pl.col("patient_id") == "P2").row(0, named=True)
    # "z9" is the latest of the three facts at one instant: 7.0 > 5
    assert row["outcome"] == "eligible"
    assert "7 mmol/L" in row["criteria"][0]["evidence"]
