"""A rule change's new view built as the current view plus the stored facts only the new filter keeps
(screener.engine._delta) is the view a whole load from the store gives."""

from __future__ import annotations

import copy
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from screener.engine._delta import add_delta, delta_applies, delta_facts
from screener.engine._narrow import gated_patients
from screener.engine.views import ViewLoader
from screener.history import open_store
from screener.history.store import keys_expr
from screener.state import FactFilter, LiveState

CODES = ["E11", "I10", "N18", "E11", "N18", None, "I10", "J45"]


def _store(tmp_path: Path) -> object:
    store = open_store(tmp_path / "h")
    persons = pl.DataFrame({"patient_id": ["A", "B", "C", "D"]})
    facts = pl.DataFrame(
        {
            "patient_id": ["A", "A", "B", "B", "C", "C", "D", "D"],
            "event_id": [f"e{i}" for i in range(8)],
            "kind": ["condition"] * 7 + ["measurement"],
            "system": ["ICD10"] * 5 + [None, "ICD10", "ICD10"],
            "code": CODES,
        }
    )
    store.write_base(0, persons, facts, pl.DataFrame(schema={"event_id": pl.String}), 5)
    return store


def _keep(codes: list[str]) -> FactFilter:
    return FactFilter(pl.col("code").is_in(codes) & (pl.col("kind") == "condition"))


def test_the_current_view_plus_the_delta_is_the_whole_load_under_the_new_filter(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old, new = _keep(["E11"]), _keep(["E11", "N18"])
    assert delta_applies(old, new)
    loaded = store.load(0, keep=old)  # type: ignore[attr-defined]
    assert loaded is not None
    current = LiveState(loaded[0])
    got = delta_facts(store, 0, old, new)  # type: ignore[arg-type]
    assert got is not None and got[1] == 5
    delta = got[0]
    assert delta is not None and delta["event_id"].to_list() == ["e2", "e4"], "only what the new filter adds"
    view = copy.copy(current)
    touched = add_delta(view, delta, new)
    assert sorted(touched.to_list()) == ["B", "C"]
    want = store.load(0, keep=new)  # type: ignore[attr-defined]
    assert want is not None
    assert_frame_equal(view.to_state().facts, want[0].facts, check_row_order=False)
    assert_frame_equal(view.to_state().persons, want[0].persons, check_row_order=False)
    assert current.fact_count == 2, "the current view is unchanged"


def test_a_filter_that_drops_stored_facts_is_loaded_whole_and_time_cuts_are_not_deltas(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    store = _store(tmp_path)
    got = delta_facts(store, 0, _keep(["E11", "I10"]), _keep(["E11", "N18"]))  # type: ignore[arg-type]
    assert got == (None, 5)
    assert not delta_applies(_keep(["E11"]), FactFilter(_keep(["I10"]).expr, datetime(2020, 1, 1, tzinfo=UTC)))
    assert not delta_applies(_keep(["E11"]), FactFilter(pl.col("text") == "x"))
    assert not delta_applies(None, _keep(["E11"]))


def test_the_key_filter_matches_exactly_the_rows_given_nulls_included() -> None:
    facts = pl.DataFrame(
        {"kind": ["a", "a", "b", None, "b"], "system": ["X", None, None, None, "X"], "code": ["1", "1", None, "2", "2"]}
    )
    rows = pl.DataFrame(
        {"kind": ["a", "b", None], "system": [None, None, None], "code": ["1", None, "2"]},
        schema={"kind": pl.String, "system": pl.String, "code": pl.String},
    )
    keys = ["kind", "system", "code"]
    got = facts.filter(keys_expr(keys, rows))
    want = facts.join(rows, on=keys, how="semi", nulls_equal=True, maintain_order="left")
    assert_frame_equal(got, want)
    assert got.height == 3
    assert facts.filter(keys_expr(keys, rows.clear())).height == 0


def test_the_worker_returns_the_same_delta(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old, new = _keep(["E11"]), _keep(["E11", "N18"])
    loader = ViewLoader(store, tmp_path / "scratch")  # type: ignore[arg-type]
    try:
        got = loader.load_delta(0, old, new)
        assert got is not None and got[0] is not None
        assert got[0]["event_id"].to_list() == ["e2", "e4"]
        assert loader.load_delta(0, _keep(["E11", "I10"]), new) == (None, 5)
        assert loader.load_delta(1, old, new) is None
        # the gate scan of a rule change, on the same worker: the expressions go there and the patients come back
        condition = pl.col("kind") == "condition"
        gates = [[pl.col("code").is_in(["N18"]) & condition], [(pl.col("code") == "J45") & condition]]
        found = loader.load_gated(0, gates)
        assert found is not None and found.to_list() == ["B", "C"]  # D's J45 is a measurement: no study passes
        view = store.view(0, parallel="prefiltered")  # type: ignore[attr-defined]
        assert found.equals(gated_patients(view[1], gates)), "what the rebuild thread finds"
        assert loader.load_gated(1, gates) is None
    finally:
        loader.close()
    assert not (tmp_path / "scratch").exists(), "the scratch folder goes with the loader"
