"""The engine with its history store: a new owner restores a partition from the store instead of replaying the
topic, a rule change builds the new view from the store while batches go on under the old rules, and a missing
or damaged store (or snapshot) is logged, counted and replayed."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from structlog.testing import capture_logs

from screener.alerts.memory import MemoryStore
from screener.clock import FixedClock
from screener.engine import Engine
from screener.history import HistoryStore, open_store
from screener.testing import InMemoryConsumer, InMemoryLog
from tests._support.engines import started_engine

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def make_engine(
    settings: Any, log: InMemoryLog, mini: Any, store: MemoryStore, history: HistoryStore | None = None
) -> Engine:
    return started_engine(settings, log, store, mini=mini, clock=FixedClock(NOW), history=history)


def drain(engine: Engine, steps: int = 6) -> None:
    for _ in range(steps):
        engine.clock.advance(0.002)  # type: ignore[attr-defined]
        engine.step()


def snapshot_time(engine: Engine) -> None:
    """Step past the snapshot interval: the history append (and snapshot) of every partition, then wait for it."""
    engine.clock.advance(engine.settings.snapshot_interval_s + 1)  # type: ignore[attr-defined]
    engine.step()
    engine._wait_snapshots()


def publish_people(log: InMemoryLog, make_event: Any, ids: list[str], diabetic: bool = False) -> None:
    for pid in ids:
        log.publish("ev", make_event(kind="person", patient_id=pid, person={"birth_date": "1970-01-01"}, code=None))
        if diabetic:
            log.publish("ev", make_event(patient_id=pid, code={"system": "ICD10", "value": "E11.9"}))


def counter(engine: Engine, name: str, labels: dict[str, str]) -> float:
    return engine.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def rules(settings: Any) -> Path:
    (Path(settings.rules_dir) / "a.yaml").write_text("id=ADULT min_age=18")
    return Path(settings.rules_dir)


def test_a_new_owner_restores_from_the_store_and_reads_on_from_its_offset(
    settings: Any, rules: Path, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    log, store = InMemoryLog(2), MemoryStore()
    history = open_store(tmp_path / "shared")
    first = make_engine(settings, log, mini, store, history)
    publish_people(log, make_event, [f"P{i}" for i in range(12)], diabetic=True)
    drain(first)
    snapshot_time(first)
    offsets = {p: history.offset(p) for p in (0, 1)}
    assert all(o is not None and o > 0 for o in offsets.values())
    publish_people(log, make_event, ["LATE1", "LATE2"])  # read by the first engine, committed, not yet stored
    drain(first)
    # "kill -9" of the first engine: no close. The second has another disk (no snapshot) and the same store.
    other = settings.model_copy(update={"state_dir": tmp_path / "other-disk"})
    second = make_engine(other, log, mini, store, open_store(tmp_path / "shared"))
    consumer = second._consumer
    drain(second)
    assert isinstance(consumer, InMemoryConsumer)
    assert consumer.fetched, "the late records were read"
    # Every partition's first fetch starts at the store's offset: nothing was read from offset 0.
    assert {p: v[0] for p, v in consumer.fetched.items()} == {p: offsets[p] for p in consumer.fetched}
    assert second.state().persons.height == 14 and second.state().facts.height == 0  # pruned: ADULT uses no facts
    assert counter(second, "screener_partition_restores_total", {"source": "history"}) == 2
    matches = store.matches()
    assert matches.height == 14 and matches.unique(["study_id", "patient_id"]).height == 14


def test_a_rule_change_builds_from_the_store_while_batches_go_on_under_the_old_rules(
    settings: Any, rules: Path, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    release = threading.Event()

    class SlowStore(HistoryStore):
        """Holds the rebuild's loads until released, so the test sees batches screened meanwhile."""

        hold = False

        def load(self, partition: int, keep: Any = None) -> Any:
            if self.hold:
                assert release.wait(10)
            return super().load(partition, keep)

    log, store = InMemoryLog(2), MemoryStore()
    history = SlowStore(str(tmp_path / "h"))
    engine = make_engine(settings, log, mini, store, history)
    engine.rebuild_in_process = False  # the loads are held by this thread's event
    diabetic = [f"D{i}" for i in range(6)]
    publish_people(log, make_event, diabetic, diabetic=True)
    drain(engine)
    snapshot_time(engine)  # the store holds both partitions: the rebuild loads them
    assert set(store.matches()["study_id"]) == {"ADULT"}
    consumer = engine._consumer
    assert isinstance(consumer, InMemoryConsumer)
    fetched_before = {p: list(v) for p, v in consumer.fetched.items()}
    history.hold = True
    (rules / "b.yaml").write_text("id=DM min_age=18 icd10=E11")
    drain(engine, 2)
    assert engine.rebuilding
    # Live events during the rebuild: screened at once, against the studies in force (ADULT), not yet DM.
    publish_people(log, make_event, ["LIVE"], diabetic=True)
    drain(engine, 2)
    live = store.matches().filter(pl.col("patient_id") == "LIVE")
    assert live["study_id"].to_list() == ["ADULT"]
    release.set()
    assert engine.finish_rebuild(timeout=10)
    drain(engine)
    dm = store.matches().filter(pl.col("study_id") == "DM")
    assert sorted(dm["patient_id"]) == sorted([*diabetic, "LIVE"]), "everyone screened for the new study"
    # Only the new study was screened for everyone (7 patients x 1 study), and the topic was not read again.
    assert counter(engine, "screener_screens_total", {"trigger": "rules"}) == 7
    assert all(0 not in v[len(fetched_before.get(p, [])) :] for p, v in consumer.fetched.items())
    assert counter(engine, "screener_history_replays_total", {"reason": "rebuild"}) == 0
    assert store.matches().unique(["study_id", "patient_id"]).height == store.matches().height


def test_a_rule_change_before_the_store_holds_a_partition_builds_its_view_from_the_frames_applied(
    settings: Any, rules: Path, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    log, store = InMemoryLog(2), MemoryStore()
    engine = make_engine(settings, log, mini, store, open_store(tmp_path / "h"))
    consumer = engine._consumer
    assert isinstance(consumer, InMemoryConsumer)
    people = [f"D{i}" for i in range(6)]
    publish_people(log, make_event, people, diabetic=True)
    drain(engine)
    assert all(part.saved_offset is None for part in engine._parts.values())
    fetched_before = {p: list(v) for p, v in consumer.fetched.items()}
    (rules / "b.yaml").write_text("id=DM min_age=18 icd10=E11")
    drain(engine, 2)
    assert engine.finish_rebuild(timeout=60) or engine.rule_swaps == 1
    drain(engine)
    assert sorted(store.matches().filter(pl.col("study_id") == "DM")["patient_id"]) == sorted(people)
    assert all(0 not in v[len(fetched_before.get(p, [])) :] for p, v in consumer.fetched.items()), "no replay"


def test_a_damaged_store_is_replayed_from_the_topic_logged_and_counted(
    settings: Any, rules: Path, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    log, store = InMemoryLog(2), MemoryStore()
    first = make_engine(settings, log, mini, store, open_store(tmp_path / "h"))
    publish_people(log, make_event, [f"P{i}" for i in range(8)])
    drain(first)
    snapshot_time(first)
    for manifest in (tmp_path / "h").glob("p-*/manifest.json"):
        manifest.write_text("{broken")
    other = settings.model_copy(update={"state_dir": tmp_path / "other-disk"})
    with capture_logs() as logs:
        second = make_engine(other, log, mini, store, open_store(tmp_path / "h"))
        drain(second)
    replays = [e for e in logs if e["event"] == "history_replay"]
    assert {e["partition"] for e in replays} == {0, 1} and {e["reason"] for e in replays} == {"damaged"}
    assert counter(second, "screener_history_replays_total", {"reason": "damaged"}) == 2
    assert second.state().persons.height == 8 and store.matches().height == 8
    snapshot_time(second)
    assert open_store(tmp_path / "h").offset(0) is not None, "the replay wrote the store again"


def test_a_corrupt_snapshot_is_logged_counted_and_the_store_used_instead(
    settings: Any, rules: Path, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    """Issue 17: a skipped snapshot used to be silent."""
    log, store = InMemoryLog(2), MemoryStore()
    first = make_engine(settings, log, mini, store, open_store(tmp_path / "h"))
    publish_people(log, make_event, [f"P{i}" for i in range(8)])
    drain(first)
    first.close()
    for gen in Path(settings.state_dir).glob("ev-*/gen-*"):
        (gen / "persons.parquet").write_bytes(b"not parquet")
    with capture_logs() as logs:
        second = make_engine(settings, log, mini, store, open_store(tmp_path / "h"))
        drain(second)
    skipped = [e for e in logs if e["event"] == "snapshot_skipped"]
    assert {e["partition"] for e in skipped} == {0, 1} and all("unreadable" in e["reason"] for e in skipped)
    assert counter(second, "screener_snapshots_skipped_total", {"reason": "unreadable"}) == 2
    assert counter(second, "screener_partition_restores_total", {"source": "history"}) == 2
    assert second.state().persons.height == 8


def test_a_replay_does_not_dead_letter_a_bad_record_twice(
    settings: Any, rules: Path, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    """Failing before: a partition replayed from the topic (its store lost) wrote every dead letter again."""
    log, store = InMemoryLog(2), MemoryStore()
    first = make_engine(settings, log, mini, store, open_store(tmp_path / "h"))
    bad = log.append("ev", b"k", b'{"kind": "vitals"}', partition=0)
    publish_people(log, make_event, [f"P{i}" for i in range(6)])
    drain(first)
    snapshot_time(first)
    assert len(log.values("dlq")) == 1
    for manifest in (tmp_path / "h").glob("p-*/manifest.json"):
        manifest.write_text("{broken")
    other = settings.model_copy(update={"state_dir": tmp_path / "other-disk"})
    second = make_engine(other, log, mini, store, open_store(tmp_path / "h"))
    drain(second)
    assert second.state().persons.height == 6
    (dlq,) = log.values("dlq")  # still exactly one
    assert dlq["offset"] == bad.offset
    assert counter(second, "screener_dead_letters_replayed_total", {}) == 1
    later = log.append("ev", b"k", b'{"kind": "vitals"}', partition=0)
    drain(second)
    assert [d["offset"] for d in log.values("dlq")] == [bad.offset, later.offset]  # a new bad record still is


def test_under_run_changed_rule_files_are_read_on_the_rules_thread_while_events_are_screened(
    settings: Any, rules: Path, mini: Any, make_event: Any, tmp_path: Path
) -> None:
    gate = threading.Event()
    gate.set()

    def slow_loader(paths: Any) -> Any:
        assert gate.wait(10)
        return mini["loader"](paths)

    log, store = InMemoryLog(2), MemoryStore()
    engine = make_engine(settings, log, {**mini, "loader": slow_loader}, store, open_store(tmp_path / "h"))
    gate.clear()  # from now on the rules folder takes until released to read
    (rules / "b.yaml").write_text("id=DM min_age=18 icd10=E11")
    publish_people(log, make_event, ["LIVE"], diabetic=True)
    for _ in range(3):
        engine.clock.advance(0.002)  # type: ignore[attr-defined]
        engine.step(overlap=True)
    assert store.matches()["study_id"].to_list() == ["ADULT"], "screened meanwhile, under the rules in force"
    assert set(engine.studies) == {"ADULT"} and not engine.rebuilding
    loading = engine._rules_loading
    assert loading is not None, "the load is on the rules thread"
    gate.set()
    loading[0].result(timeout=10)
    engine.clock.advance(0.002)  # type: ignore[attr-defined]
    engine.step(overlap=True)  # applies the loaded rules: the rule change starts
    assert engine._rules_loading is None and engine.rule_reloads == 2
    assert engine.finish_rebuild(timeout=60) or "DM" in engine.studies
    drain(engine)
    assert sorted(store.matches()["study_id"]) == ["ADULT", "DM"]
    engine.close()


def test_the_hand_back_folder_is_in_shared_memory_only_when_it_has_room(tmp_path: Path, monkeypatch: Any) -> None:
    from screener.engine import views

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        monkeypatch.setattr(views, "SHM_MIN_FREE", 0)
        assert views.scratch_dir(tmp_path).parent == shm
    # a container's 64 MB /dev/shm cannot hold a partition's view: the state folder is used instead
    monkeypatch.setattr(views, "SHM_MIN_FREE", 2**62)
    assert views.scratch_dir(tmp_path) == tmp_path / "rebuild"
