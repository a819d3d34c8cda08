"""Matches follow the patient, engine side: an ``ineligible`` row goes to the store only for a pair with a match,
when a re-screen rules it out; it is never alerted; the known pairs survive a failover through the history store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from screener.alerts.memory import MemoryStore
from screener.clock import FixedClock
from screener.engine import Engine
from screener.history import open_store
from screener.testing import InMemoryLog
from tests._support.engines import RecordingStore, started_engine

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


class SpyStore(RecordingStore):
    """The in-memory store, recording every frame the engine sends."""

    def ineligible_sent(self) -> list[tuple[str, str]]:
        rows = [r for f in self.sent for r in f.filter(pl.col("outcome") == "ineligible").iter_rows(named=True)]
        return [(r["study_id"], r["patient_id"]) for r in rows]


def engine_for(settings: Any, log: InMemoryLog, mini: Any, store: MemoryStore, history: Any) -> Engine:
    (Path(settings.rules_dir) / "dm.yaml").write_text("id=DM min_age=18 icd10=E11")
    return started_engine(settings, log, store, mini=mini, clock=FixedClock(NOW), history=history)


def drain(engine: Engine) -> None:
    for _ in range(5):
        engine.clock.advance(0.002)  # type: ignore[attr-defined]
        engine.step()


def diabetic(log: InMemoryLog, make_event: Any, pid: str, eid: str) -> None:
    log.publish("ev", make_event(kind="person", patient_id=pid, person={"birth_date": "1970-01-01"}, code=None))
    log.publish("ev", make_event(event_id=eid, patient_id=pid, code={"system": "ICD10", "value": "E11.9"}))


def rule_out(log: InMemoryLog, make_event: Any, pid: str, eid: str) -> None:
    """A correction: the diagnosis was hypertension, not diabetes."""
    log.publish(
        "ev", make_event(event_id=f"{eid}-fix", patient_id=pid, corrects=eid, code={"system": "ICD10", "value": "I10"})
    )


def test_a_patient_ruled_out_later_gets_an_ineligible_row_and_no_second_alert(
    settings: Any, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    log, store = InMemoryLog(2), SpyStore()
    engine = engine_for(settings, log, mini, store, open_store(tmp_path / "h"))
    diabetic(log, make_event, "P1", "e1")
    log.publish("ev", make_event(kind="person", patient_id="P2", person={"birth_date": "1970-01-01"}, code=None))
    drain(engine)
    assert store.matches().select("study_id", "patient_id", "outcome").rows() == [("DM", "P1", "eligible")]
    rule_out(log, make_event, "P1", "e1")
    log.publish("ev", make_event(patient_id="P2", code={"system": "ICD10", "value": "J45"}))  # screened, no match
    drain(engine)
    # Only the pair with a match got an ineligible row; P2 (never matched) got none.
    assert store.ineligible_sent() == [("DM", "P1")]
    row = store.matches().row(0, named=True)
    assert row["outcome"] == "ineligible"
    assert json.loads(row["criteria"])[0]["name"] == "adult"  # the criteria of the ruling-out screen
    assert [(m["study_id"], m["patient_id"]) for m in log.values("m")] == [("DM", "P1")], "no second alert"
    reg = engine.metrics.registry
    assert reg.get_sample_value("screener_matches_ruled_out_total") == 1
    # Ruled out once: a later re-screen does not send it again (the pair is no longer known as a match).
    engine.rescreen_all()
    assert store.ineligible_sent() == [("DM", "P1")]


def test_a_store_without_the_pair_never_gets_an_ineligible_row(
    settings: Any, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    """The current store only updates rows it has: the engine must never make it insert an ineligible one."""
    log, store = InMemoryLog(2), SpyStore()
    engine = engine_for(settings, log, mini, store, open_store(tmp_path / "h"))
    for i in range(5):
        log.publish("ev", make_event(kind="person", patient_id=f"N{i}", person={"birth_date": "1970-01-01"}, code=None))
    drain(engine)
    engine.rescreen_all()
    assert store.ineligible_sent() == [] and store.matches().height == 0


def test_the_known_pairs_follow_a_partition_to_its_next_owner(
    settings: Any, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    log, store = InMemoryLog(2), SpyStore()
    first = engine_for(settings, log, mini, store, open_store(tmp_path / "shared"))
    diabetic(log, make_event, "P1", "e1")
    drain(first)
    first.clock.advance(first.settings.snapshot_interval_s + 1)  # type: ignore[attr-defined]
    first.step()
    first._wait_snapshots()  # the history append (with the pairs); then "kill -9"
    other = settings.model_copy(update={"state_dir": tmp_path / "other-disk"})
    second = engine_for(other, log, mini, store, open_store(tmp_path / "shared"))
    drain(second)
    rule_out(log, make_event, "P1", "e1")
    drain(second)
    assert store.ineligible_sent() == [("DM", "P1")]
    assert store.matches()["outcome"].to_list() == ["ineligible"]
