"""The engine's rule-change rebuild in its worker process (moved from tests/unit/engine/test_history_engine.py:
each test here starts a process, which a unit test must not): the view a worker loads is the store plus what came
since, the swap does not compact, a dead worker is replaced, and a filter whose judge does not pickle is sent
without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from screener.alerts.memory import MemoryStore
from screener.history import open_store
from screener.testing import InMemoryLog
from tests.unit.engine import conftest as engine_fixtures
from tests.unit.engine import test_history_engine as unit
from tests.unit.engine.test_history_engine import counter, drain, make_engine, publish_people, snapshot_time

# The fixtures of the engine's unit tests (a settings with a temporary rules folder, the mini study type, one rule
# file), shared rather than copied.
settings, mini, rules = engine_fixtures.settings, engine_fixtures.mini, unit.rules

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_in_the_worker_process_the_view_is_the_store_plus_what_came_since_and_the_swap_does_not_compact(
    settings: Any, rules: Path, mini: Any, make_event: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from screener.engine.views import REBUILD_NICE
    from screener.state import LiveState

    log, store = InMemoryLog(2), MemoryStore()
    engine = make_engine(settings, log, mini, store, open_store(tmp_path / "h"))
    assert engine.rebuild_in_process
    saved = [f"S{i}" for i in range(6)]
    publish_people(log, make_event, saved, diabetic=True)
    drain(engine)
    snapshot_time(engine)
    unsaved = [f"U{i}" for i in range(4)]  # applied, not yet in the store when the rule changes
    publish_people(log, make_event, unsaved, diabetic=True)
    drain(engine)
    assert any(part.unsaved for part in engine._parts.values())
    (rules / "b.yaml").write_text("id=DM min_age=18 icd10=E11")
    drain(engine, 1)
    assert engine.rebuilding
    publish_people(log, make_event, ["LIVE"], diabetic=True)  # applied while the worker starts and loads
    drain(engine, 1)
    rb = engine._rebuild
    assert rb is not None
    rb.future.result(timeout=120)
    pool = engine._view_loader._pool  # type: ignore[union-attr]
    assert pool is not None
    workers = list(pool._processes)  # type: ignore[attr-defined]
    own = os.getpriority(os.PRIO_PROCESS, 0)
    nice = max(REBUILD_NICE, own)
    assert workers and all(os.getpriority(os.PRIO_PROCESS, pid) == nice for pid in workers)
    assert os.getpriority(os.PRIO_PROCESS, 0) == own, "the engine's threads keep their priority"
    compactions: list[int] = []
    real_compact = LiveState.compact
    monkeypatch.setattr(LiveState, "compact", lambda self: compactions.append(1) or real_compact(self))
    swaps = engine.rule_swaps
    for _ in range(5):
        drain(engine, 1)
        if engine.rule_swaps > swaps:
            break
    assert engine.rule_swaps == swaps + 1 and compactions == [], "swapped, without compacting a view"
    monkeypatch.undo()
    drain(engine)
    dm = store.matches().filter(pl.col("study_id") == "DM")
    assert sorted(dm["patient_id"]) == sorted([*saved, *unsaved, "LIVE"])
    assert counter(engine, "screener_screens_total", {"trigger": "rules"}) == 11, "only the new study, once each"
    assert engine.state().persons.height == 11
    assert counter(engine, "screener_history_replays_total", {"reason": "damaged"}) == 0
    assert not list((Path(settings.state_dir) / "rebuild").glob("*/*")), "the worker's files are removed"
    engine.close()
    assert engine._view_loader is None


def test_the_view_loader_reads_in_its_worker_and_starts_a_new_one_when_the_worker_died(tmp_path: Path) -> None:
    import os
    import signal

    from screener.engine.views import ViewLoader
    from screener.state import FactFilter

    history = open_store(tmp_path / "h")
    persons = pl.DataFrame({"patient_id": ["B", "A"]})
    facts = pl.DataFrame(
        {"patient_id": ["B", "A", "A"], "event_id": ["e1", "e2", "e3"], "kind": ["condition"] * 3, "code": ["X"] * 3}
    )
    history.write_base(0, persons, facts, pl.DataFrame(schema={"event_id": pl.String}), 7)
    loader = ViewLoader(history, tmp_path / "scratch")
    keep = FactFilter(pl.col("event_id") != "e3")
    try:
        state, offset = loader.load(0, keep) or (None, None)
        assert offset == 7 and state is not None
        assert state.persons["patient_id"].to_list() == ["A", "B"], "sorted by patient"
        assert state.facts["event_id"].to_list() == ["e2", "e1"], "pruned with the new filter, sorted"
        assert loader.load(1, keep) is None, "nothing stored for partition 1"
        assert not list((tmp_path / "scratch").iterdir()), "the files are removed once read"
        assert loader._pool is not None
        (pid,) = list(loader._pool._processes)  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        again = loader.load(0, None)
        assert again is not None and again[0].facts.height == 3, "a new worker read it"
        assert list(loader._pool._processes) != [pid]  # type: ignore[attr-defined]
    finally:
        loader.close()


def test_the_worker_gets_a_filter_whose_judge_does_not_pickle_and_keeps_the_same_facts(tmp_path: Path) -> None:
    from screener.engine.views import ViewLoader, portable
    from screener.state import FactFilter

    history = open_store(tmp_path / "h")
    persons = pl.DataFrame({"patient_id": ["A", "B"]})
    facts = pl.DataFrame(
        {
            "patient_id": ["A", "A", "B"],
            "event_id": ["e1", "e2", "e3"],
            "kind": ["condition"] * 3,
            "system": ["ICD10"] * 3,
            "code": ["E11", "I10", "E11"],
        }
    )
    history.write_base(0, persons, facts, pl.DataFrame(schema={"event_id": pl.String}), 3)
    expr = pl.col("code") == "E11"
    # The engine's filter carries the rule compiler's judge, a closure over the studies (local lambdas inside).
    keep = FactFilter(expr, judge=lambda keys: keys.select(expr.fill_null(False)).to_series())
    sent = portable(keep)
    assert sent is not None and sent.judge is None and sent.expr is expr
    plain = FactFilter(pl.col("code") == "I10")
    assert portable(plain) is plain, "a filter that pickles is sent as it is"
    loader = ViewLoader(history, tmp_path / "scratch")
    try:
        got = loader.load(0, keep)
        assert got is not None, "the load did not fail on pickling"
        assert got[0].facts["event_id"].to_list() == ["e1", "e3"]
    finally:
        loader.close()
