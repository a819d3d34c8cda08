"""The overlapped loop (``step(overlap=True)``, what ``Engine.run`` does): a batch is screened on the batch thread
while the next one is polled and decoded. Offsets must still be committed only after the batch's matches are
stored, a rebalance must wait for the batch in flight, and records polled before a seek must be read again
rather than applied out of order."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from screener.alerts.memory import MemoryStore
from screener.clock import FixedClock
from screener.engine import Engine
from screener.errors import DeliveryError
from screener.metrics import Metrics

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _conftest_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.fixture
def overlapping(settings: Any) -> Any:
    """Overlap even the tests' small batches (by default only a backlog's batches are overlapped)."""
    return settings.model_copy(update={"overlap_min_records": 1})


def adults(log: Any, make_event: Any, start: int, n: int) -> list[str]:
    """Publish ``n`` adults (one person event each, so one match each for study ADULT)."""
    ids = [f"P{i}" for i in range(start, start + n)]
    for pid in ids:
        log.publish("ev", make_event(kind="person", patient_id=pid, person={"birth_date": "1970-01-01"}, code=None))
    return ids


def build(settings: Any, log: Any, mini: Any, store: MemoryStore, consumer: Any = None) -> Engine:
    from conftest import FakeConsumer, FakeProducer  # type: ignore[import-not-found]

    (Path(settings.rules_dir) / "a.yaml").write_text("id=ADULT min_age=18")
    return Engine(
        settings,
        store,
        metrics=Metrics(CollectorRegistry()),
        clock=FixedClock(NOW),
        consumer=consumer or FakeConsumer(log),
        producer=FakeProducer(log),
        loader=mini["loader"],
        screen=mini["screen"],
    ).start()


def committed_total(log: Any) -> int:
    return sum(v for (topic, _), v in log.committed.items() if topic == "ev")


def total(log: Any) -> int:
    return sum(len(v) for v in log.topics["ev"].values())


def test_overlapped_steps_commit_each_batch_only_after_its_matches_are_stored(
    overlapping: Any, log: Any, mini: Any, make_event: Any
) -> None:
    settings = overlapping
    from conftest import FakeConsumer

    store = MemoryStore()

    class Checking(FakeConsumer):  # type: ignore[misc]
        """At every commit: each patient below the committed offset already has its match in the store."""

        commits = 0

        def commit(self, offsets: dict[Any, Any], timeout_ms: int | None = None) -> None:
            matched = set(store.matches()["patient_id"].to_list()) if store.matches().height else set()
            for tp, om in offsets.items():
                below = {r.key.decode() for r in self.log.topics[tp.topic][tp.partition][: om.offset]}
                assert below <= matched, f"partition {tp.partition} committed to {om.offset} before its matches"
            self.commits += 1
            super().commit(offsets)

    consumer = Checking(log)
    engine = build(settings.model_copy(update={"batch_max_records": 7}), log, mini, store, consumer)
    expected: list[str] = []
    for round_ in range(6):
        expected += adults(log, make_event, round_ * 10, 10)
        polled = engine.step(overlap=True)
        assert polled > 0
        # The batch just polled is still being screened or not yet committed: the commit comes with the next step.
        assert committed_total(log) < total(log)
    while engine.step(overlap=True):
        pass  # an empty poll settles the batch in flight
    assert committed_total(log) == total(log) == len(expected)
    assert sorted(store.matches()["patient_id"].to_list()) == sorted(expected)
    assert engine.records_processed == len(expected)  # every record once, none twice
    assert consumer.commits >= 6


def test_a_rebalance_waits_for_the_batch_in_flight_and_commits_it(
    overlapping: Any, log: Any, mini: Any, make_event: Any
) -> None:
    settings = overlapping
    from conftest import FakeConsumer

    class Rebalancing(FakeConsumer):  # type: ignore[misc]
        """The next poll after ``rebalance`` is set revokes every partition and assigns them again, as a group
        rebalance does inside kafka-python's poll."""

        rebalance = False
        committed_at_revoke: int | None = None

        def poll(self, timeout_ms: int = 0, max_records: int = 500) -> Any:
            if self.rebalance:
                self.rebalance = False
                release.set()  # the batch was held in flight until now: the rebalance surely finds it there
                assigned = list(self.assigned)
                self.listener.on_partitions_revoked(assigned)
                self.committed_at_revoke = committed_total(self.log)
                for tp in assigned:
                    self.position[tp] = self.log.committed.get((tp.topic, tp.partition), 0)
                self.listener.on_partitions_assigned(assigned)
            return super().poll(timeout_ms, max_records)

    release = threading.Event()

    def slow_screen(*args: Any) -> Any:
        assert release.wait(10), "the rebalance never came"
        return mini["screen"](*args)

    store = MemoryStore()
    consumer = Rebalancing(log)
    engine = build(settings, log, {**mini, "screen": slow_screen}, store, consumer)
    first = adults(log, make_event, 0, 12)
    assert engine.step(overlap=True) == 12  # in flight
    consumer.rebalance = True
    second = adults(log, make_event, 100, 5)
    engine.step(overlap=True)
    assert consumer.committed_at_revoke == 12, "the revocation committed the batch that was in flight"
    while engine.step(overlap=True):
        pass
    assert sorted(store.matches()["patient_id"].to_list()) == sorted(first + second)
    # Restored from the revocation's snapshot at the committed offset: nothing was read twice.
    assert engine.records_processed == 17
    assert committed_total(log) == 17


def test_a_failed_batch_voids_the_batch_polled_behind_it(
    overlapping: Any, log: Any, mini: Any, make_event: Any
) -> None:
    """The next batch was polled while the failed one was in flight; after the failure every partition restarts
    from its snapshot, so that batch must be read again after the failed one, not applied ahead of it."""
    settings = overlapping
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    adults(log, make_event, 0, 4)
    while engine.step(overlap=True):
        pass
    engine._snapshot(0)
    engine._snapshot(1)
    store.fail_next = DeliveryError("database is down", channel="store")
    failed = adults(log, make_event, 10, 6)
    assert engine.step(overlap=True) == 6  # in flight; its record_matches will fail
    behind = adults(log, make_event, 20, 6)
    engine.step(overlap=True)  # polls `behind`, then finds the failure: recovers and drops what it polled
    assert committed_total(log) == 4
    for _ in range(10):
        engine.clock.advance(0.002)  # type: ignore[attr-defined]  # past rules_poll_s
        if not engine.step(overlap=True) and committed_total(log) == total(log):
            break
    matched = set(store.matches()["patient_id"].to_list())
    assert set(failed) <= matched and set(behind) <= matched
    assert committed_total(log) == total(log) == 16


def test_records_gathered_before_a_rebalance_in_the_follow_up_poll_are_not_used_twice(
    settings: Any, log: Any, mini: Any, make_event: Any
) -> None:
    from conftest import FakeConsumer

    class RebalanceOnSecondPoll(FakeConsumer):  # type: ignore[misc]
        """Arms a rebalance that happens in the poll right after one returning records (the follow-up)."""

        armed = False
        fired = False

        def poll(self, timeout_ms: int = 0, max_records: int = 500) -> Any:
            if self.armed == "next":
                self.armed, self.fired = False, True
                assigned = list(self.assigned)
                self.listener.on_partitions_revoked(assigned)
                for tp in assigned:
                    self.position[tp] = self.log.committed.get((tp.topic, tp.partition), 0)
                self.listener.on_partitions_assigned(assigned)
            out = super().poll(timeout_ms, max_records)
            if self.armed is True and out:
                self.armed = "next"
            return out

    store = MemoryStore()
    consumer = RebalanceOnSecondPoll(log)
    engine = build(settings, log, mini, store, consumer)
    engine.step()  # join
    ids = adults(log, make_event, 0, 9)
    consumer.armed = True
    engine.step()
    assert consumer.fired
    while engine.step():
        pass
    assert sorted(store.matches()["patient_id"].to_list()) == sorted(ids)
    assert engine.records_processed == 9  # the first poll's records were read again, not twice
    assert committed_total(log) == 9


def test_a_small_batch_is_not_left_in_flight(settings: Any, log: Any, mini: Any, make_event: Any) -> None:
    """Below overlap_min_records the engine is keeping up: the batch is done and committed when step returns."""
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    ids = adults(log, make_event, 0, 10)
    assert engine.step(overlap=True) == 10
    assert committed_total(log) == 10
    assert sorted(store.matches()["patient_id"].to_list()) == sorted(ids)


def test_close_finishes_commits_and_snapshots_the_batch_in_flight(
    overlapping: Any, log: Any, mini: Any, make_event: Any
) -> None:
    settings = overlapping
    store = MemoryStore()
    engine = build(settings, log, mini, store)
    ids = adults(log, make_event, 0, 8)
    assert engine.step(overlap=True) == 8
    assert committed_total(log) == 0  # still in flight
    engine.close()
    assert committed_total(log) == 8
    assert sorted(store.matches()["patient_id"].to_list()) == sorted(ids)
    assert sorted(p.name for p in Path(settings.state_dir).iterdir()) == ["ev-0", "ev-1", "history"]
