"""The engine loop against an in-memory log (no broker): ordering of side effects, policies, time, rules."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from screener.alerts.memory import MemoryStore
from screener.clock import FixedClock
from screener.engine import Engine
from screener.errors import DeliveryError
from tests._support.engines import started_engine

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def person(make_event: Any, pid: str, birth: str, **extra: Any) -> Any:
    return make_event(kind="person", patient_id=pid, person={"birth_date": birth}, code=None, **extra)


def build(settings: Any, log: Any, mini: Any, store: MemoryStore | None = None, clock: Any = None) -> Engine:
    return started_engine(settings, log, store, mini=mini, clock=clock)


@pytest.fixture(autouse=True)
def _conftest_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def write_rule(settings: Any, name: str, text: str) -> None:
    path = Path(settings.rules_dir) / f"{name}.yaml"
    path.write_text(text)
    # Distinct mtimes even on coarse filesystems.
    t = time.time() + len(text)
    import os

    os.utime(path, (t, t))


def run_until_idle(engine: Engine, steps: int = 5) -> None:
    for _ in range(steps):
        engine.clock.advance(0.002)  # type: ignore[attr-defined]  # past rules_poll_s: every step checks the rules
        engine.step()
        engine.finish_rebuild(timeout=30)  # a rule change's new views come from the store on another thread


def test_event_becomes_a_match_then_offsets_are_committed(settings: Any, log: Any, mini: Any, make_event: Any) -> None:
    write_rule(settings, "a", "id=ADULT-DM min_age=18 icd10=E11")
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    log.publish("ev", person(make_event, "P1", "1970-01-01"))
    log.publish("ev", make_event(patient_id="P1", code={"system": "ICD10", "value": "E11.9"}))
    log.publish("ev", person(make_event, "P2", "1970-01-01"))  # no diabetes: no match
    run_until_idle(engine)
    m = store.matches()
    assert m.select("study_id", "patient_id", "outcome").rows() == [("ADULT-DM", "P1", "eligible")]
    assert json.loads(m["criteria"][0]) == [{"name": "adult", "group": "include", "result": True, "evidence": "age"}]
    published = log.values("m")
    assert [(p["study_id"], p["patient_id"]) for p in published] == [("ADULT-DM", "P1")]
    total = sum(len(v) for v in log.topics["ev"].values())
    assert sum(log.committed[("ev", p)] for p in range(2) if ("ev", p) in log.committed) == total
    reg = engine.metrics.registry
    assert (
        reg.get_sample_value(
            "screener_matches_total", {"study": "ADULT-DM", "outcome": "eligible", "setting": "unknown"}
        )
        == 1
    )
    assert reg.get_sample_value("screener_events_consumed_total", {"source": "test", "kind": "person"}) == 2


def test_a_match_is_recorded_once_even_when_screened_again(settings: Any, log: Any, mini: Any, make_event: Any) -> None:
    write_rule(settings, "a", "id=ADULT min_age=18")
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    log.publish("ev", person(make_event, "P1", "1970-01-01"))
    run_until_idle(engine)
    log.publish("ev", make_event(patient_id="P1", code={"system": "ICD10", "value": "I10"}))
    run_until_idle(engine)
    engine.rescreen_all()
    assert store.matches().height == 1
    assert len(log.values("m")) == 1


def test_bad_event_goes_to_the_dead_letter_topic_with_reason_and_position(
    settings: Any, log: Any, mini: Any, make_event: Any
) -> None:
    write_rule(settings, "a", "id=ADULT min_age=18")
    engine = build(settings, log, mini)
    rec = log.append("ev", b"k", b'{"kind": "vitals"}', partition=1)
    log.publish("ev", person(make_event, "P1", "1970-01-01"))
    run_until_idle(engine)
    (dlq,) = log.values("dlq")
    assert dlq["partition"] == 1 and dlq["offset"] == rec.offset and dlq["topic"] == "ev"
    assert dlq["payload"] == '{"kind": "vitals"}' and dlq["reason"]
    assert log.committed[("ev", 1)] >= rec.offset + 1
    assert (
        engine.metrics.registry.get_sample_value(
            "screener_dead_letters_total", {"stage": "validate", "reason": dlq["reason"][:60]}
        )
        == 1
    )


def test_do_not_contact_and_deceased_are_never_matched_and_only_counted(
    settings: Any, log: Any, mini: Any, make_event: Any
) -> None:
    write_rule(settings, "a", "id=ADULT min_age=18")
    store = MemoryStore(do_not_contact=["P3"])
    engine = build(settings, log, mini, store)
    for pid in ("P1", "P2", "P3", "P4"):
        log.publish("ev", person(make_event, pid, "1970-01-01"))
    log.publish("ev", make_event(kind="consent", patient_id="P1", code={"system": "local", "value": "do-not-contact"}))
    log.publish("ev", make_event(kind="death", patient_id="P2", code=None))
    run_until_idle(engine)
    assert store.matches()["patient_id"].to_list() == ["P4"]
    reg = engine.metrics.registry
    assert reg.get_sample_value("screener_do_not_contact_suppressed_total", {"study": "ADULT"}) == 2
    assert reg.get_sample_value("screener_deceased_suppressed_total", {"study": "ADULT"}) == 1


def test_store_failure_commits_nothing_and_the_batch_is_redone(
    settings: Any, log: Any, mini: Any, make_event: Any
) -> None:
    write_rule(settings, "a", "id=ADULT min_age=18")
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    run_until_idle(engine, 1)
    store.fail_next = DeliveryError("database is down", channel="store")
    log.publish("ev", person(make_event, "P1", "1970-01-01"))
    engine.step()
    assert store.matches().height == 0
    assert all(v == 0 for v in log.committed.values())
    run_until_idle(engine)
    assert store.matches()["patient_id"].to_list() == ["P1"]


def test_patient_turning_18_is_matched_at_the_next_scheduled_rescreen(
    settings: Any, log: Any, mini: Any, make_event: Any
) -> None:
    write_rule(settings, "a", "id=ADULT min_age=18")
    clock = FixedClock(datetime(2026, 6, 1, 12, tzinfo=UTC))
    store = MemoryStore()
    engine = build(settings, log, mini, store, clock)  # re-screen every hour of clock time
    log.publish("ev", person(make_event, "P1", "2008-06-02"))  # 18 tomorrow
    run_until_idle(engine)
    assert store.matches().height == 0
    clock.set(datetime(2026, 6, 2, 0, 30, tzinfo=UTC))  # birthday, and past the scheduled time
    engine.step()
    assert store.matches()["patient_id"].to_list() == ["P1"]
    assert engine.rescreens == 1


def test_rescreen_waits_for_its_schedule(settings: Any, log: Any, mini: Any, make_event: Any) -> None:
    write_rule(settings, "a", "id=ADULT min_age=18")
    clock = FixedClock(datetime(2026, 6, 1, 23, 50, tzinfo=UTC))
    store = MemoryStore()
    engine = build(settings, log, mini, store, clock)
    log.publish("ev", person(make_event, "P1", "2008-06-02"))
    run_until_idle(engine)
    clock.advance(timedelta(minutes=20))  # birthday reached but the hourly re-screen is not due yet
    run_until_idle(engine)
    assert store.matches().height == 0
    clock.advance(timedelta(minutes=45))
    engine.step()
    assert store.matches().height == 1


def test_added_rule_is_screened_retrospectively_and_broken_edit_keeps_old(
    settings: Any, log: Any, mini: Any, make_event: Any
) -> None:
    write_rule(settings, "a", "id=OLD min_age=65")
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    log.publish("ev", person(make_event, "P1", "1970-01-01"))
    log.publish("ev", make_event(patient_id="P1", code={"system": "ICD10", "value": "E11.9"}))
    run_until_idle(engine)
    assert store.matches().height == 0
    # A new study needing diabetes: the fact was pruned from the hot view (no study used E11); the history store
    # kept it, so the new view is built from there.
    write_rule(settings, "b", "id=NEW min_age=18 icd10=E11")
    run_until_idle(engine, 8)
    assert store.matches().select("study_id", "patient_id").rows() == [("NEW", "P1")]
    # A broken edit: logged, counted, and the previous version keeps running.
    write_rule(settings, "b", "id=NEW min_age=eighteen icd10=E11")
    run_until_idle(engine, 3)
    assert "NEW" in engine.studies and engine.studies["NEW"].min_age == 18
    assert engine.metrics.registry.get_sample_value("screener_rule_load_errors_total", {"file": "b.yaml"}) == 1
    log.publish("ev", person(make_event, "P2", "1990-01-01"))
    log.publish("ev", make_event(patient_id="P2", code={"system": "ICD10", "value": "E11.2"}))
    run_until_idle(engine)
    assert sorted(store.matches()["patient_id"].to_list()) == ["P1", "P2"]


def test_study_dates_are_respected(settings: Any, log: Any, mini: Any, make_event: Any) -> None:
    write_rule(settings, "a", "id=LATER min_age=18 opens=2026-07-01 closes=2026-12-31")
    clock = FixedClock(NOW)
    store = MemoryStore()
    engine = build(settings, log, mini, store, clock)
    log.publish("ev", person(make_event, "P1", "1970-01-01"))
    run_until_idle(engine)
    assert store.matches().height == 0
    assert engine.metrics.registry.get_sample_value("screener_studies_open") == 0
    clock.set(datetime(2026, 7, 1, 9, tzinfo=UTC))
    engine.step()
    assert store.matches()["patient_id"].to_list() == ["P1"]


def test_snapshot_on_revocation_restores_without_replay(settings: Any, log: Any, mini: Any, make_event: Any) -> None:
    write_rule(settings, "a", "id=ADULT min_age=18")
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    for i in range(20):
        log.publish("ev", person(make_event, f"P{i}", "1970-01-01"))
    run_until_idle(engine)
    engine._consumer.revoke_all()
    snaps = sorted(p.name for p in Path(settings.state_dir).iterdir() if p.name != "history")
    assert snaps == ["ev-0", "ev-1"]
    second = build(settings, log, mini, store)
    second.step()
    assert second.caught_up
    assert second.state().persons.height == 20
    assert store.matches().height == 20 and len(log.values("m")) == 20


def test_restart_without_snapshot_replays_and_matches_nothing_twice(
    settings: Any, log: Any, mini: Any, make_event: Any
) -> None:
    write_rule(settings, "a", "id=ADULT min_age=18")
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    for i in range(10):
        log.publish("ev", person(make_event, f"P{i}", "1970-01-01"))
    run_until_idle(engine)
    # "kill -9": no close, no snapshot. The next engine replays the committed records without screening.
    second = build(settings, log, mini, store)
    log.publish("ev", person(make_event, "P99", "1970-01-01"))
    run_until_idle(second)
    assert second.caught_up and second.state().persons.height == 11
    assert store.matches().height == 11
    assert store.matches().unique(["study_id", "patient_id"]).height == 11


def test_full_rescreen_is_worked_off_in_chunks_between_batches(
    settings: Any, log: Any, mini: Any, make_event: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import screener.engine.rescreen as engine_module

    monkeypatch.setattr(engine_module, "RESCREEN_CHUNK", 3)
    write_rule(settings, "a", "id=ADULT min_age=18")
    clock = FixedClock(datetime(2026, 6, 1, 12, tzinfo=UTC))
    store = MemoryStore()
    engine = build(settings, log, mini, store, clock)
    for i in range(10):
        log.publish("ev", person(make_event, f"Y{i}", "2008-06-02"))  # all turn 18 on 2026-06-02
    run_until_idle(engine)
    assert store.matches().height == 0
    clock.set(datetime(2026, 6, 2, 13, tzinfo=UTC))
    engine.rescreen_all(wait=False)
    assert len(engine._queue) >= 4  # 10 patients over 2 partitions, 3 per chunk
    engine._snapshot(0)
    assert not Path(settings.state_dir, "ev-0").exists(), "no snapshot while screening is owed"
    calls = store.calls
    engine._drain(budget_s=0)  # one chunk per call when the budget is spent
    assert store.calls <= calls + 1 and 0 < store.matches().height <= 3
    run_until_idle(engine, 6)
    assert store.matches().height == 10 and not engine._queue


def test_a_match_whose_publish_failed_is_published_once_by_the_sweep(
    settings: Any, log: Any, mini: Any, make_event: Any
) -> None:
    """The crash window between the worklist write and the broker's acknowledgement: the match is stored but
    not on screening.matches. Redoing the batch finds it already stored; the sweep publishes it, once."""
    from conftest import FakeProducer  # type: ignore[import-not-found]

    class BrokenMatchesTopic(FakeProducer):  # type: ignore[misc]
        """Loses everything sent to the matches topic, and fails the flush, while ``down``."""

        down = True

        def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None) -> Any:
            if topic == "m" and self.down:
                from conftest import Future  # type: ignore[import-not-found]

                return Future()
            return super().send(topic, value, key, headers)

        def flush(self, timeout: float | None = None) -> None:
            if self.down:
                raise TimeoutError("broker unreachable")

    settings = settings.model_copy(update={"matches_sweep_interval_s": 0.05, "matches_sweep_settle_s": 0.0})
    write_rule(settings, "a", "id=ADULT min_age=18")
    store = MemoryStore()
    producer = BrokenMatchesTopic(log)
    engine = started_engine(settings, log, store, mini=mini, producer=producer)
    log.publish("ev", person(make_event, "P1", "1970-01-01"))
    run_until_idle(engine)
    assert store.matches()["patient_id"].to_list() == ["P1"]  # stored...
    assert log.values("m") == []  # ...but never acknowledged
    assert store.unpublished_matches()["patient_id"].to_list() == ["P1"]
    producer.down = False
    engine.clock.advance(0.06)  # type: ignore[attr-defined]
    run_until_idle(engine)
    assert [(p["study_id"], p["patient_id"]) for p in log.values("m")] == [("ADULT", "P1")]
    assert store.unpublished_matches().height == 0
    engine.clock.advance(0.06)  # type: ignore[attr-defined]
    run_until_idle(engine)  # later sweeps find nothing to send
    assert len(log.values("m")) == 1


def test_a_rescreen_chunk_is_cut_to_about_one_batch_time_at_the_measured_rate(
    settings: Any, log: Any, mini: Any, make_event: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live batches wait behind at most one chunk: with a measured rate, a chunk is what it screens in about
    batch_max_ms (never under MIN_CHUNK patients, nor MIN_PAIRS patient x study pairs); the rest goes back to
    the front of the queue."""
    from screener.engine import rescreen
    from screener.engine.rescreen import MIN_CHUNK, MIN_PAIRS, RESCREEN_CHUNK

    write_rule(settings, "a", "id=ADULT min_age=18")
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    for i in range(4800):
        log.publish("ev", person(make_event, f"C{i:04d}", "1970-01-01"))
    run_until_idle(engine)
    engine.rescreen_all(wait=False)
    queued = sum(q[1].len() for q in engine._queue)
    assert queued == 4800 and len(engine._queue) == 2  # one chunk per partition (RESCREEN_CHUNK is 50,000)
    engine._screen_rate = 1.0  # pairs per second: far below any real rate, so the floor applies
    assert engine._chunk_limit(1) == min(RESCREEN_CHUNK, MIN_PAIRS), "one study: the floor is in pairs"
    assert engine._chunk_limit(17) == MIN_CHUNK
    monkeypatch.setattr(rescreen, "MIN_PAIRS", MIN_CHUNK)  # this one study's floor: MIN_CHUNK patients
    first = engine._queue[0][1].len()
    engine._drain(budget_s=0)
    assert engine._queue[0][1].len() == first - MIN_CHUNK, "the rest of the chunk waits at the front"
    assert sum(q[1].len() for q in engine._queue) == 4800 - MIN_CHUNK
    assert engine._screen_rate is not None and engine._screen_rate > 1.0, "the rate was measured again"
