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


def _canonical(rows: pl.DataFrame) -> pl.DataFrame:
    """Fact rows without the per-call pair key ``_sc`` (a key, numbered afresh by each call; ``code`` says it)."""
    return rows.drop("_sc")


def test_memo_of_codes_and_units_gives_the_rows_of_a_fresh_plan(kit, monkeypatch):
    import dataclasses

    from screener.rules import _keys
    from screener.rules._keys import KeyMemo

    state, plan, now = _state_and_plan(kit)
    # a second batch: codes and unit spellings the first never brought (a prefix code, a glucose in mg/dL, a null
    # unit, a code in no concept), and one the first did
    later = kit.make_state(
        [{"patient_id": "P3", "sex": "M"}],
        [
            kit.fact("P3", "ICD10", "E11.65", now - 20 * D),
            kit.fact("P3", "LOINC", "2345-7", now - 2 * D, 110.0, "mg/dL"),
            kit.fact("P3", "LOINC", "2345-7", now - 3 * D, 6.1, None),
            kit.fact("P3", "LOINC", "9999-9", now - 3 * D, 1.0, "mmol/L"),
            kit.fact("P3", "ATC", "A10BA02", now - 5 * D),
        ],
    )
    rp = dataclasses.replace(plan.rows, memo=KeyMemo())
    first = fact_rows(state, rp, now)
    second = fact_rows(later, rp, now)  # judged partly from the memo
    assert {"E11.9", "E11.65", "9999-9"} <= rp.memo.codes[0]  # both batches' codes judged and kept
    assert None in rp.memo.units[0] and "mg/dL" in rp.memo.units[0]
    for st, got in ((state, first), (later, second)):
        fresh = fact_rows(st, dataclasses.replace(plan.rows, memo=KeyMemo()), now)
        assert got.height > 0
        assert _canonical(got).equals(_canonical(fresh))
    mg = second.filter(pl.col("value") == 110.0)  # the glucose in mg/dL
    assert mg.height and mg["_v"].is_not_null().all()  # the spelling first met in the second batch converts
    again = fact_rows(state, rp, now)  # every code and spelling from the memo now
    assert _canonical(again).equals(_canonical(first))
    # a memo past its bound starts again, with the same rows
    monkeypatch.setattr(_keys, "MEMO_MAX", 1)
    third = kit.make_state([{"patient_id": "P4", "sex": "F"}], [kit.fact("P4", "ATC", "A10BB01", now - 4 * D)])
    got = fact_rows(third, rp, now)
    assert len(rp.memo.codes[0]) == 0
    assert got.height and _canonical(got).equals(
        _canonical(fact_rows(third, dataclasses.replace(rp, memo=KeyMemo()), now))
    )
    assert _canonical(fact_rows(later, rp, now)).equals(_canonical(second))
